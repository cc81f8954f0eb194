"""Escalation stages at fixed instants."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from alerts.escalation import Track, advance, reached, relevel
from alerts.model import Level
from alerts.route import EscalationStage

T0 = datetime(2026, 7, 1, 8, 0, tzinfo=UTC)
POLICY = {
    Level.RED: [
        EscalationStage(after=timedelta(minutes=5), unless="acknowledged", notify="duty"),
        EscalationStage(after=timedelta(minutes=30), unless="handled", notify="sup"),
    ],
    Level.ORANGE: [
        EscalationStage(after=timedelta(minutes=15), unless="acknowledged", notify="duty"),
    ],
}


def m(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def test_nothing_before_the_first_stage() -> None:
    out = advance(POLICY, Track(1, Level.RED, T0), "new", m(4.9))
    assert out.steps == () and out.track == Track(1, Level.RED, T0, 0)


def test_unacknowledged_red_goes_to_the_duty_officer_then_the_supervisor() -> None:
    out = advance(POLICY, Track(1, Level.RED, T0), "new", m(5))
    assert [s.after.notify for s in out.steps] == ["duty"]
    assert out.track is not None and out.track.done == 1
    out = advance(POLICY, out.track, "new", m(30))
    assert [s.after.notify for s in out.steps] == ["sup"] and out.track is None


def test_acknowledged_skips_the_ack_stage_but_not_the_handled_one() -> None:
    out = advance(POLICY, Track(1, Level.RED, T0), "acknowledged", m(5))
    assert out.steps == () and out.track is not None and out.track.done == 1
    out = advance(POLICY, out.track, "dispatched", m(31))
    assert [s.after.notify for s in out.steps] == ["sup"]


def test_handled_or_closed_stops_everything() -> None:
    assert advance(POLICY, Track(1, Level.RED, T0), "handled", m(60)).steps == ()
    out = advance(POLICY, Track(1, Level.RED, T0), "closed", m(1))
    assert out.steps == () and out.track is None


def test_a_late_check_sends_every_overdue_stage_once() -> None:
    out = advance(POLICY, Track(1, Level.RED, T0), "new", m(45))
    assert [s.stage for s in out.steps] == [0, 1] and out.track is None


def test_a_level_without_stages_is_not_watched() -> None:
    out = advance(POLICY, Track(1, Level.BLUE, T0), "new", m(500))
    assert out.steps == () and out.track is None


def test_rising_level_takes_the_stricter_stages_from_the_same_start() -> None:
    t = relevel(Track(1, Level.ORANGE, T0, 0), Level.RED)
    assert t == Track(1, Level.RED, T0, 0)
    assert relevel(t, Level.ORANGE) is t
    assert [s.after.notify for s in advance(POLICY, t, "new", m(6)).steps] == ["duty"]


def test_handling_order() -> None:
    assert reached("dispatched", "acknowledged") and not reached("dispatched", "handled")
    assert reached("closed", "handled") and not reached("new", "acknowledged")
