"""PostgreSQL adapter for alert handling: actions on one alert, and queries over alerts.

Every action runs in one transaction: the alert row is locked
(`SELECT … FOR UPDATE`), an optional guard sees the locked status (so an
authorization decision cannot race a re-dispatch), `alerts.lifecycle.decide`
says what changes, and the row and an `alert_events` row (dimension
`handling`, the actor, from and to state, the note) are written together.
A no-op (ack of an acknowledged alert) writes nothing. Give these functions
an autocommit connection: inside a transaction the caller opened, the
action's transaction is a savepoint and commits only with the caller's.

Queries take only bound parameters; the SQL text is assembled from constant
fragments chosen by the filter's fields, never from their values.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal

import psycopg

from alerts.lifecycle import (
    Action,
    AlertNotFoundError,
    Handling,
    HandlingError,
    HandlingStatus,
    Step,
    decide,
)
from alerts.model import ConditionState, Level
from alerts.silence import alert_attributes, list_silences, silenced_by

MAX_LIMIT = 500
MAX_OFFSET = 100_000
MAX_ACTOR = 100

Order = Literal["newest", "oldest", "level", "updated"]
ORDERS: Mapping[str, str] = {
    "newest": "a.started_at DESC, a.id DESC",
    "oldest": "a.started_at, a.id",
    "level": "a.level DESC, a.started_at DESC, a.id DESC",
    "updated": "a.updated_at DESC, a.id DESC",
}
StateFilter = Literal["open", "closed", "all"]


@dataclass(frozen=True, slots=True)
class AlertRecord:
    id: int
    fingerprint: str
    rule: str
    domain: str
    device_id: str | None
    district: str | None
    level: Level
    max_level: Level
    condition: ConditionState
    handling: Handling
    team: str | None
    summary: str
    labels: Mapping[str, Any]
    detail: Mapping[str, Any]
    parent: str | None
    started_at: datetime
    updated_at: datetime
    resolved_at: datetime | None
    acknowledged_at: datetime | None
    dispatched_at: datetime | None
    handled_at: datetime | None
    closed_at: datetime | None
    silenced_by: tuple[int, ...] = ()

    @property
    def silenced(self) -> bool:
        return bool(self.silenced_by)


@dataclass(frozen=True, slots=True)
class AlertEvent:
    id: int
    at: datetime
    actor: str
    dimension: str
    from_state: str | None
    to_state: str
    level: Level | None
    note: str
    team: str | None = None
    """On dispatch events: the team the alert was dispatched to."""


@dataclass(frozen=True, slots=True)
class AlertFilter:
    """Which alerts to list. Every field narrows; None means any."""

    state: StateFilter = "open"
    handling: tuple[Handling, ...] = ()
    condition: ConditionState | None = None
    min_level: Level | None = None
    domain: str | None = None
    district: str | None = None
    team: str | None = None
    rule: str | None = None
    device_id: str | None = None
    since: datetime | None = None
    """Started at or after."""
    until: datetime | None = None
    """Started before."""
    order: Order = "newest"
    limit: int = 100
    offset: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= MAX_LIMIT:
            raise HandlingError(f"limit {self.limit}: between 1 and {MAX_LIMIT}")
        if not 0 <= self.offset <= MAX_OFFSET:
            raise HandlingError(f"offset {self.offset}: between 0 and {MAX_OFFSET}")
        if self.order not in ORDERS:
            raise HandlingError(f"order {self.order!r}: one of {', '.join(ORDERS)}")
        if self.state not in ("open", "closed", "all"):
            raise HandlingError(f"state {self.state!r}: open, closed or all")


_ALERT_COLUMNS = """a.id, a.fingerprint, a.rule, a.domain, a.device_id, a.district, a.level,
    a.max_level, a.condition, a.handling, a.team, a.summary, a.labels, a.detail, a.parent,
    a.started_at, a.updated_at, a.resolved_at, a.acknowledged_at, a.dispatched_at,
    a.handled_at, a.closed_at"""


def _record(row: Sequence[Any]) -> AlertRecord:
    return AlertRecord(
        row[0],
        row[1],
        row[2],
        row[3],
        row[4],
        row[5],
        Level(row[6]),
        Level(row[7]),
        ConditionState(row[8]),
        Handling(row[9]),
        *row[10:22],
    )


def _status(row: Sequence[Any]) -> HandlingStatus:
    return HandlingStatus(
        row[0], Handling(row[1]), ConditionState(row[2]), row[3], row[4], row[5], row[6], row[7]
    )


Guard = Callable[[HandlingStatus], None]


def act(
    conn: psycopg.Connection[Any],
    alert_id: int,
    action: Action,
    actor: str,
    now: datetime,
    *,
    team: str | None = None,
    note: str | None = None,
    guard: Guard | None = None,
) -> Step:
    """Do `action` on one alert as `actor`, in one transaction; returns what changed.

    Raises AlertNotFoundError, TransitionError/HandlingError (not allowed, bad note
    or team), or whatever `guard` raises (e.g. auth.Forbidden) — in all these
    cases nothing is written.
    """
    actor = actor.strip()
    if not actor or len(actor) > MAX_ACTOR:
        raise HandlingError(f"the actor must be a name of 1-{MAX_ACTOR} characters")
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(
            "SELECT id, handling, condition, team, acknowledged_at, dispatched_at, handled_at, "
            "closed_at, level FROM alerts WHERE id = %s FOR UPDATE",
            (alert_id,),
        )
        row = cur.fetchone()
        if row is None:
            raise AlertNotFoundError(f"alert {alert_id} does not exist; `cityvitals alerts list`")
        status = _status(row)
        if guard is not None:
            guard(status)
        step = decide(status, action, now, team=team, note=note)
        if not step.changed:
            return step
        after = step.after
        cur.execute(
            """UPDATE alerts SET handling = %s, team = %s, acknowledged_at = %s,
                   dispatched_at = %s, handled_at = %s, closed_at = %s, updated_at = %s
               WHERE id = %s""",
            (
                after.handling.value,
                after.team,
                after.acknowledged_at,
                after.dispatched_at,
                after.handled_at,
                after.closed_at,
                now,
                alert_id,
            ),
        )
        cur.execute(
            """INSERT INTO alert_events (alert_id, at, actor, dimension, from_state, to_state,
                                         level, note, team)
               VALUES (%s, %s, %s, 'handling', %s, %s, %s, %s, %s)""",
            (
                alert_id,
                now,
                actor,
                status.handling.value,
                after.handling.value,
                row[8],
                step.note,
                after.team if action is Action.DISPATCH else None,
            ),
        )
    return step


def _where(f: AlertFilter) -> tuple[str, dict[str, Any]]:
    clauses: list[str] = []
    params: dict[str, Any] = {}
    if f.state == "open":
        clauses.append("a.handling <> 'closed'")
    elif f.state == "closed":
        clauses.append("a.handling = 'closed'")
    if f.handling:
        clauses.append("a.handling = ANY(%(handling)s::text[])")
        params["handling"] = [h.value for h in f.handling]
    if f.condition is not None:
        clauses.append("a.condition = %(condition)s")
        params["condition"] = f.condition.value
    if f.min_level is not None:
        clauses.append("a.level >= %(min_level)s")
        params["min_level"] = int(f.min_level)
    for name in ("domain", "district", "team", "rule", "device_id"):
        value = getattr(f, name)
        if value is not None:
            clauses.append(f"a.{name} = %({name})s")  # name is one of the constants above
            params[name] = value
    if f.since is not None:
        clauses.append("a.started_at >= %(since)s")
        params["since"] = f.since
    if f.until is not None:
        clauses.append("a.started_at < %(until)s")
        params["until"] = f.until
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def _with_silences(
    conn: psycopg.Connection[Any], records: list[AlertRecord], now: datetime
) -> list[AlertRecord]:
    active = list_silences(conn, now)
    if not active:
        return records
    out = []
    for r in records:
        attributes = alert_attributes(
            rule=r.rule,
            domain=r.domain,
            device_id=r.device_id,
            district=r.district,
            level=r.level,
            labels=r.labels,
        )
        ids = tuple(silenced_by(active, attributes, now))
        out.append(replace(r, silenced_by=ids) if ids else r)
    return out


def list_alerts(
    conn: psycopg.Connection[Any], f: AlertFilter, now: datetime
) -> tuple[list[AlertRecord], int]:
    """One page of alerts matching `f`, each flagged with the silences holding it at
    `now`, and the number of alerts matching in all."""
    where, params = _where(f)
    rows = conn.execute(
        f"SELECT {_ALERT_COLUMNS} FROM alerts a{where} ORDER BY {ORDERS[f.order]} "
        "LIMIT %(limit)s OFFSET %(offset)s",
        {**params, "limit": f.limit, "offset": f.offset},
    ).fetchall()
    total_row = conn.execute(f"SELECT count(*) FROM alerts a{where}", params).fetchone()
    total = int(total_row[0]) if total_row else 0
    return _with_silences(conn, [_record(r) for r in rows], now), total


def get_alert(conn: psycopg.Connection[Any], alert_id: int, now: datetime) -> AlertRecord | None:
    row = conn.execute(f"SELECT {_ALERT_COLUMNS} FROM alerts a WHERE a.id = %s", (alert_id,))
    found = row.fetchone()
    if found is None:
        return None
    return _with_silences(conn, [_record(found)], now)[0]


def alert_timeline(conn: psycopg.Connection[Any], alert_id: int) -> list[AlertEvent]:
    """Every condition and handling event of one alert, oldest first."""
    rows = conn.execute(
        "SELECT id, at, actor, dimension, from_state, to_state, level, note, team "
        "FROM alert_events WHERE alert_id = %s ORDER BY at, id",
        (alert_id,),
    ).fetchall()
    return [
        AlertEvent(
            r[0], r[1], r[2], r[3], r[4], r[5], None if r[6] is None else Level(r[6]), r[7], r[8]
        )
        for r in rows
    ]
