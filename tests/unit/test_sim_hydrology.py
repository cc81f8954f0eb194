"""Hydrology simulator models: rain gauges, river gauges and drainage manholes.

Each model is driven through simulated time against a `World` of storm cells and
incidents; the tests check determinism, the physics each model promises and
that what it says fits its device profile.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from devices import load_profiles
from devices.profile import DeviceProfile
from simulators.model import DeviceModel, Emission, SimDevice, device_rng
from simulators.models import MODELS
from simulators.models.hydrology import DrainagePipe, RainGauge, RiverGauge
from simulators.world import District, Incident, StormCell, World

PROFILES = load_profiles()
CST = timezone(timedelta(hours=8))
T0 = datetime(2026, 7, 20, 0, 0, tzinfo=CST)
LAT, LON = 31.2317, 121.4726
DISTRICT = District("huangpu", LAT, LON)
DRY = World((DISTRICT,))

GAUGE = {"warning_level_m": 4.5, "guaranteed_level_m": 5.2, "historical_max_m": 5.9}


def build(
    profile_name: str,
    raw: Mapping[str, Any] | None = None,
    *,
    seed: int = 7,
    device_id: str = "dev-1",
) -> DeviceModel:
    """A model as the fleet builds one: simulator section overlaid by the attributes."""
    profile = PROFILES[profile_name]
    attributes, problems = profile.device_attributes(raw or {})
    assert not problems
    device = SimDevice(device_id, profile, DISTRICT.name, LAT, LON, attributes)
    assert profile.simulator is not None
    params = {**(profile.simulator.model_extra or {}), **attributes}
    return MODELS[profile.simulator.model](device, params, device_rng(seed, device_id))


def run(model: DeviceModel, world: World, hours: float) -> list[Emission]:
    out: list[Emission] = []
    t = T0
    while t <= T0 + timedelta(hours=hours):
        out += model.step(t, world)
        t += model.tick
    return out


def telemetry(emissions: list[Emission]) -> list[Emission]:
    return [e for e in emissions if e.channel == "telemetry"]


def events(emissions: list[Emission], kind: str) -> list[Emission]:
    return [e for e in emissions if e.channel == "event" and e.body["type"] == kind]


def series(emissions: list[Emission], metric: str) -> list[tuple[datetime, Any]]:
    return [(e.t, e.body[metric]) for e in telemetry(emissions)]


def storm(
    peak_mm_h: float,
    *,
    start_h: float = 2.0,
    hours: float = 4.0,
    radius_km: float = 15.0,
    path: tuple[tuple[float, float], tuple[float, float]] = ((LAT, LON), (LAT, LON)),
) -> StormCell:
    return StormCell(
        T0 + timedelta(hours=start_h),
        timedelta(hours=hours),
        peak_mm_h,
        radius_km,
        path[0],
        path[1],
    )


def world(*storms: StormCell, incidents: tuple[Incident, ...] = (), drizzle: float = 0.0) -> World:
    return World((DISTRICT,), storms=storms, incidents=incidents, drizzle_mm_h=drizzle)


def incident(kind: str, start_h: float, hours: float, **params: float) -> Incident:
    return Incident(
        kind,
        T0 + timedelta(hours=start_h),
        timedelta(hours=hours),
        devices=frozenset({"dev-1"}),
        params=tuple(params.items()),
    )


def test_models_are_registered_under_the_profiles_names() -> None:
    assert MODELS["rain_gauge"] is RainGauge
    assert MODELS["river_gauge"] is RiverGauge
    assert MODELS["drainage_pipe"] is DrainagePipe
    for name in ("rain_gauge", "water_level", "drainage"):
        simulator = PROFILES[name].simulator
        assert simulator is not None
        assert simulator.model in MODELS


# --- determinism ----------------------------------------------------------------

CASES = [
    ("rain_gauge", {}),
    ("water_level", GAUGE),
    ("drainage", {"pipe_diameter_mm": 400, "pipe_kind": "combined"}),
]


@pytest.mark.parametrize(("profile_name", "raw"), CASES, ids=[c[0] for c in CASES])
def test_same_seed_same_emissions_other_seed_others(profile_name: str, raw: dict[str, Any]) -> None:
    w = world(storm(40.0))
    first = run(build(profile_name, raw, seed=1), w, 12)
    again = run(build(profile_name, raw, seed=1), w, 12)
    other = run(build(profile_name, raw, seed=2), w, 12)
    assert first == again
    assert first != other
    assert [e.t for e in first] == [e.t for e in other]


# --- profile fit over a stormy 48 hours -------------------------------------------

STORMY = world(
    # A cell crossing the city west to east, an extreme one over the device
    # and a long soaking one the next day, with drizzle throughout.
    storm(45.0, start_h=1, hours=5, radius_km=10, path=((LAT, LON - 0.3), (LAT, LON + 0.3))),
    storm(150.0, start_h=8, hours=3, radius_km=6),
    storm(25.0, start_h=26, hours=12, radius_km=30),
    incidents=(
        incident("blockage", 4, 10, severity=1.0),
        incident("cover_open", 20, 1),
        incident("cover_tilted", 22, 1, tilt_deg=30),
        incident("gas", 30, 2, ch4_pct_lel=80, h2s_ppm=400),
        incident("vibration", 31, 0.5),
        incident("sensor_fault", 40, 1),
        incident("enclosure_open", 41, 1),
    ),
    drizzle=0.3,
)

FIT_CASES = [
    ("rain_gauge", {"resolution_mm": 0.1}),
    ("water_level", GAUGE),
    ("water_level", {"warning_level_m": 3.8, "guaranteed_level_m": 4.6, "base_level_m": 2.0}),
    ("drainage", {"pipe_diameter_mm": 200, "manhole_depth_m": 1.2, "pipe_kind": "combined"}),
    ("drainage", {"pipe_diameter_mm": 3000, "manhole_depth_m": 8, "pipe_kind": "sewage"}),
]


def _check_fits(profile: DeviceProfile, emissions: list[Emission]) -> None:
    assert telemetry(emissions)
    for e in emissions:
        if e.channel == "telemetry":
            assert set(e.body) == set(profile.metrics), e.body
            for name, value in e.body.items():
                spec = profile.metrics[name]
                if spec.type == "enum":
                    assert spec.values is not None
                    assert value in spec.values, (name, value)
                elif spec.type == "bool":
                    assert isinstance(value, bool), (name, value)
                else:
                    assert isinstance(value, int | float) and not isinstance(value, bool)
                    assert math.isfinite(value)
                    assert spec.range is not None
                    assert spec.range[0] <= value <= spec.range[1], (e.t, name, value)
        else:
            assert e.channel == "event"
            event = profile.events[e.body["type"]]
            assert e.body["code"] == event.code
            assert isinstance(e.body["detail"], dict)


@pytest.mark.parametrize(("profile_name", "raw"), FIT_CASES, ids=lambda c: str(c))
def test_every_value_fits_the_profile_over_a_stormy_two_days(
    profile_name: str, raw: dict[str, Any]
) -> None:
    emissions = run(build(profile_name, raw), STORMY, 48)
    _check_fits(PROFILES[profile_name], emissions)
    assert (
        len(telemetry(emissions))
        == 48 * 3600 // PROFILES[profile_name].reporting_interval.seconds + 1
    )


def test_incident_kinds_raise_their_events_once() -> None:
    small = run(build("drainage", {"pipe_diameter_mm": 200, "manhole_depth_m": 1.2}), STORMY, 48)
    for kind in ("cover_opened", "cover_tilted", "gas_alarm", "vibration", "sensor_fault"):
        assert events(small, kind), kind
    assert len(events(small, "vibration")) == 1
    assert len(events(small, "sensor_fault")) == 1
    river = run(build("water_level", GAUGE), STORMY, 48)
    assert len(events(river, "sensor_fault")) == 1
    assert len(events(river, "enclosure_open")) == 1


# --- rain gauge -----------------------------------------------------------------


def _integral_mm(w: World, start: datetime, end: datetime) -> float:
    step = timedelta(seconds=10)
    n = int((end - start) / step)
    return sum(w.rain_intensity(LAT, LON, start + step * (i + 0.5)) for i in range(n)) * 10 / 3600


@pytest.mark.parametrize("resolution", [0.1, 0.2, 0.5])
def test_rain_totals_match_the_rain_that_fell(resolution: float) -> None:
    w = world(
        storm(60.0, start_h=1, hours=3, radius_km=8, path=((LAT - 0.1, LON), (LAT + 0.1, LON))),
        storm(12.0, start_h=5, hours=2),
    )
    gauge = build("rain_gauge", {"resolution_mm": resolution})
    emissions = run(gauge, w, 10)
    rain = [e.body["rain_mm"] for e in telemetry(emissions)]
    for value in rain:
        tips = value / resolution
        assert abs(tips - round(tips)) < 1e-6
    fell = _integral_mm(w, T0 - gauge.tick, T0 + timedelta(hours=10))
    assert fell > 40
    # The bucket starts part-full and keeps what has not tipped yet: one tip either way.
    assert abs(sum(rain) - fell) <= resolution + 1e-6


def test_rain_intensity_follows_the_storm_and_dry_weather_reads_zero() -> None:
    w = world(storm(50.0, start_h=2, hours=4))
    emissions = telemetry(run(build("rain_gauge"), w, 8))
    by_time = {e.t: e.body for e in emissions}
    assert by_time[T0 + timedelta(hours=1)]["rain_mm"] == 0
    assert by_time[T0 + timedelta(hours=1)]["intensity_mm_h"] == 0
    assert by_time[T0 + timedelta(hours=4)]["intensity_mm_h"] == pytest.approx(50.0, abs=0.5)
    # Five minutes at 50 mm/h is about 4 mm.
    assert 3.6 <= by_time[T0 + timedelta(hours=4)]["rain_mm"] <= 4.6


def test_blocked_funnel_stops_counting_and_reports_a_fault() -> None:
    w = world(storm(30.0, start_h=0, hours=6), incidents=(incident("sensor_fault", 2, 1),))
    emissions = run(build("rain_gauge"), w, 6)
    blocked = [
        e.body["rain_mm"]
        for e in telemetry(emissions)
        if T0 + timedelta(hours=2, minutes=5) <= e.t < T0 + timedelta(hours=3)
    ]
    assert blocked and all(v == 0 for v in blocked)
    faults = events(emissions, "sensor_fault")
    assert [e.t for e in faults] == [T0 + timedelta(hours=2)]
    assert faults[0].body["code"] == PROFILES["rain_gauge"].events["sensor_fault"].code


# --- river gauge ----------------------------------------------------------------


def _peak(points: list[tuple[datetime, float]]) -> tuple[datetime, float]:
    return max(points, key=lambda p: p[1])


def test_river_peaks_after_the_rain_and_recedes() -> None:
    cell = storm(60.0, start_h=2, hours=4)
    w = world(cell)
    gauge = build("water_level", GAUGE)
    emissions = run(gauge, w, 36)
    levels = series(emissions, "level_m")
    rain_peak = cell.start + cell.duration / 2
    level_peak, peak_m = _peak(levels)
    assert level_peak - rain_peak >= timedelta(hours=1)
    assert level_peak - rain_peak <= timedelta(hours=8)
    after = [v for t, v in levels if t >= level_peak + timedelta(hours=6)]
    assert max(after) < peak_m - 1.0
    assert levels[-1][1] < GAUGE["warning_level_m"] - 0.3
    # Each hour of the recession is lower than the one before, until only the tide is left.
    hourly = [
        v
        for t, v in levels
        if level_peak <= t <= level_peak + timedelta(hours=12)
        and (t - level_peak) % timedelta(hours=1) == timedelta(0)
    ]
    assert all(b < a for a, b in itertools.pairwise(hourly))
    trends = {t: v for t, v in series(emissions, "trend")}
    assert trends[rain_peak] == "rising"
    assert trends[level_peak + timedelta(hours=3)] == "falling"
    assert trends[T0 + timedelta(hours=1)] == "steady"


@pytest.mark.parametrize(
    "levels",
    [GAUGE, {"warning_level_m": 3.8, "guaranteed_level_m": 4.6, "historical_max_m": 5.1}],
    ids=["suzhou-creek", "chuanyang-river"],
)
def test_a_strong_storm_carries_a_gauge_through_its_warning_levels_in_order(
    levels: dict[str, float],
) -> None:
    gauge = build("water_level", levels)
    emissions = run(gauge, world(storm(70.0, start_h=2, hours=4)), 24)
    points = series(emissions, "level_m")
    warning, guaranteed = levels["warning_level_m"], levels["guaranteed_level_m"]
    margin = PROFILES["water_level"].attributes["approach_margin_m"].default
    assert isinstance(margin, float)

    def first(threshold: float) -> datetime:
        return next(t for t, v in points if v >= threshold)

    assert points[0][1] < warning - margin
    assert first(warning - margin) < first(warning) < first(guaranteed)
    assert points[-1][1] < warning


def test_a_quiet_day_stays_well_below_warning() -> None:
    quiet = world(storm(8.0, start_h=10, hours=2, radius_km=20), drizzle=0.5)
    gauge = build("water_level", GAUGE)
    emissions = run(gauge, quiet, 24)
    levels = [v for _, v in series(emissions, "level_m")]
    margin = 0.3
    assert max(levels) < GAUGE["warning_level_m"] - margin
    assert max(levels) - min(levels) < 0.5
    trends = [v for _, v in series(emissions, "trend")]
    assert trends.count("steady") > len(trends) / 2


def test_a_storm_far_from_the_catchment_leaves_the_river_alone() -> None:
    far = world(storm(80.0, start_h=2, hours=4, radius_km=5, path=((LAT + 1, LON), (LAT + 1, LON))))
    levels = [v for _, v in series(run(build("water_level", GAUGE), far, 24), "level_m")]
    assert max(levels) - min(levels) < 0.1


def test_a_river_starting_mid_storm_is_already_up() -> None:
    # The storm started six hours before the first report.
    w = world(storm(60.0, start_h=-6, hours=8))
    first = telemetry(build("water_level", GAUGE).step(T0, w))[0]
    assert first.body["level_m"] > GAUGE["warning_level_m"]


def test_base_level_attribute_overrides_the_derived_one() -> None:
    gauge = build("water_level", {**GAUGE, "base_level_m": 1.0})
    levels = [v for _, v in series(run(gauge, DRY, 6), "level_m")]
    assert all(0.9 < v < 1.1 for v in levels)
    derived = build("water_level", GAUGE)
    levels = [v for _, v in series(run(derived, DRY, 6), "level_m")]
    assert all(2.9 < v < 3.1 for v in levels)


# --- drainage -------------------------------------------------------------------

NO_SURPRISES = {"blockage_probability": 0, "gas_probability": 0}


def _drain(diameter_mm: int, **extra: Any) -> DeviceModel:
    return build("drainage", {"pipe_diameter_mm": diameter_mm, **NO_SURPRISES, **extra})


def test_fill_ratio_follows_rain_with_a_short_lag() -> None:
    cell = storm(20.0, start_h=2, hours=4)
    emissions = run(_drain(800), world(cell), 10)
    fills = series(emissions, "fill_ratio")
    dry = fills[0][1]
    peak_t, peak = _peak(fills)
    assert peak > 2 * dry
    rain_peak = cell.start + cell.duration / 2
    assert timedelta(0) <= peak_t - rain_peak <= timedelta(hours=1)
    assert fills[-1][1] < dry + 0.05


def test_a_heavy_storm_surcharges_a_small_pipe_and_not_a_large_one() -> None:
    heavy = world(storm(60.0, start_h=2, hours=3))
    small = run(_drain(300, manhole_depth_m=2.0), heavy, 12)
    large = run(_drain(2000, manhole_depth_m=5.0), heavy, 12)
    assert max(v for _, v in series(small, "fill_ratio")) > 1.0
    assert max(v for _, v in series(large, "fill_ratio")) < 1.0
    # The small pipe's water reaches the road, and drains off after the storm.
    road = series(small, "road_water_m")
    assert max(v for _, v in road) > 0.05
    assert road[-1][1] == 0
    assert all(v == 0 for _, v in series(large, "road_water_m"))
    assert len(events(small, "water_level_high")) == 1
    assert not events(large, "water_level_high")


def test_level_and_fill_agree_and_flow_is_bounded_by_pipe_size() -> None:
    emissions = run(_drain(600), world(storm(40.0)), 10)
    for e in telemetry(emissions):
        assert e.body["fill_ratio"] == pytest.approx(e.body["level_m"] / 0.6, abs=0.003)
        assert e.body["flow_m3s"] >= 0
    small_flow = max(v for _, v in series(emissions, "flow_m3s"))
    big_flow = max(v for _, v in series(run(_drain(1500), world(storm(40.0)), 10), "flow_m3s"))
    assert big_flow > 3 * small_flow


def test_a_blockage_backs_water_up_above_it() -> None:
    rain = storm(15.0, start_h=2, hours=4)
    blocked_world = world(rain, incidents=(incident("blockage", 1, 8, severity=0.8),))
    clear = telemetry(run(_drain(800, pipe_kind="combined"), world(rain), 12))
    blocked = telemetry(run(_drain(800, pipe_kind="combined"), blocked_world, 12))
    head_limit = PROFILES["drainage"].attributes["blockage_head_m"].default
    assert isinstance(head_limit, float)
    during = [
        (c.body, b.body)
        for c, b in zip(clear, blocked, strict=True)
        if T0 + timedelta(hours=1) <= b.t < T0 + timedelta(hours=9)
    ]
    assert during
    for c, b in during:
        assert b["fill_ratio"] > c["fill_ratio"]
        assert b["upstream_level_m"] - b["downstream_level_m"] > head_limit
        assert abs(c["upstream_level_m"] - c["downstream_level_m"]) < head_limit
    # Once cleared, the reach runs as before.
    after = [b.body["fill_ratio"] for b in blocked if b.t >= T0 + timedelta(hours=10)]
    before = [c.body["fill_ratio"] for c in clear if c.t >= T0 + timedelta(hours=10)]
    assert after == pytest.approx(before, abs=0.02)


def test_spontaneous_blockages_happen_at_their_rate() -> None:
    blocked_days = 0
    for i in range(20):
        pipe = build(
            "drainage",
            {"pipe_diameter_mm": 500, "pipe_kind": "sewage", "blockage_probability": 0.5},
            device_id=f"dev-{i}",
        )
        bodies = [e.body for e in telemetry(run(pipe, DRY, 48))]
        if any(b["upstream_level_m"] - b["downstream_level_m"] > 0.1 for b in bodies):
            blocked_days += 1
    # Half a blockage a day over two days: most, but not all, of twenty pipes.
    assert 8 <= blocked_days <= 20


def test_cover_and_gas_incidents() -> None:
    w = world(
        incidents=(
            incident("cover_open", 1, 2, tilt_deg=60),
            incident("gas", 5, 2, ch4_pct_lel=40, h2s_ppm=30),
        )
    )
    emissions = run(_drain(600), w, 10)
    by_time = {e.t: e.body for e in telemetry(emissions)}
    assert by_time[T0]["cover_open"] is False
    assert by_time[T0]["cover_tilt_deg"] < 15
    assert by_time[T0 + timedelta(hours=2)]["cover_open"] is True
    assert by_time[T0 + timedelta(hours=2)]["cover_tilt_deg"] == 60
    assert by_time[T0 + timedelta(hours=4)]["cover_open"] is False
    opened = events(emissions, "cover_opened")
    assert [e.t for e in opened] == [T0 + timedelta(hours=1)]
    assert not events(emissions, "cover_tilted")
    assert by_time[T0]["ch4_pct_lel"] < 5
    assert by_time[T0 + timedelta(hours=6)]["ch4_pct_lel"] > 25
    assert by_time[T0 + timedelta(hours=6)]["h2s_ppm"] > 10
    assert len(events(emissions, "gas_alarm")) == 1
    assert by_time[T0 + timedelta(hours=8)]["ch4_pct_lel"] < 5


def test_flood_water_lifts_the_cover() -> None:
    deluge = world(storm(120.0, start_h=1, hours=3))
    lifting = run(_drain(300, manhole_depth_m=1.5, cover_lift_head_m=1.0), deluge, 10)
    assert len(events(lifting, "cover_opened")) == 1
    assert telemetry(lifting)[-1].body["cover_open"] is False
    # Without the parameter, covers stay seated for the scenario to open.
    seated = run(_drain(300, manhole_depth_m=1.5), deluge, 10)
    assert not events(seated, "cover_opened")


def test_battery_drains_and_warns_once() -> None:
    pipe = _drain(600, battery_v=3.75, battery_spread_v=0, battery_drain_v_day=0.05)
    emissions = run(pipe, DRY, 48)
    volts = [v for _, v in series(emissions, "battery_v")]
    assert volts[0] > 3.7 > volts[-1]
    low = events(emissions, "low_battery")
    assert len(low) == 1
    assert low[0].body["detail"]["battery_v"] < 3.7


def test_solar_station_battery_charges_by_day() -> None:
    emissions = run(build("rain_gauge"), DRY, 24)
    by_hour = {e.t.hour: e.body["battery_v"] for e in telemetry(emissions) if e.t.minute == 0}
    assert by_hour[12] > by_hour[3] + 0.5
    assert not events(emissions, "low_battery")
