"""Device profiles: every shipped profile, and the errors a broken one gives.

The first half runs over every file in `devices/profiles/`, so a new profile
is checked the moment it is added.
"""

from __future__ import annotations

import copy
import math
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from devices import DeviceProfile, ProfileError, load_profile, load_profiles
from devices.profile import BUILTIN_PROFILE_DIR, NAME_PATTERN

SHIPPED = sorted(BUILTIN_PROFILE_DIR.glob("*.yaml"))
LEVELS = ("blue", "yellow", "orange", "red")

# A stand-in value of each attribute type, for filling in required attributes.
SAMPLE_ATTRIBUTE = {"float": "1.5", "int": "12", "str": "Riverside Rd", "bool": "true"}


@pytest.fixture(params=SHIPPED, ids=[p.stem for p in SHIPPED])
def profile(request: pytest.FixtureRequest) -> DeviceProfile:
    return load_profile(request.param)


def test_the_documented_profiles_ship() -> None:
    assert {p.stem for p in SHIPPED} >= {
        "elevator",
        "elevator_frame",
        "water_level",
        "rain_gauge",
        "air_quality",
        "drainage",
        "noise",
    }


def test_load_profiles_loads_every_shipped_file() -> None:
    assert set(load_profiles()) == {p.stem for p in SHIPPED}


# --- shared suite over every shipped profile ---------------------------------


def test_names_and_texts(profile: DeviceProfile) -> None:
    assert profile.path is not None
    assert profile.name == profile.path.stem
    assert profile.title.strip()
    assert profile.description.strip()


def test_reporting_interval_is_plausible(profile: DeviceProfile) -> None:
    assert timedelta(seconds=10) <= profile.reporting_interval <= timedelta(days=1)


def test_metrics_are_described_and_ranged(profile: DeviceProfile) -> None:
    for name, metric in profile.metrics.items():
        assert metric.description.strip(), f"metric {name} has no description"
        if metric.type in ("float", "int"):
            assert metric.range is not None, f"numeric metric {name} has no physical range"
            low, high = metric.range
            assert math.isfinite(low) and math.isfinite(high), name
            assert low < high, f"metric {name} range {metric.range} is empty"
        else:
            assert metric.range is None, f"{metric.type} metric {name} cannot have a range"


def test_enum_metrics_store_distinct_numbers(profile: DeviceProfile) -> None:
    for name, metric in profile.metrics.items():
        if metric.type == "enum":
            assert metric.values
            assert len(set(metric.values.values())) == len(metric.values), name
            assert all(isinstance(word, str) for word in metric.values), name


def test_attributes_are_described(profile: DeviceProfile) -> None:
    for name, attribute in profile.attributes.items():
        assert attribute.description.strip(), f"attribute {name} has no description"


def test_defaults_and_required_attributes_make_a_valid_device(profile: DeviceProfile) -> None:
    raw: dict[str, Any] = {}
    for name, spec in profile.attributes.items():
        if spec.required:
            raw[name] = spec.values[0] if spec.values else SAMPLE_ATTRIBUTE[spec.type]
    attributes, problems = profile.device_attributes(raw)
    assert problems == []
    for name, spec in profile.attributes.items():
        if spec.default is not None:
            assert attributes[name] == spec.convert(spec.default)


def test_missing_required_attributes_are_reported(profile: DeviceProfile) -> None:
    _, problems = profile.device_attributes({})
    required = [name for name, spec in profile.attributes.items() if spec.required]
    assert len(problems) == len(required)
    for name in required:
        assert any(name in problem for problem in problems)


def test_events_have_unique_codes_and_descriptions(profile: DeviceProfile) -> None:
    codes = [spec.code for spec in profile.events.values()]
    assert None not in codes, "every shipped event has a code"
    assert len(set(codes)) == len(codes)
    for name, spec in profile.events.items():
        assert spec.description.strip(), f"event {name} has no description"
        assert spec.level in (None, *LEVELS)
    assert len(profile.event_by_code) == len(profile.events)


def test_decoder_resolves(profile: DeviceProfile) -> None:
    if profile.decoder == "json":
        assert profile.decode is None
    else:
        assert callable(profile.decode)


def test_simulator_model_is_named(profile: DeviceProfile) -> None:
    assert profile.simulator is not None
    assert re.fullmatch(NAME_PATTERN, profile.simulator.model)


def test_rules_are_a_list(profile: DeviceProfile) -> None:
    assert isinstance(profile.rules, list)


# --- facts of particular profiles --------------------------------------------


def _builtin(name: str) -> DeviceProfile:
    return load_profile(BUILTIN_PROFILE_DIR / f"{name}.yaml")


def test_elevator_codes_follow_the_reference() -> None:
    elevator = _builtin("elevator")
    assert set(elevator.event_by_code) == {*range(1, 12), *range(40, 48), 90}
    assert elevator.event_by_code[1] == "safety_circuit_broken"
    assert elevator.event_by_code[2] == "door_close_fault"
    assert elevator.event_by_code[40] == "back_to_normal"
    assert elevator.event_by_code[41] == "main_power_off"
    assert elevator.event_by_code[90] == "alarm_button"
    trapped = elevator.events["trapped_passengers"]
    assert (trapped.code, trapped.level) == (11, "red")


def test_trapped_passengers_is_the_most_urgent_elevator_event() -> None:
    events = _builtin("elevator").events
    rank: dict[str | None, int] = {None: -1, **{level: i for i, level in enumerate(LEVELS)}}
    top = max(rank[e.level] for name, e in events.items() if name != "trapped_passengers")
    assert rank[events["trapped_passengers"].level] > top


def test_elevator_service_modes() -> None:
    metric = _builtin("elevator").metrics["service_mode"]
    assert metric.values is not None
    assert set(metric.values) == {
        "normal",
        "inspection",
        "fire_return",
        "firefighter",
        "emergency_power",
        "earthquake",
        "out_of_service",
    }


def test_elevator_power_off_is_a_word_not_a_yaml_boolean() -> None:
    metric = _builtin("elevator").metrics["power"]
    assert metric.values == {"mains": 0, "battery": 1, "off": 2}


def test_elevator_frame_extends_elevator() -> None:
    base, framed = _builtin("elevator"), _builtin("elevator_frame")
    assert framed.name == "elevator_frame"
    assert framed.title != base.title
    assert framed.decoder == "devices.decoders.elevator_frame:decode"
    assert framed.metrics == base.metrics
    assert framed.attributes == base.attributes
    assert framed.events == base.events
    assert framed.domain == base.domain
    assert framed.simulator == base.simulator


def test_water_level_needs_its_gauge_levels() -> None:
    attributes = _builtin("water_level").attributes
    assert attributes["warning_level_m"].required
    assert attributes["guaranteed_level_m"].required
    assert not attributes["historical_max_m"].required
    assert attributes["approach_margin_m"].default == 0.3


def test_air_quality_units_are_those_of_hj_633() -> None:
    metrics = _builtin("air_quality").metrics
    for name in ("pm2_5", "pm10", "so2", "no2", "o3"):
        assert metrics[name].unit == "µg/m³", name
    assert metrics["co"].unit == "mg/m³"


def test_drainage_defaults() -> None:
    profile = _builtin("drainage")
    attributes, problems = profile.device_attributes({"pipe_diameter_mm": "600"})
    assert problems == []
    assert attributes["pipe_diameter_mm"] == 600
    assert "design_fill_ratio" not in attributes
    assert attributes["cover_tilt_limit_deg"] == 15
    assert attributes["battery_low_v"] == 3.7
    assert attributes["battery_critical_v"] == 3.5
    assert attributes["road_waterlogging_lane_m"] == 0.15
    assert attributes["road_closure_m"] == 0.27


def test_noise_zone_is_a_gb_3096_zone() -> None:
    profile = _builtin("noise")
    zone = profile.attributes["zone"]
    assert zone.required
    assert zone.values == ["0", "1", "2", "3", "4a", "4b"]
    # A registry cell may hold the zone as a number.
    assert profile.device_attributes({"zone": 0})[0]["zone"] == "0"
    _, problems = profile.device_attributes({"zone": "5"})
    assert problems and "zone" in problems[0]


# --- broken profiles ----------------------------------------------------------

GOOD: dict[str, Any] = {
    "domain": "hydrology",
    "title": "Test gauge",
    "reporting_interval": "5m",
    "metrics": {"level_m": {"unit": "m", "range": [0, 10]}},
    "attributes": {"warning_level_m": {"unit": "m", "required": True, "description": "w"}},
    "events": {"sensor_fault": {"code": 1, "level": "blue"}},
    "simulator": {"model": "river_gauge"},
}


def _write(tmp_path: Path, data: dict[str, Any], stem: str = "gauge") -> Path:
    path = tmp_path / f"{stem}.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def _problems(path: Path) -> tuple[str, list[str]]:
    with pytest.raises(ProfileError) as caught:
        load_profile(path)
    assert caught.value.path == path
    message = str(caught.value)
    assert str(path) in message
    return message, [field for field, _ in caught.value.problems]


def test_the_good_test_profile_loads(tmp_path: Path) -> None:
    profile = load_profile(_write(tmp_path, GOOD))
    assert profile.name == "gauge"
    assert profile.reporting_interval == timedelta(minutes=5)


def _without_metrics(d: dict[str, Any]) -> None:
    del d["metrics"]


BROKEN = {
    # case: (change to GOOD, field named in the error, words of the message)
    "missing metrics": (_without_metrics, "metrics", "required"),
    "no metrics": (lambda d: d.update(metrics={}), "metrics", "at least one metric"),
    "wrong metric type": (
        lambda d: d["metrics"]["level_m"].update(type="double"),
        "metrics.level_m.type",
        "'float'",
    ),
    "range of wrong type": (
        lambda d: d["metrics"]["level_m"].update(range="0-10"),
        "metrics.level_m.range",
        "tuple",
    ),
    "inverted range": (
        lambda d: d["metrics"]["level_m"].update(range=[10, 0]),
        "metrics.level_m",
        "exceeds maximum",
    ),
    "enum without values": (
        lambda d: d["metrics"].update(state={"type": "enum"}),
        "metrics.state",
        "values",
    ),
    "values on a float": (
        lambda d: d["metrics"]["level_m"].update(values={"low": 0}),
        "metrics.level_m",
        "only for enum",
    ),
    "bad metric name": (
        lambda d: d["metrics"].update({"Level-M": {}}),
        "metrics",
        "Level-M",
    ),
    "bad duration": (
        lambda d: d.update(reporting_interval="5 minutes"),
        "reporting_interval",
        "not a duration",
    ),
    "zero duration": (
        lambda d: d.update(reporting_interval="0s"),
        "reporting_interval",
        "longer than zero",
    ),
    "unknown field": (lambda d: d.update(colour="red"), "colour", "not permitted"),
    "unknown metric field": (
        lambda d: d["metrics"]["level_m"].update(units="m"),
        "metrics.level_m.units",
        "not permitted",
    ),
    "decoder module missing": (
        lambda d: d.update(decoder="nosuch.module:decode"),
        "decoder",
        "nosuch.module",
    ),
    "decoder function missing": (
        lambda d: d.update(decoder="devices.decoders.elevator_frame:nope"),
        "decoder",
        "no function 'nope'",
    ),
    "decoder not a reference": (
        lambda d: d.update(decoder="csv"),
        "decoder",
        "package.module:function",
    ),
    "name not matching the file": (lambda d: d.update(name="other"), "name", "file name"),
    "bad event level": (
        lambda d: d["events"]["sensor_fault"].update(level="purple"),
        "events.sensor_fault.level",
        "'red'",
    ),
    "required attribute with a default": (
        lambda d: d["attributes"]["warning_level_m"].update(default=3.0),
        "attributes.warning_level_m",
        "either required or has a default",
    ),
    "attribute default of the wrong type": (
        lambda d: d["attributes"].update(floors={"type": "int", "default": "many"}),
        "attributes.floors",
        "many",
    ),
    "enum attribute without values": (
        lambda d: d["attributes"].update(zone={"type": "enum"}),
        "attributes.zone",
        "values",
    ),
    "simulator without model": (
        lambda d: d.update(simulator={"speed": 1}),
        "simulator.model",
        "required",
    ),
    "unknown base profile": (lambda d: d.update(extends="nosuch"), "extends", "nosuch"),
}


@pytest.mark.parametrize("case", BROKEN, ids=list(BROKEN))
def test_broken_profile_names_file_and_field(tmp_path: Path, case: str) -> None:
    change, field, words = BROKEN[case]
    data = copy.deepcopy(GOOD)
    change(data)
    message, fields = _problems(_write(tmp_path, data))
    assert field in fields
    assert f"  {field}: " in message
    assert words.lower() in message.lower()


def test_invalid_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "gauge.yaml"
    path.write_text("domain: hydrology\nmetrics: [unclosed\ntitle: x\n", encoding="utf-8")
    message, fields = _problems(path)
    assert fields == ["line 3"]
    assert "not valid YAML" in message


def test_a_profile_must_be_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "gauge.yaml"
    path.write_text("- just\n- a list\n", encoding="utf-8")
    message, _ = _problems(path)
    assert "mapping" in message


def test_duplicate_event_codes_are_named(tmp_path: Path) -> None:
    data = copy.deepcopy(GOOD)
    data["events"]["low_battery"] = {"code": 1}
    message, _ = _problems(_write(tmp_path, data))
    assert "sensor_fault" in message and "low_battery" in message and "code 1" in message


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    data = copy.deepcopy(GOOD)
    data["name"] = "other"
    data["reporting_interval"] = "soon"
    data["colour"] = "red"
    _, fields = _problems(_write(tmp_path, data))
    assert {"name", "reporting_interval", "colour"} <= set(fields)


def test_extends_merges_tables_per_key(tmp_path: Path) -> None:
    _write(tmp_path, GOOD, "base_gauge")
    child = {
        "extends": "base_gauge",
        "title": "Child gauge",
        "metrics": {"battery_v": {"unit": "V", "range": [0, 15]}},
        "events": {"sensor_fault": {"code": 1, "level": "yellow"}},
    }
    profile = load_profile(_write(tmp_path, child, "child_gauge"))
    assert profile.name == "child_gauge"
    assert profile.title == "Child gauge"
    assert profile.domain == "hydrology"
    assert set(profile.metrics) == {"level_m", "battery_v"}
    assert set(profile.attributes) == {"warning_level_m"}
    assert profile.events["sensor_fault"].level == "yellow"


def test_extends_a_builtin_profile(tmp_path: Path) -> None:
    profile = load_profile(_write(tmp_path, {"extends": "noise", "title": "Site noise"}, "site"))
    assert profile.metrics == _builtin("noise").metrics


def test_extends_cycle_is_an_error(tmp_path: Path) -> None:
    _write(tmp_path, {**GOOD, "extends": "loop_b"}, "loop_a")
    message, fields = _problems(_write(tmp_path, {**GOOD, "extends": "loop_a"}, "loop_b"))
    assert fields == ["extends"]
    assert "loop_b" in message
