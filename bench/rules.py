# ruff: noqa: E402 - the path fix below must run before the project's packages are imported
"""Rule-engine benchmark: the ingest with the default rules off and on, alert latency, state.

    .venv/bin/python -m bench.rules [--quick] [--json results.json] [--help]

Three measurements, in one run, on a local PostgreSQL and Mosquitto started
here with the platform's normal (durable) settings, as `bench/ingest.py` does:

- `throughput`: a city from `generate_city` (10,000 devices of the six
  profiles) is imported into `devices`; a publisher process sends every device
  three messages of 20 timestamped readings of its profile's metrics (quiet,
  plausible values), at full speed, twice: to an `IngestService` without a
  sink (rules off), then to one whose sink is a `RuleProcess` (the
  `RuleRuntime` in a process of its own) with the default rules (rules on,
  wired as `Platform` wires it; `--rules-in thread` for a `RuleRuntime` in a
  thread of this process), its windows warmed first
  with each device's recent history. Readings are rows of `readings` (one
  metric of one device at one time). Off: N / (first publish → last commit);
  on: N / (first publish → the engine has evaluated the last one). The rules'
  cost is 1 − on/off. The runtime's queue is watched: the most readings
  committed but not yet evaluated, and how long the engine needed after the
  last commit. That drain is the end of a run, not a rate: the rule process
  evaluates the last ingest batch (up to the publisher's window, 2,000 messages
  of 180 readings) after its commit. In a run of one message per device (10
  s) it was 10-20 % of the span; three messages per device make the run long
  enough to measure the sustained rate.
- `latency`: the same city at half the rules-on rate, while a few water-level
  gauges alternate above and below their warning level every second under a
  bench-only rule with no `for`/`clear_for` (so every such reading is a
  transition); publish → AlertTransition is the time `on_transitions` is called
  in this process (after the transition is stored) − the reading's `ts`, set at publish.
- `memory`: in a separate process, an `Engine` with the default rules and
  100,000 devices, each fed enough history to fill every window the rules keep
  (24 h of 5-minute rain and PM readings, 6 h of river levels, 15 min of noise;
  the last reading of each device through `Engine.ingest`): growth of VmRSS.
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
# Run as a script, this file's folder heads sys.path and this module would shadow
# the `rules` package it measures.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _ROOT / "bench"]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import argparse
import contextlib
import dataclasses
import gc
import json
import logging
import math
import multiprocessing
import os
import random
import re
import resource
import signal
import subprocess
import tempfile
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from typing import Any

import orjson
import psycopg
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from alerts.model import AlertTransition
from bench.ingest import (
    BenchError,
    CpuMeter,
    Environment,
    cores_used,
    machine_info,
    peak_rss,
    reset_peak_rss,
    wait_for_quiet,
)
from bench.loadgen import LoadError, PublisherProcess, PublishPlan, PublishResult, RawPublisher
from cityvitals.db import MigrationError
from cityvitals.rules_runtime import RuleProcess, RuleRuntime
from cityvitals.services import ServiceError
from devices.model import DeviceEvent, Reading
from devices.profile import DeviceProfile, ProfileSet, load_profiles
from devices.registry import DeviceRecord
from devices.registry_store import upsert_devices
from ingest.mqtt import BrokerAddress
from ingest.service import BatchSink, IngestConfig, IngestService
from rules.config import Rule, RuleSet, load_rules
from rules.derived import enrich_attributes
from rules.engine import DeviceInfo, DeviceState, Engine
from simulators.city import generate_city

COST_TARGET = 0.25
"""The rules may cost at most this share of the ingest's readings/s."""
P99_TARGET = 0.2
"""p99 publish → alert transition, seconds, at half the rules-on rate."""
MEMORY_TARGET = 1_000_000_000
"""Rule-engine state for MEMORY_DEVICES devices, bytes (1 GB)."""
MEMORY_DEVICES = 100_000

TIMEZONE = "Asia/Shanghai"
"""The platform's default time zone (Settings.timezone); UTC+8 all year."""
_LOCAL_OFFSET_S = 8 * 3600
Rnd = Callable[[], float]
PROBE_RULE = "bench_probe_level"

log = logging.getLogger("bench.rules")


# -- plausible telemetry ---------------------------------------------------------------------


_POLLUTANTS = {
    "pm2_5": (30.0, 8.0),
    "pm10": (55.0, 12.0),
    "so2": (8.0, 2.0),
    "no2": (35.0, 8.0),
    "o3": (70.0, 15.0),
    "co": (0.7, 0.15),
}
"""Quiet air (AQI about 50-80): mean and spread, µg/m³ (CO mg/m³)."""


THROUGHPUT_ROUNDS = 3
"""Messages per device in a throughput run (by default): long enough that the end of the
run (the last batch's evaluation after its commit) does not decide the rate."""


def windowed(profile: str, metric: str, attrs: Mapping[str, Any], t: float, rnd: Rnd) -> float:
    """A quiet value of a metric the default rules keep windows of (cheap: history is long)."""
    if metric == "rain_mm":
        return 0.2 if rnd() < 0.1 else 0.0  # drizzle now and then, far from any signal
    if metric == "laeq_db":
        hour = int((t + _LOCAL_OFFSET_S) // 3600) % 24
        limit = float(attrs.get("day_limit_db" if 6 <= hour < 22 else "night_limit_db") or 55)
        return round(limit - 12 + 3 * (rnd() - 0.5), 1)
    if metric == "level_m" and profile == "water_level":
        base = float(attrs.get("warning_level_m") or 4.5) - 1.5
        tide = 0.03 * math.sin(2 * math.pi * t / (12.42 * 3600))
        return round(base + tide + 0.01 * (rnd() - 0.5), 3)
    if metric in _POLLUTANTS:
        mean, spread = _POLLUTANTS[metric]
        return round(mean + spread * (rnd() + rnd() - 1), 2)
    raise BenchError(f"no window model for {profile}.{metric}")


def telemetry(
    profile: str, attrs: Mapping[str, Any], t: float, rng: random.Random
) -> dict[str, Any]:
    """One instant of quiet, plausible telemetry of a device (no default rule should fire).

    `attrs` are the device's attributes with the standards' values filled in
    (`enrich_attributes`); `t` is epoch seconds. Always the same metrics per
    profile; enums as their codes, booleans as JSON booleans.
    """
    rnd = rng.random
    if profile in ("elevator", "elevator_frame"):
        running = rnd() < 0.3
        floors = int(attrs.get("floors") or 6)
        return {
            "state": 1 if running else 0,
            "floor": 1 + int(rnd() * floors),
            "door": 0 if running or rnd() < 0.8 else 2,
            "direction": (1 if rnd() < 0.5 else 2) if running else 0,
            "speed_mps": round(float(attrs.get("rated_speed_mps") or 1.0) * (0.5 + rnd() / 2), 2)
            if running
            else 0.0,
            "in_door_zone": not running,
            "passengers_present": running or rnd() < 0.1,
            "service_mode": 0,
            "power": 0,
            "load_pct": int(rnd() * 60) if running else 0,
            "run_count": int(t / 90) % 1_000_000,
            "fault_code": 0,
        }
    if profile == "noise":
        laeq = windowed(profile, "laeq_db", attrs, t, rnd)
        return {
            "laeq_db": laeq,
            "lmax_db": round(laeq + 8 + 7 * rnd(), 1),
            "lmin_db": round(laeq - 6 - 4 * rnd(), 1),
            "l10_db": round(laeq + 2 + 2 * rnd(), 1),
            "l50_db": round(laeq - 2 * rnd(), 1),
            "l90_db": round(laeq - 4 - 3 * rnd(), 1),
            "battery_v": round(12.55 + 0.1 * rnd(), 2),
            "rssi_dbm": -95 + int(25 * rnd()),
        }
    if profile == "rain_gauge":
        rain = windowed(profile, "rain_mm", attrs, t, rnd)
        return {
            "rain_mm": rain,
            "intensity_mm_h": round(rain * 12, 1),
            "battery_v": round(12.65 + 0.1 * rnd(), 2),
            "rssi_dbm": -100 + int(30 * rnd()),
        }
    if profile == "air_quality":
        return {
            **{p: windowed(profile, p, attrs, t, rnd) for p in _POLLUTANTS},
            "temperature_c": round(17 + 6 * rnd(), 1),
            "humidity_pct": round(50 + 30 * rnd(), 1),
        }
    if profile == "water_level":
        return {
            "level_m": windowed(profile, "level_m", attrs, t, rnd),
            "rate_m_h": round(0.01 * (rnd() - 0.5), 3),
            "trend": 0,
            "battery_v": round(12.65 + 0.1 * rnd(), 2),
            "rssi_dbm": -100 + int(30 * rnd()),
        }
    if profile == "drainage":
        diameter = float(attrs.get("pipe_diameter_mm") or 800) / 1000
        return {
            "level_m": round(diameter * (0.2 + 0.15 * rnd()), 3),
            "flow_m3s": round(diameter * (0.05 + 0.15 * rnd()), 3),
            "cover_tilt_deg": round(0.2 + 0.6 * rnd(), 1),
            "cover_open": False,
            "ch4_pct_lel": round(0.5 + rnd(), 1),
            "h2s_ppm": round(0.1 + 0.2 * rnd(), 2),
            "battery_v": round(3.88 + 0.04 * rnd(), 3),
            "rssi_dbm": -110 + int(30 * rnd()),
        }
    raise BenchError(f"no telemetry model for profile {profile!r}")


def _metric_count(profile: str) -> int:
    return len(telemetry(profile, {}, 0.0, random.Random(0)))


# -- the city --------------------------------------------------------------------------------


@dataclass(frozen=True)
class CityDevice:
    device_id: str
    profile: str
    district: str
    name: str
    attributes: dict[str, Any]
    """Registry attributes as `cityvitals devices import` stores them (profile defaults in)."""


def make_city(
    devices: int, districts: int, seed: int, profiles: ProfileSet
) -> tuple[list[DeviceRecord], list[CityDevice]]:
    """`generate_city`'s registry, attributes converted by each profile as the CSV import does."""
    records: list[DeviceRecord] = []
    city: list[CityDevice] = []
    for r in generate_city(districts, devices, seed).devices:
        attributes, problems = profiles[r.profile].device_attributes(r.attributes)
        if problems:
            raise BenchError(f"generate_city gave {r.device_id} bad attributes: {problems}")
        records.append(dataclasses.replace(r, attributes=attributes))
        city.append(CityDevice(r.device_id, r.profile, r.district, r.name, attributes))
    return records, city


def device_infos(city: Iterable[CityDevice], profiles: ProfileSet) -> Iterator[DeviceInfo]:
    for d in city:
        yield DeviceInfo(d.device_id, profiles[d.profile], d.district, d.name, d.attributes)


def fill_history(
    engine: Engine, end: float, seed: int, evaluate_last: bool, chunk: int = 5000
) -> dict[str, int]:
    """Give every device of the engine the history its kept windows hold, up to `end`.

    Instants at the profile's reporting interval, far enough back to fill each
    window kept. Older instants carry only the kept metrics (and only the points
    that stay in their windows) and go through `DeviceState.add`, as
    `Engine.ingest` stores them (one timestamp per instant), without evaluating
    rules; the last instant carries
    every metric and, with `evaluate_last`, goes through `Engine.ingest`, so
    derived values and rule state are those of a running engine. Returns the
    window points held, by profile.
    """
    rng = random.Random(seed)
    rnd = rng.random
    last: list[Reading] = []
    end_dt = datetime.fromtimestamp(end, UTC)
    for state in list(engine.devices.values()):
        info = state.info
        name, attrs = info.profile.name, info.attributes
        interval = info.profile.reporting_interval.total_seconds()
        kept = list(state.keep.items())
        span = max((seconds for _, seconds in kept), default=0.0)
        for i in range(math.ceil(span / interval), 0, -1):
            t = end - i * interval
            age = i * interval
            for metric, seconds in kept:
                if age < seconds:  # older points leave the window at the last instant
                    state.add(t, metric, windowed(name, metric, attrs, t, rnd))
        values = telemetry(info.profile.name, info.attributes, end, rng)
        if evaluate_last:
            last += [Reading(end_dt, info.device_id, m, float(v)) for m, v in values.items()]
            if len(last) >= chunk * 10:
                engine.ingest(last)
                last = []
        else:
            for m, v in values.items():
                state.add(end, m, float(v))
    if last:
        engine.ingest(last)
    points: dict[str, int] = {}
    for state in engine.devices.values():
        name = state.info.profile.name
        points[name] = points.get(name, 0) + sum(len(h) for h in state.history.values())
    return points


# -- the publisher process -------------------------------------------------------------------


@dataclass(frozen=True)
class CityPlan(PublishPlan):
    """What the city publisher sends: each device in turn, and probe gauges flipping."""

    city: tuple[tuple[str, str, str, dict[str, Any]], ...] = ()
    """(device_id, profile, district, attributes) in publishing order."""
    probes: tuple[tuple[str, str, float, float], ...] = ()
    """(device_id, district, low level, high level) of the probe gauges."""
    probe_interval: float = 0.05
    """A probe reading every this many seconds (paced runs only), gauges in turn."""
    seed: int = 0


class CityTelemetry:
    """Messages of the city's devices: `readings_per_message` instants, `ts` at publish.

    As `bench.loadgen.Telemetry`: `ts` is epoch milliseconds when the message is
    built (the last reading's), a device's readings never share a millisecond,
    and `seq` counts from 1 per device.
    """

    def __init__(self, plan: CityPlan) -> None:
        self.plan = plan
        self.rng = random.Random(plan.seed)
        self.topics = [
            f"{plan.root}/{district}/{profile}/{device}/telemetry".encode()
            for device, profile, district, _ in plan.city
        ]
        self.models = [
            (profile, enrich_attributes(profile, attrs)) for _, profile, _, attrs in plan.city
        ]
        self.last_ts = [0] * len(plan.city)
        self.seq = [0] * len(plan.city)
        self.probe_topics = [
            f"{plan.root}/{district}/water_level/{device}/telemetry".encode()
            for device, district, _, _ in plan.probes
        ]
        self.probe_last_ts = [0] * len(plan.probes)

    def message(self, n: int) -> tuple[bytes, bytes, int]:
        """Topic, payload and number of readings of the `n`-th message."""
        i = n % len(self.topics)
        k = self.plan.readings_per_message
        now = int(time.time() * 1000)
        start = max(now - (k - 1), self.last_ts[i] + 1)
        self.last_ts[i] = start + k - 1
        seq = self.seq[i]
        self.seq[i] = seq + k
        profile, attrs = self.models[i]
        items: list[dict[str, Any]] = [
            {
                "ts": start + j,
                "seq": seq + 1 + j,
                "values": telemetry(profile, attrs, (start + j) / 1000, self.rng),
            }
            for j in range(k)
        ]
        body = items[0] if k == 1 else {"readings": items}
        return self.topics[i], orjson.dumps(body), sum(len(x["values"]) for x in items)

    def probe(self, n: int) -> tuple[bytes, bytes]:
        """The `n`-th probe reading: gauges in turn, each alternately high and low."""
        i = n % len(self.probe_topics)
        high = (n // len(self.probe_topics)) % 2 == 0
        now = max(int(time.time() * 1000), self.probe_last_ts[i] + 1)
        self.probe_last_ts[i] = now
        _, _, low_m, high_m = self.plan.probes[i]
        body = {
            "ts": now,
            "seq": n // len(self.probe_topics) + 1,
            "values": {"level_m": high_m if high else low_m},
        }
        return self.probe_topics[i], orjson.dumps(body)


def publish_city(plan: CityPlan, pub: RawPublisher) -> PublishResult:
    source = CityTelemetry(plan)
    window = pub.window
    refill = window - max(1, window // 4)
    cpu0 = time.process_time()
    started = time.time()
    t0 = time.monotonic()
    sent = probes = readings = tick = 0

    def room() -> None:
        if pub.in_flight >= window:
            pub.wait_below(refill)

    while sent < plan.messages:
        if plan.rate is None:
            due = plan.messages - sent
        else:
            elapsed = time.monotonic() - t0
            due = min(plan.messages, int(elapsed * plan.rate)) - sent
            if plan.probes:
                for _ in range(int(elapsed / plan.probe_interval) + 1 - probes):
                    room()
                    pub.publish(*source.probe(probes))
                    pub.flush()
                    probes += 1
                    readings += 1
        for _ in range(due):
            room()
            topic, payload, n = source.message(sent)
            pub.publish(topic, payload)
            sent += 1
            readings += n
        pub.flush()
        pub.read_acks(block=False)
        if plan.rate is not None:
            tick += 1
            time.sleep(max(0.0, t0 + tick * 0.005 - time.monotonic()))
    published = time.time()
    pub.wait_below(0)
    return PublishResult(
        messages=sent + probes,
        readings=readings,
        started=started,
        published=published,
        acknowledged=time.time(),
        refused=pub.refused,
        cpu_seconds=time.process_time() - cpu0,
        window=window,
    )


def city_publisher_main(plan: CityPlan, conn: Connection) -> None:
    """Entry point of the publisher process (the protocol of `bench.loadgen.publisher_main`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        pub = RawPublisher(BrokerAddress.from_url(plan.mqtt_url), plan.client_id, plan.window)
        conn.send(("ready", pub.window))
        while True:
            command = conn.recv()
            if command == "probe":
                pub.publish(plan.probe_topic.encode(), b"online")
                pub.wait_below(0)
                conn.send(("probed", None))
            elif command == "go":
                conn.send(("done", asdict(publish_city(plan, pub))))
            elif command == "stop":
                break
        pub.close()
    except BaseException:
        with contextlib.suppress(OSError):
            conn.send(("error", traceback.format_exc()))
        raise


class CityPublisherProcess(PublisherProcess):
    """`bench.loadgen.PublisherProcess` running the city publisher instead."""

    def __init__(self, plan: CityPlan) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.plan = plan
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(
            target=city_publisher_main, args=(plan, child), name="bench-publisher", daemon=True
        )
        self._process.start()
        child.close()
        try:
            self.window = int(self._expect("ready", 60))
        except BaseException:
            self.close()
            raise


# -- measuring inside this process -----------------------------------------------------------

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def thread_cpu(native_id: int | None) -> float:
    """CPU seconds of one thread of this process (0 once it has ended)."""
    if native_id is None:
        return 0.0
    try:
        text = Path(f"/proc/self/task/{native_id}/stat").read_text()
    except OSError:
        return 0.0
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def _thread_id(name: str) -> int | None:
    for t in threading.enumerate():
        if t.name == name:
            return t.native_id
    return None


def _ms(t: datetime) -> int:
    return round(t.timestamp() * 1000)


@dataclass
class LatencyTrace:
    """When each probe reading was committed, evaluated and its transition stored.

    Keyed by (device, `ts` in ms), the reading's identity on its whole way:
    the sink wrapper sees it committed, the engine sees the transition it made,
    `on_transitions` sees that transition stored.
    """

    rule: str
    devices: frozenset[str]
    committed: dict[tuple[str, int], float] = field(default_factory=dict)
    evaluated: dict[tuple[str, int], tuple[float, float]] = field(default_factory=dict)
    stored: dict[tuple[str, int], float] = field(default_factory=dict)

    def sink(self, submit: BatchSink) -> BatchSink:
        def traced(readings: Sequence[Reading], events: Sequence[DeviceEvent]) -> None:
            now = time.time()
            for r in readings:
                if r.device_id in self.devices:
                    self.committed[(r.device_id, _ms(r.ts))] = now
            submit(readings, events)

        return traced

    def on_evaluated(self, out: list[AlertTransition], started: float, finished: float) -> None:
        for t in out:
            if t.rule == self.rule and t.device_id is not None:
                self.evaluated[(t.device_id, _ms(t.at))] = (started, finished)

    def on_transitions(self, out: list[AlertTransition]) -> None:
        now = time.time()
        for t in out:
            if t.rule == self.rule and t.device_id is not None:
                self.stored[(t.device_id, _ms(t.at))] = now

    def figures(self, since: float) -> dict[str, float]:
        """Percentiles of publish → stored, and of its parts, of readings from `since` on."""
        parts: dict[str, list[float]] = {
            "total": [],
            "ingest": [],
            "queue": [],
            "evaluate": [],
            "store": [],
        }
        for key, stored in self.stored.items():
            published = key[1] / 1000
            if published < since:
                continue
            parts["total"].append(stored - published)
            committed = self.committed.get(key)
            evaluated = self.evaluated.get(key)
            if committed is None or evaluated is None:
                continue
            started, finished = evaluated
            parts["ingest"].append(committed - published)
            parts["queue"].append(started - committed)
            parts["evaluate"].append(finished - started)
            parts["store"].append(stored - finished)
        out: dict[str, float] = {"samples": len(parts["total"])}
        for name, values in parts.items():
            values.sort()
            prefix = "" if name == "total" else f"{name}_"
            out[f"{prefix}p50_s"] = percentile(values, 0.50)
            out[f"{prefix}p99_s"] = percentile(values, 0.99)
            if name == "total":
                out["p90_s"] = percentile(values, 0.90)
                out["max_s"] = values[-1] if values else math.nan
        return out


def _with_rule_process(
    cores: dict[str, float | None], rules_cpu: float, window: float
) -> dict[str, float | None]:
    """`cores_used` with the rule process's CPU moved from `other` to this process's share."""
    share = rules_cpu / max(window, 1e-9)
    out = dict(cores)
    out["bench"] = (out.get("bench") or 0.0) + share
    out["other"] = max(0.0, (out.get("other") or 0.0) - share)
    return out


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of sorted values."""
    if not values:
        return math.nan
    return values[max(0, math.ceil(q * len(values)) - 1)]


def _rule_errors(engine: Engine) -> dict[str, str]:
    return {
        name: f"{h.errors} error(s), last: {h.last_error}"
        for name, h in engine.health.items()
        if h.errors
    }


# -- results -----------------------------------------------------------------------------------


@dataclass
class Options:
    devices: int
    districts: int
    messages: int
    batch_size: int
    latency_seconds: float
    warmup_seconds: float
    latency_rate: float | None
    probes: int
    probe_interval: float
    memory_devices: int
    window: int
    seed: int
    stall_timeout: float
    quiet_limit: float
    quiet_wait: float
    quick: bool
    rules_in: str = "process"
    """Where the rule runtime runs: "process" (RuleProcess, as Platform) or "thread"."""


@dataclass
class RunResult:
    """One run of the city through the ingest: rules off, rules on, or the latency run."""

    name: str
    rules: bool
    messages: int
    readings: int
    committed_rate: float
    """Readings/s: N / (first publish → last commit)."""
    evaluated_rate: float | None
    """Readings/s: N / (first publish → the engine has evaluated the last), rules on."""
    span_s: float
    publisher_rate: float
    cores: dict[str, float | None]
    cpu_window_s: float
    ingest_cpu_s: float
    """CPU of the ingest thread."""
    rules_cpu_s: float
    """CPU of the rule runtime's thread (evaluation, storing transitions, ticks, vitals)."""
    engine_cpu_s: float
    """CPU of `Engine.ingest` alone (part of rules_cpu_s)."""
    peak_rss: int
    stored: int
    duplicates: int
    dead_letters: int
    ingest_batches: int
    engine_batches: int = 0
    largest_engine_batch: int = 0
    max_backlog: int = 0
    """Most readings committed but not yet evaluated (the runtime's queue and the batch in hand)."""
    drain_s: float = 0.0
    """Last evaluation − last commit."""
    transitions: int = 0
    rule_errors: dict[str, str] = field(default_factory=dict)
    target_rate: float | None = None
    latency: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        """Readings/s through the whole path: committed, and evaluated when the rules are on."""
        return self.evaluated_rate if self.evaluated_rate is not None else self.committed_rate

    def per_reading_us(self, seconds: float) -> float:
        return seconds / max(self.readings, 1) * 1e6

    @property
    def process_cpu_s(self) -> float:
        return (self.cores.get("bench") or 0.0) * self.cpu_window_s


@dataclass
class MemoryResult:
    devices: int
    by_profile: dict[str, int]
    window_points: dict[str, int]
    rss_before: int
    rss_after: int
    hwm_after: int
    seconds: float
    cpu_s: float
    alerts: int
    rule_errors: dict[str, str]
    sampled_bytes_per_device: dict[str, float]

    @property
    def growth(self) -> int:
        return self.rss_after - self.rss_before

    @property
    def per_device(self) -> float:
        return self.growth / self.devices

    @property
    def at_target_size(self) -> float:
        """Growth scaled to MEMORY_DEVICES devices (the same when that many were measured)."""
        return self.per_device * MEMORY_DEVICES


# -- the benchmark -----------------------------------------------------------------------------


class Bench:
    def __init__(
        self,
        env: Environment,
        options: Options,
        progress: Progress,
        profiles: ProfileSet,
    ) -> None:
        self.env = env
        self.options = options
        self.progress = progress
        self.profiles = profiles
        self.meter: CpuMeter = env.cpu_meter()
        self.records, self.city = make_city(
            options.devices, options.districts, options.seed, profiles
        )
        self.rules = load_rules(profiles)
        order = list(range(len(self.city)))
        random.Random(options.seed).shuffle(order)
        self.order = [self.city[i] for i in order]
        """Publishing order: the profiles interleaved."""
        self.metrics = {p: _metric_count(p) for p in {d.profile for d in self.city}}

    def say(self, text: str) -> None:
        self.progress.console.log(text)

    def rows(self, devices: Sequence[CityDevice], messages: int) -> int:
        k = self.options.batch_size
        return sum(k * self.metrics[devices[n % len(devices)].profile] for n in range(messages))

    def _database(self, scenario: str) -> str:
        url = self.env.fresh_database(scenario)
        with psycopg.connect(url) as conn:
            upsert_devices(conn, self.records)
        return url

    def _plan(
        self,
        scenario: str,
        devices: Sequence[CityDevice],
        messages: int,
        rate: float | None,
        probes: Sequence[tuple[str, str, float, float]] = (),
    ) -> CityPlan:
        return CityPlan(
            mqtt_url=self.env.mqtt_url,
            client_id=f"cvbench-{self.env.run_id}-{scenario}-pub",
            root=f"cvbench{self.env.run_id}{scenario}",
            messages=messages,
            readings_per_message=self.options.batch_size,
            devices=len(devices),
            rate=rate,
            window=self.options.window,
            city=tuple((d.device_id, d.profile, d.district, d.attributes) for d in devices),
            probes=tuple(probes),
            probe_interval=self.options.probe_interval,
            seed=self.options.seed,
        )

    def run(
        self,
        scenario: str,
        rules: RuleSet | None,
        devices: Sequence[CityDevice],
        messages: int,
        rate: float | None = None,
        probes: Sequence[tuple[str, str, float, float]] = (),
        trace: LatencyTrace | None = None,
    ) -> tuple[RunResult, PublishResult]:
        """The city's messages through a fresh ingest, with a rule runtime when `rules`.

        Done when every published reading is committed and, with rules, evaluated
        (and, with probes, when every probe reading's transition has been seen or
        5 s have passed since everything was evaluated).
        """
        url = self._database(scenario)
        plan = self._plan(scenario, devices, messages, rate, probes)
        background = self.rows(devices, messages)
        config = IngestConfig(
            database_url=url,
            mqtt_url=self.env.mqtt_url,
            topic_root=plan.root,
            client_id=f"cvbench-{self.env.run_id}-{scenario}",
        )
        self.env.sessions.append(config.client_id)
        runtime: RuleProcess | RuleRuntime | None = None
        engine: Engine | None = None
        in_process = self.options.rules_in == "process"
        if rules is not None:
            # As Platform wires it (with Settings' defaults).
            threaded = RuleRuntime(
                rules,
                self.profiles,
                url,
                self.env.mqtt_url,
                topic_root=plan.root,
                timezone=TIMEZONE,
            )
            runtime = RuleProcess(threaded) if in_process else threaded
            engine = Engine(rules, TIMEZONE)
            runtime.engine = engine  # before start: the rule process is forked with it
            if trace is not None:
                runtime.on_evaluated.append(trace.on_evaluated)
                runtime.on_transitions.append(trace.on_transitions)
            # Windows as a running engine holds them; restore() keeps known devices' history.
            engine.set_devices(device_infos(self.city, self.profiles))
            fill_history(engine, time.time(), self.options.seed, evaluate_last=False)
        sink: BatchSink | None = None
        if runtime is not None:
            sink = runtime.submit if trace is None else trace.sink(runtime.submit)
        service = IngestService(config, self.profiles, sink)
        thread = threading.Thread(target=service.run, name=f"ingest-{scenario}", daemon=True)
        publisher = CityPublisherProcess(plan)
        backlog = 0
        last_commit = 0.0
        try:
            if runtime is not None:
                runtime.start()
                if not runtime.ready.wait(60):
                    raise BenchError(f"{scenario}: the rule runtime did not start")
            thread.start()
            deadline = time.monotonic() + 60
            while not (service.ready.is_set() and service.connected):
                if time.monotonic() > deadline or not thread.is_alive():
                    raise BenchError(f"{scenario}: the ingest did not start: {service.last_error}")
                time.sleep(0.02)
            # A probe message proves the subscription is in place before the timed publishing.
            publisher.probe()
            deadline = time.monotonic() + 30
            while service.counters.messages < 1:
                if time.monotonic() > deadline:
                    raise BenchError(f"{scenario}: the ingest never received the probe message")
                time.sleep(0.01)
            ingest0 = thread_cpu(thread.native_id)
            stats0 = dataclasses.replace(runtime.stats) if runtime is not None else None
            rules_tid = None if in_process else _thread_id("rules")
            rules0 = thread_cpu(rules_tid)
            reset_peak_rss()
            before = self.meter.snapshot()
            publisher.go()
            task = self.progress.add_task(f"{scenario}: committed", total=background)
            etask = (
                None
                if engine is None
                else self.progress.add_task(f"{scenario}: evaluated", total=background)
            )
            pub: PublishResult | None = None
            committed = evaluated = -1
            last_change = time.monotonic()
            settled: float | None = None
            try:
                while True:
                    time.sleep(0.01)
                    if pub is None:
                        pub = publisher.poll_result()
                    n = service.counters.readings
                    e = runtime.stats.readings if runtime is not None else n
                    if n != committed:
                        committed, last_commit = n, time.time()
                    if (n, e) != (committed, evaluated) or n == committed != evaluated:
                        last_change = time.monotonic()
                    evaluated = e
                    backlog = max(backlog, n - e)
                    self.progress.update(task, completed=n)
                    if etask is not None:
                        self.progress.update(etask, completed=e)
                    if pub is not None and n >= pub.readings and e >= pub.readings:
                        if trace is None:
                            break
                        # The last probe transitions are being stored: give them a moment.
                        settled = settled or time.monotonic()
                        if len(trace.stored) >= pub.readings - background:
                            break
                        if time.monotonic() - settled > 5:
                            break
                    if time.monotonic() - last_change > self.options.stall_timeout:
                        raise BenchError(
                            f"{scenario}: stalled at {n:,} committed, {e:,} evaluated of "
                            f"{background:,}+ for {self.options.stall_timeout:.0f}s"
                        )
            finally:
                self.progress.remove_task(task)
                if etask is not None:
                    self.progress.remove_task(etask)
            after = self.meter.snapshot()
            ingest_cpu = thread_cpu(thread.native_id) - ingest0
            stats = dataclasses.replace(runtime.stats) if runtime is not None else None
            rules_cpu = engine_cpu = 0.0
            last_eval = 0.0
            if stats is not None and stats0 is not None:
                rules_cpu = stats.cpu - stats0.cpu if in_process else thread_cpu(rules_tid) - rules0
                engine_cpu = stats.engine_cpu - stats0.engine_cpu
                last_eval = stats.last_evaluated
            rss = peak_rss()
        finally:
            publisher.close()
            service.stop()
            thread.join(120)
            if runtime is not None:
                runtime.stop()
        if thread.is_alive():
            raise BenchError(f"{scenario}: the ingest did not stop within 120s")
        if pub.readings < background or (not probes and pub.readings != background):
            raise BenchError(
                f"{scenario}: the publisher sent {pub.readings:,} readings, expected {background:,}"
            )
        stored = self.env.count(url, "SELECT count(*) FROM readings")
        c = service.counters
        readings = pub.readings
        result = RunResult(
            name=scenario,
            rules=engine is not None,
            messages=pub.messages,
            readings=readings,
            committed_rate=readings / max(last_commit - pub.started, 1e-9),
            evaluated_rate=None
            if engine is None
            else readings / max(last_eval - pub.started, 1e-9),
            span_s=max(last_commit, last_eval) - pub.started,
            publisher_rate=pub.rate,
            cores=_with_rule_process(
                cores_used(before, after, pub.cpu_seconds),
                rules_cpu if in_process else 0.0,
                after.at - before.at,
            ),
            cpu_window_s=after.at - before.at,
            ingest_cpu_s=ingest_cpu,
            rules_cpu_s=rules_cpu,
            engine_cpu_s=engine_cpu,
            peak_rss=rss,
            stored=stored,
            duplicates=c.duplicates,
            dead_letters=c.dead_letters,
            ingest_batches=c.batches,
        )
        if stats is not None and stats0 is not None and runtime is not None:
            result.engine_batches = stats.chunks - stats0.chunks
            result.largest_engine_batch = stats.largest_chunk
            result.max_backlog = backlog
            result.drain_s = max(0.0, last_eval - last_commit)
            result.transitions = runtime.transitions
            result.rule_errors = (
                dict(runtime.rule_errors)
                if isinstance(runtime, RuleProcess)
                else _rule_errors(runtime.engine)
            )
        return result, pub

    def throughput(self, rules_on: bool) -> RunResult:
        name = "rules_on" if rules_on else "rules_off"
        rules = self.rules if rules_on else None
        result, _ = self.run(name, rules, self.order, self.options.messages)
        return result

    def latency(self, on_rate: float) -> RunResult:
        """The city at half the rules-on rate, while probe gauges flip across a bench rule."""
        # Autovacuum of the throughput runs' 5.4 M fresh rows each took 0.2 cores from
        # this phase (publish -> commit p99 141 ms instead of 105 ms): gone before it.
        for measured in ("rules_off", "rules_on"):
            self.env.drop_database(measured)
        gauges = [d for d in self.order if d.profile == "water_level"][: self.options.probes]
        if not gauges:
            raise BenchError("latency: the city has no water_level gauge to probe")
        probe_ids = sorted(d.device_id for d in gauges)
        background = [d for d in self.order if d.device_id not in set(probe_ids)]
        probes = [
            (
                d.device_id,
                d.district,
                round(float(d.attributes["warning_level_m"]) - 1.5, 3),
                round(float(d.attributes["warning_level_m"]) + 0.3, 3),
            )
            for d in gauges
        ]
        target = self.options.latency_rate or on_rate / 2
        per_message = self.rows(background, len(background)) / len(background)
        msg_rate = max(1.0, (target - 1 / self.options.probe_interval) / per_message)
        duration = self.options.latency_seconds + self.options.warmup_seconds
        messages = max(1, int(msg_rate * duration))
        trace = LatencyTrace(PROBE_RULE, frozenset(probe_ids))

        # No for, no clear_for, no clear: every probe reading is a transition.
        rule = {
            "name": PROBE_RULE,
            "domain": "hydrology",
            "title": "Bench probe: level at or above the warning level",
            "scope": {"profiles": ["water_level"], "devices": probe_ids},
            "when": "level_m >= attr.warning_level_m",
            "level": "yellow",
            "summary": "{device.name}: {level_m:.2f} m",
        }
        with tempfile.TemporaryDirectory(prefix="cvbench-rules-") as tmp:
            Path(tmp, "bench_probe.yaml").write_text(json.dumps([rule]))
            rules = load_rules(self.profiles, directories=[Path(tmp)])
        result, pub = self.run(
            "latency",
            rules,
            background,
            messages,
            rate=msg_rate,
            probes=probes,
            trace=trace,
        )
        probe_readings = pub.readings - self.rows(background, messages)
        result.target_rate = target
        result.latency = {
            **trace.figures(since=pub.started + self.options.warmup_seconds),
            "probe_readings": probe_readings,
            "probe_transitions": len(trace.stored),
            "missed": max(0, probe_readings - len(trace.stored)),
            "achieved_rate": pub.readings / max(pub.published - pub.started, 1e-9),
        }
        return result

    def memory(self) -> MemoryResult:
        """Rule-engine state for `memory_devices` devices, measured in a separate process."""
        o = self.options
        spec = {"devices": o.memory_devices, "districts": o.districts, "seed": o.seed}
        self.say(f"memory: an engine with {o.memory_devices:,} devices in a separate process")
        usage0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "bench.rules", "--memory-child", json.dumps(spec)],
            cwd=_ROOT,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(_ROOT)},
            check=False,
        )
        wall = time.monotonic() - started
        usage1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            raise BenchError(f"memory: the measuring process failed:\n{done.stderr[-3000:]}")
        data = json.loads(done.stdout.strip().splitlines()[-1])
        cpu = (usage1.ru_utime + usage1.ru_stime) - (usage0.ru_utime + usage0.ru_stime)
        return MemoryResult(**{**data, "seconds": wall, "cpu_s": cpu})


# -- the memory measurement (in its own process) ---------------------------------------------


def _status_bytes(field_name: str) -> int:
    match = re.search(rf"{field_name}:\s+(\d+) kB", Path("/proc/self/status").read_text())
    return int(match.group(1)) * 1024 if match else 0


_SHARED_TYPES = (DeviceProfile, Rule, RuleSet, type)


def deep_size(roots: Iterable[object], seen: set[int]) -> int:
    """Bytes of everything reachable from `roots` not in `seen` (profiles and rules excluded)."""
    total = 0
    stack = list(roots)
    while stack:
        o = stack.pop()
        if id(o) in seen or isinstance(o, _SHARED_TYPES):
            continue
        seen.add(id(o))
        total += sys.getsizeof(o)
        if isinstance(o, dict):
            stack.extend(o.keys())
            stack.extend(o.values())
        elif isinstance(o, list | tuple | deque | set | frozenset):
            stack.extend(o)
        elif isinstance(o, DeviceState):
            stack.extend(getattr(o, s) for s in DeviceState.__slots__)
        elif hasattr(o, "__dict__") and not isinstance(o, str | int | float):
            stack.append(vars(o))
    return total


def _sampled_sizes(engine: Engine, per_profile: int = 50) -> dict[str, float]:
    """Deep bytes per device, by profile, over a sample: its state and its list of rules.

    Objects every device shares (metric and district names, as the first device
    of the profile holds them) are not counted; the engine's dict entries are.
    """
    by_profile: dict[str, list[DeviceState]] = {}
    for state in engine.devices.values():
        by_profile.setdefault(state.info.profile.name, []).append(state)
    out: dict[str, float] = {}
    for name, states in sorted(by_profile.items()):
        first = states[0]
        shared = {id(k) for d in (first.latest, first.history, first.keep) for k in d}
        shared.add(id(first.info.district))
        sample = states[1 : per_profile + 1] or states[:1]
        total = 0
        for st in sample:
            roots = [st, engine._by_device.get(st.info.device_id, [])]
            total += deep_size(roots, set(shared))
        # Two dict slots per device (engine.devices, engine._by_device) at ~2/3 load.
        out[name] = total / len(sample) + 2 * (8 + 8 + 8) * 1.5
    return out


def memory_child(devices: int, districts: int, seed: int) -> dict[str, Any]:
    profiles = load_profiles()
    rules = load_rules(profiles)
    _, city = make_city(devices, districts, seed, profiles)
    gc.collect()
    rss_before = _status_bytes("VmRSS")
    engine = Engine(rules, TIMEZONE)
    engine.set_devices(device_infos(city, profiles))
    points = fill_history(engine, time.time(), seed, evaluate_last=True)
    # What only the engine holds stays; the feeding's garbage goes.
    gc.collect()
    rss_after = _status_bytes("VmRSS")
    by_profile: dict[str, int] = {}
    for d in city:
        by_profile[d.profile] = by_profile.get(d.profile, 0) + 1
    return {
        "devices": len(engine.devices),
        "by_profile": dict(sorted(by_profile.items())),
        "window_points": dict(sorted(points.items())),
        "rss_before": rss_before,
        "rss_after": rss_after,
        "hwm_after": _status_bytes("VmHWM"),
        "alerts": len(engine.alerts),
        "rule_errors": _rule_errors(engine),
        "sampled_bytes_per_device": _sampled_sizes(engine),
    }


# -- report --------------------------------------------------------------------------------


def _mb(n: float) -> str:
    return f"{n / 1e6:,.0f} MB"


def _cores(cores: dict[str, float | None], key: str) -> str:
    v = cores.get(key)
    return "–" if v is None else f"{v:.2f}"


@dataclass(frozen=True)
class Verdict:
    target: str
    measured: str
    limit: str
    ok: bool
    value: float


def cpu_bound_ratio(runs: Mapping[str, RunResult]) -> float | None:
    """on/off from this process's CPU per reading: the ratio less disturbed by other load."""
    off, on = runs.get("rules_off"), runs.get("rules_on")
    if not off or not on or not on.process_cpu_s:
        return None
    return off.per_reading_us(off.process_cpu_s) / on.per_reading_us(on.process_cpu_s)


def verdicts(runs: Mapping[str, RunResult], memory: MemoryResult | None) -> list[Verdict]:
    rows: list[Verdict] = []
    off, on = runs.get("rules_off"), runs.get("rules_on")
    if off and on:
        cost = 1 - on.rate / off.rate
        rows.append(
            Verdict(
                "rules' cost of ingest throughput (1 − on/off)",
                f"{cost:.0%}  ({on.rate:,.0f} / {off.rate:,.0f} readings/s)",
                f"≤ {COST_TARGET:.0%}",
                cost <= COST_TARGET,
                cost,
            )
        )
    if (lat := runs.get("latency")) and lat.latency:
        p99 = lat.latency["p99_s"]
        rows.append(
            Verdict(
                f"p99 publish → alert transition at {lat.target_rate or 0:,.0f} readings/s",
                f"{p99 * 1000:.0f} ms  ({lat.latency['samples']:,.0f} transitions)",
                f"≤ {P99_TARGET * 1000:.0f} ms",
                p99 <= P99_TARGET,
                p99,
            )
        )
    if memory is not None:
        scaled = memory.devices != MEMORY_DEVICES
        rows.append(
            Verdict(
                f"rule-engine state for {MEMORY_DEVICES:,} devices",
                f"{_mb(memory.at_target_size)}"
                + (f" (scaled from {memory.devices:,})" if scaled else "")
                + f", {memory.per_device:,.0f} B/device",
                f"≤ {MEMORY_TARGET / 1e9:.0f} GB",
                memory.at_target_size <= MEMORY_TARGET,
                memory.at_target_size,
            )
        )
    ingest_runs = list(runs.values())
    if ingest_runs:
        wrong = [r for r in ingest_runs if r.stored != r.readings or r.duplicates or r.dead_letters]
        rows.append(
            Verdict(
                "every reading stored exactly once",
                f"{sum(r.stored for r in ingest_runs):,} of "
                f"{sum(r.readings for r in ingest_runs):,}"
                + ("; wrong: " + ", ".join(r.name for r in wrong) if wrong else ""),
                "= published",
                not wrong,
                len(wrong),
            )
        )
    errors = {k: v for r in ingest_runs for k, v in r.rule_errors.items()}
    if memory is not None:
        errors.update(memory.rule_errors)
    if any(r.rules for r in ingest_runs) or memory is not None:
        rows.append(
            Verdict(
                "no rule failed to evaluate",
                ", ".join(sorted(errors)) or "none",
                "none",
                not errors,
                len(errors),
            )
        )
    return rows


def render(
    console: Console,
    info: dict[str, Any],
    env: Environment,
    options: Options,
    bench: Bench | None,
    runs: Mapping[str, RunResult],
    memory: MemoryResult | None,
) -> None:
    machine = Table(
        title="CityVitals rule-engine benchmark", show_header=False, title_justify="left"
    )
    machine.add_column(style="bold")
    machine.add_column()
    load = ", ".join(f"{v:.2f}" for v in info["load_average"])
    machine.add_row("CPU", f"{info['cpu']} · {info['cores']} cores ({info['cores_usable']} usable)")
    machine.add_row("RAM", f"{info['ram_bytes'] / 1024**3:.1f} GiB · kernel {info['kernel']}")
    machine.add_row("load average at start", load)
    machine.add_row("Python", info["python"])
    if env.versions:
        machine.add_row(
            "PostgreSQL",
            f"{env.versions.get('postgres_server_version')} ({env.flavor}) · "
            f"fsync={env.versions.get('postgres_fsync')} "
            f"synchronous_commit={env.versions.get('postgres_synchronous_commit')} "
            f"shared_buffers={env.versions.get('postgres_shared_buffers')}"
            + (" · local" if env.postgres else " · given URL"),
        )
        machine.add_row(
            "MQTT broker",
            env.versions.get("broker", "?") + (" · local" if env.broker else " · given URL"),
        )
    machine.add_row(
        "paho-mqtt / psycopg / orjson",
        f"{info['paho_mqtt']} / {info['psycopg']} / {info['orjson']}",
    )
    if bench is not None:
        mix: dict[str, int] = {}
        for d in bench.city:
            mix[d.profile] = mix.get(d.profile, 0) + 1
        machine.add_row(
            "city",
            f"{len(bench.city):,} devices in {options.districts} districts: "
            + ", ".join(f"{n:,} {p}" for p, n in sorted(mix.items(), key=lambda kv: -kv[1])),
        )
        machine.add_row(
            "load",
            f"raw publisher process, QoS 1, MQTT 5 · {options.messages:,} messages of "
            f"{options.batch_size} readings × the profile's metrics · IngestConfig defaults",
        )
        machine.add_row(
            "rules",
            f"{len(bench.rules.rules)} default rules · RuleRuntime defaults "
            "(tick 5 s, vitals on change ≤ every 2 s and every 60 s, registry every 30 s) · "
            + (
                "in a process of its own (RuleProcess, as Platform runs it)"
                if options.rules_in == "process"
                else "in a thread of the ingest's process (RuleRuntime)"
            ),
        )
    console.print(machine)

    if runs:
        table = Table(
            title="Ingest with the rules off and on",
            title_justify="left",
            caption="readings: rows of `readings` (one metric, one device, one time) · "
            "rate: committed, and evaluated with the rules on · µs/rdg: CPU per reading of "
            "this process (and the rule process), its ingest thread, the rule runtime "
            "(its process, or its thread), Engine.ingest alone · "
            "backlog: most readings committed but not yet evaluated · drain: last evaluation "
            "− last commit · cores: average CPU of this process (and the rule process), the "
            "publisher, PostgreSQL, "
            "the broker and the rest of the machine",
            caption_justify="left",
        )
        table.add_column("run", no_wrap=True)
        for name in (
            "messages",
            "readings",
            "committed/s",
            "evaluated/s",
            "span s",
            "µs/rdg: proc",
            "ingest",
            "rules",
            "engine",
            "backlog",
            "drain s",
            "alerts",
            "cores: this",
            "pub",
            "pg",
            "broker",
            "other",
            "peak RSS",
        ):
            table.add_column(name, justify="right", no_wrap=True)
        labels = {"rules_off": "rules off", "rules_on": "rules on", "latency": "half rate"}
        for r in runs.values():
            table.add_row(
                labels.get(r.name, r.name),
                f"{r.messages:,}",
                f"{r.readings:,}",
                f"{r.committed_rate:,.0f}",
                "–" if r.evaluated_rate is None else f"{r.evaluated_rate:,.0f}",
                f"{r.span_s:.1f}",
                f"{r.per_reading_us(r.process_cpu_s):.1f}",
                f"{r.per_reading_us(r.ingest_cpu_s):.1f}",
                f"{r.per_reading_us(r.rules_cpu_s):.1f}" if r.rules else "–",
                f"{r.per_reading_us(r.engine_cpu_s):.1f}" if r.rules else "–",
                f"{r.max_backlog:,}" if r.rules else "–",
                f"{r.drain_s:.2f}" if r.rules else "–",
                f"{r.transitions:,}" if r.rules else "–",
                _cores(r.cores, "bench"),
                _cores(r.cores, "publisher"),
                _cores(r.cores, "postgres"),
                _cores(r.cores, "broker"),
                _cores(r.cores, "other"),
                _mb(r.peak_rss),
            )
        console.print(table)
        disturbed = [
            f"{r.name} {r.cores['other']:.2f}"
            for r in runs.values()
            if (r.cores.get("other") or 0.0) > options.quiet_limit
        ]
        if disturbed:
            console.print(
                "[yellow]note:[/] other processes on the machine used cores during "
                + ", ".join(disturbed)
                + ": those figures are lower than on a quiet machine"
            )
        if (bound := cpu_bound_ratio(runs)) is not None:
            off, on = runs["rules_off"], runs["rules_on"]
            console.print(
                f"CPU of this process (and the rule process) per reading: rules off "
                f"{off.per_reading_us(off.process_cpu_s):.1f} µs, rules on "
                f"{on.per_reading_us(on.process_cpu_s):.1f} µs: were that CPU the bottleneck "
                f"(one core), on/off would be {bound:.2f}, a cost of {1 - bound:.0%}"
            )
        for r in runs.values():
            for rule, error in r.rule_errors.items():
                console.print(f"[red]{r.name}: rule {rule}: {error}[/]")
    if (lat := runs.get("latency")) and lat.latency:
        s = lat.latency
        console.print(
            f"latency: {s['samples']:,.0f} probe transitions after a "
            f"{options.warmup_seconds:.0f}s warm-up, at {s['achieved_rate']:,.0f} readings/s "
            f"published (target {lat.target_rate or 0:,.0f}): p50 {s['p50_s'] * 1000:.0f} ms · "
            f"p90 {s['p90_s'] * 1000:.0f} ms · p99 {s['p99_s'] * 1000:.0f} ms · "
            f"max {s['max_s'] * 1000:.0f} ms · missed {s['missed']:,.0f} of "
            f"{s['probe_readings']:,.0f}"
        )
        console.print(
            "  p50 / p99 of its parts: "
            + " · ".join(
                f"{label} {s[f'{part}_p50_s'] * 1000:.0f} / {s[f'{part}_p99_s'] * 1000:.0f} ms"
                for part, label in (
                    ("ingest", "publish → committed"),
                    ("queue", "→ evaluation starts"),
                    ("evaluate", "batch evaluated"),
                    ("store", "→ stored and called back"),
                )
            )
        )
    if memory is not None:
        mem = Table(
            title=f"Rule-engine state: {memory.devices:,} devices (separate process)",
            title_justify="left",
            caption=f"VmRSS {_mb(memory.rss_before)} → {_mb(memory.rss_after)} "
            f"(peak {_mb(memory.hwm_after)}): growth {_mb(memory.growth)}, "
            f"{memory.per_device:,.0f} B/device · {memory.alerts} alerts in the engine · "
            f"built in {memory.seconds:.0f} s ({memory.cpu_s:.0f} s CPU) · sampled: deep size "
            "of 50 devices' state and rule list per profile",
            caption_justify="left",
        )
        for name in ("profile", "devices", "window points/device", "sampled B/device", "share"):
            mem.add_column(name, justify="left" if name == "profile" else "right")
        total = sum(
            memory.sampled_bytes_per_device.get(p, 0.0) * n for p, n in memory.by_profile.items()
        )
        for p, n in memory.by_profile.items():
            size = memory.sampled_bytes_per_device.get(p, 0.0)
            mem.add_row(
                p,
                f"{n:,}",
                f"{memory.window_points.get(p, 0) / max(n, 1):,.0f}",
                f"{size:,.0f}",
                f"{size * n / max(total, 1):.0%}",
            )
        mem.add_row(
            "all (sampled)", f"{memory.devices:,}", "", f"{total / memory.devices:,.0f}", ""
        )
        console.print(mem)

    targets = Table(title="Targets", title_justify="left")
    targets.add_column("target")
    targets.add_column("measured", justify="right")
    targets.add_column("limit", justify="right")
    targets.add_column("result")
    for v in verdicts(runs, memory):
        targets.add_row(v.target, v.measured, v.limit, "[green]PASS[/]" if v.ok else "[red]FAIL[/]")
    console.print(targets)


def _run_json(r: RunResult) -> dict[str, Any]:
    return {
        **asdict(r),
        "rate": r.rate,
        "process_cpu_s": r.process_cpu_s,
        "us_per_reading": {
            "process": r.per_reading_us(r.process_cpu_s),
            "ingest_thread": r.per_reading_us(r.ingest_cpu_s),
            "rules_thread": r.per_reading_us(r.rules_cpu_s),
            "engine_ingest": r.per_reading_us(r.engine_cpu_s),
        },
    }


def to_json(
    info: dict[str, Any],
    env: Environment,
    options: Options,
    runs: Mapping[str, RunResult],
    memory: MemoryResult | None,
) -> dict[str, Any]:
    return {
        "machine": info,
        "services": {"flavor": env.flavor, **env.versions},
        "options": asdict(options),
        "runs": {name: _run_json(r) for name, r in runs.items()},
        "cpu_bound_on_off_ratio": cpu_bound_ratio(runs),
        "memory": None
        if memory is None
        else {
            **asdict(memory),
            "growth": memory.growth,
            "per_device": memory.per_device,
            "at_target_size": memory.at_target_size,
        },
        "targets": [asdict(v) for v in verdicts(runs, memory)],
    }


# -- command line -----------------------------------------------------------------------------

SCENARIOS = ("throughput", "latency", "memory")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/rules.py",
        description="Measure the rule engine: ingest throughput with the default rules off and "
        "on, publish → alert transition latency, and the engine's state for 100,000 devices.",
    )
    p.add_argument("--quick", action="store_true", help="a small smoke run (about a minute)")
    p.add_argument(
        "--rules-in",
        choices=("process", "thread"),
        default="process",
        help="run the rule runtime in its own process, as the platform does (default), or "
        "in a thread of the ingest's process (to compare)",
    )
    p.add_argument("--devices", type=int, help="devices in the city (default 10,000; quick 1,000)")
    p.add_argument("--districts", type=int, default=16, help="districts of the city")
    p.add_argument(
        "--messages",
        type=int,
        help=f"messages per throughput run (default: {THROUGHPUT_ROUNDS} per device; quick: one)",
    )
    p.add_argument("--batch-size", type=int, default=20, help="timestamped readings per message")
    p.add_argument(
        "--latency-seconds", type=float, help="measured latency phase (default 15; quick 5)"
    )
    p.add_argument("--warmup-seconds", type=float, default=2.0, help="latency phase not counted")
    p.add_argument(
        "--latency-rate",
        type=float,
        help="readings/s for the latency phase (default: half the rules-on rate)",
    )
    p.add_argument("--probes", type=int, default=20, help="water-level gauges flipping")
    p.add_argument(
        "--probe-interval", type=float, default=0.05, help="seconds between probe readings"
    )
    p.add_argument(
        "--memory-devices",
        type=int,
        help=f"devices of the memory measurement (default {MEMORY_DEVICES:,}; quick 10,000, "
        "scaled)",
    )
    p.add_argument(
        "--window", type=int, default=2000, help="publisher's unacknowledged messages at most"
    )
    p.add_argument("--seed", type=int, default=1, help="city and telemetry seed")
    p.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help="comma-separated, of: " + ", ".join(SCENARIOS),
    )
    p.add_argument("--database-url", help="a PostgreSQL server to use (scratch databases)")
    p.add_argument("--mqtt-url", help="an MQTT broker to use (mqtt://host:port)")
    p.add_argument("--workdir", type=Path, help="where to put the local services' temp dir")
    p.add_argument(
        "--stall-timeout", type=float, default=60.0, help="give up after this long without progress"
    )
    p.add_argument(
        "--quiet-limit",
        type=float,
        default=0.25,
        help="before each phase, wait until other processes use fewer cores than this",
    )
    p.add_argument(
        "--quiet-wait", type=float, default=5.0, help="wait at most this long for quiet (s)"
    )
    p.add_argument("--json", type=Path, help="also write the results to this file")
    p.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        p.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    if "latency" in args.scenarios and "throughput" not in args.scenarios and not args.latency_rate:
        p.error("the latency phase needs the rules-on rate, or --latency-rate")
    if args.devices is None:
        args.devices = 1000 if args.quick else 10_000
    if args.messages is None:
        args.messages = args.devices * (1 if args.quick else THROUGHPUT_ROUNDS)
    if args.latency_seconds is None:
        args.latency_seconds = 5.0 if args.quick else 15.0
    if args.memory_devices is None:
        args.memory_devices = 10_000 if args.quick else MEMORY_DEVICES
    return args


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.memory_child:
        spec = json.loads(args.memory_child)
        print(json.dumps(memory_child(spec["devices"], spec["districts"], spec["seed"])))
        return 0
    signal.signal(signal.SIGTERM, _interrupt)
    err = Console(stderr=True, log_path=False)
    out = Console(width=None if sys.stdout.isatty() else 200)
    logging.basicConfig(
        level=logging.WARNING,
        handlers=[RichHandler(console=err, show_path=False)],
        format="%(message)s",
    )
    options = Options(
        devices=args.devices,
        districts=args.districts,
        messages=args.messages,
        batch_size=args.batch_size,
        latency_seconds=args.latency_seconds,
        warmup_seconds=args.warmup_seconds,
        latency_rate=args.latency_rate,
        probes=args.probes,
        probe_interval=args.probe_interval,
        memory_devices=args.memory_devices,
        window=args.window,
        seed=args.seed,
        stall_timeout=args.stall_timeout,
        quiet_limit=args.quiet_limit,
        quiet_wait=args.quiet_wait,
        quick=args.quick,
        rules_in=args.rules_in,
    )
    info = machine_info()
    env = Environment(args.database_url, args.mqtt_url, args.workdir)
    runs: dict[str, RunResult] = {}
    memory: MemoryResult | None = None
    bench: Bench | None = None
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        refresh_per_second=4,
    )
    failed: str | None = None
    try:
        with progress:
            say = progress.console.log
            if "throughput" in args.scenarios or "latency" in args.scenarios:
                say("starting PostgreSQL and Mosquitto" if not args.database_url else "connecting")
                env.start()
            bench = Bench(env, options, progress, load_profiles())

            def quiet(phase: str) -> None:
                if env.versions:
                    assert bench is not None
                    other = wait_for_quiet(
                        bench.meter, options.quiet_limit, options.quiet_wait, say
                    )
                    say(f"{phase} (other processes: {other:.2f} cores)")
                else:
                    say(phase)

            if "throughput" in args.scenarios:
                for rules_on in (False, True):
                    quiet(f"rules {'on' if rules_on else 'off'}")
                    r = bench.throughput(rules_on)
                    runs[r.name] = r
                    say(f"{r.name}: {r.rate:,.0f} readings/s")
            if "latency" in args.scenarios:
                quiet("latency")
                on_rate = runs["rules_on"].rate if "rules_on" in runs else 0.0
                r = bench.latency(on_rate)
                runs[r.name] = r
                say(f"latency: p99 {r.latency['p99_s'] * 1000:.0f} ms")
            if "memory" in args.scenarios:
                quiet("memory")
                memory = bench.memory()
    except (BenchError, LoadError, ServiceError, MigrationError, KeyboardInterrupt) as exc:
        failed = f"{type(exc).__name__}: {exc}"
    finally:
        env.close()
    if runs or memory is not None:
        render(out, info, env, options, bench, runs, memory)
        if args.json:
            args.json.write_text(
                json.dumps(to_json(info, env, options, runs, memory), indent=2) + "\n"
            )
    if failed:
        err.print(f"[red]benchmark stopped: {failed}[/]")
        return 2
    return 0 if all(v.ok for v in verdicts(runs, memory)) else 1


if __name__ == "__main__":
    sys.exit(main())
