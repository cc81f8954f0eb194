"""PostgreSQL adapter of the ingest: one transaction per batch.

Readings go in with binary COPY straight into `readings`; when the batch holds
a reading that is already stored (a redelivery after a crash or reconnect), the
batch falls back to COPY into a staging table and INSERT … ON CONFLICT DO
NOTHING, so duplicates are stored once without slowing the common case.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

import orjson
import psycopg
from psycopg import errors as pg_errors

from devices.model import DeviceEvent, Reading, StatusUpdate
from ingest.decode import DeadLetter, NewDevice

_COPY_TYPES = ["timestamptz", "text", "text", "float8", "int2"]
_READING_COLUMNS = "(ts, device_id, metric, value, quality)"


@dataclass(frozen=True, slots=True)
class SeenDevice:
    """Liveness of a device from its telemetry: when last heard, its last `seq`, gaps."""

    device_id: str
    last_seen: datetime
    last_seq: int | None
    new_gaps: int
    received_at: datetime
    """When the platform heard it: orders it against last wills, whatever the device's clock."""


@dataclass(slots=True)
class WriteResult:
    readings: int = 0
    duplicates: int = 0
    events: int = 0
    dead_letters: int = 0
    provisional: int = 0


@dataclass(slots=True)
class Batch:
    readings: list[Reading]
    events: list[DeviceEvent]
    statuses: list[StatusUpdate]
    dead_letters: list[DeadLetter]
    new_devices: list[NewDevice]
    seen: list[SeenDevice]


class BatchWriter:
    """Writes batches over one connection; the caller reconnects on OperationalError."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None

    def connect(self) -> None:
        self.close()
        conn = psycopg.connect(self.url, autocommit=False, application_name="cityvitals-ingest")
        conn.execute(
            "CREATE TEMP TABLE IF NOT EXISTS readings_stage "
            "(LIKE readings INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        conn.commit()
        self._conn = conn

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    @property
    def conn(self) -> psycopg.Connection[tuple[object, ...]]:
        if self._conn is None or self._conn.closed:
            self.connect()
        assert self._conn is not None
        return self._conn

    def load_registry(self) -> dict[str, str]:
        with self.conn.transaction():
            rows = self.conn.execute("SELECT device_id, profile FROM devices").fetchall()
        return {str(d): str(p) for d, p in rows}

    def load_last_seq(self) -> dict[str, int]:
        with self.conn.transaction():
            rows = self.conn.execute(
                "SELECT device_id, last_seq FROM device_status WHERE last_seq IS NOT NULL"
            ).fetchall()
        return {str(d): int(str(q)) for d, q in rows}

    def write(self, batch: Batch) -> WriteResult:
        conn = self.conn
        result = WriteResult()
        try:
            with conn.transaction():
                if batch.new_devices:
                    result.provisional = self._provisional(conn, batch.new_devices)
                if batch.readings:
                    result.readings = self._readings(conn, batch.readings)
                    result.duplicates = len(batch.readings) - result.readings
                if batch.events:
                    result.events = self._events(conn, batch.events)
                if batch.seen:
                    self._seen(conn, batch.seen)
                if batch.statuses:
                    self._statuses(conn, batch.statuses)
                if batch.dead_letters:
                    self._dead_letters(conn, batch.dead_letters)
                    result.dead_letters = len(batch.dead_letters)
        except psycopg.OperationalError:
            self.close()
            raise
        return result

    def _provisional(
        self, conn: psycopg.Connection[tuple[object, ...]], devices: Sequence[NewDevice]
    ) -> int:
        cur = conn.execute(
            """INSERT INTO devices (device_id, profile, district, provisional)
               SELECT d, p, s, true FROM unnest(%s::text[], %s::text[], %s::text[]) AS u(d, p, s)
               ON CONFLICT (device_id) DO NOTHING""",
            (
                [d.device_id for d in devices],
                [d.profile for d in devices],
                [d.district for d in devices],
            ),
        )
        return max(cur.rowcount, 0)

    def _copy(
        self, cur: psycopg.Cursor[tuple[object, ...]], table: str, readings: Iterable[Reading]
    ) -> None:
        with cur.copy(f"COPY {table} {_READING_COLUMNS} FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(_COPY_TYPES)
            write = copy.write_row
            for r in readings:
                write((r.ts, r.device_id, r.metric, r.value, r.quality))

    def _readings(
        self, conn: psycopg.Connection[tuple[object, ...]], readings: Sequence[Reading]
    ) -> int:
        cur = conn.cursor()
        try:
            with conn.transaction():
                self._copy(cur, "readings", readings)
            return len(readings)
        except pg_errors.UniqueViolation:
            pass
        self._copy(cur, "readings_stage", readings)
        cur.execute(
            f"INSERT INTO readings {_READING_COLUMNS} "
            f"SELECT ts, device_id, metric, value, quality FROM readings_stage "
            "ON CONFLICT DO NOTHING"
        )
        inserted = max(cur.rowcount, 0)
        cur.execute("TRUNCATE readings_stage")
        return inserted

    def _events(
        self, conn: psycopg.Connection[tuple[object, ...]], events: Sequence[DeviceEvent]
    ) -> int:
        cur = conn.execute(
            """INSERT INTO events (ts, device_id, type, code, detail)
               SELECT * FROM unnest(%s::timestamptz[], %s::text[], %s::text[], %s::int[],
                                    %s::jsonb[])
               ON CONFLICT DO NOTHING""",
            (
                [e.ts for e in events],
                [e.device_id for e in events],
                [e.type for e in events],
                [e.code for e in events],
                [orjson.dumps(e.detail).decode() for e in events],
            ),
        )
        return max(cur.rowcount, 0)

    def _seen(
        self, conn: psycopg.Connection[tuple[object, ...]], seen: Sequence[SeenDevice]
    ) -> None:
        conn.execute(
            """INSERT INTO device_status AS s (device_id, state, online, changed_at, last_seen,
                                               last_seq, seq_gaps)
               SELECT d, 'online', true, r, t, q, g
               FROM unnest(%s::text[], %s::timestamptz[], %s::bigint[], %s::bigint[],
                           %s::timestamptz[]) AS u(d, t, q, g, r)
               ON CONFLICT (device_id) DO UPDATE SET
                   last_seen = GREATEST(s.last_seen, EXCLUDED.last_seen),
                   last_seq = COALESCE(EXCLUDED.last_seq, s.last_seq),
                   seq_gaps = s.seq_gaps + EXCLUDED.seq_gaps,
                   updated_at = now()""",
            (
                [s.device_id for s in seen],
                [s.last_seen for s in seen],
                [s.last_seq for s in seen],
                [s.new_gaps for s in seen],
                [s.received_at for s in seen],
            ),
        )

    def _statuses(
        self, conn: psycopg.Connection[tuple[object, ...]], statuses: Sequence[StatusUpdate]
    ) -> None:
        latest: dict[str, StatusUpdate] = {}
        for s in statuses:
            if s.device_id not in latest or s.ts >= latest[s.device_id].ts:
                latest[s.device_id] = s
        rows = list(latest.values())
        conn.execute(
            """INSERT INTO device_status AS s (device_id, state, online, detail, changed_at)
               SELECT * FROM unnest(%s::text[], %s::text[], %s::bool[], %s::jsonb[],
                                    %s::timestamptz[])
               ON CONFLICT (device_id) DO UPDATE SET
                   changed_at = CASE WHEN s.state = EXCLUDED.state THEN s.changed_at
                                     ELSE EXCLUDED.changed_at END,
                   state = EXCLUDED.state,
                   online = EXCLUDED.online,
                   detail = EXCLUDED.detail,
                   updated_at = now()
               WHERE s.changed_at IS NULL OR s.changed_at <= EXCLUDED.changed_at""",
            (
                [s.device_id for s in rows],
                [s.state for s in rows],
                [s.online for s in rows],
                [orjson.dumps(s.detail).decode() for s in rows],
                [s.ts for s in rows],
            ),
        )

    def _dead_letters(
        self, conn: psycopg.Connection[tuple[object, ...]], letters: Sequence[DeadLetter]
    ) -> None:
        with conn.cursor() as cur:
            cur.executemany(
                """INSERT INTO dead_letters (received_at, topic, payload, payload_size, reason,
                                             detail, device_id)
                   VALUES (%s, %s, %s, %s, %s, %s, %s)""",
                [
                    (
                        d.received_at,
                        d.topic,
                        d.payload,
                        d.payload_size,
                        d.reason,
                        d.detail.replace("\x00", "\\x00"),
                        d.device_id,
                    )
                    for d in letters
                ],
            )
