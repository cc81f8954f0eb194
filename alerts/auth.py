"""Users, API tokens and who may do what.

Roles:

- **operator** — the operations centre: reads everything, acknowledges,
  dispatches, closes, manages silences.
- **member** — a field team's member: reads and acts (acknowledge, report
  handled) only on alerts whose `team` is their team. Dispatching and closing
  are the centre's.
- **viewer** — reads everything, changes nothing.

A token reads `cv_<prefix>_<secret>`. It is shown once, when created; the
database keeps the prefix (to find the row, not secret) and a SHA-256 of the
secret, compared in constant time. Token checks and authorization decisions are
pure; the functions after "PostgreSQL adapter" store users and tokens.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from alerts.lifecycle import TEAM_PATTERN, Action

USER_PATTERN = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
TOKEN_PATTERN = re.compile(r"^cv_([0-9a-f]{12})_([A-Za-z0-9_-]{32,64})$")


class AuthError(ValueError):
    """A user or token request is not valid; the message says which part and why."""


class ForbiddenError(AuthError):
    """The principal may not do this (HTTP 403)."""


class Role(enum.StrEnum):
    OPERATOR = "operator"
    MEMBER = "member"
    VIEWER = "viewer"


class Permission(enum.StrEnum):
    READ = "read"
    ACK = "ack"
    DISPATCH = "dispatch"
    HANDLE = "handle"
    CLOSE = "close"
    SILENCE = "silence"

    @classmethod
    def of(cls, action: Action) -> Permission:
        return cls(action.value)


MEMBER_MAY = frozenset({Permission.READ, Permission.ACK, Permission.HANDLE})


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is asking: a user, with the role and team that decide what they may do."""

    name: str
    role: Role
    team: str | None = None


def authorize(principal: Principal, permission: Permission) -> None:
    """Raise ForbiddenError unless `principal`'s role allows `permission` at all.

    For an action on one alert use `authorize_alert`, which also checks the team.
    """
    if principal.role is Role.OPERATOR:
        return
    if principal.role is Role.VIEWER:
        if permission is not Permission.READ:
            raise ForbiddenError(
                f"{principal.name} is a viewer: read-only, cannot {permission.value}"
            )
        return
    if permission not in MEMBER_MAY:
        raise ForbiddenError(
            f"{principal.name} is a team member: {permission.value} is for operators"
        )


def authorize_alert(
    principal: Principal, permission: Permission, alert_id: int, alert_team: str | None
) -> None:
    """As `authorize`, for one alert: members only see and act on their own team's alerts."""
    authorize(principal, permission)
    if principal.role is Role.MEMBER and (alert_team is None or alert_team != principal.team):
        raise ForbiddenError(
            f"alert {alert_id} is not assigned to team {principal.team}; "
            "ask the operations centre to dispatch it to your team"
        )


@dataclass(frozen=True, slots=True)
class NewToken:
    """A freshly made token: `text` goes to the user once; the rest is stored."""

    text: str
    prefix: str
    secret_hash: str


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def make_token() -> NewToken:
    prefix = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return NewToken(f"cv_{prefix}_{secret}", prefix, hash_secret(secret))


def parse_token(text: str) -> tuple[str, str] | None:
    """(prefix, secret) of a well-formed token, else None."""
    if len(text) > 128:
        return None
    m = TOKEN_PATTERN.fullmatch(text)
    return None if m is None else (m.group(1), m.group(2))


def secret_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)


def token_usable(
    *,
    now: datetime,
    expires_at: datetime | None,
    revoked_at: datetime | None,
    user_disabled_at: datetime | None,
) -> bool:
    if revoked_at is not None and revoked_at <= now:
        return False
    if expires_at is not None and expires_at <= now:
        return False
    return user_disabled_at is None or user_disabled_at > now


# --- PostgreSQL adapter ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: Role
    team: str | None
    display_name: str
    email: str | None
    created_at: datetime
    disabled_at: datetime | None


@dataclass(frozen=True, slots=True)
class TokenInfo:
    id: int
    user_name: str
    prefix: str
    label: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


_USER_COLUMNS = "name, role, team, display_name, email, created_at, disabled_at"
_TOKEN_COLUMNS = "id, user_name, prefix, label, created_at, expires_at, revoked_at, last_used_at"


def _user(row: Sequence[Any]) -> User:
    return User(row[0], Role(row[1]), row[2], row[3], row[4], row[5], row[6])


def _token(row: Sequence[Any]) -> TokenInfo:
    return TokenInfo(*row)


def add_user(
    conn: psycopg.Connection[Any],
    name: str,
    role: Role | str,
    now: datetime,
    *,
    team: str | None = None,
    display_name: str = "",
    email: str | None = None,
) -> User:
    if not USER_PATTERN.fullmatch(name):
        raise AuthError(f"user name {name!r}: 1-64 letters, digits, _ . @ -")
    try:
        parsed = Role(role)
    except ValueError:
        raise AuthError(f"role {role!r} is not one of operator, member, viewer") from None
    if parsed is Role.MEMBER and team is None:
        raise AuthError(f"user {name}: a member needs a team (--team drainage-futian)")
    if team is not None and not TEAM_PATTERN.fullmatch(team):
        raise AuthError(f"team {team!r}: 1-64 letters, digits, _ . @ -")
    if len(display_name) > 200 or (email is not None and len(email) > 200):
        raise AuthError("display name and email take at most 200 characters")
    try:
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(
                "INSERT INTO users (name, role, team, display_name, email, created_at) "
                f"VALUES (%s, %s, %s, %s, %s, %s) RETURNING {_USER_COLUMNS}",
                (name, parsed.value, team, display_name, email, now),
            )
            row = cur.fetchone()
    except psycopg.errors.UniqueViolation:
        raise AuthError(f"user {name} already exists; `cityvitals users list` shows them") from None
    assert row is not None
    return _user(row)


def get_user(conn: psycopg.Connection[Any], name: str) -> User | None:
    row = conn.execute(f"SELECT {_USER_COLUMNS} FROM users WHERE name = %s", (name,)).fetchone()
    return None if row is None else _user(row)


def list_users(conn: psycopg.Connection[Any]) -> list[User]:
    rows = conn.execute(f"SELECT {_USER_COLUMNS} FROM users ORDER BY name").fetchall()
    return [_user(r) for r in rows]


def disable_user(conn: psycopg.Connection[Any], name: str, now: datetime) -> User:
    """Disable a user: their tokens stop working at once. Raises AuthError if unknown."""
    with conn.transaction():
        row = conn.execute(
            f"UPDATE users SET disabled_at = COALESCE(disabled_at, %s) WHERE name = %s "
            f"RETURNING {_USER_COLUMNS}",
            (now, name),
        ).fetchone()
    if row is None:
        raise AuthError(f"user {name!r} does not exist; `cityvitals users list` shows them")
    return _user(row)


def create_token(
    conn: psycopg.Connection[Any],
    user_name: str,
    now: datetime,
    *,
    label: str = "",
    expires_at: datetime | None = None,
) -> tuple[TokenInfo, str]:
    """A new token for `user_name`: its stored record and the token text (shown once)."""
    user = get_user(conn, user_name)
    if user is None:
        raise AuthError(
            f"user {user_name!r} does not exist; add it first: cityvitals users add {user_name} "
            "--role operator|member|viewer"
        )
    if user.disabled_at is not None:
        raise AuthError(f"user {user_name} is disabled; tokens cannot be made for it")
    if expires_at is not None and expires_at <= now:
        raise AuthError(f"the expiry {expires_at.isoformat()} is not in the future")
    if len(label) > 200:
        raise AuthError("a token label takes at most 200 characters")
    token = make_token()
    with conn.transaction():
        row = conn.execute(
            "INSERT INTO api_tokens (user_name, prefix, secret_hash, label, created_at, "
            f"expires_at) VALUES (%s, %s, %s, %s, %s, %s) RETURNING {_TOKEN_COLUMNS}",
            (user_name, token.prefix, token.secret_hash, label, now, expires_at),
        ).fetchone()
    assert row is not None
    return _token(row), token.text


def list_tokens(conn: psycopg.Connection[Any], user_name: str | None = None) -> list[TokenInfo]:
    rows = conn.execute(
        f"SELECT {_TOKEN_COLUMNS} FROM api_tokens "
        "WHERE %(user)s::text IS NULL OR user_name = %(user)s::text ORDER BY id",
        {"user": user_name},
    ).fetchall()
    return [_token(r) for r in rows]


def revoke_token(conn: psycopg.Connection[Any], prefix: str, now: datetime) -> TokenInfo:
    """Revoke the token with this prefix (the part after `cv_`, or the whole token)."""
    parsed = parse_token(prefix)
    key = parsed[0] if parsed is not None else prefix
    with conn.transaction():
        row = conn.execute(
            "UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, %s) WHERE prefix = %s "
            f"RETURNING {_TOKEN_COLUMNS}",
            (now, key),
        ).fetchone()
    if row is None:
        raise AuthError(f"no token has the prefix {key!r}; `cityvitals tokens list` shows them")
    return _token(row)


def authenticate(conn: psycopg.Connection[Any], text: str, now: datetime) -> Principal | None:
    """The principal a bearer token stands for, or None (malformed, unknown, revoked,
    expired, wrong secret or disabled user). Records when the token was last used
    (to the minute)."""
    parsed = parse_token(text)
    if parsed is None:
        return None
    prefix, secret = parsed
    row = conn.execute(
        """SELECT t.id, t.secret_hash, t.expires_at, t.revoked_at,
                  u.name, u.role, u.team, u.disabled_at
           FROM api_tokens t JOIN users u ON u.name = t.user_name
           WHERE t.prefix = %s""",
        (prefix,),
    ).fetchone()
    if row is None:
        secret_matches(secret, "0" * 64)  # same work whether or not the prefix exists
        return None
    token_id, stored, expires_at, revoked_at, name, role, team, disabled_at = row
    if not secret_matches(secret, stored):
        return None
    if not token_usable(
        now=now, expires_at=expires_at, revoked_at=revoked_at, user_disabled_at=disabled_at
    ):
        return None
    with conn.transaction():
        # At most one write a minute per token: a busy client must not make every read a write.
        conn.execute(
            "UPDATE api_tokens SET last_used_at = %(now)s WHERE id = %(id)s "
            "AND (last_used_at IS NULL OR last_used_at < %(now)s - interval '1 minute' "
            "OR last_used_at > %(now)s)",
            {"now": now, "id": token_id},
        )
    return Principal(name, Role(role), team)
