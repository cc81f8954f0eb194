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

import contextlib
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

MAX_UNACKED = 10_000
"""Cap on QoS 1 publishes awaiting PUBACK: paho reuses message ids past 65,535.

paho's own in-flight limit is switched off (0): with a limit, paho scans every
outstanding message on each PUBACK, which costs O(in-flight) per message."""


@dataclass
class PublishStats:
    published: int = 0
    acknowledged: int = 0
    bytes: int = 0
    by_channel: dict[str, int] = field(default_factory=dict)


class PublishError(RuntimeError):
    """The broker cannot be reached or refused the simulator's connection."""


class MqttPublisher:
    """Publishes wire messages at QoS 1, keeping at most MAX_UNACKED awaiting PUBACK.

    Gateway connections are driven from the caller's thread (no network thread):
    each publish goes straight to the socket and PUBACKs are read every few
    messages, which is several times faster than handing every message to a
    paho network thread. Device connections (`device` mode) run their own threads.
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
        self._gateways = [
            self._connect(f"{self.prefix}-gw{k}", threaded=False) for k in range(max(1, gateways))
        ]

    def _on_publish(
        self, client: mqtt.Client, userdata: object, mid: int, reason: object, properties: object
    ) -> None:
        with self._lock:
            self.stats.acknowledged += 1
            self._acked.notify_all()

    def _connect(
        self, client_id: str, will_topic: str | None = None, threaded: bool = True
    ) -> mqtt.Client:
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
        if threaded:
            client.loop_start()
            return client
        deadline = time.monotonic() + 10
        while not client.is_connected():
            client.loop(0.05)
            if time.monotonic() > deadline:
                raise PublishError(
                    f"the MQTT broker at {self.address.host}:{self.address.port} did not "
                    "accept the simulator's connection within 10 s"
                )
        return client

    def _pump(self, timeout: float = 0.0) -> None:
        """Read PUBACKs, flush writes, keep alive; reconnect a gateway that dropped."""
        for client in self._gateways:
            rc = client.loop(timeout)
            if rc != mqtt.MQTT_ERR_SUCCESS:
                # paho resends unacknowledged QoS 1 messages after reconnecting.
                time.sleep(min(1.0, max(timeout, 0.2)))
                with contextlib.suppress(OSError):
                    client.reconnect()

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
        stats = self.stats
        while stats.published - stats.acknowledged >= MAX_UNACKED:
            if self.mode == "gateway":
                self._pump(0.05)
            else:
                with self._lock:
                    self._acked.wait(0.5)
        self._client_for(msg).publish(msg.topic, msg.payload, qos=msg.qos, retain=msg.retain)
        stats.published += 1
        stats.bytes += len(msg.payload)
        stats.by_channel[msg.channel] = stats.by_channel.get(msg.channel, 0) + 1
        if stats.published % self.PUMP_EVERY == 0:
            self._pump()

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
        while self.stats.acknowledged < self.stats.published:
            if time.monotonic() > deadline:
                return False
            if self.mode == "gateway":
                self._pump(0.05)
            else:
                with self._lock:
                    self._acked.wait(0.2)
        return True

    def close(self) -> None:
        self.wait_acknowledged()
        for client in self._gateways:
            client.disconnect()
            client.loop(0.1)
        for client in self._clients.values():
            client.disconnect()
            client.loop_stop()
