"""The rule engine's state machine, with a fake clock: readings carry their own time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from alerts.model import AlertTransition, ConditionState, Level
from devices.model import DeviceEvent, Reading
from devices.profile import DeviceProfile
from rules.config import RuleSet, compile_rule
from rules.engine import DeviceInfo, Engine

T0 = datetime(2026, 7, 20, 4, 0, tzinfo=UTC)  # 12:00 in Shanghai

GAUGE = DeviceProfile.model_validate(
    {
        "name": "gauge",
        "domain": "hydrology",
        "title": "Gauge",
        "reporting_interval": "5m",
        "metrics": {
            "level_m": {"unit": "m", "range": [-10, 100]},
            "rain_mm": {"unit": "mm", "range": [0, 500]},
        },
        "attributes": {
            "warning_level_m": {"type": "float", "required": True},
            "guaranteed_level_m": {"type": "float", "required": True},
        },
        "events": {"trapped_passengers": {"code": 11}, "back_to_normal": {"code": 40}},
    }
)
PROFILES = {"gauge": GAUGE}


def engine(*rules: dict[str, Any], devices: int = 1, district: str = "d1") -> Engine:
    compiled = [
        compile_rule(
            {"scope": {"profiles": ["gauge"]}, **r} if "area" not in r else r,
            f"test.yaml:{i}",
            PROFILES,
        )
        for i, r in enumerate(rules)
    ]
    e = Engine(RuleSet(tuple(compiled)))
    e.set_devices(
        DeviceInfo(
            f"g{n}",
            GAUGE,
            district,
            f"Gauge {n}",
            {"warning_level_m": 4.0, "guaranteed_level_m": 5.0},
        )
        for n in range(1, devices + 1)
    )
    return e


def feed(
    e: Engine, minutes: float, metric: str = "level_m", value: float = 0.0, device: str = "g1"
) -> list[AlertTransition]:
    return e.ingest([Reading(T0 + timedelta(minutes=minutes), device, metric, value)])


def states(ts: list[AlertTransition]) -> list[tuple[str, str]]:
    return [(t.state.value, t.level.label) for t in ts]


LADDER = {
    "name": "level",
    "domain": "hydrology",
    "ladder": [
        {"level": "yellow", "when": "level_m >= attr.warning_level_m"},
        {"level": "orange", "when": "level_m >= attr.guaranteed_level_m"},
    ],
    "summary": "{device.name}: {level_m:.1f} m",
}


def test_fires_at_once_without_for_and_resolves() -> None:
    e = engine(LADDER)
    assert feed(e, 0, value=3.0) == []
    fired = feed(e, 5, value=4.2)
    assert states(fired) == [("firing", "yellow")]
    assert fired[0].summary == "Gauge 1: 4.2 m"
    assert fired[0].fingerprint == "level:g1"
    assert states(feed(e, 10, value=3.0)) == [("resolved", "yellow")]


def test_for_holds_pending_then_fires_and_a_blip_is_dropped() -> None:
    e = engine({**LADDER, "for": "10m"})
    assert states(feed(e, 0, value=4.5)) == [("pending", "yellow")]
    assert feed(e, 5, value=4.5) == []
    assert states(feed(e, 10, value=4.5)) == [("firing", "yellow")]
    e2 = engine({**LADDER, "for": "10m"})
    feed(e2, 0, value=4.5)
    # The condition went away before `for`: the pending alert ends, nothing fired.
    assert states(feed(e2, 5, value=3.0)) == [("resolved", "yellow")]
    assert "level:g1" not in e2.alerts


def test_for_fires_on_tick_when_readings_are_sparse() -> None:
    e = engine({**LADDER, "for": "10m"})
    feed(e, 0, value=4.5)
    assert e.tick(T0 + timedelta(minutes=9)) == []
    assert states(e.tick(T0 + timedelta(minutes=10))) == [("firing", "yellow")]


def test_ladder_escalates_and_de_escalates_one_alert() -> None:
    e = engine({**LADDER, "clear_for": "10m"})
    assert states(feed(e, 0, value=4.1)) == [("firing", "yellow")]
    up = feed(e, 5, value=5.2)
    assert states(up) == [("firing", "orange")]
    assert up[0].previous_level is Level.YELLOW and up[0].escalated
    assert feed(e, 10, value=4.5) == []  # lower, but not for clear_for yet
    down = feed(e, 20, value=4.5)
    assert states(down) == [("firing", "yellow")] and not down[0].escalated
    assert {t.fingerprint for t in up + down} == {"level:g1"}
    assert feed(e, 25, value=3.0) == []
    assert states(feed(e, 35, value=3.0)) == [("resolved", "yellow")]


def test_clear_condition_gives_hysteresis() -> None:
    e = engine({**LADDER, "clear": "level_m < attr.warning_level_m - 0.2", "clear_for": "0s"})
    feed(e, 0, value=4.1)
    # Hovering just under the warning level does not resolve the alert…
    assert feed(e, 5, value=3.95) == []
    assert feed(e, 10, value=4.05) == []
    assert feed(e, 15, value=3.9) == []
    # …only going clearly below does.
    assert states(feed(e, 20, value=3.7)) == [("resolved", "yellow")]


def test_windows_sum_rain_over_three_hours() -> None:
    e = engine(
        {
            "name": "rain",
            "domain": "meteorology",
            "level": "orange",
            "when": "sum(rain_mm, '3h') >= 50",
        }
    )
    out: list[AlertTransition] = []
    for i in range(36):  # 5-minute reports of 1.5 mm: 18 mm/h
        out += feed(e, 5 * i, "rain_mm", 1.5)
    fired = [t for t in out if t.state is ConditionState.FIRING]
    # 34 reports × 1.5 mm = 51 mm within the last 3 h, at 165 minutes.
    assert fired and fired[0].at == T0 + timedelta(minutes=165)


def test_no_data_fires_on_tick_and_resolves_on_a_reading() -> None:
    e = engine({"name": "silent", "domain": "device_health", "level": "blue", "no_data": 3})
    feed(e, 0, value=1.0)
    assert e.tick(T0 + timedelta(minutes=14)) == []
    fired = e.tick(T0 + timedelta(minutes=15))
    assert states(fired) == [("firing", "blue")]
    assert states(feed(e, 16, value=1.0)) == [("resolved", "blue")]


def test_event_raises_at_once_and_resolves_on_its_counterpart() -> None:
    e = engine(
        {
            "name": "trapped",
            "domain": "elevator",
            "level": "red",
            "event": "trapped_passengers",
            "resolve_on": ["back_to_normal"],
        }
    )
    at = T0 + timedelta(minutes=3)
    fired = e.events([DeviceEvent(at, "g1", "trapped_passengers", 11, {"floor": 7})])
    assert states(fired) == [("firing", "red")] and fired[0].at == at
    assert fired[0].values["floor"] == 7
    # Repeats update the open alert rather than raising more.
    assert e.events([DeviceEvent(at + timedelta(seconds=30), "g1", "trapped_passengers")]) == []
    resolved = e.events([DeviceEvent(at + timedelta(minutes=20), "g1", "back_to_normal", 40)])
    assert states(resolved) == [("resolved", "red")]


def test_area_rule_links_member_alerts() -> None:
    member = {"name": "high", "domain": "drainage", "level": "orange", "when": "level_m > 4"}
    area = {
        "name": "district_high",
        "domain": "drainage",
        "area": "district",
        "member": "high",
        "count": 3,
        "within": "15m",
        "level": "red",
    }
    e = engine(member, area, devices=4)
    out = feed(e, 0, value=5, device="g1") + feed(e, 5, value=5, device="g2")
    assert all(t.rule == "high" for t in out)
    out = feed(e, 10, value=5, device="g3")
    area_fired = [t for t in out if t.rule == "district_high"]
    assert states(area_fired) == [("firing", "red")]
    assert area_fired[0].values["members"] == 3 and area_fired[0].district == "d1"
    assert e.alerts["high:g1"].parent == "district_high:district:d1"
    out = feed(e, 20, value=1, device="g1") + feed(e, 21, value=1, device="g2")
    assert ("resolved", "red") in states([t for t in out if t.rule == "district_high"])


def test_area_rule_needs_members_close_together() -> None:
    member = {"name": "high", "domain": "drainage", "level": "orange", "when": "level_m > 4"}
    area = {
        "name": "district_high",
        "domain": "drainage",
        "area": "district",
        "member": "high",
        "count": 3,
        "within": "15m",
        "level": "red",
    }
    e = engine(member, area, devices=3)
    out = feed(e, 0, value=5, device="g1") + feed(e, 10, value=5, device="g2")
    out += feed(e, 30, value=5, device="g3")
    assert not [t for t in out if t.rule == "district_high"]


@pytest.mark.parametrize(
    ("utc_hour", "active"),
    [(13, False), (14, True), (21, True), (22, False), (12, False)],
)
def test_schedule_across_midnight_in_local_time(utc_hour: int, active: bool) -> None:
    # 22:00-06:00 in Shanghai is 14:00-22:00 UTC.
    e = engine(
        {
            "name": "night",
            "domain": "noise",
            "level": "blue",
            "when": "level_m > 1",
            "active": {"between": ["22:00", "06:00"]},
        }
    )
    at = datetime(2026, 7, 20, utc_hour, 30, tzinfo=UTC)
    out = e.ingest([Reading(at, "g1", "level_m", 2.0)])
    assert bool(out) is active


def test_failing_rule_is_unhealthy_and_others_keep_running() -> None:
    broken = {
        "name": "broken",
        "domain": "hydrology",
        "level": "blue",
        "when": "level_m / (level_m - level_m) > 1",
    }
    e = engine(broken, LADDER)
    out = feed(e, 0, value=4.5)
    assert states(out) == [("firing", "yellow")]
    health = e.health["broken"]
    assert not health.healthy and health.errors == 1
    assert "test.yaml:0" in (health.last_error or "") and "g1" in (health.last_error or "")
    assert e.health["level"].healthy


def test_restart_restores_state_without_re_raising() -> None:
    e = engine(LADDER)
    feed(e, 0, value=4.5)
    saved = list(e.alerts.values())
    again = engine(LADDER)
    again.restore(saved)
    assert feed(again, 5, value=4.6) == []
    assert states(feed(again, 10, value=3.0)) == [("resolved", "yellow")]


def test_warm_refills_windows_without_transitions() -> None:
    rule = {
        "name": "rain",
        "domain": "meteorology",
        "level": "orange",
        "when": "sum(rain_mm, '3h') >= 50",
    }
    e = engine(rule)
    e.warm([Reading(T0 + timedelta(minutes=i), "g1", "rain_mm", 10.0) for i in range(5)])
    assert e.alerts == {}
    assert states(feed(e, 6, "rain_mm", 1.0)) == [("firing", "orange")]


def test_series_keeps_time_order_and_forgets_old_points() -> None:
    from rules.engine import Series

    s = Series()
    for t in (1.0, 2.0, 4.0):
        s.add(t, t * 10)
    s.add(3.0, 30.0)  # late
    assert list(s) == [(1.0, 10.0), (2.0, 20.0), (3.0, 30.0), (4.0, 40.0)]
    assert list(reversed(s)) == [(4.0, 40.0), (3.0, 30.0), (2.0, 20.0), (1.0, 10.0)]
    s.drop_until(2.0)
    assert list(s) == [(3.0, 30.0), (4.0, 40.0)] and len(s) == 2
    for t in range(5, 500):
        s.add(float(t), 0.0)
        s.drop_until(t - 10.0)
    assert len(s) == 10 and next(iter(s))[0] == 490.0
