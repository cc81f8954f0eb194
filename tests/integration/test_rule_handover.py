"""What the ingest leaves out of the rule process's input changes nothing it computes.

`RuleProcess` hands over only the readings of metrics the engine and the vital
signs read (and the first reading of each device instant). Here a scenario's
whole city is played offline through two engines, one given every reading and
one given what crosses the pipe (`encode_batch` with the process's metrics, then
`decode_runs` and `Engine.ingest_runs`): every transition, every open alert and
every vital sign must be the same.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest

from alerts.model import AlertTransition
from cityvitals.rules_runtime import decode_runs, encode_batch
from devices.model import DeviceEvent, Reading
from devices.profile import load_profiles
from ingest.decode import MessageDecoder
from rules.config import load_rules
from rules.engine import DeviceInfo, Engine
from rules.vitals import METRICS as VITAL_METRICS
from rules.vitals import compute_vitals
from simulators.city import generate_city
from simulators.fleet import Fleet, sim_devices
from simulators.runner import fleet_stream
from simulators.scenario import load_scenario

pytestmark = pytest.mark.slow


def _engines(scenario: str) -> tuple[Engine, Engine, Any, list[Any]]:
    sc = load_scenario(scenario)
    profiles = load_profiles()
    city = generate_city(sc.city.districts, sc.city.devices, sc.seed)
    infos = [
        DeviceInfo(
            r.device_id,
            profiles[r.profile],
            r.district,
            r.name,
            profiles[r.profile].device_attributes(r.attributes)[0],
        )
        for r in city.devices
    ]
    rules = load_rules(profiles)
    full, handed = Engine(rules), Engine(rules)
    for engine in (full, handed):
        engine.set_devices(infos)
    return full, handed, sc, city.devices


def _batches(
    scenario: str, records: list[Any], start: datetime, end: datetime
) -> Iterator[tuple[datetime, list[Reading], list[DeviceEvent]]]:
    """The scenario's messages decoded as the ingest decodes them, a minute at a time."""
    sc = load_scenario(scenario)
    profiles = load_profiles()
    city = generate_city(sc.city.districts, sc.city.devices, sc.seed)
    fleet = Fleet(sim_devices(records, profiles), sc.world(city.districts), start, sc.seed)
    decoder = MessageDecoder(
        profiles, {r.device_id: r.profile for r in records}, future_tolerance=timedelta(days=3650)
    )
    readings: list[Reading] = []
    events: list[DeviceEvent] = []
    flush_at = start + timedelta(minutes=1)
    for msg in fleet_stream(fleet, end):
        if msg.t >= flush_at:
            yield flush_at, readings, events
            readings, events = [], []
            flush_at = msg.t + timedelta(minutes=1)
        d = decoder.decode(msg.topic, msg.payload, msg.t)
        readings += d.readings
        events += d.events
    yield flush_at, readings, events


@pytest.mark.parametrize(
    ("scenario", "window"),
    [
        ("typhoon", (timedelta(hours=5), timedelta(hours=5, minutes=40))),
        ("entrapment", (timedelta(minutes=50), timedelta(minutes=80))),
        ("pollution", (timedelta(hours=20), timedelta(hours=20, minutes=40))),
    ],
)
def test_the_rule_process_input_gives_the_same_alerts_and_vitals(
    scenario: str, window: tuple[timedelta, timedelta]
) -> None:
    full, handed, sc, records = _engines(scenario)
    metrics = handed.metrics_read() | VITAL_METRICS
    start, end = sc.start + window[0], sc.start + window[1]
    given = sent = 0
    transitions: list[AlertTransition] = []
    for n, (at, readings, events) in enumerate(_batches(scenario, records, start, end)):
        want = full.ingest(readings) + full.events(events) + full.tick(at)
        runs, got_events, count = decode_runs(encode_batch(readings, events, metrics))
        assert count == len(readings)
        got = handed.ingest_runs(runs) + handed.events(got_events) + handed.tick(at)
        assert got == want, at
        transitions += got
        given += len(readings)
        sent += sum(len(run[2]) for run in runs)
        if n % 10 == 0:
            assert compute_vitals(handed, at) == compute_vitals(full, at), at
    assert handed.alerts == full.alerts
    assert transitions, "the window raised nothing: it tests nothing"
    # Something was left out, or the test shows nothing about leaving things out.
    assert sent < 0.8 * given, (sent, given)
    for device_id, state in full.devices.items():
        other = handed.devices[device_id]
        assert other.last_seen == state.last_seen, device_id
        # Derived values are computed on both sides; only unread metrics are missing.
        assert not (state.latest.keys() - other.latest.keys()) & metrics, device_id
        assert other.latest == {m: state.latest[m] for m in other.latest}, device_id


class _Recording(dict[str, Any]):
    """A device's latest values or history that notes every metric looked up in `read`."""

    def __init__(self, data: dict[str, Any], read: set[str]) -> None:
        super().__init__(data)
        self.read = read

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> Any:
        self.read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self.read.add(str(key))
        return super().__contains__(key)


def test_vital_signs_read_only_the_metrics_they_declare() -> None:
    full, _, sc, records = _engines("typhoon")
    start = sc.start + timedelta(hours=5)
    last = start
    for at, readings, events in _batches("typhoon", records, start, start + timedelta(minutes=20)):
        full.ingest(readings)
        full.events(events)
        last = at
    read: set[str] = set()
    for state in full.devices.values():
        state.latest = _Recording(state.latest, read)
        state.history = _Recording(state.history, read)
    signs = compute_vitals(full, last)
    assert signs and read
    assert read <= VITAL_METRICS, read - VITAL_METRICS
