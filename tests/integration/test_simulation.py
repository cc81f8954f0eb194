"""Simulated cities through the real broker and the real ingest into PostgreSQL.

The fleet is deterministic, so each test first runs the same fleet offline to
know exactly what was sent, then publishes it and checks what was stored.
"""

from __future__ import annotations

import threading
from collections import Counter
from datetime import UTC, datetime, timedelta

import orjson
import psycopg
import pytest

from cityvitals.services import LocalMosquitto
from devices.profile import ProfileSet
from devices.registry_store import upsert_devices
from ingest.decode import MessageDecoder
from simulators.city import generate_city
from simulators.faults import FaultInjector, FaultSpec, parse_fault_spec
from simulators.fleet import Fleet, sim_devices
from simulators.model import WireMessage
from simulators.publish import MqttPublisher
from simulators.runner import fleet_stream, play
from simulators.world import World
from tests.conftest import RunningIngest
from tests.support import rows, scalar, wait_until

pytestmark = pytest.mark.slow

# The simulated hour ends now, so the ingest (which judges clock skew against the time it
# receives a reading) sees the readings as recent, and a skew of days as skew.
START = (datetime.now(UTC) - timedelta(hours=1, minutes=5)).replace(second=0, microsecond=0)


def _fleet(
    profiles: ProfileSet, root: str, faults: list[FaultSpec], devices: int = 30, seed: int = 5
) -> tuple[Fleet, list[str]]:
    city = generate_city(2, devices, seed)
    injector = (
        FaultInjector(faults, seed, profiles, registry_ids={d.device_id for d in city.devices})
        if faults
        else None
    )
    fleet = Fleet(
        sim_devices(city.devices, profiles),
        World(tuple(city.districts)),
        START,
        seed,
        root,
        injector,
    )
    return fleet, [d.device_id for d in city.devices]


def _stream(
    profiles: ProfileSet, root: str, faults: list[FaultSpec], duration: timedelta
) -> tuple[list[WireMessage], Fleet]:
    fleet, _ = _fleet(profiles, root, faults)
    return list(fleet_stream(fleet, START + duration)), fleet


def _publish(broker: LocalMosquitto, messages: list[WireMessage]) -> None:
    publisher = MqttPublisher(broker.url)
    play(iter(messages), publisher, START, None, threading.Event())
    assert publisher.wait_acknowledged(60)
    publisher.close()


def _register(database: str, profiles: ProfileSet) -> None:
    city = generate_city(2, 30, 5)
    with psycopg.connect(database) as conn:
        upsert_devices(conn, city.devices)


def _expected(messages: list[WireMessage], profiles: ProfileSet, root: str) -> Counter[str]:
    """What the ingest should make of the stream, by the same decoder run offline."""
    decoder = MessageDecoder(profiles, {}, root=root)
    counts: Counter[str] = Counter()
    seen: set[tuple[str, str, datetime]] = set()
    received = datetime.now(UTC)
    for m in messages:
        d = decoder.decode(m.topic, m.payload, received)
        for r in d.readings:
            key = (r.device_id, r.metric, r.ts)
            counts["readings_sent"] += 1
            if key not in seen:
                seen.add(key)
                counts["readings"] += 1
                counts["out_of_range"] += bool(r.quality & 1)
                counts["clock_skew"] += bool(r.quality & 4)
        counts["events"] += len(d.events)
        if d.dead_letter is not None:
            counts[f"dead:{d.dead_letter.reason}"] += 1
            counts["dead_letters"] += 1
    return counts


def test_same_seed_same_stream(profiles: ProfileSet) -> None:
    faults = [parse_fault_spec("duplicate:0.05"), parse_fault_spec("malformed:0.05")]
    a, _ = _stream(profiles, "city", faults, timedelta(minutes=30))
    b, _ = _stream(profiles, "city", faults, timedelta(minutes=30))
    assert [(m.t, m.topic, m.payload) for m in a] == [(m.t, m.topic, m.payload) for m in b]
    c = list(
        fleet_stream(_fleet(profiles, "city", faults, seed=6)[0], START + timedelta(minutes=30))
    )
    assert [m.payload for m in a] != [m.payload for m in c]


def test_small_city_for_an_hour_lands_with_expected_counts(
    profiles: ProfileSet,
    broker: LocalMosquitto,
    database: str,
    topic_root: str,
    ingest: RunningIngest,
) -> None:
    _register(database, profiles)
    messages, fleet = _stream(profiles, topic_root, [], timedelta(hours=1))
    expected = _expected(messages, profiles, topic_root)
    assert expected["dead_letters"] == 0, "a clean fleet must send only valid payloads"
    _publish(broker, messages)
    wait_until(
        lambda: scalar(database, "SELECT count(*) FROM readings") >= expected["readings"],
        timeout=60,
        what=f"{expected['readings']} readings",
    )
    wait_until(
        lambda: ingest.service.backlog == 0 and ingest.service._receiver.queued == 0,
        what="ingest drained",
    )
    assert scalar(database, "SELECT count(*) FROM readings") == expected["readings"]
    assert scalar(database, "SELECT count(*) FROM events") == expected["events"]
    assert scalar(database, "SELECT count(*) FROM dead_letters") == 0
    assert scalar(database, "SELECT count(*) FROM devices WHERE provisional") == 0
    # Every profile of the city reported, and every device said goodbye (retained offline).
    per_profile = dict(
        rows(
            database,
            "SELECT d.profile, count(DISTINCT r.device_id) FROM "
            "readings r JOIN devices d USING (device_id) GROUP BY 1",
        )
    )
    assert set(per_profile) == {d.profile.name for d in fleet.devices}
    assert scalar(database, "SELECT count(*) FROM device_status WHERE state = 'offline'") == len(
        fleet.devices
    )
    # Every device reported at least at its profile's interval over the hour; only
    # elevators, which also report each change of state, report more often.
    for device in fleet.devices:
        expected_reports = timedelta(hours=1) / device.profile.reporting_interval
        got = scalar(
            database,
            "SELECT count(DISTINCT ts) FROM readings WHERE device_id = %s",
            device.device_id,
        )
        assert got >= expected_reports - 1, device.device_id
        if device.profile.domain != "elevator":
            assert got <= expected_reports + 1, device.device_id


@pytest.mark.parametrize(
    "spec",
    [
        "malformed:0.05",
        "duplicate:0.1",
        "out_of_range:0.05",
        "clock_skew:0.05:offset=2d",
        "unregistered:0.03",
        "dropout:0.5@20m",
        "out_of_order:0.05",
        "flapping:0.5@10m",
        "stuck:0.5@30m",
        "spike:0.05",
        "drift:0.5@1h",
    ],
)
def test_each_fault_kind_leaves_its_trace(
    spec: str,
    profiles: ProfileSet,
    broker: LocalMosquitto,
    database: str,
    topic_root: str,
    ingest: RunningIngest,
) -> None:
    _register(database, profiles)
    fault = parse_fault_spec(spec)
    messages, fleet = _stream(profiles, topic_root, [fault], timedelta(hours=1))
    injector = fleet.injector
    assert isinstance(injector, FaultInjector)
    assert injector.counts.get(fault.kind, 0) > 0, f"{spec} injected nothing in an hour"
    expected = _expected(messages, profiles, topic_root)
    _publish(broker, messages)
    wait_until(
        lambda: (
            scalar(database, "SELECT count(*) FROM readings") >= expected["readings"]
            and scalar(database, "SELECT count(*) FROM dead_letters") >= expected["dead_letters"]
        ),
        timeout=60,
        what="the stream stored",
    )
    wait_until(lambda: ingest.service.backlog == 0, what="ingest drained")
    assert scalar(database, "SELECT count(*) FROM readings") == expected["readings"]
    dead = Counter(dict(rows(database, "SELECT reason, count(*) FROM dead_letters GROUP BY 1")))
    assert sum(dead.values()) == expected["dead_letters"]
    kind = fault.kind.value
    if kind == "malformed":
        assert dead, "malformed payloads must be dead-lettered"
        assert dead == Counter({k[5:]: v for k, v in expected.items() if k.startswith("dead:")})
        raw = rows(database, "SELECT topic, payload FROM dead_letters LIMIT 1")[0]
        assert raw[0].startswith(topic_root) and bytes(raw[1])
    elif kind == "duplicate":
        assert expected["readings_sent"] > expected["readings"]
        assert (
            ingest.service.counters.duplicates >= expected["readings_sent"] - expected["readings"]
        )
    elif kind == "out_of_range":
        assert expected["out_of_range"] > 0
        assert (
            scalar(database, "SELECT count(*) FROM readings WHERE quality & 1 = 1")
            == expected["out_of_range"]
        )
    elif kind == "clock_skew":
        assert expected["clock_skew"] > 0
        assert (
            scalar(database, "SELECT count(*) FROM readings WHERE quality & 4 = 4")
            == expected["clock_skew"]
        )
    elif kind == "unregistered":
        provisional = scalar(database, "SELECT count(*) FROM devices WHERE provisional")
        assert provisional == injector.counts["unregistered"] > 0
    elif kind == "dropout":
        assert scalar(database, "SELECT sum(seq_gaps) FROM device_status") > 0
    elif kind == "flapping":
        flaps = [
            m
            for m in messages
            if m.channel == "status"
            and m.payload == b"offline"
            and m.t < START + timedelta(hours=1)
        ]
        assert flaps, "flapping sent no offline status"
        assert (
            scalar(database, "SELECT count(*) FROM device_status WHERE changed_at IS NOT NULL") > 0
        )
    elif kind == "out_of_order":
        # Some device's readings went out of time order, and every one was stored anyway.
        newest: dict[str, datetime] = {}
        late = 0
        for m in messages:
            if m.channel != "telemetry" or not m.payload.startswith(b"{"):
                continue
            ts = datetime.fromisoformat(orjson.loads(m.payload)["ts"])
            late += ts < newest.get(m.device_id, ts)
            newest[m.device_id] = max(ts, newest.get(m.device_id, ts))
        assert late > 0
