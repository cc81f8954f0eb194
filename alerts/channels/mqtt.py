"""MQTT channel: the message as JSON, published at QoS 1 (control-room displays).

One paho client per broker, connected on first use and kept; a publish counts
as sent when the broker's PUBACK arrives within the time-out. The payload
carries `idempotency_key`, since QoS 1 itself may deliver twice.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.parse
import uuid

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from alerts.channels import Envelope, Result

log = logging.getLogger(__name__)


def _address(url: str) -> tuple[str, int, str | None, str | None, bool]:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise ValueError(f"{parts.scheme!r} is not an MQTT URL scheme (mqtt:// or mqtts://)")
    tls = parts.scheme in ("mqtts", "ssl")
    return (
        parts.hostname or "localhost",
        parts.port or (8883 if tls else 1883),
        urllib.parse.unquote(parts.username) if parts.username else None,
        urllib.parse.unquote(parts.password) if parts.password else None,
        tls,
    )


class MqttPublisher:
    """A connection to one broker, shared by the MQTT channels that publish to it."""

    def __init__(self, url: str, client_id: str | None = None, timeout: float = 10.0) -> None:
        self.host, self.port, user, password, tls = _address(url)
        self.timeout = timeout
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"cityvitals-notify-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv311,
        )
        if user is not None:
            self.client.username_pw_set(user, password)
        if tls:
            self.client.tls_set()
        self.client.reconnect_delay_set(1, 5)
        self.client.enable_logger(log)
        self._lock = threading.Lock()
        self._started = False

    def _ensure(self) -> bool:
        """Start the client's loop on first use; True if it was started now."""
        with self._lock:
            if self._started:
                return False
            self.client.connect_async(self.host, self.port, keepalive=30)
            self.client.loop_start()
            self._started = True
            return True

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> Result:
        fresh = self._ensure()
        where = f"mqtt {self.host}:{self.port} {topic}"
        if fresh:
            # Give a new client a moment to connect before calling the broker down.
            deadline = time.monotonic() + self.timeout
            while not self.client.is_connected() and time.monotonic() < deadline:
                time.sleep(0.02)
        if not self.client.is_connected():
            return Result.retry(f"{where}: not connected to the broker")
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return Result.retry(f"{where}: publish failed ({mqtt.error_string(info.rc)})")
        try:
            info.wait_for_publish(self.timeout)
        except (RuntimeError, ValueError) as exc:
            return Result.retry(f"{where}: {exc}")
        if not info.is_published():
            return Result.retry(f"{where}: no PUBACK within {self.timeout:g} s")
        return Result.sent()

    def close(self) -> None:
        with self._lock:
            if self._started:
                self.client.disconnect()
                self.client.loop_stop()
                self._started = False


class MqttChannel:
    def __init__(self, publisher: MqttPublisher, topic: str, retain: bool = False) -> None:
        self.publisher = publisher
        self.topic = topic
        self.retain = retain

    def send(self, envelope: Envelope) -> Result:
        return self.publisher.publish(self.topic, orjson.dumps(envelope.document()), self.retain)

    def close(self) -> None:
        pass
