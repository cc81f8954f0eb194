"""Test harness: a real PostgreSQL and a real Mosquitto per test session.

Both are started from the installed binaries on free loopback ports under a
temporary directory (see cityvitals.services). Each test gets its own database,
cloned from a migrated template, and its own MQTT topic root. Failure tests
stop, kill and restart these instances; they can, because they own them.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from cityvitals.db import upgrade
from cityvitals.services import LocalMosquitto, LocalPostgres
from devices.profile import ProfileSet, load_profiles
from ingest.service import IngestConfig, IngestService

TEMPLATE = "cv_template"


@pytest.fixture(scope="session")
def services_dir() -> Iterator[Path]:
    """Outside pytest's basetemp: a second pytest session resets that to mode 0700 (as
    root), which would cut the server users off from their data mid-run."""
    directory = Path(tempfile.mkdtemp(prefix="cityvitals-tests-"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres(services_dir: Path) -> Iterator[LocalPostgres]:
    pg = LocalPostgres(services_dir / "postgres", database="postgres", fast_unsafe=True)
    pg.start()
    yield pg
    pg.stop("immediate")


@pytest.fixture(scope="session")
def broker(services_dir: Path) -> Iterator[LocalMosquitto]:
    mq = LocalMosquitto(services_dir / "mosquitto")
    mq.start()
    yield mq
    mq.stop()


@pytest.fixture(scope="session")
def template_db(postgres: LocalPostgres) -> str:
    with psycopg.connect(postgres.url("postgres"), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {TEMPLATE}")
        conn.execute(f"CREATE DATABASE {TEMPLATE}")
    upgrade(postgres.url(TEMPLATE))
    return TEMPLATE


@pytest.fixture
def database(postgres: LocalPostgres, template_db: str) -> Iterator[str]:
    """A fresh, migrated database for one test; its URL."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres.url("postgres"), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {template_db}")
    yield postgres.url(name)
    if postgres.running():
        with psycopg.connect(postgres.url("postgres"), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def empty_database(postgres: LocalPostgres) -> Iterator[str]:
    """A fresh database without the schema."""
    name = f"e_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres.url("postgres"), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield postgres.url(name)
    with psycopg.connect(postgres.url("postgres"), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def topic_root() -> str:
    """A topic root of the test's own, so tests sharing the broker never see each other."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def profiles() -> ProfileSet:
    return load_profiles()


@pytest.fixture
def ingest_config(database: str, broker: LocalMosquitto, topic_root: str) -> IngestConfig:
    return IngestConfig(
        database_url=database,
        mqtt_url=broker.url,
        topic_root=topic_root,
        client_id=f"ingest-{topic_root}",
        batch_size=500,
        flush_interval=0.02,
        registry_refresh=1.0,
        stats_interval=0.5,
        reconnect_max_delay=2.0,
    )


class RunningIngest:
    def __init__(self, service: IngestService) -> None:
        self.service = service
        self.thread = threading.Thread(target=service.run, name="test-ingest", daemon=True)

    def start(self) -> RunningIngest:
        self.thread.start()
        assert self.service.ready.wait(20), "ingest did not start"
        assert self.service._receiver.subscribed.wait(20), "ingest did not subscribe"
        return self

    def stop(self) -> None:
        self.service.stop()
        self.thread.join(30)
        assert not self.thread.is_alive(), "ingest did not stop"


@pytest.fixture
def run_ingest(
    profiles: ProfileSet,
) -> Iterator[Callable[[IngestConfig], RunningIngest]]:
    """Start an ingest service in a thread; stopped at the end of the test."""
    started: list[RunningIngest] = []

    def start(config: IngestConfig) -> RunningIngest:
        running = RunningIngest(IngestService(config, profiles)).start()
        started.append(running)
        return running

    yield start
    for running in started:
        if running.thread.is_alive():
            running.stop()


@pytest.fixture
def ingest(
    run_ingest: Callable[[IngestConfig], RunningIngest], ingest_config: IngestConfig
) -> RunningIngest:
    return run_ingest(ingest_config)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    del config
    for item in items:
        if "integration" in Path(str(item.fspath)).parts:
            item.add_marker(pytest.mark.integration)
