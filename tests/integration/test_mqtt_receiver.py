"""MqttReceiver against a real Mosquitto: persistent session, acks after commit, the bound,
reconnects and refused logins.

Messages are published with a real paho client (tests.support.Publisher); "committing"
here is the test deciding to call `ack()`, exactly as the ingest does after COMMIT.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cityvitals.services import LocalMosquitto
from ingest.mqtt import BrokerAddress, InboundMessage, MqttReceiver
from tests.support import Publisher, wait_until

pytestmark = pytest.mark.slow

STOP = threading.Event()


def receiver(
    url: str,
    client_id: str,
    root: str,
    max_in_flight: int = 1000,
    keepalive: int = 30,
) -> MqttReceiver:
    return MqttReceiver(
        BrokerAddress.from_url(url),
        client_id,
        [f"{root}/#"],
        max_in_flight=max_in_flight,
        session_expiry=600,
        reconnect_max_delay=1.0,
        keepalive=keepalive,
    )


def take_all(rx: MqttReceiver, n: int, timeout: float = 20) -> list[InboundMessage]:
    """Exactly `n` messages (fails on fewer within `timeout`)."""
    got: list[InboundMessage] = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        got += rx.take(n - len(got), 0.01, STOP)
    assert len(got) == n, f"received {len(got)} of {n}"
    return got


def payloads(messages: list[InboundMessage]) -> list[bytes]:
    return [m.payload for m in messages]


@pytest.fixture
def client_id() -> str:
    return f"rx-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def started() -> Iterator[Callable[[MqttReceiver], MqttReceiver]]:
    """Start receivers; each is stopped at the end of the test."""
    running: list[MqttReceiver] = []

    def start(rx: MqttReceiver) -> MqttReceiver:
        running.append(rx)
        rx.start()
        assert rx.subscribed.wait(15), rx.last_error
        return rx

    yield start
    for rx in running:
        rx.stop()


@pytest.fixture
def pub(broker: LocalMosquitto) -> Iterator[Publisher]:
    publisher = Publisher(broker.url)
    yield publisher
    publisher.close()


def test_receives_in_order_and_only_acked_messages_are_settled(
    broker: LocalMosquitto,
    topic_root: str,
    client_id: str,
    pub: Publisher,
    started: Callable[[MqttReceiver], MqttReceiver],
) -> None:
    rx = started(receiver(broker.url, client_id, topic_root))
    sent = [f"m{i}".encode() for i in range(50)]
    for body in sent:
        pub.send(f"{topic_root}/d/p/dev/telemetry", body)
    pub.flush()
    got = take_all(rx, 50)
    assert payloads(got) == sent
    assert all(m.qos == 1 and m.topic == f"{topic_root}/d/p/dev/telemetry" for m in got)
    assert rx.backlog == 50
    rx.ack(got[:30])  # the first 30 are "committed"
    assert rx.backlog == 20
    rx.stop()
    # The session kept the other 20: the next connection gets them, and only them.
    again = started(receiver(broker.url, client_id, topic_root))
    redelivered = take_all(again, 20)
    assert payloads(redelivered) == sent[30:]
    again.ack(redelivered)
    time.sleep(0.3)
    assert again.queued == 0
    assert again.take(100, 0.2, STOP) == []


def test_the_bound_holds_and_the_broker_keeps_the_rest(
    broker: LocalMosquitto,
    topic_root: str,
    client_id: str,
    pub: Publisher,
    started: Callable[[MqttReceiver], MqttReceiver],
) -> None:
    rx = started(receiver(broker.url, client_id, topic_root, max_in_flight=10))
    sent = [f"m{i}".encode() for i in range(200)]
    for body in sent:
        pub.send(f"{topic_root}/d/p/dev/telemetry", body)
    pub.flush()
    time.sleep(0.5)
    assert rx.backlog == 10
    got: list[InboundMessage] = []
    while len(got) < 200:
        batch = rx.take(7, 0.01, STOP)
        assert rx.backlog <= 10
        got += batch
        rx.ack(batch)
    assert payloads(got) == sent


def test_a_receiver_paused_at_its_bound_past_its_keepalive_stays_connected(
    broker: LocalMosquitto,
    topic_root: str,
    client_id: str,
    pub: Publisher,
    started: Callable[[MqttReceiver], MqttReceiver],
) -> None:
    rx = started(receiver(broker.url, client_id, topic_root, max_in_flight=5, keepalive=1))
    generation = rx.generation
    sent = [f"m{i}".encode() for i in range(30)]
    for body in sent:
        pub.send(f"{topic_root}/d/p/dev/telemetry", body)
    pub.flush()
    time.sleep(3.5)  # paused at the bound for more than 1.5 keepalives
    assert rx.connected.is_set() and rx.generation == generation
    got: list[InboundMessage] = []
    while len(got) < 30:
        batch = rx.take(5, 0.01, STOP)
        got += batch
        rx.ack(batch)
    assert payloads(got) == sent
    assert rx.generation == generation, rx.last_error


def test_broker_restart_redelivers_unacked_and_old_acks_are_not_sent(
    services_dir: Path,
    topic_root: str,
    client_id: str,
    started: Callable[[MqttReceiver], MqttReceiver],
) -> None:
    own = LocalMosquitto(services_dir / f"mosquitto-{uuid.uuid4().hex[:8]}")
    own.start()
    try:
        changes: list[bool] = []
        rx = receiver(own.url, client_id, topic_root)
        rx.on_connection_change = changes.append
        started(rx)
        pub = Publisher(own.url)
        sent = [f"m{i}".encode() for i in range(20)]
        for body in sent:
            pub.send(f"{topic_root}/d/p/dev/telemetry", body)
        pub.flush()
        pub.close()
        first = take_all(rx, 20)
        generation = rx.generation
        own.restart()
        wait_until(lambda: rx.generation > generation + 1, what="a new connection")
        assert rx.subscribed.wait(15)
        again = take_all(rx, 20)
        assert payloads(again) == sent
        assert all(m.generation == rx.generation for m in again)
        # Acks for the old connection's packet ids must not reach the new one, where the
        # same ids now name the redelivered messages: those stay unsettled.
        rx.ack(first)
        rx.stop()
        assert changes[:3] == [True, False, True]
        rx = started(receiver(own.url, client_id, topic_root))
        third = take_all(rx, 20)
        assert payloads(third) == sent
        rx.ack(third)
        rx.stop()
        # Everything is settled now: a fresh connection gets nothing.
        last = started(receiver(own.url, client_id, topic_root))
        assert last.take(100, 0.5, STOP) == []
    finally:
        own.stop()


class PasswordMosquitto(LocalMosquitto):
    """The local broker with anonymous access off and one account."""

    def __init__(self, directory: Path, username: str, password: str) -> None:
        super().__init__(directory)
        self.username, self.password = username, password

    def _write_config(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        passwd = self.directory / "passwd"
        subprocess.run(
            ["mosquitto_passwd", "-c", "-b", str(passwd), self.username, self.password],
            check=True,
            capture_output=True,
            timeout=30,
        )
        super()._write_config()
        text = self.config_file.read_text().replace(
            "allow_anonymous true", f"allow_anonymous false\npassword_file {passwd}"
        )
        self.config_file.write_text(text)


@pytest.fixture
def password_broker(services_dir: Path) -> Iterator[PasswordMosquitto]:
    if shutil.which("mosquitto_passwd") is None:
        pytest.skip("mosquitto_passwd is not installed")
    broker = PasswordMosquitto(
        services_dir / f"mosquitto-pw-{uuid.uuid4().hex[:8]}", "cityvitals", "right-secret"
    )
    broker.start()
    yield broker
    broker.stop()


def test_bad_credentials_are_a_clear_error(
    password_broker: PasswordMosquitto,
    topic_root: str,
    client_id: str,
    started: Callable[[MqttReceiver], MqttReceiver],
) -> None:
    port = password_broker.port
    wrong = receiver(f"mqtt://cityvitals:wrong-secret@127.0.0.1:{port}", client_id, topic_root)
    wrong.start()
    try:
        error = str(wait_until(lambda: wrong.last_error, what="the refusal"))
        assert "refused the connection" in error
        assert "bad user name or password" in error or "not authorized" in error
        assert "CITYVITALS_MQTT_URL" in error
        assert "wrong-secret" not in error
        assert not wrong.connected.is_set()
    finally:
        wrong.stop()
    right = receiver(f"mqtt://cityvitals:right-secret@127.0.0.1:{port}", client_id, topic_root)
    started(right)
    assert right.connected.is_set() and right.last_error is None


def test_unreachable_broker_is_retried_with_a_clear_error(topic_root: str, client_id: str) -> None:
    from cityvitals.services import free_port

    rx = receiver(f"mqtt://127.0.0.1:{free_port()}", client_id, topic_root)
    rx.start()
    try:
        error = str(wait_until(lambda: rx.last_error, what="the connection error"))
        assert "cannot reach MQTT broker 127.0.0.1:" in error
    finally:
        rx.stop()
    assert not rx.connected.is_set()


def test_acks_sent_just_before_stop_reach_the_broker_while_more_is_arriving(
    broker: LocalMosquitto,
    topic_root: str,
    client_id: str,
    pub: Publisher,
    started: Callable[[MqttReceiver], MqttReceiver],
) -> None:
    # The broker keeps sending while the receiver stops, so unread input sits in the
    # socket: closing it then would reset the connection and lose the last PUBACKs.
    sent = [f"m{i}".encode() for i in range(3000)]
    started(receiver(broker.url, client_id, topic_root)).stop()  # the session exists
    for body in sent:
        pub.send(f"{topic_root}/d/p/dev/telemetry", body)
    pub.flush()
    for round_ in range(3):
        # The session's queued messages come before the SUBACK: do not wait for it.
        rx = receiver(broker.url, client_id, topic_root, max_in_flight=2000)
        rx.start()
        try:
            got = take_all(rx, 500)
            assert payloads(got) == sent[round_ * 500 : (round_ + 1) * 500]
            rx.ack(got)
        finally:
            rx.stop()
