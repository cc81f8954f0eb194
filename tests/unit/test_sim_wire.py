"""simulators.wire against a scripted fake broker: the bytes on the wire, CONNACK
refusals, the window, PUBACK parsing, keepalive, and resending after a lost connection.

The real-Mosquitto behaviour is in tests/integration/test_sim_wire.py.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from simulators.wire import (
    FLUSH_BYTES,
    MAX_FRUITLESS_RECONNECTS,
    PublishError,
    RefusedError,
    Will,
    WireClient,
)

TIMEOUT = 5.0


@dataclass
class Packet:
    first: int
    body: bytes

    @property
    def kind(self) -> int:
        return self.first >> 4


@dataclass
class Publish:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    mid: int | None


def parse_publish(p: Packet) -> Publish:
    assert p.kind == 3, f"expected PUBLISH, got packet type {p.kind}"
    qos = (p.first >> 1) & 3
    n = int.from_bytes(p.body[:2], "big")
    topic = p.body[2 : 2 + n].decode()
    rest = p.body[2 + n :]
    mid = None
    if qos:
        mid, rest = int.from_bytes(rest[:2], "big"), rest[2:]
    return Publish(topic, rest, qos, bool(p.first & 1), bool(p.first & 8), mid)


class Conn:
    """One accepted connection of the fake broker."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.settimeout(TIMEOUT)
        self.buf = b""

    def _take(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("the client closed the connection")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read(self) -> Packet:
        first = self._take(1)[0]
        length, shift = 0, 0
        while True:
            byte = self._take(1)[0]
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        return Packet(first, self._take(length))

    def read_publishes(self, n: int) -> list[Publish]:
        return [parse_publish(self.read()) for _ in range(n)]

    def connack(self, code: int = 0) -> Packet:
        connect = self.read()
        assert connect.kind == 1
        self.sock.sendall(bytes((0x20, 2, 0, code)))
        return connect

    def puback(self, *mids: int) -> None:
        self.sock.sendall(b"".join(bytes((0x40, 2)) + m.to_bytes(2, "big") for m in mids))

    def close(self) -> None:
        self.sock.close()


class FakeBroker:
    """Accepts connections on a loopback port; a script runs in a thread against them."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(TIMEOUT)
        self.port = self.server.getsockname()[1]
        self.conns: list[Conn] = []
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def accept(self) -> Conn:
        sock, _ = self.server.accept()
        conn = Conn(sock)
        self.conns.append(conn)
        return conn

    def run(self, script: Callable[[FakeBroker], None]) -> None:
        def target() -> None:
            try:
                script(self)
            except BaseException as exc:  # reported by finish()
                self.error = exc

        self._thread = threading.Thread(target=target, daemon=True)
        self._thread.start()

    def finish(self) -> None:
        if self._thread is not None:
            self._thread.join(TIMEOUT * 2)
            assert not self._thread.is_alive(), "the fake broker's script did not finish"
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        for conn in self.conns:
            conn.close()
        self.server.close()


@pytest.fixture
def fake() -> Iterator[FakeBroker]:
    broker = FakeBroker()
    yield broker
    broker.close()


def answer(code: int) -> Callable[[FakeBroker], None]:
    """A script that accepts one connection and answers its CONNECT with `code`."""

    def script(b: FakeBroker) -> None:
        b.accept().connack(code)

    return script


def client(fake: FakeBroker, **kwargs: object) -> WireClient:
    return WireClient("127.0.0.1", fake.port, "sim-test", **kwargs)  # type: ignore[arg-type]


def test_connect_packet_carries_clean_session_credentials_will_and_keepalive(
    fake: FakeBroker,
) -> None:
    seen: list[Packet] = []

    def script(b: FakeBroker) -> None:
        conn = b.accept()
        seen.append(conn.connack())
        assert conn.read().kind == 14  # DISCONNECT

    fake.run(script)
    c = client(
        fake,
        username="sim",
        password="pw",
        keepalive=17,
        will=Will("city/1/rain_gauge/rg-1/status", b"offline", qos=1, retain=True),
    )
    c.close()
    fake.finish()
    body = seen[0].body
    assert body[:6] == b"\x00\x04MQTT"
    assert body[6] == 4  # MQTT 3.1.1
    flags = body[7]
    assert flags & 0x02  # clean session
    assert flags & 0x04 and (flags >> 3) & 3 == 1 and flags & 0x20  # will, QoS 1, retained
    assert flags & 0x80 and flags & 0x40  # user name and password
    assert int.from_bytes(body[8:10], "big") == 17
    payload = body[10:]
    strings = []
    while payload:
        n = int.from_bytes(payload[:2], "big")
        strings.append(payload[2 : 2 + n])
        payload = payload[2 + n :]
    assert strings == [b"sim-test", b"city/1/rain_gauge/rg-1/status", b"offline", b"sim", b"pw"]


def test_anonymous_connect_has_no_credentials_or_will(fake: FakeBroker) -> None:
    seen: list[Packet] = []

    def script(b: FakeBroker) -> None:
        seen.append(b.accept().connack())

    fake.run(script)
    c = client(fake)
    fake.finish()
    c.drop()
    assert seen[0].body[7] == 0x02
    assert seen[0].body[10:] == b"\x00\x08sim-test"


def test_publish_packets_qos_retain_ids_and_long_payloads(fake: FakeBroker) -> None:
    got: list[Publish] = []
    long = bytes(range(256)) * 80  # 20,480 bytes: a three-byte remaining length

    def script(b: FakeBroker) -> None:
        conn = b.accept()
        conn.connack()
        got.extend(conn.read_publishes(4))
        conn.puback(*(p.mid for p in got if p.mid is not None))

    fake.run(script)
    with client(fake) as c:
        c.publish("a/telemetry", b'{"v":1}')
        c.publish("a/status", b"online", retain=True)
        c.publish("a/qos0", b"x", qos=0)
        c.publish("b/" + "t" * 200, long)
        assert c.wait_acknowledged(TIMEOUT)
        assert c.published == 4 and c.acknowledged == 4 and c.in_flight == 0
    fake.finish()
    assert [(p.topic, p.qos, p.retain, p.dup) for p in got] == [
        ("a/telemetry", 1, False, False),
        ("a/status", 1, True, False),
        ("a/qos0", 0, False, False),
        ("b/" + "t" * 200, 1, False, False),
    ]
    assert [p.mid for p in got] == [1, 2, None, 3]
    assert got[0].payload == b'{"v":1}' and got[3].payload == long


def test_publishes_are_buffered_until_flushed_or_large(fake: FakeBroker) -> None:
    arrived = threading.Event()
    got: list[Publish] = []

    def script(b: FakeBroker) -> None:
        conn = b.accept()
        conn.connack()
        got.extend(conn.read_publishes(1))
        arrived.set()
        n = FLUSH_BYTES // 1000 + 1
        got.extend(conn.read_publishes(n))
        conn.puback(*range(1, n + 2))

    fake.run(script)
    with client(fake) as c:
        c.publish("t", b"first")
        assert not arrived.wait(0.3), "a publish went out before a flush"
        c.flush()
        assert arrived.wait(TIMEOUT)
        # Large enough to go out by itself, without flush():
        for _ in range(FLUSH_BYTES // 1000 + 1):
            c.publish("t", b"x" * 1000)
        deadline = time.monotonic() + TIMEOUT
        while len(got) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(got) >= 2
        assert c.wait_acknowledged(TIMEOUT)
    fake.finish()


def test_the_window_bounds_unacknowledged_publishes_and_ids_wrap(fake: FakeBroker) -> None:
    total = 70_000
    window = 50
    ids: list[int] = []
    most_in_flight = [0]

    def script(b: FakeBroker) -> None:
        conn = b.accept()
        conn.connack()
        while len(ids) < total:
            batch = [p.mid for p in conn.read_publishes(1)]
            ids.extend(m for m in batch if m is not None)
            conn.puback(*(m for m in batch if m is not None))

    fake.run(script)
    with client(fake, window=window) as c:
        for k in range(total):
            c.publish("t", b"%d" % k)
            most_in_flight[0] = max(most_in_flight[0], c.in_flight)
            if k % 100 == 0:
                c.poll()
        assert c.wait_acknowledged(30)
        assert c.acknowledged == total
    fake.finish()
    assert most_in_flight[0] <= window
    assert ids[:3] == [1, 2, 3]
    assert ids[65534] == 65535 and ids[65535] == 1  # 0 is never a packet id
    assert min(ids) == 1 and max(ids) == 65535


def test_pubacks_split_across_reads_and_unknown_ids_are_counted_once(fake: FakeBroker) -> None:
    def script(b: FakeBroker) -> None:
        conn = b.accept()
        conn.connack()
        conn.read_publishes(3)
        # A PUBACK split over two writes, an id never sent, and a duplicate.
        conn.sock.sendall(b"\x40\x02\x00\x01\x40")
        time.sleep(0.2)
        conn.sock.sendall(b"\x02\x00\x02\x40\x02\x00\x63\x40\x02\x00\x02\x40\x02\x00\x03")

    fake.run(script)
    c = client(fake)
    for k in range(3):
        c.publish("t", b"%d" % k)
    assert c.wait_acknowledged(TIMEOUT)
    assert c.acknowledged == 3
    fake.finish()
    c.drop()


def test_lost_connection_is_made_again_and_unacknowledged_publishes_resent_with_dup(
    fake: FakeBroker,
) -> None:
    first: list[Publish] = []
    second: list[Publish] = []

    def script(b: FakeBroker) -> None:
        conn = b.accept()
        conn.connack()
        first.extend(conn.read_publishes(3))
        conn.puback(first[0].mid or 0)  # only the first gets through
        time.sleep(0.2)
        conn.close()
        again = b.accept()
        again.connack()
        second.extend(again.read_publishes(3))
        again.puback(*(p.mid or 0 for p in second))
        assert again.read().kind == 14  # DISCONNECT

    fake.run(script)
    c = client(fake)
    for k in range(3):
        c.publish("t", b"m%d" % k)
    c.flush()
    deadline = time.monotonic() + TIMEOUT
    while c.reconnects == 0 and time.monotonic() < deadline:
        c.poll(0.1)
    c.publish("t", b"m3")
    assert c.wait_acknowledged(TIMEOUT)
    c.close()
    fake.finish()
    assert [p.payload for p in first] == [b"m0", b"m1", b"m2"]
    assert [(p.payload, p.mid, p.dup) for p in second] == [
        (b"m1", 2, True),
        (b"m2", 3, True),
        (b"m3", 4, False),
    ]
    assert c.reconnects == 1 and c.resent == 2 and c.acknowledged == 4


def test_publishes_never_written_before_the_loss_are_sent_without_dup(fake: FakeBroker) -> None:
    second: list[Publish] = []
    closed = threading.Event()

    def script(b: FakeBroker) -> None:
        conn = b.accept()
        conn.connack()
        conn.close()
        closed.set()
        again = b.accept()
        again.connack()
        second.extend(again.read_publishes(2))
        again.puback(1, 2)

    fake.run(script)
    c = client(fake)
    assert closed.wait(TIMEOUT)
    time.sleep(0.1)
    c.publish("t", b"a")  # buffered, never written on the first connection
    c.publish("t", b"b")
    c.poll(0.2)  # reads first: finds the connection gone before writing into it
    assert c.reconnects == 1
    assert c.wait_acknowledged(TIMEOUT)
    fake.finish()
    c.drop()
    assert [(p.payload, p.dup) for p in second] == [(b"a", False), (b"b", False)]


def test_keepalive_sends_pingreq_when_idle(fake: FakeBroker) -> None:
    pings = threading.Event()

    def script(b: FakeBroker) -> None:
        conn = b.accept()
        conn.connack()
        packet = conn.read()
        assert packet.kind == 12  # PINGREQ
        conn.sock.sendall(b"\xd0\x00")
        pings.set()
        assert conn.read().kind == 14

    fake.run(script)
    c = client(fake, keepalive=1)
    deadline = time.monotonic() + TIMEOUT
    while not pings.is_set() and time.monotonic() < deadline:
        c.poll(0.1)
    assert pings.is_set()
    c.poll(0.2)
    assert c.reconnects == 0
    c.close()
    fake.finish()


def test_a_broker_that_stops_answering_pings_counts_as_lost(fake: FakeBroker) -> None:
    def script(b: FakeBroker) -> None:
        conn = b.accept()
        conn.connack()
        assert conn.read().kind == 12  # PINGREQ, never answered
        b.accept().connack()

    fake.run(script)
    c = client(fake, keepalive=1)
    deadline = time.monotonic() + TIMEOUT
    while c.reconnects == 0 and time.monotonic() < deadline:
        c.poll(0.1)
    assert c.reconnects == 1
    fake.finish()
    c.drop()


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (1, "unacceptable protocol version"),
        (2, "identifier was rejected"),
        (3, "unavailable"),
        (4, "bad user name or password"),
        (5, "not authorised"),
        (77, "return code 77"),
    ],
)
def test_connack_refusals_are_explained(fake: FakeBroker, code: int, words: str) -> None:
    fake.run(answer(code))
    with pytest.raises(RefusedError) as err:
        client(fake)
    fake.finish()
    message = str(err.value)
    assert words in message
    assert f"127.0.0.1:{fake.port}" in message and "sim-test" in message
    if code in (4, 5):
        assert "user name and password in the MQTT URL" in message


def test_a_refusal_on_reconnect_is_not_retried(fake: FakeBroker) -> None:
    def script(b: FakeBroker) -> None:
        b.accept().connack()
        b.conns[0].close()
        b.accept().connack(5)

    fake.run(script)
    c = client(fake)
    c.publish("t", b"x")
    with pytest.raises(PublishError, match=r"could not reconnect.*not authorised"):
        c.wait_acknowledged(TIMEOUT)
    fake.finish()
    c.drop()


def test_a_silent_server_times_out_with_a_clear_error(fake: FakeBroker) -> None:
    def script(b: FakeBroker) -> None:
        conn = b.accept()
        conn.read()  # CONNECT, never answered
        time.sleep(1.0)

    fake.run(script)
    with pytest.raises(PublishError, match=r"did not answer the simulator's CONNECT within 0.3 s"):
        client(fake, connect_timeout=0.3)
    fake.finish()


def test_a_server_that_hangs_up_on_connect_is_named(fake: FakeBroker) -> None:
    def script(b: FakeBroker) -> None:
        conn = b.accept()
        conn.read()
        conn.close()

    fake.run(script)
    with pytest.raises(PublishError, match="closed the connection before answering CONNECT"):
        client(fake)
    fake.finish()


def test_nothing_listening_is_a_clear_error() -> None:
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
    with pytest.raises(
        PublishError, match=rf"cannot connect to the MQTT broker at 127\.0\.0\.1:{port}"
    ):
        WireClient("127.0.0.1", port, "sim-test")


def test_an_unknown_host_is_a_clear_error() -> None:
    with pytest.raises(
        PublishError, match=r"cannot resolve the MQTT broker at no-such-host\.invalid"
    ):
        WireClient("no-such-host.invalid", 1883, "sim-test")


def test_bad_arguments_are_rejected_before_connecting() -> None:
    with pytest.raises(ValueError, match="window"):
        WireClient("127.0.0.1", 1, "x", window=0)
    with pytest.raises(ValueError, match="window"):
        WireClient("127.0.0.1", 1, "x", window=65536)
    with pytest.raises(ValueError, match="keepalive"):
        WireClient("127.0.0.1", 1, "x", keepalive=0)
    with pytest.raises(ValueError, match="needs a user name"):
        WireClient("127.0.0.1", 1, "x", password="pw")


def test_qos_2_is_refused(fake: FakeBroker) -> None:
    fake.run(answer(0))
    c = client(fake)
    fake.finish()
    with pytest.raises(ValueError, match="QoS 0 or 1"):
        c.publish("t", b"x", qos=2)
    c.drop()
    with pytest.raises(PublishError, match="closed"):
        c.publish("t", b"x")


def test_a_broker_that_keeps_hanging_up_on_a_resent_message_ends_it(fake: FakeBroker) -> None:
    def script(b: FakeBroker) -> None:
        for _ in range(MAX_FRUITLESS_RECONNECTS + 1):
            conn = b.accept()
            conn.connack()
            conn.read_publishes(1)
            conn.close()
        b.accept().connack()  # the last straw: the client gives up after this CONNACK

    fake.run(script)
    c = client(fake)
    c.publish("t", b"too large for this broker")
    with pytest.raises(PublishError, match=r"closed the connection 6 times in a row"):
        c.wait_acknowledged(TIMEOUT)
    fake.finish()
    assert c.reconnects == MAX_FRUITLESS_RECONNECTS + 1
    with pytest.raises(PublishError, match="is closed"):
        c.poll()
    assert not c.close()


@pytest.mark.parametrize("topic", ["", "city/+/x", "city/#", "a\x00b"])
def test_topics_one_cannot_publish_to_are_refused(fake: FakeBroker, topic: str) -> None:
    fake.run(answer(0))
    c = client(fake)
    fake.finish()
    with pytest.raises(ValueError, match="not a topic one can publish to"):
        c.publish(topic, b"x")
    c.drop()
