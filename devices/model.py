"""Values that flow from the wire into storage and the rule engine."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


class Quality(enum.IntFlag):
    """Bit flags stored in `readings.quality`; 0 means a clean reading."""

    GOOD = 0
    OUT_OF_RANGE = 1
    """The value lies outside the metric's physical range in the profile."""
    RECEIVE_TIME = 2
    """The payload had no timestamp; `ts` is the time the platform received it."""
    CLOCK_SKEW = 4
    """The payload's timestamp lies further in the future than the tolerated skew."""


@dataclass(frozen=True, slots=True)
class Reading:
    ts: datetime
    device_id: str
    metric: str
    value: float
    quality: int = 0


@dataclass(frozen=True, slots=True)
class DeviceEvent:
    ts: datetime
    device_id: str
    type: str
    code: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    ts: datetime
    device_id: str
    state: str
    """`online`, `offline` or a device-specific state word."""
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def online(self) -> bool:
        return self.state != "offline"
