"""`cityvitals status` shows what operators act on: vital signs, open alerts, rules in
error and the notification outbox."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
from rich.console import Console

from alerts.model import AlertTransition, ConditionState, Level
from alerts.store import record_transitions
from cityvitals import status as status_view

T0 = datetime(2026, 7, 1, 8, 0, tzinfo=UTC)


def _firing(fingerprint: str, level: Level, at: datetime) -> AlertTransition:
    return AlertTransition(
        fingerprint, "drainage_surcharge", "drainage", ConditionState.FIRING, level,
        Level.NORMAL, at, fingerprint, "d01", "surcharge",
    )  # fmt: skip


def test_operations_part_of_status(database: str) -> None:
    with psycopg.connect(database) as conn:
        record_transitions(
            conn,
            [
                _firing("dr-1", Level.ORANGE, T0),
                _firing("dr-2", Level.ORANGE, T0),
                _firing("dr-3", Level.RED, T0),
                _firing("dr-4", Level.BLUE, T0),
            ],
        )
        conn.execute(
            "UPDATE alerts SET handling = 'acknowledged', acknowledged_at = %s "
            "WHERE fingerprint = 'dr-2'",
            (T0,),
        )
        conn.execute(
            "UPDATE alerts SET handling = 'closed', closed_at = %s WHERE fingerprint = 'dr-4'",
            (T0,),
        )
        conn.execute(
            "INSERT INTO vital_signs (ts, scope, domain, level) VALUES "
            "(%s, 'city', 'drainage', 2), (%s, 'city', 'drainage', 4), (%s, 'd01', 'flood', 3)",
            (T0, T0 + timedelta(minutes=1), T0),
        )
        conn.execute(
            "INSERT INTO rule_health (rule, evaluations, errors, last_error, last_error_at) "
            "VALUES ('broken', 10, 3, 'division by zero', %s), ('fine', 10, 0, NULL, NULL)",
            (T0,),
        )
        for key, state in (("a", "sent"), ("b", "sent"), ("c", "failed"), ("d", "pending")):
            conn.execute(
                """INSERT INTO notifications (idempotency_key, kind, team, channel,
                       channel_type, payload, status, max_attempts, created_at,
                       next_attempt_at)
                   VALUES (%s, 'group', 'drainage', 'ops', 'webhook', '{}', %s, 3, %s, %s)""",
                (key, state, T0, T0),
            )

    s = status_view.collect(database)
    assert s.vitals == [("drainage", 4, T0 + timedelta(minutes=1))], "the city's latest only"
    assert sorted(s.open_alerts) == [(3, "acknowledged", 1), (3, "new", 1), (4, "new", 1)]
    assert [(rule, errors, last) for rule, errors, last, _ in s.failing_rules] == [
        ("broken", 3, "division by zero")
    ]
    assert s.notifications == {"sent": 2, "failed": 1, "pending": 1}

    console = Console(width=200, record=True, color_system=None)
    console.print(status_view.render(database))
    out = console.export_text()
    assert "City vital signs" in out and "red" in out
    assert "Rules in error" in out and "division by zero" in out
    assert "failed: see `cityvitals notifications" in out
