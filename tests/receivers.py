"""Real notification receivers on loopback for the tests: an HTTP webhook server, an SMTP
server (aiosmtpd) and an MQTT subscriber. Each records what arrives, keyed by the
idempotency key, and the first two can be told to fail or to be slow."""

from __future__ import annotations

import email.policy
import socket
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from paho.mqtt.enums import CallbackAPIVersion

from alerts.channels.webhook import (
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    verify,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Delivery:
    key: str
    document: dict[str, Any]
    signed: bool
    headers: dict[str, str] = field(default_factory=dict)


class WebhookReceiver:
    """POST / → records the JSON; `status` (e.g. 503) refuses, `delay` slows each request."""

    def __init__(self, secret: bytes) -> None:
        self.secret = secret
        self.deliveries: list[Delivery] = []
        self.refused = 0
        self.status = 200
        self.delay = 0.0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                with receiver.lock:
                    status, delay = receiver.status, receiver.delay
                if status != 200:
                    with receiver.lock:
                        receiver.refused += 1
                    self.send_response(status)
                    self.end_headers()
                    return
                signed = verify(
                    receiver.secret,
                    self.headers.get(TIMESTAMP_HEADER, ""),
                    body,
                    self.headers.get(SIGNATURE_HEADER, ""),
                    time.time(),
                )
                with receiver.lock:
                    receiver.deliveries.append(
                        Delivery(
                            self.headers.get(IDEMPOTENCY_HEADER, ""),
                            orjson.loads(body),
                            signed,
                            {k.lower(): v for k, v in self.headers.items()},
                        )
                    )
                if delay:
                    time.sleep(delay)
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> WebhookReceiver:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def keys(self) -> Counter[str]:
        with self.lock:
            return Counter(d.key for d in self.deliveries)

    def documents(self) -> list[dict[str, Any]]:
        with self.lock:
            return [d.document for d in self.deliveries]


class _SmtpHandler:
    def __init__(self, receiver: SmtpReceiver) -> None:
        self.receiver = receiver

    async def handle_DATA(  # noqa: N802 (aiosmtpd calls it by this name)
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        if self.receiver.reply is not None:
            self.receiver.refused += 1
            return self.receiver.reply
        content = envelope.original_content or b""
        self.receiver.messages.append(message_from_bytes(content, policy=email.policy.default))
        return "250 OK"


class SmtpReceiver:
    """An SMTP server; set `reply` to e.g. '451 try later' to refuse mail for a while."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.refused = 0
        self.reply: str | None = None
        self.port = free_port()
        self.controller = Controller(_SmtpHandler(self), hostname="127.0.0.1", port=self.port)

    def start(self) -> SmtpReceiver:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    def keys(self) -> Counter[str]:
        return Counter(str(m["X-CityVitals-Idempotency-Key"]) for m in list(self.messages))


class MqttSubscriber:
    """Subscribes at QoS 1; `persistent` keeps its session (and queued messages) across a
    broker restart, and it re-subscribes on every connection."""

    def __init__(self, host: str, port: int, topic: str, persistent: bool = False) -> None:
        self.payloads: list[dict[str, Any]] = []
        self.subscribed = threading.Event()
        self.subscriptions = 0
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"sub-{uuid.uuid4().hex[:8]}",
            clean_session=not persistent,
            protocol=mqtt.MQTTv311,
        )
        self.client.reconnect_delay_set(1, 1)
        self.topic = topic

        def on_connect(client: mqtt.Client, *args: Any) -> None:
            client.subscribe(topic, qos=1)

        def on_subscribe(*args: Any) -> None:
            self.subscriptions += 1
            self.subscribed.set()

        def on_message(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
            self.payloads.append(orjson.loads(msg.payload))

        self.client.on_connect = on_connect
        self.client.on_subscribe = on_subscribe
        self.client.on_message = on_message
        self.client.connect(host, port)
        self.client.loop_start()

    def resubscribed(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.subscriptions < 2:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def keys(self) -> Counter[str]:
        return Counter(str(p["idempotency_key"]) for p in list(self.payloads))

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
