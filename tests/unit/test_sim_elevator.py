"""Elevator simulator model: a state machine that never moves with the doors open
unless that fault is injected, and that traps passengers when the power fails."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from devices import DeviceProfile, ProfileSet, load_profiles
from simulators.model import Emission, SimDevice, device_rng
from simulators.models import MODELS
from simulators.models.elevator import Elevator, Phase
from simulators.world import District, Incident, PowerCut, World

TZ = ZoneInfo("Asia/Shanghai")
T0 = datetime(2026, 11, 2, 0, 0, tzinfo=TZ)  # local midnight
CITY = World((District("north", 31.3, 121.5), District("south", 31.1, 121.5)))
ID = "lift-1"


@pytest.fixture(scope="module")
def profiles() -> ProfileSet:
    return load_profiles()


@pytest.fixture(scope="module")
def profile(profiles: ProfileSet) -> DeviceProfile:
    return profiles["elevator"]


def build(
    profile: DeviceProfile, raw: Mapping[str, Any] | None = None, *, seed: int = 3
) -> Elevator:
    attributes, problems = profile.device_attributes({"floors": 18, **(raw or {})})
    assert not problems
    device = SimDevice(ID, profile, "north", 31.3, 121.5, attributes)
    assert profile.simulator is not None
    params = {**(profile.simulator.model_extra or {}), **attributes}
    model = MODELS[profile.simulator.model](device, params, device_rng(seed, ID))
    assert isinstance(model, Elevator)
    return model


def simulate(
    model: Elevator,
    world: World,
    start: datetime,
    end: datetime,
    after_step: Callable[[datetime, Elevator], None] | None = None,
) -> list[Emission]:
    out: list[Emission] = []
    t = start
    while t < end:
        emitted = model.step(t, world)
        assert all(e.t <= t for e in emitted)
        out += emitted
        if after_step is not None:
            after_step(t, model)
        t += model.tick
    return out


def events(emissions: list[Emission]) -> list[Emission]:
    return [e for e in emissions if e.channel == "event"]


def telemetry(emissions: list[Emission]) -> list[Emission]:
    return [e for e in emissions if e.channel == "telemetry"]


def check_against_profile(profile: DeviceProfile, emissions: list[Emission]) -> None:
    """Every metric, enum word and event exists in the profile; values are in range."""
    for e in emissions:
        if e.channel == "event":
            assert profile.events[e.body["type"]].code == e.body["code"]
            assert isinstance(e.body["detail"]["floor"], int)
            continue
        assert e.channel == "telemetry"
        assert set(e.body) == set(profile.metrics)
        for name, value in e.body.items():
            spec = profile.metrics[name]
            if spec.type == "enum":
                assert spec.values is not None and value in spec.values, (name, value)
            elif spec.type == "bool":
                assert isinstance(value, bool), (name, value)
            else:
                assert isinstance(value, int | float) and math.isfinite(value), (name, value)
                if spec.type == "int":
                    assert isinstance(value, int), (name, value)
                assert spec.range is not None and spec.range[0] <= value <= spec.range[1]


def check_doors(telemetry_stream: list[Emission], lowest: int, floors: int) -> None:
    """The car moves only with its doors closed, between its own landings."""
    previous: dict[str, Any] | None = None
    for e in telemetry_stream:
        body = e.body
        assert lowest <= body["floor"] <= lowest + floors - 1, body
        if body["door"] != "closed":
            assert body["speed_mps"] == 0 and body["direction"] == "stopped", body
            assert body["state"] != "running" and body["in_door_zone"], body
        if body["state"] == "running":
            assert body["door"] == "closed", body
        if previous is not None and previous["floor"] != body["floor"]:
            assert previous["door"] == "closed" and body["door"] == "closed", (previous, body)
        previous = body


def check_car(t: datetime, model: Elevator) -> None:
    """The internal state after every step, between the telemetry messages."""
    if model.phase is Phase.RUNNING:
        assert model.door == "closed", t
    if model.door != "closed":
        assert model.in_door_zone, t
    assert 0 <= model.index < model.floors
    assert model.passengers >= 0


def test_same_seed_same_messages(profile: DeviceProfile) -> None:
    end = T0 + timedelta(hours=10)
    runs = [simulate(build(profile, seed=s), CITY, T0, end) for s in (1, 1, 2)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


@pytest.mark.parametrize(
    ("raw", "faults_per_day"),
    [
        ({"lowest_floor": -2}, None),
        ({"floors": 6, "trips_per_hour": 80}, None),
        # Faults of every random kind, none of them unintended movement.
        ({"fault_rate_per_day": 40, "repair_minutes": 10, "rescue_minutes": 5}, 40),
    ],
    ids=["basements", "busy-low-rise", "faulty"],
)
def test_a_day_of_service_never_moves_with_the_doors_open(
    profile: DeviceProfile, raw: dict[str, Any], faults_per_day: int | None
) -> None:
    model = build(profile, raw)
    emissions = simulate(model, CITY, T0, T0 + timedelta(days=1), after_step=check_car)
    check_against_profile(profile, emissions)
    stream = telemetry(emissions)
    check_doors(stream, model.lowest_floor, model.floors)

    runs = stream[-1].body["run_count"] - stream[0].body["run_count"]
    assert runs > 200
    by_hour = [0] * 24
    for a, b in itertools.pairwise(stream):
        by_hour[b.t.astimezone(TZ).hour] += b.body["run_count"] - a.body["run_count"]
    assert by_hour[8] > 3 * by_hour[3]  # the morning rush against the small hours
    # A heartbeat at least once per reporting interval.
    gaps = [(b.t - a.t) for a, b in itertools.pairwise(stream)]
    assert max(gaps) <= profile.reporting_interval
    assert {e.body["state"] for e in stream} >= {"idle", "running", "stopped"}
    assert {e.body["door"] for e in stream} == {"closed", "opening", "open", "closing"}
    assert any(e.body["passengers_present"] for e in stream)

    names = {e.body["type"] for e in events(emissions)}
    if faults_per_day is None:
        assert names == set()
    else:
        assert "unintended_car_movement" not in names
        assert len(names & {"door_close_fault", "door_open_fault"}) == 2
        assert "back_to_normal" in names
        assert any(e.body["state"] == "fault" and e.body["fault_code"] > 0 for e in stream)


@pytest.fixture(scope="module")
def cut_at(profile: DeviceProfile) -> datetime:
    """The first tick after 08:00 at which the car is between floors with passengers."""
    start = T0 + timedelta(hours=8)
    found: list[datetime] = []

    def look(t: datetime, model: Elevator) -> None:
        if found or t < start or model.phase is not Phase.RUNNING or model.run is None:
            return
        position, _ = model.run.at(t)
        between = abs(position / model.floor_height_m - round(position / model.floor_height_m))
        if model.passengers > 0 and between > 0.2:
            found.append(t)

    simulate(build(profile), CITY, T0, start + timedelta(hours=1), after_step=look)
    assert found
    return found[0]


@pytest.mark.parametrize(
    ("outage", "rescue_minutes"),
    [(timedelta(minutes=30), 240), (timedelta(hours=3), 20)],
    ids=["power-returns-first", "rescue-team-first"],
)
def test_power_cut_traps_the_passengers_of_a_running_car(
    profile: DeviceProfile, cut_at: datetime, outage: timedelta, rescue_minutes: int
) -> None:
    world = World(CITY.districts, power_cuts=(PowerCut("north", cut_at, outage),))
    model = build(profile, {"trapped_after_s": 45, "rescue_minutes": rescue_minutes})
    emissions = simulate(model, world, T0, cut_at + outage + timedelta(hours=1))
    check_against_profile(profile, emissions)
    check_doors(telemetry(emissions), model.lowest_floor, model.floors)

    seen = [(e.t, e.body["type"], e.body["code"]) for e in events(emissions)]
    kinds = [name for _, name, _ in seen if name != "alarm_button"]
    assert kinds == ["main_power_off", "trapped_passengers", "back_to_normal"]
    off, trapped, normal = (next(e for e in seen if e[1] == k) for k in kinds)
    assert off[0] == cut_at and off[2] == 41
    assert trapped[0] == cut_at + timedelta(seconds=45) and trapped[2] == 11
    assert normal[0] >= cut_at + outage and normal[2] == 40
    # Passengers press the alarm button while they wait.
    assert any(name == "alarm_button" for _, name, _ in seen)

    during = [e.body for e in telemetry(emissions) if cut_at <= e.t < cut_at + outage]
    assert during[0]["state"] == "stopped" and during[0]["power"] == "battery"
    assert not during[0]["in_door_zone"] and during[0]["passengers_present"]
    assert all(b["power"] == "battery" and b["state"] != "running" for b in during)
    released = [b for b in during if not b["passengers_present"]]
    if rescue_minutes < outage.total_seconds() / 60:
        assert released and released[0]["in_door_zone"]  # wound to a landing, then let out
    else:
        assert not released
    before_normal = [e.body for e in telemetry(emissions) if e.t <= normal[0]][-1]
    assert not before_normal["passengers_present"] and before_normal["power"] == "mains"


def test_short_power_blip_traps_nobody(profile: DeviceProfile, cut_at: datetime) -> None:
    world = World(CITY.districts, power_cuts=(PowerCut("north", cut_at, timedelta(seconds=20)),))
    model = build(profile)
    emissions = simulate(model, world, T0, cut_at + timedelta(minutes=20))
    kinds = [e.body["type"] for e in events(emissions)]
    assert kinds[0] == "main_power_off" and kinds[-1] == "back_to_normal"
    assert "trapped_passengers" not in kinds
    check_doors(telemetry(emissions), model.lowest_floor, model.floors)


def test_a_power_cut_elsewhere_does_not_stop_the_car(profile: DeviceProfile) -> None:
    world = World(CITY.districts, power_cuts=(PowerCut("south", T0, timedelta(days=1)),))
    emissions = simulate(build(profile), world, T0, T0 + timedelta(hours=12))
    assert events(emissions) == []


def fault_incident(code: int, start: datetime, duration: timedelta) -> World:
    incident = Incident(
        "elevator_fault", start, duration, devices=frozenset({ID}), params=(("code", code),)
    )
    return World(CITY.districts, incidents=(incident,))


def test_unintended_car_movement_only_under_its_fault(profile: DeviceProfile) -> None:
    start = T0 + timedelta(hours=9)
    world = fault_incident(5, start, timedelta(hours=1))
    model = build(profile)
    emissions = simulate(model, world, T0, start + timedelta(hours=2))
    check_against_profile(profile, emissions)

    ucm = [e for e in events(emissions) if e.body["type"] == "unintended_car_movement"]
    assert len(ucm) == 1 and ucm[0].body["code"] == 5 and start <= ucm[0].t
    # The car moved with its doors open, then stopped off the landing, faulted.
    moving_open = [
        e for e in telemetry(emissions) if e.body["door"] != "closed" and e.body["speed_mps"] > 0
    ]
    assert moving_open
    for e in moving_open:
        assert e.t == ucm[0].t and e.body["state"] == "fault" and e.body["fault_code"] == 5
        assert not e.body["in_door_zone"]
    after = [e.body for e in telemetry(emissions) if ucm[0].t < e.t < start + timedelta(hours=1)]
    assert after[-1]["state"] == "fault" and after[-1]["fault_code"] == 5
    assert not after[-1]["in_door_zone"]
    # Repaired when the incident ends, back in service.
    normal = [e for e in events(emissions) if e.body["type"] == "back_to_normal"]
    assert len(normal) == 1 and normal[0].t >= start + timedelta(hours=1)
    check_doors(
        telemetry([e for e in emissions if e.t > normal[0].t]), model.lowest_floor, model.floors
    )


def test_trapped_passengers_drill(profile: DeviceProfile) -> None:
    start = T0 + timedelta(hours=8)
    world = fault_incident(11, start, timedelta(hours=2))
    emissions = simulate(build(profile), world, T0, start + timedelta(hours=3))
    check_against_profile(profile, emissions)
    seen = [(e.t, e.body["type"]) for e in events(emissions) if e.body["type"] != "alarm_button"]
    assert [name for _, name in seen] == [
        "stopped_outside_unlocking_zone",
        "trapped_passengers",
        "back_to_normal",
    ]
    assert seen[1][0] - seen[0][0] == timedelta(seconds=40)  # the profile's trapped_after_s
    check_doors(telemetry(emissions), 1, 18)


@pytest.mark.parametrize(
    ("code", "name"),
    [(3, "door_open_fault"), (2, "door_close_fault"), (1, "safety_circuit_broken")],
)
def test_fault_incidents_raise_their_events(profile: DeviceProfile, code: int, name: str) -> None:
    start = T0 + timedelta(hours=10)
    world = fault_incident(code, start, timedelta(minutes=45))
    model = build(profile)
    emissions = simulate(model, world, T0, start + timedelta(hours=2))
    check_against_profile(profile, emissions)
    seen = [e for e in events(emissions) if e.body["type"] == name]
    assert len(seen) == 1 and seen[0].body["code"] == code
    faulted = [e.body for e in telemetry(emissions) if e.body["fault_code"] == code]
    assert faulted and all(b["state"] == "fault" for b in faulted)
    assert events(emissions)[-1].body["type"] == "back_to_normal"
    if code != 2:  # a door that will not close stands open, but the car never moves
        check_doors(telemetry(emissions), model.lowest_floor, model.floors)


def test_fire_return_recalls_the_car_to_the_lobby(profile: DeviceProfile) -> None:
    start = T0 + timedelta(hours=11)
    world = fault_incident(44, start, timedelta(minutes=30))
    emissions = simulate(build(profile), world, T0, start + timedelta(hours=1))
    check_against_profile(profile, emissions)
    assert [e.body["type"] for e in events(emissions)] == ["fire_return", "back_to_normal"]
    recalled = [
        e.body
        for e in telemetry(emissions)
        if start + timedelta(minutes=5) < e.t < start + timedelta(minutes=30)
    ]
    assert recalled and all(
        b["floor"] == 1
        and b["door"] == "open"
        and b["service_mode"] == "fire_return"
        and not b["passengers_present"]
        for b in recalled
    )


def test_an_unknown_incident_code_is_an_error(profile: DeviceProfile) -> None:
    world = fault_incident(77, T0, timedelta(hours=1))
    with pytest.raises(ValueError, match="code 77"):
        build(profile).step(T0, world)
