"""The ingest loop: take a batch, decode it, commit it, acknowledge it, hand it on.

Nothing is acknowledged to the broker before it is committed, so a crash at
any point loses nothing: the broker redelivers, and the database stores each
reading once. While the database is down the batch is retried with backoff and
the receiver's bound stops the intake.

Two threads share the work so that decoding overlaps the database's: the
caller's thread takes and decodes batches, a committer thread writes them in
the same order, acknowledges them and hands them to the sink. It alone uses the
database connection.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import logging
import os
import queue
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

_RECEIVE_TIME = int(Quality.RECEIVE_TIME)

BatchSink = Callable[[Sequence[Reading], Sequence[DeviceEvent]], None]
"""Called with each committed batch's readings and events, in commit order (the shell
connects the rule engine). It runs on the ingest's committer thread: hand the work to
another thread and return."""


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
    tune_gc: bool = True
    """At start, freeze what is loaded and collect garbage less often (process-wide)."""


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


_gc_tuned = False


def _tune_gc() -> None:
    """Make the cyclic garbage collector cheaper for a process that mostly ingests (once).

    The ingest allocates a hundred thousand short-lived containers a second; with
    the default thresholds the collector runs every 700 of them, and its full
    passes walk every object of the process (profiles, modules, libraries): about
    a tenth of the ingest's CPU. Objects alive at start are frozen (never scanned
    again) and young collections run less often.
    """
    global _gc_tuned
    if _gc_tuned:
        return
    _gc_tuned = True
    gc.collect()
    gc.freeze()
    young, middle, old = gc.get_threshold()
    gc.set_threshold(max(young, 10_000), middle, old)


@dataclass(slots=True)
class _Decoded:
    """A batch taken and decoded, on its way to the committer."""

    messages: list[InboundMessage]
    decoded: list[DecodedMessage]
    batch: Batch
    dropped: int
    seqs: dict[str, int]


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
        """Each device's last seq in committed batches."""
        self._pending: collections.deque[dict[str, int]] = collections.deque()
        """The new last seqs of batches decoded but not yet committed, oldest first."""
        self._handoff: queue.Queue[_Decoded | None] = queue.Queue(maxsize=1)
        self._failure: BaseException | None = None
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
        """Run until `stop()`; the batches in hand are committed before returning."""
        self._with_db(self._refresh_registry)
        if self.config.tune_gc:
            _tune_gc()
        self._receiver.start()
        committer = threading.Thread(target=self._commit_loop, name="ingest-commit", daemon=True)
        committer.start()
        self.ready.set()
        try:
            while not self._stop.is_set():
                batch = self._receiver.take(
                    self.config.batch_size, self.config.flush_interval, self._stop
                )
                if batch and not self._hand_over(self._prepare(batch)):
                    break
            # Commit what was received before the stop, so a clean stop leaves little to
            # redeliver; what arrives meanwhile stays unacknowledged for the next session.
            remaining = self._receiver.queued
            while remaining > 0 and self._failure is None:
                batch = self._receiver.take(min(self.config.batch_size, remaining), 0, self._stop)
                if not batch or not self._hand_over(self._prepare(batch)):
                    break
                remaining -= len(batch)
        finally:
            self._hand_over(None)
            committer.join()
            self._receiver.stop()
            with contextlib.suppress(psycopg.Error):
                self._write_stats(final=True)
            self._writer.close()
        if isinstance(self._failure, psycopg.OperationalError):
            log.warning(
                "stopped while the database was unreachable: %d message(s) left "
                "unacknowledged; the broker redelivers them to the next session",
                self.backlog,
            )
        elif self._failure is not None:
            raise self._failure

    def _hand_over(self, work: _Decoded | None) -> bool:
        """Queue work for the committer (None: no more); False once the committer failed."""
        while self._failure is None:
            try:
                self._handoff.put(work, timeout=0.25)
                return True
            except queue.Full:
                continue
        return False

    def _commit_loop(self) -> None:
        """The committer thread: write, acknowledge and pass on batches in order."""
        try:
            while True:
                try:
                    work = self._handoff.get(timeout=0.25)
                except queue.Empty:
                    self._housekeeping()
                    continue
                if work is None:
                    return
                self._commit(work)
                self._housekeeping()
        except BaseException as exc:
            self._failure = exc
            self._stop.set()

    def _prepare(self, messages: list[InboundMessage]) -> _Decoded:
        """Decode and assemble a batch (on the caller's thread) for the committer."""
        decoded = [self._decoder.decode(m.topic, m.payload, m.received_at) for m in messages]
        overlay: dict[str, int] = {}
        for seqs in list(self._pending):
            overlay.update(seqs)
        batch, dropped, seqs = self._assemble(decoded, overlay)
        self._pending.append(seqs)
        return _Decoded(messages, decoded, batch, dropped, seqs)

    def _commit(self, work: _Decoded) -> None:
        messages, decoded, batch = work.messages, work.decoded, work.batch
        try:
            result = self._with_db(lambda: self._writer.write(batch))
            self._last_seq.update(work.seqs)
        except (psycopg.DataError, psycopg.IntegrityError) as exc:
            log.warning(
                "the database refused part of a batch (%s); writing message by message",
                str(exc).strip().splitlines()[0],
            )
            result = self._write_one_by_one(messages, decoded)
        # Committed (or settled message by message): its seqs now live in _last_seq.
        self._pending.popleft()
        self._receiver.ack(messages)
        c = self.counters
        c.messages += len(messages)
        c.out_of_range += sum(d.out_of_range for d in decoded)
        c.add(result)
        c.duplicates += work.dropped
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

    def _assemble(
        self, decoded: list[DecodedMessage], uncommitted: Mapping[str, int]
    ) -> tuple[Batch, int, dict[str, int]]:
        """One batch of everything decoded, the readings dropped as seq duplicates, and the
        devices' new last seq (to remember once the batch is committed).

        `uncommitted` holds last seqs of earlier batches not committed yet; they count
        as seen, as they would if those batches had been committed first.
        """
        batch = Batch([], [], [], [], [], [])
        seen: dict[str, tuple[datetime, int | None, int, datetime]] = {}
        seqs: dict[str, int] = dict(uncommitted)
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
        for device in uncommitted:
            if seqs[device] == uncommitted[device]:
                del seqs[device]
        return batch, dropped, seqs

    def _seq_duplicate(self, d: DecodedMessage, pending: dict[str, int]) -> bool:
        """A reading without a timestamp of its own is a duplicate when its seq is not new.

        Its ts is the receive time, so a redelivery would otherwise be stored twice. A
        seq far below the last one is a device that restarted its counter, not a duplicate.
        """
        if d.device_id is None or d.first_seq is None:
            return False
        for r in d.readings:
            if not r.quality & _RECEIVE_TIME:
                return False
        last = pending.get(d.device_id, self._last_seq.get(d.device_id))
        return last is not None and last - SEQ_RESTART_JUMP < d.first_seq <= last

    def _write_one_by_one(
        self, messages: list[InboundMessage], decoded: list[DecodedMessage]
    ) -> WriteResult:
        """Write each message alone; one the database refuses becomes a dead letter."""
        total = WriteResult()
        for m, d in zip(messages, decoded, strict=True):
            single, _, seqs = self._assemble([d], {})
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
        if gaps or due or d.readings[0].quality & _RECEIVE_TIME:
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
