"""Helpers shared by the integration tests: publishing with paho and waiting on conditions."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import orjson
import paho.mqtt.client as mqtt
import psycopg

from ingest.mqtt import BrokerAddress, make_client

T = TypeVar("T")


def wait_until(check: Callable[[], T], timeout: float = 15.0, what: str = "condition") -> T:
    """Poll `check` until it returns something truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    last: T = check()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")
        time.sleep(0.05)
        last = check()
    return last


class Publisher:
    """A real paho publisher that waits for the broker's PUBACK of every message."""

    def __init__(self, mqtt_url: str, client_id: str | None = None) -> None:
        address = BrokerAddress.from_url(mqtt_url)
        self.client, props = make_client(address, client_id or f"test-pub-{uuid.uuid4().hex[:8]}")
        self.client.max_inflight_messages_set(1000)
        self.client.reconnect_delay_set(0.1, 1)
        self.client.connect(address.host, address.port, keepalive=30, properties=props)
        self.client.loop_start()
        self.pending: list[mqtt.MQTTMessageInfo] = []

    def send(
        self, topic: str, payload: bytes | str | dict[str, Any], qos: int = 1, retain: bool = False
    ) -> mqtt.MQTTMessageInfo:
        if isinstance(payload, dict):
            payload = orjson.dumps(payload)
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        self.pending.append(info)
        if len(self.pending) >= 500:
            self.flush()
        return info

    def send_many(self, items: Iterable[tuple[str, bytes | str | dict[str, Any]]]) -> None:
        for topic, payload in items:
            self.send(topic, payload)

    def flush(self, timeout: float = 60) -> None:
        for info in self.pending:
            info.wait_for_publish(timeout)
        self.pending.clear()

    def close(self) -> None:
        self.flush()
        self.client.disconnect()
        self.client.loop_stop()


def scalar(url: str, sql: str, *args: Any) -> Any:
    with psycopg.connect(url) as conn:
        row = conn.execute(sql, args).fetchone()  # type: ignore[arg-type]
        return None if row is None else row[0]


def rows(url: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql, args).fetchall()  # type: ignore[arg-type]
