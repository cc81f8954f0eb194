"""The handling dimension of an alert: who is on it and how far they got.

```
            ack               dispatch(team)          handle(note)          close
   new ──────────► acknowledged ──────────► dispatched ──────────► handled ──────► closed
    │                                 ▲  │ ▲ re-dispatch(other team)  │
    └──────────── dispatch(team) ─────┘  └─┘                          │ rework: dispatch(team)
                                         ▲────────────────────────────┘
   close(note) from new, acknowledged or dispatched: the centre closes without a team's
   report ("false alarm", "duplicate of #123"); the note is then mandatory.
```

The rules, all enforced by `decide`:

- **ack**: from `new`. Acknowledging an alert that is already acknowledged,
  dispatched or handled changes nothing and is not an error (`Step.changed` is
  False): two people, or a person and a link in a message, may ack at once.
- **dispatch(team)**: from `new` or `acknowledged` (dispatching implies
  acknowledging: `acknowledged_at` is set if it was not), from `dispatched` to
  *another* team (re-dispatch), and from `handled` (the centre is not
  satisfied with the report: the work goes back to a team and `handled_at` is
  cleared).
- **handle(note)**: from `dispatched` only, with a note saying what was done.
  A team reports on work it was given; an operator who did the work without a
  team dispatches to their own team first, or closes with a note.
- **close(note)**: from `handled` (verification; the note is optional when
  the condition has resolved). Closing anything else — an unhandled alert, or
  one whose condition is still firing — needs a note saying why.
- Nothing leaves `closed`. A condition that fires again after its alert was
  closed opens a new alert (alerts/store.py).

The condition dimension (firing/resolved) is independent: a resolved alert
that nobody handled stays open. Everything here is pure and takes `now`.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, replace
from datetime import datetime

from alerts.model import ConditionState

MAX_NOTE = 2000
TEAM_PATTERN = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")


class HandlingError(ValueError):
    """An alert cannot be handled as asked; the message names the alert and what to do."""


class TransitionError(HandlingError):
    """The action is not allowed from the alert's current handling state."""


class AlertNotFoundError(HandlingError):
    """No alert has that id."""


class Handling(enum.StrEnum):
    NEW = "new"
    ACKNOWLEDGED = "acknowledged"
    DISPATCHED = "dispatched"
    HANDLED = "handled"
    CLOSED = "closed"

    @property
    def open(self) -> bool:
        return self is not Handling.CLOSED


class Action(enum.StrEnum):
    ACK = "ack"
    DISPATCH = "dispatch"
    HANDLE = "handle"
    CLOSE = "close"


ALLOWED: dict[Action, frozenset[Handling]] = {
    Action.ACK: frozenset({Handling.NEW}),
    Action.DISPATCH: frozenset(
        {Handling.NEW, Handling.ACKNOWLEDGED, Handling.DISPATCHED, Handling.HANDLED}
    ),
    Action.HANDLE: frozenset({Handling.DISPATCHED}),
    Action.CLOSE: frozenset(
        {Handling.NEW, Handling.ACKNOWLEDGED, Handling.DISPATCHED, Handling.HANDLED}
    ),
}
"""From which states each action may start (ack of a later open state is a no-op)."""

TARGET: dict[Action, Handling] = {
    Action.ACK: Handling.ACKNOWLEDGED,
    Action.DISPATCH: Handling.DISPATCHED,
    Action.HANDLE: Handling.HANDLED,
    Action.CLOSE: Handling.CLOSED,
}


@dataclass(frozen=True, slots=True)
class HandlingStatus:
    """The handling side of one alert, as stored in its `alerts` row."""

    alert_id: int
    handling: Handling
    condition: ConditionState
    team: str | None = None
    acknowledged_at: datetime | None = None
    dispatched_at: datetime | None = None
    handled_at: datetime | None = None
    closed_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Step:
    """The outcome of an action: the status before and after, and the audit note."""

    action: Action
    before: HandlingStatus
    after: HandlingStatus
    note: str
    at: datetime

    @property
    def changed(self) -> bool:
        return self.after != self.before


def clean_note(note: str | None, *, required: bool, why: str = "") -> str:
    """A note stripped and bounded; raises HandlingError if required and empty."""
    text = (note or "").strip()
    if "\x00" in text:
        raise HandlingError("the note contains a NUL character; remove it")
    if len(text) > MAX_NOTE:
        raise HandlingError(f"the note has {len(text)} characters; at most {MAX_NOTE}")
    if required and not text:
        raise HandlingError(f"a note is required {why}".rstrip())
    return text


def check_team(team: str | None) -> str:
    if team is None or not TEAM_PATTERN.fullmatch(team):
        raise HandlingError(
            f"team {team!r} is not a team name: 1-64 letters, digits, _ . @ - "
            "(e.g. drainage-futian)"
        )
    return team


def decide(
    status: HandlingStatus,
    action: Action,
    now: datetime,
    *,
    team: str | None = None,
    note: str | None = None,
) -> Step:
    """What `action` at `now` does to an alert; raises TransitionError if it may not."""
    if now.tzinfo is None:
        raise HandlingError("now needs a time zone")
    ref = f"alert {status.alert_id}"
    current = status.handling
    if current is Handling.CLOSED:
        raise TransitionError(
            f"{ref} is closed; nothing changes a closed alert (a new firing opens a new alert)"
        )
    if action is Action.ACK:
        text = clean_note(note, required=False)
        if current is not Handling.NEW:
            return Step(action, status, status, text, now)  # already acknowledged: a no-op
        after = replace(status, handling=Handling.ACKNOWLEDGED, acknowledged_at=now)
        return Step(action, status, after, text, now)
    if action is Action.DISPATCH:
        target = check_team(team)
        text = clean_note(note, required=False)
        if current is Handling.DISPATCHED and status.team == target:
            raise TransitionError(
                f"{ref} is already dispatched to {target}; dispatch it to another team "
                "or wait for its report"
            )
        after = replace(
            status,
            handling=Handling.DISPATCHED,
            team=target,
            acknowledged_at=status.acknowledged_at or now,
            dispatched_at=now,
            handled_at=None,
        )
        return Step(action, status, after, text, now)
    if action is Action.HANDLE:
        if current not in ALLOWED[Action.HANDLE]:
            raise TransitionError(
                f"{ref} is {current.value}; only a dispatched alert can be reported handled "
                "(dispatch it to a team first, or close it with a note)"
            )
        text = clean_note(note, required=True, why="to report an alert handled: what was done")
        after = replace(status, handling=Handling.HANDLED, handled_at=now)
        return Step(action, status, after, text, now)
    if action is Action.CLOSE:
        verified = current is Handling.HANDLED and status.condition is ConditionState.RESOLVED
        if current is not Handling.HANDLED:
            why = f"to close {ref} while it is {current.value} (not handled), e.g. 'false alarm'"
        else:
            why = f"to close {ref} while its condition is still {status.condition.value}"
        text = clean_note(note, required=not verified, why=why)
        after = replace(status, handling=Handling.CLOSED, closed_at=now)
        return Step(action, status, after, text, now)
    raise TransitionError(f"unknown action {action!r}")  # pragma: no cover
