"""PostgreSQL adapter of the rule engine: registry in, state and health and vitals out."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from alerts.model import ConditionState, Level
from devices.model import Reading
from devices.profile import DeviceProfile
from rules.engine import AlertState, DeviceInfo, Engine, RuleHealth, epoch_seconds, from_epoch

Conn = psycopg.Connection[tuple[Any, ...]]


DeviceRow = tuple[Any, ...]
"""A `devices` row as `device_rows` reads it: device_id, profile, district, name, attributes."""


def device_rows(conn: Conn) -> list[DeviceRow]:
    return conn.execute(
        "SELECT device_id, profile, district, name, attributes FROM devices"
    ).fetchall()


def device_infos(
    rows: Iterable[DeviceRow], profiles: Mapping[str, DeviceProfile]
) -> list[DeviceInfo]:
    # Profile defaults fill what the registry leaves out (a provisional device has
    # no attributes at all).
    return [
        DeviceInfo(
            str(d),
            profiles[str(p)],
            str(s),
            str(n or ""),
            profiles[str(p)].device_attributes(dict(a or {}))[0],
        )
        for d, p, s, n, a in rows
        if str(p) in profiles
    ]


def load_devices(conn: Conn, profiles: Mapping[str, DeviceProfile]) -> list[DeviceInfo]:
    return device_infos(device_rows(conn), profiles)


def load_states(conn: Conn) -> list[AlertState]:
    rows = conn.execute(
        "SELECT fingerprint, rule, device_id, district, state, level, since, last_event, "
        "parent, detail FROM rule_state"
    ).fetchall()
    return [
        AlertState(
            fingerprint=fp,
            rule=rule,
            device_id=device,
            district=district,
            state=ConditionState(state),
            level=Level(level),
            since=epoch_seconds(since),
            last_event=None if last is None else epoch_seconds(last),
            parent=parent,
            values=dict(detail or {}),
        )
        for fp, rule, device, district, state, level, since, last, parent, detail in rows
    ]


def save_states(conn: Conn, engine: Engine, fingerprints: Iterable[str]) -> None:
    """Bring `rule_state` in line with the engine for these fingerprints."""
    upserts, deletes = [], []
    for fp in set(fingerprints):
        st = engine.alerts.get(fp)
        if st is None:
            deletes.append(fp)
            continue
        upserts.append(
            (
                st.fingerprint,
                st.rule,
                st.device_id,
                st.district,
                st.state.value,
                int(st.level),
                from_epoch(st.since),
                None if st.last_event is None else from_epoch(st.last_event),
                st.parent,
                Jsonb(_jsonable(st.values)),
            )
        )
    with conn.transaction(), conn.cursor() as cur:
        if deletes:
            cur.execute("DELETE FROM rule_state WHERE fingerprint = ANY(%s)", (deletes,))
        if upserts:
            cur.executemany(
                """INSERT INTO rule_state (fingerprint, rule, device_id, district, state, level,
                                           since, last_event, parent, detail, updated_at)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, now())
                   ON CONFLICT (fingerprint) DO UPDATE SET
                       state = EXCLUDED.state, level = EXCLUDED.level, since = EXCLUDED.since,
                       last_event = EXCLUDED.last_event, parent = EXCLUDED.parent,
                       detail = EXCLUDED.detail, updated_at = now()""",
                upserts,
            )


def save_health(conn: Conn, health: Mapping[str, RuleHealth]) -> None:
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(
            """INSERT INTO rule_health (rule, evaluations, errors, last_error, last_error_at,
                                        updated_at)
               VALUES (%s, %s, %s, %s, %s, now())
               ON CONFLICT (rule) DO UPDATE SET
                   evaluations = EXCLUDED.evaluations, errors = EXCLUDED.errors,
                   last_error = EXCLUDED.last_error, last_error_at = EXCLUDED.last_error_at,
                   updated_at = now()""",
            [
                (name, h.evaluations, h.errors, h.last_error, h.last_error_at)
                for name, h in health.items()
            ],
        )


def last_seen(conn: Conn) -> list[tuple[str, datetime]]:
    rows = conn.execute(
        "SELECT device_id, last_seen FROM device_status WHERE last_seen IS NOT NULL"
    ).fetchall()
    return [(str(d), t) for d, t in rows]


def recent_readings(conn: Conn, engine: Engine, chunk: int = 50_000) -> Iterator[Reading]:
    """Readings inside each metric's longest window before the newest stored reading."""
    keep: dict[str, float] = {}
    for state in engine.devices.values():
        for metric, seconds in state.keep.items():
            keep[metric] = max(keep.get(metric, 0.0), seconds)
    if not keep:
        return
    newest = conn.execute("SELECT max(ts) FROM readings").fetchone()
    if newest is None or newest[0] is None:
        return
    for metric, seconds in keep.items():
        since = newest[0] - timedelta(seconds=seconds)
        with conn.cursor(name=f"warm_{metric}") as cur:
            cur.itersize = chunk
            cur.execute(
                "SELECT ts, device_id, metric, value, quality FROM readings "
                "WHERE metric = %s AND ts > %s ORDER BY ts",
                (metric, since),
            )
            for ts, device, m, value, quality in cur:
                yield Reading(ts, device, m, value, quality)


def save_vitals(conn: Conn, signs: Sequence[Any]) -> None:
    """Append vital signs (objects with scope, domain, level, indicators, at)."""
    if not signs:
        return
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(
            """INSERT INTO vital_signs (ts, scope, domain, level, indicators)
               VALUES (%s, %s, %s, %s, %s)
               ON CONFLICT (scope, domain, ts) DO UPDATE SET
                   level = EXCLUDED.level, indicators = EXCLUDED.indicators""",
            [
                (s.at, s.scope, s.domain, int(s.level), Jsonb(_jsonable(s.indicators)))
                for s in signs
            ],
        )


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float | int | str | bool) or value is None:
        return value
    return str(value)
