"""MQTT adapter of the ingest: a receiver whose acknowledgements wait for the database.

The receiver subscribes at QoS 1 with a persistent session (MQTT 5, clean
start off) and acknowledges a message only after the batch holding it is
committed, so the broker keeps every message the platform has not stored.
Messages received but not acknowledged are bounded by `max_in_flight`: it is
the Receive Maximum the broker must respect, and at the bound the network
thread stops reading, so the broker holds the rest.

The receiver speaks the wire protocol itself (`ingest.mqttwire`); paho serves
the platform's other, low-rate clients through `make_client`.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ingest.mqttwire import (
    DISCONNECT,
    DISCONNECT_PACKET,
    PINGREQ_PACKET,
    PINGRESP,
    PUBACK,
    RETAIN_SEND_IF_NEW_SUBSCRIPTION,
    SUBACK,
    BrokerRefusedError,
    ConnectionLostError,
    ControlPacket,
    InboundMessage,
    ProtocolError,
    WireConnection,
    WireError,
    decode_suback,
    describe_disconnect,
    encode_pubacks,
    encode_subscribe,
    reason_name,
)

__all__ = [
    "BrokerAddress",
    "InboundMessage",
    "MqttConfigError",
    "MqttReceiver",
    "make_client",
    "redact",
]

log = logging.getLogger(__name__)


class MqttConfigError(ValueError):
    """The MQTT URL or options cannot be used."""


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    tls: bool = False

    @classmethod
    def from_url(cls, url: str) -> BrokerAddress:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise MqttConfigError(
                f"MQTT URL {url!r}: scheme must be mqtt:// or mqtts:// (CITYVITALS_MQTT_URL)"
            )
        tls = parts.scheme in ("mqtts", "ssl")
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError:
            raise MqttConfigError(f"MQTT URL {url!r}: the port is not a number") from None
        return cls(
            host=parts.hostname or "localhost",
            port=port,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            tls=tls,
        )


def redact(url: str) -> str:
    """The URL with any password replaced, for logs and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def make_client(
    address: BrokerAddress,
    client_id: str,
    *,
    manual_ack: bool = False,
    session_expiry: int = 0,
    receive_maximum: int = 65535,
) -> tuple[mqtt.Client, Properties]:
    """A paho MQTT 5 client for `address`, and the CONNECT properties to use with it."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5,
        manual_ack=manual_ack,
    )
    if address.username:
        client.username_pw_set(address.username, address.password)
    if address.tls:
        client.tls_set(cert_reqs=ssl.CERT_REQUIRED)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = session_expiry
    props.ReceiveMaximum = receive_maximum
    return client, props


class MqttReceiver:
    """Receives messages into a bounded buffer and acknowledges them on request.

    One network thread owns the connection (`ingest.mqttwire`): it connects
    with clean start off, subscribes, parses what arrives and writes what the
    consumer asks for; it reconnects with backoff (0.2 s doubling to
    `reconnect_max_delay`). The consumer takes messages with `take()` and,
    once they are committed, hands them back to `ack()`: their PUBACKs go out
    in receipt order, in one write, and only on the connection they came on.
    """

    def __init__(
        self,
        address: BrokerAddress,
        client_id: str,
        filters: list[str],
        max_in_flight: int,
        session_expiry: int,
        reconnect_max_delay: float,
        keepalive: int = 30,
    ) -> None:
        if max_in_flight < 1:
            raise MqttConfigError("max_in_flight must be at least 1")
        self.address = address
        self.client_id = client_id
        self.filters = filters
        self.max_in_flight = max_in_flight
        self.session_expiry = session_expiry
        self.reconnect_max_delay = max(0.2, reconnect_max_delay)
        self.keepalive = keepalive
        self.receive_maximum = min(max_in_flight, 65535)
        self._queue: collections.deque[InboundMessage] = collections.deque()
        self._received = 0  # written by the network thread only
        self._acked = 0  # written by the consumer thread only
        self._data = threading.Event()
        self._idle = False
        self._last_take = 0.0
        self._paused = False
        self._stopping = threading.Event()
        self._ack_lock = threading.Lock()
        self._outgoing: list[int] = []
        """Packet ids to acknowledge on the current connection, in receipt order."""
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._woken = False
        self._thread: threading.Thread | None = None
        self._subscribe_id = 0
        self._keepalive_now = keepalive
        self.generation = 0
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        """Set when the broker has acknowledged the subscription on the current connection."""
        self.last_error: str | None = None
        self.on_connection_change: Callable[[bool], None] | None = None

    # -- consumer side --------------------------------------------------------------------

    @property
    def queued(self) -> int:
        """Messages received and not yet taken."""
        return len(self._queue)

    @property
    def backlog(self) -> int:
        """Messages received and not yet acknowledged."""
        return self._received - self._acked

    def take(
        self, max_messages: int, max_wait: float, stop: threading.Event
    ) -> list[InboundMessage]:
        """Up to `max_messages`: at once when that many are queued, else once `max_wait`
        seconds have passed since the previous take.

        So a busy consumer never sleeps (what arrived while it worked is its next
        batch), an idle one gathers for at most `max_wait`, and no message waits in
        the queue longer than that beyond the consumer's own work.
        """
        queue = self._queue
        if not queue:
            # Return empty-handed after a while so the caller's housekeeping runs when idle.
            self._idle = True
            self._data.clear()
            if not queue and not stop.is_set():
                self._data.wait(0.25)
            self._idle = False
            if not queue:
                return []
        deadline = self._last_take + max_wait
        while len(queue) < max_messages and not stop.is_set():
            remaining = deadline - time.monotonic()
            # At its bound the network thread has paused: no more will come.
            if remaining <= 0 or self._paused:
                break
            time.sleep(min(remaining, 0.005))
        self._last_take = time.monotonic()
        n = min(len(queue), max_messages)
        return [queue.popleft() for _ in range(n)]

    def ack(self, messages: list[InboundMessage]) -> None:
        """Acknowledge committed messages, in the order received.

        Messages from an earlier connection are not acknowledged: their packet
        ids now belong to the new connection, and the broker redelivers them.
        """
        with self._ack_lock:
            generation = self.generation
            ids = [m.mid for m in messages if m.qos == 1 and m.generation == generation]
            if ids:
                self._outgoing += ids
        if ids:
            self._wake()
        self.release(len(messages))

    def release(self, n: int) -> None:
        """Count `n` taken messages as done (acknowledged or left to the broker)."""
        self._acked += n
        if self._paused:
            self._wake()

    def _wake(self) -> None:
        """Interrupt the network thread's wait (one byte, unless one is already pending)."""
        if not self._woken and self._wake_w is not None:
            self._woken = True
            with contextlib.suppress(OSError):
                self._wake_w.send(b"\0")

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Connect and receive in a thread of its own; reconnect until `stop()`."""
        if self._thread is not None:
            raise RuntimeError("MqttReceiver.start() called twice")
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._thread = threading.Thread(
            target=self._run, name=f"mqtt-{self.client_id}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Send the acknowledgements asked for so far, disconnect, and end the thread."""
        self._stopping.set()
        self._woken = False
        self._wake()
        if self._thread is not None:
            self._thread.join(30)
        for sock in (self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()

    # -- network thread ---------------------------------------------------------------------

    def _run(self) -> None:
        delay = 0.2
        while not self._stopping.is_set():
            conn = self._connect()
            if conn is None:
                self._stopping.wait(delay)
                delay = min(delay * 2, self.reconnect_max_delay)
                continue
            delay = 0.2
            try:
                self._serve(conn)
            except (OSError, WireError) as exc:
                if not self._stopping.is_set():
                    self.last_error = f"disconnected from broker: {exc}"
                    log.warning("MQTT %s; reconnecting", self.last_error)
            finally:
                conn.close()
                self._disconnected()

    def _connect(self) -> WireConnection | None:
        """A connected, subscribing connection, or None after recording why not."""
        where = f"{self.address.host}:{self.address.port}"
        try:
            conn = WireConnection.open(self.address.host, self.address.port, tls=self.address.tls)
        except (OSError, ssl.SSLError) as exc:
            self.last_error = f"cannot reach MQTT broker {where}: {exc}"
            log.warning("%s; retrying", self.last_error)
            return None
        try:
            ack = conn.connect(
                self.client_id,
                keepalive=self.keepalive,
                clean_start=False,
                session_expiry=self.session_expiry,
                receive_maximum=self.receive_maximum,
                username=self.address.username,
                password=self.address.password,
            )
        except BrokerRefusedError as exc:
            conn.close()
            hint = (
                " (check the user name and password in CITYVITALS_MQTT_URL)"
                if exc.bad_credentials
                else ""
            )
            self.last_error = f"broker {where} refused the connection: {exc}{hint}"
            log.error("%s", self.last_error)
            return None
        except (OSError, WireError) as exc:
            conn.close()
            self.last_error = f"connecting to MQTT broker {where} failed: {exc}"
            log.warning("%s; retrying", self.last_error)
            return None
        if ack.server_keepalive is not None:
            self._keepalive_now = ack.server_keepalive
        else:
            self._keepalive_now = self.keepalive
        with self._ack_lock:
            self.generation += 1
            self._outgoing.clear()
        self._subscribe_id = self._subscribe_id % 65535 + 1
        conn.queue(
            encode_subscribe(
                self._subscribe_id,
                self.filters,
                qos=1,
                retain_handling=RETAIN_SEND_IF_NEW_SUBSCRIPTION,
            )
        )
        self.last_error = None
        self.connected.set()
        log.info("connected to MQTT broker %s (session present: %s)", where, ack.session_present)
        self._notify(True)
        return conn

    def _disconnected(self) -> None:
        with self._ack_lock:
            self.generation += 1
            self._outgoing.clear()
        self.connected.clear()
        self.subscribed.clear()
        self._notify(False)

    def _notify(self, connected: bool) -> None:
        if self.on_connection_change is not None:
            try:
                self.on_connection_change(connected)
            except Exception:
                log.exception("on_connection_change failed")

    def _serve(self, conn: WireConnection) -> None:
        """Move packets both ways until the connection ends or `stop()` is called."""
        assert self._wake_r is not None
        poller = select.poll()
        wake_fd, sock_fd = self._wake_r.fileno(), conn.fileno()
        poller.register(wake_fd, select.POLLIN)
        poller.register(sock_fd, select.POLLIN)
        keepalive = self._keepalive_now
        awaiting: float | None = None
        """Since when the broker owes an answer to a PINGREQ (any packet will do)."""
        controls: list[ControlPacket] = []
        while True:
            if self._stopping.is_set():
                self._goodbye(conn)
                return
            with self._ack_lock:
                if self._outgoing:
                    conn.queue(encode_pubacks(self._outgoing))
                    self._outgoing.clear()
            now = time.monotonic()
            # The broker drops a client it has not heard from for 1.5 keepalives: ping when
            # quiet, also while paused (the answers then wait behind unread messages).
            if keepalive and not conn.pending_out and now - conn.last_sent >= keepalive:
                conn.queue(PINGREQ_PACKET)
                if awaiting is None:
                    awaiting = now
            if conn.pending_out:
                conn.flush()
            room = self.max_in_flight - (self._received - self._acked)
            if room <= 0:
                # Ask the consumer to wake this thread on release, then look again, so a
                # release between the two is not missed.
                self._paused = True
                room = self.max_in_flight - (self._received - self._acked)
            if room > 0:
                if self._paused:
                    self._paused = False
                    if awaiting is not None:
                        awaiting = now  # unread answers were our doing, not the broker's
                if conn.has_complete_packet():
                    self._take_packets(conn, room, controls)
                    continue
                if awaiting is not None and now - awaiting > keepalive:
                    raise ConnectionLostError(f"no answer to PINGREQ within {keepalive}s")
            mask = select.POLLIN if room > 0 else 0
            timeout = 1.0
            if conn.pending_out:
                mask |= select.POLLOUT
            elif keepalive:
                timeout = min(timeout, max(0.01, conn.last_sent + keepalive - now))
            poller.modify(sock_fd, mask)
            for fd, events in poller.poll(timeout * 1000):
                if fd == wake_fd:
                    self._woken = False
                    with contextlib.suppress(BlockingIOError):
                        while self._wake_r.recv(4096):
                            pass
                    continue
                if events & select.POLLOUT:
                    conn.flush()
                if events & (select.POLLIN | select.POLLHUP | select.POLLERR):
                    if room <= 0:
                        raise ConnectionLostError("the broker closed the connection")
                    if conn.fill():
                        self._take_packets(conn, room, controls)
            if awaiting is not None and conn.last_received > awaiting:
                awaiting = None

    def _take_packets(self, conn: WireConnection, room: int, controls: list[ControlPacket]) -> None:
        added = conn.parse(room, self.generation, datetime.now(UTC), self._queue, controls)
        if added:
            self._received += added
            if self._idle:
                self._data.set()
        if controls:
            for packet in controls:
                self._control(packet)
            controls.clear()

    def _control(self, packet: ControlPacket) -> None:
        kind = packet.kind
        if kind == SUBACK:
            suback = decode_suback(packet.body)
            failed = [r for r in suback.reasons if r >= 0x80]
            if failed:
                self.last_error = (
                    f"broker refused the subscription to {self.filters}: {reason_name(failed[0])}"
                    + (f" ({suback.reason_string})" if suback.reason_string else "")
                )
                log.error("%s", self.last_error)
            else:
                self.subscribed.set()
        elif kind == DISCONNECT:
            raise ConnectionLostError(describe_disconnect(packet.body))
        elif kind in (PINGRESP, PUBACK):
            pass
        else:
            raise ProtocolError(f"unexpected packet type {kind} from the broker")

    def _goodbye(self, conn: WireConnection) -> None:
        """Send the pending acknowledgements and DISCONNECT; the session stays on the broker."""
        with self._ack_lock:
            if self._outgoing:
                conn.queue(encode_pubacks(self._outgoing))
                self._outgoing.clear()
        conn.queue(DISCONNECT_PACKET)
        try:
            conn.flush_blocking(5.0)
        except WireError as exc:
            log.warning("MQTT disconnect: %s", exc)
            return
        conn.close_gracefully(2.0)
