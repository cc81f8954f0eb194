"""The handling lifecycle at fixed instants: allowed and forbidden transitions."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from alerts.lifecycle import (
    MAX_NOTE,
    Action,
    Handling,
    HandlingError,
    HandlingStatus,
    TransitionError,
    decide,
)
from alerts.model import ConditionState

T0 = datetime(2026, 7, 1, 8, 0, tzinfo=UTC)
T1 = T0 + timedelta(minutes=3)
NEW = HandlingStatus(7, Handling.NEW, ConditionState.FIRING)


def walk(*steps: tuple[Action, dict[str, str]]) -> HandlingStatus:
    status = NEW
    for i, (action, kwargs) in enumerate(steps):
        status = decide(status, action, T0 + timedelta(minutes=i), **kwargs).after
    return status


def test_happy_path_sets_each_timestamp() -> None:
    s = decide(NEW, Action.ACK, T0)
    assert s.changed and s.after.handling is Handling.ACKNOWLEDGED and s.after.acknowledged_at == T0
    d = decide(s.after, Action.DISPATCH, T1, team="drainage-futian", note="pump truck")
    assert d.after.handling is Handling.DISPATCHED
    assert (d.after.team, d.after.dispatched_at, d.after.acknowledged_at) == (
        "drainage-futian",
        T1,
        T0,
    )
    h = decide(d.after, Action.HANDLE, T1 + timedelta(hours=1), note="cleared the inlet")
    assert h.after.handling is Handling.HANDLED and h.note == "cleared the inlet"
    resolved = replace(h.after, condition=ConditionState.RESOLVED)
    c = decide(resolved, Action.CLOSE, T1 + timedelta(hours=2))
    assert c.after.handling is Handling.CLOSED and c.after.closed_at == T1 + timedelta(hours=2)
    assert c.note == ""


def test_dispatch_from_new_implies_ack() -> None:
    d = decide(NEW, Action.DISPATCH, T1, team="flood")
    assert d.after.acknowledged_at == T1 and d.after.dispatched_at == T1


def test_ack_of_an_acknowledged_alert_is_a_no_op() -> None:
    for status in (
        walk((Action.ACK, {})),
        walk((Action.DISPATCH, {"team": "flood"})),
        walk((Action.DISPATCH, {"team": "flood"}), (Action.HANDLE, {"note": "done"})),
    ):
        step = decide(status, Action.ACK, T1 + timedelta(hours=1))
        assert not step.changed and step.after == status


def test_redispatch_to_another_team_but_not_the_same() -> None:
    status = walk((Action.DISPATCH, {"team": "flood"}))
    again = decide(status, Action.DISPATCH, T1, team="drainage")
    assert again.after.team == "drainage" and again.after.dispatched_at == T1
    with pytest.raises(TransitionError, match="already dispatched to flood"):
        decide(status, Action.DISPATCH, T1, team="flood")


def test_rework_from_handled_clears_handled_at() -> None:
    status = walk((Action.DISPATCH, {"team": "flood"}), (Action.HANDLE, {"note": "done"}))
    assert status.handled_at is not None
    rework = decide(status, Action.DISPATCH, T1, team="flood", note="still flooded")
    assert rework.after.handling is Handling.DISPATCHED and rework.after.handled_at is None


@pytest.mark.parametrize("state", [Handling.NEW, Handling.ACKNOWLEDGED])
def test_handle_only_from_dispatched(state: Handling) -> None:
    with pytest.raises(TransitionError, match="only a dispatched alert"):
        decide(replace(NEW, handling=state), Action.HANDLE, T1, note="done")


def test_handle_needs_a_note() -> None:
    status = walk((Action.DISPATCH, {"team": "flood"}))
    with pytest.raises(HandlingError, match="note is required"):
        decide(status, Action.HANDLE, T1, note="   ")


def test_close_rules() -> None:
    handled = walk((Action.DISPATCH, {"team": "flood"}), (Action.HANDLE, {"note": "done"}))
    # still firing: closing needs a reason
    with pytest.raises(HandlingError, match="still firing"):
        decide(handled, Action.CLOSE, T1)
    assert decide(handled, Action.CLOSE, T1, note="sensor fault").after.handling is Handling.CLOSED
    # verified: handled and resolved, no note needed
    resolved = replace(handled, condition=ConditionState.RESOLVED)
    assert decide(resolved, Action.CLOSE, T1).changed
    # unhandled: only with a note
    for state in (Handling.NEW, Handling.ACKNOWLEDGED, Handling.DISPATCHED):
        status = replace(NEW, handling=state, condition=ConditionState.RESOLVED)
        with pytest.raises(HandlingError, match="note is required"):
            decide(status, Action.CLOSE, T1)
        assert decide(status, Action.CLOSE, T1, note="false alarm").after.closed_at == T1


@pytest.mark.parametrize("action", list(Action))
def test_nothing_leaves_closed(action: Action) -> None:
    closed = replace(NEW, handling=Handling.CLOSED, closed_at=T0)
    with pytest.raises(TransitionError, match="alert 7 is closed"):
        decide(closed, action, T1, team="flood", note="x")


def test_bad_inputs() -> None:
    with pytest.raises(HandlingError, match="at most 2000"):
        decide(NEW, Action.CLOSE, T1, note="x" * (MAX_NOTE + 1))
    for team in (None, "", "a b", "x" * 65, "drop table alerts;--"):
        with pytest.raises(HandlingError, match="not a team name"):
            decide(NEW, Action.DISPATCH, T1, team=team)
    with pytest.raises(HandlingError, match="time zone"):
        decide(NEW, Action.ACK, datetime(2026, 7, 1, 8, 0))
