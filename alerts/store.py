"""PostgreSQL adapter: alert transitions become alerts and audit rows.

One open alert per fingerprint: a transition updates the open alert, or opens
a new one when the fingerprint has none (a closed alert stays closed). Every
change of condition is an `alert_events` row with the actor `rules`.
Pending alerts are kept by the rule engine only; an alert row begins when its
condition first fires.
"""

from __future__ import annotations

from collections.abc import Sequence

import psycopg
from psycopg.types.json import Jsonb

from alerts.model import AlertTransition, ConditionState


def _jsonable(values: object) -> object:
    if isinstance(values, dict):
        return {str(k): _jsonable(v) for k, v in values.items()}
    if isinstance(values, list | tuple):
        return [_jsonable(v) for v in values]
    if isinstance(values, float | int | str | bool) or values is None:
        return values
    return str(values)


def record_transitions(
    conn: psycopg.Connection[tuple[object, ...]], transitions: Sequence[AlertTransition]
) -> int:
    """Store transitions in one transaction; returns the alert rows touched."""
    touched = 0
    with conn.transaction(), conn.cursor() as cur:
        for t in transitions:
            if t.state is ConditionState.PENDING:
                continue
            cur.execute(
                "SELECT id, condition, level FROM alerts "
                "WHERE fingerprint = %s AND handling <> 'closed' FOR UPDATE",
                (t.fingerprint,),
            )
            row = cur.fetchone()
            if row is None:
                if t.state is not ConditionState.FIRING:
                    continue  # a pending alert that never fired
                cur.execute(
                    """INSERT INTO alerts (fingerprint, rule, domain, device_id, district, level,
                                           max_level, condition, summary, labels, detail, parent,
                                           started_at, updated_at)
                       VALUES (%s, %s, %s, %s, %s, %s, %s, 'firing', %s, %s, %s, %s, %s, %s)
                       RETURNING id""",
                    (
                        t.fingerprint,
                        t.rule,
                        t.domain,
                        t.device_id,
                        t.district,
                        int(t.level),
                        int(t.level),
                        t.summary,
                        Jsonb(dict(t.labels)),
                        Jsonb(_jsonable(dict(t.values))),
                        t.parent,
                        t.at,
                        t.at,
                    ),
                )
                created = cur.fetchone()
                assert created is not None
                alert_id, previous = created[0], None
            else:
                alert_id, previous = row[0], row[1]
                if t.state is ConditionState.RESOLVED:
                    cur.execute(
                        "UPDATE alerts SET condition = 'resolved', resolved_at = %s, "
                        "updated_at = %s, detail = %s WHERE id = %s",
                        (t.at, t.at, Jsonb(_jsonable(dict(t.values))), alert_id),
                    )
                else:
                    cur.execute(
                        """UPDATE alerts SET condition = 'firing', level = %s,
                               max_level = GREATEST(max_level, %s), summary = %s, detail = %s,
                               parent = COALESCE(%s, parent), resolved_at = NULL,
                               updated_at = %s
                           WHERE id = %s""",
                        (
                            int(t.level),
                            int(t.level),
                            t.summary,
                            Jsonb(_jsonable(dict(t.values))),
                            t.parent,
                            t.at,
                            alert_id,
                        ),
                    )
            note = t.summary
            if t.state is ConditionState.FIRING and previous == "firing":
                note = f"{t.previous_level.label} → {t.level.label}: {t.summary}"
            cur.execute(
                """INSERT INTO alert_events (alert_id, at, actor, dimension, from_state,
                                             to_state, level, note)
                   VALUES (%s, %s, 'rules', 'condition', %s, %s, %s, %s)""",
                (alert_id, t.at, previous, t.state.value, int(t.level), note),
            )
            touched += 1
    return touched
