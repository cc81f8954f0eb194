"""The ingest loop: take a batch, decode it, commit it, acknowledge it, hand it on.

Nothing is acknowledged to the broker before it is committed, so a crash at
any point loses nothing: the broker redelivers, and the database stores each
reading once. While the database is down the batch is retried with backoff and
the receiver's bound stops the intake.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TypeVar

import psycopg

from devices.model import DeviceEvent, Quality, Reading
from devices.profile import DeviceProfile
from ingest.decode import DeadLetter, DeadLetterReason, DecodedMessage, MessageDecoder
from ingest.mqtt import BrokerAddress, InboundMessage, MqttReceiver
from ingest.topics import subscription_filters
from ingest.writer import Batch, BatchWriter, SeenDevice, WriteResult

log = logging.getLogger(__name__)

T = TypeVar("T")

SEQ_RESTART_JUMP = 1000
"""A seq this far below the last one means the device restarted its counter."""

BatchSink = Callable[[Sequence[Reading], Sequence[DeviceEvent]], None]
"""Called with each committed batch's readings and events (the shell connects the rule
engine). It runs on the ingest thread: hand the work to another thread and return."""


@dataclass(frozen=True)
class IngestConfig:
    database_url: str
    mqtt_url: str
    topic_root: str = "city"
    districts: tuple[str, ...] = ()
    client_id: str = "cityvitals-ingest"
    batch_size: int = 5000
    flush_interval: float = 0.05
    max_in_flight: int = 20000
    max_payload_bytes: int = 256 * 1024
    dead_letter_keep_bytes: int = 64 * 1024
    future_tolerance: float = 300.0
    registry_refresh: float = 30.0
    reconnect_max_delay: float = 30.0
    stats_interval: float = 5.0
    session_expiry: int = 7 * 86400
    last_seen_every: float = 10.0
    """Write a device's last_seen at most this often (seconds) to spare the database."""


@dataclass
class IngestCounters:
    messages: int = 0
    readings: int = 0
    duplicates: int = 0
    events: int = 0
    dead_letters: int = 0
    out_of_range: int = 0
    provisional: int = 0
    batches: int = 0
    db_retries: int = 0
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)

    def add(self, result: WriteResult) -> None:
        self.readings += result.readings
        self.duplicates += result.duplicates
        self.events += result.events
        self.dead_letters += result.dead_letters
        self.provisional += result.provisional
        self.batches += 1


class IngestService:
    def __init__(
        self,
        config: IngestConfig,
        profiles: Mapping[str, DeviceProfile],
        sink: BatchSink | None = None,
    ) -> None:
        self.config = config
        self.sink = sink
        self.counters = IngestCounters()
        self.instance = f"{socket.gethostname()}:{os.getpid()}:{config.client_id}"
        self.started_at = datetime.now(UTC)
        self._writer = BatchWriter(config.database_url)
        self._decoder = MessageDecoder(
            profiles,
            {},
            root=config.topic_root,
            max_payload_bytes=config.max_payload_bytes,
            dead_letter_keep_bytes=config.dead_letter_keep_bytes,
            future_tolerance=timedelta(seconds=config.future_tolerance),
        )
        self._receiver = MqttReceiver(
            BrokerAddress.from_url(config.mqtt_url),
            config.client_id,
            subscription_filters(config.topic_root, config.districts),
            max_in_flight=config.max_in_flight,
            session_expiry=config.session_expiry,
            reconnect_max_delay=config.reconnect_max_delay,
        )
        self._stop = threading.Event()
        self._last_seq: dict[str, int] = {}
        self._last_seen_written: dict[str, float] = {}
        self._registry_loaded_at = 0.0
        self._stats_written_at = 0.0
        self._rate_mark = (time.monotonic(), 0, 0)
        self.rates = (0.0, 0.0)
        self.last_error: str | None = None
        self.ready = threading.Event()
        """Set once the registry is loaded and the receiver started."""

    @property
    def backlog(self) -> int:
        return self._receiver.backlog

    @property
    def connected(self) -> bool:
        return self._receiver.connected.is_set()

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        """Run until `stop()`; the batch in hand is committed before returning."""
        self._with_db(self._refresh_registry)
        self._receiver.start()
        self.ready.set()
        try:
            while not self._stop.is_set():
                batch = self._receiver.take(
                    self.config.batch_size, self.config.flush_interval, self._stop
                )
                if batch:
                    self._process(batch)
                self._housekeeping()
            # Commit what was received before the stop, so a clean stop leaves little to
            # redeliver; what arrives meanwhile stays unacknowledged for the next session.
            remaining = self._receiver.queued
            while remaining > 0:
                batch = self._receiver.take(min(self.config.batch_size, remaining), 0, self._stop)
                if not batch:
                    break
                self._process(batch)
                remaining -= len(batch)
        except psycopg.OperationalError:
            log.warning(
                "stopped while the database was unreachable: %d message(s) left "
                "unacknowledged; the broker redelivers them to the next session",
                self.backlog,
            )
        finally:
            self._receiver.stop()
            with contextlib.suppress(psycopg.Error):
                self._write_stats(final=True)
            self._writer.close()

    def _process(self, messages: list[InboundMessage]) -> None:
        decoded = [self._decoder.decode(m.topic, m.payload, m.received_at) for m in messages]
        batch, dropped, seqs = self._assemble(decoded)
        try:
            result = self._with_db(lambda: self._writer.write(batch))
            self._last_seq.update(seqs)
        except (psycopg.DataError, psycopg.IntegrityError) as exc:
            log.warning(
                "the database refused part of a batch (%s); writing message by message",
                str(exc).strip().splitlines()[0],
            )
            result = self._write_one_by_one(messages, decoded)
        self._receiver.ack(messages)
        c = self.counters
        c.messages += len(messages)
        c.out_of_range += sum(d.out_of_range for d in decoded)
        c.add(result)
        c.duplicates += dropped
        for letter in batch.dead_letters:
            c.dead_letter_reasons[letter.reason] = c.dead_letter_reasons.get(letter.reason, 0) + 1
        if self.sink is not None and (batch.readings or batch.events):
            try:
                self.sink(batch.readings, batch.events)
            except Exception:  # the rule engine's failure must not stop storage
                log.exception(
                    "batch sink failed for %d readings, %d events",
                    len(batch.readings),
                    len(batch.events),
                )

    def _assemble(self, decoded: list[DecodedMessage]) -> tuple[Batch, int, dict[str, int]]:
        """One batch of everything decoded, the readings dropped as seq duplicates, and the
        devices' new last seq (to remember once the batch is committed)."""
        batch = Batch([], [], [], [], [], [])
        seen: dict[str, tuple[datetime, int | None, int, datetime]] = {}
        seqs: dict[str, int] = {}
        now = time.monotonic()
        dropped = 0
        for d in decoded:
            if d.readings:
                if self._seq_duplicate(d, seqs):
                    dropped += len(d.readings)
                else:
                    batch.readings += d.readings
                    self._track(d, seen, seqs, now)
            if d.events:
                batch.events += d.events
            if d.status is not None:
                batch.statuses.append(d.status)
            if d.dead_letter is not None:
                batch.dead_letters.append(d.dead_letter)
            if d.new_device is not None:
                batch.new_devices.append(d.new_device)
        batch.seen = [SeenDevice(dev, *held) for dev, held in seen.items()]
        return batch, dropped, seqs

    def _seq_duplicate(self, d: DecodedMessage, pending: dict[str, int]) -> bool:
        """A reading without a timestamp of its own is a duplicate when its seq is not new.

        Its ts is the receive time, so a redelivery would otherwise be stored twice. A
        seq far below the last one is a device that restarted its counter, not a duplicate.
        """
        if d.device_id is None or d.first_seq is None:
            return False
        if not all(r.quality & Quality.RECEIVE_TIME for r in d.readings):
            return False
        last = pending.get(d.device_id, self._last_seq.get(d.device_id))
        return last is not None and last - SEQ_RESTART_JUMP < d.first_seq <= last

    def _write_one_by_one(
        self, messages: list[InboundMessage], decoded: list[DecodedMessage]
    ) -> WriteResult:
        """Write each message alone; one the database refuses becomes a dead letter."""
        total = WriteResult()
        for m, d in zip(messages, decoded, strict=True):
            single, _, seqs = self._assemble([d])
            try:
                result = self._with_db(partial(self._writer.write, single))
                self._last_seq.update(seqs)
            except (psycopg.DataError, psycopg.IntegrityError) as exc:
                letter = DeadLetter(
                    m.received_at,
                    m.topic,
                    m.payload[: self.config.dead_letter_keep_bytes],
                    len(m.payload),
                    DeadLetterReason.REJECTED_BY_DATABASE.value,
                    f"{m.topic}: PostgreSQL refused it: {str(exc).strip().splitlines()[0]}",
                    d.device_id,
                )
                single = Batch([], [], [], [letter], [], [])
                result = self._with_db(partial(self._writer.write, single))
            total.readings += result.readings
            total.duplicates += result.duplicates
            total.events += result.events
            total.dead_letters += result.dead_letters
            total.provisional += result.provisional
        return total

    def _track(
        self,
        d: DecodedMessage,
        seen: dict[str, tuple[datetime, int | None, int, datetime]],
        seqs: dict[str, int],
        now: float,
    ) -> None:
        """Count seq gaps and decide whether this device's last_seen is due for a write."""
        device_id = d.device_id
        if device_id is None:
            return
        ts = d.readings[-1].ts
        received = d.received_at or datetime.now(UTC)
        first_seq, last_seq = d.first_seq, d.last_seq
        gaps = 0
        if last_seq is not None:
            previous = seqs.get(device_id, self._last_seq.get(device_id))
            if previous is not None and first_seq is not None and first_seq > previous + 1:
                gaps = first_seq - previous - 1
            if previous is None or last_seq > previous:
                seqs[device_id] = last_seq
        held = seen.get(device_id)
        if held is not None:
            seen[device_id] = (
                max(held[0], ts),
                held[1] if last_seq is None else last_seq,
                held[2] + gaps,
                max(held[3], received),
            )
            return
        # Devices without clocks rely on last_seq to drop redeliveries: always write it.
        due = now - self._last_seen_written.get(device_id, 0.0) >= self.config.last_seen_every
        if gaps or due or d.readings[0].quality & Quality.RECEIVE_TIME:
            self._last_seen_written[device_id] = now
            seen[device_id] = (ts, last_seq, gaps, received)

    def _with_db(self, action: Callable[[], T]) -> T:
        """Run a database action, retrying with backoff while the database is unreachable."""
        delay = 0.2
        while True:
            try:
                result = action()
                if self.last_error:
                    log.info("database reachable again")
                    self.last_error = None
                return result
            except psycopg.OperationalError as exc:
                self._writer.close()
                self.counters.db_retries += 1
                self.last_error = f"database unavailable: {str(exc).strip()[:300]}"
                log.warning(
                    "%s; retrying in %.1fs (backlog %d)", self.last_error, delay, self.backlog
                )
                # Keep waiting even when asked to stop: the batch in hand is not acknowledged,
                # but stopping here would only delay it; a second signal kills the process.
                time.sleep(delay)
                delay = min(delay * 2, self.config.reconnect_max_delay)
                if self._stop.is_set() and delay >= self.config.reconnect_max_delay:
                    raise

    def _refresh_registry(self) -> None:
        self._decoder.replace_registry(self._writer.load_registry())
        if not self._registry_loaded_at:
            self._last_seq.update(self._writer.load_last_seq())
        self._registry_loaded_at = time.monotonic()

    def _housekeeping(self) -> None:
        now = time.monotonic()
        try:
            if now - self._registry_loaded_at >= self.config.registry_refresh:
                self._refresh_registry()
            if now - self._stats_written_at >= self.config.stats_interval:
                self._write_stats()
        except psycopg.OperationalError as exc:
            self._writer.close()
            self.last_error = f"database unavailable: {str(exc).strip()[:300]}"

    def _write_stats(self, final: bool = False) -> None:
        now = time.monotonic()
        mark_t, mark_readings, mark_messages = self._rate_mark
        elapsed = max(now - mark_t, 1e-6)
        c = self.counters
        self.rates = (
            (c.readings - mark_readings) / elapsed,
            (c.messages - mark_messages) / elapsed,
        )
        self._rate_mark = (now, c.readings, c.messages)
        self._stats_written_at = now
        conn = self._writer.conn
        with conn.transaction():
            conn.execute(
                """INSERT INTO ingest_stats AS s (instance, host, pid, started_at, updated_at,
                       connected, messages, readings, duplicates, events, dead_letters,
                       out_of_range, provisional, backlog, readings_per_s, messages_per_s,
                       last_error)
                   VALUES (%s, %s, %s, %s, now(), %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
                   ON CONFLICT (instance) DO UPDATE SET
                       updated_at = now(), connected = EXCLUDED.connected,
                       messages = EXCLUDED.messages, readings = EXCLUDED.readings,
                       duplicates = EXCLUDED.duplicates, events = EXCLUDED.events,
                       dead_letters = EXCLUDED.dead_letters,
                       out_of_range = EXCLUDED.out_of_range,
                       provisional = EXCLUDED.provisional, backlog = EXCLUDED.backlog,
                       readings_per_s = EXCLUDED.readings_per_s,
                       messages_per_s = EXCLUDED.messages_per_s,
                       last_error = EXCLUDED.last_error""",
                (
                    self.instance,
                    socket.gethostname(),
                    os.getpid(),
                    self.started_at,
                    self.connected and not final,
                    c.messages,
                    c.readings,
                    c.duplicates,
                    c.events,
                    c.dead_letters,
                    c.out_of_range,
                    c.provisional,
                    self.backlog,
                    self.rates[0],
                    self.rates[1],
                    self.last_error or self._receiver.last_error,
                ),
            )
