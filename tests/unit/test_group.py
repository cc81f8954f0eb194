"""Grouping timers with a fake clock: group_wait, group_interval, repeat_interval, resolved."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from alerts.group import AlertSnapshot, Grouper, NoticeKind
from alerts.route import parse_routing
from alerts.silence import alert_attributes

T0 = datetime(2026, 7, 1, 8, 0, tzinfo=UTC)
ROUTING = parse_routing(
    {
        "route": {
            "receiver": "drain",
            "group_by": ["district"],
            "group_wait": "1m",
            "group_interval": "5m",
            "repeat_interval": "1h",
        },
        "teams": {"drain": {"channels": [{"type": "mqtt", "topic": "x"}]}},
    }
)
ROOT = ROUTING.root


def alert(i: int, district: str = "futian", state: str = "firing", level: int = 2) -> AlertSnapshot:
    return AlertSnapshot(
        i,
        state,
        level,
        "drainage_fill",
        "drainage",
        district,
        f"dr-{i}",
        f"manhole {i}",
        T0.isoformat(),
    )


def add(g: Grouper, a: AlertSnapshot, at: datetime) -> None:
    attrs = alert_attributes(
        rule=a.rule, domain=a.domain, device_id=a.device_id, district=a.district, level=a.level
    )
    g.add(ROOT, attrs, a, at)


def s(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_a_storm_in_one_district_is_one_message_then_updates() -> None:
    g = Grouper()
    for i in range(300):
        add(g, alert(i), s(i * 0.1))
    add(g, alert(1000, "luohu"), s(5))
    assert g.flush(s(59)) == []
    first = g.flush(s(60))
    assert [(n.labels["district"], n.kind, len(n.alerts)) for n in first] == [
        ("futian", NoticeKind.FIRING, 300)
    ]
    second = g.flush(s(65))
    assert [(n.labels["district"], len(n.alerts)) for n in second] == [("luohu", 1)]
    # More alerts in futian: one update, no sooner than group_interval after the first.
    for i in range(300, 320):
        add(g, alert(i), s(70))
    assert g.flush(s(359)) == []
    update = g.flush(s(360))
    assert len(update) == 1 and update[0].kind is NoticeKind.UPDATE
    assert len(update[0].alerts) == 320 and len(update[0].new) == 20 and update[0].seq == 2


def test_unchanged_firing_group_repeats_after_repeat_interval() -> None:
    g = Grouper()
    add(g, alert(1), T0)
    assert len(g.flush(s(60))) == 1
    assert g.flush(s(60 + 3599)) == []
    again = g.flush(s(60 + 3600))
    assert [n.kind for n in again] == [NoticeKind.REPEAT]


def test_level_change_is_an_update() -> None:
    g = Grouper()
    add(g, alert(1), T0)
    g.flush(s(60))
    add(g, alert(1, level=4), s(100))
    (n,) = g.flush(s(360))
    assert n.kind is NoticeKind.UPDATE and n.level == 4 and not n.new


def test_resolved_notice_ends_the_group() -> None:
    g = Grouper()
    add(g, alert(1), T0)
    add(g, alert(2), T0)
    g.flush(s(60))
    add(g, alert(1, state="resolved"), s(100))
    (n,) = g.flush(s(360))
    assert n.kind is NoticeKind.UPDATE and [a.alert_id for a in n.resolved] == [1]
    g.resolve(alert(2, state="resolved"), s(400))
    (n,) = g.flush(s(660))
    assert n.kind is NoticeKind.RESOLVED and len(g) == 0


def test_alert_that_fires_and_clears_inside_the_wait_is_never_sent() -> None:
    g = Grouper()
    add(g, alert(1), T0)
    add(g, alert(1, state="resolved"), s(30))
    assert len(g) == 0
    assert g.flush(s(60)) == []


def test_muted_alerts_are_left_out_and_come_back_when_the_silence_ends() -> None:
    g = Grouper()
    add(g, alert(1), T0)
    add(g, alert(2), T0)
    (n,) = g.flush(s(60), muted=lambda a: a.alert_id == 2)
    assert [a.alert_id for a in n.alerts] == [1]
    (n,) = g.flush(s(360), muted=lambda a: False)
    assert n.kind is NoticeKind.UPDATE and n.new == frozenset({2})


def test_all_muted_sends_nothing() -> None:
    g = Grouper()
    add(g, alert(1), T0)
    assert g.flush(s(60), muted=lambda a: True) == []
    assert len(g) == 1


def test_state_survives_a_round_trip() -> None:
    g = Grouper()
    add(g, alert(1), T0)
    g.flush(s(60))
    add(g, alert(2), s(70))
    restored = Grouper.from_json(g.to_json())
    (n,) = restored.flush(s(360))
    assert n.seq == 2 and n.new == frozenset({2})
    assert n.group_id == g.groups[n.group_key].id


def test_a_closed_alert_leaves_its_group() -> None:
    g = Grouper()
    add(g, alert(1), T0)
    add(g, alert(2), T0)
    g.flush(s(60))
    assert g.drop(1, s(100)) == 1
    (n,) = g.flush(s(360))
    assert n.kind is NoticeKind.UPDATE and [a.alert_id for a in n.alerts] == [2]
    g.drop(2, s(400))
    assert len(g) == 0 and g.flush(s(4000)) == []
