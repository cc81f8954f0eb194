"""What the ingest leaves out of the rule process's input changes nothing it computes.

`RuleProcess` hands over only the readings of metrics the engine and the vital
signs read (and the first reading of each device instant). Here a scenario's
whole city is played offline through two engines, one given every reading and
one given what crosses the pipe (`encode_batch` with the process's metrics, then
`decode_runs` and `Engine.ingest_runs`): every transition, every open alert and
every vital sign must be the same.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from alerts.model import AlertTransition
from cityvitals.rules_runtime import decode_runs, encode_batch
from devices.profile import ProfileSet, load_profiles
from rules.config import load_rules
from rules.engine import Engine
from rules.vitals import METRICS as VITAL_METRICS
from rules.vitals import compute_vitals
from simulators.city import City, generate_city
from simulators.scenario import Scenario, load_scenario
from tests.scenarios import device_infos, minutes

pytestmark = pytest.mark.slow


def _city(scenario: str) -> tuple[Scenario, City, ProfileSet]:
    sc = load_scenario(scenario)
    return sc, generate_city(sc.city.districts, sc.city.devices, sc.seed), load_profiles()


def _engine(city: City, profiles: ProfileSet) -> Engine:
    engine = Engine(load_rules(profiles))
    engine.set_devices(device_infos(city.devices, profiles))
    return engine


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
    sc, city, profiles = _city(scenario)
    full, handed = _engine(city, profiles), _engine(city, profiles)
    metrics = handed.metrics_read() | VITAL_METRICS
    start, end = sc.start + window[0], sc.start + window[1]
    played = minutes(sc, city.districts, city.devices, profiles, start, end)
    given = sent = 0
    transitions: list[AlertTransition] = []
    for n, (at, readings, events) in enumerate(played):
        want = full.ingest(readings) + full.events(events)
        if at is not None:
            want += full.tick(at)
        runs, got_events, count = decode_runs(encode_batch(readings, events, metrics))
        assert count == len(readings)
        got = handed.ingest_runs(runs) + handed.events(got_events)
        if at is not None:
            got += handed.tick(at)
        assert got == want, at
        transitions += got
        given += len(readings)
        sent += sum(len(run[2]) for run in runs)
        if at is not None and n % 10 == 0:
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
    sc, city, profiles = _city("typhoon")
    full = _engine(city, profiles)
    start = last = sc.start + timedelta(hours=5)
    end = start + timedelta(minutes=20)
    played = minutes(sc, city.districts, city.devices, profiles, start, end)
    for at, readings, events in played:
        full.ingest(readings)
        full.events(events)
        last = at or last
    read: set[str] = set()
    for state in full.devices.values():
        state.latest = _Recording(state.latest, read)
        state.history = _Recording(state.history, read)
    signs = compute_vitals(full, last)
    assert signs and read
    assert read <= VITAL_METRICS, read - VITAL_METRICS
