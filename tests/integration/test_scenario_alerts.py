"""Each shipped scenario raises the alerts it says an operator should see.

The scenario's fleet is played offline through the ingest's decoder and the rule
engine with the default rules (the same code the platform runs, without the
wire), and its `expect` list is checked against the alert transitions: domain,
rule, level, district and time window. Elevators are left out where a scenario
says nothing about them, and only the profiles a scenario is about are played,
to keep the run short.
"""

from __future__ import annotations

from datetime import timedelta
from functools import cache

import pytest

from alerts.model import AlertTransition
from devices.profile import load_profiles
from rules.config import load_rules
from rules.engine import Engine
from simulators.city import generate_city
from simulators.expectations import check, too_loud
from simulators.scenario import load_scenario
from simulators.world import District
from tests.scenarios import device_infos, minutes

pytestmark = pytest.mark.slow


@cache
def play(
    name: str, profiles_played: frozenset[str], window: tuple[timedelta, timedelta] | None = None
) -> tuple[list[AlertTransition], list[District]]:
    """The scenario's city, only the devices of `profiles_played`, through the engine."""
    sc = load_scenario(name)
    profiles = load_profiles()
    city = generate_city(sc.city.districts, sc.city.devices, sc.seed)
    records = [r for r in city.devices if r.profile in profiles_played]
    start = sc.start + (window[0] if window else timedelta(0))
    end = sc.start + (window[1] if window else sc.duration)
    engine = Engine(load_rules(profiles))
    engine.set_devices(device_infos(records, profiles))
    out: list[AlertTransition] = []
    for at, readings, events in minutes(sc, city.districts, records, profiles, start, end):
        out += engine.ingest(readings) + engine.events(events)
        if at is not None:
            out += engine.tick(at)
    unhealthy = {n: h.last_error for n, h in engine.health.items() if not h.healthy}
    assert not unhealthy, unhealthy
    return out, city.districts


WATER = frozenset({"rain_gauge", "water_level", "drainage"})


@pytest.mark.parametrize(
    ("name", "played"), [("typhoon", WATER), ("pollution", frozenset({"air_quality"}))]
)
def test_scenario_raises_what_it_expects(name: str, played: frozenset[str]) -> None:
    transitions, districts = play(name, played)
    findings = check(load_scenario(name), transitions, districts)
    assert findings
    assert all(f.met for f in findings), "\n".join(map(str, findings))


def test_entrapment_traps_passengers_in_the_blacked_out_district_only() -> None:
    sc = load_scenario("entrapment")
    transitions, districts = play(
        "entrapment", frozenset({"elevator"}), (timedelta(minutes=50), timedelta(minutes=80))
    )
    findings = check(sc, transitions, districts)
    assert all(f.met for f in findings), "\n".join(map(str, findings))
    trapped = {t.district for t in transitions if t.rule == "elevator_trapped"}
    assert trapped == {districts[1].name}


def test_quiet_day_stays_quiet() -> None:
    sc = load_scenario("quiet_day")
    # Midnight to noon: the night noise limit, the morning rush, and nothing else.
    transitions, _ = play(
        "quiet_day", WATER | {"air_quality", "noise"}, (timedelta(0), timedelta(hours=12))
    )
    loud = too_loud(sc, transitions)
    assert not loud, [(t.rule, t.level.label, t.device_id, t.at) for t in loud[:10]]
