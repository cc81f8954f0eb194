"""Hydrology models: tipping-bucket rain gauges, river water-level gauges, drainage manholes.

All three read the rain of the simulated city from `World.rain_intensity` and
integrate it over the interval since their previous step in sub-steps (one
minute for a rain gauge, five for the others), so a storm cell passing between
two reports is still counted. Parameters come from the profile's `simulator` section merged with the
device's attributes (attributes win); each model's docstring lists the ones it
reads, with their defaults. Telemetry carries only the metrics the device's
profile declares, inside their physical ranges; events only the types it
declares. A profile that reuses a model with fewer metrics or events simply
gets fewer.

Incidents of the `World` the models understand:
- `sensor_fault` (every model): the device reports a failed self-test; a rain
  gauge's blocked funnel also stops counting rain while it lasts;
- `enclosure_open` (river gauge): the instrument enclosure was opened;
- `blockage` (drainage, param `severity` 0..1): the pipe loses capacity;
- `cover_open` (drainage, param `tilt_deg`): the cover is lifted off its seat;
- `cover_tilted` (drainage, param `tilt_deg`): the cover is tilted but seated;
- `gas` (drainage, params `ch4_pct_lel`, `h2s_ppm`): a gas build-up;
- `vibration` (drainage): the cover is struck.
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from devices.durations import parse_duration
from simulators.model import DeviceModel, Emission, SimDevice, Value
from simulators.models import register
from simulators.world import EARTH_KM_PER_DEG, Incident, World

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
M2_TIDE_H = 12.42
"""Period of the principal lunar semidiurnal tide."""


def _offset(lat: float, lon: float, east_km: float, north_km: float) -> tuple[float, float]:
    return (
        lat + north_km / EARTH_KM_PER_DEG,
        lon + east_km / (EARTH_KM_PER_DEG * math.cos(math.radians(lat))),
    )


# --- shared machinery ----------------------------------------------------------


@dataclass(slots=True)
class _Battery:
    """A station battery: lithium packs drain slowly; solar-charged ones rise by day."""

    volts: float
    drain_v_day: float
    solar_charge_v: float
    noise_v: float

    def read(self, rng: random.Random, dt_days: float, hour: float, rain_mm_h: float) -> float:
        self.volts -= self.drain_v_day * dt_days
        v = self.volts
        if self.solar_charge_v:
            sun = max(0.0, math.sin(math.pi * (hour - 6.0) / 12.0))
            # Rain clouds cut the panel's output.
            v += self.solar_charge_v * sun / (1.0 + rain_mm_h / 2.0)
        return v + rng.gauss(0.0, self.noise_v)


@dataclass(frozen=True, slots=True)
class _BatteryDefaults:
    volts: float
    spread_v: float
    drain_v_day: float
    solar_charge_v: float
    noise_v: float
    low_v: float


SOLAR_12V = _BatteryDefaults(12.7, 0.2, 0.0, 0.8, 0.01, 11.8)
LITHIUM_PACK = _BatteryDefaults(3.95, 0.15, 0.002, 0.0, 0.005, 3.7)


class _HydrologyModel(DeviceModel):
    """Time spans and sub-steps, incidents, latched alarms, battery and radio.

    Parameters: `substep` (by model); the battery's `battery_v` (resting voltage of a
    new unit), `battery_spread_v` (units start up to this much lower),
    `battery_drain_v_day`, `solar_charge_v` (rise at noon in sunshine; 0 without
    a panel), `battery_noise_v`, `battery_low_v` (the unit's own alarm), with
    defaults by model (a 12 V solar-charged station or a lithium pack); the
    radio's `rssi_dbm` (-80, the fleet's mean) and `rssi_spread_db` (8).
    """

    battery_defaults = SOLAR_12V
    default_substep = timedelta(minutes=1)

    def __init__(self, device: SimDevice, params: Mapping[str, Any], rng: random.Random) -> None:
        super().__init__(device, params, rng)
        self._last_t: datetime | None = None
        self._substep = self.duration("substep", self.default_substep)
        if self._substep <= timedelta(0):
            raise self._bad("substep", "must be longer than zero")
        self._active_incidents: set[str] = set()
        self._alarms: set[str] = set()
        d = self.battery_defaults
        spread = self.param("battery_spread_v", d.spread_v)
        self._battery = _Battery(
            volts=self.param("battery_v", d.volts) - self.rng.uniform(0.0, spread),
            drain_v_day=self.param("battery_drain_v_day", d.drain_v_day),
            solar_charge_v=self.param("solar_charge_v", d.solar_charge_v),
            noise_v=self.param("battery_noise_v", d.noise_v),
        )
        self._battery_low_v = self.param("battery_low_v", d.low_v)
        self._rssi_base = self.rng.gauss(
            self.param("rssi_dbm", -80.0), self.param("rssi_spread_db", 8)
        )

    # parameters

    def duration(self, name: str, default: timedelta) -> timedelta:
        value = self.params.get(name)
        if value is None:
            return default
        try:
            return parse_duration(value)
        except (TypeError, ValueError, OverflowError) as exc:
            raise self._bad(name, str(exc)) from None

    def _bad(self, name: str, problem: str) -> ValueError:
        return ValueError(
            f"simulator parameter {name!r} of device {self.device.device_id} "
            f"({self.device.profile.name}): {problem}"
        )

    # time

    def _span(self, t: datetime) -> tuple[datetime, datetime]:
        """The interval this step covers: since the previous step, or one tick at first."""
        start = self._last_t if self._last_t is not None else t - self.tick
        end = max(t, start)
        self._last_t = end
        return start, end

    def _substeps(self, start: datetime, end: datetime) -> Iterator[tuple[datetime, float]]:
        """Midpoints and lengths in hours of equal sub-steps no longer than `substep`."""
        span = end - start
        if span <= timedelta(0):
            return
        n = max(1, math.ceil(span / self._substep))
        dt = span / n
        for i in range(n):
            yield start + dt * (i + 0.5), dt / HOUR

    # incidents and alarms

    def _incidents(self, world: World, kind: str, t: datetime) -> list[Incident]:
        return world.incidents_for(kind, self.device.device_id, self.device.district, t)

    def _incident_events(self, world: World, t: datetime, kinds: tuple[str, ...]) -> list[Emission]:
        """The event of each incident kind that became active since the previous step."""
        out: list[Emission] = []
        for kind in kinds:
            active = bool(self._incidents(world, kind, t))
            if active and kind not in self._active_incidents:
                self._active_incidents.add(kind)
                out += self._event(t, kind, incident=kind)
            elif not active:
                self._active_incidents.discard(kind)
        return out

    def _alarm(self, name: str, raised: bool, cleared: bool) -> bool:
        """Latch alarm `name` when `raised`, release it when `cleared`; True when it latches.

        Separate raise and clear conditions give the hysteresis a real unit has,
        so a value hovering at its threshold does not send a storm of events.
        """
        if name in self._alarms:
            if cleared:
                self._alarms.discard(name)
            return False
        if raised:
            self._alarms.add(name)
            return True
        return False

    # what the device says

    def _battery_v(self, dt_h: float, hour: float, rain_mm_h: float) -> float:
        return self._battery.read(self.rng, dt_h / 24.0, hour, rain_mm_h)

    def _battery_events(self, t: datetime, volts: float) -> list[Emission]:
        low = self._battery_low_v
        if self._alarm("low_battery", volts < low, volts > low + 0.05):
            return self._event(t, "low_battery", battery_v=round(volts, 3), threshold_v=low)
        return []

    def _rssi(self, penalty_db: float = 0.0) -> int:
        return round(self._rssi_base + self.rng.gauss(0.0, 2.0) - penalty_db)

    def _telemetry(self, t: datetime, values: Mapping[str, Value], decimals: int = 3) -> Emission:
        """Values of the metrics the profile declares, clamped into their physical ranges."""
        body: dict[str, Value] = {}
        for name, value in values.items():
            spec = self.device.profile.metrics.get(name)
            if spec is None:
                continue
            if isinstance(value, int | float) and not isinstance(value, bool):
                if spec.range is not None:
                    value = min(max(value, spec.range[0]), spec.range[1])
                if isinstance(value, float):
                    value = round(value, decimals) + 0.0
            body[name] = value
        return Emission(t, "telemetry", body)

    def _event(self, t: datetime, name: str, **detail: Any) -> list[Emission]:
        spec = self.device.profile.events.get(name)
        if spec is None:
            return []
        body: dict[str, Any] = {"type": name}
        if spec.code is not None:
            body["code"] = spec.code
        body["detail"] = detail
        return [Emission(t, "event", body)]


# --- rain gauge ----------------------------------------------------------------


@register("rain_gauge")
class RainGauge(_HydrologyModel):
    """A tipping-bucket gauge under the World's rain.

    Rain at the gauge is integrated over the interval; whole bucket tips of
    `resolution_mm` (0.2) are reported and the remainder stays in the bucket for
    the next interval, so totals over a storm match the rain that fell to within
    one tip. `intensity_mm_h` is the rate over the last minute, unquantised as
    gauges that time the tips report it. The battery is solar-charged by default.
    """

    def __init__(self, device: SimDevice, params: Mapping[str, Any], rng: random.Random) -> None:
        super().__init__(device, params, rng)
        self._resolution = self.param("resolution_mm", 0.2)
        if self._resolution <= 0:
            raise self._bad("resolution_mm", "must be above zero")
        self._bucket_mm = self.rng.uniform(0.0, self._resolution)

    def step(self, t: datetime, world: World) -> list[Emission]:
        start, end = self._span(t)
        lat, lon = self.device.lat, self.device.lon
        fallen = sum(
            world.rain_intensity(lat, lon, mid) * dt for mid, dt in self._substeps(start, end)
        )
        intensity = world.rain_intensity(lat, lon, end - timedelta(seconds=30))
        events = self._incident_events(world, end, ("sensor_fault",))
        if self._incidents(world, "sensor_fault", end):
            # A blocked funnel: the water never reaches the bucket.
            fallen = intensity = 0.0
        self._bucket_mm += fallen
        tips = math.floor(self._bucket_mm / self._resolution + 1e-9)
        self._bucket_mm = max(0.0, self._bucket_mm - tips * self._resolution)
        dt_h = (end - start) / HOUR
        volts = self._battery_v(dt_h, world.local_hour(end), intensity)
        reading = self._telemetry(
            end,
            {
                "rain_mm": round(tips * self._resolution, 3),
                "intensity_mm_h": round(intensity, 1),
                "battery_v": volts,
                "rssi_dbm": self._rssi(),
            },
        )
        return [reading, *events, *self._battery_events(end, volts)]


# --- river gauge ---------------------------------------------------------------


def _route(stores: list[float], inflow: float, dt_h: float, k_h: float) -> float:
    """Pass `inflow` (mm/h) for `dt_h` hours through linear reservoirs in series, in place.

    Each reservoir is solved exactly for constant inflow over the step, and
    passes on its mean outflow, so the cascade conserves water. Returns the
    outflow of the last reservoir at the end of the step.
    """
    decay = math.exp(-dt_h / k_h)
    for i, store in enumerate(stores):
        new = inflow * k_h + (store - inflow * k_h) * decay
        stores[i] = new
        inflow -= (new - store) / dt_h
    return stores[-1] / k_h


@register("river_gauge")
class RiverGauge(_HydrologyModel):
    """A river gauge downstream of a rain-fed catchment.

    Rain averaged over a disc `catchment_radius_km` (6) centred `upstream_km` (8)
    from the gauge towards `upstream_bearing_deg` (270, west) loses `loss_mm_h`
    (2) to the ground and runs off through a Nash cascade of `reservoirs` (2)
    linear reservoirs of `storage_h` (2.5) hours: the level peaks about
    (reservoirs − 1) × storage_h after a short burst of rain and recedes with
    storage_h. The stage follows a rating curve, rise ∝ (Q_base + Q)^stage_exponent
    − Q_base^stage_exponent with `baseflow_mm_h` (0.2) and `stage_exponent` (0.6),
    scaled so that a design storm of `design_rain_mm` (100) within
    `design_duration` (3h) peaks `design_peak_above_guaranteed_m` (0.3) above
    the gauge's `guaranteed_level_m`; above that level the water spreads over
    the floodplain and the rise is damped logarithmically on a scale of
    `overbank_m` (1.0). Dry weather sits at `base_level_m`, by
    default `base_below_warning_m` (1.5) below `warning_level_m`. A tide of
    `tide_m` (0.03) and noise of `noise_m` (0.005) ride on top. `rate_m_h` is
    the change of the noise-free level since the previous report; beyond
    ±`steady_rate_m_h` (0.02) the trend is rising or falling. The first step
    runs the catchment through the `spin_up` (12h) before it, so a storm
    already under way shows.
    """

    # Hours of storage need no finer steps than the five-minute reports.
    default_substep = timedelta(minutes=5)

    def __init__(self, device: SimDevice, params: Mapping[str, Any], rng: random.Random) -> None:
        super().__init__(device, params, rng)
        self.warning_m = self.param("warning_level_m", 4.5)
        self.guaranteed_m = self.param("guaranteed_level_m", self.warning_m + 1.0)
        self.base_m = self.param(
            "base_level_m", self.warning_m - self.param("base_below_warning_m", 1.5)
        )
        self._loss = self.param("loss_mm_h", 2.0)
        self._k = self.param("storage_h", 2.5)
        if self._k <= 0:
            raise self._bad("storage_h", "must be above zero")
        reservoirs = int(self.param("reservoirs", 2))
        if reservoirs < 1:
            raise self._bad("reservoirs", "needs at least one reservoir")
        self._stores = [0.0] * reservoirs
        self._baseflow = max(0.0, self.param("baseflow_mm_h", 0.2))
        self._exponent = self.param("stage_exponent", 0.6)
        if not 0 < self._exponent <= 1.5:
            raise self._bad("stage_exponent", "must be in (0, 1.5]")
        self._points = self._catchment()
        self._bankfull_m = max(0.1, self.guaranteed_m - self.base_m)
        self._overbank_m = max(0.05, self.param("overbank_m", 1.0))
        self._gain = self._calibrate()
        self._tide_m = self.param("tide_m", 0.03)
        self._tide_phase = self.rng.uniform(0.0, 2 * math.pi)
        self._noise_m = self.param("noise_m", 0.005)
        self._steady = self.param("steady_rate_m_h", 0.02)
        self._spin_up = self.duration("spin_up", timedelta(hours=12))
        self._previous_m = self.base_m

    def _catchment(self) -> list[tuple[float, float]]:
        """The centre of the catchment disc and six points around it, equally weighted."""
        distance = self.param("upstream_km", 8.0)
        bearing = math.radians(self.param("upstream_bearing_deg", 270.0))
        radius = self.param("catchment_radius_km", 6.0)
        lat, lon = _offset(
            self.device.lat,
            self.device.lon,
            distance * math.sin(bearing),
            distance * math.cos(bearing),
        )
        points = [(lat, lon)]
        if radius > 0:
            ring = 0.6 * radius
            for i in range(6):
                a = i * math.pi / 3
                points.append(_offset(lat, lon, ring * math.cos(a), ring * math.sin(a)))
        return points

    def _stage(self, runoff_mm_h: float) -> float:
        b, e = self._baseflow, self._exponent
        return math.pow(b + runoff_mm_h, e) - math.pow(b, e)

    def _calibrate(self) -> float:
        """Metres of rise per unit of stage, from the design storm's simulated peak."""
        rain = self.param("design_rain_mm", 100.0)
        hours = self.duration("design_duration", timedelta(hours=3)) / HOUR
        if rain <= 0 or hours <= 0:
            raise self._bad("design_rain_mm", "the design storm needs rain and a duration")
        stores = [0.0] * len(self._stores)
        dt = min(hours / 36, 5 / 60)
        peak, elapsed = 0.0, 0.0
        while elapsed < hours + 8 * len(stores) * self._k:
            mid = elapsed + dt / 2
            # A sine-shaped storm of the design depth, as the World's storm cells are.
            i = math.pi / 2 * rain / hours * math.sin(math.pi * mid / hours) if mid < hours else 0.0
            peak = max(peak, _route(stores, max(0.0, i - self._loss), dt, self._k))
            elapsed += dt
        if peak <= 0:
            raise self._bad("loss_mm_h", "the design storm soaks in without any runoff")
        above = self.param("design_peak_above_guaranteed_m", 0.3)
        # The channel rise that the overbank damping turns into `above` over the banks.
        rise = self._bankfull_m + self._overbank_m * math.expm1(above / self._overbank_m)
        return rise / self._stage(peak)

    def _damped(self, rise_m: float) -> float:
        """Water over the banks spreads across the floodplain and rises ever slower."""
        over = rise_m - self._bankfull_m
        if over <= 0:
            return rise_m
        return self._bankfull_m + self._overbank_m * math.log1p(over / self._overbank_m)

    def _catchment_rain(self, world: World, t: datetime) -> float:
        return sum(world.rain_intensity(lat, lon, t) for lat, lon in self._points) / len(
            self._points
        )

    def _advance(self, world: World, start: datetime, end: datetime) -> None:
        for mid, dt in self._substeps(start, end):
            effective = max(0.0, self._catchment_rain(world, mid) - self._loss)
            _route(self._stores, effective, dt, self._k)

    def _level(self, t: datetime) -> float:
        """The noise-free water level at `t` for the current storage."""
        runoff = self._stores[-1] / self._k
        tide = self._tide_m * math.sin(
            2 * math.pi * t.timestamp() / 3600 / M2_TIDE_H + self._tide_phase
        )
        return self.base_m + self._damped(self._gain * self._stage(runoff)) + tide

    def _trend(self, rate: float) -> str:
        sign = 1 if rate > self._steady else -1 if rate < -self._steady else 0
        spec = self.device.profile.metrics.get("trend")
        words = spec.code_to_word if spec is not None else {}
        return words.get(sign, {1: "rising", 0: "steady", -1: "falling"}[sign])

    def step(self, t: datetime, world: World) -> list[Emission]:
        if self._last_t is None:
            warm_from = t - self.tick
            self._advance(world, warm_from - self._spin_up, warm_from)
            self._previous_m = self._level(warm_from)
        start, end = self._span(t)
        self._advance(world, start, end)
        level = self._level(end)
        dt_h = (end - start) / HOUR
        rate = (level - self._previous_m) / dt_h if dt_h > 0 else 0.0
        self._previous_m = level
        lat, lon = self.device.lat, self.device.lon
        volts = self._battery_v(dt_h, world.local_hour(end), world.rain_intensity(lat, lon, end))
        reading = self._telemetry(
            end,
            {
                "level_m": level + self.rng.gauss(0.0, self._noise_m),
                "rate_m_h": rate,
                "trend": self._trend(rate),
                "battery_v": volts,
                "rssi_dbm": self._rssi(),
            },
        )
        events = self._incident_events(world, end, ("sensor_fault", "enclosure_open"))
        return [reading, *events, *self._battery_events(end, volts)]


# --- drainage ------------------------------------------------------------------


def _part_full_load(fill: float) -> float:
    """Flow of a circular pipe at depth/diameter `fill`, as a share of its full-bore flow."""
    if fill <= 0:
        return 0.0
    theta = 2 * math.acos(1 - 2 * min(fill, 1.0))
    area = (theta - math.sin(theta)) / (2 * math.pi)
    radius = 1 - math.sin(theta) / theta
    return area * math.pow(radius, 2 / 3)


# Manning's part-full curve up to 0.8 of the diameter, then straight on to a full
# bore at load 1.0: the true curve peaks above 1.0 near 0.94 and turns back,
# which no sensor could tell apart from a full pipe.
_FILLS = [i / 100 for i in range(81)] + [1.0]
_LOADS = [_part_full_load(f) for f in _FILLS[:-1]] + [1.0]


def _fill_for_load(load: float) -> float:
    """Depth/diameter at which a free-flowing pipe carries `load` (≤ 1) of its full flow."""
    if load <= 0:
        return 0.0
    if load >= 1:
        return 1.0
    i = bisect.bisect_left(_LOADS, load)
    q0, q1, f0, f1 = _LOADS[i - 1], _LOADS[i], _FILLS[i - 1], _FILLS[i]
    return f0 + (f1 - f0) * (load - q0) / (q1 - q0)


@dataclass(slots=True)
class _Episode:
    """A spontaneous blockage or gas build-up of the device's own."""

    until: datetime
    severity: float = 0.0
    ch4_pct_lel: float = 0.0
    h2s_ppm: float = 0.0


@dataclass(frozen=True, slots=True)
class _Hydraulics:
    level_m: float
    downstream_m: float
    flow_m3s: float
    over_road_m: float
    """Head above the road surface; negative while the water stays below it."""
    road_m: float


@register("drainage_pipe")
class DrainagePipe(_HydrologyModel):
    """A manhole monitor on a drainage pipe under the World's rain.

    Load on the pipe, as a share of its full-bore flow: dry-weather flow (fill
    `base_fill_ratio` 0.3 with a daily cycle for sewage and combined pipes,
    `storm_base_fill_ratio` 0.05 for storm pipes) plus rain at the manhole over
    the rain the pipe carries full, `rain_capacity_mm_h` (40) × (DN/800)^
    `capacity_exponent` (0.5), followed with a first-order `lag` (15m); a sewage
    pipe takes `sewage_rain_share` (0.2) of it. A blockage cuts capacity by
    `blockage_capacity_loss` (0.9) × severity. Up to a full bore the depth
    follows Manning's part-full curve; above, the head rises `surcharge_head_m`
    (2.0) per unit of excess load, and water above `manhole_depth_m` (3.5)
    ponds on the road up to `road_water_max_m` (0.5), approaching it on the
    scale of `road_water_scale_m` (1.0) of head, rising within `road_rise` (5m)
    and draining within `road_drain` (30m). A head `cover_lift_head_m` (unset: never)
    above the road lifts the cover until `cover_reseat` (2h) after it falls.
    Flow is Manning's full-bore flow (`manning_n` 0.013, `pipe_slope` 0.003)
    times the load that passes: a pressurised pipe passes up to
    `surcharge_flow_gain` (0.5) more as the head above its crown nears the road.
    The upstream end of the reach sits above the blockage, the downstream end
    below it. Spontaneous blockages (`blockage_probability` per day, 0.01,
    lasting about `blockage_duration`, 1d) and gas build-ups
    (`gas_probability` per day, 0) come on top of the World's incidents.
    Alarms: `high_water_fill_ratio` (0.9), `cover_tilt_limit_deg`,
    `ch4_alarm_pct_lel`, `h2s_alarm_ppm`, `battery_low_v` (the attributes).
    The unit runs on a lithium pack that drains slowly.
    """

    battery_defaults = LITHIUM_PACK
    # Five minutes resolve the pipe's lag and a storm cell passing over.
    default_substep = timedelta(minutes=5)

    def __init__(self, device: SimDevice, params: Mapping[str, Any], rng: random.Random) -> None:
        super().__init__(device, params, rng)
        p = self.param
        self.diameter_m = p("pipe_diameter_mm", 800.0) / 1000
        if self.diameter_m <= 0:
            raise self._bad("pipe_diameter_mm", "must be above zero")
        self.depth_m = max(p("manhole_depth_m", 3.5), self.diameter_m)
        kind = str(self.params.get("pipe_kind", "storm"))
        self._diurnal = kind != "storm"
        base_fill = (
            p("storm_base_fill_ratio", 0.05) if kind == "storm" else p("base_fill_ratio", 0.3)
        )
        self._dry_load = _part_full_load(min(max(base_fill, 0.0), 0.8))
        self._rain_share = p("sewage_rain_share", 0.2) if kind == "sewage" else 1.0
        self.rain_capacity_mm_h = p("rain_capacity_mm_h", 40.0) * (
            (self.diameter_m / 0.8) ** p("capacity_exponent", 0.5)
        )
        self._lag_h = max(self.duration("lag", timedelta(minutes=15)) / HOUR, 1e-6)
        slope = p("pipe_slope", 0.003)
        self.full_flow_m3s = 0.312 / p("manning_n", 0.013) * self.diameter_m ** (8 / 3) * slope**0.5
        self._surcharge_gain = max(p("surcharge_flow_gain", 0.5), 0.0)
        self._surcharge_head_m = p("surcharge_head_m", 2.0)
        self._road_max_m = p("road_water_max_m", 0.5)
        self._road_scale_m = max(p("road_water_scale_m", 1.0), 1e-3)
        self._road_rise_h = max(self.duration("road_rise", timedelta(minutes=5)) / HOUR, 1e-6)
        self._road_drain_h = max(self.duration("road_drain", timedelta(minutes=30)) / HOUR, 1e-6)
        self._cover_lift_m = p("cover_lift_head_m", math.inf)
        self._cover_reseat = self.duration("cover_reseat", timedelta(hours=2))
        self._capacity_loss = min(max(p("blockage_capacity_loss", 0.9), 0.0), 0.95)
        self._blockage_per_day = p("blockage_probability", 0.01)
        self._blockage_duration = self.duration("blockage_duration", DAY)
        self._gas_per_day = p("gas_probability", 0.0)
        self._high_fill = p("high_water_fill_ratio", 0.9)
        self._tilt_limit = p("cover_tilt_limit_deg", 15.0)
        self._ch4_alarm = p("ch4_alarm_pct_lel", 25.0)
        self._h2s_alarm = p("h2s_alarm_ppm", 10.0)
        # Sewage gives off more gas than rain water does.
        self._ch4_base = (
            self.rng.uniform(0.0, 1.5) if kind == "storm" else self.rng.uniform(0.5, 4.0)
        )
        self._h2s_base = (
            self.rng.uniform(0.0, 0.5) if kind == "storm" else self.rng.uniform(0.5, 3.0)
        )
        self._seat_tilt = self.rng.uniform(0.3, 2.0)
        self._sensor_offsets = (self.rng.gauss(0.0, 0.005), self.rng.gauss(0.0, 0.005))
        self._rain_load: float | None = None
        self._road_m = 0.0
        self._blockage: _Episode | None = None
        self._gas: _Episode | None = None
        self._cover_lifted_until: datetime | None = None
        self._open_tilt: float | None = None

    def _head(self, load: float) -> float:
        """Water depth above the invert for a load (share of full-bore flow)."""
        if load <= 1:
            return self.diameter_m * _fill_for_load(load)
        return self.diameter_m + self._surcharge_head_m * (load - 1)

    def _dry_weather(self, hour: float) -> float:
        if not self._diurnal:
            return self._dry_load
        # Lowest before dawn, highest in the afternoon, with morning and evening peaks.
        day = 2 * math.pi * hour / 24
        factor = (
            1
            - 0.3 * math.cos(day - 2 * math.pi * 4 / 24)
            + 0.1 * math.cos(2 * day - 2 * math.pi * 17 / 24)
        )
        return self._dry_load * factor

    def _follow_rain(self, world: World, start: datetime, end: datetime) -> None:
        lat, lon = self.device.lat, self.device.lon
        for mid, dt in self._substeps(start, end):
            target = (
                self._rain_share * world.rain_intensity(lat, lon, mid) / self.rain_capacity_mm_h
            )
            if self._rain_load is None:
                self._rain_load = target
            else:
                self._rain_load += (target - self._rain_load) * (1 - math.exp(-dt / self._lag_h))
        if self._rain_load is None:
            self._rain_load = 0.0

    def _own_episodes(self, end: datetime, dt_days: float) -> None:
        if self._blockage is not None and end >= self._blockage.until:
            self._blockage = None
        if self._blockage is None and self.rng.random() < self._blockage_per_day * dt_days:
            lasts = self._blockage_duration * self.rng.uniform(0.5, 1.5)
            self._blockage = _Episode(end + lasts, severity=self.rng.uniform(0.3, 0.9))
        if self._gas is not None and end >= self._gas.until:
            self._gas = None
        if self._gas is None and self.rng.random() < self._gas_per_day * dt_days:
            lasts = timedelta(hours=self.rng.uniform(1.0, 4.0))
            self._gas = _Episode(
                end + lasts, ch4_pct_lel=self.rng.uniform(15, 60), h2s_ppm=self.rng.uniform(5, 40)
            )

    def _severity(self, world: World, t: datetime) -> float:
        severities = [i.param("severity", 0.7) for i in self._incidents(world, "blockage", t)]
        if self._blockage is not None:
            severities.append(self._blockage.severity)
        return min(max([0.0, *severities]), 1.0)

    def _gases(self, world: World, t: datetime) -> tuple[float, float]:
        ch4 = self._ch4_base * math.exp(self.rng.gauss(0.0, 0.2))
        h2s = self._h2s_base * math.exp(self.rng.gauss(0.0, 0.2))
        for incident in self._incidents(world, "gas", t):
            build = min(1.0, (t - incident.start) / timedelta(minutes=30))
            ch4 += build * incident.param("ch4_pct_lel", 40.0)
            h2s += build * incident.param("h2s_ppm", 20.0)
        if self._gas is not None:
            ch4 += self._gas.ch4_pct_lel
            h2s += self._gas.h2s_ppm
        return ch4, h2s

    def _cover(self, world: World, t: datetime, over_road_m: float) -> tuple[bool, float]:
        if over_road_m > self._cover_lift_m:
            self._cover_lifted_until = t + self._cover_reseat
        lifted = self._cover_lifted_until is not None and t < self._cover_lifted_until
        opened = self._incidents(world, "cover_open", t)
        if opened or lifted:
            if self._open_tilt is None:
                default = self.rng.uniform(30.0, 90.0)
                self._open_tilt = opened[0].param("tilt_deg", default) if opened else default
            return True, self._open_tilt
        self._open_tilt = None
        tilted = self._incidents(world, "cover_tilted", t)
        if tilted:
            return False, tilted[0].param("tilt_deg", 25.0) + abs(self.rng.gauss(0.0, 0.3))
        return False, self._seat_tilt + abs(self.rng.gauss(0.0, 0.1))

    def _hydraulics(self, world: World, t: datetime, dt_h: float) -> _Hydraulics:
        assert self._rain_load is not None
        inflow = self._dry_weather(world.local_hour(t)) + self._rain_load
        capacity = 1 - self._capacity_loss * self._severity(world, t)
        head = self._head(inflow / capacity)
        over_road = head - self.depth_m
        ponding = 0.0
        if over_road > 0:
            ponding = self._road_max_m * (1 - math.exp(-over_road / self._road_scale_m))
        tau = self._road_rise_h if ponding > self._road_m else self._road_drain_h
        self._road_m += (ponding - self._road_m) * (1 - math.exp(-dt_h / tau))
        level = self.depth_m + self._road_m if over_road > 0 else head
        above_crown = max(head - self.diameter_m, 0.0) / (self.depth_m - self.diameter_m + 1e-3)
        passed = min(inflow, capacity * (1 + self._surcharge_gain * min(above_crown, 1.0)))
        return _Hydraulics(
            level_m=level,
            # All the inflow passes a partial blockage in the end; only the reach above it
            # backs up.
            downstream_m=min(self._head(inflow), level),
            flow_m3s=passed * self.full_flow_m3s,
            over_road_m=over_road,
            road_m=self._road_m if self._road_m >= 0.005 else 0.0,
        )

    def step(self, t: datetime, world: World) -> list[Emission]:
        start, end = self._span(t)
        dt_h = (end - start) / HOUR
        self._follow_rain(world, start, end)
        self._own_episodes(end, dt_h / 24)
        water = self._hydraulics(world, end, dt_h)
        cover_open, tilt = self._cover(world, end, water.over_road_m)
        ch4, h2s = self._gases(world, end)
        volts = self._battery_v(dt_h, world.local_hour(end), 0.0)
        level = max(0.0, water.level_m + self.rng.gauss(0.0, 0.003))
        fill = level / self.diameter_m
        up_offset, down_offset = self._sensor_offsets
        reading = self._telemetry(
            end,
            {
                "level_m": level,
                "fill_ratio": fill,
                "flow_m3s": water.flow_m3s * math.exp(self.rng.gauss(0.0, 0.02)),
                "upstream_level_m": level + up_offset + self.rng.gauss(0.0, 0.003),
                "downstream_level_m": water.downstream_m + down_offset + self.rng.gauss(0.0, 0.003),
                "road_water_m": water.road_m,
                "cover_tilt_deg": round(tilt, 1),
                "cover_open": cover_open,
                "ch4_pct_lel": round(ch4, 1),
                "h2s_ppm": round(h2s, 1),
                "battery_v": volts,
                # A flooded manhole drowns the antenna.
                "rssi_dbm": self._rssi(penalty_db=20.0 if water.road_m > 0 else 0.0),
            },
        )
        events: list[Emission] = []
        if self._alarm("water_level_high", fill >= self._high_fill, fill < self._high_fill - 0.1):
            events += self._event(
                end, "water_level_high", fill_ratio=round(fill, 3), threshold=self._high_fill
            )
        if self._alarm("cover_opened", cover_open, not cover_open):
            events += self._event(end, "cover_opened", tilt_deg=round(tilt, 1))
        tilted = not cover_open and tilt > self._tilt_limit
        if self._alarm("cover_tilted", tilted, tilt <= self._tilt_limit):
            events += self._event(
                end, "cover_tilted", tilt_deg=round(tilt, 1), limit_deg=self._tilt_limit
            )
        gas_high = ch4 >= self._ch4_alarm or h2s >= self._h2s_alarm
        gas_clear = ch4 < 0.8 * self._ch4_alarm and h2s < 0.8 * self._h2s_alarm
        if self._alarm("gas_alarm", gas_high, gas_clear):
            events += self._event(
                end, "gas_alarm", ch4_pct_lel=round(ch4, 1), h2s_ppm=round(h2s, 1)
            )
        events += self._incident_events(world, end, ("vibration", "sensor_fault"))
        events += self._battery_events(end, volts)
        return [reading, *events]
