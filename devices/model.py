"""Values that flow from the wire into storage and the rule engine."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple


class Quality(enum.IntFlag):
    """Bit flags stored in `readings.quality`; 0 means a clean reading."""

    GOOD = 0
    OUT_OF_RANGE = 1
    """The value lies outside the metric's physical range in the profile."""
    RECEIVE_TIME = 2
    """The payload had no timestamp; `ts` is the time the platform received it."""
    CLOCK_SKEW = 4
    """The payload's timestamp lies further in the future than the tolerated skew."""


class Reading(NamedTuple):
    """One value of one metric of one device at one instant; immutable.

    A named tuple rather than a frozen dataclass like the other values here: the
    ingest builds one per stored value, a hundred thousand a second, and a frozen
    dataclass takes three times as long to construct (every field goes through
    `object.__setattr__`). Being a tuple, it also compares equal to a plain tuple of
    the same fields.
    """

    ts: datetime
    device_id: str
    metric: str
    value: float
    quality: int = 0
    """`Quality` bits, as a plain int."""


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
