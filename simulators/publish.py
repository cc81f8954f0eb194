"""Putting simulated messages on the wire, paced to a speed factor of simulated time.

Two ways to connect, as real deployments do:

- `gateway` (default): a few connections publish for many devices, like the
  network server of an NB-IoT or LoRaWAN operator. Thousands of devices from
  one process. Device status (`online`/`offline`, retained) is published on
  the devices' behalf, as such gateways do.
- `device`: one MQTT connection per device with its own retained last will
  (`offline` on its status topic), so the broker itself announces a device
  that drops off. For small fleets (each connection is a socket and a thread).
"""

from __future__ import annotations

import threading
import time
import uuid
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt

from ingest.mqtt import BrokerAddress, make_client
from simulators.model import WireMessage

MAX_UNACKED = 20_000
"""Cap on QoS 1 publishes awaiting PUBACK: paho reuses message ids past 65,535."""


@dataclass
class PublishStats:
    published: int = 0
    acknowledged: int = 0
    bytes: int = 0
    by_channel: dict[str, int] = field(default_factory=dict)


class MqttPublisher:
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
        self._gateways = [self._connect(f"{self.prefix}-gw{k}") for k in range(max(1, gateways))]

    def _on_publish(
        self, client: mqtt.Client, userdata: object, mid: int, reason: object, properties: object
    ) -> None:
        with self._lock:
            self.stats.acknowledged += 1
            self._acked.notify_all()

    def _connect(self, client_id: str, will_topic: str | None = None) -> mqtt.Client:
        client, props = make_client(self.address, client_id)
        client.max_inflight_messages_set(MAX_UNACKED)
        client.on_publish = self._on_publish
        if will_topic is not None:
            client.will_set(will_topic, b"offline", qos=1, retain=True)
        client.reconnect_delay_set(1, 10)
        client.connect(self.address.host, self.address.port, keepalive=30, properties=props)
        client.loop_start()
        return client

    def _client_for(self, msg: WireMessage) -> mqtt.Client:
        if self.mode == "gateway":
            return self._gateways[zlib.crc32(msg.device_id.encode()) % len(self._gateways)]
        client = self._clients.get(msg.device_id)
        if client is None:
            status = msg.topic.rsplit("/", 1)[0] + "/status"
            client = self._connect(f"{self.prefix}-{msg.device_id}", will_topic=status)
            self._clients[msg.device_id] = client
        return client

    def publish(self, msg: WireMessage) -> None:
        with self._lock:
            while self.stats.published - self.stats.acknowledged >= MAX_UNACKED:
                self._acked.wait(1.0)
        self._client_for(msg).publish(msg.topic, msg.payload, qos=msg.qos, retain=msg.retain)
        self.stats.published += 1
        self.stats.bytes += len(msg.payload)
        self.stats.by_channel[msg.channel] = self.stats.by_channel.get(msg.channel, 0) + 1

    def publish_all(self, messages: Iterable[WireMessage]) -> None:
        for m in messages:
            self.publish(m)

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
        with self._lock:
            while self.stats.acknowledged < self.stats.published:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._acked.wait(remaining)
        return True

    def close(self) -> None:
        self.wait_acknowledged()
        for client in [*self._gateways, *self._clients.values()]:
            client.disconnect()
            client.loop_stop()
