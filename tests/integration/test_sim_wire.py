"""simulators.wire and the gateway publisher against a real Mosquitto: delivery and
PUBACK counts, the retain flag, the last will, resending after a broker restart,
and clear errors for bad credentials and an unreachable broker."""

from __future__ import annotations

import queue
import shutil
import ssl
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cityvitals.services import (
    LocalMosquitto,
    ServiceError,
    _reachable_dirs,
    find_mosquitto,
    free_port,
    wait_for_port,
)
from simulators.model import WireMessage
from simulators.publish import MqttPublisher, PublishError
from simulators.wire import RefusedError, Will, WireClient
from tests.support import wait_until

pytestmark = pytest.mark.slow

T0 = datetime(2026, 11, 25, tzinfo=UTC)


class Subscriber:
    """A paho MQTT 3.1.1 subscriber that collects (topic, payload, retain)."""

    def __init__(
        self, port: int, topic: str, client_id: str | None = None, clean: bool = True
    ) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"test-sub-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv311,
            clean_session=clean,
        )
        self.client.reconnect_delay_set(1, 2)
        self.messages: queue.Queue[tuple[str, bytes, bool]] = queue.Queue()
        self.subscribed = threading.Event()
        self.topic = topic
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda c, u, mid, rc, p: self.subscribed.set()
        self.client.on_message = lambda c, u, m: self.messages.put(
            (m.topic, bytes(m.payload), bool(m.retain))
        )
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        assert self.subscribed.wait(10), "the subscriber did not get its SUBACK"

    def _on_connect(self, c: mqtt.Client, u: object, f: object, rc: object, p: object) -> None:
        c.subscribe(self.topic, qos=1)

    def take(self, n: int, timeout: float = 30.0) -> list[tuple[str, bytes, bool]]:
        deadline = time.monotonic() + timeout
        out: list[tuple[str, bytes, bool]] = []
        while len(out) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"received {len(out)} of {n} messages")
            try:
                out.append(self.messages.get(timeout=left))
            except queue.Empty:
                continue
        return out

    def take_all(self, payloads: set[bytes], timeout: float = 60.0) -> set[bytes]:
        """Receive until every payload of `payloads` came (duplicates allowed); what came."""
        deadline = time.monotonic() + timeout
        seen: set[bytes] = set()
        while not payloads <= seen and time.monotonic() < deadline:
            try:
                seen.add(self.messages.get(timeout=0.2)[1])
            except queue.Empty:
                continue
        return seen

    def nothing_more(self, wait: float = 0.5) -> bool:
        time.sleep(wait)
        return self.messages.empty()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def own_broker() -> Iterator[LocalMosquitto]:
    """A broker of the test's own, which it may restart (outside pytest's basetemp: see
    the services_dir fixture)."""
    directory = Path(tempfile.mkdtemp(prefix="cityvitals-wire-"))
    broker = LocalMosquitto(directory / "mosquitto")
    broker.start()
    yield broker
    broker.stop()
    shutil.rmtree(directory, ignore_errors=True)


def test_publishes_arrive_in_order_and_every_puback_is_counted(broker: LocalMosquitto) -> None:
    root = f"wire-{uuid.uuid4().hex[:8]}"
    sub = Subscriber(broker.port, f"{root}/#")
    n = 5000
    with WireClient("127.0.0.1", broker.port, f"test-{root}", window=500) as client:
        for k in range(n):
            client.publish(f"{root}/d{k % 7}/telemetry", b'{"k":%d}' % k)
            if k % 64 == 0:
                client.poll()
        assert client.wait_acknowledged(30)
        assert client.published == n and client.acknowledged == n and client.in_flight == 0
    got = sub.take(n)
    sub.close()
    for d in range(7):
        mine = [payload for topic, payload, _ in got if topic == f"{root}/d{d}/telemetry"]
        assert mine == [b'{"k":%d}' % k for k in range(d, n, 7)]
    assert not any(retain for _, _, retain in got)


def test_retained_status_reaches_a_late_subscriber(broker: LocalMosquitto) -> None:
    root = f"wire-{uuid.uuid4().hex[:8]}"
    with WireClient("127.0.0.1", broker.port, f"test-{root}") as client:
        client.publish(f"{root}/rg-1/status", b"online", retain=True)
        client.publish(f"{root}/rg-1/telemetry", b"{}")
        assert client.wait_acknowledged(10)
    late = Subscriber(broker.port, f"{root}/#")
    assert late.take(1) == [(f"{root}/rg-1/status", b"online", True)]
    assert late.nothing_more()
    late.close()
    with WireClient("127.0.0.1", broker.port, f"test-{root}") as client:
        client.publish(f"{root}/rg-1/status", b"", retain=True)  # clear it again


def test_the_will_is_published_when_the_connection_drops(broker: LocalMosquitto) -> None:
    root = f"wire-{uuid.uuid4().hex[:8]}"
    status = f"{root}/rg-1/status"
    sub = Subscriber(broker.port, f"{root}/#")
    client = WireClient(
        "127.0.0.1", broker.port, f"test-{root}", will=Will(status, b"offline", retain=True)
    )
    client.publish(status, b"online", retain=True)
    assert client.wait_acknowledged(10)
    client.drop()
    assert sub.take(2) == [(status, b"online", False), (status, b"offline", False)]
    sub.close()
    with WireClient("127.0.0.1", broker.port, f"test-{root}") as cleanup:
        cleanup.publish(status, b"", retain=True)


def test_a_clean_close_sends_no_will(broker: LocalMosquitto) -> None:
    root = f"wire-{uuid.uuid4().hex[:8]}"
    sub = Subscriber(broker.port, f"{root}/#")
    with WireClient(
        "127.0.0.1", broker.port, f"test-{root}", will=Will(f"{root}/s", b"offline", retain=False)
    ) as client:
        client.publish(f"{root}/t", b"x")
    assert sub.take(1) == [(f"{root}/t", b"x", False)]
    assert sub.nothing_more()
    sub.close()


def test_after_a_broker_restart_unacknowledged_messages_are_resent(
    own_broker: LocalMosquitto,
) -> None:
    """A persistent-session subscriber receives every message, though the broker went
    away with publishes unacknowledged and came back while the publisher was sending."""
    root = f"wire-{uuid.uuid4().hex[:8]}"
    sub = Subscriber(own_broker.port, f"{root}/#", client_id=f"test-sub-{root}", clean=False)
    client = WireClient("127.0.0.1", own_broker.port, f"test-{root}", reconnect_timeout=30)
    for k in range(500):
        client.publish(f"{root}/t", b"%d" % k)
    assert client.wait_acknowledged(10)

    def restart() -> None:
        own_broker.stop()
        time.sleep(1.0)
        own_broker.start()

    restarter = threading.Thread(target=restart)
    restarter.start()
    wait_until(lambda: not own_broker.running(), 20, "the broker to stop")
    # The broker is down: these go into the buffer and out on a dead connection.
    for k in range(500, 1000):
        client.publish(f"{root}/t", b"%d" % k)
    client.flush()
    assert client.in_flight > 0
    assert client.wait_acknowledged(30), "not everything acknowledged after the restart"
    restarter.join(30)
    assert client.reconnects >= 1
    assert client.acknowledged == 1000
    client.close()
    expected = {b"%d" % k for k in range(1000)}
    assert sub.take_all(expected) == expected
    sub.client.disconnect()
    sub.client.loop_stop()
    # End the persistent session so it does not keep queueing.
    Subscriber(own_broker.port, "x", client_id=f"test-sub-{root}", clean=True).close()


def test_the_gateway_publisher_over_the_wire_client(broker: LocalMosquitto) -> None:
    root = f"wire-{uuid.uuid4().hex[:8]}"
    sub = Subscriber(broker.port, f"{root}/#")
    publisher = MqttPublisher(broker.url, client_prefix="test", gateways=3)
    messages = [
        WireMessage(T0, f"d{k % 10}", "telemetry", f"{root}/d{k % 10}/telemetry", b"%d" % k)
        for k in range(3000)
    ] + [
        WireMessage(T0, f"d{k}", "status", f"{root}/d{k}/status", b"online", retain=True)
        for k in range(10)
    ]
    publisher.publish_all(messages)
    assert publisher.wait_acknowledged(30)
    assert publisher.stats.published == publisher.stats.acknowledged == 3010
    assert publisher.stats.by_channel == {"telemetry": 3000, "status": 10}
    assert publisher.stats.bytes == sum(len(m.payload) for m in messages)
    publisher.close()
    got = sub.take(3010)
    sub.close()
    for d in range(10):
        mine = [p for t, p, _ in got if t == f"{root}/d{d}/telemetry"]
        assert mine == [b"%d" % k for k in range(d, 3000, 10)]  # one device, one connection
    cleanup = MqttPublisher(broker.url, client_prefix="test")
    cleanup.publish_all(
        WireMessage(T0, f"d{k}", "status", f"{root}/d{k}/status", b"", retain=True)
        for k in range(10)
    )
    cleanup.close()


def test_an_unreachable_broker_is_a_clear_error() -> None:
    port = free_port()
    with pytest.raises(
        PublishError, match=rf"cannot connect to the MQTT broker at 127\.0\.0\.1:{port}"
    ):
        MqttPublisher(f"mqtt://127.0.0.1:{port}")


@pytest.fixture(scope="module")
def password_broker() -> Iterator[int]:
    """A Mosquitto that lets in only user `sim` with password `secret`."""
    try:
        binary = find_mosquitto()
    except ServiceError:
        pytest.skip("mosquitto is not installed")
    if shutil.which("mosquitto_passwd") is None:
        pytest.skip("mosquitto_passwd is not installed")
    directory = Path(tempfile.mkdtemp(prefix="cityvitals-wire-auth-"))
    _reachable_dirs(directory)
    passwd = directory / "passwd"
    subprocess.run(
        ["mosquitto_passwd", "-c", "-b", str(passwd), "sim", "secret"], check=True, timeout=30
    )
    passwd.chmod(0o644)
    port = free_port()
    conf = directory / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {passwd}\n"
        "max_queued_messages 1000000\nlog_dest stderr\n"
    )
    with (directory / "log").open("wb") as log:
        process = subprocess.Popen(
            [str(binary), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=log
        )
    try:
        wait_for_port(port, 20, process)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(directory, ignore_errors=True)


def test_good_credentials_publish(password_broker: int) -> None:
    publisher = MqttPublisher(f"mqtt://sim:secret@127.0.0.1:{password_broker}")
    publisher.publish(WireMessage(T0, "d", "telemetry", "wire/d/telemetry", b"{}"))
    assert publisher.wait_acknowledged(10)
    publisher.close()


@pytest.mark.parametrize(
    "url", ["mqtt://sim:wrong@127.0.0.1:{port}", "mqtt://127.0.0.1:{port}"], ids=["bad", "none"]
)
def test_bad_or_missing_credentials_are_a_clear_error(password_broker: int, url: str) -> None:
    with pytest.raises(RefusedError) as err:
        MqttPublisher(url.format(port=password_broker))
    message = str(err.value)
    assert f"127.0.0.1:{password_broker} refused the simulator's connection" in message
    assert "not authorised" in message or "bad user name or password" in message
    assert "check the user name and password in the MQTT URL" in message
    assert "wrong" not in message  # no password in the error


def test_device_mode_gives_each_device_its_own_will(broker: LocalMosquitto) -> None:
    root = f"wire-{uuid.uuid4().hex[:8]}"
    sub = Subscriber(broker.port, f"{root}/+/status")
    publisher = MqttPublisher(broker.url, mode="device", client_prefix="test")
    for d in ("a", "b"):
        publisher.publish(
            WireMessage(T0, d, "status", f"{root}/{d}/status", b"online", retain=True)
        )
        publisher.publish(WireMessage(T0, d, "telemetry", f"{root}/{d}/telemetry", b"{}"))
    assert publisher.wait_acknowledged(10)
    assert publisher.stats.acknowledged == 4
    assert sorted(sub.take(2)) == [
        (f"{root}/a/status", b"online", False),
        (f"{root}/b/status", b"online", False),
    ]
    assert publisher.drop_connection("a")
    assert not publisher.drop_connection("a")
    assert sub.take(1) == [(f"{root}/a/status", b"offline", False)]
    publisher.close()
    assert sub.nothing_more()  # b left with DISCONNECT: no will
    sub.close()
    cleanup = MqttPublisher(broker.url, client_prefix="test")
    cleanup.publish_all(
        WireMessage(T0, d, "status", f"{root}/{d}/status", b"", retain=True) for d in "ab"
    )
    cleanup.close()


@pytest.fixture(scope="module")
def tls_broker() -> Iterator[tuple[int, int, Path]]:
    """A Mosquitto with a plain listener and a TLS one (a self-signed certificate for
    127.0.0.1): (plain port, TLS port, certificate)."""
    try:
        binary = find_mosquitto()
    except ServiceError:
        pytest.skip("mosquitto is not installed")
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    directory = Path(tempfile.mkdtemp(prefix="cityvitals-wire-tls-"))
    _reachable_dirs(directory)
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
            *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    key.chmod(0o644)
    plain, tls = free_port(), free_port()
    conf = directory / "mosquitto.conf"
    conf.write_text(
        f"listener {plain} 127.0.0.1\nallow_anonymous true\n"
        f"listener {tls} 127.0.0.1\ncertfile {cert}\nkeyfile {key}\nallow_anonymous true\n"
        "max_queued_messages 1000000\nlog_dest stderr\n"
    )
    with (directory / "log").open("wb") as log:
        process = subprocess.Popen(
            [str(binary), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=log
        )
    try:
        wait_for_port(plain, 20, process)
        wait_for_port(tls, 20, process)
        yield plain, tls, cert
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(directory, ignore_errors=True)


def test_publishing_over_tls(tls_broker: tuple[int, int, Path]) -> None:
    plain, tls, cert = tls_broker
    root = f"wire-{uuid.uuid4().hex[:8]}"
    sub = Subscriber(plain, f"{root}/#")
    context = ssl.create_default_context(cafile=str(cert))
    n = 3000
    with WireClient("127.0.0.1", tls, f"test-{root}", tls=context, window=200) as client:
        for k in range(n):
            client.publish(f"{root}/t", b"%d" % k + b"." * 300)
            if k % 64 == 0:
                client.poll()
        assert client.wait_acknowledged(30)
        assert client.acknowledged == n
    got = sub.take(n)
    sub.close()
    assert [p for _, p, _ in got] == [b"%d" % k + b"." * 300 for k in range(n)]


def test_an_untrusted_certificate_is_a_clear_error(tls_broker: tuple[int, int, Path]) -> None:
    _, tls, _ = tls_broker
    with pytest.raises(PublishError, match=r"TLS with the MQTT broker at .* failed: .*CERTIFICATE"):
        MqttPublisher(f"mqtts://127.0.0.1:{tls}")
