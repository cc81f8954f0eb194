"""Signed, expiring action links."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alerts.links import ActionLink, LinkError, sign, verify

SECRET = b"0123456789abcdef-secret"
T0 = datetime(2026, 7, 1, 8, 0, tzinfo=UTC)
LINK = ActionLink(42, "ack", T0 + timedelta(hours=4), "drainage-futian")


def test_round_trip_until_expiry() -> None:
    token = sign(LINK, SECRET)
    assert verify(token, SECRET, T0) == LINK
    assert verify(token, SECRET, LINK.expires - timedelta(seconds=1)) == LINK
    with pytest.raises(LinkError, match="expired"):
        verify(token, SECRET, LINK.expires)


def test_other_secret_rejected() -> None:
    with pytest.raises(LinkError, match="signature"):
        verify(sign(LINK, SECRET), b"another-secret-of-16+", T0)


@given(st.integers(min_value=0), st.sampled_from("0123456789abcdefghijklmnopqrstuvwxyz-_."))
def test_any_single_character_change_is_rejected(position: int, char: str) -> None:
    token = sign(LINK, SECRET)
    i = position % len(token)
    tampered = token[:i] + char + token[i + 1 :]
    if tampered == token:
        return
    with pytest.raises(LinkError):
        verify(tampered, SECRET, T0)


def test_changed_alert_id_rejected() -> None:
    token = sign(LINK, SECRET)
    with pytest.raises(LinkError, match="signature"):
        verify("43" + token[2:], SECRET, T0)


@pytest.mark.parametrize("token", ["", "a.b.c", "x" * 600, "1.ack.9.YQ.sig.extra"])
def test_malformed(token: str) -> None:
    with pytest.raises(LinkError):
        verify(token, SECRET, T0)


def test_short_secret_and_unknown_action_refused() -> None:
    with pytest.raises(LinkError, match="16 bytes"):
        sign(LINK, b"short")
    with pytest.raises(LinkError, match="not one of"):
        sign(ActionLink(1, "close", T0, "x"), SECRET)
