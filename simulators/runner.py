"""Playing a stream of simulated messages at a speed factor of simulated time."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from simulators.fleet import Fleet
from simulators.model import WireMessage
from simulators.publish import MqttPublisher


@dataclass
class Progress:
    sim_time: datetime
    sim_start: datetime
    sim_end: datetime | None
    published: int
    wall_seconds: float
    rate: float
    """Messages per second over the last reporting interval."""


@dataclass
class RunSummary:
    sim_start: datetime
    sim_end: datetime
    messages: int
    devices: int
    wall_seconds: float
    stopped_early: bool
    by_channel: dict[str, int] = field(default_factory=dict)
    faults: dict[str, int] = field(default_factory=dict)


def fleet_stream(
    fleet: Fleet, end: datetime, chunk: timedelta = timedelta(seconds=30)
) -> Iterator[WireMessage]:
    """The fleet's messages from its start to `end`: online first, offline last."""
    yield from fleet.status_messages("online", fleet.start)
    t = fleet.start
    while t < end:
        t = min(t + chunk, end)
        yield from fleet.advance(t)
    yield from fleet.finish()
    yield from fleet.status_messages("offline", end)


def play(
    messages: Iterator[WireMessage],
    publisher: MqttPublisher,
    start: datetime,
    speed: float | None,
    stop: threading.Event,
    on_progress: Callable[[Progress], None] | None = None,
    end: datetime | None = None,
    every: float = 0.5,
) -> tuple[datetime, bool]:
    """Publish each message when its simulated time comes (`speed` × real time; None: at once).

    Returns the simulated time reached and whether `stop` ended the run early.
    """
    monotonic = time.monotonic
    stopped = stop.is_set
    publish = publisher.publish
    wall0 = monotonic()
    last_report, last_count = wall0, publisher.stats.published
    sim_t = start
    for msg in messages:
        if stopped():
            publisher.flush()
            return sim_t, True
        t = msg.t
        if t > sim_t:
            sim_t = t
        if speed is not None:
            due = wall0 + (t - start).total_seconds() / speed
            if due - monotonic() > 0.002:
                # Ahead of time: what is buffered goes out now, and PUBACKs are read
                # (and the connections kept alive) while waiting.
                publisher.flush()
                while (ahead := due - monotonic()) > 0.002:
                    if stop.wait(min(ahead, 0.25)):
                        return sim_t, True
                    publisher.flush()
        publish(msg)
        if on_progress is not None:
            now = monotonic()
            if now - last_report >= every:
                count = publisher.stats.published
                on_progress(
                    Progress(
                        sim_t,
                        start,
                        end,
                        count,
                        now - wall0,
                        (count - last_count) / (now - last_report),
                    )
                )
                last_report, last_count = now, count
    publisher.flush()
    return sim_t, False
