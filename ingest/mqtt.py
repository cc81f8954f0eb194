"""MQTT adapter of the ingest: a paho client whose acknowledgements wait for the database.

The client subscribes at QoS 1 with a persistent session (MQTT 5, clean start
off) and acknowledges a message only after the batch holding it is committed,
so the broker keeps every message the platform has not stored. Messages
received but not acknowledged are bounded by `max_in_flight`: at the bound the
network thread stops reading, and the broker holds the rest.
"""

from __future__ import annotations

import collections
import logging
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

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


@dataclass(frozen=True, slots=True)
class InboundMessage:
    topic: str
    payload: bytes
    mid: int
    qos: int
    retain: bool
    received_at: datetime
    generation: int
    """Connection the message came on: acks are valid only on that connection."""


class MqttReceiver:
    """Receives messages into a bounded buffer and acknowledges them on request."""

    def __init__(
        self,
        address: BrokerAddress,
        client_id: str,
        filters: list[str],
        max_in_flight: int,
        session_expiry: int,
        reconnect_max_delay: float,
    ) -> None:
        self.address = address
        self.filters = filters
        self.max_in_flight = max_in_flight
        self._client, self._props = make_client(
            address,
            client_id,
            manual_ack=True,
            session_expiry=session_expiry,
            receive_maximum=min(max_in_flight, 65535),
        )
        self._client.reconnect_delay_set(1, max(1, int(reconnect_max_delay)))
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        self._queue: collections.deque[InboundMessage] = collections.deque()
        self._received = 0  # written by the network thread only
        self._acked = 0  # written by the consumer thread only
        self._space = threading.Event()
        self._space.set()
        self._data = threading.Event()
        self._idle = False
        self._stopping = False
        self._ack_lock = threading.Lock()
        self.generation = 0
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        """Set when the broker has acknowledged the subscription on the current connection."""
        self.last_error: str | None = None
        self.on_connection_change: Callable[[bool], None] | None = None

    # -- network thread -------------------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if reason.is_failure:
            self.last_error = f"broker {self.address.host}:{self.address.port} refused: {reason}"
            log.error("%s", self.last_error)
            return
        with self._ack_lock:
            self.generation += 1
        options = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)
        client.subscribe([(f, options) for f in self.filters])
        self.last_error = None
        self.connected.set()
        log.info(
            "connected to MQTT broker %s:%s (session present: %s)",
            self.address.host,
            self.address.port,
            flags.session_present,
        )
        if self.on_connection_change:
            self.on_connection_change(True)

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, properties: Any
    ) -> None:
        failed = [r for r in reasons if r.is_failure]
        if failed:
            self.last_error = f"broker refused the subscription to {self.filters}: {failed[0]}"
            log.error("%s", self.last_error)
            return
        self.subscribed.set()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        with self._ack_lock:
            self.generation += 1
        self.connected.clear()
        self.subscribed.clear()
        if not self._stopping:
            self.last_error = f"disconnected from broker: {reason}"
            log.warning("MQTT %s; reconnecting", self.last_error)
        if self.on_connection_change:
            self.on_connection_change(False)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            topic = msg._topic.decode("utf-8", errors="replace")
        self._queue.append(
            InboundMessage(
                topic,
                bytes(msg.payload),
                msg.mid,
                msg.qos,
                bool(msg.retain),
                datetime.now(UTC),
                self.generation,
            )
        )
        self._received += 1
        if self._idle:
            self._data.set()
        # Backpressure: stop reading until the consumer has committed and acked.
        while self._received - self._acked >= self.max_in_flight and not self._stopping:
            self._space.clear()
            if self._received - self._acked < self.max_in_flight:
                break
            self._space.wait(0.5)

    # -- consumer thread ------------------------------------------------------

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
        """Up to `max_messages`, waiting at most `max_wait` seconds after the first arrives."""
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
        deadline = time.monotonic() + max_wait
        while len(queue) < max_messages and not stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            time.sleep(min(remaining, 0.005))
        n = min(len(queue), max_messages)
        return [queue.popleft() for _ in range(n)]

    def ack(self, messages: list[InboundMessage]) -> None:
        """Acknowledge committed messages, in the order received.

        Messages from an earlier connection are not acknowledged: their packet
        ids now belong to the new connection, and the broker redelivers them.
        """
        with self._ack_lock:
            generation = self.generation
            for m in messages:
                if m.qos > 0 and m.generation == generation:
                    self._client.ack(m.mid, m.qos)
        self.release(len(messages))

    def release(self, n: int) -> None:
        self._acked += n
        if not self._space.is_set():
            self._space.set()

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        self._client.connect_async(
            self.address.host,
            self.address.port,
            keepalive=30,
            clean_start=False,
            properties=self._props,
        )
        self._client.loop_start()

    def stop(self) -> None:
        self._stopping = True
        self._space.set()
        self._client.disconnect()
        self._client.loop_stop()
