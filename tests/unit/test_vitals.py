"""City vital signs over the rule engine's state: levels per scope and domain, the city
as the maximum, the indicators behind them, change detection and the MQTT payload."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from alerts.model import ConditionState, Level
from devices.model import DeviceEvent, Reading
from devices.profile import ProfileSet, load_profiles
from rules.config import RuleSet, compile_rule, load_rules
from rules.engine import DeviceInfo, Engine
from rules.vitals import (
    CITY,
    DOMAINS,
    VitalSign,
    by_scope,
    changed,
    compute_vitals,
    scope_sort_key,
    to_payload,
    topic,
)

T0 = datetime(2026, 7, 20, 4, 0, tzinfo=UTC)  # 12:00 in Shanghai: daytime noise limits
AT = T0 + timedelta(minutes=60)

PROFILES: ProfileSet = load_profiles()

# The elevator rules are the elevator library's to define; these tests bring their own
# trapped-passengers rule so they do not depend on its names.
TRAPPED = {
    "name": "test_elevator_trapped",
    "domain": "elevator",
    "scope": {"profiles": ["elevator"]},
    "event": "trapped_passengers",
    "level": "red",
    "resolve_on": ["back_to_normal"],
}


def ruleset(*extra: dict[str, Any]) -> RuleSet:
    library = [r for r in load_rules(PROFILES).rules if r.spec.domain != "elevator"]
    own = [compile_rule(raw, f"test:{i}", PROFILES) for i, raw in enumerate((TRAPPED, *extra))]
    return RuleSet((*library, *own))


def device(device_id: str, profile: str, district: str, **attributes: Any) -> DeviceInfo:
    spec = PROFILES[profile]
    defaults = {k: a.default for k, a in spec.attributes.items() if a.default is not None}
    return DeviceInfo(device_id, spec, district, device_id.upper(), {**defaults, **attributes})


DEVICES = [
    # District 1
    device("w1", "water_level", "1", warning_level_m=4.5, guaranteed_level_m=5.5),
    device("r1", "rain_gauge", "1"),
    device("p1", "drainage", "1", pipe_diameter_mm=800),
    device("a1", "air_quality", "1"),
    device("e1", "elevator", "1", floors=18),
    device("n1", "noise", "1", zone="2"),
    # District 2
    device("w2", "water_level", "2", warning_level_m=4.0, guaranteed_level_m=5.0),
    device("p2", "drainage", "2", pipe_diameter_mm=500),
    device("p3", "drainage", "2", pipe_diameter_mm=500),
    device("e2", "elevator", "2", floors=18),
    device("e3", "elevator", "2", floors=18),
    device("n2", "noise", "2", zone="2"),
    # District 10: one air station that never reports.
    device("a2", "air_quality", "10"),
]


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def readings(minutes: float, device_id: str, **values: float) -> list[Reading]:
    return [Reading(at(minutes), device_id, m, v) for m, v in values.items()]


def city(*extra: dict[str, Any]) -> Engine:
    """Alerts firing in two districts (and a silent station in a third) at AT."""
    e = Engine(ruleset(*extra))
    e.set_devices(DEVICES)
    e.tick(T0)  # every device first heard of now
    for m in range(5, 61, 5):  # 2 mm every 5 minutes: 24 mm in the hour
        e.ingest(readings(m, "r1", rain_mm=2.0))
    e.ingest(
        readings(50, "p1", level_m=0.4, road_water_m=0.05, upstream_level_m=1.0)
        + readings(50, "p1", downstream_level_m=0.5)  # a blockage, pending for 30 min
        + readings(50, "p2", level_m=0.6)  # DN500: fill 1.2, surcharged
        + readings(50, "p3", level_m=0.2)
        + readings(55, "w1", level_m=4.6)  # over warning (yellow)
        + readings(55, "w2", level_m=5.2)  # over guaranteed (orange)
        + readings(55, "a1", pm2_5=120, pm10=100, so2=10, no2=40, co=0.8, o3=60)
    )
    for m in (45, 50, 55, 59):
        e.ingest(readings(m, "n1", laeq_db=65.0) + readings(m, "n2", laeq_db=55.0))
    e.ingest(
        readings(59, "e1", state=0, fault_code=0)
        + readings(59, "e2", state=2, fault_code=0)
        + readings(59, "e3", state=2, fault_code=3)
    )
    e.events([DeviceEvent(at(59), "e2", "trapped_passengers", 11, {"floor": 7})])
    e.tick(AT)  # a2: silent for three intervals
    assert all(h.healthy for h in e.health.values()), {
        n: h.last_error for n, h in e.health.items() if not h.healthy
    }
    return e


def signs_of(e: Engine, when: datetime = AT) -> dict[tuple[str, str], VitalSign]:
    return {s.key: s for s in compute_vitals(e, when)}


def levels(signs: dict[tuple[str, str], VitalSign], scope: str) -> dict[str, str]:
    return {d: signs[scope, d].level.label for d in DOMAINS}


def test_levels_per_district_and_the_city_is_the_maximum() -> None:
    signs = signs_of(city())
    assert levels(signs, "1") == {
        "flood": "yellow",  # water over warning; short heavy rain is only blue
        "drainage": "normal",  # the blockage is pending, not firing
        "air": "yellow",
        "elevators": "normal",
        "noise": "blue",
        "device_health": "normal",
    }
    assert levels(signs, "2") == {
        "flood": "orange",
        "drainage": "orange",
        "air": "normal",
        "elevators": "red",
        "noise": "normal",
        "device_health": "normal",
    }
    assert levels(signs, "10") == {**{d: "normal" for d in DOMAINS}, "device_health": "blue"}
    for domain in DOMAINS:
        assert signs[CITY, domain].level == max(
            signs[scope, domain].level for scope in ("1", "2", "10")
        )
    assert levels(signs, CITY) == {
        "flood": "orange",
        "drainage": "orange",
        "air": "yellow",
        "elevators": "red",
        "noise": "blue",
        "device_health": "blue",
    }


def test_order_is_city_then_districts_in_natural_order_then_domains() -> None:
    signs = compute_vitals(city(), AT)
    assert [s.key for s in signs] == [
        (scope, domain) for scope in (CITY, "1", "2", "10") for domain in DOMAINS
    ]
    assert all(s.at == AT for s in signs)
    assert sorted(["10", "city", "2", "1b", "1"], key=scope_sort_key) == [
        "city",
        "1",
        "1b",
        "2",
        "10",
    ]


def test_flood_indicators() -> None:
    signs = signs_of(city())
    assert signs[CITY, "flood"].indicators == {
        "alerts_firing": 3,  # w1 yellow, w2 orange, r1 short heavy rain
        "water_gauges": 2,
        "water_level_ratio": 1.3,  # 5.2 / 4.0
        "water_level_device": "w2",
        "water_level_m": 5.2,
        "warning_level_m": 4.0,
        "gauges_above_warning": 2,
        "rain_gauges": 1,
        "rain_3h_max_mm": 24.0,
        "rain_3h_device": "r1",
    }
    one = signs["1", "flood"].indicators
    assert one["water_level_ratio"] == 1.022  # 4.6 / 4.5, rounded
    assert one["water_level_device"] == "w1" and one["alerts_firing"] == 2
    # No rain gauge in district 2: no rain indicators there.
    assert "rain_3h_max_mm" not in signs["2", "flood"].indicators
    # Nothing in district 10 gives flood indicators.
    assert signs["10", "flood"].indicators == {"alerts_firing": 0}


def test_rain_total_is_the_three_hours_before_at() -> None:
    e = city()
    later = signs_of(e, AT + timedelta(hours=2, minutes=30))
    # Only the readings of the last 30 minutes of the first hour are still within 3 h.
    assert later[CITY, "flood"].indicators["rain_3h_max_mm"] == 12.0


def test_drainage_air_elevator_noise_and_health_indicators() -> None:
    signs = signs_of(city())
    assert signs[CITY, "drainage"].indicators == {
        "alerts_firing": 2,  # p2: fill ratio and surcharge
        "pipes": 3,
        "fill_ratio_max": 1.2,
        "fill_ratio_device": "p2",
        "pipes_surcharged": 1,
        "road_water_max_m": 0.05,
        "road_water_device": "p1",
    }
    assert signs["1", "drainage"].indicators["fill_ratio_max"] == 0.5
    assert signs[CITY, "air"].indicators == {
        "alerts_firing": 1,
        "stations": 2,
        "stations_reporting": 1,
        "aqi_max": 158,
        "aqi_station": "a1",
        "primary_pollutants": ["PM2.5"],
    }
    assert signs["10", "air"].indicators == {
        "alerts_firing": 0,
        "stations": 1,
        "stations_reporting": 0,
    }
    assert signs["2", "elevators"].indicators == {
        "alerts_firing": 1,
        "elevators": 2,
        "elevators_in_fault": 2,  # e2 trapped (alert), e3 fault code 3
        "trapped_alerts": 1,
    }
    assert signs["1", "elevators"].indicators == {
        "alerts_firing": 0,
        "elevators": 1,
        "elevators_in_fault": 0,
        "trapped_alerts": 0,
    }
    assert signs[CITY, "noise"].indicators == {
        "alerts_firing": 1,
        "monitors": 2,
        "monitors_over_limit": 1,  # n1 at 65 over the zone-2 day limit of 60
        "laeq_max_db": 65.0,
        "laeq_device": "n1",
    }
    assert signs[CITY, "device_health"].indicators == {
        "alerts_firing": 1,
        "devices": 13,
        "devices_online": 12,
        "online_share": 0.923,
        "devices_silent": 1,
    }
    assert signs["10", "device_health"].indicators["online_share"] == 0.0


def test_noise_limit_follows_local_day_and_night() -> None:
    e = Engine(ruleset())
    e.set_devices([device("n9", "noise", "9", zone="2")])  # day 60, night 50 dB(A)
    night = datetime(2026, 7, 20, 15, 0, tzinfo=UTC)  # 23:00 in Shanghai
    for m in (-10, -5, 0):
        e.ingest([Reading(night + timedelta(minutes=m), "n9", "laeq_db", 55.0)])
    assert signs_of(e, night)["9", "noise"].indicators["monitors_over_limit"] == 1
    day = night + timedelta(hours=8)  # 07:00
    e.ingest([Reading(day, "n9", "laeq_db", 55.0)])
    assert signs_of(e, day)["9", "noise"].indicators["monitors_over_limit"] == 0


def test_elevator_fault_from_its_car_state() -> None:
    e = Engine(ruleset())
    e.set_devices([device("e9", "elevator", "9", floors=10)])
    e.ingest(readings(0, "e9", state=3))  # the profile's code for `fault`
    assert signs_of(e, at(1))["9", "elevators"].indicators["elevators_in_fault"] == 1


def test_a_city_wide_area_alert_counts_in_the_city_only() -> None:
    area = {
        "name": "test_city_surcharge",
        "domain": "drainage",
        "area": "city",
        "member": "drainage_surcharge",
        "count": 1,
        "level": "red",
    }
    e = city(area)
    assert any(st.district is None for st in e.alerts.values())
    signs = signs_of(e)
    assert signs[CITY, "drainage"].level is Level.RED
    assert signs["2", "drainage"].level is Level.ORANGE
    assert signs[CITY, "drainage"].indicators["alerts_firing"] == 3


def test_pending_and_unknown_domains_do_not_count() -> None:
    bridges = {
        "name": "test_bridge",
        "domain": "bridges",  # no vital sign of its own
        "scope": {"profiles": ["water_level"]},
        "when": "level_m > 0",
        "level": "red",
    }
    e = city(bridges)
    assert any(st.state is ConditionState.PENDING for st in e.alerts.values())
    assert "test_bridge:w1" in e.alerts
    signs = signs_of(e)
    assert signs[CITY, "flood"].level is Level.ORANGE
    assert signs[CITY, "flood"].indicators["alerts_firing"] == 3
    assert signs["1", "drainage"].level is Level.NORMAL  # the blockage is pending
    quiet = Engine(ruleset())
    quiet.set_devices(DEVICES)
    quiet_signs = compute_vitals(quiet, AT)
    assert {s.level for s in quiet_signs} == {Level.NORMAL}
    assert all(s.indicators["alerts_firing"] == 0 for s in quiet_signs)
    # Never heard from: every device is silent.
    assert signs_of(quiet)[CITY, "device_health"].indicators["devices_online"] == 0


def test_changed_reports_level_or_indicator_changes_only() -> None:
    e = city()
    first = compute_vitals(e, AT)
    assert changed({}, first) == first
    previous = {s.key: s for s in first}
    # Time alone is not a change.
    assert changed(previous, compute_vitals(e, AT)) == []
    e.ingest(readings(61, "w1", level_m=4.2))  # below warning, not yet cleared
    now = compute_vitals(e, at(61))
    diff = changed(previous, now)
    assert [s.key for s in diff] == [(CITY, "flood"), ("1", "flood")]
    assert diff[1].level is Level.YELLOW  # the alert is still firing (hysteresis)
    assert diff[1].indicators["gauges_above_warning"] == 0


def test_payload_of_a_scope() -> None:
    signs = compute_vitals(city(), AT)
    groups = by_scope(signs)
    assert list(groups) == [CITY, "1", "2", "10"]
    document = json.loads(to_payload(groups["2"]))
    assert document["scope"] == "2"
    assert document["at"] == AT.isoformat()
    assert document["level"] == "red"
    assert list(document["domains"]) == list(DOMAINS)
    assert document["domains"]["flood"] == {
        "level": "orange",
        "indicators": {
            "alerts_firing": 1,
            "water_gauges": 1,
            "water_level_ratio": 1.3,
            "water_level_device": "w2",
            "water_level_m": 5.2,
            "warning_level_m": 4.0,
            "gauges_above_warning": 1,
        },
    }
    assert document["domains"]["elevators"]["level"] == "red"
    assert json.loads(to_payload(groups["10"]))["level"] == "blue"
    assert topic("city", "2") == "city/vitals/2"
    assert topic("city", CITY) == "city/vitals/city"
    with pytest.raises(ValueError, match="one scope"):
        to_payload(signs)
    with pytest.raises(ValueError):
        to_payload([])


def test_at_must_be_aware() -> None:
    with pytest.raises(ValueError, match="timezone"):
        compute_vitals(city(), datetime(2026, 7, 20, 12, 0))
