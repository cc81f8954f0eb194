"""Silences and maintenance windows: which alerts are not notified, and until when.

A silence is a list of matchers (all must hold) and a window. A silenced alert
is still recorded and shown, flagged as silenced; it is only not notified.
Silences expire by themselves at `ends_at`, or early when someone expires them.
The logic is pure and takes `now`; the store functions at the bottom are the
PostgreSQL adapter.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from alerts.model import Level

FIELDS = ("rule", "domain", "device_id", "district", "level")
"""Matcher names taken from the alert itself; any other name is a label."""

MAX_MATCHERS = 16
MAX_VALUE = 256


class SilenceError(ValueError):
    """A silence or matcher is not valid; the message says which part and why."""


class SilenceState(enum.StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    EXPIRED = "expired"


class Op(enum.StrEnum):
    EQ = "="
    NE = "!="
    RE = "=~"
    NRE = "!~"


@dataclass(frozen=True, slots=True)
class Matcher:
    name: str
    op: Op
    value: str

    @classmethod
    def parse(cls, text: str) -> Matcher:
        """`district=futian`, `rule!=noise_day`, `device_id=~"dr-0.*"`."""
        m = re.fullmatch(r"\s*([A-Za-z_][A-Za-z0-9_.-]*)\s*(=~|!~|!=|==|=)\s*(.*?)\s*", text)
        if m is None:
            raise SilenceError(
                f"matcher {text!r}: write name=value, name!=value, name=~regex or name!~regex"
            )
        value = m.group(3)
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        op = "=" if m.group(2) == "==" else m.group(2)
        return cls.build(m.group(1), op, value)

    @classmethod
    def build(cls, name: object, op: object, value: object) -> Matcher:
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}", name):
            raise SilenceError(f"matcher name {name!r}: letters, digits, _ . - (at most 64)")
        try:
            parsed_op = Op(str(op))
        except ValueError:
            raise SilenceError(f"matcher {name}: op {op!r} is not one of = != =~ !~") from None
        if not isinstance(value, str) or len(value) > MAX_VALUE:
            raise SilenceError(f"matcher {name}: the value must be text of at most {MAX_VALUE}")
        if name == "level" and parsed_op in (Op.EQ, Op.NE):
            try:
                value = Level.parse(value).label
            except ValueError as exc:
                raise SilenceError(f"matcher level: {exc}") from None
        if parsed_op in (Op.RE, Op.NRE):
            try:
                re.compile(value)
            except re.error as exc:
                raise SilenceError(f"matcher {name}: {value!r} is not a regex ({exc})") from None
        return cls(name, parsed_op, value)

    def matches(self, attributes: Mapping[str, str]) -> bool:
        actual = attributes.get(self.name, "")
        if self.op is Op.EQ:
            return actual == self.value
        if self.op is Op.NE:
            return actual != self.value
        hit = re.fullmatch(self.value, actual) is not None
        return hit if self.op is Op.RE else not hit

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "op": self.op.value, "value": self.value}

    def __str__(self) -> str:
        return f"{self.name}{self.op.value}{self.value}"


def alert_attributes(
    *,
    rule: str,
    domain: str,
    device_id: str | None,
    district: str | None,
    level: Level | int,
    labels: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """The names a matcher can use, for one alert: its labels, then its own fields."""
    attributes = {str(k): str(v) for k, v in (labels or {}).items()}
    attributes.update(
        rule=rule,
        domain=domain,
        device_id=device_id or "",
        district=district or "",
        level=Level(int(level)).label,
    )
    return attributes


@dataclass(frozen=True, slots=True)
class Silence:
    matchers: tuple[Matcher, ...]
    starts_at: datetime
    ends_at: datetime
    author: str
    reason: str
    id: int | None = None
    expired_at: datetime | None = None
    expired_by: str | None = None

    @classmethod
    def build(
        cls,
        matchers: Iterable[Matcher],
        starts_at: datetime,
        ends_at: datetime,
        author: str,
        reason: str,
    ) -> Silence:
        found = tuple(matchers)
        if not found:
            raise SilenceError("a silence needs at least one matcher, e.g. district=futian")
        if len(found) > MAX_MATCHERS:
            raise SilenceError(f"a silence takes at most {MAX_MATCHERS} matchers")
        if any(t.tzinfo is None for t in (starts_at, ends_at)):
            raise SilenceError("starts_at and ends_at need a time zone offset")
        if ends_at <= starts_at:
            raise SilenceError(f"ends_at {ends_at.isoformat()} is not after starts_at")
        if not author.strip():
            raise SilenceError("a silence needs an author")
        if not reason.strip():
            raise SilenceError("a silence needs a reason, e.g. 'pump station maintenance'")
        if len(reason) > 2000:
            raise SilenceError("the reason is longer than 2000 characters")
        return cls(found, starts_at, ends_at, author.strip(), reason.strip())

    @property
    def end(self) -> datetime:
        """When it stops silencing: its end, or when it was expired early."""
        if self.expired_at is not None and self.expired_at < self.ends_at:
            return self.expired_at
        return self.ends_at

    def state(self, now: datetime) -> SilenceState:
        if now >= self.end:
            return SilenceState.EXPIRED
        if now < self.starts_at:
            return SilenceState.PENDING
        return SilenceState.ACTIVE

    def silences(self, attributes: Mapping[str, str], now: datetime) -> bool:
        return self.state(now) is SilenceState.ACTIVE and all(
            m.matches(attributes) for m in self.matchers
        )


def silenced_by(
    silences: Sequence[Silence], attributes: Mapping[str, str], now: datetime
) -> list[int]:
    """Ids of the silences that hold `attributes` quiet at `now`."""
    return [s.id for s in silences if s.id is not None and s.silences(attributes, now)]


# --- PostgreSQL adapter ---------------------------------------------------------------

_COLUMNS = "id, matchers, starts_at, ends_at, author, reason, expired_at, expired_by"


def _from_row(row: Sequence[Any]) -> Silence:
    matchers = tuple(Matcher.build(m["name"], m["op"], m["value"]) for m in row[1])
    return Silence(matchers, row[2], row[3], row[4], row[5], row[0], row[6], row[7])


def add_silence(conn: psycopg.Connection[Any], silence: Silence) -> Silence:
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO silences (matchers, starts_at, ends_at, author, reason) "
            f"VALUES (%s, %s, %s, %s, %s) RETURNING {_COLUMNS}",
            (
                Jsonb([m.to_json() for m in silence.matchers]),
                silence.starts_at,
                silence.ends_at,
                silence.author,
                silence.reason,
            ),
        )
        row = cur.fetchone()
    assert row is not None
    return _from_row(row)


def get_silence(conn: psycopg.Connection[Any], silence_id: int) -> Silence | None:
    with conn.cursor() as cur:
        cur.execute(f"SELECT {_COLUMNS} FROM silences WHERE id = %s", (silence_id,))
        row = cur.fetchone()
    return None if row is None else _from_row(row)


def list_silences(
    conn: psycopg.Connection[Any], now: datetime, include_expired: bool = False
) -> list[Silence]:
    """Pending and active silences (and expired ones on request), soonest end first."""
    where = "" if include_expired else "WHERE LEAST(ends_at, COALESCE(expired_at, ends_at)) > %s"
    with conn.cursor() as cur:
        cur.execute(
            f"SELECT {_COLUMNS} FROM silences {where} ORDER BY ends_at, id",
            () if include_expired else (now,),
        )
        return [_from_row(r) for r in cur.fetchall()]


def expire_silence(
    conn: psycopg.Connection[Any], silence_id: int, actor: str, now: datetime
) -> Silence:
    """End a silence now. Raises SilenceError if it does not exist or already ended."""
    current = get_silence(conn, silence_id)
    if current is None:
        raise SilenceError(f"silence {silence_id} does not exist; `silences list` shows them")
    if current.state(now) is SilenceState.EXPIRED:
        raise SilenceError(f"silence {silence_id} already ended at {current.end.isoformat()}")
    with conn.cursor() as cur:
        cur.execute(
            f"UPDATE silences SET expired_at = %s, expired_by = %s WHERE id = %s "
            f"RETURNING {_COLUMNS}",
            (now, actor, silence_id),
        )
        row = cur.fetchone()
    assert row is not None
    return _from_row(row)
