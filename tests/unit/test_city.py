"""The virtual city: districts on a grid and a registry the platform can import."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from devices import load_profiles
from devices.registry import DEVICE_ID_PATTERN, read_registry_csv, write_registry_csv
from simulators.city import (
    CENTRE,
    NOISE_ZONES,
    PIPE_DIAMETERS,
    PREFIX,
    PROFILE_SHARES,
    City,
    district_grid,
    generate_city,
)
from simulators.fleet import sim_devices
from simulators.world import distance_km

PROFILES = load_profiles()
TOPIC_LEVEL = re.compile(DEVICE_ID_PATTERN)
SIZES = [(1, 1), (1, 5), (2, 6), (3, 7), (4, 20), (4, 400), (9, 1000), (25, 333)]


def test_same_seed_same_city_other_seed_another() -> None:
    a, b = generate_city(4, 200, seed=11), generate_city(4, 200, seed=11)
    assert a == b
    c = generate_city(4, 200, seed=12)
    assert [r.device_id for r in c.devices] == [r.device_id for r in a.devices]
    assert [(r.lat, r.lon) for r in c.devices] != [(r.lat, r.lon) for r in a.devices]
    assert [r.attributes for r in c.devices] != [r.attributes for r in a.devices]


@pytest.mark.parametrize(("districts", "devices"), SIZES)
def test_counts_per_profile_add_up(districts: int, devices: int) -> None:
    city = generate_city(districts, devices, seed=1)
    assert len(city.devices) == devices
    assert len(city.districts) == districts
    counts = Counter(r.profile for r in city.devices)
    assert set(counts) <= set(PROFILE_SHARES)
    assert sum(counts.values()) == devices
    if devices >= len(PROFILE_SHARES):
        assert set(counts) == set(PROFILE_SHARES), "every profile when there is room"
    else:
        # The most common profiles first.
        ranked = sorted(PROFILE_SHARES, key=lambda p: -PROFILE_SHARES[p])
        assert set(counts) == set(ranked[: len(counts)])
    if devices >= 100:
        for profile, share in PROFILE_SHARES.items():
            assert abs(counts[profile] - share * devices) <= 1.5, (profile, counts[profile])


def test_every_count_from_one_to_three_hundred_adds_up() -> None:
    for devices in range(1, 301):
        counts = Counter(r.profile for r in generate_city(2, devices).devices)
        assert sum(counts.values()) == devices, devices
        assert all(n >= 1 for n in counts.values())
        if devices >= len(PROFILE_SHARES):
            assert len(counts) == len(PROFILE_SHARES), devices


def test_other_shares_and_a_vendor_profile() -> None:
    shares = {"elevator_frame": 1.0, "rain_gauge": 1.0}
    city = generate_city(2, 10, seed=4, shares=shares)
    assert Counter(r.profile for r in city.devices) == {"elevator_frame": 5, "rain_gauge": 5}
    assert all(r.device_id.startswith("ef-") for r in city.devices if r.profile == "elevator_frame")
    assert len(sim_devices(city.devices, PROFILES)) == 10


@pytest.mark.parametrize(("districts", "devices"), [(0, 5), (3, 0), (-1, 10)])
def test_an_empty_city_is_refused(districts: int, devices: int) -> None:
    with pytest.raises(ValueError, match="at least one district and one device"):
        generate_city(districts, devices)


@pytest.mark.parametrize(("districts", "devices"), SIZES)
def test_registry_round_trips_through_the_csv_with_the_shipped_profiles(
    tmp_path: Path, districts: int, devices: int
) -> None:
    city = generate_city(districts, devices, seed=7)
    path = tmp_path / "city.csv"
    write_registry_csv(path, city.devices)
    imported = read_registry_csv(path, PROFILES)
    assert imported.problems == []
    assert imported.rows == devices
    back = {r.device_id: r for r in imported.records}
    for record in city.devices:
        got = back[record.device_id]
        profile = PROFILES[record.profile]
        expected, problems = profile.device_attributes(record.attributes)
        assert problems == [], (record.device_id, problems)
        # What was written reads back, with the profile's defaults filled in.
        assert (got.profile, got.district, got.name, got.lat, got.lon) == (
            record.profile,
            record.district,
            record.name,
            record.lat,
            record.lon,
        )
        assert got.attributes == expected
        for name, spec in profile.attributes.items():
            if spec.required:
                assert name in record.attributes, (record.device_id, name)
    # And the fleet can simulate every device of it.
    assert len(sim_devices(imported.records, PROFILES)) == devices


def test_attributes_are_plausible() -> None:
    city = generate_city(4, 1000, seed=3)
    zones = {z for z, _ in NOISE_ZONES}
    for r in city.devices:
        a = r.attributes
        if r.profile == "water_level":
            assert 3.6 <= a["warning_level_m"] < a["guaranteed_level_m"] < a["historical_max_m"]
            assert a["river"] in r.name
        elif r.profile == "drainage":
            assert a["pipe_diameter_mm"] in PIPE_DIAMETERS
            assert 2.0 <= a["manhole_depth_m"] <= 4.5
            assert a["road"] in r.name
        elif r.profile == "noise":
            allowed = PROFILES["noise"].attributes["zone"].values
            assert allowed is not None and a["zone"] in zones and a["zone"] in allowed
        elif r.profile == "elevator":
            assert a["floors"] >= 6 and a["rated_load_kg"] in (800, 1000, 1350)
            assert a["rated_speed_mps"] == (
                1.0 if a["floors"] <= 11 else 2.5 if a["floors"] <= 24 else 4.0
            )
    zones_seen = Counter(r.attributes["zone"] for r in city.devices if r.profile == "noise")
    assert len(zones_seen) >= 4, "a city of 140 noise monitors covers most zones"


@pytest.mark.parametrize(("districts", "devices"), SIZES)
def test_devices_lie_in_their_district(districts: int, devices: int) -> None:
    city = generate_city(districts, devices, seed=5)
    by_name = {d.name: d for d in city.districts}
    assert len(by_name) == districts
    for r in city.devices:
        d = by_name[r.district]
        assert r.lat is not None and r.lon is not None
        # Coordinates are rounded to 6 decimals (~0.1 m).
        assert distance_km(r.lat, r.lon, d.lat, d.lon) <= d.radius_km + 1e-3, r
    # Devices spread over every district when there are enough of them.
    if devices >= 6 * districts:
        assert {r.district for r in city.devices} == set(by_name)


@pytest.mark.parametrize(("districts", "devices"), SIZES)
def test_ids_are_unique_topic_levels(districts: int, devices: int) -> None:
    city = generate_city(districts, devices, seed=9)
    ids = [r.device_id for r in city.devices]
    assert len(set(ids)) == len(ids)
    for r in city.devices:
        assert TOPIC_LEVEL.fullmatch(r.device_id), r.device_id
        assert TOPIC_LEVEL.fullmatch(r.district), r.district
        assert not set(r.device_id) & set("/+#$ ")
        assert r.device_id.startswith(f"{PREFIX[r.profile]}-{r.district}-")


def test_district_grid_is_a_square_around_the_centre() -> None:
    grid = district_grid(9)
    assert [d.name for d in grid] == [f"d{k:02d}" for k in range(1, 10)]
    middle = grid[4]
    assert (middle.lat, middle.lon) == pytest.approx(CENTRE, abs=1e-5)
    assert len({d.lat for d in grid}) == 3 and len({d.lon for d in grid}) == 3
    # Neighbours are one spacing apart and the districts' discs do not overlap.
    assert distance_km(grid[0].lat, grid[0].lon, grid[1].lat, grid[1].lon) == pytest.approx(
        8.0, rel=0.01
    )
    for a in grid:
        for b in grid:
            if a is not b:
                assert distance_km(a.lat, a.lon, b.lat, b.lon) >= a.radius_km + b.radius_km - 0.05


def test_district_grid_of_any_size_has_unique_names() -> None:
    for n in (1, 2, 3, 4, 10, 99, 100, 120):
        grid = district_grid(n, centre=(22.5431, 114.0579), spacing_km=5)
        assert len({d.name for d in grid}) == n
        assert all(d.radius_km == 2.5 for d in grid)
        if round(n**0.5) ** 2 == n:  # a full square is centred on the centre
            assert sum(d.lat for d in grid) / n == pytest.approx(22.5431, abs=1e-4)
            assert sum(d.lon for d in grid) / n == pytest.approx(114.0579, abs=1e-4)


def test_a_city_is_its_districts_and_devices() -> None:
    city = generate_city(2, 3)
    assert isinstance(city, City) and city.districts == district_grid(2)
