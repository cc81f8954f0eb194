"""Air-quality and noise simulator models: determinism and physics sanity."""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from devices import DeviceProfile, ProfileSet, load_profiles
from simulators.model import DeviceModel, Emission, SimDevice, device_rng
from simulators.models import MODELS
from simulators.models.environment import ZONE_LIMITS_DB
from simulators.world import District, Incident, PollutionEpisode, PowerCut, World

TZ = ZoneInfo("Asia/Shanghai")
T0 = datetime(2026, 11, 2, 0, 0, tzinfo=TZ)  # local midnight
CITY = World((District("north", 31.3, 121.5), District("south", 31.1, 121.5)))

# PM2.5 24-hour breakpoints (µg/m³) and their IAQI, from domain/REFERENCE.md (2012 rules).
PM25_24H = [(0, 0), (35, 50), (75, 100), (115, 150), (150, 200), (250, 300), (350, 400), (500, 500)]


def iaqi(concentration: float, table: Sequence[tuple[float, float]]) -> int:
    for (bp_lo, i_lo), (bp_hi, i_hi) in itertools.pairwise(table):
        if concentration <= bp_hi:
            return math.ceil((i_hi - i_lo) / (bp_hi - bp_lo) * (concentration - bp_lo) + i_lo)
    return 500


@pytest.fixture(scope="module")
def profiles() -> ProfileSet:
    return load_profiles()


def build(
    profile: DeviceProfile,
    device_id: str,
    raw: Mapping[str, Any],
    *,
    seed: int = 7,
    district: str = "north",
) -> DeviceModel:
    attributes, problems = profile.device_attributes(raw)
    assert not problems
    device = SimDevice(device_id, profile, district, 31.3, 121.5, attributes)
    assert profile.simulator is not None
    params = {**(profile.simulator.model_extra or {}), **attributes}
    return MODELS[profile.simulator.model](device, params, device_rng(seed, device_id))


def simulate(
    model: DeviceModel, world: World, start: datetime, duration: timedelta
) -> list[Emission]:
    out: list[Emission] = []
    t = start
    while t < start + duration:
        out += model.step(t, world)
        t += model.tick
    return out


def telemetry(emissions: list[Emission]) -> list[Emission]:
    return [e for e in emissions if e.channel == "telemetry"]


def check_against_profile(profile: DeviceProfile, emissions: list[Emission]) -> None:
    for e in emissions:
        if e.channel == "event":
            assert profile.events[e.body["type"]].code == e.body["code"]
            continue
        assert e.channel == "telemetry"
        assert set(e.body) == set(profile.metrics)
        for name, value in e.body.items():
            spec = profile.metrics[name]
            assert isinstance(value, int | float) and math.isfinite(value), (name, value)
            assert spec.range is not None
            assert spec.range[0] <= value <= spec.range[1], (name, value)


def energy_mean(levels: list[float]) -> float:
    return 10 * math.log10(sum(10 ** (level / 10) for level in levels) / len(levels))


# --- air quality ---------------------------------------------------------------


def test_air_station_is_deterministic(profiles: ProfileSet) -> None:
    profile = profiles["air_quality"]
    runs = [
        simulate(build(profile, "aq-1", {}, seed=seed), CITY, T0, timedelta(hours=12))
        for seed in (1, 1, 2)
    ]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
    check_against_profile(profile, runs[0])


def test_pollution_episode_climbs_through_the_aqi_levels_in_order(profiles: ProfileSet) -> None:
    episode = PollutionEpisode(
        start=T0 + timedelta(days=1),
        build=timedelta(days=2),
        hold=timedelta(days=1),
        clear=timedelta(days=1),
        peak_factor=6.0,
    )
    world = World(CITY.districts, episodes=(episode,))
    profile = profiles["air_quality"]
    emissions = telemetry(simulate(build(profile, "aq-1", {}), world, T0, timedelta(days=5)))
    check_against_profile(profile, emissions)

    daily: dict[int, list[float]] = defaultdict(list)
    hourly: dict[int, list[float]] = defaultdict(list)
    for e in emissions:
        elapsed = e.t - T0
        daily[elapsed.days].append(e.body["pm2_5"])
        hourly[int(elapsed.total_seconds() // 3600)].append(e.body["pm2_5"])
    daily_mean = [sum(v) / len(v) for _, v in sorted(daily.items())]
    # Clean before, building day by day, heavy pollution (AQI > 200) at the peak.
    assert daily_mean[0] < 35
    assert daily_mean[0] < daily_mean[1] < daily_mean[2] < daily_mean[3]
    assert daily_mean[4] < daily_mean[3]
    assert iaqi(daily_mean[3], PM25_24H) > 200

    # The 24-hour moving mean crosses 35 → 75 → 115 → 150 (IAQI 50, 100, 150, 200) in order.
    hour_means = [sum(v) / len(v) for _, v in sorted(hourly.items())]
    moving = [sum(hour_means[i - 24 : i]) / 24 for i in range(24, len(hour_means) + 1)]
    crossings = [next(i for i, m in enumerate(moving) if m > bp) for bp in (35, 75, 115, 150)]
    assert crossings == sorted(crossings)
    assert len(set(crossings)) == 4
    levels = [iaqi(moving[i], PM25_24H) for i in crossings]
    assert levels == sorted(levels) and levels[-1] > 200 - 1


def test_daily_cycles(profiles: ProfileSet) -> None:
    emissions = telemetry(
        simulate(build(profiles["air_quality"], "aq-2", {}), CITY, T0, timedelta(days=4))
    )
    by_hour: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for e in emissions:
        hour = e.t.astimezone(TZ).hour
        for name, value in e.body.items():
            by_hour[name][hour].append(value)

    def mean(name: str, *hours: int) -> float:
        values = [v for hour in hours for v in by_hour[name][hour]]
        return sum(values) / len(values)

    o3_peak = max(range(24), key=lambda h: mean("o3", h))
    assert 13 <= o3_peak <= 17
    small_hours = mean("no2", 2, 3, 4)
    assert mean("no2", 7, 8) > 1.2 * small_hours
    assert mean("no2", 18, 19) > 1.2 * small_hours
    # Ozone is low when NO2 is high: at the morning rush, against mid-afternoon.
    assert mean("o3", 8) < 0.6 * mean("o3", 15)
    assert mean("co", 8) > mean("co", 3)
    warmest = max(range(24), key=lambda h: mean("temperature_c", h))
    assert 12 <= warmest <= 17
    assert mean("humidity_pct", 5) > mean("humidity_pct", 15)
    assert all(e.body["pm10"] >= e.body["pm2_5"] for e in emissions)


def test_air_station_reports_a_power_failure(profiles: ProfileSet) -> None:
    cut = PowerCut("north", T0 + timedelta(hours=2), timedelta(hours=1))
    world = World(CITY.districts, power_cuts=(cut,))
    emissions = simulate(build(profiles["air_quality"], "aq-3", {}), world, T0, timedelta(hours=6))
    events = [e for e in emissions if e.channel == "event"]
    assert [(e.t, e.body["type"], e.body["code"]) for e in events] == [
        (cut.start, "power_failure", 3)
    ]
    assert len(telemetry(emissions)) == 6 * 12  # the analysers run on, on the UPS


# --- noise ---------------------------------------------------------------------


def noise_day(
    profiles: ProfileSet, zone: str, world: World = CITY, device_id: str = "nm-1"
) -> list[Emission]:
    model = build(profiles["noise"], device_id, {"zone": zone})
    return telemetry(simulate(model, world, T0, timedelta(days=1)))


def laeq_by_period(emissions: list[Emission]) -> tuple[float, float]:
    """Energy-mean LAeq of the day (06–22) and night (22–06) periods."""
    day = [e.body["laeq_db"] for e in emissions if 6 <= e.t.astimezone(TZ).hour < 22]
    night = [e.body["laeq_db"] for e in emissions if not 6 <= e.t.astimezone(TZ).hour < 22]
    return energy_mean(day), energy_mean(night)


def test_noise_monitor_is_deterministic(profiles: ProfileSet) -> None:
    runs = [
        simulate(
            build(profiles["noise"], "nm-1", {"zone": "2"}, seed=seed),
            CITY,
            T0,
            timedelta(hours=3),
        )
        for seed in (1, 1, 2)
    ]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


@pytest.mark.parametrize("zone", sorted(ZONE_LIMITS_DB))
def test_noise_follows_the_zone_by_day_and_night(profiles: ProfileSet, zone: str) -> None:
    emissions = noise_day(profiles, zone)
    check_against_profile(profiles["noise"], emissions)
    day, night = laeq_by_period(emissions)
    day_limit, night_limit = ZONE_LIMITS_DB[zone]
    assert night < day
    # A quiet day: close to the limits, within them.
    assert day_limit - 8 < day < day_limit
    assert night_limit - 8 < night < night_limit


def test_a_traffic_zone_is_louder_than_a_residential_one(profiles: ProfileSet) -> None:
    day_1, night_1 = laeq_by_period(noise_day(profiles, "1"))
    day_4a, night_4a = laeq_by_period(noise_day(profiles, "4a"))
    assert day_4a > day_1 + 10
    assert night_4a > night_1 + 5


def test_noise_percentiles_are_ordered(profiles: ProfileSet) -> None:
    # Many loud events and a construction site make the ordering work hardest.
    site = Incident(
        "construction", T0 + timedelta(hours=9), timedelta(hours=4), devices=frozenset({"nm-5"})
    )
    model = build(profiles["noise"], "nm-5", {"zone": "4a", "loud_events_per_hour": 60})
    emissions = telemetry(
        simulate(model, World(CITY.districts, incidents=(site,)), T0, timedelta(days=1))
    )
    for e in emissions:
        b = e.body
        assert b["lmin_db"] <= b["l90_db"] <= b["l50_db"] <= b["l10_db"] <= b["lmax_db"], b
        assert b["l90_db"] <= b["laeq_db"] <= b["lmax_db"], b


def test_construction_pushes_noise_over_the_day_limit(profiles: ProfileSet) -> None:
    start = T0 + timedelta(hours=9)
    site = Incident(
        "construction", start, timedelta(hours=3), district="north", params=(("extra_db", 12),)
    )
    world = World(CITY.districts, incidents=(site,))
    emissions = noise_day(profiles, "2", world)
    day_limit = ZONE_LIMITS_DB["2"][0]

    def leq(a: timedelta, b: timedelta) -> float:
        return energy_mean([e.body["laeq_db"] for e in emissions if start + a <= e.t < start + b])

    assert leq(timedelta(hours=-3), timedelta(0)) < day_limit
    assert leq(timedelta(0), timedelta(hours=3)) > day_limit + 5
    assert leq(timedelta(hours=3), timedelta(hours=6)) < day_limit
    # A monitor in another district does not hear it.
    elsewhere = build(profiles["noise"], "nm-9", {"zone": "2"}, district="south")
    quiet = telemetry(simulate(elsewhere, world, start, timedelta(hours=3)))
    assert energy_mean([e.body["laeq_db"] for e in quiet]) < day_limit


def test_noise_limits_follow_the_device_attributes(profiles: ProfileSet) -> None:
    # A zone 2 site held to zone 1 limits by its local government.
    raw = {"zone": "2", "day_limit_db": 55, "night_limit_db": 45}
    model = build(profiles["noise"], "nm-6", raw)
    day, night = laeq_by_period(telemetry(simulate(model, CITY, T0, timedelta(days=1))))
    assert 47 < day < 55
    assert 37 < night < 45
