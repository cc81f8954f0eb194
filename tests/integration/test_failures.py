"""Failure tests: every QoS 1 reading the broker accepted is stored exactly once.

Each test publishes a stream of distinct readings with a real paho client and,
mid-stream, restarts the broker, restarts PostgreSQL, or SIGKILLs the ingest
process; then it checks that the database holds every reading exactly once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
import psycopg
import pytest

from cityvitals.services import LocalMosquitto, LocalPostgres
from ingest.mqtt import BrokerAddress, make_client
from ingest.service import IngestConfig
from tests.conftest import RunningIngest
from tests.support import scalar, wait_until

pytestmark = pytest.mark.slow

BASE_TS = 1_764_000_000_000


class StreamPublisher:
    """Publishes `total` distinct single-reading messages at QoS 1 from a thread.

    The paho client reconnects by itself and resends unacknowledged messages;
    `done()` is true once the broker has acknowledged every one.
    """

    def __init__(
        self, mqtt_url: str, root: str, total: int, devices: int = 20, pace: float = 0.0
    ) -> None:
        assert total < 65535, "paho reuses message ids past 65,535"
        self.address = BrokerAddress.from_url(mqtt_url)
        self.client, props = make_client(self.address, f"pub-{root}")
        self.client.max_inflight_messages_set(200)
        self.client.reconnect_delay_set(1, 1)
        self.client.connect(self.address.host, self.address.port, keepalive=10, properties=props)
        self.acked: set[int] = set()
        self.client.on_publish = lambda client, userdata, mid, rc, props: self.acked.add(mid)
        self.client.loop_start()
        self.root, self.total, self.devices, self.pace = root, total, devices, pace
        self.infos: list[mqtt.MQTTMessageInfo] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        for i in range(self.total):
            device = f"rg-{i % self.devices:03d}"
            payload = orjson.dumps(
                {"ts": BASE_TS + i * 1000, "seq": i // self.devices, "values": {"rain_mm": i % 50}}
            )
            self.infos.append(
                self.client.publish(f"{self.root}/d1/rain_gauge/{device}/telemetry", payload, qos=1)
            )
            if self.pace:
                time.sleep(self.pace)

    def start(self) -> StreamPublisher:
        self.thread.start()
        return self

    def done(self) -> bool:
        # is_published() raises for messages queued while disconnected, though paho
        # resends them after reconnecting: count the broker's PUBACKs instead.
        return not self.thread.is_alive() and len(self.acked) == self.total

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _exactly_once(database: str, total: int) -> None:
    wait_until(
        lambda: scalar(database, "SELECT count(*) FROM readings") >= total,
        timeout=90,
        what=f"{total} readings in the database",
    )
    time.sleep(0.5)  # anything redelivered late must still not duplicate
    assert scalar(database, "SELECT count(*) FROM readings") == total
    assert scalar(database, "SELECT count(DISTINCT (device_id, ts)) FROM readings") == total
    # The values are those published: reading i carries i % 50.
    assert (
        scalar(
            database,
            "SELECT count(*) FROM readings "
            "WHERE value <> ((extract(epoch FROM ts) * 1000 - %s) / 1000)::bigint %% 50",
            BASE_TS,
        )
        == 0
    )


@pytest.fixture
def own_broker(services_dir: Path) -> Iterator[LocalMosquitto]:
    """A broker of this test's own, so restarting it disturbs no other test."""
    broker = LocalMosquitto(services_dir / f"mosquitto-{uuid.uuid4().hex[:8]}")
    broker.start()
    yield broker
    broker.stop()


def test_broker_restart_mid_stream(
    own_broker: LocalMosquitto,
    database: str,
    topic_root: str,
    ingest_config: IngestConfig,
    run_ingest: Callable[[IngestConfig], RunningIngest],
) -> None:
    config = IngestConfig(**{**ingest_config.__dict__, "mqtt_url": own_broker.url})
    running = run_ingest(config)
    total = 3000
    pub = StreamPublisher(own_broker.url, topic_root, total, pace=0.0005).start()
    wait_until(
        lambda: scalar(database, "SELECT count(*) FROM readings") > 300, what="first readings"
    )
    own_broker.restart()
    wait_until(lambda: running.service.connected, timeout=30, what="ingest reconnected")
    wait_until(pub.done, timeout=90, what="publisher acknowledged everything")
    pub.close()
    _exactly_once(database, total)


def test_database_restart_mid_stream(
    postgres: LocalPostgres,
    broker: LocalMosquitto,
    database: str,
    topic_root: str,
    ingest: RunningIngest,
) -> None:
    total = 3000
    pub = StreamPublisher(broker.url, topic_root, total, pace=0.002).start()
    wait_until(
        lambda: scalar(database, "SELECT count(*) FROM readings") > 300, what="first readings"
    )
    postgres.stop()
    time.sleep(3)  # messages keep arriving while the database is away
    assert ingest.service.last_error is not None
    assert "database unavailable" in ingest.service.last_error
    postgres.start()
    wait_until(pub.done, timeout=90, what="publisher acknowledged everything")
    pub.close()
    _exactly_once(database, total)
    assert ingest.service.counters.db_retries > 0


def test_database_down_bounds_memory_and_broker_keeps_the_rest(
    postgres: LocalPostgres,
    broker: LocalMosquitto,
    database: str,
    topic_root: str,
    ingest_config: IngestConfig,
    run_ingest: Callable[[IngestConfig], RunningIngest],
) -> None:
    bound = 200
    config = IngestConfig(**{**ingest_config.__dict__, "max_in_flight": bound, "batch_size": 50})
    running = run_ingest(config)
    postgres.stop()
    total = 2000
    pub = StreamPublisher(broker.url, topic_root, total).start()
    peak = 0
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        peak = max(peak, running.service.backlog)
        time.sleep(0.01)
    # The broker accepted everything, the ingest holds no more than its bound.
    wait_until(pub.done, timeout=30, what="broker acknowledged every publish")
    assert 0 < peak <= bound
    assert running.service.backlog <= bound
    postgres.start()
    pub.close()
    _exactly_once(database, total)


def _ingest_process(
    database: str, broker: LocalMosquitto, root: str, tmp_path: Path
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "CITYVITALS_DATABASE_URL": database,
        "CITYVITALS_MQTT_URL": broker.url,
        "CITYVITALS_TOPIC_ROOT": root,
        "CITYVITALS_CLIENT_ID": f"ingest-{root}",
        "CITYVITALS_BATCH_SIZE": "200",
        "CITYVITALS_DATA_DIR": str(tmp_path / "data"),
    }
    with (tmp_path / "ingest.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "cityvitals", "run"],
            env=env,
            stdout=log,
            stderr=log,
            cwd=tmp_path,
        )


def test_ingest_sigkilled_mid_stream(
    broker: LocalMosquitto,
    database: str,
    topic_root: str,
    tmp_path: Path,
) -> None:
    total = 6000
    proc = _ingest_process(database, broker, topic_root, tmp_path)
    try:
        wait_until(
            lambda: scalar(database, "SELECT count(*) FROM ingest_stats") > 0,
            timeout=30,
            what="ingest process up",
        )
        pub = StreamPublisher(broker.url, topic_root, total, pace=0.0003).start()
        # First kill: wherever the process happens to be.
        wait_until(
            lambda: scalar(database, "SELECT count(*) FROM readings") > 1000,
            timeout=60,
            what="more than 1000 readings",
        )
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        proc = _ingest_process(database, broker, topic_root, tmp_path)
        # Second kill: surely between receipt and commit, while a lock holds its writes.
        wait_until(
            lambda: scalar(database, "SELECT count(*) FROM readings") > 2500,
            timeout=60,
            what="more than 2500 readings",
        )
        with psycopg.connect(database) as blocker:
            blocker.execute("LOCK TABLE readings IN EXCLUSIVE MODE")
            stored = blocker.execute("SELECT count(*) FROM readings").fetchone()
            time.sleep(1.5)
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        assert stored is not None and stored[0] < total, "the kill came too late to test"
        proc = _ingest_process(database, broker, topic_root, tmp_path)
        wait_until(pub.done, timeout=90, what="publisher acknowledged everything")
        pub.close()
        _exactly_once(database, total)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert proc.returncode == 0, (tmp_path / "ingest.log").read_text()[-3000:]
