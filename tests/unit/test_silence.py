"""Silences: matchers, windows and expiry, at fixed instants."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from alerts.model import Level
from alerts.silence import (
    Matcher,
    Op,
    Silence,
    SilenceError,
    SilenceState,
    alert_attributes,
    silenced_by,
)

T0 = datetime(2026, 7, 1, 8, 0, tzinfo=UTC)


def _attrs(**over: object) -> dict[str, str]:
    base: dict[str, object] = {
        "rule": "drainage_surcharge",
        "domain": "drainage",
        "device_id": "dr-0042",
        "district": "futian",
        "level": Level.ORANGE,
        "labels": {"pump_station": "ps-3"},
    }
    base.update(over)
    return alert_attributes(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("district=futian", Matcher("district", Op.EQ, "futian")),
        (" rule != noise_day ", Matcher("rule", Op.NE, "noise_day")),
        ('device_id=~"dr-00.*"', Matcher("device_id", Op.RE, "dr-00.*")),
        ("pump_station!~ps-[12]", Matcher("pump_station", Op.NRE, "ps-[12]")),
        ("level=ORANGE", Matcher("level", Op.EQ, "orange")),
        ("district==futian", Matcher("district", Op.EQ, "futian")),
    ],
)
def test_matcher_parse(text: str, expected: Matcher) -> None:
    assert Matcher.parse(text) == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("futian", "name=value"),
        ("district", "name=value"),
        ("level=purple", "not a level"),
        ("device_id=~dr-(", "not a regex"),
        ("x" * 70 + "=1", "at most 64"),
    ],
)
def test_matcher_parse_rejects(text: str, problem: str) -> None:
    with pytest.raises(SilenceError, match=problem):
        Matcher.parse(text)


def test_matchers_against_an_alert() -> None:
    attrs = _attrs()
    assert Matcher.parse("district=futian").matches(attrs)
    assert not Matcher.parse("district=luohu").matches(attrs)
    assert Matcher.parse("district!=luohu").matches(attrs)
    assert Matcher.parse("device_id=~dr-00.*").matches(attrs)
    assert not Matcher.parse("device_id=~dr-00").matches(attrs), "regex must match whole value"
    assert Matcher.parse("pump_station=ps-3").matches(attrs), "labels are matchable"
    assert Matcher.parse("level=orange").matches(attrs)
    assert not Matcher.parse("missing_label=x").matches(attrs)
    assert Matcher.parse("missing_label!=x").matches(attrs)


def test_window_and_early_expiry() -> None:
    s = Silence.build(
        [Matcher.parse("district=futian")], T0, T0 + timedelta(hours=2), "ops", "maintenance"
    )
    attrs = _attrs()
    assert s.state(T0 - timedelta(seconds=1)) is SilenceState.PENDING
    assert not s.silences(attrs, T0 - timedelta(seconds=1))
    assert s.state(T0) is SilenceState.ACTIVE and s.silences(attrs, T0)
    assert s.silences(attrs, T0 + timedelta(hours=2) - timedelta(microseconds=1))
    assert s.state(T0 + timedelta(hours=2)) is SilenceState.EXPIRED
    assert not s.silences(attrs, T0 + timedelta(hours=2))
    ended = Silence(
        s.matchers, s.starts_at, s.ends_at, s.author, s.reason, 7, T0 + timedelta(minutes=30)
    )
    assert ended.silences(attrs, T0 + timedelta(minutes=29))
    assert not ended.silences(attrs, T0 + timedelta(minutes=30))
    assert silenced_by([ended], attrs, T0 + timedelta(minutes=1)) == [7]
    assert silenced_by([ended], _attrs(district="luohu"), T0 + timedelta(minutes=1)) == []


def test_all_matchers_must_hold() -> None:
    s = Silence(
        (Matcher.parse("district=futian"), Matcher.parse("rule=drainage_gas")),
        T0,
        T0 + timedelta(hours=1),
        "ops",
        "gas sensor swap",
        1,
    )
    assert not s.silences(_attrs(), T0)
    assert s.silences(_attrs(rule="drainage_gas"), T0)


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"matchers": []}, "at least one matcher"),
        ({"ends_at": T0}, "not after"),
        ({"starts_at": T0.replace(tzinfo=None)}, "time zone"),
        ({"author": " "}, "author"),
        ({"reason": ""}, "reason"),
    ],
)
def test_build_rejects(kwargs: dict[str, object], problem: str) -> None:
    args: dict[str, object] = {
        "matchers": [Matcher.parse("district=futian")],
        "starts_at": T0,
        "ends_at": T0 + timedelta(hours=1),
        "author": "ops",
        "reason": "works",
    }
    args.update(kwargs)
    with pytest.raises(SilenceError, match=problem):
        Silence.build(**args)  # type: ignore[arg-type]
