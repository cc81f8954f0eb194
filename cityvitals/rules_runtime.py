"""The rule engine at run time: fed by the ingest, persisted, ticking, publishing vitals.

The ingest hands each committed batch to `RuleRuntime.submit` (its sink) and
goes on; a thread of the runtime evaluates the batch, stores the alert
transitions and the changed rule state in one go, and recomputes the city's
vital signs when something changed and at a fixed interval. At start it
restores pending and firing state from `rule_state` (so nothing is raised
twice or forgotten) and re-warms windows from the stored readings.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import paho.mqtt.client as mqtt
import psycopg

from alerts.model import AlertTransition
from alerts.store import record_transitions
from devices.model import DeviceEvent, Reading
from devices.profile import ProfileSet
from ingest.mqtt import BrokerAddress, make_client
from rules.config import RuleSet
from rules.engine import Engine, from_epoch
from rules.store import (
    last_seen,
    load_devices,
    load_states,
    recent_readings,
    save_health,
    save_states,
    save_vitals,
)
from rules.vitals import VitalSign, changed, compute_vitals, to_payload

log = logging.getLogger(__name__)

Batch = tuple[Sequence[Reading], Sequence[DeviceEvent]]


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
        max_backlog: int = 200_000,
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
        self.max_backlog = max_backlog
        self._backlog = 0
        self._room = threading.Condition()
        self._queue: queue.Queue[Batch | None] = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None
        self._vitals: dict[tuple[str, str], VitalSign] = {}
        self._clock_wall: tuple[float, float] | None = None
        self._mqtt: mqtt.Client | None = None
        self.ready = threading.Event()

    # -- the ingest's side ------------------------------------------------------------

    def submit(self, readings: Sequence[Reading], events: Sequence[DeviceEvent]) -> None:
        """The ingest's sink: queue the committed batch.

        Blocks while more than `max_backlog` readings wait for evaluation, which holds
        the ingest back and leaves the rest with the broker instead of in memory.
        """
        with self._room:
            while self._backlog >= self.max_backlog and not self._stop.is_set():
                self._room.wait(0.5)
            self._backlog += len(readings) + len(events)
        self._queue.put((list(readings), list(events)))

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="rules", daemon=True)
        self._thread.start()

    @property
    def backlog(self) -> int:
        """Readings and events handed over by the ingest and not yet evaluated."""
        return self._backlog

    def stop(self, timeout: float = 30) -> None:
        self._stop.set()
        with self._room:
            self._room.notify_all()
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
            self.engine.set_devices(load_devices(conn, self.profiles))
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
        while True:
            try:
                item = self._queue.get(timeout=max(0.05, next_tick - time.monotonic()))
            except queue.Empty:
                item = ()  # type: ignore[assignment]
            if item is None:
                break
            try:
                out: list[AlertTransition] = []
                if item:
                    readings, events = item
                    out += self.engine.ingest(readings)
                    out += self.engine.events(events)
                    with self._room:
                        self._backlog -= len(readings) + len(events)
                        self._room.notify_all()
                    if self.engine.clock is not None:
                        self._clock_wall = (self.engine.clock, time.monotonic())
                now = time.monotonic()
                if now >= next_tick:
                    out += self.engine.tick(self._now())
                    next_tick = now + self.tick_interval
                if out:
                    self._store(out)
                # Recomputing vitals walks every device: on change, at most every 2 s.
                dirty = dirty or bool(out)
                if now >= next_vitals or (dirty and now - last_vitals >= 2.0):
                    forced = now >= next_vitals
                    self._publish_vitals(force=forced)
                    dirty, last_vitals = False, now
                    if forced:
                        next_vitals = now + self.vitals_interval
                if now >= next_registry:
                    self.engine.set_devices(load_devices(self.conn, self.profiles))
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

    def _publish_vitals(self, force: bool) -> None:
        signs = compute_vitals(self.engine, self._now())
        fresh = signs if force else changed(self._vitals, signs)
        if not fresh:
            return
        save_vitals(self.conn, fresh)
        self._vitals.update({(s.scope, s.domain): s for s in signs})
        if self._mqtt is not None:
            for scope in sorted({s.scope for s in fresh}):
                payload = to_payload([s for s in signs if s.scope == scope])
                self._mqtt.publish(f"{self.topic_root}/vitals/{scope}", payload, qos=1, retain=True)
