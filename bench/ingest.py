# ruff: noqa: E402 - the path fix below must run before the project's packages are imported
"""Ingest benchmark: MQTT → IngestService → PostgreSQL, beside a bare paho subscriber.

    .venv/bin/python bench/ingest.py [--json results.json] [--help]

A publisher process (bench/loadgen.py) sends rain-gauge telemetry at QoS 1,
MQTT 5, to a broker; in this process either a bare paho subscriber or the
platform's `IngestService` (default `IngestConfig`) consumes it. Scenarios:

- `bare`: a paho subscriber that only counts; its rate is N / (first → last message).
- `single`: N one-reading messages through the ingest; committed readings/s is
  N / (first publish → last commit), and the table must then hold exactly N rows.
- `batch20`: the same with `{"readings": [20 × {ts, seq, values}]}` payloads.
- `latency`: publishing paced at half the `single` rate; publish→commit latency
  per reading is (sink call after commit − the reading's `ts`, set at publish).

PostgreSQL and Mosquitto are started in a temporary directory with the
platform's normal settings (durable commits), unless URLs are given; each
scenario gets a fresh database and a fresh topic root, and nothing is left
behind. Memory is the peak RSS of this process (which runs the ingest) during
each scenario; CPU is split between this process, the publisher, the broker,
PostgreSQL and everything else on the machine. Before each scenario the
benchmark waits a little for other processes to calm down, and it flags the
figures they disturbed anyway; `--repeat` keeps the best of several runs.
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
# Run as a script, this file's folder heads sys.path and this module would shadow
# the `ingest` package it measures.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _ROOT / "bench"]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import argparse
import contextlib
import importlib.metadata
import json
import logging
import math
import os
import platform
import re
import resource
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from psycopg.conninfo import make_conninfo
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bench.loadgen import LoadError, PublisherProcess, PublishPlan, PublishResult
from cityvitals.db import MigrationError, upgrade
from cityvitals.services import LocalMosquitto, LocalPostgres, ServiceError
from devices.model import DeviceEvent, Reading
from devices.profile import ProfileSet, load_profiles
from ingest.mqtt import BrokerAddress, make_client
from ingest.service import IngestConfig, IngestService

RATIO_TARGET = 0.6
"""single: committed readings/s ≥ this × the bare subscriber's messages/s."""
BATCH_TARGET = 100_000.0
"""batch20: committed readings/s."""
P99_TARGET = 0.5
"""latency: p99 publish→commit, seconds, at half the single rate."""
MEMORY_TARGET = 500 * 1024 * 1024
"""Peak RSS of the process running the ingest, bytes."""

log = logging.getLogger("bench.ingest")


class BenchError(RuntimeError):
    """A scenario could not be measured (stalled, lost messages, a service failed)."""


# -- measuring the machine -------------------------------------------------------------


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def _proc_cpu(pid: int, with_reaped_children: bool = False) -> float:
    """CPU seconds of a process (fields 14-17 of /proc/PID/stat)."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if with_reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / _CLOCK_TICKS


def _children(parent: int) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and int(fields[1]) == parent:
                found.append(int(entry.name))
    return found


def _machine_busy() -> float:
    """CPU seconds the whole machine has been busy since boot (all cores, steal excluded)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = (values + [0] * 7)[:7]
    return (user + nice + system + irq + softirq) / _CLOCK_TICKS


@dataclass
class CpuSnapshot:
    at: float
    bench: float
    postgres: float | None
    broker: float | None
    machine_busy: float


class CpuMeter:
    """CPU seconds of this process, the local PostgreSQL and Mosquitto, and the machine."""

    def __init__(self, postgres_pid: int | None, broker_pid: int | None) -> None:
        self.postgres_pid = postgres_pid
        self.broker_pid = broker_pid

    def snapshot(self) -> CpuSnapshot:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        postgres = None
        if self.postgres_pid is not None:
            postgres = _proc_cpu(self.postgres_pid, with_reaped_children=True) + sum(
                _proc_cpu(child) for child in _children(self.postgres_pid)
            )
        broker = None if self.broker_pid is None else _proc_cpu(self.broker_pid)
        return CpuSnapshot(
            at=time.monotonic(),
            bench=usage.ru_utime + usage.ru_stime,
            postgres=postgres,
            broker=broker,
            machine_busy=_machine_busy(),
        )


def wait_for_quiet(
    meter: CpuMeter, limit: float, max_wait: float, say: Callable[[str], None]
) -> float:
    """Wait up to `max_wait` s until other processes use less than `limit` cores; their load."""
    deadline = time.monotonic() + max_wait
    told = False
    while True:
        before = meter.snapshot()
        time.sleep(1.0)
        other = cores_used(before, meter.snapshot(), 0.0)["other"] or 0.0
        if other < limit or time.monotonic() >= deadline:
            return other
        if not told:
            say(f"other processes use {other:.2f} cores; waiting up to {max_wait:.0f}s for quiet")
            told = True


def cores_used(
    before: CpuSnapshot, after: CpuSnapshot, publisher_cpu: float
) -> dict[str, float | None]:
    """Average cores each part used between two snapshots; `other` is the rest of the machine."""
    wall = max(after.at - before.at, 1e-9)

    def delta(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else (b - a) / wall

    parts = {
        "bench": delta(before.bench, after.bench),
        "publisher": publisher_cpu / wall,
        "postgres": delta(before.postgres, after.postgres),
        "broker": delta(before.broker, after.broker),
    }
    machine = (after.machine_busy - before.machine_busy) / wall
    parts["other"] = max(0.0, machine - sum(v for v in parts.values() if v is not None))
    parts["machine"] = machine
    return parts


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM (Linux ≥ 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss() -> int:
    """Peak resident set size of this process in bytes (since the last reset)."""
    with contextlib.suppress(OSError):
        match = re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text())
        if match:
            return int(match.group(1)) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        match = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = match.group(1).strip() if match else platform.processor() or "unknown"
    ram = 0
    with contextlib.suppress(OSError):
        match = re.search(r"MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text())
        ram = int(match.group(1)) * 1024 if match else 0
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "ram_bytes": ram,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average": os.getloadavg(),
        "paho_mqtt": importlib.metadata.version("paho-mqtt"),
        "psycopg": f"{psycopg.__version__} ({psycopg.pq.__impl__})",
        "orjson": importlib.metadata.version("orjson"),
    }


# -- the services -------------------------------------------------------------------------


def _discard_session(mqtt_url: str, client_id: str) -> None:
    """End a persistent session the benchmark left on the broker (it would keep queuing)."""
    address = BrokerAddress.from_url(mqtt_url)
    client, props = make_client(address, client_id, session_expiry=0)
    with contextlib.suppress(OSError):
        client.connect(address.host, address.port, keepalive=10, clean_start=True, properties=props)
        client.loop_start()
        deadline = time.monotonic() + 5
        while not client.is_connected() and time.monotonic() < deadline:
            time.sleep(0.02)
        client.disconnect()
        client.loop_stop()


def broker_version(mqtt_url: str) -> str:
    """The broker's `$SYS/broker/version` (Mosquitto publishes it retained)."""
    address = BrokerAddress.from_url(mqtt_url)
    client, props = make_client(address, f"cvbench-version-{uuid.uuid4().hex[:8]}")
    got: list[str] = []
    done = threading.Event()

    def on_connect(c: mqtt.Client, u: Any, f: Any, reason: Any, p: Any) -> None:
        c.subscribe("$SYS/broker/version", qos=0)

    def on_message(c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        got.append(msg.payload.decode(errors="replace"))
        done.set()

    client.on_connect = on_connect
    client.on_message = on_message
    try:
        client.connect(address.host, address.port, keepalive=10, properties=props)
        client.loop_start()
        done.wait(3)
        client.disconnect()
        client.loop_stop()
    except OSError:
        pass
    return got[0] if got else "unknown (no $SYS/broker/version)"


class Environment:
    """PostgreSQL and an MQTT broker for the run: local ones in a temp dir, or given by URL."""

    def __init__(
        self, database_url: str | None, mqtt_url: str | None, workdir: Path | None
    ) -> None:
        self.run_id = uuid.uuid4().hex[:8]
        self._given_db = database_url
        self._given_mqtt = mqtt_url
        self._workdir = workdir
        self._tmp: Path | None = None
        self.postgres: LocalPostgres | None = None
        self.broker: LocalMosquitto | None = None
        self.admin_url = database_url or ""
        self.mqtt_url = mqtt_url or ""
        self.databases: list[str] = []
        self.sessions: list[str] = []
        self.flavor = "?"
        self.versions: dict[str, str] = {}

    def start(self) -> None:
        if not self._given_db or not self._given_mqtt:
            self._tmp = Path(tempfile.mkdtemp(prefix="cvbench-", dir=self._workdir))
        if self._given_db is None:
            assert self._tmp is not None
            self.postgres = LocalPostgres(self._tmp / "postgres", database="postgres")
            self.postgres.start()
            self.admin_url = self.postgres.url("postgres")
        if self._given_mqtt is None:
            assert self._tmp is not None
            self.broker = LocalMosquitto(self._tmp / "mosquitto")
            self.broker.start()
            self.mqtt_url = self.broker.url
        template = self._create_database("tpl")
        self.flavor = upgrade(self._url(template)).flavor
        self._template = template
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            for name in (
                "server_version",
                "fsync",
                "synchronous_commit",
                "wal_sync_method",
                "full_page_writes",
                "shared_buffers",
            ):
                row = conn.execute(f"SHOW {name}").fetchone()
                self.versions[f"postgres_{name}"] = str(row[0]) if row else "?"
        self.versions["broker"] = broker_version(self.mqtt_url)

    def _url(self, database: str) -> str:
        if self.postgres is not None:
            return self.postgres.url(database)
        return make_conninfo(self.admin_url, dbname=database)

    def _database_name(self, scenario: str) -> str:
        return f"cvbench_{self.run_id}_{scenario}"

    def _create_database(self, scenario: str, template: str | None = None) -> str:
        name = self._database_name(scenario)
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            clause = f" TEMPLATE {template}" if template else ""
            conn.execute(f"CREATE DATABASE {name}{clause}")
        self.databases.append(name)
        return name

    def fresh_database(self, scenario: str) -> str:
        """A new migrated database for one scenario, after a checkpoint of the previous ones."""
        name = self._create_database(scenario, self._template)
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            try:
                conn.execute("CHECKPOINT")
            except psycopg.Error as exc:
                log.info("CHECKPOINT not allowed (%s); scenarios may share checkpoint work", exc)
        return self._url(name)

    def count(self, url: str, sql: str) -> int:
        with psycopg.connect(url) as conn:
            row = conn.execute(sql).fetchone()
        return int(row[0]) if row else 0

    def drop_database(self, scenario: str) -> None:
        """Drop a measured scenario's database: autovacuum of its millions of fresh rows
        would otherwise load the server during the next scenario."""
        name = self._database_name(scenario)
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        if name in self.databases:
            self.databases.remove(name)

    def cpu_meter(self) -> CpuMeter:
        postgres_pid = broker_pid = None
        if self.postgres is not None:
            with contextlib.suppress(OSError, ValueError, IndexError):
                pidfile = self.postgres.datadir / "postmaster.pid"
                postgres_pid = int(pidfile.read_text().split()[0])
        if self.broker is not None:
            config = str(self.broker.config_file).encode()
            for entry in os.scandir("/proc"):
                if entry.name.isdigit():
                    with contextlib.suppress(OSError):
                        if config in Path(entry.path, "cmdline").read_bytes():
                            broker_pid = int(entry.name)
        return CpuMeter(postgres_pid, broker_pid)

    def close(self) -> None:
        for client_id in self.sessions:
            with contextlib.suppress(Exception):
                _discard_session(self.mqtt_url, client_id)
        if self.postgres is None and self.databases:
            with psycopg.connect(self.admin_url, autocommit=True) as conn:
                for name in reversed(self.databases):
                    with contextlib.suppress(psycopg.Error):
                        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        try:
            if self.broker is not None:
                self.broker.stop()
        finally:
            try:
                if self.postgres is not None:
                    self.postgres.stop()
            finally:
                if self._tmp is not None:
                    shutil.rmtree(self._tmp, ignore_errors=True)


# -- consumers --------------------------------------------------------------------------------


class BareSubscriber:
    """A paho subscriber (QoS 1, MQTT 5, persistent session) that only counts messages."""

    def __init__(self, mqtt_url: str, client_id: str, topic_filter: str, expected: int) -> None:
        self.address = BrokerAddress.from_url(mqtt_url)
        self.client, self._props = make_client(self.address, client_id, session_expiry=600)
        self.topic_filter = topic_filter
        self.expected = expected
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.subscribed = threading.Event()
        self.done = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def _on_connect(self, c: mqtt.Client, u: Any, flags: Any, reason: Any, p: Any) -> None:
        c.subscribe(self.topic_filter, qos=1)

    def _on_subscribe(self, c: mqtt.Client, u: Any, mid: int, reasons: Any, p: Any) -> None:
        self.subscribed.set()

    def _on_message(self, c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        self.count += 1
        if self.count == 1:
            self.first = time.time()
        if self.count >= self.expected:
            self.last = time.time()
            self.done.set()

    def start(self) -> None:
        self.client.connect(
            self.address.host,
            self.address.port,
            keepalive=30,
            clean_start=False,
            properties=self._props,
        )
        self.client.loop_start()

    def stop(self) -> None:
        props = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 0  # end the session with the connection
        self.client.disconnect(properties=props)
        self.client.loop_stop()


@dataclass
class CommitRecorder:
    """The ingest's reading sink: counts committed readings and when they were committed."""

    expected: int
    latency: bool = False
    readings: int = 0
    batches: int = 0
    first_commit: float = 0.0
    last_commit: float = 0.0
    latencies: list[float] = field(default_factory=list)
    stamps: list[float] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)

    def __call__(self, readings: Sequence[Reading], events: Sequence[DeviceEvent] = ()) -> None:
        now = time.time()
        if not self.readings:
            self.first_commit = now
        self.last_commit = now
        self.readings += len(readings)
        self.batches += 1
        if self.latency:
            stamps = [r.ts.timestamp() for r in readings]
            self.stamps += stamps
            self.latencies += [now - ts for ts in stamps]
        if self.readings >= self.expected:
            self.done.set()


# -- scenarios --------------------------------------------------------------------------------


@dataclass
class ScenarioResult:
    name: str
    run: int
    messages: int
    readings: int
    rate: float
    """Readings per second: received (bare) or committed (ingest)."""
    span_s: float
    publisher_rate: float
    """Messages per second the broker acknowledged to the publisher."""
    cores: dict[str, float | None]
    cpu_window_s: float
    """Wall time over which `cores` were measured (publishing start → last reading)."""
    peak_rss: int
    stored: int | None = None
    duplicates: int = 0
    dead_letters: int = 0
    batches: int = 0
    target_rate: float | None = None
    latency: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def cpu_per_reading(self) -> float:
        """CPU seconds this process (the consumer) spent per reading."""
        return (self.cores.get("bench") or 0.0) * self.cpu_window_s / max(self.readings, 1)

    @property
    def exactly_once(self) -> bool | None:
        if self.stored is None:
            return None
        return self.stored == self.readings and self.duplicates == 0 and self.dead_letters == 0


@dataclass
class Options:
    messages: int
    batch_messages: int
    batch_size: int
    devices: int
    latency_seconds: float
    warmup_seconds: float
    latency_rate: float | None
    window: int
    publisher: str
    stall_timeout: float
    quiet_limit: float
    quiet_wait: float
    repeat: int


class Bench:
    def __init__(
        self, env: Environment, options: Options, progress: Progress, profiles: ProfileSet
    ) -> None:
        self.env = env
        self.options = options
        self.progress = progress
        self.profiles = profiles
        self.meter = env.cpu_meter()

    def _plan(
        self, scenario: str, messages: int, per_message: int, rate: float | None
    ) -> PublishPlan:
        root = f"cvbench{self.env.run_id}{scenario}"
        plan = PublishPlan(
            mqtt_url=self.env.mqtt_url,
            client_id=f"cvbench-{self.env.run_id}-{scenario}-pub",
            root=root,
            messages=messages,
            readings_per_message=per_message,
            devices=self.options.devices,
            rate=rate,
            window=self.options.window,
            client=self.options.publisher,
        )
        return plan

    def _wait(
        self,
        what: str,
        total: int,
        counted: Callable[[], int],
        done: threading.Event,
        publisher: PublisherProcess,
    ) -> PublishResult:
        """Follow a scenario to its end; the publisher's figures once it has finished."""
        task = self.progress.add_task(what, total=total)
        result: PublishResult | None = None
        last, last_change = -1, time.monotonic()
        try:
            while True:
                finished = done.wait(0.25)
                if result is None:
                    result = publisher.poll_result()
                n = counted()
                self.progress.update(task, completed=n)
                if finished and result is not None:
                    return result
                if n != last:
                    last, last_change = n, time.monotonic()
                elif time.monotonic() - last_change > self.options.stall_timeout:
                    raise BenchError(
                        f"{what}: stalled at {n} of {total} for {self.options.stall_timeout:.0f}s"
                    )
        finally:
            self.progress.remove_task(task)

    def bare(self, run: int = 1) -> ScenarioResult:
        n = self.options.messages
        plan = self._plan(f"bare{run}", n, 1, None)
        client_id = f"cvbench-{self.env.run_id}-bare{run}"
        self.env.sessions.append(client_id)
        subscriber = BareSubscriber(self.env.mqtt_url, client_id, f"{plan.root}/#", n)
        publisher = PublisherProcess(plan)
        try:
            subscriber.start()
            if not subscriber.subscribed.wait(30):
                raise BenchError("bare: the subscriber did not get its SUBACK within 30s")
            reset_peak_rss()
            before = self.meter.snapshot()
            publisher.go()
            pub = self._wait(
                "bare paho subscriber", n, lambda: subscriber.count, subscriber.done, publisher
            )
            after = self.meter.snapshot()
            rss = peak_rss()
        finally:
            publisher.close()
            subscriber.stop()
        span = subscriber.last - subscriber.first
        return ScenarioResult(
            name="bare",
            run=run,
            messages=n,
            readings=n,
            rate=n / span,
            span_s=span,
            publisher_rate=pub.rate,
            cores=cores_used(before, after, pub.cpu_seconds),
            cpu_window_s=after.at - before.at,
            peak_rss=rss,
            extra={"rate_from_publish_start": n / (subscriber.last - pub.started)},
        )

    def ingest(
        self,
        scenario: str,
        messages: int,
        per_message: int,
        rate: float | None = None,
        run: int = 1,
    ) -> ScenarioResult:
        readings = messages * per_message
        url = self.env.fresh_database(f"{scenario}{run}")
        plan = self._plan(f"{scenario}{run}", messages, per_message, rate)
        config = IngestConfig(
            database_url=url,
            mqtt_url=self.env.mqtt_url,
            topic_root=plan.root,
            client_id=f"cvbench-{self.env.run_id}-{scenario}{run}",
        )
        self.env.sessions.append(config.client_id)
        recorder = CommitRecorder(readings, latency=rate is not None)
        service = IngestService(config, self.profiles, sink=recorder)
        thread = threading.Thread(target=service.run, name=f"ingest-{scenario}", daemon=True)
        publisher = PublisherProcess(plan)
        try:
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
            reset_peak_rss()
            before = self.meter.snapshot()
            publisher.go()
            label = f"{scenario}: readings committed"
            pub = self._wait(label, readings, lambda: recorder.readings, recorder.done, publisher)
            after = self.meter.snapshot()
            rss = peak_rss()
        finally:
            publisher.close()
            service.stop()
            thread.join(120)
            if thread.is_alive():
                raise BenchError(f"{scenario}: the ingest did not stop within 120s")
        stored = self.env.count(url, "SELECT count(*) FROM readings")
        span = recorder.last_commit - pub.started
        c = service.counters
        result = ScenarioResult(
            name=scenario,
            run=run,
            messages=messages,
            readings=readings,
            rate=readings / span,
            span_s=span,
            publisher_rate=pub.rate,
            cores=cores_used(before, after, pub.cpu_seconds),
            cpu_window_s=after.at - before.at,
            peak_rss=rss,
            stored=stored,
            duplicates=c.duplicates,
            dead_letters=c.dead_letters,
            batches=recorder.batches,
            target_rate=rate,
            extra={
                "db_retries": c.db_retries,
                "out_of_range": c.out_of_range,
                "readings_per_batch": readings / max(recorder.batches, 1),
                "rate_first_to_last_commit": readings
                / max(recorder.last_commit - recorder.first_commit, 1e-9),
            },
        )
        if recorder.latency:
            since = pub.started + self.options.warmup_seconds
            sample = sorted(
                lat
                for ts, lat in zip(recorder.stamps, recorder.latencies, strict=True)
                if ts >= since
            )
            result.latency = {
                "samples": len(sample),
                "p50_s": _percentile(sample, 0.50),
                "p90_s": _percentile(sample, 0.90),
                "p99_s": _percentile(sample, 0.99),
                "max_s": sample[-1] if sample else math.nan,
                "achieved_msg_rate": messages / max(pub.published - pub.started, 1e-9),
            }
        return result


def _percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted values."""
    if not values:
        return math.nan
    return values[max(0, math.ceil(q * len(values)) - 1)]


# -- report --------------------------------------------------------------------------------


def _mb(n: int) -> str:
    return f"{n / 1024 / 1024:.0f} MB"


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
    """The measured figure in plain units (ratio, readings/s, seconds, bytes, wrong runs)."""


def verdicts(
    results: dict[str, ScenarioResult], runs: dict[str, list[ScenarioResult]]
) -> list[Verdict]:
    rows: list[Verdict] = []
    bare, single = results.get("bare"), results.get("single")
    if bare and single:
        ratio = single.rate / bare.rate
        rows.append(
            Verdict(
                "single committed / bare received",
                f"{ratio:.2f}  ({single.rate:,.0f} / {bare.rate:,.0f})",
                f"≥ {RATIO_TARGET}",
                ratio >= RATIO_TARGET,
                ratio,
            )
        )
    if batch := results.get("batch20"):
        rows.append(
            Verdict(
                "batch20 committed readings/s",
                f"{batch.rate:,.0f}",
                f"≥ {BATCH_TARGET:,.0f}",
                batch.rate >= BATCH_TARGET,
                batch.rate,
            )
        )
    if lat := results.get("latency"):
        p99 = lat.latency["p99_s"]
        rows.append(
            Verdict(
                f"p99 publish→commit at {lat.target_rate or 0:,.0f} msg/s",
                f"{p99 * 1000:.0f} ms",
                f"≤ {P99_TARGET * 1000:.0f} ms",
                p99 <= P99_TARGET,
                p99,
            )
        )
    ingest_runs = [r for name, rs in runs.items() if name != "bare" for r in rs]
    if ingest_runs:
        peak = max(r.peak_rss for r in ingest_runs)
        rows.append(
            Verdict(
                "peak RSS of the ingest process",
                _mb(peak),
                f"< {_mb(MEMORY_TARGET)}",
                peak < MEMORY_TARGET,
                peak,
            )
        )
        wrong = [r for r in ingest_runs if not r.exactly_once]
        stored = sum(r.stored or 0 for r in ingest_runs)
        published = sum(r.readings for r in ingest_runs)
        measured = f"{stored:,} of {published:,} in {len(ingest_runs)} run(s)"
        if wrong:
            measured += "; wrong: " + ", ".join(
                f"{r.name} #{r.run} {r.stored or 0:,}/{r.readings:,} "
                f"(duplicates {r.duplicates}, dead letters {r.dead_letters})"
                for r in wrong
            )
        rows.append(
            Verdict(
                "every reading stored exactly once",
                measured,
                "= published",
                not wrong,
                len(wrong),
            )
        )
    return rows


def render(
    console: Console,
    info: dict[str, Any],
    env: Environment,
    options: Options,
    results: dict[str, ScenarioResult],
    runs: dict[str, list[ScenarioResult]],
) -> None:
    machine = Table(title="CityVitals ingest benchmark", show_header=False, title_justify="left")
    machine.add_column(style="bold")
    machine.add_column()
    load = ", ".join(f"{v:.2f}" for v in info["load_average"])
    machine.add_row("CPU", f"{info['cpu']} · {info['cores']} cores ({info['cores_usable']} usable)")
    machine.add_row("RAM", f"{info['ram_bytes'] / 1024**3:.1f} GiB · kernel {info['kernel']}")
    machine.add_row("load average at start", load)
    machine.add_row("Python", info["python"])
    machine.add_row(
        "PostgreSQL",
        f"{env.versions.get('postgres_server_version')} ({env.flavor}) · "
        f"fsync={env.versions.get('postgres_fsync')} "
        f"synchronous_commit={env.versions.get('postgres_synchronous_commit')} "
        f"wal_sync_method={env.versions.get('postgres_wal_sync_method')} "
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
    machine.add_row(
        "load",
        f"{options.publisher} publisher process, QoS 1, MQTT 5, window {options.window} · "
        f"{options.devices} devices · IngestConfig defaults",
    )
    console.print(machine)

    table = Table(
        title="Scenarios",
        title_justify="left",
        caption="cores: average CPU of this process (the consumer), the publisher, PostgreSQL, "
        "the broker and the rest of the machine · µs/rdg: this process's CPU per reading",
        caption_justify="left",
    )
    table.add_column("scenario", no_wrap=True)
    for name in (
        "messages",
        "readings",
        "readings/s",
        "span s",
        "pub msg/s",
        "µs/rdg",
        "cores: this",
        "pub",
        "pg",
        "broker",
        "other",
        "peak RSS",
        "stored",
    ):
        table.add_column(name, justify="right", no_wrap=True)
    labels = {
        "bare": "bare paho",
        "single": "ingest 1/msg",
        "batch20": "ingest 20/msg",
        "latency": "ingest half rate",
    }
    for r in results.values():
        table.add_row(
            labels.get(r.name, r.name),
            f"{r.messages:,}",
            f"{r.readings:,}",
            f"{r.rate:,.0f}",
            f"{r.span_s:.1f}",
            f"{r.publisher_rate:,.0f}",
            f"{r.cpu_per_reading * 1e6:.1f}",
            _cores(r.cores, "bench"),
            _cores(r.cores, "publisher"),
            _cores(r.cores, "postgres"),
            _cores(r.cores, "broker"),
            _cores(r.cores, "other"),
            _mb(r.peak_rss),
            "–" if r.stored is None else f"{r.stored:,}",
        )
    console.print(table)
    disturbed = [
        f"{r.name} {r.cores['other']:.2f}"
        for r in results.values()
        if (r.cores.get("other") or 0.0) > options.quiet_limit
    ]
    repeated = [
        f"{name} " + " / ".join(f"{r.rate:,.0f}" for r in rs)
        for name, rs in runs.items()
        if len(rs) > 1
    ]
    if repeated:
        console.print("best of the runs (readings/s): " + "; ".join(repeated))
    if disturbed:
        console.print(
            "[yellow]note:[/] other processes on the machine used cores during "
            + ", ".join(disturbed)
            + ": those figures are lower than on a quiet machine"
            + (
                ""
                if env.postgres and env.broker
                else " (services given by URL count as other processes)"
            )
        )

    if lat := results.get("latency"):
        s = lat.latency
        console.print(
            f"latency: {s['samples']:,.0f} readings after a {options.warmup_seconds:.0f}s warm-up, "
            f"published at {s['achieved_msg_rate']:,.0f} msg/s (target {lat.target_rate:,.0f}): "
            f"p50 {s['p50_s'] * 1000:.0f} ms · p90 {s['p90_s'] * 1000:.0f} ms · "
            f"p99 {s['p99_s'] * 1000:.0f} ms · max {s['max_s'] * 1000:.0f} ms"
        )

    targets = Table(title="Targets", title_justify="left")
    targets.add_column("target")
    targets.add_column("measured", justify="right")
    targets.add_column("limit", justify="right")
    targets.add_column("result")
    for v in verdicts(results, runs):
        targets.add_row(v.target, v.measured, v.limit, "[green]PASS[/]" if v.ok else "[red]FAIL[/]")
    console.print(targets)


def _as_json(r: ScenarioResult) -> dict[str, Any]:
    return {
        **asdict(r),
        "exactly_once": r.exactly_once,
        "cpu_per_reading_s": r.cpu_per_reading,
    }


def to_json(
    info: dict[str, Any],
    env: Environment,
    options: Options,
    results: dict[str, ScenarioResult],
    runs: dict[str, list[ScenarioResult]],
) -> dict[str, Any]:
    return {
        "machine": info,
        "services": {"flavor": env.flavor, **env.versions},
        "options": asdict(options),
        "scenarios": {name: _as_json(r) for name, r in results.items()},
        "runs": {name: [_as_json(r) for r in rs] for name, rs in runs.items()},
        "targets": [asdict(v) for v in verdicts(results, runs)],
    }


# -- command line -----------------------------------------------------------------------------

SCENARIOS = ("bare", "single", "batch20", "latency")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/ingest.py",
        description="Measure the MQTT → PostgreSQL ingest against a bare paho subscriber.",
    )
    p.add_argument(
        "--messages", type=int, default=200_000, help="single-reading messages (bare, single)"
    )
    p.add_argument("--batch-messages", type=int, default=20_000, help="batch messages (batch20)")
    p.add_argument("--batch-size", type=int, default=20, help="readings per batch message")
    p.add_argument("--devices", type=int, default=1000, help="simulated devices")
    p.add_argument("--latency-seconds", type=float, default=10.0, help="measured latency phase")
    p.add_argument("--warmup-seconds", type=float, default=1.0, help="latency phase not counted")
    p.add_argument(
        "--latency-rate",
        type=float,
        default=None,
        help="messages/s for the latency phase (default: half the single rate)",
    )
    p.add_argument(
        "--window", type=int, default=2000, help="publisher's unacknowledged messages at most"
    )
    p.add_argument(
        "--publisher", choices=("raw", "paho"), default="raw", help="load generator client"
    )
    p.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help="comma-separated, of: " + ", ".join(SCENARIOS),
    )
    p.add_argument(
        "--database-url",
        help="a PostgreSQL server to use (scratch databases are created and dropped)",
    )
    p.add_argument("--mqtt-url", help="an MQTT broker to use (mqtt://host:port)")
    p.add_argument("--workdir", type=Path, help="where to put the local services' temp dir")
    p.add_argument(
        "--stall-timeout", type=float, default=60.0, help="give up after this long without progress"
    )
    p.add_argument(
        "--quiet-limit",
        type=float,
        default=0.25,
        help="before each scenario, wait until other processes use fewer cores than this",
    )
    p.add_argument(
        "--quiet-wait", type=float, default=15.0, help="wait at most this long for quiet (s)"
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run bare, single and batch20 this many times, interleaved, and keep the best",
    )
    p.add_argument("--json", type=Path, help="also write the results to this file")
    args = p.parse_args(argv)
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        p.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    if "latency" in args.scenarios and "single" not in args.scenarios and not args.latency_rate:
        p.error("the latency scenario needs the single scenario's rate, or --latency-rate")
    return args


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    err = Console(stderr=True, log_path=False)
    out = Console(width=None if sys.stdout.isatty() else 160)
    logging.basicConfig(
        level=logging.WARNING,
        handlers=[RichHandler(console=err, show_path=False)],
        format="%(message)s",
    )
    options = Options(
        messages=args.messages,
        batch_messages=args.batch_messages,
        batch_size=args.batch_size,
        devices=args.devices,
        latency_seconds=args.latency_seconds,
        warmup_seconds=args.warmup_seconds,
        latency_rate=args.latency_rate,
        window=args.window,
        publisher=args.publisher,
        stall_timeout=args.stall_timeout,
        quiet_limit=args.quiet_limit,
        quiet_wait=args.quiet_wait,
        repeat=args.repeat,
    )
    info = machine_info()
    env = Environment(args.database_url, args.mqtt_url, args.workdir)
    results: dict[str, ScenarioResult] = {}
    runs: dict[str, list[ScenarioResult]] = {}
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
            progress.console.log(
                "starting PostgreSQL and Mosquitto" if not args.database_url else "connecting"
            )
            env.start()
            bench = Bench(env, options, progress, load_profiles())

            def run(scenario: str, number: int) -> None:
                other = wait_for_quiet(
                    bench.meter, options.quiet_limit, options.quiet_wait, progress.console.log
                )
                label = f"{scenario} run {number}" if options.repeat > 1 else scenario
                progress.console.log(f"{label} (other processes: {other:.2f} cores)")
                if scenario == "bare":
                    result = bench.bare(number)
                elif scenario == "single":
                    result = bench.ingest("single", options.messages, 1, run=number)
                elif scenario == "batch20":
                    result = bench.ingest(
                        "batch20", options.batch_messages, options.batch_size, run=number
                    )
                else:
                    rate = options.latency_rate or results["single"].rate / 2
                    n = int(rate * (options.latency_seconds + options.warmup_seconds))
                    result = bench.ingest("latency", n, 1, rate=rate)
                progress.console.log(f"{label}: {result.rate:,.0f} readings/s")
                runs.setdefault(scenario, []).append(result)
                results[scenario] = max(runs[scenario], key=lambda r: r.rate)

            for number in range(1, options.repeat + 1):
                for scenario in args.scenarios:
                    if scenario != "latency":
                        run(scenario, number)
            if "latency" in args.scenarios:
                run("latency", 1)
    except (BenchError, LoadError, ServiceError, MigrationError, KeyboardInterrupt) as exc:
        failed = f"{type(exc).__name__}: {exc}"
    finally:
        env.close()
    if results:
        render(out, info, env, options, results, runs)
        if args.json:
            document = to_json(info, env, options, results, runs)
            args.json.write_text(json.dumps(document, indent=2) + "\n")
    if failed:
        err.print(f"[red]benchmark stopped: {failed}[/]")
        return 2
    return 0 if all(v.ok for v in verdicts(results, runs)) else 1


if __name__ == "__main__":
    sys.exit(main())
