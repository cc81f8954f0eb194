"""Derived values the engine computes for rules and vital signs.

- rain gauges: rain totals over 1, 3, 6, 12 and 24 hours (`rain_1h` … `rain_24h`);
- air stations: the hourly China AQI (`aqi`), by the HJ 633 rules of the
  reading's date, from 1-hour means and the 24-hour moving means of PM;
- drainage: the fill ratio from pipe level and diameter when the device does
  not report one;
- per-device attributes filled from the standards: a noise monitor's GB 3096
  day and night limits from its zone, a pipe's design fill ratio from its
  diameter (GB 50014).

Pure functions of a device's recent history.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from rules.aqi import AQIError, hourly_aqi_value

RAIN_WINDOWS = {
    "rain_1h": 3600,
    "rain_3h": 3 * 3600,
    "rain_6h": 6 * 3600,
    "rain_12h": 12 * 3600,
    "rain_24h": 24 * 3600,
}
POLLUTANTS = ("pm2_5", "pm10", "so2", "no2", "co", "o3")

DERIVED_METRICS: Mapping[str, tuple[str, ...]] = {
    "rain_gauge": tuple(RAIN_WINDOWS),
    "air_quality": ("aqi",),
    "drainage": ("fill_ratio",),
}
"""Metric names a profile gains from the engine (usable in rules like measured ones)."""

HISTORY: Mapping[str, Mapping[str, float]] = {
    "rain_gauge": {"rain_mm": 24 * 3600},
    "air_quality": {
        "pm2_5": 24 * 3600,
        "pm10": 24 * 3600,
        "so2": 3600,
        "no2": 3600,
        "co": 3600,
        "o3": 3600,
    },
}
"""History each derived value needs, by profile: metric → seconds."""

INPUTS: Mapping[str, frozenset[str]] = {
    "rain_gauge": frozenset({"rain_mm"}),
    "air_quality": frozenset(POLLUTANTS),
    "drainage": frozenset({"level_m", "fill_ratio"}),
}
"""Metrics each profile's derived values are computed from (`COMPUTE` reads no others)."""

NOISE_LIMITS = {
    "0": (50, 40),
    "1": (55, 45),
    "2": (60, 50),
    "3": (65, 55),
    "4a": (70, 55),
    "4b": (70, 60),
}
"""GB 3096-2008, dB(A): zone → (day, night)."""


def design_fill_ratio(diameter_mm: float) -> float:
    """GB 50014-2021 maximum design fill ratio for a sewer of this diameter (unverified)."""
    if diameter_mm <= 300:
        return 0.55
    if diameter_mm <= 450:
        return 0.65
    if diameter_mm <= 900:
        return 0.70
    return 0.75


def enrich_attributes(profile: str, attributes: Mapping[str, Any]) -> dict[str, Any]:
    """The device's attributes with values the standards give filled in."""
    out = dict(attributes)
    if profile == "noise" and str(out.get("zone")) in NOISE_LIMITS:
        day, night = NOISE_LIMITS[str(out["zone"])]
        out.setdefault("day_limit_db", day)
        out.setdefault("night_limit_db", night)
    if profile == "drainage" and isinstance(out.get("pipe_diameter_mm"), int | float):
        out.setdefault("design_fill_ratio", design_fill_ratio(float(out["pipe_diameter_mm"])))
    return out


class History(Protocol):
    def window(self, metric: str, func: str, seconds: float) -> float | None: ...
    def value(self, metric: str) -> float | None: ...


def _rain(h: History, t: float, attributes: Mapping[str, Any], new: set[str]) -> dict[str, float]:
    if "rain_mm" not in new:
        return {}
    out = {}
    for name, seconds in RAIN_WINDOWS.items():
        total = h.window("rain_mm", "sum", seconds)
        out[name] = 0.0 if total is None else total
    return out


def _air(h: History, t: float, attributes: Mapping[str, Any], new: set[str]) -> dict[str, float]:
    if not new.intersection(POLLUTANTS):
        return {}
    hourly = {p: v for p in POLLUTANTS if (v := h.window(p, "avg", 3600)) is not None}
    pm_24h = {p: v for p in ("pm2_5", "pm10") if (v := h.window(p, "avg", 86400)) is not None}
    if not hourly:
        return {}
    try:
        aqi = hourly_aqi_value(hourly, datetime.fromtimestamp(t, UTC), pm_24h=pm_24h or None)
    except (AQIError, ValueError):
        return {}
    return {"aqi": float(aqi)}


def _fill(h: History, t: float, attributes: Mapping[str, Any], new: set[str]) -> dict[str, float]:
    level = h.value("level_m")
    diameter = attributes.get("pipe_diameter_mm")
    if "level_m" not in new or "fill_ratio" in new or level is None or not diameter:
        return {}
    ratio = level / (float(diameter) / 1000)
    return {"fill_ratio": ratio} if math.isfinite(ratio) else {}


Derive = Callable[[History, float, Mapping[str, Any], set[str]], dict[str, float]]
"""(the device's history, the instant in epoch seconds, its attributes, the metrics
the instant brought) → derived values."""

COMPUTE: Mapping[str, Derive] = {
    "rain_gauge": _rain,
    "air_quality": _air,
    "drainage": _fill,
}
