"""Alert handling against the real PostgreSQL: actions, audit rows, queries, metric views."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from alerts.auth import ForbiddenError, Permission, Principal, Role, authorize_alert
from alerts.handling import AlertFilter, act, alert_timeline, get_alert, list_alerts
from alerts.lifecycle import Action, AlertNotFoundError, Handling, HandlingError, TransitionError
from alerts.model import AlertTransition, ConditionState, Level
from alerts.silence import Matcher, Silence, add_silence
from alerts.store import record_transitions
from tests.support import rows, scalar

T0 = datetime(2026, 7, 1, 8, 0, tzinfo=UTC)


def transition(
    fingerprint: str,
    state: ConditionState = ConditionState.FIRING,
    level: Level = Level.YELLOW,
    at: datetime = T0,
    **extra: Any,
) -> AlertTransition:
    defaults: dict[str, Any] = {
        "rule": "pipe_fill",
        "domain": "drainage",
        "device_id": f"dev-{fingerprint}",
        "district": "futian",
        "summary": f"{fingerprint} is full",
    }
    defaults.update(extra)
    return AlertTransition(
        fingerprint=fingerprint,
        state=state,
        level=level,
        previous_level=Level.NORMAL,
        at=at,
        **defaults,
    )


def open_alert(conn: psycopg.Connection[Any], fingerprint: str, **extra: Any) -> int:
    record_transitions(conn, [transition(fingerprint, **extra)])
    row = conn.execute(
        "SELECT id FROM alerts WHERE fingerprint = %s AND handling <> 'closed'", (fingerprint,)
    ).fetchone()
    assert row is not None
    return int(row[0])


def test_actions_write_timestamps_and_audit_rows(database: str) -> None:
    with psycopg.connect(database, autocommit=True) as conn:
        alert = open_alert(conn, "fp1")
        act(conn, alert, Action.ACK, "chen", T0 + timedelta(minutes=2))
        act(
            conn,
            alert,
            Action.DISPATCH,
            "chen",
            T0 + timedelta(minutes=5),
            team="drainage-ft",
            note="send the pump truck",
        )
        act(conn, alert, Action.HANDLE, "li", T0 + timedelta(minutes=50), note="inlet cleared")
        record_transitions(
            conn, [transition("fp1", ConditionState.RESOLVED, at=T0 + timedelta(minutes=55))]
        )
        act(conn, alert, Action.CLOSE, "chen", T0 + timedelta(hours=1))
    (handling, team, ack, disp, handled, closed) = rows(
        database,
        "SELECT handling, team, acknowledged_at, dispatched_at, handled_at, closed_at "
        "FROM alerts WHERE id = %s",
        alert,
    )[0]
    assert (handling, team) == ("closed", "drainage-ft")
    assert ack == T0 + timedelta(minutes=2) and disp == T0 + timedelta(minutes=5)
    assert handled == T0 + timedelta(minutes=50) and closed == T0 + timedelta(hours=1)
    events = rows(
        database,
        "SELECT actor, dimension, from_state, to_state, team, note FROM alert_events "
        "WHERE alert_id = %s ORDER BY at, id",
        alert,
    )
    assert events == [
        ("rules", "condition", None, "firing", None, "fp1 is full"),
        ("chen", "handling", "new", "acknowledged", None, ""),
        ("chen", "handling", "acknowledged", "dispatched", "drainage-ft", "send the pump truck"),
        ("li", "handling", "dispatched", "handled", None, "inlet cleared"),
        ("rules", "condition", "firing", "resolved", None, "fp1 is full"),
        ("chen", "handling", "handled", "closed", None, ""),
    ]
    view = rows(
        database,
        "SELECT ack_seconds, close_seconds FROM alert_handling_times WHERE alert_id = %s",
        alert,
    )
    assert view == [(120.0, 3600.0)]


def test_forbidden_and_failed_actions_change_nothing(database: str) -> None:
    with psycopg.connect(database, autocommit=True) as conn:
        alert = open_alert(conn, "fp1")
        act(conn, alert, Action.DISPATCH, "chen", T0, team="flood")
        before = rows(database, "SELECT * FROM alerts ORDER BY id")
        member = Principal("li", Role.MEMBER, "drainage")

        def guard(status: Any) -> None:
            authorize_alert(member, Permission.ACK, status.alert_id, status.team)

        with pytest.raises(ForbiddenError):
            act(conn, alert, Action.HANDLE, "li", T0, note="done", guard=guard)
        with pytest.raises(TransitionError, match="already dispatched to flood"):
            act(conn, alert, Action.DISPATCH, "chen", T0, team="flood")
        with pytest.raises(HandlingError, match="note is required"):
            act(conn, alert, Action.CLOSE, "chen", T0)
        with pytest.raises(AlertNotFoundError, match="alert 999 does not exist"):
            act(conn, 999, Action.ACK, "chen", T0)
        # ack of a dispatched alert: a no-op, no audit row
        assert not act(conn, alert, Action.ACK, "chen", T0 + timedelta(minutes=1)).changed
    assert rows(database, "SELECT * FROM alerts ORDER BY id") == before
    assert scalar(database, "SELECT count(*) FROM alert_events WHERE dimension = 'handling'") == 1


def test_closed_alert_and_new_firing_opens_a_new_alert(database: str) -> None:
    with psycopg.connect(database, autocommit=True) as conn:
        first = open_alert(conn, "fp1")
        # firing again while open updates the same alert
        record_transitions(conn, [transition("fp1", level=Level.RED, at=T0 + timedelta(minutes=1))])
        assert scalar(database, "SELECT count(*) FROM alerts") == 1
        act(conn, first, Action.CLOSE, "chen", T0 + timedelta(minutes=2), note="false alarm")
        with pytest.raises(TransitionError, match="is closed"):
            act(conn, first, Action.ACK, "chen", T0 + timedelta(minutes=3))
        # a resolve with no open alert does nothing; a new firing opens a new alert
        record_transitions(
            conn, [transition("fp1", ConditionState.RESOLVED, at=T0 + timedelta(minutes=4))]
        )
        assert scalar(database, "SELECT count(*) FROM alerts") == 1
        second = open_alert(conn, "fp1", at=T0 + timedelta(minutes=5))
    assert second != first
    assert rows(database, "SELECT id, handling FROM alerts ORDER BY id") == [
        (first, "closed"),
        (second, "new"),
    ]


def test_resolved_unhandled_alert_stays_open(database: str) -> None:
    with psycopg.connect(database, autocommit=True) as conn:
        alert = open_alert(conn, "fp1")
        record_transitions(
            conn, [transition("fp1", ConditionState.RESOLVED, at=T0 + timedelta(minutes=1))]
        )
        found, total = list_alerts(conn, AlertFilter(), T0 + timedelta(minutes=2))
    assert total == 1 and found[0].id == alert
    assert (found[0].condition, found[0].handling) == (ConditionState.RESOLVED, Handling.NEW)


def test_list_filters_order_and_paging(database: str) -> None:
    with psycopg.connect(database, autocommit=True) as conn:
        a = open_alert(conn, "a", level=Level.BLUE, district="futian", at=T0)
        b = open_alert(
            conn,
            "b",
            level=Level.RED,
            district="nanshan",
            rule="river_level",
            domain="flood",
            at=T0 + timedelta(minutes=1),
        )
        c = open_alert(
            conn, "c", level=Level.ORANGE, district="futian", at=T0 + timedelta(minutes=2)
        )
        act(conn, c, Action.DISPATCH, "chen", T0 + timedelta(minutes=3), team="drainage")
        act(conn, a, Action.CLOSE, "chen", T0 + timedelta(minutes=3), note="test device")
        now = T0 + timedelta(minutes=4)

        def ids(**kw: Any) -> list[int]:
            return [r.id for r in list_alerts(conn, AlertFilter(**kw), now)[0]]

        assert ids() == [c, b]
        assert ids(state="all") == [c, b, a]
        assert ids(state="closed") == [a]
        assert ids(state="all", order="oldest") == [a, b, c]
        assert ids(state="all", order="level") == [b, c, a]
        assert ids(min_level=Level.ORANGE) == [c, b]
        assert ids(state="all", district="futian") == [c, a]
        assert ids(domain="flood") == [b]
        assert ids(rule="river_level") == [b]
        assert ids(team="drainage") == [c]
        assert ids(handling=(Handling.DISPATCHED,)) == [c]
        assert ids(device_id="dev-b") == [b]
        assert ids(condition=ConditionState.RESOLVED) == []
        assert ids(state="all", since=T0 + timedelta(minutes=1)) == [c, b]
        assert ids(state="all", until=T0 + timedelta(minutes=1)) == [a]
        page, total = list_alerts(conn, AlertFilter(state="all", limit=1, offset=1), now)
        assert [r.id for r in page] == [b] and total == 3
        # filter values are data, never SQL
        assert ids(district="futian' OR '1'='1") == []
        assert ids(rule="x'; DROP TABLE alerts; --") == []
    assert scalar(database, "SELECT count(*) FROM alerts") == 3
    with pytest.raises(HandlingError, match="limit"):
        AlertFilter(limit=100_000)


def test_silenced_flag_and_timeline(database: str) -> None:
    with psycopg.connect(database, autocommit=True) as conn:
        quiet = open_alert(conn, "q", district="futian")
        loud = open_alert(conn, "l", district="nanshan")
        silence = add_silence(
            conn,
            Silence.build(
                [Matcher.parse("district=futian"), Matcher.parse("rule=~pipe.*")],
                T0,
                T0 + timedelta(hours=2),
                "chen",
                "pump station maintenance",
            ),
        )
        inside = T0 + timedelta(hours=1)
        found = {r.id: r for r in list_alerts(conn, AlertFilter(), inside)[0]}
        assert found[quiet].silenced_by == (silence.id,) and found[quiet].silenced
        assert not found[loud].silenced
        after = get_alert(conn, quiet, T0 + timedelta(hours=3))
        assert after is not None and not after.silenced  # the silence ended by itself
        act(conn, quiet, Action.ACK, "chen", inside)
        timeline = alert_timeline(conn, quiet)
        assert [(e.dimension, e.to_state) for e in timeline] == [
            ("condition", "firing"),
            ("handling", "acknowledged"),
        ]
        assert get_alert(conn, 424242, inside) is None


def test_handling_metric_views(database: str) -> None:
    with psycopg.connect(database, autocommit=True) as conn:
        ids = [open_alert(conn, f"fp{i}", district="futian") for i in range(3)]
        flood = open_alert(conn, "fl", district="nanshan", domain="flood", rule="river_level")
        for i, alert in enumerate(ids):
            act(
                conn,
                alert,
                Action.DISPATCH,
                "chen",
                T0 + timedelta(minutes=10 * (i + 1)),
                team="drainage",
            )
        act(conn, ids[0], Action.CLOSE, "chen", T0 + timedelta(hours=1), note="done by phone")
    by_team = {r[0]: r for r in rows(database, "SELECT * FROM alert_handling_by_team")}
    _team, alerts, open_, unacked, acked, closed, avg_ack, med_ack, p90_ack, avg_close, *_ = (
        by_team["drainage"]
    )
    assert (alerts, open_, unacked, acked, closed) == (3, 2, 0, 3, 1)
    assert (avg_ack, med_ack) == (1200.0, 1200.0)
    assert p90_ack == pytest.approx(1680.0)
    assert avg_close == 3600.0
    assert by_team["(none)"][1:6] == (1, 1, 1, 0, 0)
    by_district = {r[0]: r[1:3] for r in rows(database, "SELECT * FROM alert_handling_by_district")}
    assert by_district == {"futian": (3, 2), "nanshan": (1, 1)}
    by_domain = {r[0]: r[1:3] for r in rows(database, "SELECT * FROM alert_handling_by_domain")}
    assert by_domain == {"drainage": (3, 2), "flood": (1, 1)}
    assert flood


def test_concurrent_acks_make_one_audit_row(database: str) -> None:
    with psycopg.connect(database, autocommit=True) as conn:
        alert = open_alert(conn, "fp1")
    barrier = threading.Barrier(8)

    def ack(i: int) -> bool:
        with psycopg.connect(database, autocommit=True) as conn:
            barrier.wait(10)
            return act(conn, alert, Action.ACK, f"user{i}", T0 + timedelta(seconds=i)).changed

    with ThreadPoolExecutor(8) as pool:
        changed = list(pool.map(ack, range(8)))
    assert changed.count(True) == 1
    assert scalar(database, "SELECT count(*) FROM alert_events WHERE dimension = 'handling'") == 1


def test_close_racing_a_new_firing_opens_a_new_alert(database: str) -> None:
    """Both lock the open alert; whichever comes second sees the other's result."""
    with psycopg.connect(database, autocommit=True) as conn:
        alert = open_alert(conn, "fp1")
        with psycopg.connect(database) as holder:  # holds the row lock, as a close in flight
            holder.execute("SELECT 1 FROM alerts WHERE id = %s FOR UPDATE", (alert,))
            holder.execute(
                "UPDATE alerts SET handling = 'closed', closed_at = %s WHERE id = %s",
                (T0, alert),
            )
            done = threading.Event()

            def fire() -> None:
                with psycopg.connect(database, autocommit=True) as other:
                    record_transitions(
                        other, [transition("fp1", level=Level.RED, at=T0 + timedelta(minutes=1))]
                    )
                done.set()

            thread = threading.Thread(target=fire)
            thread.start()
            assert not done.wait(0.5)  # waits for the lock
            holder.commit()
        thread.join(10)
        assert done.is_set()
    assert rows(database, "SELECT id, handling, level FROM alerts ORDER BY id") == [
        (alert, "closed", 2),
        (alert + 1, "new", 4),
    ]
