"""The shared state of the simulated city: weather, pollution, power.

A `World` is immutable and every query is a pure function of simulated time,
so models stay deterministic and a scenario is compiled into a World before it
runs. Storm cells move across districts; pollution episodes build over days;
power cuts black out a district.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

EARTH_KM_PER_DEG = 111.2


def distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Equirectangular distance: exact enough within a city."""
    x = (lon2 - lon1) * math.cos(math.radians((lat1 + lat2) / 2))
    y = lat2 - lat1
    return math.hypot(x, y) * EARTH_KM_PER_DEG


@dataclass(frozen=True, slots=True)
class District:
    name: str
    lat: float
    lon: float
    radius_km: float = 5.0


_NO_TIME = timedelta(0)


@dataclass(frozen=True, slots=True)
class StormCell:
    """A rain cell whose centre moves from `path_from` to `path_to` over its life."""

    start: datetime
    duration: timedelta
    peak_mm_h: float
    radius_km: float
    path_from: tuple[float, float]
    path_to: tuple[float, float]

    def centre(self, t: datetime) -> tuple[float, float]:
        x = min(max((t - self.start) / self.duration, 0.0), 1.0) if self.duration else 0.0
        (a_lat, a_lon), (b_lat, b_lon) = self.path_from, self.path_to
        return a_lat + (b_lat - a_lat) * x, a_lon + (b_lon - a_lon) * x

    def intensity(self, lat: float, lon: float, t: datetime) -> float:
        # Rain rises and falls as a sine half-wave over the cell's life; 0 outside it.
        # The share of the life `x` is within [0, 1) below, where `centre` would not
        # clamp it: computed once, as every gauge asks this at every sub-step.
        if t < self.start or self.duration <= _NO_TIME:
            return 0.0
        x = (t - self.start) / self.duration
        if x >= 1:
            return 0.0
        strength = math.sin(math.pi * x)
        if strength == 0.0:
            return 0.0
        (a_lat, a_lon), (b_lat, b_lon) = self.path_from, self.path_to
        d = distance_km(lat, lon, a_lat + (b_lat - a_lat) * x, a_lon + (b_lon - a_lon) * x)
        return self.peak_mm_h * strength * math.exp(-0.5 * (d / self.radius_km) ** 2)


@dataclass(frozen=True, slots=True)
class PollutionEpisode:
    """Stagnant air: pollutant levels multiply by up to `peak_factor`.

    Builds linearly over `build`, holds for `hold`, clears over `clear`.
    `districts` empty means the whole city.
    """

    start: datetime
    build: timedelta
    hold: timedelta
    clear: timedelta
    peak_factor: float
    districts: frozenset[str] = frozenset()

    def factor(self, district: str, t: datetime) -> float:
        if self.districts and district not in self.districts:
            return 1.0
        if t < self.start:
            return 1.0
        x = t - self.start
        if x < self.build:
            share = x / self.build
        elif x < self.build + self.hold:
            share = 1.0
        elif x < self.build + self.hold + self.clear:
            share = 1.0 - (x - self.build - self.hold) / self.clear
        else:
            return 1.0
        return 1.0 + (self.peak_factor - 1.0) * share


@dataclass(frozen=True, slots=True)
class PowerCut:
    district: str
    start: datetime
    duration: timedelta

    def covers(self, district: str, t: datetime) -> bool:
        return district == self.district and self.start <= t < self.start + self.duration


@dataclass(frozen=True, slots=True)
class Incident:
    """A scenario's instruction to particular devices (a blockage, construction noise…).

    `kind` is interpreted by the models that know it; `devices` empty means every
    device of `district` (or the city when `district` is empty).
    """

    kind: str
    start: datetime
    duration: timedelta
    district: str = ""
    devices: frozenset[str] = frozenset()
    params: tuple[tuple[str, float], ...] = ()

    def active(self, device_id: str, district: str, t: datetime) -> bool:
        if not (self.start <= t < self.start + self.duration):
            return False
        if self.devices:
            return device_id in self.devices
        return not self.district or self.district == district

    def param(self, name: str, default: float) -> float:
        return dict(self.params).get(name, default)


@dataclass(frozen=True)
class World:
    districts: tuple[District, ...]
    storms: tuple[StormCell, ...] = ()
    episodes: tuple[PollutionEpisode, ...] = ()
    power_cuts: tuple[PowerCut, ...] = ()
    incidents: tuple[Incident, ...] = ()
    timezone: str = "Asia/Shanghai"
    drizzle_mm_h: float = 0.0
    _tz: ZoneInfo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_tz", ZoneInfo(self.timezone))

    def rain_intensity(self, lat: float, lon: float, t: datetime) -> float:
        """Rain rate in mm/h at a point."""
        if not self.storms:
            return self.drizzle_mm_h + 0  # what the sum below gives, to the bit
        return self.drizzle_mm_h + sum(s.intensity(lat, lon, t) for s in self.storms)

    def pollution_factor(self, district: str, t: datetime) -> float:
        """1.0 on a normal day; the largest active episode's factor otherwise."""
        return max([1.0, *(e.factor(district, t) for e in self.episodes)])

    def power_on(self, district: str, t: datetime) -> bool:
        return not self.power_cuts or not any(c.covers(district, t) for c in self.power_cuts)

    def incidents_for(
        self, kind: str, device_id: str, district: str, t: datetime
    ) -> list[Incident]:
        return [i for i in self.incidents if i.kind == kind and i.active(device_id, district, t)]

    def local_hour(self, t: datetime) -> float:
        """Hour of the local day as a fraction (13.5 is half past one in the afternoon)."""
        local = t.astimezone(self._tz)
        return local.hour + local.minute / 60 + local.second / 3600

    def district(self, name: str) -> District | None:
        return next((d for d in self.districts if d.name == name), None)
