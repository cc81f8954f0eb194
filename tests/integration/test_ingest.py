"""The ingest end to end: real paho publishers → real Mosquitto → IngestService → PostgreSQL."""

from __future__ import annotations

import dataclasses
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from typer.testing import CliRunner

from cityvitals import status as status_view
from cityvitals.cli import app
from cityvitals.services import LocalMosquitto
from devices.profile import ProfileSet
from ingest.mqtt import BrokerAddress, make_client
from ingest.service import IngestConfig, IngestService
from tests.conftest import RunningIngest
from tests.support import Publisher, rows, scalar, wait_until

TS0 = 1_764_036_000_000
"""2025-11-25T02:00:00Z in epoch milliseconds."""
T0 = datetime(2025, 11, 25, 2, 0, tzinfo=UTC)


def at(ms: int) -> datetime:
    return T0 + timedelta(milliseconds=ms - TS0)


@pytest.fixture
def pub(broker: LocalMosquitto) -> Iterator[Publisher]:
    publisher = Publisher(broker.url)
    yield publisher
    publisher.close()


@pytest.fixture
def ingest_config(ingest_config: IngestConfig, request: pytest.FixtureRequest) -> IngestConfig:
    """The harness's config, with overrides given by indirect parametrization."""
    return dataclasses.replace(ingest_config, **getattr(request, "param", {}))


@pytest.fixture
def registered(database: str) -> list[str]:
    """Devices in the registry before the ingest starts (list this fixture before `ingest`)."""
    devices = [
        ("rg-reg", "rain_gauge", "d1", ""),
        ("nm-1", "noise", "minhang", "Park gate"),
    ]
    with psycopg.connect(database) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO devices (device_id, profile, district, name) VALUES (%s, %s, %s, %s)",
            devices,
        )
    return [d for d, _, _, _ in devices]


@pytest.fixture
def guarded_ingest(
    profiles: ProfileSet, ingest_config: IngestConfig
) -> Iterator[tuple[RunningIngest, list[BaseException]]]:
    """An ingest whose thread records the exception that ends it instead of raising it."""
    running = RunningIngest(IngestService(ingest_config, profiles))
    errors: list[BaseException] = []

    def run() -> None:
        try:
            running.service.run()
        except BaseException as exc:  # the test reports it
            errors.append(exc)

    running.thread = threading.Thread(target=run, name="guarded-ingest", daemon=True)
    running.start()
    yield running, errors
    if running.thread.is_alive():
        running.stop()


def count(url: str, table: str, where: str = "true", *args: Any) -> int:
    return int(scalar(url, f"SELECT count(*) FROM {table} WHERE {where}", *args))


def wait_count(url: str, table: str, n: int, where: str = "true", *args: Any) -> None:
    wait_until(
        lambda: count(url, table, where, *args) >= n,
        what=f"{n} row(s) in {table} where {where}",
    )
    # Give the ingest time to store anything it should not have.
    time.sleep(0.2)
    assert count(url, table, where, *args) == n


def settle(ingest: RunningIngest, messages: int) -> None:
    """Wait until the ingest has committed `messages` messages."""
    wait_until(
        lambda: ingest.service.counters.messages >= messages,
        what=f"{messages} messages committed",
    )


# --- readings -----------------------------------------------------------------------


def test_readings_stored_exactly_once_with_their_values(
    ingest: RunningIngest, database: str, topic_root: str, pub: Publisher
) -> None:
    topic = f"{topic_root}/pudong/water_level/wl-1/telemetry"
    for i in range(50):
        pub.send(
            topic,
            {"ts": TS0 + i * 60_000, "seq": i, "values": {"level_m": 3 + i / 10, "battery_v": 12}},
        )
    pub.flush()
    wait_count(database, "readings", 100)
    stored = rows(
        database,
        "SELECT ts, device_id, metric, value, quality FROM readings ORDER BY ts, metric",
    )
    expected = []
    for i in range(50):
        ts = at(TS0 + i * 60_000)
        expected += [(ts, "wl-1", "battery_v", 12.0, 0), (ts, "wl-1", "level_m", 3 + i / 10, 0)]
    assert stored == expected
    settle(ingest, 50)
    c = ingest.service.counters
    assert (c.messages, c.readings, c.duplicates, c.dead_letters) == (50, 100, 0, 0)
    # The device's liveness and its last seq.
    wait_until(
        lambda: (
            scalar(database, "SELECT last_seq FROM device_status WHERE device_id='wl-1'")
            is not None
        ),
        what="device_status of wl-1",
    )
    state, online, gaps = rows(
        database, "SELECT state, online, seq_gaps FROM device_status WHERE device_id = 'wl-1'"
    )[0]
    assert (state, online, gaps) == ("online", True, 0)


def test_batch_payloads(
    ingest: RunningIngest, database: str, topic_root: str, pub: Publisher
) -> None:
    for device in range(3):
        topic = f"{topic_root}/xuhui/rain_gauge/rg-{device}/telemetry"
        for message in range(2):
            pub.send(
                topic,
                {
                    "readings": [
                        {
                            "ts": TS0 + (message * 20 + i) * 300_000,
                            "seq": message * 20 + i,
                            "values": {"rain_mm": (message * 20 + i) / 10},
                        }
                        for i in range(20)
                    ]
                },
            )
    pub.flush()
    wait_count(database, "readings", 120)
    for device in range(3):
        values = rows(
            database,
            "SELECT value FROM readings WHERE device_id = %s ORDER BY ts",
            f"rg-{device}",
        )
        assert [v for (v,) in values] == [i / 10 for i in range(40)]
    settle(ingest, 6)
    assert ingest.service.counters.readings == 120


def test_seq_gaps_are_counted(
    ingest: RunningIngest, database: str, topic_root: str, pub: Publisher
) -> None:
    topic = f"{topic_root}/xuhui/rain_gauge/rg-gap/telemetry"
    for n, seq in enumerate([1, 2, 5, 6, 10]):
        pub.send(topic, {"ts": TS0 + n * 1000, "seq": seq, "values": {"rain_mm": 0.2}})
        pub.flush()
        time.sleep(0.05)
    wait_until(
        lambda: (
            scalar(database, "SELECT seq_gaps FROM device_status WHERE device_id = 'rg-gap'") == 5
        ),
        what="5 missing readings (3, 4, 7, 8, 9)",
    )


# --- duplicates ---------------------------------------------------------------------


def test_same_reading_twice_is_stored_once(
    ingest: RunningIngest, database: str, topic_root: str, pub: Publisher
) -> None:
    topic = f"{topic_root}/pudong/water_level/wl-dup/telemetry"
    message = {"ts": TS0, "seq": 7, "values": {"level_m": 3.5}}
    # Twice back to back (most likely one batch)…
    pub.send(topic, message)
    pub.send(topic, message)
    pub.flush()
    settle(ingest, 2)
    # …and once more in a later batch.
    pub.send(topic, message)
    pub.flush()
    settle(ingest, 3)
    assert rows(database, "SELECT ts, value FROM readings") == [(at(TS0), 3.5)]
    assert ingest.service.counters.readings == 1
    assert ingest.service.counters.duplicates == 2
    wait_until(
        lambda: scalar(database, "SELECT duplicates FROM ingest_stats") == 2,
        what="ingest_stats.duplicates = 2",
    )


def test_redelivered_message_is_stored_once(
    ingest: RunningIngest, database: str, topic_root: str, pub: Publisher
) -> None:
    topic = f"{topic_root}/pudong/rain_gauge/rg-re/telemetry"
    batch = {
        "readings": [
            {"ts": TS0 + i * 60_000, "seq": i, "values": {"rain_mm": i, "battery_v": 3.6}}
            for i in range(20)
        ]
    }
    pub.send(topic, batch)
    pub.flush()
    wait_count(database, "readings", 40)
    pub.send(topic, batch)  # the whole message again
    overlapping = {
        "readings": [
            *batch["readings"][10:],
            {"ts": TS0 + 20 * 60_000, "seq": 20, "values": {"rain_mm": 20}},
        ]
    }
    pub.send(topic, overlapping)
    pub.flush()
    settle(ingest, 3)
    assert count(database, "readings") == 41
    assert rows(database, "SELECT value FROM readings WHERE metric = 'rain_mm' ORDER BY ts") == [
        (float(i),) for i in range(21)
    ]
    c = ingest.service.counters
    assert (c.readings, c.duplicates) == (41, 40 + 20)
    wait_until(
        lambda: (
            rows(database, "SELECT readings, duplicates, messages FROM ingest_stats")
            == [(41, 60, 3)]
        ),
        what="ingest_stats with 41 readings, 60 duplicates, 3 messages",
    )


def test_duplicate_seq_without_ts_is_stored_once(
    ingest: RunningIngest, database: str, topic_root: str, pub: Publisher
) -> None:
    topic = f"{topic_root}/pudong/water_level/wl-nots/telemetry"
    pub.send(topic, {"seq": 41, "values": {"level_m": 3.5}})
    pub.flush()
    settle(ingest, 1)
    pub.send(topic, {"seq": 41, "values": {"level_m": 3.5}})
    pub.flush()
    settle(ingest, 2)
    assert count(database, "readings") == 1


# --- status and the last will ---------------------------------------------------------


class Device:
    """A device's own MQTT connection with a retained last will of `offline`."""

    def __init__(self, broker: LocalMosquitto, status_topic: str) -> None:
        address = BrokerAddress.from_url(broker.url)
        self.client, props = make_client(address, f"dev-{uuid.uuid4().hex[:8]}")
        self.client.will_set(status_topic, "offline", qos=1, retain=True)
        self.client.connect(address.host, address.port, keepalive=30, properties=props)
        self.client.loop_start()
        self.topic = status_topic

    def publish(self, payload: str | bytes, retain: bool = True) -> None:
        self.client.publish(self.topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def die(self) -> None:
        """Lose the connection without DISCONNECT, as a device losing power does."""
        self.client.loop_stop()
        sock = self.client.socket()
        assert isinstance(sock, socket.socket)
        sock.shutdown(socket.SHUT_RDWR)
        self.client._reset_sockets()  # closes the TCP socket and paho's wake-up pair

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def status_of(url: str, device_id: str) -> tuple[Any, ...] | None:
    found = rows(
        url, "SELECT state, online, detail FROM device_status WHERE device_id = %s", device_id
    )
    return found[0] if found else None


def test_last_will_marks_device_offline(
    ingest: RunningIngest, database: str, topic_root: str, broker: LocalMosquitto
) -> None:
    topic = f"{topic_root}/jingan/elevator/el-9/status"
    device = Device(broker, topic)
    device.publish("online")
    wait_until(lambda: status_of(database, "el-9") == ("online", True, {}), what="el-9 online")
    changed_online = scalar(
        database, "SELECT changed_at FROM device_status WHERE device_id = 'el-9'"
    )
    device.die()
    wait_until(lambda: status_of(database, "el-9") == ("offline", False, {}), what="el-9 offline")
    changed_offline = scalar(
        database, "SELECT changed_at FROM device_status WHERE device_id = 'el-9'"
    )
    assert changed_offline > changed_online
    # The will is retained: whoever subscribes later learns the device is offline.
    seen: list[bytes] = []
    address = BrokerAddress.from_url(broker.url)
    watcher, props = make_client(address, f"watch-{uuid.uuid4().hex[:8]}")
    watcher.on_message = lambda client, userdata, msg: seen.append(bytes(msg.payload))
    watcher.connect(address.host, address.port, properties=props)
    watcher.loop_start()
    try:
        watcher.subscribe(topic, qos=1)
        wait_until(lambda: seen, what="the retained will")
        assert seen == [b"offline"]
    finally:
        watcher.disconnect()
        watcher.loop_stop()


def test_retained_status_published_before_ingest_starts(
    run_ingest: Callable[[IngestConfig], RunningIngest],
    ingest_config: IngestConfig,
    database: str,
    topic_root: str,
    broker: LocalMosquitto,
) -> None:
    device = Device(broker, f"{topic_root}/jingan/elevator/el-r/status")
    try:
        device.publish(orjson.dumps({"state": "online", "fw": "1.4.2", "rssi": -71}))
        run_ingest(ingest_config)
        wait_until(
            lambda: status_of(database, "el-r") == ("online", True, {"fw": "1.4.2", "rssi": -71}),
            what="the retained JSON status",
        )
    finally:
        device.publish(b"")  # leave no retained message behind on the shared broker
        device.close()


def test_json_status_and_state_changes(
    ingest: RunningIngest, database: str, topic_root: str, pub: Publisher
) -> None:
    topic = f"{topic_root}/jingan/water_level/wl-s/status"
    pub.send(topic, {"state": "online", "fw": "2.0.1", "ts": TS0})
    pub.flush()
    wait_until(lambda: status_of(database, "wl-s") == ("online", True, {"fw": "2.0.1"}))
    pub.send(topic, {"state": "maintenance", "ts": TS0 + 60_000})
    pub.flush()
    wait_until(lambda: status_of(database, "wl-s") == ("maintenance", True, {}))
    # An older status arriving late does not overwrite a newer one.
    pub.send(topic, {"state": "offline", "ts": TS0 + 30_000})
    pub.flush()
    settle(ingest, 3)
    assert status_of(database, "wl-s") == ("maintenance", True, {})
    assert scalar(database, "SELECT changed_at FROM device_status WHERE device_id = 'wl-s'") == at(
        TS0 + 60_000
    )


def test_last_will_after_clock_skewed_telemetry(
    ingest: RunningIngest, database: str, topic_root: str, broker: LocalMosquitto
) -> None:
    base = f"{topic_root}/jingan/elevator/el-skew"
    device = Device(broker, f"{base}/status")
    ahead = datetime.now(UTC) + timedelta(minutes=30)
    device.client.publish(
        f"{base}/telemetry",
        orjson.dumps({"ts": ahead.isoformat(), "values": {"floor": 3}}),
        qos=1,
    ).wait_for_publish(10)
    wait_until(lambda: status_of(database, "el-skew") is not None, what="el-skew seen")
    device.die()
    wait_until(
        lambda: (status_of(database, "el-skew") or ("",))[0] == "offline",
        timeout=2.5,
        what="el-skew offline",
    )


# --- bad payloads -------------------------------------------------------------------


@pytest.mark.parametrize(
    "ingest_config", [{"max_payload_bytes": 4096, "dead_letter_keep_bytes": 1024}], indirect=True
)
def test_bad_payload_corpus_is_dead_lettered_and_good_readings_kept(
    registered: list[str],
    ingest: RunningIngest,
    database: str,
    topic_root: str,
    pub: Publisher,
) -> None:
    running = ingest
    wl = f"{topic_root}/d1/water_level/wl-c/telemetry"
    huge = orjson.dumps({"ts": TS0, "values": {"level_m": 1.0}, "pad": "x" * 6000})
    corpus: list[tuple[str, bytes, str]] = [
        (wl, b'{"ts": 1764036000000, "values": {"level_m": 3.', "malformed_payload"),
        (wl, b'{"ts": 1764036000000, "values": {"level_m": "high"}}', "wrong_type"),
        (wl, b'{"ts": 1764036000000, "values": {"level_m": true}}', "wrong_type"),
        (wl, b'{"ts": 1764036000000, "values": {"level_m": NaN}}', "malformed_payload"),
        (wl, b'{"ts": 1764036000000, "values": {"level_m": Infinity}}', "malformed_payload"),
        (wl, huge, "too_large"),
        (wl, '{"values": {"level_m": 1}, "site": "黄浦江"}'.encode("gb18030"), "bad_encoding"),
        (wl, '{"values": {"level_m": 1}}'.encode("utf-16"), "bad_encoding"),
        (wl, b"\xff\xfe\x00garbage", "bad_encoding"),
        (wl, b'{"ts": "2026-11-25T10:00:00", "values": {"level_m": 1}}', "bad_timestamp"),
        (wl, b'{"ts": 1764036000, "values": {"level_m": 1}}', "bad_timestamp"),
        (wl, b"[1, 2, 3]", "bad_structure"),
        (wl, b'{"ts": 1764036000000}', "bad_structure"),
        (
            f"{topic_root}/d1/tide_gauge/tg-1/telemetry",
            b'{"values": {"level_m": 1}}',
            "unknown_profile",
        ),
        (
            f"{topic_root}/d1/water_level/rg-reg/telemetry",
            b'{"values": {"level_m": 1}}',
            "profile_mismatch",
        ),
        (f"{topic_root}//water_level/wl-c/telemetry", b'{"values": {"level_m": 1}}', "bad_topic"),
        (
            f"{topic_root}/d1/water_level/wl-c/command",
            b'{"values": {"level_m": 1}}',
            "unknown_channel",
        ),
        (f"{topic_root}/d1/water_level/wl-c/event", b'{"type": "flood"}', "unknown_event"),
        (
            f"{topic_root}/d1/elevator_frame/ef-c/telemetry",
            b"EF1,1764036000123,1,9,7,0,1,2.50,35,01",
            "malformed_payload",
        ),
    ]
    good = 0
    for n, (topic, payload, _) in enumerate(corpus):
        pub.send(wl, {"ts": TS0 + n * 1000, "values": {"level_m": 2.0 + n}})
        good += 1
        pub.send(topic, payload)
    # A partly bad message: the good value is kept, the unknown one dead-lettered.
    mixed = b'{"ts": 1764036999000, "values": {"level_m": 9.5, "salinity_psu": 3}}'
    pub.send(wl, mixed)
    corpus.append((wl, mixed, "unknown_metric"))
    pub.flush()

    wait_count(database, "dead_letters", len(corpus))
    stored = rows(
        database,
        "SELECT topic, payload, payload_size, reason, detail, device_id FROM dead_letters "
        "ORDER BY id",
    )
    assert [(t, r) for t, _, _, r, _, _ in stored] == [(t, r) for t, _, r in corpus]
    for (topic, payload, reason), (_, kept, size, _, detail, device_id) in zip(
        corpus, stored, strict=True
    ):
        assert size == len(payload), reason
        if reason == "too_large":
            assert bytes(kept) == payload[:1024]
        else:
            assert bytes(kept) == payload, reason
        assert detail, reason
        if reason not in ("bad_topic", "unknown_channel"):
            assert device_id == topic.split("/")[3], reason
    by_reason = {r: d for _, _, _, r, d, _ in stored}
    assert "salinity_psu" in by_reason["unknown_metric"]
    assert "tide_gauge" in by_reason["unknown_profile"]

    # Every good reading is stored: one per corpus entry plus the good half of `mixed`.
    wait_count(database, "readings", good + 1)
    assert rows(database, "SELECT value FROM readings ORDER BY ts") == [
        *((2.0 + n,) for n in range(good)),
        (9.5,),
    ]
    settle(running, 2 * good + 1)
    c = running.service.counters
    assert c.dead_letters == len(corpus)
    assert c.dead_letter_reasons["malformed_payload"] == 4
    assert c.dead_letter_reasons["bad_encoding"] == 3
    assert running.thread.is_alive()


def test_unknown_device_becomes_provisional(
    ingest: RunningIngest, database: str, topic_root: str, pub: Publisher
) -> None:
    topic = f"{topic_root}/minhang/noise/nm-new/telemetry"
    pub.send(topic, {"ts": TS0, "values": {"laeq_db": 61.5, "lmax_db": 80}})
    pub.send(topic, {"ts": TS0 + 60_000, "values": {"laeq_db": 58.0}})
    pub.flush()
    wait_count(database, "readings", 3, "device_id = 'nm-new'")
    assert rows(
        database,
        "SELECT device_id, profile, district, provisional, attributes FROM devices",
    ) == [("nm-new", "noise", "minhang", True, {})]
    settle(ingest, 2)
    assert ingest.service.counters.provisional == 1
    wait_until(lambda: scalar(database, "SELECT provisional FROM ingest_stats") == 1)


def test_registered_device_is_not_made_provisional(
    registered: list[str], ingest: RunningIngest, database: str, topic_root: str, pub: Publisher
) -> None:
    running = ingest
    pub.send(f"{topic_root}/minhang/noise/nm-1/telemetry", {"ts": TS0, "values": {"laeq_db": 50}})
    pub.flush()
    wait_count(database, "readings", 1)
    assert rows(database, "SELECT device_id, name, provisional FROM devices ORDER BY 1") == [
        ("nm-1", "Park gate", False),
        ("rg-reg", "", False),
    ]
    settle(running, 1)
    assert running.service.counters.provisional == 0


# --- events and quality ---------------------------------------------------------------


def test_events_stored_once(
    ingest: RunningIngest, database: str, topic_root: str, pub: Publisher
) -> None:
    base = f"{topic_root}/huangpu/elevator/el-e"
    trapped = {"ts": TS0, "type": "trapped_passengers", "detail": {"floor": 7, "since_s": 45}}
    pub.send(f"{base}/event", trapped)
    pub.send(f"{base}/event", {"ts": TS0 + 1000, "code": 41})
    pub.send(f"{base}/event", trapped)  # a duplicate
    pub.send(
        f"{topic_root}/huangpu/elevator_frame/ef-e/event",
        b"EV1,1764036002000,90,note=button pressed",
    )
    pub.flush()
    wait_count(database, "events", 3)
    assert rows(database, "SELECT ts, device_id, type, code, detail FROM events ORDER BY ts") == [
        (at(TS0), "el-e", "trapped_passengers", 11, {"floor": 7, "since_s": 45}),
        (at(TS0 + 1000), "el-e", "main_power_off", 41, {}),
        (at(TS0 + 2000), "ef-e", "alarm_button", 90, {"note": "button pressed"}),
    ]
    settle(ingest, 4)
    assert ingest.service.counters.events == 3
    assert count(database, "readings") == 0


def test_out_of_range_values_are_stored_with_quality_flag(
    ingest: RunningIngest, database: str, topic_root: str, pub: Publisher
) -> None:
    topic = f"{topic_root}/pudong/air_quality/aq-1/telemetry"
    pub.send(topic, {"ts": TS0, "values": {"pm2_5": 2500, "pm10": 120, "humidity_pct": 101}})
    pub.send(topic, {"values": {"pm2_5": -3}})  # no ts: receive time as well
    pub.flush()
    wait_count(database, "readings", 4)
    assert rows(database, "SELECT metric, value, quality FROM readings ORDER BY ts, metric") == [
        ("humidity_pct", 101.0, 1),
        ("pm10", 120.0, 0),
        ("pm2_5", 2500.0, 1),
        ("pm2_5", -3.0, 1 | 2),
    ]
    settle(ingest, 2)
    assert ingest.service.counters.out_of_range == 3
    assert count(database, "dead_letters") == 0
    wait_until(lambda: scalar(database, "SELECT out_of_range FROM ingest_stats") == 3)


def test_clock_skew_is_flagged(
    ingest: RunningIngest, database: str, topic_root: str, pub: Publisher
) -> None:
    ahead = datetime.now(UTC) + timedelta(hours=2)
    pub.send(
        f"{topic_root}/pudong/rain_gauge/rg-skew/telemetry",
        {"ts": ahead.isoformat(), "values": {"rain_mm": 1}},
    )
    pub.flush()
    wait_count(database, "readings", 1)
    assert scalar(database, "SELECT quality FROM readings") == 4


# --- one bad message must not stop the ingest ---------------------------------------------


POISON = [
    pytest.param(
        "event",
        b'{"type": "alarm_button", "detail": {"note": "a\\u0000b"}}',
        id="nul-in-event-detail",
    ),
    pytest.param("status", b'{"state": "on\\u0000line"}', id="nul-in-status-state"),
    pytest.param(
        "event", b'{"type": "alarm_button", "code": 4294967296}', id="event-code-over-int4"
    ),
    pytest.param(
        "telemetry",
        b'{"seq": 18446744073709551615, "values": {"floor": 1}}',
        id="seq-over-bigint",
    ),
]


@pytest.mark.parametrize(("channel", "payload"), POISON)
def test_value_postgres_rejects_does_not_stop_ingest(
    guarded_ingest: tuple[RunningIngest, list[BaseException]],
    database: str,
    topic_root: str,
    pub: Publisher,
    channel: str,
    payload: bytes,
) -> None:
    running, errors = guarded_ingest
    base = f"{topic_root}/huangpu/elevator/el-p"
    pub.send(f"{base}/{channel}", payload)
    pub.flush()
    time.sleep(0.2)
    pub.send(f"{base}/telemetry", {"ts": TS0, "values": {"floor": 2}})
    pub.flush()
    good = "SELECT count(*) FROM readings WHERE ts = %s AND value = 2"
    wait_until(
        lambda: scalar(database, good, at(TS0)) == 1 or not running.thread.is_alive(),
        what="the good reading or the ingest's death",
    )
    assert not errors, f"the ingest died: {errors[0]!r}"
    assert running.thread.is_alive()
    # The poison message is kept as a dead letter naming what was wrong with it.
    assert count(database, "dead_letters") == 1


# --- cityvitals status --------------------------------------------------------------------


def test_status_shows_ingest_dead_letters_and_devices(
    ingest: RunningIngest,
    database: str,
    topic_root: str,
    pub: Publisher,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    pub.send(f"{topic_root}/d1/water_level/wl-a/telemetry", {"ts": TS0, "values": {"level_m": 1}})
    pub.send(f"{topic_root}/d1/water_level/wl-b/telemetry", {"ts": TS0, "values": {"level_m": 2}})
    pub.send(f"{topic_root}/d1/water_level/wl-b/status", b"offline")
    pub.send(f"{topic_root}/d1/rain_gauge/rg-a/telemetry", {"ts": TS0, "values": {"rain_mm": 1}})
    pub.send(f"{topic_root}/d1/water_level/wl-a/telemetry", b"{broken")
    pub.send(f"{topic_root}/d1/water_level/wl-a/telemetry", b"{broken too")
    pub.send(f"{topic_root}/d1/sonar/s-1/telemetry", b"{}")
    pub.flush()
    settle(ingest, 7)
    wait_until(
        lambda: scalar(database, "SELECT messages FROM ingest_stats") == 7,
        what="the ingest heartbeat with 7 messages",
    )

    s = status_view.collect(database)
    (row,) = s.ingest
    assert row.instance == ingest.service.instance
    assert row.live and row.connected
    assert (row.readings, row.dead_letters, row.provisional) == (3, 3, 3)
    assert [(reason, total, hour) for reason, total, hour, _ in s.dead_letters] == [
        ("malformed_payload", 2, 2),
        ("unknown_profile", 1, 1),
    ]
    # (profile, devices, online, provisional)
    assert s.devices == [("rain_gauge", 1, 1, 1), ("water_level", 2, 1, 2)]

    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("CITYVITALS_"):
            monkeypatch.delenv(name)
    result = CliRunner().invoke(
        app, ["status"], env={"CITYVITALS_DATABASE_URL": database, "COLUMNS": "250"}
    )
    assert result.exit_code == 0, result.output
    out = result.output
    assert ingest.service.instance in out
    assert "running" in out
    for word in ("Dead letters", "malformed_payload", "unknown_profile", "Devices"):
        assert word in out
    assert "water_level" in out and "rain_gauge" in out


def test_status_without_a_database_url_fails(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("CITYVITALS_"):
            monkeypatch.delenv(name)
    result = CliRunner().invoke(app, ["status"], env={"CITYVITALS_DATA_DIR": str(tmp_path)})
    assert result.exit_code == 1
    assert "CITYVITALS_DATABASE_URL" in result.output
