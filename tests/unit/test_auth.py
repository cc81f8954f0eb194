"""Tokens and authorization decisions (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from alerts.auth import (
    ForbiddenError,
    Permission,
    Principal,
    Role,
    authorize,
    authorize_alert,
    hash_secret,
    make_token,
    parse_token,
    secret_matches,
    token_usable,
)

T0 = datetime(2026, 7, 1, 8, 0, tzinfo=UTC)
OPERATOR = Principal("chen", Role.OPERATOR)
MEMBER = Principal("li", Role.MEMBER, "drainage-futian")
VIEWER = Principal("wang", Role.VIEWER)


def test_token_round_trip() -> None:
    token = make_token()
    assert token.text.startswith(f"cv_{token.prefix}_")
    parsed = parse_token(token.text)
    assert parsed is not None and parsed[0] == token.prefix
    assert secret_matches(parsed[1], token.secret_hash)
    assert token.secret_hash == hash_secret(parsed[1]) and parsed[1] not in token.secret_hash
    assert make_token().text != token.text


def test_tampered_or_malformed_tokens() -> None:
    token = make_token()
    prefix, secret = parse_token(token.text) or ("", "")
    flipped = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    assert not secret_matches(flipped, token.secret_hash)
    for text in ("", "cv_", token.text + "'", f"cv_{prefix}", "Bearer " + token.text, "x" * 500):
        assert parse_token(text) is None


def test_token_usable() -> None:
    assert token_usable(now=T0, expires_at=None, revoked_at=None, user_disabled_at=None)
    assert not token_usable(now=T0, expires_at=T0, revoked_at=None, user_disabled_at=None)
    assert token_usable(
        now=T0, expires_at=T0 + timedelta(seconds=1), revoked_at=None, user_disabled_at=None
    )
    assert not token_usable(now=T0, expires_at=None, revoked_at=T0, user_disabled_at=None)
    assert not token_usable(now=T0, expires_at=None, revoked_at=None, user_disabled_at=T0)


def test_operator_may_do_everything() -> None:
    for permission in Permission:
        authorize(OPERATOR, permission)
        authorize_alert(OPERATOR, permission, 1, None)
        authorize_alert(OPERATOR, permission, 1, "flood")


def test_viewer_reads_only() -> None:
    authorize(VIEWER, Permission.READ)
    authorize_alert(VIEWER, Permission.READ, 1, "flood")
    for permission in set(Permission) - {Permission.READ}:
        with pytest.raises(ForbiddenError, match="viewer"):
            authorize_alert(VIEWER, permission, 1, "flood")


def test_member_only_their_team_and_not_dispatch_close_silence() -> None:
    for permission in (Permission.READ, Permission.ACK, Permission.HANDLE):
        authorize_alert(MEMBER, permission, 1, "drainage-futian")
        with pytest.raises(ForbiddenError, match="alert 1 is not assigned to team drainage"):
            authorize_alert(MEMBER, permission, 1, "flood")
        with pytest.raises(ForbiddenError):
            authorize_alert(MEMBER, permission, 1, None)
    for permission in (Permission.DISPATCH, Permission.CLOSE, Permission.SILENCE):
        with pytest.raises(ForbiddenError, match="for operators"):
            authorize_alert(MEMBER, permission, 1, "drainage-futian")
