"""Putting simulated messages on the wire, paced to a speed factor of simulated time.

Two ways to connect, as real deployments do:

- `gateway` (default): a few connections publish for many devices, like the
  network server of an NB-IoT or LoRaWAN operator. Thousands of devices from
  one process. Device status (`online`/`offline`, retained) is published on
  the devices' behalf, as such gateways do. The connections are
  `simulators.wire.WireClient`s, driven from the caller's thread.
- `device`: one MQTT connection per device with its own retained last will
  (`offline` on its status topic), so the broker itself announces a device
  that drops off. For small fleets (each connection is a paho client with its
  own network thread).
"""

from __future__ import annotations

import ssl
import threading
import time
import uuid
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from ingest.mqtt import BrokerAddress
from simulators.model import WireMessage
from simulators.wire import PublishError, WireClient

__all__ = ["MAX_UNACKED", "MqttPublisher", "PublishError", "PublishStats"]

MAX_UNACKED = 10_000
"""Cap on QoS 1 publishes awaiting PUBACK, per gateway connection and in device mode:
packet ids run to 65,535 (paho would silently reuse them beyond).

paho's own in-flight limit is switched off (0): with a limit, paho scans every
outstanding message on each PUBACK, which costs O(in-flight) per message."""


@dataclass
class PublishStats:
    published: int = 0
    acknowledged: int = 0
    bytes: int = 0
    by_channel: dict[str, int] = field(default_factory=dict)
    reconnects: int = 0
    """Gateway connections lost and made again (their unacknowledged messages resent)."""


class MqttPublisher:
    """Publishes wire messages at QoS 1, keeping at most MAX_UNACKED awaiting PUBACK.

    Gateway connections are driven from the caller's thread (no network thread):
    publishes are buffered and written every PUMP_EVERY messages (or sooner with
    `flush`), when PUBACKs are read too. A lost gateway connection is made again
    and its unacknowledged messages are sent again. Device connections (`device`
    mode) run their own threads.
    """

    PUMP_EVERY = 64

    def __init__(
        self, mqtt_url: str, mode: str = "gateway", client_prefix: str = "sim", gateways: int = 1
    ) -> None:
        if mode not in ("gateway", "device"):
            raise ValueError(f"publisher mode must be gateway or device, not {mode!r}")
        self.address = BrokerAddress.from_url(mqtt_url)
        self.mode = mode
        self.prefix = f"{client_prefix}-{uuid.uuid4().hex[:6]}"
        self.stats = PublishStats()
        self._lock = threading.Lock()
        self._acked = threading.Condition(self._lock)
        self._clients: dict[str, mqtt.Client] = {}
        self._gateways: list[WireClient] = []
        self._route: dict[str, WireClient] = {}
        if mode == "gateway":
            try:
                for k in range(max(1, gateways)):
                    self._gateways.append(self._connect_gateway(f"{self.prefix}-gw{k}"))
            except PublishError:
                for client in self._gateways:
                    client.drop()
                raise

    def _connect_gateway(self, client_id: str) -> WireClient:
        a = self.address
        return WireClient(
            a.host,
            a.port,
            client_id,
            username=a.username,
            password=a.password,
            tls=a.tls,
            window=MAX_UNACKED,
        )

    def _on_publish(
        self, client: mqtt.Client, userdata: object, mid: int, reason: object, properties: object
    ) -> None:
        with self._lock:
            self.stats.acknowledged += 1
            self._acked.notify_all()

    def _connect(self, client_id: str, will_topic: str | None = None) -> mqtt.Client:
        # MQTT 3.1.1, as most field devices speak it; its PUBACKs are also far cheaper
        # for paho to handle than MQTT 5's (no reason codes or properties to decode).
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311
        )
        if self.address.username:
            client.username_pw_set(self.address.username, self.address.password)
        if self.address.tls:
            client.tls_set(cert_reqs=ssl.CERT_REQUIRED)
        client.max_queued_messages_set(0)
        client.max_inflight_messages_set(0)
        client.on_publish = self._on_publish
        if will_topic is not None:
            client.will_set(will_topic, b"offline", qos=1, retain=True)
        client.reconnect_delay_set(1, 10)
        try:
            client.connect(self.address.host, self.address.port, keepalive=30)
        except OSError as exc:
            raise PublishError(
                f"cannot connect to the MQTT broker at {self.address.host}:{self.address.port}: "
                f"{exc}"
            ) from None
        client.loop_start()
        return client

    def _pump(self, timeout: float = 0.0) -> None:
        """Write what is buffered, read PUBACKs, keep alive; reconnect a gateway that dropped."""
        for client in self._gateways:
            client.poll(timeout)
        self._count()

    def _count(self) -> None:
        gateways = self._gateways
        if gateways:
            self.stats.acknowledged = sum(c.acknowledged for c in gateways)
            self.stats.reconnects = sum(c.reconnects for c in gateways)

    def flush(self) -> None:
        """Send what is buffered now (a paced run calls this before it waits)."""
        if self.mode == "gateway":
            self._pump()

    def _gateway_for(self, device_id: str) -> WireClient:
        client = self._gateways[zlib.crc32(device_id.encode()) % len(self._gateways)]
        self._route[device_id] = client
        return client

    def _device_client(self, msg: WireMessage) -> mqtt.Client:
        client = self._clients.get(msg.device_id)
        if client is None:
            status = msg.topic.rsplit("/", 1)[0] + "/status"
            client = self._connect(f"{self.prefix}-{msg.device_id}", will_topic=status)
            self._clients[msg.device_id] = client
        return client

    def publish(self, msg: WireMessage) -> None:
        stats = self.stats
        if self.mode == "gateway":
            client = self._route.get(msg.device_id) or self._gateway_for(msg.device_id)
            client.publish(msg.topic, msg.payload, msg.qos, msg.retain)
        else:
            while stats.published - stats.acknowledged >= MAX_UNACKED:
                with self._lock:
                    self._acked.wait(0.5)
            self._device_client(msg).publish(msg.topic, msg.payload, qos=msg.qos, retain=msg.retain)
        stats.published += 1
        stats.bytes += len(msg.payload)
        by_channel = stats.by_channel
        by_channel[msg.channel] = by_channel.get(msg.channel, 0) + 1
        if stats.published % self.PUMP_EVERY == 0 and self.mode == "gateway":
            self._pump()

    def publish_all(self, messages: Iterable[WireMessage]) -> None:
        for m in messages:
            self.publish(m)
        self.flush()

    def drop_connection(self, device_id: str) -> bool:
        """Cut a device's own connection without DISCONNECT, so the broker sends its will."""
        client = self._clients.pop(device_id, None)
        if client is None:
            return False
        sock = client.socket()
        client.loop_stop()
        if sock is not None:
            sock.close()
        return True

    def wait_acknowledged(self, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        if self.mode == "gateway":
            self._pump()
        while self.stats.acknowledged < self.stats.published:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self.mode == "gateway":
                # A short wait on each connection in turn keeps them all alive.
                for client in self._gateways:
                    if client.in_flight:
                        client.poll(min(0.05, left))
                self._count()
            else:
                with self._lock:
                    self._acked.wait(min(0.2, left))
        return True

    def close(self) -> None:
        self.wait_acknowledged()
        for gateway in self._gateways:
            gateway.close(timeout=5.0)
        self._count()
        for client in self._clients.values():
            client.disconnect()
            client.loop_stop()
