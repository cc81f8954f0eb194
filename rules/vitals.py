"""City vital signs: a level and its indicators per scope (district or city) and domain.

Pure over the rule engine's state at an instant `at`:

- the **level** of a domain in a scope is the highest level among the FIRING alerts
  of that domain's rules in that scope (NORMAL when none fires). Device alerts count
  in their device's district, district area alerts in theirs, and the city takes
  every alert of the domain, city-wide area alerts included — so the city's level
  is the maximum over its districts and its city-wide alerts;
- the **indicators** are the values behind it, read from the devices of the scope:
  for example the highest water level as a share of its gauge's warning level, the
  highest AQI and its primary pollutant, the elevators in fault, the share of
  devices online. An indicator is left out where the scope has no device to give it.

`docs/vital-signs.md` explains every level and indicator. The shell recomputes the
signs on every alert transition and at a fixed interval, stores those that
`changed` in `vital_signs`, and publishes each scope retained as `to_payload` at
`topic(root, scope)`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from alerts.model import ConditionState, Level
from devices.profile import DeviceProfile
from rules.aqi import DISPLAY_NAMES, POLLUTANTS, AQIError, hourly_aqi
from rules.config import Rule
from rules.engine import AlertState, DeviceState, Engine

CITY = "city"
"""The scope of the whole city (a district must not be named so)."""

DOMAINS: tuple[str, ...] = ("flood", "drainage", "air", "elevators", "noise", "device_health")
"""Vital-sign domains, in the order they are shown."""

RULE_DOMAINS: Mapping[str, str] = {
    "hydrology": "flood",
    "meteorology": "flood",
    "flood": "flood",
    "drainage": "drainage",
    "air": "air",
    "elevator": "elevators",
    "elevators": "elevators",
    "noise": "noise",
    "device_health": "device_health",
}
"""A rule's `domain` → the vital-sign domain its alerts count in (others count in none)."""

ONLINE_INTERVALS = 3
"""A device is online when heard from within this many of its profile's reporting
intervals before `at` — the same multiple as the `device_silent` rule."""

NOISE_WINDOW_S = 15 * 60
"""Noise monitors are compared with their limit on the 15-minute mean LAeq, as the rules do."""

TRAPPED_EVENT = "trapped_passengers"

METRICS: frozenset[str] = frozenset(
    {"level_m", "rain_mm", "rain_3h", "fill_ratio", "road_water_m", "aqi", *POLLUTANTS}
    | {"fault_code", "state", "laeq_db"}
)
"""The device values vital signs are computed from (latest values and kept windows):
a rule process must be handed these, whatever the rules read."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class VitalSign:
    """One domain of one scope at one instant."""

    scope: str
    """A district, or `city`."""
    domain: str
    level: Level
    indicators: dict[str, Any]
    """JSON-able values behind the level (numbers, strings, lists of strings)."""
    at: datetime

    @property
    def key(self) -> tuple[str, str]:
        return (self.scope, self.domain)


# -- ordering ------------------------------------------------------------------------------


def scope_sort_key(scope: str) -> tuple[int, tuple[tuple[int, int | str], ...]]:
    """City first, then districts in natural order ("2" before "10")."""
    if scope == CITY:
        return (0, ())
    parts = tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"(\d+)", scope) if p)
    return (1, parts)


def domain_sort_key(domain: str) -> tuple[int, str]:
    return (DOMAINS.index(domain) if domain in DOMAINS else len(DOMAINS), domain)


def topic(root: str, scope: str) -> str:
    """The MQTT topic a scope's vital signs are published on, retained."""
    return f"{root}/vitals/{scope}"


# -- small helpers ---------------------------------------------------------------------------


def _seconds(t: datetime) -> float:
    return (t - _EPOCH).total_seconds()


def _from_seconds(t: float) -> datetime:
    return _EPOCH + timedelta(seconds=t)


def _round(value: float, digits: int) -> float:
    return round(float(value), digits) + 0.0  # + 0.0 turns -0.0 into 0.0


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _latest(state: DeviceState, metric: str) -> float | None:
    latest = state.latest.get(metric)
    return None if latest is None else latest[1]


def _mean(state: DeviceState, metric: str, lo: float, hi: float) -> float | None:
    """Mean of the kept history of `metric` in (lo, hi], as the rule engine's windows."""
    series = state.history.get(metric)
    values = series.values(lo, hi) if series is not None else ()
    return sum(values) / len(values) if values else None


def _highest(
    states: Iterable[DeviceState], value: Callable[[DeviceState], float | None]
) -> tuple[DeviceState, float] | None:
    """The device with the highest value (the lowest id on a tie), and that value."""
    best: tuple[DeviceState, float] | None = None
    for state in states:
        v = value(state)
        if v is not None and math.isfinite(v) and (best is None or v > best[1]):
            best = (state, v)
    return best


# -- what kind of device ----------------------------------------------------------------------


WATER_GAUGE = "water_gauge"
RAIN_GAUGE = "rain_gauge"


def _kinds(profile: DeviceProfile) -> tuple[str, ...]:
    """What a device of this profile counts as: its profile's domain, plus water gauge
    (domain hydrology with `level_m`) and rain gauge (any profile with `rain_mm`)."""
    kinds = [profile.domain]
    if profile.domain == "hydrology" and "level_m" in profile.metrics:
        kinds.append(WATER_GAUGE)
    if "rain_mm" in profile.metrics:
        kinds.append(RAIN_GAUGE)
    return tuple(kinds)


# -- indicators per domain ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Scope:
    """What one scope's indicators are computed from."""

    devices: Sequence[DeviceState]
    """Devices of the scope, by id."""
    kinds: Mapping[str, Sequence[DeviceState]]
    """The same by what they count as (see `_kinds`), by id."""
    firing: Sequence[tuple[AlertState, Rule]]
    """Firing alerts of the scope whose rules count in the domain being computed."""
    at: float
    local: str
    """`at` as local time HH:MM in the engine's time zone."""


def _flood(s: _Scope, out: dict[str, Any]) -> None:
    gauges = s.kinds.get(WATER_GAUGE, [])
    if gauges:

        def ratio(d: DeviceState) -> float | None:
            level = _latest(d, "level_m")
            warning = _number(d.info.attributes.get("warning_level_m"))
            return None if level is None or warning is None or warning <= 0 else level / warning

        out["water_gauges"] = len(gauges)
        top = _highest(gauges, ratio)
        if top is not None:
            state, share = top
            out["water_level_ratio"] = _round(share, 3)
            out["water_level_device"] = state.info.device_id
            out["water_level_m"] = _round(_latest(state, "level_m") or 0.0, 3)
            out["warning_level_m"] = _number(state.info.attributes.get("warning_level_m"))
        out["gauges_above_warning"] = sum(
            1
            for d in gauges
            if (level := _latest(d, "level_m")) is not None
            and (warning := _number(d.info.attributes.get("warning_level_m"))) is not None
            and level >= warning
        )
    rain = s.kinds.get(RAIN_GAUGE, [])
    if rain:

        def rain_3h(d: DeviceState) -> float | None:
            series = d.history.get("rain_mm")
            kept = series.values(s.at - 3 * 3600, s.at) if series is not None else ()
            if kept:
                return sum(kept)
            return _latest(d, "rain_3h")

        out["rain_gauges"] = len(rain)
        top = _highest(rain, rain_3h)
        if top is not None:
            out["rain_3h_max_mm"] = _round(top[1], 1)
            out["rain_3h_device"] = top[0].info.device_id


def _drainage(s: _Scope, out: dict[str, Any]) -> None:
    pipes = s.kinds.get("drainage", [])
    if not pipes:
        return
    out["pipes"] = len(pipes)
    top = _highest(pipes, lambda d: _latest(d, "fill_ratio"))
    if top is not None:
        out["fill_ratio_max"] = _round(top[1], 3)
        out["fill_ratio_device"] = top[0].info.device_id
    out["pipes_surcharged"] = sum(
        1 for d in pipes if (r := _latest(d, "fill_ratio")) is not None and r > 1.0
    )
    road = _highest(pipes, lambda d: _latest(d, "road_water_m"))
    if road is not None:
        out["road_water_max_m"] = _round(road[1], 3)
        out["road_water_device"] = road[0].info.device_id


def _primary_pollutants(state: DeviceState) -> list[str] | None:
    """The primary pollutant(s) behind the station's latest AQI, by HJ 633, or None."""
    aqi = state.latest.get("aqi")
    if aqi is None:
        return None
    ts = aqi[0]
    hourly: dict[str, float] = {}
    for p in POLLUTANTS:
        v = _mean(state, p, ts - 3600, ts)
        if v is None:
            v = _latest(state, p)
        if v is not None:
            hourly[p] = v
    pm_24h = {p: v for p in ("pm2_5", "pm10") if (v := _mean(state, p, ts - 86400, ts)) is not None}
    if not hourly:
        return None
    try:
        result = hourly_aqi(hourly, _from_seconds(ts), pm_24h=pm_24h or None)
    except (AQIError, ValueError):
        return None
    return [DISPLAY_NAMES[p] for p in result.primary]


def _air(s: _Scope, out: dict[str, Any]) -> None:
    stations = s.kinds.get("air", [])
    if not stations:
        return
    out["stations"] = len(stations)
    out["stations_reporting"] = sum(1 for d in stations if _online(d, s.at))
    top = _highest(stations, lambda d: _latest(d, "aqi"))
    if top is not None:
        state, aqi = top
        out["aqi_max"] = round(aqi)
        out["aqi_station"] = state.info.device_id
        primary = _primary_pollutants(state)
        if primary is not None:
            out["primary_pollutants"] = primary


def _is_trapped(st: AlertState, rule: Rule) -> bool:
    return (
        TRAPPED_EVENT in rule.spec.events
        or st.values.get("event") == TRAPPED_EVENT
        or "trapped" in rule.name
    )


def _in_fault(d: DeviceState, alerted: set[str]) -> bool:
    if d.info.device_id in alerted:
        return True
    code = _latest(d, "fault_code")
    if code is not None and code > 0:
        return True
    state_spec = d.info.profile.metrics.get("state")
    fault = (state_spec.values or {}).get("fault") if state_spec is not None else None
    return fault is not None and _latest(d, "state") == fault


def _elevators(s: _Scope, out: dict[str, Any]) -> None:
    cars = s.kinds.get("elevator", [])
    if not cars:
        return
    alerted = {st.device_id for st, _ in s.firing if st.device_id is not None}
    out["elevators"] = len(cars)
    out["elevators_in_fault"] = sum(1 for d in cars if _in_fault(d, alerted))
    out["trapped_alerts"] = sum(1 for st, rule in s.firing if _is_trapped(st, rule))


def _noise_limit(d: DeviceState, local: str) -> float | None:
    """The monitor's limit now: day_limit_db from day_start (06:00) to night_start
    (22:00) local time, night_limit_db otherwise."""
    attrs = d.info.attributes
    day_start = str(attrs.get("day_start") or "06:00")
    night_start = str(attrs.get("night_start") or "22:00")
    if day_start <= night_start:
        day = day_start <= local < night_start
    else:
        day = local >= day_start or local < night_start
    return _number(attrs.get("day_limit_db" if day else "night_limit_db"))


def _noise(s: _Scope, out: dict[str, Any]) -> None:
    monitors = s.kinds.get("noise", [])
    if not monitors:
        return

    def laeq(d: DeviceState) -> float | None:
        mean = _mean(d, "laeq_db", s.at - NOISE_WINDOW_S, s.at)
        return mean if mean is not None else _latest(d, "laeq_db")

    out["monitors"] = len(monitors)
    out["monitors_over_limit"] = sum(
        1
        for d in monitors
        if (level := laeq(d)) is not None
        and (limit := _noise_limit(d, s.local)) is not None
        and level > limit
    )
    top = _highest(monitors, laeq)
    if top is not None:
        out["laeq_max_db"] = _round(top[1], 1)
        out["laeq_device"] = top[0].info.device_id


def _online(d: DeviceState, at: float) -> bool:
    if d.last_seen is None:
        return False
    interval = d.info.profile.reporting_interval.total_seconds()
    return at - d.last_seen < ONLINE_INTERVALS * interval


def _device_health(s: _Scope, out: dict[str, Any]) -> None:
    if not s.devices:
        return
    online = sum(1 for d in s.devices if _online(d, s.at))
    out["devices"] = len(s.devices)
    out["devices_online"] = online
    out["online_share"] = _round(online / len(s.devices), 3)
    out["devices_silent"] = len(s.devices) - online


_INDICATORS: Mapping[str, Callable[[_Scope, dict[str, Any]], None]] = {
    "flood": _flood,
    "drainage": _drainage,
    "air": _air,
    "elevators": _elevators,
    "noise": _noise,
    "device_health": _device_health,
}


# -- the vital signs ----------------------------------------------------------------------------


def compute_vitals(engine: Engine, at: datetime) -> list[VitalSign]:
    """Every domain of the city and of each district of the registry, at `at`.

    Ordered city first, then districts in natural order; domains in `DOMAINS` order.
    """
    return list(iter_vitals(engine, at))


def iter_vitals(engine: Engine, at: datetime) -> Iterator[VitalSign]:
    """`compute_vitals` one sign at a time, each worked out when it is asked for.

    Walking every device of a city takes tens of milliseconds; the rule runtime
    evaluates waiting readings between signs, so alerts never wait for a whole
    recomputation. Which alerts fire, and which devices there are, is taken when
    the first sign is asked for; levels and device values are read as each sign is.
    """
    if at.tzinfo is None:
        raise ValueError("compute_vitals needs a timezone-aware `at`")
    t = _seconds(at)
    local = at.astimezone(engine.tz).strftime("%H:%M")
    rules = engine.rules.by_name()
    # Firing alerts by vital-sign domain, with their rules.
    firing: dict[str, list[tuple[AlertState, Rule]]] = {d: [] for d in DOMAINS}
    for st in sorted(engine.alerts.values(), key=lambda a: a.fingerprint):
        rule = rules.get(st.rule)
        if st.state is not ConditionState.FIRING or rule is None:
            continue
        domain = RULE_DOMAINS.get(rule.spec.domain)
        if domain is not None:
            firing[domain].append((st, rule))
    devices = sorted(engine.devices.values(), key=lambda d: d.info.device_id)
    # Grouped once: a city has tens of thousands of devices and a few dozen districts.
    members_of: dict[str, list[DeviceState]] = {CITY: devices}
    kinds_of: dict[str, dict[str, list[DeviceState]]] = {CITY: {}}
    kinds_by_profile: dict[str, tuple[str, ...]] = {}
    for d in devices:
        profile = d.info.profile
        kinds = kinds_by_profile.get(profile.name)
        if kinds is None:
            kinds = kinds_by_profile[profile.name] = _kinds(profile)
        scopes = [CITY]
        if d.info.district != CITY:
            members_of.setdefault(d.info.district, []).append(d)
            scopes.append(d.info.district)
        for scope in scopes:
            of_scope = kinds_of.setdefault(scope, {})
            for kind in kinds:
                of_scope.setdefault(kind, []).append(d)
    firing_in: dict[tuple[str, str], list[tuple[AlertState, Rule]]] = {}
    for domain, alerts in firing.items():
        firing_in[CITY, domain] = alerts
        for st, rule in alerts:
            if st.district is not None and st.district != CITY:
                firing_in.setdefault((st.district, domain), []).append((st, rule))
    districts = {scope for scope, _ in firing_in} | set(members_of)
    districts.discard(CITY)
    for scope in [CITY, *sorted(districts, key=scope_sort_key)]:
        members = members_of.get(scope, [])
        for domain in DOMAINS:
            alerts = firing_in.get((scope, domain), [])
            level = max((st.level for st, _ in alerts), default=Level.NORMAL)
            indicators: dict[str, Any] = {"alerts_firing": len(alerts)}
            _INDICATORS[domain](
                _Scope(members, kinds_of.get(scope, {}), alerts, t, local), indicators
            )
            yield VitalSign(scope, domain, level, indicators, at)


def changed(
    previous: Mapping[tuple[str, str], VitalSign], current: Iterable[VitalSign]
) -> list[VitalSign]:
    """The signs that are new or whose level or indicators differ from `previous`
    (keyed by (scope, domain)); the time alone is not a change."""
    out = []
    for sign in current:
        old = previous.get(sign.key)
        if old is None or old.level != sign.level or old.indicators != sign.indicators:
            out.append(sign)
    return out


def by_scope(signs: Iterable[VitalSign]) -> dict[str, list[VitalSign]]:
    """Signs grouped by scope, city first, each scope's domains in order."""
    groups: dict[str, list[VitalSign]] = {}
    for sign in sorted(signs, key=lambda s: (scope_sort_key(s.scope), domain_sort_key(s.domain))):
        groups.setdefault(sign.scope, []).append(sign)
    return groups


def payload_document(signs_of_a_scope: Iterable[VitalSign]) -> dict[str, Any]:
    """The JSON document of one scope: its overall level and every domain's."""
    signs = sorted(signs_of_a_scope, key=lambda s: domain_sort_key(s.domain))
    if not signs:
        raise ValueError("no vital signs to publish")
    scopes = {s.scope for s in signs}
    if len(scopes) != 1:
        raise ValueError(f"vital signs of one scope expected, got {', '.join(sorted(scopes))}")
    return {
        "scope": signs[0].scope,
        "at": max(s.at for s in signs).isoformat(),
        "level": max(s.level for s in signs).label,
        "domains": {s.domain: {"level": s.level.label, "indicators": s.indicators} for s in signs},
    }


def to_payload(signs_of_a_scope: Iterable[VitalSign]) -> bytes:
    """The retained MQTT payload of one scope (UTF-8 JSON), published at `topic(root, scope)`:
    {"scope", "at", "level" (highest over domains), "domains": {domain: {"level",
    "indicators"}}}."""
    document = payload_document(signs_of_a_scope)
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode(
        "utf-8"
    )
