"""Escalation: an alert nobody acknowledges (or handles) in time reaches the next team.

The routing file gives, per level, stages such as "red: not acknowledged 5 min
after the first notification → duty-officer; not handled in 30 min →
supervisor". A stage whose handling state was reached is skipped; a closed
alert escalates no further. Pure: the caller passes the handling state and `now`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from alerts.model import Level
from alerts.route import EscalationStage

HANDLING_ORDER = ("new", "acknowledged", "dispatched", "handled", "closed")


def reached(handling: str, state: str) -> bool:
    """Whether an alert in `handling` has got as far as `state` (acknowledged, handled…)."""
    try:
        return HANDLING_ORDER.index(handling) >= HANDLING_ORDER.index(state)
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class Track:
    """An alert being watched: the level whose stages apply, since when, how far along."""

    alert_id: int
    level: Level
    since: datetime
    """When the alert was first notified (stage delays count from here)."""
    done: int = 0
    """Stages already passed (notified or skipped)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "alert_id": self.alert_id,
            "level": int(self.level),
            "since": self.since.isoformat(),
            "done": self.done,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Track:
        return cls(
            int(data["alert_id"]),
            Level(int(data["level"])),
            datetime.fromisoformat(data["since"]),
            int(data["done"]),
        )


@dataclass(frozen=True, slots=True)
class Step:
    alert_id: int
    stage: int
    """Index of the stage in its level's list, from 0."""
    level: Level
    after: EscalationStage


@dataclass(frozen=True, slots=True)
class Outcome:
    steps: tuple[Step, ...]
    """Stages to notify now, in order."""
    track: Track | None
    """The updated track, or None when the alert needs watching no more."""


def relevel(track: Track, level: Level) -> Track:
    """A higher level takes its own, stricter stages, counted from the same start."""
    if level <= track.level:
        return track
    return Track(track.alert_id, level, track.since, 0)


def advance(
    policy: Mapping[Level, Sequence[EscalationStage]],
    track: Track,
    handling: str,
    now: datetime,
) -> Outcome:
    """The stages of `track` that are due at `now` given the alert's handling state."""
    if handling == "closed":
        return Outcome((), None)
    stages = policy.get(track.level, ())
    steps = []
    done = track.done
    while done < len(stages):
        stage = stages[done]
        if now < track.since + stage.after:
            break
        if not reached(handling, stage.unless):
            steps.append(Step(track.alert_id, done, track.level, stage))
        done += 1
    if done >= len(stages):
        return Outcome(tuple(steps), None)
    return Outcome(tuple(steps), Track(track.alert_id, track.level, track.since, done))
