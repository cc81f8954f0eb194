"""A virtual city: districts on a map and a registry of devices with plausible attributes.

`generate_city` is deterministic for a seed. Its registry is the CSV that
`cityvitals devices import` loads, so the platform knows each device's warning
levels, noise zone or pipe diameter before the first reading arrives.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from devices.registry import DeviceRecord
from simulators.world import EARTH_KM_PER_DEG, District

CENTRE = (31.2304, 121.4737)
"""People's Square, Shanghai: the default city centre."""

PROFILE_SHARES: Mapping[str, float] = {
    "elevator": 0.40,
    "drainage": 0.22,
    "noise": 0.14,
    "rain_gauge": 0.09,
    "air_quality": 0.07,
    "water_level": 0.08,
}
"""How a city's devices split across profiles (elevators are the most numerous)."""

PREFIX = {
    "elevator": "el",
    "drainage": "dr",
    "noise": "nz",
    "rain_gauge": "rg",
    "air_quality": "aq",
    "water_level": "wl",
    "elevator_frame": "ef",
}

RIVERS = ("Huangpu River", "Suzhou Creek", "Chuanyang River", "Dianpu River", "Wusong River")
ROADS = (
    "Nanjing Road",
    "Century Avenue",
    "Huaihai Road",
    "Zhongshan Road",
    "Yan'an Road",
    "Siping Road",
    "Longhua Road",
    "Hongqiao Road",
)
NOISE_ZONES = (("1", 0.35), ("2", 0.3), ("3", 0.1), ("4a", 0.2), ("0", 0.03), ("4b", 0.02))
PIPE_DIAMETERS = (300, 400, 500, 600, 800, 1000, 1200, 1500)


@dataclass(frozen=True)
class City:
    districts: list[District]
    devices: list[DeviceRecord]


def district_grid(
    n: int, centre: tuple[float, float] = CENTRE, spacing_km: float = 8.0
) -> list[District]:
    """`n` districts named d01…, laid out on a square grid around the centre."""
    side = math.ceil(math.sqrt(n))
    lat0, lon0 = centre
    km_lon = EARTH_KM_PER_DEG * math.cos(math.radians(lat0))
    districts = []
    for k in range(n):
        row, col = divmod(k, side)
        dy = (row - (side - 1) / 2) * spacing_km
        dx = (col - (side - 1) / 2) * spacing_km
        districts.append(
            District(
                f"d{k + 1:02d}",
                round(lat0 + dy / EARTH_KM_PER_DEG, 5),
                round(lon0 + dx / km_lon, 5),
                radius_km=spacing_km / 2,
            )
        )
    return districts


def _counts(total: int, shares: Mapping[str, float]) -> dict[str, int]:
    """Split `total` by shares, at least one of each profile when there is room."""
    weight = sum(shares.values())
    counts = {p: int(total * s / weight) for p, s in shares.items()}
    for p in sorted(shares, key=lambda p: -shares[p]):
        if sum(counts.values()) >= total:
            break
        counts[p] += 1
    if total >= len(shares):
        for p in counts:
            if counts[p] == 0:
                donor = max(counts, key=lambda q: counts[q])
                counts[donor] -= 1
                counts[p] = 1
    return counts


def _attributes(profile: str, rng: random.Random, n: int) -> tuple[str, dict[str, Any]]:
    """A name and registry attributes for the n-th device of a profile."""
    if profile == "water_level":
        river = RIVERS[n % len(RIVERS)]
        warning = round(rng.uniform(3.6, 5.0), 2)
        guaranteed = round(warning + rng.uniform(0.6, 1.0), 2)
        return f"{river} gauge {n + 1}", {
            "river": river,
            "warning_level_m": warning,
            "guaranteed_level_m": guaranteed,
            "historical_max_m": round(guaranteed + rng.uniform(0.3, 0.8), 2),
        }
    if profile == "drainage":
        road = ROADS[n % len(ROADS)]
        diameter = rng.choice(PIPE_DIAMETERS)
        return f"{road} manhole {n + 1}", {
            "road": road,
            "pipe_diameter_mm": diameter,
            "manhole_depth_m": round(rng.uniform(2.0, 4.5), 1),
        }
    if profile == "noise":
        zone = rng.choices([z for z, _ in NOISE_ZONES], [w for _, w in NOISE_ZONES])[0]
        return f"Noise monitor {n + 1} (zone {zone})", {"zone": zone}
    if profile in ("elevator", "elevator_frame"):
        floors = rng.choice((6, 7, 11, 18, 24, 32, 40))
        return f"Building {n // 2 + 1} lift {n % 2 + 1}", {
            "building": f"Building {n // 2 + 1}",
            "floors": floors,
            "rated_speed_mps": 1.0 if floors <= 11 else 2.5 if floors <= 24 else 4.0,
            "rated_load_kg": rng.choice((800, 1000, 1350)),
        }
    if profile == "rain_gauge":
        return f"Rain gauge {n + 1}", {}
    if profile == "air_quality":
        return f"Air station {n + 1}", {"station_type": "micro" if n % 3 else "national"}
    return f"{profile} {n + 1}", {}


def generate_city(
    districts: int,
    devices: int,
    seed: int = 0,
    centre: tuple[float, float] = CENTRE,
    shares: Mapping[str, float] = PROFILE_SHARES,
) -> City:
    if districts < 1 or devices < 1:
        raise ValueError("a city needs at least one district and one device")
    rng = random.Random(seed)
    grid = district_grid(districts, centre)
    records: list[DeviceRecord] = []
    for profile, count in _counts(devices, shares).items():
        for n in range(count):
            district = grid[n % len(grid)]
            angle = rng.uniform(0, 2 * math.pi)
            r_km = district.radius_km * math.sqrt(rng.random())
            lat = district.lat + r_km * math.sin(angle) / EARTH_KM_PER_DEG
            lon = district.lon + r_km * math.cos(angle) / (
                EARTH_KM_PER_DEG * math.cos(math.radians(district.lat))
            )
            name, attributes = _attributes(profile, rng, n)
            records.append(
                DeviceRecord(
                    device_id=f"{PREFIX.get(profile, profile[:2])}-{district.name}-{n + 1:05d}",
                    profile=profile,
                    district=district.name,
                    name=name,
                    lat=round(lat, 6),
                    lon=round(lon, 6),
                    attributes=attributes,
                )
            )
    return City(grid, records)
