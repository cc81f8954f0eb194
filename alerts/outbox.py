"""The notification outbox: every message is first a row, then a sender delivers it.

PostgreSQL adapter. The notifier inserts rows (`enqueue`) in the same
transaction that advances its cursor over `alert_events`, so a message is
neither lost nor made twice. A sender claims due rows with `FOR UPDATE SKIP
LOCKED` (several senders never take the same row), marks them `sending` with a
lease and commits; then it delivers and records the attempt: `sent`, a retry at
`next_attempt_at` with exponential backoff, or `failed` (permanent error or
attempts exhausted).

Delivery guarantee, honestly: at least once, exactly once in effect. The one
window for a duplicate is a crash after the receiver accepted a message and
before `sent` was committed; the row's lease then runs out, another attempt is
made (recorded as `interrupted` + a new attempt), and the receiver sees the same
idempotency key twice — the webhook `Idempotency-Key` header, the e-mail
Message-ID, the MQTT payload's `idempotency_key` — and can drop the second.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from alerts.channels import Envelope, Outcome, Result
from alerts.channels.registry import ChannelSet

log = logging.getLogger(__name__)

STATUSES = ("pending", "sending", "sent", "failed")


def wall_clock() -> datetime:
    """The services' default clock (the logic they drive takes `now`; tests pass a fake)."""
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """A message to put in the outbox."""

    idempotency_key: str
    kind: str
    team: str
    channel: str
    channel_type: str
    target: str
    language: str
    alert_ids: Sequence[int]
    group_key: str | None
    level: int | None
    subject: str
    payload: dict[str, Any]
    """{"subject", "body", "data"}: what the channel sends."""


@dataclass(frozen=True, slots=True)
class Claimed:
    id: int
    idempotency_key: str
    team: str
    channel: str
    attempt: int
    """Attempts made so far; after `begin`, this attempt's number (from 1)."""
    max_attempts: int
    lease_until: datetime
    envelope: Envelope
    started_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 8
    base: timedelta = timedelta(seconds=5)
    cap: timedelta = timedelta(minutes=30)
    lease: timedelta = timedelta(minutes=5)
    """How long a claimed row is the sender's; past it another sender may take it over.
    Must exceed the slowest channel's time-out."""

    def backoff(self, attempt: int) -> timedelta:
        """Delay after failed attempt number `attempt` (1, 2, …): base·2^(n-1), capped."""
        delay: timedelta = self.base * (2 ** min(attempt - 1, 30))
        return min(self.cap, delay)


def enqueue(
    conn: psycopg.Connection[Any], items: Sequence[OutboxItem], now: datetime, max_attempts: int
) -> int:
    """Insert messages (a repeated idempotency key is ignored); returns the rows added."""
    added = 0
    with conn.cursor() as cur:
        for item in items:
            cur.execute(
                """INSERT INTO notifications (idempotency_key, kind, team, channel, channel_type,
                       target, language, alert_ids, group_key, level, subject, payload,
                       max_attempts, created_at, next_attempt_at)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
                   ON CONFLICT (idempotency_key) DO NOTHING""",
                (
                    item.idempotency_key,
                    item.kind,
                    item.team,
                    item.channel,
                    item.channel_type,
                    item.target,
                    item.language,
                    list(item.alert_ids),
                    item.group_key,
                    item.level,
                    item.subject[:500],
                    Jsonb(item.payload),
                    max_attempts,
                    now,
                    now,
                ),
            )
            added += cur.rowcount
    return added


def claim(
    conn: psycopg.Connection[Any],
    now: datetime,
    limit: int,
    policy: RetryPolicy,
    sender: str,
) -> list[Claimed]:
    """Take up to `limit` due rows for this sender (a lease each) and commit the claim.

    A row still `sending` past its lease was claimed by a sender that stopped; if that
    sender had begun delivering it, the attempt is recorded as `interrupted`.
    """
    out: list[Claimed] = []
    lease_until = now + policy.lease
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            """SELECT id, idempotency_key, team, channel, payload, status, attempts,
                      max_attempts, attempt_started_at
               FROM notifications
               WHERE (status = 'pending' AND next_attempt_at <= %s)
                  OR (status = 'sending' AND lease_until <= %s)
               ORDER BY next_attempt_at, id
               LIMIT %s
               FOR UPDATE SKIP LOCKED""",
            (now, now, limit),
        )
        for row in cur.fetchall():
            if row["status"] == "sending" and row["attempt_started_at"] is not None:
                cur.execute(
                    """INSERT INTO notification_attempts (notification_id, attempt, started_at,
                           finished_at, outcome, error, sender)
                       VALUES (%s, %s, %s, %s, 'interrupted', %s, %s)""",
                    (
                        row["id"],
                        row["attempts"],
                        row["attempt_started_at"],
                        now,
                        "the sender stopped before recording the outcome",
                        sender,
                    ),
                )
                if row["attempts"] >= row["max_attempts"]:
                    cur.execute(
                        "UPDATE notifications SET status = 'failed', lease_until = NULL, "
                        "attempt_started_at = NULL, last_error = %s WHERE id = %s",
                        ("interrupted on the last attempt; delivery unknown", row["id"]),
                    )
                    continue
            cur.execute(
                "UPDATE notifications SET status = 'sending', lease_until = %s, "
                "attempt_started_at = NULL WHERE id = %s",
                (lease_until, row["id"]),
            )
            payload = row["payload"]
            out.append(
                Claimed(
                    int(row["id"]),
                    str(row["idempotency_key"]),
                    str(row["team"]),
                    str(row["channel"]),
                    int(row["attempts"]),
                    int(row["max_attempts"]),
                    lease_until,
                    Envelope(
                        str(row["idempotency_key"]),
                        str(payload.get("subject", "")),
                        str(payload.get("body", "")),
                        payload.get("data") or {},
                    ),
                )
            )
    return out


def begin(
    conn: psycopg.Connection[Any], claimed: Claimed, now: datetime, policy: RetryPolicy
) -> Claimed | None:
    """Mark the start of an attempt (and renew the lease); None if the row was taken over."""
    lease_until = now + policy.lease
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(
            """UPDATE notifications
               SET attempts = attempts + 1, attempt_started_at = %s, lease_until = %s
               WHERE id = %s AND status = 'sending' AND lease_until = %s
               RETURNING attempts""",
            (now, lease_until, claimed.id, claimed.lease_until),
        )
        row = cur.fetchone()
    if row is None:
        return None
    return replace(claimed, attempt=int(row[0]), lease_until=lease_until, started_at=now)


def finish(
    conn: psycopg.Connection[Any],
    claimed: Claimed,
    result: Result,
    now: datetime,
    policy: RetryPolicy,
    sender: str,
) -> str:
    """Record an attempt's outcome; returns the row's new status ('' if it was taken over)."""
    if result.outcome is Outcome.SENT:
        status, next_at = "sent", None
    elif result.outcome is Outcome.PERMANENT or claimed.attempt >= claimed.max_attempts:
        status, next_at = "failed", None
    else:
        status, next_at = "pending", now + policy.backoff(claimed.attempt)
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(
            """UPDATE notifications
               SET status = %s, lease_until = NULL, attempt_started_at = NULL, last_error = %s,
                   sent_at = CASE WHEN %s = 'sent' THEN %s ELSE sent_at END,
                   next_attempt_at = COALESCE(%s, next_attempt_at)
               WHERE id = %s AND status = 'sending' AND attempts = %s AND lease_until = %s""",
            (
                status,
                result.error,
                status,
                now,
                next_at,
                claimed.id,
                claimed.attempt,
                claimed.lease_until,
            ),
        )
        if cur.rowcount == 0:
            status = ""  # another sender took the row over after our lease ran out
        cur.execute(
            """INSERT INTO notification_attempts (notification_id, attempt, started_at,
                   finished_at, outcome, error, sender)
               VALUES (%s, %s, %s, %s, %s, %s, %s)""",
            (
                claimed.id,
                claimed.attempt,
                claimed.started_at or now,
                now,
                result.outcome.value,
                result.error,
                sender,
            ),
        )
    return status


def release(conn: psycopg.Connection[Any], claimed: Sequence[Claimed]) -> int:
    """Hand claimed rows whose attempt never began back to the queue (a clean stop)."""
    if not claimed:
        return 0
    with conn.transaction(), conn.cursor() as cur:
        released = 0
        for item in claimed:
            cur.execute(
                "UPDATE notifications SET status = 'pending', lease_until = NULL "
                "WHERE id = %s AND status = 'sending' AND lease_until = %s "
                "AND attempt_started_at IS NULL",
                (item.id, item.lease_until),
            )
            released += cur.rowcount
    return released


def retry(
    conn: psycopg.Connection[Any], ids: Sequence[int], now: datetime, extra_attempts: int = 1
) -> int:
    """Give failed notifications another chance (`notifications retry`); returns rows changed."""
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(
            """UPDATE notifications
               SET status = 'pending', next_attempt_at = %s,
                   max_attempts = GREATEST(max_attempts, attempts + %s)
               WHERE id = ANY(%s) AND status = 'failed'""",
            (now, extra_attempts, list(ids)),
        )
        return cur.rowcount


def list_notifications(
    conn: psycopg.Connection[Any],
    status: str | None = None,
    team: str | None = None,
    alert_id: int | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    where: list[str] = []
    args: list[object] = []
    if status is not None:
        where.append("status = %s")
        args.append(status)
    if team is not None:
        where.append("team = %s")
        args.append(team)
    if alert_id is not None:
        where.append("%s = ANY(alert_ids)")
        args.append(alert_id)
    sql = (
        "SELECT id, idempotency_key, kind, team, channel, channel_type, target, status, "
        "attempts, max_attempts, created_at, next_attempt_at, sent_at, last_error, subject, "
        "alert_ids FROM notifications"
        + (" WHERE " + " AND ".join(where) if where else "")
        + " ORDER BY id DESC LIMIT %s"
    )
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(sql, (*args, limit))
        return cur.fetchall()


def get_notification(
    conn: psycopg.Connection[Any], notification_id: int
) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SELECT * FROM notifications WHERE id = %s", (notification_id,))
        row = cur.fetchone()
        if row is None:
            return None
        cur.execute(
            "SELECT attempt, started_at, finished_at, outcome, error, sender "
            "FROM notification_attempts WHERE notification_id = %s ORDER BY id",
            (notification_id,),
        )
        return row, cur.fetchall()


def counts(conn: psycopg.Connection[Any]) -> dict[str, int]:
    with conn.cursor() as cur:
        cur.execute("SELECT status, count(*) FROM notifications GROUP BY status")
        found = {str(s): int(n) for s, n in cur.fetchall()}
    return {s: found.get(s, 0) for s in STATUSES}


class Sender:
    """Delivers the outbox: claim due rows, send each on its channel, record the outcome."""

    def __init__(
        self,
        database_url: str,
        channels: ChannelSet,
        policy: RetryPolicy = RetryPolicy(),
        poll_interval: float = 1.0,
        batch: int = 20,
        clock: Callable[[], datetime] = wall_clock,
        name: str | None = None,
    ) -> None:
        self.database_url = database_url
        self.channels = channels
        self.policy = policy
        self.poll_interval = poll_interval
        self.batch = batch
        self.clock = clock
        self.name = name or f"{socket.gethostname()}:{threading.get_native_id()}"
        self.sent = 0
        self.failed = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: psycopg.Connection[Any] | None = None

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.database_url, autocommit=True)
        return self._conn

    def run_once(self) -> int:
        """Claim and deliver one batch; returns how many rows were attempted."""
        conn = self._connection()
        claimed = claim(conn, self.clock(), self.batch, self.policy, self.name)
        for n, item in enumerate(claimed):
            if self._stop.is_set():
                release(conn, claimed[n:])  # stopping: the rest goes back to the queue
                break
            started = begin(conn, item, self.clock(), self.policy)
            if started is None:
                continue  # our lease ran out and another sender has the row
            item = started
            try:
                result = self.channels.send(item.team, item.channel, item.envelope)
            except Exception as exc:  # a channel bug must not stop the others
                log.exception("channel %s/%s crashed", item.team, item.channel)
                result = Result.retry(f"{type(exc).__name__}: {exc}")
            status = finish(conn, item, result, self.clock(), self.policy, self.name)
            if status == "sent":
                self.sent += 1
            elif status == "failed":
                self.failed += 1
                log.warning("notification %s failed for good: %s", item.id, result.error)
        return len(claimed)

    def run(self) -> None:
        delay = 0.5
        while not self._stop.is_set():
            try:
                busy = self.run_once()
                delay = 0.5
            except psycopg.Error as exc:
                self.last_error = f"outbox: {exc}"
                log.warning("%s", self.last_error)
                if self._conn is not None:
                    self._conn.close()
                self._stop.wait(delay)
                delay = min(delay * 2, 30)
                continue
            if not busy:
                self._wake.wait(self.poll_interval)
                self._wake.clear()
        if self._conn is not None:
            self._conn.close()

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="notify-sender", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        elif self._conn is not None:
            self._conn.close()
        self.channels.close()

    def drain(self, timeout: float = 60) -> bool:
        """Deliver until nothing is due (tests, `notifications send --drain`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.run_once():
                return True
        return False
