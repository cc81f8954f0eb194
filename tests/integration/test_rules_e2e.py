"""End to end: readings and events over MQTT → the platform's ingest and rule engine →
alerts, their audit trail, rule state and vital signs in PostgreSQL, vitals on MQTT."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import orjson
import psycopg
import pytest
from psycopg.types.json import Jsonb

from cityvitals.app import Endpoints, Platform
from cityvitals.services import LocalMosquitto
from cityvitals.settings import Settings
from ingest.mqtt import BrokerAddress, make_client
from tests.support import Publisher, rows, scalar, wait_until

pytestmark = pytest.mark.slow

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)


def register(database: str) -> None:
    with psycopg.connect(database) as conn:
        for device_id, profile, attributes in (
            (
                "wl-1",
                "water_level",
                {
                    "warning_level_m": 4.5,
                    "guaranteed_level_m": 5.2,
                    "historical_max_m": 6.0,
                    "approach_margin_m": 0.3,
                },
            ),
            ("el-1", "elevator", {"floors": 18}),
        ):
            conn.execute(
                "INSERT INTO devices (device_id, profile, district, name, attributes) "
                "VALUES (%s, %s, 'd01', %s, %s)",
                (device_id, profile, device_id.upper(), Jsonb(attributes)),
            )


@pytest.fixture
def platform_settings(database: str, broker: LocalMosquitto, topic_root: str) -> Settings:
    register(database)
    return Settings(
        database_url=database,
        mqtt_url=broker.url,
        topic_root=topic_root,
        client_id=f"ingest-{topic_root}",
        flush_interval=0.02,
        rules_tick=0.2,
        vitals_interval=0.5,
        registry_refresh=1.0,
        stats_interval=1.0,
    )


@pytest.fixture
def start_platform(platform_settings: Settings) -> Iterator[list[Platform]]:
    started: list[Platform] = []
    yield started
    for p in started:
        p.stop()


def run(settings: Settings, started: list[Platform]) -> Platform:
    assert settings.database_url and settings.mqtt_url
    platform = Platform(settings, Endpoints(settings.database_url, settings.mqtt_url, False))
    platform.start()
    started.append(platform)
    assert platform.rules is not None and platform.rules.ready.wait(20)
    assert platform.ingest.ready.wait(20)
    wait_until(lambda: platform.ingest._receiver.subscribed.is_set(), what="ingest subscribed")
    return platform


def level(pub: Publisher, root: str, minutes: float, value: float) -> None:
    ts = T0 + timedelta(minutes=minutes)
    pub.send(
        f"{root}/d01/water_level/wl-1/telemetry",
        {"ts": ts.isoformat(), "values": {"level_m": value}},
    )


def alert_events(database: str) -> list[tuple[str, int]]:
    return [
        (to, lvl)
        for to, lvl in rows(
            database,
            "SELECT e.to_state, e.level FROM alert_events e JOIN alerts a ON a.id = e.alert_id "
            "WHERE a.rule = 'water_level' ORDER BY e.id",
        )
    ]


def test_rising_river_escalates_one_alert_and_vitals_follow(
    platform_settings: Settings,
    start_platform: list[Platform],
    database: str,
    broker: LocalMosquitto,
    topic_root: str,
) -> None:
    vitals: list[bytes] = []
    address = BrokerAddress.from_url(broker.url)
    watcher, props = make_client(address, f"watch-{uuid.uuid4().hex[:6]}")
    got = threading.Event()

    def on_message(client: object, userdata: object, msg: object) -> None:
        vitals.append(msg.payload)  # type: ignore[attr-defined]
        got.set()

    watcher.on_message = on_message
    watcher.connect(address.host, address.port, properties=props)
    watcher.subscribe(f"{topic_root}/vitals/#", qos=1)
    watcher.loop_start()

    platform = run(platform_settings, start_platform)
    pub = Publisher(broker.url)
    for minutes, value in ((0, 3.0), (5, 4.3), (10, 4.6), (15, 5.3)):
        level(pub, topic_root, minutes, value)
        pub.flush()
        wait_until(
            lambda m=minutes: (
                scalar(database, "SELECT count(*) FROM readings WHERE device_id = 'wl-1'")
                >= m // 5 + 1
            )
        )
    wait_until(
        lambda: alert_events(database) == [("firing", 1), ("firing", 2), ("firing", 3)],
        what="blue → yellow → orange on one alert",
    )
    assert scalar(database, "SELECT count(*) FROM alerts WHERE rule = 'water_level'") == 1
    assert scalar(database, "SELECT max_level FROM alerts WHERE rule = 'water_level'") == 3
    assert (
        scalar(database, "SELECT state FROM rule_state WHERE fingerprint = 'water_level:wl-1'")
        == "firing"
    )
    # The district's and the city's flood vital sign are orange, on MQTT too.
    wait_until(
        lambda: (
            scalar(
                database,
                "SELECT max(level) FROM vital_signs WHERE scope = 'd01' AND domain = 'flood'",
            )
            == 3
        ),
        what="flood vital sign orange in d01",
    )
    wait_until(
        lambda: (
            scalar(
                database,
                "SELECT max(level) FROM vital_signs WHERE scope = 'city' AND domain = 'flood'",
            )
            == 3
        ),
        what="flood vital sign orange in the city",
    )
    assert got.wait(10)
    payloads = [orjson.loads(v) for v in vitals]
    assert any(p["scope"] == "d01" and p["domains"]["flood"]["level"] == "orange" for p in payloads)
    watcher.disconnect()
    watcher.loop_stop()

    # Trapped passengers are red at once.
    pub.send(
        f"{topic_root}/d01/elevator/el-1/event",
        {
            "ts": (T0 + timedelta(minutes=16)).isoformat(),
            "type": "trapped_passengers",
            "detail": {"floor": 7},
        },
    )
    pub.flush()
    try:
        wait_until(
            lambda: (
                scalar(
                    database,
                    "SELECT level FROM alerts WHERE device_id = 'el-1' AND condition = 'firing'",
                )
                == 4
            ),
            what="trapped passengers red",
        )
    except AssertionError as exc:  # say where the event stopped
        assert platform.rules is not None
        raise AssertionError(
            f"{exc}; events stored: {rows(database, 'SELECT type, ts FROM events')}; "
            f"el-1 alerts: {rows(database, 'SELECT * FROM alerts WHERE device_id = %s', 'el-1')}; "
            f"ingest: {platform.ingest.counters}; rules: {platform.rules.stats}, "
            f"last error {platform.rules.last_error!r}, backlog {platform.rules.backlog}"
        ) from None

    # The river falls back below the approach mark and stays there for clear_for (15 m).
    for minutes in (20, 30, 40):
        level(pub, topic_root, minutes, 3.0)
    pub.close()
    wait_until(
        lambda: alert_events(database)[-1:] == [("resolved", 3)],
        timeout=20,
        what="the river alert resolved",
    )
    assert scalar(database, "SELECT count(*) FROM rule_state WHERE rule = 'water_level'") == 0
    assert scalar(database, "SELECT condition FROM alerts WHERE rule = 'water_level'") == "resolved"


def test_restart_neither_re_raises_nor_forgets(
    platform_settings: Settings,
    start_platform: list[Platform],
    database: str,
    broker: LocalMosquitto,
    topic_root: str,
) -> None:
    first = run(platform_settings, start_platform)
    pub = Publisher(broker.url)
    level(pub, topic_root, 0, 4.6)
    pub.flush()
    wait_until(lambda: alert_events(database) == [("firing", 2)], what="yellow alert")
    first.stop()
    start_platform.remove(first)

    second = run(platform_settings, start_platform)
    assert second.rules is not None
    assert "water_level:wl-1" in second.rules.restored
    level(pub, topic_root, 5, 4.7)  # still yellow: nothing new
    pub.flush()
    wait_until(
        lambda: scalar(database, "SELECT count(*) FROM readings WHERE device_id = 'wl-1'") == 2
    )
    for minutes in (10, 30):
        level(pub, topic_root, minutes, 3.0)
    pub.close()
    wait_until(
        lambda: alert_events(database) == [("firing", 2), ("resolved", 2)],
        timeout=20,
        what="resolved after the restart, never raised twice",
    )
