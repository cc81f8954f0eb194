"""Signed, expiring action links: a field worker acknowledges from the message itself.

A link carries `alert id . action . expiry . signature`, where the signature is
an HMAC-SHA256 over the rest with the deployment's link secret. Nothing is
stored: the API checks the signature and the expiry against `now`, then does
the action as the user the link names. Links are short enough for an SMS or a
bot message.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from datetime import UTC, datetime

ACTIONS = ("ack",)


class LinkError(ValueError):
    """The link is malformed, tampered with or expired; the message says which."""


@dataclass(frozen=True, slots=True)
class ActionLink:
    alert_id: int
    action: str
    expires: datetime
    actor: str
    """Who acts when the link is used: the team or person the message went to."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signature(secret: bytes, body: str) -> str:
    return _b64(hmac.new(secret, body.encode("utf-8"), hashlib.sha256).digest()[:20])


def sign(link: ActionLink, secret: bytes) -> str:
    """The token for `link` (URL-safe); put it in `{base_url}/ack/{token}`."""
    if len(secret) < 16:
        raise LinkError("the link secret must be at least 16 bytes (CITYVITALS_LINK_SECRET)")
    if link.action not in ACTIONS:
        raise LinkError(f"action {link.action!r} is not one of {', '.join(ACTIONS)}")
    if link.expires.tzinfo is None:
        raise LinkError("the link's expiry needs a time zone")
    body = ".".join(
        (
            str(link.alert_id),
            link.action,
            str(int(link.expires.timestamp())),
            _b64(link.actor.encode("utf-8")),
        )
    )
    return f"{body}.{_signature(secret, body)}"


def verify(token: str, secret: bytes, now: datetime) -> ActionLink:
    """The link a token stands for; raises LinkError if tampered with or expired."""
    if len(token) > 512:
        raise LinkError("the link is too long to be one of ours")
    parts = token.split(".")
    if len(parts) != 5:
        raise LinkError("the link is malformed")
    body, signature = ".".join(parts[:4]), parts[4]
    if not hmac.compare_digest(_signature(secret, body), signature):
        raise LinkError("the link's signature does not match: it was altered or is not ours")
    alert_id, action, expires, actor = parts[:4]
    try:
        link = ActionLink(
            int(alert_id),
            action,
            datetime.fromtimestamp(int(expires), UTC),
            _unb64(actor).decode("utf-8"),
        )
    except (ValueError, OverflowError):
        raise LinkError("the link is malformed") from None
    if now >= link.expires:
        raise LinkError(f"the link expired at {link.expires.isoformat()}; use the API or the CLI")
    return link
