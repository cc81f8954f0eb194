"""The compose broker's configuration, run for real on a local Mosquitto.

deploy/mosquitto/entrypoint.sh puts the configuration and a password file into a
temporary directory, exactly as it does in the container; the configuration is
adapted only where it names container paths, the listener and the log. Then
real paho MQTT 5 clients check the logins and the ACL.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shutil
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from cityvitals.services import (
    ServiceError,
    _reachable_dirs,
    find_mosquitto,
    free_port,
    wait_for_port,
)

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "mosquitto"
PASSWORDS = {"cityvitals": "platform-secret", "simulator": "simulator-secret"}
DEVICE, OTHER_DEVICE = "rg-1", "rg-2"
DEVICE_PASSWORD = "device-secret"
TIMEOUT = 10.0


@dataclass(frozen=True)
class Broker:
    port: int
    directory: Path


def _mosquitto() -> Path:
    try:
        binary = find_mosquitto()
    except ServiceError:
        pytest.skip("mosquitto is not installed")
    if shutil.which("mosquitto_passwd") is None:
        pytest.skip("mosquitto_passwd is not installed")
    return binary


def adapt(conf: str, directory: Path, port: int) -> str:
    """The container's configuration, with its paths under `directory` and a local listener."""
    out = []
    for line in conf.splitlines():
        key = line.split(" ", 1)[0]
        if key == "listener":
            line = f"listener {port} 127.0.0.1"
        elif key == "log_dest":
            line = "log_dest stderr"
        else:
            line = line.replace("/mosquitto/config/", f"{directory}/config/")
            line = line.replace("/mosquitto/data/", f"{directory}/data/")
        assert line.startswith("#") or "/mosquitto/" not in line, f"unadapted path: {line}"
        out.append(line)
    return "\n".join(out) + "\n"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    binary = _mosquitto()
    directory = tmp_path_factory.mktemp("compose-mosquitto")
    _reachable_dirs(directory)
    env = {
        **os.environ,
        "MOSQUITTO_CONFIG_DIR": str(directory / "config"),
        "MOSQUITTO_DATA_DIR": str(directory / "data"),
        "MQTT_PLATFORM_PASSWORD": PASSWORDS["cityvitals"],
        "MQTT_SIMULATOR_PASSWORD": PASSWORDS["simulator"],
    }
    subprocess.run(
        ["/bin/sh", str(DEPLOY / "entrypoint.sh"), "true"], env=env, check=True, timeout=30
    )
    config = directory / "config"
    assert (config / "passwd").read_text().count("\n") == 2
    # A device account, as an operator would add one with mosquitto_passwd.
    subprocess.run(
        ["mosquitto_passwd", "-b", str(config / "passwd"), DEVICE, DEVICE_PASSWORD],
        check=True,
        timeout=30,
    )
    port = free_port()
    conf = config / "local.conf"
    conf.write_text(adapt((config / "mosquitto.conf").read_text(), directory, port))
    log = directory / "mosquitto.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [str(binary), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=stderr
        )
    try:
        try:
            wait_for_port(port, 20, process)
        except ServiceError as exc:
            raise AssertionError(f"{exc}\n{log.read_text(errors='replace')}") from None
        yield Broker(port, directory)
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Client:
    """A paho MQTT 5 client that connects synchronously and collects what it receives."""

    def __init__(self, broker: Broker, username: str | None, password: str | None = None):
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"test-{username}-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        self.connack: queue.Queue[ReasonCode] = queue.Queue()
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.acks: dict[int, ReasonCode] = {}
        self._acked = threading.Condition()
        self.client.on_connect = lambda c, u, f, rc, p: self.connack.put(rc)
        self.client.on_message = lambda c, u, msg: self.messages.put(msg)
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe
        self.client.connect("127.0.0.1", broker.port, keepalive=30)
        self.client.loop_start()
        self.result = self.connack.get(timeout=TIMEOUT)
        if self.result.is_failure:
            self.close()

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reason_code: ReasonCode,
        properties: object,
    ) -> None:
        with self._acked:
            self.acks[mid] = reason_code
            self._acked.notify_all()

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: object,
    ) -> None:
        with self._acked:
            self.acks[mid] = reason_codes[0]
            self._acked.notify_all()

    def _wait_ack(self, mid: int) -> ReasonCode:
        with self._acked:
            assert self._acked.wait_for(lambda: mid in self.acks, TIMEOUT), "no acknowledgement"
            return self.acks[mid]

    def publish(self, topic: str, payload: bytes) -> ReasonCode:
        """Publish at QoS 1; the broker's PUBACK reason code."""
        return self._wait_ack(self.client.publish(topic, payload, qos=1).mid)

    def subscribe(self, topic: str) -> ReasonCode:
        """Subscribe at QoS 1; the broker's SUBACK reason code."""
        _, mid = self.client.subscribe(topic, qos=1)
        assert mid is not None
        return self._wait_ack(mid)

    def received(self, until: bytes) -> list[tuple[str, bytes]]:
        """Messages received up to and including the one with payload `until`."""
        out = []
        while True:
            msg = self.messages.get(timeout=TIMEOUT)
            out.append((msg.topic, msg.payload))
            if msg.payload == until:
                return out

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()


OpenClient = Callable[[str | None, str | None], "Client"]


@pytest.fixture
def open_client(broker: Broker) -> Iterator[OpenClient]:
    """Connect a client (user name, password); disconnected at the end of the test."""
    opened: list[Client] = []

    def make(username: str | None, password: str | None) -> Client:
        client = Client(broker, username, password)
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.close()


@pytest.fixture
def platform(open_client: OpenClient) -> Client:
    """The platform's login, subscribed to everything under city/."""
    client = open_client("cityvitals", PASSWORDS["cityvitals"])
    assert client.result == 0
    assert not client.subscribe("city/#").is_failure
    return client


def telemetry(device: str) -> str:
    return f"city/d1/rain_gauge/{device}/telemetry"


def sentinel() -> bytes:
    return f"sentinel-{uuid.uuid4().hex}".encode()


def test_anonymous_clients_are_refused(open_client: OpenClient) -> None:
    client = open_client(None, None)
    assert client.result.is_failure
    assert client.result.getName() == "Not authorized"


def test_a_wrong_password_is_refused(open_client: OpenClient) -> None:
    client = open_client("cityvitals", "not-the-password")
    assert client.result.is_failure


def test_a_device_publishes_under_its_own_id(open_client: OpenClient, platform: Client) -> None:
    device = open_client(DEVICE, DEVICE_PASSWORD)
    assert device.result == 0
    payload = sentinel()
    assert device.publish(telemetry(DEVICE), payload) == 0
    assert platform.received(until=payload) == [(telemetry(DEVICE), payload)]


@pytest.mark.parametrize(
    "topic",
    [
        telemetry(OTHER_DEVICE),
        f"{telemetry(DEVICE)}/extra",
        f"other/d1/rain_gauge/{DEVICE}/telemetry",
        "city/d1",
    ],
)
def test_a_device_cannot_publish_elsewhere(
    open_client: OpenClient, platform: Client, topic: str
) -> None:
    device = open_client(DEVICE, DEVICE_PASSWORD)
    forbidden, allowed = b"forbidden", sentinel()
    assert device.publish(topic, forbidden).getName() == "Not authorized"
    assert device.publish(telemetry(DEVICE), allowed) == 0
    # Same client, same QoS: had the first been delivered, it would have come first.
    assert platform.received(until=allowed) == [(telemetry(DEVICE), allowed)]


def test_a_device_reads_nothing(open_client: OpenClient, platform: Client) -> None:
    device = open_client(DEVICE, DEVICE_PASSWORD)
    # Mosquitto may grant the subscription and check reads at delivery instead.
    if device.subscribe("city/#").is_failure:
        return
    simulator = open_client("simulator", PASSWORDS["simulator"])
    payload = sentinel()
    assert simulator.publish(telemetry(OTHER_DEVICE), payload) == 0
    platform.received(until=payload)
    with pytest.raises(queue.Empty):
        device.messages.get(timeout=0.3)


def test_the_simulator_publishes_for_any_device(open_client: OpenClient, platform: Client) -> None:
    simulator = open_client("simulator", PASSWORDS["simulator"])
    payload = sentinel()
    assert simulator.publish(telemetry(OTHER_DEVICE), payload) == 0
    assert platform.received(until=payload) == [(telemetry(OTHER_DEVICE), payload)]


def test_the_platform_publishes_nothing(open_client: OpenClient, platform: Client) -> None:
    assert platform.publish(telemetry(DEVICE), b"from the platform").is_failure


def test_the_compose_health_check_passes(broker: Broker) -> None:
    if shutil.which("mosquitto_sub") is None:
        pytest.skip("mosquitto_sub is not installed")
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    kind, command = compose["services"]["mosquitto"]["healthcheck"]["test"]
    assert kind == "CMD-SHELL"
    command = re.sub(r"-p 1883\b", f"-p {broker.port}", command.replace("$$", "$"))
    env = {**os.environ, "MQTT_PLATFORM_PASSWORD": PASSWORDS["cityvitals"]}
    result = subprocess.run(["/bin/sh", "-c", command], env=env, capture_output=True, timeout=20)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    env["MQTT_PLATFORM_PASSWORD"] = "wrong"
    result = subprocess.run(["/bin/sh", "-c", command], env=env, capture_output=True, timeout=20)
    assert result.returncode != 0
