"""Environment monitors: ambient air-quality stations and GB 3096 noise monitors.

Both are smooth functions of the local hour (traffic peaks, the boundary
layer, sunlight) times the city's state from the `World` (pollution episodes,
construction incidents), plus slowly wandering noise, so consecutive readings
look like one continuous signal rather than independent draws.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from simulators.model import DeviceModel, Emission, SimDevice
from simulators.models import register

if TYPE_CHECKING:
    from simulators.world import World


def _bump(hour: float, centre: float, width_h: float) -> float:
    """A Gaussian bump on the 24-hour clock, 1 at `centre`."""
    d = (hour - centre + 12.0) % 24.0 - 12.0
    return math.exp(-0.5 * (d / width_h) ** 2)


def _sigmoid(x: float) -> float:
    if x < -40:
        return 0.0
    return 1.0 / (1.0 + math.exp(-x))


def _signed_hours(hour: float, mark: float) -> float:
    """`hour − mark` on the 24-hour clock, in (−12, 12]."""
    return -((mark - hour + 12.0) % 24.0 - 12.0)


class _Wander:
    """An Ornstein–Uhlenbeck process: mean-reverting noise with stationary sd `sigma`.

    Correlated over `tau_s`, so a reading resembles the one before it.
    """

    __slots__ = ("sigma", "tau_s", "value")

    def __init__(self, rng: random.Random, sigma: float, tau_s: float) -> None:
        self.sigma = sigma
        self.tau_s = tau_s
        self.value = rng.gauss(0.0, sigma)

    def advance(self, rng: random.Random, dt_s: float) -> float:
        rho = math.exp(-max(dt_s, 0.0) / self.tau_s)
        self.value = rho * self.value + math.sqrt(1.0 - rho * rho) * self.sigma * rng.gauss(0, 1)
        return self.value


class _Ranges:
    """Clamp values to the physical ranges the profile declares."""

    def __init__(self, device: SimDevice) -> None:
        self._ranges = {
            name: spec.range for name, spec in device.profile.metrics.items() if spec.range
        }
        self.names = frozenset(device.profile.metrics)

    def clamp(self, name: str, value: float, digits: int) -> float:
        bounds = self._ranges.get(name)
        if bounds is not None:
            value = min(max(value, bounds[0]), bounds[1])
        return round(value, digits)


def _event(device: SimDevice, t: datetime, name: str, detail: dict[str, Any]) -> Emission | None:
    """An event emission, or None when the profile does not declare the event."""
    spec = device.profile.events.get(name)
    if spec is None:
        return None
    return Emission(t, "event", {"type": name, "code": spec.code, "detail": detail})


# --- air quality --------------------------------------------------------------

# How each pollutant scales with the episode factor f (stagnant air): PM2.5 is
# the episode's own signature and scales as f; coarse dust and the gases, which
# come mostly from fresh local sources, scale less; ozone drops slightly in haze
# because the particles dim the sunlight that makes it.
_EPISODE_EXPONENT = {
    "pm2_5": 1.0,
    "pm10": 0.85,
    "so2": 0.6,
    "no2": 0.6,
    "co": 0.7,
    "o3": -0.1,
}

_AIR_DEFAULTS = {
    "pm2_5": 28.0,
    "pm10": 55.0,
    "so2": 8.0,
    "no2": 30.0,
    "co": 0.6,
    "o3": 70.0,
}

# The daily cycle at the reference amplitude (diurnal_amplitude = 0.3), as
# weights of: traffic (morning and evening rush), night (a shallow boundary
# layer traps what is emitted), mixing (the deep early-afternoon mixing layer
# dilutes ground-level sources and brings stack plumes down to the ground).
_AIR_SHAPE = {
    "pm2_5": (0.8, 0.7, -0.6),
    "pm10": (1.0, 0.5, -0.5),
    "so2": (0.3, 0.2, 0.6),
    "no2": (2.5, 0.4, -1.2),
    "co": (1.8, 0.5, -0.8),
}

_REFERENCE_AMPLITUDE = 0.3

_AIR_NORMS: dict[float, dict[str, float]] = {}
"""Daily means of the cycles by their scale, the same for every station of that scale."""


def _traffic(hour: float) -> float:
    return _bump(hour, 8.0, 1.3) + 0.9 * _bump(hour, 18.5, 1.7)


def _night(hour: float) -> float:
    return math.cos(2 * math.pi * (hour - 2.0) / 24.0)


def _mixing(hour: float) -> float:
    return _bump(hour, 13.5, 2.5)


def _sun(hour: float) -> float:
    """Photochemical activity: 0 at night, peaking mid-afternoon (15:00)."""
    x = math.sin(math.pi * (hour - 8.0) / 14.0)
    return x**1.5 if 8.0 < hour < 22.0 and x > 0 else 0.0


@register("air_station")
class AirStation(DeviceModel):
    """Five-minute means of the six AQI pollutants, temperature and humidity.

    Parameters (profile `simulator:` section or device attributes):
    `base_pm2_5`, `base_pm10`, `base_so2`, `base_no2`, `base_co` (mg/m³),
    `base_o3` — daily means on a clean day; `diurnal_amplitude` — relative
    swing of the daily cycle (0.3 is typical); `noise_pct` — sd of the slow
    wander; `temperature_c`, `temperature_amplitude_c`, `humidity_pct`.

    A pollution episode multiplies the daily mean PM2.5 by the World's factor,
    so a scenario aiming at a daily PM2.5 of X µg/m³ uses a peak factor of
    about X / base_pm2_5. A `construction` incident adds site dust
    (`dust_ug_m3`, default 40, to PM10 and 15 % of it to PM2.5).
    """

    def __init__(self, device: SimDevice, params: Mapping[str, Any], rng: random.Random) -> None:
        super().__init__(device, params, rng)
        self._ranges = _Ranges(device)
        self._base = {name: self.param(f"base_{name}", d) for name, d in _AIR_DEFAULTS.items()}
        scale = self.param("diurnal_amplitude", _REFERENCE_AMPLITUDE) / _REFERENCE_AMPLITUDE
        self._scale = scale
        # Normalise each cycle so its daily mean is 1 and base_* stay the daily means.
        norm = _AIR_NORMS.get(scale)
        if norm is None:
            grid = [i / 4 for i in range(96)]
            norm = {
                name: sum(self._raw_shape(name, h) for h in grid) / len(grid)
                for name in _AIR_DEFAULTS
            }
            _AIR_NORMS[scale] = norm
        self._norm = norm
        sigma = self.param("noise_pct", 10.0) / 100.0
        hour_s = 3600.0
        self._traffic_wander = _Wander(rng, sigma, 1.0 * hour_s)
        self._wander = {name: _Wander(rng, sigma, 2.0 * hour_s) for name in _AIR_DEFAULTS}
        self._temp_wander = _Wander(rng, 0.8, 3.0 * hour_s)
        self._hum_wander = _Wander(rng, 4.0, 3.0 * hour_s)
        self._last: datetime | None = None
        self._power_on = True

    def _raw_shape(self, name: str, hour: float) -> float:
        if name == "o3":
            raw = 0.45 + 1.6 * _sun(hour)
            # Fresh NO from traffic titrates ozone: the rush hours dent it.
            raw *= math.exp(-0.6 * _traffic(hour))
        else:
            w_traffic, w_night, w_mixing = _AIR_SHAPE[name]
            raw = 1.0 + _REFERENCE_AMPLITUDE * (
                w_traffic * _traffic(hour) + w_night * _night(hour) + w_mixing * _mixing(hour)
            )
        return max(0.05, 1.0 + self._scale * (raw - 1.0))

    def step(self, t: datetime, world: World) -> list[Emission]:
        dt_s = (t - self._last).total_seconds() if self._last is not None else 0.0
        self._last = t
        out: list[Emission] = []
        district = self.device.district

        power_on = world.power_on(district, t)
        if power_on != self._power_on:
            self._power_on = power_on
            if not power_on:
                # The analysers keep running on the station's UPS; the alarm goes out.
                event = _event(self.device, t, "power_failure", {})
                if event is not None:
                    out.append(event)

        hour = world.local_hour(t)
        factor = world.pollution_factor(district, t)
        traffic_noise = self._traffic_wander.advance(self.rng, dt_s)
        dust = sum(
            i.param("dust_ug_m3", 40.0)
            for i in world.incidents_for("construction", self.device.device_id, district, t)
        )

        values: dict[str, float] = {}
        for name, base in self._base.items():
            own = self._wander[name].advance(self.rng, dt_s)
            # Traffic variability moves the traffic pollutants together and ozone against them.
            shared = -0.5 * traffic_noise if name == "o3" else traffic_noise
            measurement = self.rng.gauss(0.0, 0.03)
            level = (
                base
                * self._raw_shape(name, hour)
                / self._norm[name]
                * factor ** _EPISODE_EXPONENT[name]
                * math.exp(own + 0.5 * shared + measurement)
            )
            values[name] = level
        values["pm10"] += dust
        values["pm2_5"] += 0.15 * dust
        # Fine particles are part of PM10, so PM10 is never below PM2.5.
        values["pm10"] = max(values["pm10"], values["pm2_5"] * 1.05)

        warmth = math.cos(2 * math.pi * (hour - 15.0) / 24.0)
        temperature = (
            self.param("temperature_c", 16.0)
            + self.param("temperature_amplitude_c", 5.0) * warmth
            + self._temp_wander.advance(self.rng, dt_s)
        )
        # Relative humidity falls as the air warms; stagnant hazy air is damp.
        humidity = (
            self.param("humidity_pct", 65.0)
            - 15.0 * warmth
            + 10.0 * (1.0 - 1.0 / factor)
            + self._hum_wander.advance(self.rng, dt_s)
        )
        values["temperature_c"] = temperature
        values["humidity_pct"] = min(max(humidity, 5.0), 100.0)

        digits = {"co": 2}
        body = {
            name: self._ranges.clamp(name, value, digits.get(name, 1))
            for name, value in values.items()
            if name in self._ranges.names
        }
        out.append(Emission(t, "telemetry", body))
        return out


# --- noise --------------------------------------------------------------------

ZONE_LIMITS_DB: dict[str, tuple[float, float]] = {
    "0": (50.0, 40.0),
    "1": (55.0, 45.0),
    "2": (60.0, 50.0),
    "3": (65.0, 55.0),
    "4a": (70.0, 55.0),
    "4b": (70.0, 60.0),
}
"""GB 3096-2008 LAeq limits by acoustic environment functional zone: (day, night)."""

# Traffic activity on a typical weekday mid-afternoon; the daytime level sits at
# the zone's day target then.
_MIDDAY_ACTIVITY = 0.67
_NIGHT_ACTIVITY = 0.2


def _parse_hhmm(value: Any, default: float) -> float:
    if value is None:
        return default
    text = str(value).strip()
    try:
        hours, _, minutes = text.partition(":")
        return int(hours) + int(minutes or 0) / 60
    except ValueError:
        raise ValueError(f"{text!r} is not a time of day; write HH:MM, e.g. 22:00") from None


def _activity(hour: float) -> float:
    """Road traffic relative to the rush-hour peak: ~0.12 at 3 am, ~1 at the peaks."""
    daytime = _sigmoid((hour - 6.5) / 0.7) * _sigmoid((21.5 - hour) / 0.8)
    rush = _bump(hour, 8.0, 1.2) + _bump(hour, 18.0, 1.5)
    return min(0.12 + 0.55 * daytime + 0.35 * rush, 1.2)


def _energy_sum(*levels: float) -> float:
    return 10.0 * math.log10(sum(10.0 ** (level / 10.0) for level in levels))


@register("noise_monitor")
class NoiseMonitor(DeviceModel):
    """One-minute LAeq and percentile levels by GB 3096 zone.

    Parameters: `zone` (the device attribute; the profile's value is only a
    fallback), `day_limit_db` / `night_limit_db` (override the zone's limits),
    `day_start` / `night_start` (HH:MM), `day_margin_db` (daytime level this
    far below the day limit at mid-afternoon traffic), `night_margin_db`,
    `traffic_amplitude_db` (rush hour against a quiet street),
    `loud_events_per_hour` (horns, motorbikes, sirens).

    A `construction` incident adds a source `extra_db` (default 12) above the
    ambient level: it drives LAeq over the zone limit. Levels obey
    lmin ≤ l90 ≤ l50 ≤ l10 ≤ lmax with l90 ≤ laeq ≤ lmax.
    """

    def __init__(self, device: SimDevice, params: Mapping[str, Any], rng: random.Random) -> None:
        super().__init__(device, params, rng)
        self._ranges = _Ranges(device)
        zone = str(params.get("zone", "2"))
        if zone not in ZONE_LIMITS_DB:
            raise ValueError(
                f"noise monitor {device.device_id}: zone {zone!r} is not a GB 3096 zone "
                f"({', '.join(ZONE_LIMITS_DB)})"
            )
        self.zone = zone
        day_limit, night_limit = ZONE_LIMITS_DB[zone]
        self.day_limit_db = self.param("day_limit_db", day_limit)
        self.night_limit_db = self.param("night_limit_db", night_limit)
        self._day_start = _parse_hhmm(params.get("day_start"), 6.0)
        self._night_start = _parse_hhmm(params.get("night_start"), 22.0)
        self._day_target = self.day_limit_db - self.param("day_margin_db", 3.0)
        self._night_target = self.night_limit_db - self.param("night_margin_db", 4.0)
        self._amplitude = self.param("traffic_amplitude_db", 8.0)
        self._loud_per_minute = self.param("loud_events_per_hour", 2.0) / 60.0
        self._wander = _Wander(rng, 1.5, 20 * 60.0)
        self._rssi_base = rng.uniform(-95.0, -65.0)
        self._last: datetime | None = None

    def _night_weight(self, hour: float) -> float:
        """1 in the night period, 0 by day, with half-hour ramps (traffic does not jump)."""
        day = _sigmoid(_signed_hours(hour, self._day_start) / 0.3) * _sigmoid(
            -_signed_hours(hour, self._night_start) / 0.3
        )
        return 1.0 - day

    def step(self, t: datetime, world: World) -> list[Emission]:
        dt_s = (t - self._last).total_seconds() if self._last is not None else 0.0
        self._last = t
        interval_s = max(self.tick.total_seconds(), 1.0)
        rng = self.rng
        hour = world.local_hour(t)
        activity = _activity(hour)
        day_level = self._day_target + self._amplitude * (activity - _MIDDAY_ACTIVITY)
        night_level = self._night_target + 0.5 * self._amplitude * (activity - _NIGHT_ACTIVITY)
        w = self._night_weight(hour)
        laeq = (
            (1.0 - w) * day_level
            + w * night_level
            + self._wander.advance(rng, dt_s)
            + rng.gauss(0.0, 0.7)
        )

        # Spread of the one-second levels within the minute, in dB: busy roads
        # fluctuate with every passing vehicle, quiet sites hardly at all.
        spread = (2.0 + 2.5 * activity) * rng.uniform(0.8, 1.2)

        extra_db = [
            i.param("extra_db", 12.0)
            for i in world.incidents_for(
                "construction", self.device.device_id, self.device.district, t
            )
        ]
        peaks: list[float] = []
        if extra_db:
            source = laeq + max(extra_db)
            laeq = _energy_sum(laeq, source)
            spread += 2.0  # hammering and breakers are impulsive
            peaks.append(source + rng.uniform(5.0, 12.0))

        # For levels normally distributed in dB, Leq = L50 + 0.115·σ².
        l50 = laeq - 0.115 * spread * spread
        l10 = l50 + 1.28 * spread
        l90 = l50 - 1.28 * spread
        lmax = l50 + spread * (2.3 + 0.4 * abs(rng.gauss(0.0, 1.0)))
        lmin = l50 - spread * (2.2 + 0.3 * abs(rng.gauss(0.0, 1.0)))

        if rng.random() < self._loud_per_minute * (0.1 + activity):
            level = l50 + rng.uniform(12.0, 22.0)
            share = rng.uniform(1.0, 6.0) / interval_s
            laeq = 10.0 * math.log10(
                (1.0 - share) * 10.0 ** (laeq / 10.0) + share * 10.0 ** (level / 10.0)
            )
            peaks.append(level)
        lmax = max(lmax, laeq, *peaks)

        body: dict[str, float | int] = {}
        levels = {
            "laeq_db": laeq,
            "lmax_db": lmax,
            "lmin_db": lmin,
            "l10_db": l10,
            "l50_db": l50,
            "l90_db": l90,
        }
        for name, value in levels.items():
            if name in self._ranges.names:
                body[name] = self._ranges.clamp(name, value, 1)
        if "battery_v" in self._ranges.names:
            # A solar-charged 12 V battery: charging by day, slowly draining at night.
            sun = max(0.0, math.sin(math.pi * (hour - 6.0) / 12.0))
            body["battery_v"] = self._ranges.clamp(
                "battery_v", 12.5 + 1.1 * sun + rng.gauss(0.0, 0.03), 2
            )
        if "rssi_dbm" in self._ranges.names:
            body["rssi_dbm"] = int(
                self._ranges.clamp("rssi_dbm", self._rssi_base + rng.gauss(0, 2), 0)
            )
        return [Emission(t, "telemetry", body)]
