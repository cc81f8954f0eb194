"""Scenarios: loading, validation, compilation to a World, and the shipped scenarios' physics.

The first half checks the YAML format and its errors. The second half runs the
shipped scenarios offline through the real `Fleet` and `fleet_stream` (only the
profiles a check needs, to keep the file fast) and checks that what the
devices say on the wire crosses the thresholds behind each `expect` entry
inside its [after, before] window.
"""

from __future__ import annotations

import bisect
import itertools
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import orjson
import pytest

from devices import load_profiles
from devices.registry import DeviceRecord
from simulators.city import City, district_grid, generate_city
from simulators.faults import (
    FaultInjector,
    FaultKind,
    FaultSpec,
    MalformedVariant,
)
from simulators.fleet import Fleet, sim_devices
from simulators.model import SimDevice
from simulators.runner import fleet_stream
from simulators.scenario import (
    SCENARIO_DIR,
    Expectation,
    Scenario,
    ScenarioError,
    find_scenario,
    load_scenario,
)
from simulators.world import District, World, distance_km

PROFILES = load_profiles()
SHIPPED = sorted(SCENARIO_DIR.glob("*.yaml"))
HEADER = "title: Test\nstart: 2026-07-20T12:00:00+08:00\nduration: 6h\n"


def write(tmp_path: Path, text: str, name: str = "drill.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def city_district(scenario_district: str, districts: list[District]) -> str:
    """A scenario's district (a name, or a 1-based index into the city) as a city district name."""
    if scenario_district.isdigit():
        return districts[int(scenario_district) - 1].name
    return scenario_district


# --- the shipped scenarios load and compile -------------------------------------------------


def test_the_four_scenarios_of_the_issue_are_shipped() -> None:
    assert {p.stem for p in SHIPPED} >= {"typhoon", "pollution", "entrapment", "quiet_day"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_scenario_compiles_to_a_world_over_its_city(path: Path) -> None:
    sc = load_scenario(path)
    assert sc.name == path.stem and sc.title and sc.path == path
    assert sc.start.utcoffset() == timedelta(hours=8), "Chinese cities run on +08:00"
    city = generate_city(sc.city.districts, sc.city.devices, sc.seed)
    assert len(city.districts) == sc.city.districts and len(city.devices) == sc.city.devices
    world = sc.world(city.districts)
    assert isinstance(world, World)
    assert world.districts == tuple(city.districts)
    steps = sc.timeline
    assert len(world.storms) == sum(s.storm is not None for s in steps)
    assert len(world.episodes) == sum(s.pollution is not None for s in steps)
    assert len(world.power_cuts) == sum(s.power_cut is not None for s in steps)
    assert len(world.incidents) == sum(s.incident is not None for s in steps)
    names = {d.name for d in city.districts}
    for cut in world.power_cuts:
        assert cut.district in names
        assert sc.start <= cut.start < sc.start + sc.duration
    for incident in world.incidents:
        assert not incident.district or incident.district in names
    for storm in world.storms:
        assert sc.start <= storm.start < sc.start + sc.duration
    for step in steps:
        assert timedelta(0) <= step.at < sc.duration, "a step after the end never happens"
    # Every device of the scenario's city can be simulated, and its faults compile.
    fleet = Fleet(sim_devices(city.devices, PROFILES), world, sc.start, sc.seed)
    assert len(fleet.devices) == sc.city.devices
    for at, entry in sc.faults():
        assert FaultSpec.from_entry(entry, sc.start + at).start == sc.start + at


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_expectations_are_checkable(path: Path) -> None:
    """Each expectation names a domain of a profile, an event that profile has, and a window
    inside the run that an alert can fall in."""
    sc = load_scenario(path)
    domains: dict[str, set[str]] = defaultdict(set)
    for profile in PROFILES.values():
        domains[profile.domain] |= set(profile.events)
    districts = district_grid(sc.city.districts)
    for e in sc.expect:
        assert e.domain in domains, e
        if e.event is not None:
            assert e.event in domains[e.domain], e
        if e.district is not None:
            assert city_district(e.district, districts) in {d.name for d in districts}, e
        assert e.before is not None, f"{e.what}: give every expectation a deadline"
        assert timedelta(0) <= e.after < e.before <= sc.duration, e


def test_typhoon_expectations_parse_into_their_fields() -> None:
    sc = load_scenario("typhoon")
    first, last = sc.expect[0], sc.expect[-1]
    assert first == Expectation(
        domain="meteorology",
        level="blue",
        what="rainstorm signal",
        after=timedelta(hours=9),
        before=timedelta(hours=11),
        rule="rainstorm_signal",
    )
    assert last.event == "cover_opened" and last.district == "1"
    assert (last.after, last.before) == (timedelta(hours=14), timedelta(hours=14, minutes=30))
    signals = [e for e in sc.expect if e.domain == "meteorology"]
    assert [e.level for e in signals] == ["blue", "yellow", "orange", "red"]
    assert [e.after for e in signals] == sorted(e.after for e in signals)


def test_an_expectation_defaults_to_the_whole_run(tmp_path: Path) -> None:
    sc = load_scenario(
        write(tmp_path, HEADER + "expect:\n  - {domain: air, level: blue, what: something}\n")
    )
    (e,) = sc.expect
    assert (e.after, e.before, e.district, e.profile, e.event) == (
        timedelta(0),
        None,
        None,
        None,
        None,
    )


def test_defaults_of_a_minimal_scenario(tmp_path: Path) -> None:
    sc = load_scenario(write(tmp_path, HEADER, "minimal.yaml"))
    assert sc.name == "minimal"  # from the file name
    assert (sc.speed, sc.seed, sc.timezone) == (60.0, 0, "Asia/Shanghai")
    assert (sc.city.districts, sc.city.devices) == (4, 400)
    assert sc.timeline == [] and sc.expect == [] and sc.faults() == []
    named = load_scenario(write(tmp_path, HEADER + "name: drill_7\n", "other.yaml"))
    assert named.name == "drill_7"


# --- errors name the file and the field --------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        (
            "title: T\nstart: 2026-07-20T12:00:00+08:00\nduration: a fortnight\n",
            ["duration:", "'a fortnight' is not a duration"],
        ),
        (
            HEADER + "timeline:\n  - at: 1h\n    storm: {peak_mm_h: 10, duration: soon}\n",
            ["timeline.0.storm.duration:", "'soon' is not a duration"],
        ),
        (HEADER + "timeline:\n  - at: whenever\n", ["timeline.0.at:", "not a duration"]),
        (HEADER + "colour: red\n", ["colour:", "Extra inputs are not permitted"]),
        (
            HEADER + "timeline:\n  - at: 1h\n    storm: {peak_mm_h: 10, duration: 1h, gusts: 3}\n",
            ["timeline.0.storm.gusts:", "Extra inputs"],
        ),
        (
            HEADER + "timeline:\n  - at: 1h\n    tornado: {strength: 3}\n",
            ["timeline.0.tornado:", "Extra inputs"],
        ),
        (HEADER + "city: {districts: 4, people: 9}\n", ["city.people:"]),
        ("start: 2026-07-20T12:00:00+08:00\nduration: 1h\n", ["title:", "Field required"]),
        ("title: T\nduration: 1h\n", ["start:", "Field required"]),
        (
            HEADER + "timeline:\n  - at: 1h\n    storm: {peak_mm_h: 900, duration: 1h}\n",
            ["timeline.0.storm.peak_mm_h:", "less than or equal to 300"],
        ),
        (
            HEADER
            + "timeline:\n  - at: 1h\n    storm: {peak_mm_h: 9, duration: 1h, start_at: up}\n",
            ["timeline.0.storm.start_at"],
        ),
        (HEADER + "speed: 0\n", ["speed:", "greater than 0"]),
        (
            HEADER + "timeline:\n  - at: 1h\n    faults: [{kind: dropout, rate: 1.5}]\n",
            ["timeline.0.faults.0.rate:", "less than or equal to 1"],
        ),
        (
            HEADER + "expect:\n  - {domain: air, level: purple, what: smog}\n",
            ["expect.0.level:", "'blue', 'yellow', 'orange' or 'red'"],
        ),
        (
            HEADER + "expect:\n  - {domain: air, level: red, what: smog, within: 2h}\n",
            ["expect.0.within:", "Extra inputs"],
        ),
    ],
    ids=[
        "bad-duration",
        "bad-step-duration",
        "bad-step-time",
        "unknown-key",
        "unknown-storm-key",
        "unknown-step-kind",
        "unknown-city-key",
        "missing-title",
        "missing-start",
        "storm-too-strong",
        "bad-compass-point",
        "zero-speed",
        "fault-rate",
        "bad-level",
        "unknown-expect-key",
    ],
)
def test_invalid_scenarios_name_file_and_field(
    tmp_path: Path, text: str, fragments: list[str]
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: invalid scenario"), message
    for fragment in fragments:
        assert fragment in message, message


def test_every_invalid_field_is_listed(tmp_path: Path) -> None:
    path = write(tmp_path, "duration: later\nmood: grim\n")
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    lines = str(caught.value).splitlines()
    assert lines[0] == f"{path}: invalid scenario"
    fields = {line.strip().split(":")[0] for line in lines[1:]}
    assert fields == {"title", "start", "duration", "mood"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- a list\n- of things\n", "a scenario is a YAML mapping"),
        ("", "a scenario is a YAML mapping"),
        ("title: [unclosed\n", "cannot read the scenario"),
    ],
    ids=["list", "empty", "broken-yaml"],
)
def test_unreadable_scenarios_name_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ScenarioError, match=message) as caught:
        load_scenario(path)
    assert str(caught.value).startswith(f"{path}: ")


def test_a_scenario_file_that_is_not_utf8_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "gbk.yaml"
    path.write_bytes(("title: 台风\n" + HEADER).encode("gbk"))
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    assert str(caught.value).startswith(f"{path}: cannot read the scenario")


def test_start_without_offset_names_the_file_and_field(tmp_path: Path) -> None:
    path = write(tmp_path, "title: T\nstart: 2026-07-20T12:00:00\nduration: 1h\n")
    sc = load_scenario(path)
    with pytest.raises(ScenarioError) as caught:
        sc.world(district_grid(4))
    assert str(caught.value) == f"{path}: start needs a UTC offset, e.g. +08:00"


@pytest.mark.parametrize(
    "step",
    [
        "power_cut: {district: d09, duration: 1h}",
        "power_cut: {district: '5', duration: 1h}",
        "power_cut: {district: '0', duration: 1h}",
        "incident: {kind: blockage, district: harbour, duration: 1h}",
    ],
    ids=["name", "index-past-the-end", "index-zero", "incident"],
)
def test_a_district_not_in_the_city_names_file_district_and_the_city(
    tmp_path: Path, step: str
) -> None:
    path = write(tmp_path, HEADER + f"timeline:\n  - at: 1h\n    {step}\n")
    sc = load_scenario(path)
    with pytest.raises(ScenarioError) as caught:
        sc.world(district_grid(4))
    message = str(caught.value)
    assert message.startswith(f"{path}: district ")
    assert "is not in the simulated city (d01, d02, d03, d04)" in message


def test_districts_by_name_or_by_index(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        HEADER
        + "timeline:\n"
        + "  - at: 1h\n    power_cut: {district: '3', duration: 1h}\n"
        + "  - at: 2h\n    power_cut: {district: d01, duration: 1h}\n"
        + "  - at: 3h\n    incident: {kind: blockage, district: '2', duration: 1h}\n"
        + "  - at: 4h\n    incident: {kind: cover_open, duration: 1h, devices: [dr-d01-00001]}\n",
    )
    sc = load_scenario(path)
    world = sc.world(district_grid(4))
    assert [c.district for c in world.power_cuts] == ["d03", "d01"]
    blockage, cover = world.incidents
    assert blockage.district == "d02" and blockage.start == sc.start + timedelta(hours=3)
    assert cover.district == "" and cover.devices == frozenset({"dr-d01-00001"})
    assert world.power_on("d03", sc.start + timedelta(minutes=59))
    assert not world.power_on("d03", sc.start + timedelta(hours=1))
    assert world.power_on("d03", sc.start + timedelta(hours=2))


def test_a_pollution_district_not_in_the_city_is_an_error(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        HEADER
        + "timeline:\n  - at: 0h\n    pollution: {peak_factor: 5, build: 2h, districts: [d09]}\n",
    )
    with pytest.raises(ScenarioError, match="d09"):
        load_scenario(path).world(district_grid(4))


def test_pollution_districts_by_index_like_other_districts(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        HEADER
        + "timeline:\n  - at: 0h\n    pollution: {peak_factor: 5, build: 2h, districts: ['2']}\n",
    )
    sc = load_scenario(path)
    world = sc.world(district_grid(4))
    at_peak = sc.start + timedelta(hours=3)
    assert world.pollution_factor("d01", at_peak) == 1.0
    assert world.pollution_factor("d02", at_peak) == 5.0


def test_an_unknown_fault_kind_in_a_scenario_names_file_and_field(tmp_path: Path) -> None:
    path = write(
        tmp_path, HEADER + "timeline:\n  - at: 1h\n    faults: [{kind: meltdown, rate: 0.1}]\n"
    )
    with pytest.raises(ScenarioError) as caught:
        sc = load_scenario(path)
        [FaultSpec.from_entry(entry, sc.start + at) for at, entry in sc.faults()]
    assert str(caught.value).startswith(f"{path}: ")
    assert "timeline.0.faults.0.kind" in str(caught.value)


# --- finding scenarios ----------------------------------------------------------------------


def test_find_a_shipped_scenario_by_name() -> None:
    for path in SHIPPED:
        assert find_scenario(path.stem) == SCENARIO_DIR / f"{path.stem}.yaml"
    assert load_scenario("quiet_day").name == "quiet_day"


def test_find_a_scenario_by_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, HEADER, "my_drill.yaml")
    assert find_scenario(path) == path
    assert find_scenario(str(path)) == path
    monkeypatch.chdir(tmp_path)
    assert find_scenario("my_drill.yaml") == Path("my_drill.yaml")
    assert load_scenario("my_drill.yaml").name == "my_drill"
    # A shipped file by its path works the same as by its name.
    assert load_scenario(SCENARIO_DIR / "typhoon.yaml") == load_scenario("typhoon")


@pytest.mark.parametrize("name", ["typhon", "missing.yaml", "/no/such/dir/x.yaml"])
def test_an_unknown_scenario_lists_the_shipped_ones(name: str) -> None:
    shipped = ", ".join(p.stem for p in SHIPPED)
    with pytest.raises(ScenarioError) as caught:
        load_scenario(name)
    message = str(caught.value)
    assert repr(name) in message
    assert message.endswith(f"(shipped: {shipped})")


# --- storms' compass points -------------------------------------------------------------------

COMPASS = {
    "north": (1, 0),
    "south": (-1, 0),
    "east": (0, 1),
    "west": (0, -1),
    "northeast": (1, 1),
    "northwest": (1, -1),
    "southeast": (-1, 1),
    "southwest": (-1, -1),
    "centre": (0, 0),
}


def storm_world(tmp_path: Path, districts: list[District]) -> tuple[Scenario, World]:
    steps = "".join(
        f"  - at: {k}h\n    storm: {{peak_mm_h: 20, duration: 1h, start_at: {p}, end_at: centre}}\n"
        for k, p in enumerate(COMPASS)
    )
    text = "title: Storms\nstart: 2026-07-20T12:00:00+08:00\nduration: 12h\ntimeline:\n"
    sc = load_scenario(write(tmp_path, text + steps))
    return sc, sc.world(districts)


@pytest.mark.parametrize(
    "districts",
    [
        district_grid(1),
        district_grid(4),
        district_grid(9),
        district_grid(7, centre=(39.9042, 116.4074), spacing_km=12),
        generate_city(5, 10, seed=2).districts,
    ],
    ids=["one", "four", "nine", "seven-beijing", "city-of-five"],
)
def test_compass_points_lie_outside_the_city_in_their_direction(
    tmp_path: Path, districts: list[District]
) -> None:
    _, world = storm_world(tmp_path, districts)
    lats = [d.lat for d in districts]
    lons = [d.lon for d in districts]
    mid_lat, mid_lon = (max(lats) + min(lats)) / 2, (max(lons) + min(lons)) / 2
    for (name, (north, east)), storm in zip(COMPASS.items(), world.storms, strict=True):
        lat, lon = storm.path_from
        assert storm.path_to == world.storms[-1].path_from  # every storm ends at the centre
        if name == "centre":
            assert (lat, lon) == pytest.approx((mid_lat, mid_lon))
            continue
        # Clear of every district's disc, so the storm starts outside the city...
        for d in districts:
            assert distance_km(lat, lon, d.lat, d.lon) > d.radius_km * 1.5, (name, d)
        # ...on the side its name says.
        if north > 0:
            assert lat > max(lats), name
        elif north < 0:
            assert lat < min(lats), name
        else:
            assert lat == pytest.approx(mid_lat), name
        if east > 0:
            assert lon > max(lons), name
        elif east < 0:
            assert lon < min(lons), name
        else:
            assert lon == pytest.approx(mid_lon), name


def test_a_storm_crossing_the_city_rains_on_it_only_on_the_way(tmp_path: Path) -> None:
    """A cell from the west edge to the east edge: on the west district first, then the east."""
    districts = district_grid(2)  # d01 west, d02 east
    text = HEADER + (
        "timeline:\n  - at: 0h\n    storm: {peak_mm_h: 40, duration: 4h, radius_km: 3, "
        "start_at: west, end_at: east}\n"
    )
    sc = load_scenario(write(tmp_path, text))
    world = sc.world(districts)
    west, east = districts

    def peak_time(d: District) -> timedelta:
        samples = [sc.start + timedelta(minutes=m) for m in range(0, 241, 5)]
        return max(samples, key=lambda t: world.rain_intensity(d.lat, d.lon, t)) - sc.start

    assert world.rain_intensity(west.lat, west.lon, sc.start + timedelta(minutes=1)) < 1
    assert peak_time(west) < peak_time(east)


def test_points_given_as_coordinates_are_kept(tmp_path: Path) -> None:
    text = HEADER + (
        "timeline:\n  - at: 0h\n    storm: {peak_mm_h: 9, duration: 1h, "
        "start_at: [31.0, 121.0], end_at: [31.5, 121.9]}\n"
    )
    world = load_scenario(write(tmp_path, text)).world(district_grid(4))
    assert (world.storms[0].path_from, world.storms[0].path_to) == ((31.0, 121.0), (31.5, 121.9))


# --- faults in the timeline ------------------------------------------------------------------

FAULTS_SCENARIO = (
    HEADER
    + """\
city: {districts: 1, devices: 10}
timeline:
  - at: 2h
    note: a drill
    faults:
      - {kind: dropout, rate: 0.5, duration: 30m, devices: [wl-d01-00001]}
      - {kind: duplicate, rate: 1, duration: 1h}
  - at: 4h30m
    faults:
      - {kind: malformed, rate: 0.05, params: {variant: nan}}
"""
)


def test_step_faults_become_fault_specs_starting_at_the_step(tmp_path: Path) -> None:
    sc = load_scenario(write(tmp_path, FAULTS_SCENARIO))
    assert [(at, f.kind) for at, f in sc.faults()] == [
        (timedelta(hours=2), "dropout"),
        (timedelta(hours=2), "duplicate"),
        (timedelta(hours=4, minutes=30), "malformed"),
    ]
    dropout, duplicate, malformed = (
        FaultSpec.from_entry(entry, sc.start + at) for at, entry in sc.faults()
    )
    two = sc.start + timedelta(hours=2)
    assert dropout.kind is FaultKind.DROPOUT
    assert (dropout.start, dropout.once, dropout.duration) == (two, True, timedelta(minutes=30))
    assert dropout.devices == frozenset({"wl-d01-00001"}) and dropout.rate == 0.5
    assert (duplicate.start, duplicate.end) == (two, two + timedelta(hours=1))
    assert duplicate.duration is None
    late = sc.start + timedelta(hours=4, minutes=30)
    assert (malformed.start, malformed.end) == (late, None)
    assert malformed.params["variant"] == (MalformedVariant.NAN,)


def test_step_faults_act_only_from_the_step_time(tmp_path: Path) -> None:
    """The duplicate fault of the step at 2h doubles messages in [2h, 3h) and nowhere else."""
    sc = load_scenario(write(tmp_path, FAULTS_SCENARIO))
    city = generate_city(sc.city.districts, sc.city.devices, sc.seed)
    gauges = [r for r in city.devices if r.profile in ("water_level", "rain_gauge")]
    specs = [FaultSpec.from_entry(e, sc.start + at) for at, e in sc.faults()][1:2]
    injector = FaultInjector(specs, sc.seed, PROFILES)
    fleet = Fleet(
        sim_devices(gauges, PROFILES),
        sc.world(city.districts),
        sc.start,
        sc.seed,
        injector=injector,
    )
    messages = [m for m in fleet_stream(fleet, sc.start + sc.duration) if m.channel == "telemetry"]
    seen: dict[tuple[str, bytes], int] = defaultdict(int)
    for m in messages:
        seen[(m.topic, m.payload)] += 1
    doubled = {m.t - sc.start for m in messages if seen[(m.topic, m.payload)] == 2}
    assert doubled and injector.counts["duplicate"] == len(doubled)
    assert min(doubled) >= timedelta(hours=2) and max(doubled) < timedelta(hours=3)
    in_window = {
        m.t - sc.start
        for m in messages
        if timedelta(hours=2) <= m.t - sc.start < timedelta(hours=3)
    }
    assert doubled == in_window
    assert set(seen.values()) <= {1, 2}


# --- physics of the shipped scenarios ------------------------------------------------------


@dataclass
class ScenarioRun:
    """What a scenario's devices said, as offsets from the scenario start."""

    scenario: Scenario
    city: City
    devices: dict[str, SimDevice]
    telemetry: dict[str, list[tuple[timedelta, dict[str, Any]]]] = field(default_factory=dict)
    events: list[tuple[str, timedelta, dict[str, Any]]] = field(default_factory=list)
    status: list[tuple[str, timedelta, bytes]] = field(default_factory=list)

    def of(self, profile: str) -> dict[str, list[tuple[timedelta, dict[str, Any]]]]:
        return {d: s for d, s in self.telemetry.items() if self.devices[d].profile.name == profile}

    def expectations(self, domain: str) -> dict[str, Expectation]:
        """The domain's expectations by level (one per level in these domains)."""
        found: dict[str, Expectation] = {
            e.level: e for e in self.scenario.expect if e.domain == domain
        }
        assert len(found) == sum(e.domain == domain for e in self.scenario.expect), domain
        return found

    def expectation(self, domain: str, what: str) -> Expectation:
        (found,) = [e for e in self.scenario.expect if e.domain == domain and what in e.what]
        return found

    def district(self, expectation: Expectation) -> str:
        assert expectation.district is not None
        return city_district(expectation.district, self.city.districts)


def play_offline(
    name: str,
    pick: Callable[[DeviceRecord], bool],
    until: timedelta | None = None,
    from_: timedelta = timedelta(0),
    into: ScenarioRun | None = None,
) -> ScenarioRun:
    """Run a shipped scenario through Fleet + fleet_stream for the devices `pick` selects."""
    sc = load_scenario(name)
    city = generate_city(sc.city.districts, sc.city.devices, sc.seed)
    records = [r for r in city.devices if pick(r)]
    assert records, f"{name}: no device picked"
    devices = sim_devices(records, PROFILES)
    start = sc.start + from_
    fleet = Fleet(devices, sc.world(city.districts), start, sc.seed)
    run = into or ScenarioRun(sc, city, {})
    run.devices.update({d.device_id: d for d in devices})
    for m in fleet_stream(fleet, sc.start + (until or sc.duration)):
        if m.channel == "status":
            run.status.append((m.device_id, m.t - sc.start, m.payload))
            continue
        body = orjson.loads(m.payload)
        offset = datetime.fromisoformat(body["ts"]) - sc.start
        if m.channel == "telemetry":
            run.telemetry.setdefault(m.device_id, []).append((offset, body["values"]))
        else:
            run.events.append((m.device_id, offset, body))
    return run


def first_crossing(
    series: list[tuple[timedelta, dict[str, Any]]],
    value: Callable[[int], float],
    threshold: float,
    *,
    strict: bool = False,
) -> timedelta | None:
    for i, (t, _) in enumerate(series):
        v = value(i)
        if v > threshold or (not strict and v >= threshold):
            return t
    return None


def reading(series: list[tuple[timedelta, dict[str, Any]]], metric: str) -> Callable[[int], float]:
    """The value of `metric` in report i."""
    return lambda i: float(series[i][1][metric])


def window_totals(
    series: list[tuple[timedelta, dict[str, Any]]], metric: str, hours: float
) -> Callable[[int], float]:
    """Sum of `metric` over the reports in (t - hours, t] at report i: a rolling total."""
    times = [t for t, _ in series]
    prefix = [0.0, *itertools.accumulate(float(v[metric]) for _, v in series)]
    span = timedelta(hours=hours)

    def total(i: int) -> float:
        first = bisect.bisect_right(times, times[i] - span)
        return prefix[i + 1] - prefix[first]

    return total


def window_means(
    series: list[tuple[timedelta, dict[str, Any]]], metric: str, hours: float
) -> Callable[[int], float]:
    """Mean of `metric` over (t - hours, t]; NaN until a whole window of reports exists."""
    times = [t for t, _ in series]
    totals = window_totals(series, metric, hours)
    span = timedelta(hours=hours)

    def mean(i: int) -> float:
        if times[i] - times[0] < span - timedelta(minutes=10):
            return float("nan")
        first = bisect.bisect_right(times, times[i] - span)
        return totals(i) / (i + 1 - first)

    return mean


def within(t: timedelta | None, e: Expectation) -> bool:
    return t is not None and e.after <= t <= (e.before or timedelta.max)


@cache
def typhoon() -> ScenarioRun:
    """Rain and river gauges for the whole 30 h; manholes until after the last drainage
    expectation."""
    run = play_offline("typhoon", lambda r: r.profile in ("rain_gauge", "water_level"))
    drainage = [e.before for e in run.scenario.expect if e.domain == "drainage"]
    until = max(b for b in drainage if b is not None) + timedelta(minutes=30)
    return play_offline("typhoon", lambda r: r.profile == "drainage", until, into=run)


# CMA rainstorm signals: (hours, mm) totals by level; see devices/profiles/rain_gauge.yaml.
RAINSTORM_SIGNALS = {
    "blue": (12, 50.0),
    "yellow": (6, 50.0),
    "orange": (3, 50.0),
    "red": (3, 100.0),
}


def test_typhoon_rain_gauges_climb_the_four_rainstorm_signals_in_order_and_on_time() -> None:
    run = typhoon()
    expected = run.expectations("meteorology")
    assert list(expected) == list(RAINSTORM_SIGNALS)
    gauges = run.of("rain_gauge")
    assert len(gauges) == sum(r.profile == "rain_gauge" for r in run.city.devices)
    for device_id, series in gauges.items():
        crossings = {
            level: first_crossing(series, window_totals(series, "rain_mm", hours), mm)
            for level, (hours, mm) in RAINSTORM_SIGNALS.items()
        }
        for level, e in expected.items():
            assert within(crossings[level], e), (device_id, level, crossings[level], e)
        times = [crossings[level] or timedelta.max for level in RAINSTORM_SIGNALS]
        assert times == sorted(times) and len(set(times)) == 4, (device_id, crossings)


def test_typhoon_rivers_pass_warning_then_guaranteed_levels_and_recede() -> None:
    run = typhoon()
    expected = run.expectations("hydrology")
    assert set(expected) == {"blue", "yellow", "orange", "red"}
    gauges = run.of("water_level")
    assert gauges
    for device_id, series in gauges.items():
        a = run.devices[device_id].attributes
        levels = {
            "blue": a["warning_level_m"] - a["approach_margin_m"],
            "yellow": a["warning_level_m"],
            "orange": a["guaranteed_level_m"],
            "red": a["historical_max_m"],
        }
        crossings = {
            level: first_crossing(series, reading(series, "level_m"), m)
            for level, m in levels.items()
        }
        for level, e in expected.items():
            assert within(crossings[level], e), (device_id, level, crossings[level], e)
        order = [crossings[level] for level in ("blue", "yellow", "orange", "red")]
        assert None not in order and order == sorted(order), (device_id, crossings)  # type: ignore[type-var]
        last_t, last = series[-1]
        assert last_t > run.scenario.duration - timedelta(minutes=10)
        assert last["level_m"] < a["warning_level_m"], (device_id, "still above warning at the end")
        assert series[0][1]["level_m"] < levels["blue"], (device_id, "already high at the start")


def test_typhoon_rivers_reach_no_alert_level_the_scenario_does_not_expect() -> None:
    run = typhoon()
    levels = set(run.expectations("hydrology"))
    for device_id, series in run.of("water_level").items():
        peak = max(v["level_m"] for _, v in series)
        record = run.devices[device_id].attributes["historical_max_m"]
        assert peak < record or "red" in levels, (device_id, peak, record)


def test_typhoon_pipes_surcharge_then_district_1_floods_and_its_covers_lift() -> None:
    run = typhoon()
    surcharge = run.expectation("drainage", "surcharged")
    pipes = run.of("drainage")
    assert pipes
    surcharged = {
        d: first_crossing(s, reading(s, "fill_ratio"), 1.0, strict=True) for d, s in pipes.items()
    }
    first = min(t for t in surcharged.values() if t is not None)
    assert within(first, surcharge), first
    assert surcharge.before is not None
    assert sum(t is not None and t <= surcharge.before for t in surcharged.values()) >= 2

    # Road closure depth: first in district 1, inside its window.
    closure = run.expectation("drainage", "closure")
    flooded = {
        d: first_crossing(
            s,
            reading(s, "road_water_m"),
            run.devices[d].attributes["road_closure_m"],
        )
        for d, s in pipes.items()
    }
    by_district: dict[str, list[timedelta]] = defaultdict(list)
    for d, t in flooded.items():
        if t is not None:
            by_district[run.devices[d].district].append(t)
    home = run.district(closure)
    assert within(min(by_district[home]), closure), by_district[home]
    assert min(by_district[home]) == min(min(ts) for ts in by_district.values())

    # The manhole cover event expectation: that event, in that district, in its window only.
    (cover,) = [e for e in run.scenario.expect if e.event == "cover_opened"]
    opened = [(d, t) for d, t, body in run.events if body["type"] == cover.event]
    assert opened
    assert {run.devices[d].district for d, _ in opened} == {run.district(cover)}
    assert all(within(t, cover) for _, t in opened), opened


@cache
def pollution() -> ScenarioRun:
    return play_offline("pollution", lambda r: r.profile == "air_quality")


# PM2.5 24-hour mean at the top of the AQI band below each expected level (HJ 633-2012):
# 75 µg/m³ is AQI 100 (light pollution above), 115 is 150, 150 is 200 (heavy above).
PM25_24H_BY_LEVEL = {"blue": 75.0, "yellow": 115.0, "orange": 150.0}


def test_pollution_builds_day_over_day() -> None:
    run = pollution()
    stations = run.of("air_quality")
    assert len(stations) == sum(r.profile == "air_quality" for r in run.city.devices)
    for device_id, series in stations.items():
        days: dict[int, list[float]] = defaultdict(list)
        for t, v in series:
            days[t // timedelta(days=1)].append(v["pm2_5"])
        means = [sum(days[k]) / len(days[k]) for k in sorted(days)]
        assert len(means) == 3
        assert means[0] < means[1] < means[2], (device_id, means)
        assert means[0] < 75, "the episode starts from an ordinary day"


def test_pollution_24h_mean_reaches_heavy_pollution_inside_its_window() -> None:
    # The expectations are on the hourly AQI (checked through the rules in
    # tests/integration/test_scenario_alerts.py); the slower 24 h mean must still climb
    # through the same levels in order and reach heavy pollution before the episode ends.
    run = pollution()
    expected = run.expectations("air")
    assert set(expected) == set(PM25_24H_BY_LEVEL)
    assert "heavy" in expected["orange"].what
    for device_id, series in run.of("air_quality").items():
        mean = window_means(series, "pm2_5", 24)
        crossings = {
            level: first_crossing(series, mean, bound, strict=True)
            for level, bound in PM25_24H_BY_LEVEL.items()
        }
        heavy = crossings["orange"]
        assert heavy is not None and heavy <= expected["orange"].before, (device_id, crossings)  # type: ignore[operator]
        order = [crossings[level] for level in ("blue", "yellow", "orange")]
        assert None not in order and order == sorted(order), (device_id, crossings)  # type: ignore[type-var]


@cache
def entrapment() -> ScenarioRun:
    """Every lift of the city from a quarter of an hour before the power cut until after the
    last expectation's deadline (lifts are the costliest model: a step every 5 s)."""
    sc = load_scenario("entrapment")
    (cut,) = [s.at for s in sc.timeline if s.power_cut]
    deadline = max(e.before for e in sc.expect if e.before is not None) + timedelta(minutes=5)
    return play_offline(
        "entrapment", lambda r: r.profile == "elevator", deadline, from_=cut - timedelta(minutes=15)
    )


def test_entrapment_lifts_of_the_dark_district_report_power_off_and_trapped_passengers() -> None:
    run = entrapment()
    lifts = {d for d, dev in run.devices.items() if dev.profile.name == "elevator"}
    assert len(lifts) == sum(r.profile == "elevator" for r in run.city.devices)
    for e in run.expectations("elevator").values():
        home = run.district(e)
        assert home == "d02"
        assert e.event is not None
        code = run.devices[next(iter(lifts))].profile.events[e.event].code
        emitted = [(d, t, body) for d, t, body in run.events if body["type"] == e.event]
        assert emitted, e.event
        assert all(body["code"] == code for _, _, body in emitted)
        # Only in the blacked-out district, and only inside the expectation's window.
        assert {run.devices[d].district for d, _, _ in emitted} == {home}, e.event
        assert all(within(t, e) for _, t, _ in emitted), (e.event, emitted)
        if e.event == "main_power_off":  # every lift loses its mains
            home_lifts = {d for d in lifts if run.devices[d].district == home}
            assert {d for d, _, _ in emitted} == home_lifts
    trapped = [b for _, _, b in run.events if b["type"] == "trapped_passengers"]
    assert trapped[0]["code"] == 11 and trapped[0]["detail"]["passengers"] > 0


@cache
def quiet_day() -> ScenarioRun:
    # All manholes and river gauges; a sample of lifts (one per district) for the day.
    sample: set[str] = set()
    sc = load_scenario("quiet_day")
    per: dict[str, int] = defaultdict(int)
    for r in generate_city(sc.city.districts, sc.city.devices, sc.seed).devices:
        if r.profile == "elevator" and per[r.district] < 1:
            per[r.district] += 1
            sample.add(r.device_id)
    return play_offline(
        "quiet_day", lambda r: r.profile in ("drainage", "water_level") or r.device_id in sample
    )


def test_quiet_day_world_is_empty() -> None:
    sc = load_scenario("quiet_day")
    world = sc.world(district_grid(sc.city.districts))
    assert (world.storms, world.episodes, world.power_cuts, world.incidents) == ((), (), (), ())
    assert sc.expect == [] and sc.faults() == []


def test_quiet_day_no_surcharge_no_high_river_no_trapped_passengers() -> None:
    run = quiet_day()
    pipes, rivers = run.of("drainage"), run.of("water_level")
    assert len(pipes) == sum(r.profile == "drainage" for r in run.city.devices)
    assert len(rivers) == sum(r.profile == "water_level" for r in run.city.devices)
    for device_id, series in pipes.items():
        top = max(v["fill_ratio"] for _, v in series)
        assert top <= 1.0, (device_id, top)
        assert max(v["road_water_m"] for _, v in series) == 0, device_id
    for device_id, series in rivers.items():
        warning = run.devices[device_id].attributes["warning_level_m"]
        top = max(v["level_m"] for _, v in series)
        assert top < warning, (device_id, top, warning)
    lifts = run.of("elevator")
    assert len(lifts) == run.scenario.city.districts
    assert all(len(s) >= 24 * 60 - 1 for s in lifts.values()), "a lift reports at least each minute"
    kinds = {body["type"] for _, _, body in run.events}
    assert not kinds & {"trapped_passengers", "main_power_off", "cover_opened", "gas_alarm"}
