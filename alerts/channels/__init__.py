"""Delivery channels: webhook, e-mail over SMTP, MQTT publish, Apprise URLs.

Each channel delivers one `Envelope` and says how it went: sent, a failure
worth retrying (the receiver is down, busy or slow), or a permanent failure
(the receiver refuses this message; retrying cannot help). These are the
adapters at the edge; the outbox decides about retries.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


class Outcome(enum.StrEnum):
    SENT = "sent"
    RETRYABLE = "retryable"
    PERMANENT = "permanent"


@dataclass(frozen=True, slots=True)
class Result:
    outcome: Outcome
    error: str | None = None

    @classmethod
    def sent(cls) -> Result:
        return cls(Outcome.SENT)

    @classmethod
    def retry(cls, error: str) -> Result:
        return cls(Outcome.RETRYABLE, error[:2000])

    @classmethod
    def permanent(cls, error: str) -> Result:
        return cls(Outcome.PERMANENT, error[:2000])


@dataclass(frozen=True, slots=True)
class Envelope:
    """One message for one channel, as the outbox row holds it."""

    idempotency_key: str
    """Unique per message and channel; receivers use it to drop a duplicate."""
    subject: str
    body: str
    data: Mapping[str, Any] = field(default_factory=dict)

    def document(self) -> dict[str, Any]:
        """The JSON document the webhook and MQTT channels send."""
        return {
            "idempotency_key": self.idempotency_key,
            "subject": self.subject,
            "text": self.body,
            **dict(self.data),
        }


class Channel(Protocol):
    def send(self, envelope: Envelope) -> Result: ...

    def close(self) -> None: ...
