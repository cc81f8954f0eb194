"""Wiring: settings → services → schema → ingest (and, later, rules and alerts)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from cityvitals.api_server import ApiServer, build_app
from cityvitals.db import UpgradeResult, upgrade
from cityvitals.notify_runtime import Notifications
from cityvitals.rollups import RollupRefresher
from cityvitals.rules_runtime import RuleProcess, RuleRuntime
from cityvitals.services import LocalMosquitto, LocalPostgres
from cityvitals.settings import Settings
from devices.profile import ProfileSet, load_profiles
from ingest.service import IngestConfig, IngestService
from rules.config import load_rules

log = logging.getLogger(__name__)

SERVICES_FILE = "services.json"


@dataclass(frozen=True)
class Endpoints:
    database_url: str
    mqtt_url: str
    local: bool
    """True when the URLs point at services this process started."""


def _saved(data_dir: Path) -> dict[str, object]:
    path = data_dir / SERVICES_FILE
    try:
        loaded = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _saved_port(data_dir: Path, key: str) -> int | None:
    value = _saved(data_dir).get(key)
    return value if isinstance(value, int) else None


@contextlib.contextmanager
def endpoints(settings: Settings) -> Iterator[Endpoints]:
    """The configured URLs, or local PostgreSQL/Mosquitto started for as long as needed.

    Local services keep their data and ports in `data_dir`, so the demo's data
    and the ingest's persistent MQTT session survive a restart.
    """
    with contextlib.ExitStack() as stack:
        data_dir = settings.data_dir.resolve()
        db_url, mqtt_url = settings.database_url, settings.mqtt_url
        started = {}
        if db_url is None:
            pg = LocalPostgres(data_dir / "postgres", port=_saved_port(data_dir, "postgres_port"))
            log.info("starting local PostgreSQL in %s", pg.directory)
            pg.start()
            stack.callback(pg.stop)
            db_url = pg.url()
            started["postgres_port"] = pg.port
        if mqtt_url is None:
            broker = LocalMosquitto(
                data_dir / "mosquitto", port=_saved_port(data_dir, "mosquitto_port")
            )
            log.info("starting local Mosquitto in %s", broker.directory)
            broker.start()
            stack.callback(broker.stop)
            mqtt_url = broker.url
            started["mosquitto_port"] = broker.port
        if started:
            record = data_dir / SERVICES_FILE
            record.write_text(
                json.dumps(
                    {**started, "database_url": db_url, "mqtt_url": mqtt_url, "pid": os.getpid()}
                )
            )
        yield Endpoints(db_url, mqtt_url, bool(started))


def recorded_endpoints(settings: Settings) -> tuple[str | None, str | None]:
    """URLs from the settings, else those a running local platform recorded."""
    saved = _saved(settings.data_dir.resolve())
    db = settings.database_url or saved.get("database_url")
    mqtt = settings.mqtt_url or saved.get("mqtt_url")
    return (db if isinstance(db, str) else None, mqtt if isinstance(mqtt, str) else None)


def ingest_config(settings: Settings, ends: Endpoints) -> IngestConfig:
    return IngestConfig(
        database_url=ends.database_url,
        mqtt_url=ends.mqtt_url,
        topic_root=settings.topic_root,
        districts=tuple(settings.districts),
        client_id=settings.client_id,
        batch_size=settings.batch_size,
        flush_interval=settings.flush_interval,
        max_in_flight=settings.max_in_flight,
        max_payload_bytes=settings.max_payload_bytes,
        dead_letter_keep_bytes=settings.dead_letter_keep_bytes,
        future_tolerance=settings.future_tolerance,
        registry_refresh=settings.registry_refresh,
        reconnect_max_delay=settings.reconnect_max_delay,
        stats_interval=settings.stats_interval,
    )


class Platform:
    """The running platform: schema brought up to date, the ingest loop, the rule engine,
    the notifications."""

    def __init__(self, settings: Settings, ends: Endpoints):
        self.settings = settings
        self.endpoints = ends
        self.profiles: ProfileSet = load_profiles(settings.profile_dirs)
        self.schema: UpgradeResult = upgrade(ends.database_url)
        self.rules: RuleProcess | None = None
        if settings.rules_enabled:
            self.rules = RuleProcess(
                RuleRuntime(
                    load_rules(self.profiles, settings.rule_dirs),
                    self.profiles,
                    ends.database_url,
                    ends.mqtt_url,
                    topic_root=settings.topic_root,
                    tick_interval=settings.rules_tick,
                    vitals_interval=settings.vitals_interval,
                    registry_refresh=settings.registry_refresh,
                    timezone=settings.timezone,
                )
            )
        # Plain PostgreSQL has no continuous aggregates: the platform keeps the hourly
        # rollup the dashboards read (migration 0007) up to date itself.
        self.rollups: RollupRefresher | None = None
        if self.schema.flavor == "plain":
            self.rollups = RollupRefresher(ends.database_url)
        sink = self.rules.submit if self.rules is not None else None
        self.ingest = IngestService(ingest_config(settings, ends), self.profiles, sink)
        self.notifications: Notifications | None = None
        if settings.notify_enabled:
            self.notifications = Notifications(settings, ends.database_url, ends.mqtt_url)
        self._thread: threading.Thread | None = None
        self.api: ApiServer | None = None
        if settings.api_enabled:
            self.api = ApiServer(
                build_app(settings, ends.database_url),
                settings.api_host,
                settings.api_port,
                settings.log_level,
            )

    def start(self) -> None:
        # The rule process is forked: first, before this process has threads of its own.
        if self.rules is not None:
            self.rules.start()
        if self.notifications is not None:
            self.notifications.start()
        if self.api is not None:
            self.api.start()
        if self.rollups is not None:
            self.rollups.start()
        self._thread = threading.Thread(target=self.ingest.run, name="ingest", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30) -> None:
        self.ingest.stop()
        if self._thread is not None:
            self._thread.join(timeout)
        if self.rules is not None:
            self.rules.stop(timeout)
        if self.api is not None:
            self.api.stop()
        if self.notifications is not None:
            self.notifications.stop(timeout)
        if self.rollups is not None:
            self.rollups.stop(timeout)

    def wait(self) -> None:
        """Block until SIGINT/SIGTERM, then stop cleanly."""
        done = threading.Event()

        def _handler(signum: int, frame: FrameType | None) -> None:
            log.info("signal %s: stopping after the batch in hand", signum)
            done.set()

        previous = {s: signal.signal(s, _handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            while not done.wait(0.5):
                if self._thread is not None and not self._thread.is_alive():
                    break
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
            self.stop()
