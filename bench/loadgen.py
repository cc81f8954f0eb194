"""Load generator for the benchmarks: a publisher process sending canonical telemetry at QoS 1.

The parent talks to the process over a pipe: it waits for `ready` (connected),
may ask for a `probe` (one status message, to learn when the consumer is
subscribed), then says `go` and gets the publisher's figures back.

Two MQTT 5 clients publish:

- `raw` (the default) writes many PUBLISH packets per system call and keeps its
  own window of unacknowledged packet ids. A system call costs 1-17 µs on the
  small VMs this project runs on, and paho makes two per message (the socket
  and its wake-up pipe), so a paho publisher tops out near 8k messages/s there,
  below what the ingest reaches: the load generator would be the bottleneck.
- `paho` is kept to compare. It caps its in-flight window itself: paho's own
  `max_inflight_messages_set(n)` rescans every unacknowledged message on each
  PUBACK (O(n) per message), and paho hands out packet ids to queued messages
  too, overwriting them past 65,535.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import socket
import ssl
import struct
import time
import traceback
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ingest.mqtt import BrokerAddress, make_client

PROBE_DEVICE = "bench-probe"


class LoadError(RuntimeError):
    """The publisher could not connect, or the broker refused a message."""


@dataclass(frozen=True)
class PublishPlan:
    mqtt_url: str
    client_id: str
    root: str
    messages: int
    readings_per_message: int = 1
    devices: int = 1000
    districts: int = 10
    rate: float | None = None
    """Messages per second, paced in 5 ms bursts; None publishes at full speed."""
    window: int = 2000
    """Most PUBLISH packets unacknowledged at once (capped by the broker's Receive Maximum)."""
    client: str = "raw"

    def topic(self, device: int) -> str:
        return f"{self.root}/d{device % self.districts}/rain_gauge/rg-{device}/telemetry"

    @property
    def probe_topic(self) -> str:
        return f"{self.root}/d0/rain_gauge/{PROBE_DEVICE}/status"


@dataclass
class PublishResult:
    messages: int
    readings: int
    started: float
    """Wall-clock time of the first publish (time.time(), comparable across processes)."""
    published: float
    """Wall-clock time the last message was handed to the socket."""
    acknowledged: float
    """Wall-clock time the broker acknowledged the last message."""
    refused: int
    """PUBACKs with a failure reason code."""
    cpu_seconds: float
    window: int

    @property
    def rate(self) -> float:
        """Messages per second from the first publish to the last PUBACK."""
        return self.messages / max(self.acknowledged - self.started, 1e-9)


class Telemetry:
    """Canonical telemetry messages with distinct (device, ts) and per-device `seq` from 1.

    `ts` is epoch milliseconds at the time the message is built, so the
    consumer can measure publish→commit latency; a device's readings never
    share a millisecond, so nothing is a duplicate.
    """

    def __init__(self, plan: PublishPlan) -> None:
        self.plan = plan
        self.topics = [plan.topic(i).encode() for i in range(plan.devices)]
        self.last_ts = [0] * plan.devices
        self.seq = [0] * plan.devices

    def message(self, n: int) -> tuple[bytes, bytes]:
        """Topic and payload of the `n`-th message (devices take turns)."""
        device = n % self.plan.devices
        k = self.plan.readings_per_message
        now = int(time.time() * 1000)
        start = max(now - (k - 1), self.last_ts[device] + 1)
        self.last_ts[device] = start + k - 1
        seq = self.seq[device]
        self.seq[device] = seq + k
        if k == 1:
            body: dict[str, Any] = {
                "ts": start,
                "seq": seq + 1,
                "values": {"rain_mm": _rain(seq + 1)},
            }
        else:
            body = {
                "readings": [
                    {"ts": start + j, "seq": seq + 1 + j, "values": {"rain_mm": _rain(seq + 1 + j)}}
                    for j in range(k)
                ]
            }
        return self.topics[device], orjson.dumps(body)


def _rain(seq: int) -> float:
    return round((seq % 100) * 0.2, 1)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _utf8(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return struct.pack("!H", len(data)) + data


class RawPublisher:
    """A minimal MQTT 5 QoS 1 publisher that batches packets into few system calls."""

    def __init__(self, address: BrokerAddress, client_id: str, window: int) -> None:
        sock = socket.create_connection((address.host, address.port), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if address.tls:
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=address.host)
        self.sock = sock
        self._in = bytearray()
        self._out = bytearray()
        self._pending: set[int] = set()
        self._next_id = 0
        self.refused = 0
        flags = 0x02  # clean start
        payload = _utf8(client_id)
        if address.username:
            flags |= 0x80
            payload += _utf8(address.username)
            if address.password:
                flags |= 0x40
                payload += _utf8(address.password)
        variable = _utf8("MQTT") + bytes([5, flags]) + struct.pack("!H", 60) + b"\x00"
        body = variable + payload
        sock.sendall(b"\x10" + _varint(len(body)) + body)
        kind, packet = self._read_packet()
        if kind != 0x20 or len(packet) < 2:
            raise LoadError(f"expected CONNACK from the broker, got packet type {kind >> 4}")
        if packet[1] >= 0x80:
            raise LoadError(f"broker refused the connection: reason code {packet[1]:#x}")
        props = Properties(PacketTypes.CONNACK)  # type: ignore[no-untyped-call]
        if len(packet) > 2:
            props.unpack(bytes(packet[2:]))  # type: ignore[no-untyped-call]
        receive_maximum = getattr(props, "ReceiveMaximum", 65535)
        self.window = max(1, min(window, receive_maximum, 65535))
        sock.settimeout(None)

    def _read_packet(self) -> tuple[int, bytearray]:
        while True:
            parsed = self._parse_one()
            if parsed is not None:
                return parsed
            chunk = self.sock.recv(65536)
            if not chunk:
                raise LoadError("the broker closed the connection")
            self._in += chunk

    def _parse_one(self) -> tuple[int, bytearray] | None:
        buf = self._in
        length, shift, i = 0, 0, 1
        while True:
            if i >= len(buf):
                return None
            byte = buf[i]
            length |= (byte & 0x7F) << shift
            shift += 7
            i += 1
            if not byte & 0x80:
                break
        if len(buf) < i + length:
            return None
        kind = buf[0] & 0xF0
        packet = buf[i : i + length]
        del buf[: i + length]
        return kind, packet

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def publish(self, topic: bytes, payload: bytes) -> None:
        """Queue one QoS 1 PUBLISH; call only while `in_flight` < `window`."""
        mid = self._next_id % 65535 + 1
        while mid in self._pending:
            mid = mid % 65535 + 1
        self._next_id = mid
        self._pending.add(mid)
        remaining = 2 + len(topic) + 3 + len(payload)
        self._out += b"\x32" + _varint(remaining) + struct.pack("!H", len(topic)) + topic
        self._out += struct.pack("!HB", mid, 0) + payload
        if len(self._out) >= 65536:
            self.flush()

    def flush(self) -> None:
        if self._out:
            self.sock.sendall(self._out)
            self._out.clear()

    def read_acks(self, block: bool) -> None:
        """Take the PUBACKs that have arrived; with `block`, wait for at least one read."""
        try:
            chunk = self.sock.recv(65536, 0 if block else socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        if not chunk:
            raise LoadError("the broker closed the connection")
        self._in += chunk
        while (parsed := self._parse_one()) is not None:
            kind, packet = parsed
            if kind == 0x40:
                (mid,) = struct.unpack_from("!H", packet)
                self._pending.discard(mid)
                if len(packet) > 2 and packet[2] >= 0x80:
                    self.refused += 1
            elif kind == 0xE0:
                reason = packet[0] if packet else 0
                raise LoadError(f"the broker disconnected the publisher: reason {reason:#x}")

    def wait_below(self, limit: int) -> None:
        self.flush()
        while len(self._pending) > limit:
            self.read_acks(block=True)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(b"\xe0\x00")
        self.sock.close()


class PahoPublisher:
    """The same interface over paho, driven from one thread without loop_start."""

    def __init__(self, address: BrokerAddress, client_id: str, window: int) -> None:
        self.client, props = make_client(address, client_id)
        # 0 = no paho-side cap: ours is `window`, see the module docstring.
        self.client.max_inflight_messages_set(0)
        self.window = min(window, 65535)
        self.refused = 0
        self._acked = 0
        self._sent = 0
        self.client.on_publish = self._on_publish
        self.client.connect(address.host, address.port, keepalive=60, properties=props)
        deadline = time.monotonic() + 10
        while not self.client.is_connected():
            if time.monotonic() > deadline:
                raise LoadError(f"paho publisher could not connect to {address}")
            self.client.loop(0.05)

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, properties: Any
    ) -> None:
        self._acked += 1
        if reason.is_failure:
            self.refused += 1

    @property
    def in_flight(self) -> int:
        return self._sent - self._acked

    def publish(self, topic: bytes, payload: bytes) -> None:
        self.client.publish(topic.decode(), payload, qos=1)
        self._sent += 1
        if self._sent % 64 == 0:
            self.client.loop_read()

    def flush(self) -> None:
        self.client.loop_write()

    def read_acks(self, block: bool) -> None:
        self.client.loop(0.05 if block else 0)

    def wait_below(self, limit: int) -> None:
        while self.in_flight > limit:
            self.read_acks(block=True)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop(0.05)


Publisher = RawPublisher | PahoPublisher


def _connect(plan: PublishPlan) -> Publisher:
    address = BrokerAddress.from_url(plan.mqtt_url)
    if plan.client == "paho":
        return PahoPublisher(address, plan.client_id, plan.window)
    return RawPublisher(address, plan.client_id, plan.window)


def _ticks(rate: float | None) -> Iterator[int]:
    """How many messages are due at each 5 ms tick (all of them at once at full speed)."""
    if rate is None:
        yield 1 << 62
        return
    start = time.monotonic()
    done = 0
    tick = 0
    while True:
        due = int((time.monotonic() - start) * rate)
        yield due - done
        done = due
        tick += 1
        time.sleep(max(0.0, start + tick * 0.005 - time.monotonic()))


def publish(plan: PublishPlan, pub: Publisher) -> PublishResult:
    telemetry = Telemetry(plan)
    window = pub.window
    refill = window - max(1, window // 4)
    cpu0 = time.process_time()
    started = time.time()
    sent = 0
    for due in _ticks(plan.rate):
        for _ in range(min(due, plan.messages - sent)):
            if pub.in_flight >= window:
                pub.wait_below(refill)
            topic, payload = telemetry.message(sent)
            pub.publish(topic, payload)
            sent += 1
        pub.flush()
        pub.read_acks(block=False)
        if sent >= plan.messages:
            break
    published = time.time()
    pub.wait_below(0)
    acknowledged = time.time()
    return PublishResult(
        messages=sent,
        readings=sent * plan.readings_per_message,
        started=started,
        published=published,
        acknowledged=acknowledged,
        refused=pub.refused,
        cpu_seconds=time.process_time() - cpu0,
        window=window,
    )


def publisher_main(plan: PublishPlan, conn: Connection) -> None:
    """Entry point of the publisher process."""
    # Ctrl-C reaches the whole process group: the parent stops this process itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        pub = _connect(plan)
        conn.send(("ready", pub.window))
        while True:
            command = conn.recv()
            if command == "probe":
                pub.publish(plan.probe_topic.encode(), b"online")
                pub.wait_below(0)
                conn.send(("probed", None))
            elif command == "go":
                result = publish(plan, pub)
                conn.send(("done", asdict(result)))
            elif command == "stop":
                break
        pub.close()
    except BaseException:
        with contextlib.suppress(OSError):
            conn.send(("error", traceback.format_exc()))
        raise


class PublisherProcess:
    """The parent's handle on a publisher process."""

    def __init__(self, plan: PublishPlan) -> None:
        # spawn: a fresh interpreter, none of the parent's threads or sockets.
        ctx = multiprocessing.get_context("spawn")
        self.plan = plan
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(
            target=publisher_main, args=(plan, child), name="bench-publisher", daemon=True
        )
        self._process.start()
        child.close()
        try:
            self.window = int(self._expect("ready", 60))
        except BaseException:
            self.close()
            raise

    def _expect(self, what: str, timeout: float) -> Any:
        if not self._conn.poll(timeout):
            raise LoadError(f"publisher process: no {what!r} within {timeout:.0f}s")
        kind, value = self._conn.recv()
        if kind == "error":
            raise LoadError(f"publisher process failed:\n{value}")
        if kind != what:
            raise LoadError(f"publisher process: expected {what!r}, got {kind!r}")
        return value

    def probe(self) -> None:
        self._conn.send("probe")
        self._expect("probed", 30)

    def go(self) -> None:
        self._conn.send("go")

    def poll_result(self, timeout: float = 0) -> PublishResult | None:
        if not self._conn.poll(timeout):
            return None
        return PublishResult(**self._expect("done", 0))

    def close(self) -> None:
        """Stop the process: politely, then by its pid."""
        with contextlib.suppress(OSError):
            self._conn.send("stop")
        self._process.join(5)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(5)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._conn.close()
