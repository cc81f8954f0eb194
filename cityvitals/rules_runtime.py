"""The rule engine at run time: fed by the ingest, persisted, ticking, publishing vitals.

The ingest hands each committed batch to `RuleRuntime.submit` (its sink) and
goes on; a thread of the runtime evaluates the batch chunk by chunk, stores the
alert transitions and the changed rule state in one go, and recomputes the
city's vital signs when something changed and at a fixed interval. At start it
restores pending and firing state from `rule_state` (so nothing is raised twice
or forgotten) and re-warms windows from the stored readings.

`RuleProcess` runs a `RuleRuntime` in a process of its own (the platform's
choice): the engine then neither competes with the ingest for its GIL nor
stalls it with its garbage collections. The ingest's sink encodes each chunk
as compact columns and pipes it over; transitions and counters come back."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import gc
import itertools
import logging
import multiprocessing
import multiprocessing.process
import pickle
import queue
import threading
import time
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import compress, repeat
from multiprocessing.connection import Connection
from operator import itemgetter, ne, or_
from typing import Any

import paho.mqtt.client as mqtt
import psycopg

from alerts.model import AlertTransition
from alerts.store import record_transitions
from devices.model import DeviceEvent, Reading
from devices.profile import ProfileSet
from ingest.mqtt import BrokerAddress, make_client
from rules.config import RuleSet
from rules.engine import Engine, epoch_seconds, from_epoch
from rules.store import (
    DeviceRow,
    device_infos,
    device_rows,
    last_seen,
    load_states,
    recent_readings,
    save_health,
    save_states,
    save_vitals,
)
from rules.vitals import METRICS as VITAL_METRICS
from rules.vitals import VitalSign, changed, iter_vitals, to_payload

log = logging.getLogger(__name__)

VITALS_STEP = 0.005
"""Seconds of vital-sign recomputation between looks at the queue of readings."""

Run = tuple[str, float, list[str], list[float]]
"""Readings of one device at one time, as `Engine.ingest_runs` takes them."""


@dataclass(frozen=True)
class Runs:
    """A chunk decoded into runs (`decode_runs`), with the number of readings it stands
    for (those left out of the handover included)."""

    runs: list[Run]
    readings: int


Batch = tuple[Sequence[Reading] | Runs, Sequence[DeviceEvent]]


@dataclass
class RuntimeStats:
    """What the runtime has evaluated so far, and what it cost."""

    readings: int = 0
    events: int = 0
    chunks: int = 0
    largest_chunk: int = 0
    last_evaluated: float = 0.0
    """When the last chunk's evaluation ended (epoch seconds; 0: none yet)."""
    engine_cpu: float = 0.0
    """CPU seconds in `Engine.ingest` and `Engine.events`."""
    cpu: float = 0.0
    """CPU seconds of the engine's process (a `RuleProcess` only; 0 in a thread)."""

    def add(self, readings: int, events: int, at: float, cpu: float) -> None:
        self.readings += readings
        self.events += events
        self.chunks += 1
        self.largest_chunk = max(self.largest_chunk, readings)
        self.last_evaluated = at
        self.engine_cpu += cpu


def _chunks(readings: Sequence[Reading], size: int) -> list[Sequence[Reading]]:
    """`readings` cut into runs of about `size`, never inside a device instant.

    The ingest hands over the readings of one device instant next to each other; a cut
    moves forward until the device or the time changes, so the engine sees every
    instant whole, as it would in one batch.
    """
    n = len(readings)
    if n <= size:
        return [list(readings)]
    out: list[Sequence[Reading]] = []
    start = 0
    while n - start > size:
        cut = start + size
        previous = readings[cut - 1]
        while cut < n and (
            readings[cut].device_id == previous.device_id and readings[cut].ts == previous.ts
        ):
            cut += 1
        out.append(readings[start:cut])
        start = cut
    if start < n:
        out.append(readings[start:])
    return out


class _Backlog:
    """Readings and events handed over and not yet evaluated, bounded.

    A chunk waits while it would take the count past `limit` (one always fits an
    empty backlog, however large), which holds the ingest back and leaves the rest
    with the broker instead of in memory.
    """

    def __init__(self, limit: int, stop: threading.Event) -> None:
        self.limit = limit
        self.count = 0
        self._stop = stop
        self._room = threading.Condition()

    def admit(self, size: int, *, count_when_stopping: bool = True) -> bool:
        """Wait for room for `size`, or for the stop; count it. False when stopping (then
        counted only if `count_when_stopping`)."""
        with self._room:
            while self.count > 0 and self.count + size > self.limit and not self._stop.is_set():
                self._room.wait(0.5)
            stopping = self._stop.is_set()
            if not stopping or count_when_stopping:
                self.count += size
            return not stopping

    def release(self, n: int) -> None:
        """`n` were evaluated: room for as many more."""
        with self._room:
            self.count -= n
            self._room.notify_all()

    def wake(self) -> None:
        """Let waiters see the stop."""
        with self._room:
            self._room.notify_all()


class RuleRuntime:
    def __init__(
        self,
        rules: RuleSet,
        profiles: ProfileSet,
        database_url: str,
        mqtt_url: str | None,
        topic_root: str = "city",
        tick_interval: float = 5.0,
        vitals_interval: float = 60.0,
        registry_refresh: float = 30.0,
        timezone: str = "Asia/Shanghai",
        max_backlog: int = 1_000_000,
        chunk: int = 10_000,
    ) -> None:
        self.engine = Engine(rules, timezone)
        self.profiles = profiles
        self.database_url = database_url
        self.mqtt_url = mqtt_url
        self.topic_root = topic_root
        self.tick_interval = tick_interval
        self.vitals_interval = vitals_interval
        self.registry_refresh = registry_refresh
        self.transitions = 0
        self.last_error: str | None = None
        self.on_transitions: list[Callable[[list[AlertTransition]], None]] = []
        """Called with every stored list of transitions (tests, the alerts services)."""
        self.on_evaluated: list[Callable[[list[AlertTransition], float, float], None]] = []
        """Called with each chunk's transitions and when its evaluation started and ended
        (epoch seconds), before they are stored (benchmarks)."""
        self.stats = RuntimeStats()
        self.max_backlog = max_backlog
        """Readings and events handed over and not yet evaluated, at most (the bound).

        It holds two or three of the ingest's largest batches (the broker's window of
        unacknowledged messages, 2,000 of up to 180 readings in the benchmark), so the
        ingest commits its next batch while this one is evaluated; a bound below one
        batch made committing and evaluating take turns (bench/rules.py: 33 % of the
        ingest's throughput lost with a bound of 200,000; 9-34 %, median 23 %, in six
        runs with this one)."""
        self.chunk = chunk
        """Readings evaluated (and their transitions stored) together, about."""
        self._queue: queue.Queue[Batch | None] = queue.Queue()
        self._stop = threading.Event()
        self._backlog = _Backlog(max_backlog, self._stop)
        self._thread: threading.Thread | None = None
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None
        self._vitals: dict[tuple[str, str], VitalSign] = {}
        self._registry: dict[Any, DeviceRow] = {}
        """The registry's rows as the engine last took them, by device_id."""
        self._clock_wall: tuple[float, float] | None = None
        self._mqtt: mqtt.Client | None = None
        self.ready = threading.Event()

    # -- the ingest's side ------------------------------------------------------------

    def submit(self, readings: Sequence[Reading], events: Sequence[DeviceEvent]) -> None:
        """The ingest's sink: queue the committed batch, in chunks of whole device instants.

        Blocks while a chunk would take more than `max_backlog` readings (and events) to
        wait for evaluation, which holds the ingest back and leaves the rest with the
        broker instead of in memory. The ingest's batches can be larger than the bound;
        chunks also let the transitions of a batch's first readings leave before its
        last are evaluated. The events go with the last chunk.
        """
        chunks = _chunks(readings, min(self.chunk, self.max_backlog))
        for i, chunk in enumerate(chunks):
            last = i == len(chunks) - 1
            self._backlog.admit(len(chunk) + (len(events) if last else 0))
            self._queue.put((chunk, list(events) if last else []))

    def submit_runs(self, runs: Runs, events: Sequence[DeviceEvent]) -> None:
        """As `submit`, for a chunk already decoded into runs (the rule process's input)."""
        self._backlog.admit(runs.readings + len(events))
        self._queue.put((runs, list(events)))

    def _done(self, n: int) -> None:
        """`n` readings and events of the queue are evaluated: room for as many more."""
        self._backlog.release(n)

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="rules", daemon=True)
        self._thread.start()

    @property
    def backlog(self) -> int:
        """Readings and events handed over by the ingest and not yet evaluated."""
        return self._backlog.count

    def stop(self, timeout: float = 30) -> None:
        self._stop.set()
        self._backlog.wake()
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def conn(self) -> psycopg.Connection[tuple[object, ...]]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(
                self.database_url, autocommit=True, application_name="cityvitals-rules"
            )
        return self._conn

    def _connect_mqtt(self) -> None:
        if self.mqtt_url is None:
            return
        address = BrokerAddress.from_url(self.mqtt_url)
        client, props = make_client(address, f"cityvitals-vitals-{int(time.time())}")
        try:
            client.connect(address.host, address.port, keepalive=30, properties=props)
        except OSError as exc:
            log.warning("vital signs will not be published on MQTT: %s", exc)
            return
        client.loop_start()
        self._mqtt = client

    def restore(self) -> None:
        """Registry, saved alert state, last-seen times and warm windows, before any input."""
        conn = self.conn
        with conn.transaction():
            self._refresh_registry(everything=True)
            self.engine.restore(load_states(conn))
            for device_id, at in last_seen(conn):
                self.engine.seen(device_id, at)
            self.engine.warm(recent_readings(conn, self.engine))
        log.info(
            "rule engine: %d rules, %d devices, %d alerts restored",
            len(self.engine.rules.rules),
            len(self.engine.devices),
            len(self.engine.alerts),
        )

    def _refresh_registry(self, everything: bool = False) -> None:
        """Give the engine the registry's devices: all of them, or those that changed.

        Rebuilding every device's state takes a tenth of a second per 10,000 devices,
        which would hold up evaluation (and alerts) at every refresh.
        """
        rows = device_rows(self.conn)
        known = {} if everything else self._registry
        fresh = [row for row in rows if known.get(row[0]) != row]
        if fresh:
            self.engine.set_devices(device_infos(fresh, self.profiles))
        self._registry = {row[0]: row for row in rows}

    def _run(self) -> None:
        delay = 0.5
        while not self._stop.is_set():
            try:
                self.restore()
                break
            except psycopg.OperationalError as exc:
                self.last_error = f"database unavailable: {exc}"
                time.sleep(delay)
                delay = min(delay * 2, 30)
        self._connect_mqtt()
        self.ready.set()
        next_tick = next_vitals = next_registry = time.monotonic()
        dirty, last_vitals = False, 0.0
        vitals: Iterator[None] | None = None
        """A recomputation of the vital signs under way, a few signs at a time."""
        while True:
            try:
                if vitals is None:
                    item = self._queue.get(timeout=max(0.05, next_tick - time.monotonic()))
                else:
                    item = self._queue.get_nowait()
            except queue.Empty:
                item = ()  # type: ignore[assignment]
            if item is None:
                break
            try:
                out: list[AlertTransition] = []
                if item:
                    readings, events = item
                    started, cpu = time.time(), time.thread_time()
                    if isinstance(readings, Runs):
                        out += self.engine.ingest_runs(readings.runs)
                        count = readings.readings
                    else:
                        out += self.engine.ingest(readings)
                        count = len(readings)
                    out += self.engine.events(events)
                    finished = time.time()
                    self.stats.add(count, len(events), finished, time.thread_time() - cpu)
                    for evaluated in self.on_evaluated:
                        evaluated(out, started, finished)
                    self._done(count + len(events))
                    if self.engine.clock is not None:
                        self._clock_wall = (self.engine.clock, time.monotonic())
                now = time.monotonic()
                if now >= next_tick:
                    out += self.engine.tick(self._now())
                    next_tick = now + self.tick_interval
                if out:
                    self._store(out)
                # Recomputing vitals walks every device: on change, at most every 2 s,
                # a few milliseconds at a time between chunks, so no alert waits for it.
                dirty = dirty or bool(out)
                if vitals is None and (now >= next_vitals or (dirty and now - last_vitals >= 2.0)):
                    forced = now >= next_vitals
                    vitals = self._vitals_in_steps(force=forced)
                    dirty, last_vitals = False, now
                    if forced:
                        next_vitals = now + self.vitals_interval
                if vitals is not None:
                    budget = time.monotonic() + VITALS_STEP
                    for _ in vitals:
                        if time.monotonic() >= budget:
                            break  # evaluate what came meanwhile, then go on
                    else:
                        vitals = None
                if now >= next_registry:
                    self._refresh_registry()
                    save_health(self.conn, self.engine.health)
                    next_registry = now + self.registry_refresh
            except psycopg.Error as exc:
                # Alerts of this batch are in the engine's state; they are stored with the
                # next batch that succeeds (rule_state is rewritten from the engine).
                self.last_error = f"rule runtime: {exc}"
                log.warning("%s", self.last_error)
                if self._conn is not None:
                    self._conn.close()
                time.sleep(1)
        if self._mqtt is not None:
            self._mqtt.disconnect()
            self._mqtt.loop_stop()
        if self._conn is not None:
            self._conn.close()

    def _now(self) -> datetime:
        """Engine time: the newest reading's time, advanced by the wall clock since then.

        Simulated and replayed history keeps its own time, so silence and `for`
        timers are measured in the data's time, not today's.
        """
        if self._clock_wall is None:
            return datetime.now(UTC)
        clock, wall = self._clock_wall
        return from_epoch(clock) + timedelta(seconds=time.monotonic() - wall)

    def _store(self, out: list[AlertTransition]) -> None:
        conn = self.conn
        record_transitions(conn, out)
        save_states(conn, self.engine, [t.fingerprint for t in out])
        self.transitions += len(out)
        for callback in self.on_transitions:
            callback(out)

    def _vitals_in_steps(self, force: bool) -> Iterator[None]:
        """Recompute the vital signs, pausing after each; then store and publish those
        that changed (all of them when `force`)."""
        signs = []
        for sign in iter_vitals(self.engine, self._now()):
            signs.append(sign)
            yield
        fresh = signs if force else changed(self._vitals, signs)
        if not fresh:
            return
        save_vitals(self.conn, fresh)
        self._vitals.update({(s.scope, s.domain): s for s in signs})
        if self._mqtt is not None:
            for scope in sorted({s.scope for s in fresh}):
                payload = to_payload([s for s in signs if s.scope == scope])
                self._mqtt.publish(f"{self.topic_root}/vitals/{scope}", payload, qos=1, retain=True)


# -- the runtime in a process of its own ----------------------------------------------------------


def encode_batch(
    readings: Sequence[Reading],
    events: Sequence[DeviceEvent],
    metrics: frozenset[str] | None = None,
) -> bytes:
    """A chunk as compact columns: distinct times, devices and metrics once, then an index
    per reading into each, and the values and quality bits as machine arrays.

    With `metrics`, only the readings of those metrics go, and the first reading of
    every device instant (so the engine still hears that the device spoke then): the
    rest would change nothing the rule process computes (`Engine.metrics_read`).

    Column by column at C speed (no Python code per reading): the ingest's process
    pays about 0.2 µs a reading to hand it over.
    """
    given = len(readings)
    ts, devices, names, values, quality = (
        list(map(itemgetter(field), readings)) for field in range(5)
    )
    if metrics is not None and readings:
        # An instant starts where the time or the device changes (the ingest hands the
        # readings of one device instant over next to each other).
        starts = itertools.chain(
            (True,), map(or_, map(ne, ts[1:], ts[:-1]), map(ne, devices[1:], devices[:-1]))
        )
        keep = list(map(or_, map(metrics.__contains__, names), starts))
        ts, devices, names, values, quality = (
            list(compress(column, keep)) for column in (ts, devices, names, values, quality)
        )
    columns: list[tuple[list[Any], bytes]] = []
    for column in (ts, devices, names):
        distinct = list(dict.fromkeys(column))
        index = {key: i for i, key in enumerate(distinct)}
        columns.append((distinct, array("I", map(index.__getitem__, column)).tobytes()))
    packed: list[Any] | bytes = values
    if set(map(type, values)) <= {float}:
        packed = array("d", values).tobytes()  # else: ints stay ints, as handed over
    return pickle.dumps((columns, packed, quality, list(events), given), pickle.HIGHEST_PROTOCOL)


def decode_batch(data: bytes) -> tuple[list[Reading], list[DeviceEvent]]:
    """`encode_batch`'s readings (equal, field for field) and events."""
    columns, values, quality, events, _ = pickle.loads(data)
    decoded = []
    for distinct, raw in columns:
        index = array("I")
        index.frombytes(raw)
        decoded.append(map(distinct.__getitem__, index))
    if isinstance(values, bytes):
        floats = array("d")
        floats.frombytes(values)
        values = floats
    ts, devices, metrics = decoded
    # tuple.__new__ is what Reading(...) does, without its Python-level __new__.
    rows = zip(ts, devices, metrics, values, quality, strict=True)
    return list(map(tuple.__new__, repeat(Reading), rows)), events


def decode_runs(data: bytes) -> tuple[list[Run], list[DeviceEvent], int]:
    """`encode_batch`'s readings as runs of one device and time (in their order), its
    events, and how many readings it was given (before leaving any out): what the rule
    process evaluates, and counts as evaluated."""
    columns, values, _, events, given = pickle.loads(data)
    (times, t_raw), (devices, d_raw), (names, m_raw) = columns
    t, d, m = array("I"), array("I"), array("I")
    t.frombytes(t_raw)
    d.frombytes(d_raw)
    m.frombytes(m_raw)
    n = len(t)
    if isinstance(values, bytes):
        floats = array("d")
        floats.frombytes(values)
        values = floats.tolist()
    seconds = [epoch_seconds(x) for x in times]
    metrics = list(map(names.__getitem__, m))
    # A run ends where the time or the device changes (compared at C speed).
    changes = map(or_, map(ne, t[1:], t[:-1]), map(ne, d[1:], d[:-1]))
    cuts = [0, *compress(range(1, n), changes), n] if n else []
    runs = [
        (devices[d[a]], seconds[t[a]], metrics[a:b], values[a:b])
        for a, b in itertools.pairwise(cuts)
    ]
    return runs, events, given


_STOP = b""


class RuleProcess:
    """A `RuleRuntime` in a process of its own, so it has a core and a GIL to itself.

    The ingest's sink is `submit`, as with `RuleRuntime`: each committed batch is cut
    into chunks of whole device instants, encoded (`encode_batch`) and written to a
    pipe. The child, forked at `start` from this process with the runtime (and its
    engine) as built here, decodes each chunk and hands it to its runtime, which
    restores state, evaluates, stores transitions, ticks, refreshes the registry and
    publishes vital signs exactly as in a thread; it reports every evaluated chunk
    and every stored list of transitions back, and this side calls `on_evaluated`
    and `on_transitions` with them and keeps `stats` current. The backlog bound holds
    across the pipe: `submit` blocks while too much is handed over and not yet
    evaluated. `stop` lets the child evaluate and store everything handed over
    before it ends.
    """

    def __init__(self, runtime: RuleRuntime) -> None:
        self.runtime = runtime
        """The runtime the child runs (not started here); set up its engine before `start`."""
        self.on_transitions: list[Callable[[list[AlertTransition]], None]] = []
        self.on_evaluated: list[Callable[[list[AlertTransition], float, float], None]] = []
        self.stats = RuntimeStats()
        self.transitions = 0
        self.last_error: str | None = None
        self.rule_errors: dict[str, str] = {}
        """Rules that failed to evaluate in the child: name → errors and the last one."""
        self.restored: frozenset[str] = frozenset()
        """Fingerprints of the alerts the child restored at start."""
        self.ready = threading.Event()
        self.stopped = threading.Event()
        self._stop = threading.Event()
        self._backlog = _Backlog(runtime.max_backlog, self._stop)
        self._send_lock = threading.Lock()
        self._unevaluated: collections.deque[tuple[bytes, int]] = collections.deque()
        """Chunks handed to the child and not reported evaluated, oldest first: a child
        that dies is replaced and they are handed to the new one."""
        self.restarts = 0
        """Times the child died and was replaced."""
        self.last_restart: str | None = None
        """Why and when the child was last replaced (`last_error` is the live child's)."""
        self._process: multiprocessing.process.BaseProcess | None = None
        self._to_child: Connection | None = None
        self._from_child: Connection | None = None
        self._reader: threading.Thread | None = None
        self.metrics: frozenset[str] | None = None
        """The metrics handed over (set at `start` from the engine and the vital signs);
        of the others, only the first reading of each device instant goes."""

    @property
    def engine(self) -> Engine:
        """The engine as built in this process (the child's own copy runs)."""
        return self.runtime.engine

    @engine.setter
    def engine(self, engine: Engine) -> None:
        self.runtime.engine = engine

    @property
    def max_backlog(self) -> int:
        return self.runtime.max_backlog

    @property
    def backlog(self) -> int:
        """Readings and events handed over and not yet evaluated."""
        return self._backlog.count

    def submit(self, readings: Sequence[Reading], events: Sequence[DeviceEvent]) -> None:
        """The ingest's sink, as `RuleRuntime.submit`."""
        chunks = _chunks(readings, min(self.runtime.chunk, self.max_backlog))
        for i, chunk in enumerate(chunks):
            last = i == len(chunks) - 1
            size = len(chunk) + (len(events) if last else 0)
            data = encode_batch(chunk, events if last else (), self.metrics)
            if not self._backlog.admit(size, count_when_stopping=False):
                log.warning("rule process stopping: %d readings not handed over", size)
                return
            assert self._to_child is not None
            with self._send_lock:
                self._unevaluated.append((data, size))
                # A dead child's pipe refuses: the chunk waits in _unevaluated for its
                # replacement (see _read).
                with contextlib.suppress(OSError):
                    self._to_child.send_bytes(data)

    def start(self) -> None:
        self.metrics = self.engine.metrics_read() | VITAL_METRICS
        self._spawn()
        self._reader = threading.Thread(target=self._read, name="rules-reports", daemon=True)
        self._reader.start()

    def _spawn(self) -> None:
        # Forked: the child starts with this process's rules, profiles and engine, which
        # could not all be pickled (compiled conditions are closures).
        context = multiprocessing.get_context("fork")
        to_child_r, to_child_w = context.Pipe(duplex=False)
        from_child_r, from_child_w = context.Pipe(duplex=False)
        self._process = context.Process(
            target=_child_main,
            args=(self.runtime, to_child_r, from_child_w, to_child_w),
            name="cityvitals-rules",
            daemon=True,
        )
        self._process.start()
        to_child_r.close()
        from_child_w.close()
        self._to_child, self._from_child = to_child_w, from_child_r

    def _replace_child(self, delay: float) -> None:
        """The child died: start another (it restores state from the database) and hand
        it what the dead one had not evaluated, in order."""
        process = self._process
        code = None if process is None else process.exitcode
        self.restarts += 1
        self.last_restart = self.last_error = (
            f"{datetime.now(UTC):%Y-%m-%d %H:%M:%S}Z: the rule process died (exit code "
            f"{code}); restarted ({self.restarts} time(s)), {len(self._unevaluated)} "
            "chunk(s) handed over again"
        )
        log.error("%s", self.last_error)
        if process is not None:
            process.join(5)
        if self._stop.wait(delay):
            return
        # Under the lock, so that nothing submitted meanwhile overtakes them. The writes
        # wait for the new child to restore state and read (submit waits meanwhile), and
        # its reports wait in their pipe until this thread reads again.
        with self._send_lock:
            old = self._to_child
            self._spawn()
            if old is not None:
                old.close()
            to_child = self._to_child
            assert to_child is not None
            for data, _ in self._unevaluated:
                try:
                    to_child.send_bytes(data)
                except OSError:
                    return  # died again: the next round hands them over

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def stop(self, timeout: float = 30) -> None:
        """Let the child evaluate and store what it was handed, then end it."""
        self._stop.set()
        self._backlog.wake()
        if self._to_child is not None:
            with self._send_lock, contextlib.suppress(OSError):
                self._to_child.send_bytes(_STOP)
        if self._process is not None:
            self._process.join(timeout)
            if self._process.is_alive():
                log.warning("rule process did not stop within %.0fs: terminated", timeout)
                self._process.terminate()
                self._process.join(5)
        if self._reader is not None:
            self._reader.join(5)
        if self._to_child is not None:
            self._to_child.close()

    def _read(self) -> None:
        delay = 0.0
        while True:
            inbox = self._from_child
            assert inbox is not None
            try:
                kind, *body = inbox.recv()
            except (EOFError, OSError):
                if self._stop.is_set():
                    break
                inbox.close()
                # Back off when children keep dying (a bug, or the machine out of memory).
                self._replace_child(delay)
                delay = min(max(delay * 2, 0.5), 30.0)
                continue
            if kind == "evaluated":
                out, started, finished, n, self.stats, self.last_error = body
                delay = 0.0
                with self._send_lock:
                    left = n
                    while left > 0 and self._unevaluated:
                        left -= self._unevaluated.popleft()[1]
                for evaluated in self.on_evaluated:
                    evaluated(out, started, finished)
                self._backlog.release(n)
            elif kind == "stored":
                (out,) = body
                self.transitions += len(out)
                for callback in self.on_transitions:
                    callback(out)
            elif kind == "ready":
                self.restored, self.stats = body
                self.ready.set()
            elif kind == "status":
                self.last_error, self.rule_errors, self.stats = body
            elif kind == "stopped":
                self.last_error, self.rule_errors, self.stats = body
                break
        self.stopped.set()
        self._stop.set()
        self._backlog.wake()


def _child_main(
    runtime: RuleRuntime, inbox: Connection, outbox: Connection, parent_end: Connection
) -> None:
    """The rule process: the runtime in its thread, fed from `inbox`, reporting to `outbox`."""
    # The fork copied the parent's end of the inbox: without closing it, the inbox would
    # never see EOF when the parent dies, and this process would outlive it.
    parent_end.close()
    # A lock a parent's thread held at the fork stays held here forever: a rich console
    # (with a live progress display) would hang the first log line. Plain stderr instead.
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    plain = logging.StreamHandler()
    plain.setFormatter(
        logging.Formatter("%(asctime)s rules[%(process)d] %(levelname)s %(message)s")
    )
    root.addHandler(plain)
    lock = threading.Lock()

    def send(*message: Any) -> None:
        with lock:
            outbox.send(message)

    def rule_errors() -> dict[str, str]:
        return {
            name: f"{h.errors} error(s), last: {h.last_error}"
            for name, h in runtime.engine.health.items()
            if h.errors
        }

    def evaluated(out: list[AlertTransition], started: float, finished: float) -> None:
        stats = dataclasses.replace(runtime.stats, cpu=time.process_time())
        n = stats.readings + stats.events - evaluated_before[0]
        evaluated_before[0] = stats.readings + stats.events
        send("evaluated", out, started, finished, n, stats, runtime.last_error)

    evaluated_before = [0]
    runtime.on_evaluated.append(evaluated)
    runtime.on_transitions.append(lambda out: send("stored", out))
    runtime.start()
    while not runtime.ready.wait(0.5):
        send("status", runtime.last_error, {}, runtime.stats)
    # As the ingest does (ingest.service): the engine allocates a short-lived container
    # or two per reading; the restored and warmed state is frozen (never scanned again)
    # and young collections run less often.
    gc.collect()
    gc.freeze()
    young, middle, old = gc.get_threshold()
    gc.set_threshold(max(young, 10_000), middle, old)
    send(
        "ready",
        frozenset(runtime.engine.alerts),
        dataclasses.replace(runtime.stats, cpu=time.process_time()),
    )
    try:
        while True:
            try:
                data = inbox.recv_bytes()
            except EOFError:
                break  # the parent is gone: evaluate what was handed over, then end
            if data == _STOP:
                break
            runs, events, n = decode_runs(data)
            runtime.submit_runs(Runs(runs, n), events)
    finally:
        runtime.stop()
        stats = dataclasses.replace(runtime.stats, cpu=time.process_time())
        with contextlib.suppress(OSError):  # the parent may be gone
            send("stopped", runtime.last_error, rule_errors(), stats)
        outbox.close()
