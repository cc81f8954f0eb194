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
    wall0 = time.monotonic()
    last_report, last_count = wall0, publisher.stats.published
    sim_t = start
    for msg in messages:
        if stop.is_set():
            return sim_t, True
        sim_t = max(sim_t, msg.t)
        if speed is not None:
            due = wall0 + (msg.t - start).total_seconds() / speed
            while (ahead := due - time.monotonic()) > 0.002:
                if stop.wait(min(ahead, 0.25)):
                    return sim_t, True
        publisher.publish(msg)
        now = time.monotonic()
        if on_progress is not None and now - last_report >= every:
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
    return sim_t, False
