"""The alert data model shared by the rule engine and the alert services.

`rules` produces `AlertTransition`s (the condition dimension: pending → firing
→ resolved, at a level of the four warning colours); `alerts` stores them and
adds the handling dimension. This module is plain data: no I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


class Level(enum.IntEnum):
    """China's four warning colours, plus normal: normal < blue < yellow < orange < red."""

    NORMAL = 0
    BLUE = 1
    YELLOW = 2
    ORANGE = 3
    RED = 4

    @classmethod
    def parse(cls, name: str | Level) -> Level:
        if isinstance(name, Level):
            return name
        try:
            return cls[name.strip().upper()]
        except KeyError:
            raise ValueError(
                f"{name!r} is not a level; use normal, blue, yellow, orange or red"
            ) from None

    @property
    def label(self) -> str:
        return self.name.lower()

    @property
    def grade(self) -> str:
        """The grade in Chinese warning terms: IV (一般) … I (特别严重)."""
        return {0: "", 1: "IV 一般", 2: "III 较重", 3: "II 严重", 4: "I 特别严重"}[self.value]

    @property
    def colour(self) -> str:
        return {0: "#2E7D32", 1: "#1E88E5", 2: "#FDD835", 3: "#FB8C00", 4: "#E53935"}[self.value]


class ConditionState(enum.StrEnum):
    PENDING = "pending"
    FIRING = "firing"
    RESOLVED = "resolved"


@dataclass(frozen=True, slots=True)
class AlertTransition:
    """One change of an alert's condition: it began, escalated, de-escalated or resolved."""

    fingerprint: str
    """Identity of the alert: one open alert per fingerprint (rule + device or area)."""
    rule: str
    domain: str
    state: ConditionState
    level: Level
    previous_level: Level
    at: datetime
    device_id: str | None
    district: str | None
    summary: str
    labels: Mapping[str, str] = field(default_factory=dict)
    values: Mapping[str, Any] = field(default_factory=dict)
    parent: str | None = None
    """Fingerprint of the area alert this device alert is a member of."""

    @property
    def escalated(self) -> bool:
        return self.state is ConditionState.FIRING and self.level > self.previous_level
