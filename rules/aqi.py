"""China air quality index: IAQI per pollutant, AQI, primary pollutant, level and colour.

HJ 633-2012 applies to observations before 2026-03-01 00:00 China time (+08:00) and
HJ 633-2026 from then on; the observation time is always an argument. The breakpoint
table and the special cases are those of ../shared/domain/REFERENCE.md ("Air quality
index (China)"), copied by hand — never from a package (a common one has a wrong
SO2 24h column).

Arithmetic is exact: a float concentration is taken at its shortest decimal spelling
(35.1 means 35.1, not the binary value just below it) and interpolated with
fractions, so an IAQI lands exactly on a breakpoint's IAQI when the concentration
does, and rounding up never turns 100 into 101.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction
from types import MappingProxyType
from typing import Any, Final, Literal

RuleSet = Literal["2012", "2026"]
Averaging = Literal["1h", "8h", "24h"]
Kind = Literal["hourly", "daily"]

POLLUTANTS: Final = ("pm2_5", "pm10", "so2", "no2", "co", "o3")
"""Our metric names, in the order results list them."""

DISPLAY_NAMES: Final[Mapping[str, str]] = MappingProxyType(
    {"pm2_5": "PM2.5", "pm10": "PM10", "so2": "SO2", "no2": "NO2", "co": "CO", "o3": "O3"}
)
UNITS: Final[Mapping[str, str]] = MappingProxyType(
    {p: ("mg/m³" if p == "co" else "µg/m³") for p in POLLUTANTS}
)

CHINA_TIME: Final = timezone(timedelta(hours=8), "CST")
RULES_2026_FROM: Final = datetime(2026, 3, 1, tzinfo=CHINA_TIME)
"""HJ 633-2026 replaces HJ 633-2012 for observations at or after this instant."""

STANDARDS: Final[Mapping[RuleSet, str]] = MappingProxyType(
    {"2012": "HJ 633-2012", "2026": "HJ 633-2026"}
)

# REFERENCE.md's table, row for row. None is "–": no breakpoint at that IAQI.
# Columns: SO2 24h, SO2 1h, NO2 24h, NO2 1h, CO 24h, CO 1h, O3 8h, O3 1h, PM10 24h, PM2.5 24h.
_COLUMNS: Final = (
    ("so2", "24h"),
    ("so2", "1h"),
    ("no2", "24h"),
    ("no2", "1h"),
    ("co", "24h"),
    ("co", "1h"),
    ("o3", "8h"),
    ("o3", "1h"),
    ("pm10", "24h"),
    ("pm2_5", "24h"),
)
_ROWS: Final[tuple[tuple[int, tuple[int | None, ...]], ...]] = (
    (0, (0, 0, 0, 0, 0, 0, 0, 0, 0, 0)),
    (50, (50, 150, 40, 100, 2, 5, 100, 160, 50, 35)),
    (100, (150, 500, 80, 200, 4, 10, 160, 200, 150, 75)),
    (150, (475, 650, 180, 700, 14, 35, 215, 300, 250, 115)),
    (200, (800, 800, 280, 1200, 24, 60, 265, 400, 350, 150)),
    (300, (1600, None, 565, 2340, 36, 90, 800, 800, 420, 250)),
    (400, (2100, None, 750, 3090, 48, 120, None, 1000, 500, 350)),
    (500, (2620, None, 940, 3840, 60, 150, None, 1200, 600, 500)),
)
# HJ 633-2026 moves the IAQI-100 breakpoints of the particulates down.
_CHANGES_2026: Final[Mapping[tuple[str, str], Mapping[int, int]]] = MappingProxyType(
    {("pm10", "24h"): {100: 120}, ("pm2_5", "24h"): {100: 60}}
)

Breakpoints = tuple[tuple[int, int], ...]
"""(concentration, IAQI) pairs, ascending."""


def _build_tables() -> dict[RuleSet, dict[tuple[str, str], Breakpoints]]:
    tables: dict[RuleSet, dict[tuple[str, str], Breakpoints]] = {"2012": {}, "2026": {}}
    for i, column in enumerate(_COLUMNS):
        points = tuple((bp, index) for index, row in _ROWS if (bp := row[i]) is not None)
        tables["2012"][column] = points
        changes = _CHANGES_2026.get(column, {})
        tables["2026"][column] = tuple((changes.get(index, bp), index) for bp, index in points)
    return tables


BREAKPOINTS: Final = _build_tables()
"""Breakpoints by rule set, then by (pollutant, averaging)."""

# Above 800 µg/m³ these columns have no breakpoint: HJ 633-2012 does not score them
# (the caller uses SO2 24h or O3 1h), HJ 633-2026 gives them a fixed IAQI.
_ABOVE_TOP_2026: Final[Mapping[tuple[str, str], int]] = MappingProxyType(
    {("so2", "1h"): 200, ("o3", "8h"): 300}
)


class AQIError(ValueError):
    """A concentration, pollutant name, averaging or time the AQI cannot use."""


@dataclass(frozen=True, slots=True)
class AQILevel:
    level: int
    name_zh: str
    name_en: str
    colour: str
    colour_hex: str
    aqi_min: int
    aqi_max: int | None  # None: open-ended (severe)


LEVELS: Final = (
    AQILevel(1, "优", "good", "green", "#00E400", 0, 50),
    AQILevel(2, "良", "moderate", "yellow", "#FFFF00", 51, 100),
    AQILevel(3, "轻度污染", "light", "orange", "#FF7E00", 101, 150),
    AQILevel(4, "中度污染", "medium", "red", "#FF0000", 151, 200),
    AQILevel(5, "重度污染", "heavy", "purple", "#99004C", 201, 300),
    AQILevel(6, "严重污染", "severe", "maroon", "#7E0023", 301, None),
)


@dataclass(frozen=True, slots=True)
class AQIResult:
    """One hourly or daily AQI.

    `iaqi` and `averaging` cover the scored pollutants; `missing` lists those not
    given, `unscored` those given but not scorable under the rule set (HJ 633-2012's
    cases above 800 µg/m³ without the substitute value); `notes` say why, and where a
    substitute or fallback value was scored.
    """

    aqi: int
    iaqi: Mapping[str, int]
    primary: tuple[str, ...]
    level: int
    level_name_zh: str
    level_name_en: str
    colour: str
    colour_hex: str
    rules: RuleSet
    kind: Kind
    missing: tuple[str, ...]
    unscored: tuple[str, ...]
    averaging: Mapping[str, Averaging]
    notes: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values."""
        return {
            "aqi": self.aqi,
            "iaqi": dict(self.iaqi),
            "primary": list(self.primary),
            "level": self.level,
            "level_name_zh": self.level_name_zh,
            "level_name_en": self.level_name_en,
            "colour": self.colour,
            "colour_hex": self.colour_hex,
            "rules": self.rules,
            "standard": STANDARDS[self.rules],
            "kind": self.kind,
            "missing": list(self.missing),
            "unscored": list(self.unscored),
            "averaging": dict(self.averaging),
            "notes": list(self.notes),
        }


_ALIASES: Final[Mapping[str, str]] = MappingProxyType(
    {
        **{p: p for p in POLLUTANTS},
        "pm2.5": "pm2_5",
        "pm25": "pm2_5",
    }
)


def parse_pollutant(name: str) -> str:
    """Our metric name for `name`: a metric name or a display name, any case (PM2.5, pm2_5)."""
    try:
        return _ALIASES[name.strip().lower()]
    except KeyError:
        known = ", ".join(f"{DISPLAY_NAMES[p]} ({p})" for p in POLLUTANTS)
        raise AQIError(f"unknown pollutant {name!r}: use one of {known}") from None


def rules_for(at: datetime) -> RuleSet:
    """The rule set for an observation at `at` (timezone-aware)."""
    if at.tzinfo is None or at.utcoffset() is None:
        raise AQIError(f"observation time {at.isoformat()} has no UTC offset")
    return "2026" if at.astimezone(CHINA_TIME) >= RULES_2026_FROM else "2012"


def level_for(aqi: int) -> AQILevel:
    """The level band of an AQI: 0–50, 51–100, 101–150, 151–200, 201–300, above 300."""
    if aqi < 0:
        raise AQIError(f"AQI {aqi} is negative")
    for band in LEVELS:
        if band.aqi_max is None or aqi <= band.aqi_max:
            return band
    raise AssertionError("unreachable: the last level is open-ended")


def _decimal(pollutant: str, concentration: float) -> Decimal:
    if isinstance(concentration, bool) or not isinstance(concentration, numbers.Real):
        raise AQIError(f"{pollutant}: concentration {concentration!r} is not a number")
    if not math.isfinite(concentration):
        raise AQIError(f"{pollutant}: concentration {concentration!r} is not finite")
    if concentration < 0:
        raise AQIError(f"{pollutant}: concentration {concentration!r} is negative")
    if isinstance(concentration, numbers.Integral):
        return Decimal(int(concentration))
    # A float's repr is its shortest round-tripping spelling: the value the sender meant.
    # (float() first: numpy's repr of its own floats is not a number.)
    return Decimal(repr(float(concentration)))


def _rounded_2026(pollutant: str, value: Decimal) -> Decimal:
    """HJ 633-2026 rounds before scoring: CO to 0.1 mg/m³, the rest to 1 µg/m³, half up."""
    return value.quantize(Decimal("0.1") if pollutant == "co" else Decimal(1), ROUND_HALF_UP)


def iaqi(
    pollutant: str, concentration: float, *, averaging: Averaging, rules: RuleSet
) -> int | None:
    """The individual AQI of one concentration against one breakpoint column.

    `pollutant` is a metric name (pm2_5, pm10, so2, no2, co, o3); `averaging` selects
    the column (1h, 8h or 24h; PM10 and PM2.5 have only 24h). CO is in mg/m³, the
    others in µg/m³. Linear interpolation, rounded up; above the column's top
    breakpoint the IAQI is 500, except SO2 1h and O3 8h above 800, which are not
    scored under 2012 (None) and score 200 and 300 under 2026.
    """
    if rules not in BREAKPOINTS:
        raise AQIError(f"unknown rule set {rules!r}: use 2012 or 2026")
    if pollutant not in DISPLAY_NAMES:
        raise AQIError(
            f"unknown pollutant {pollutant!r}: use one of {', '.join(POLLUTANTS)}"
            " (parse_pollutant takes display names)"
        )
    column = (pollutant, averaging)
    points = BREAKPOINTS[rules].get(column)
    if points is None:
        available = sorted(a for p, a in _COLUMNS if p == pollutant)
        raise AQIError(f"{pollutant}: no {averaging!r} breakpoints; use {' or '.join(available)}")
    value = _decimal(pollutant, concentration)
    if rules == "2026":
        value = _rounded_2026(pollutant, value)
    top_bp, top_iaqi = points[-1]
    if value > top_bp:
        if column in _ABOVE_TOP_2026:
            return _ABOVE_TOP_2026[column] if rules == "2026" else None
        return 500
    c = Fraction(value)
    for (bp_lo, i_lo), (bp_hi, i_hi) in itertools.pairwise(points):
        if c <= bp_hi:
            return math.ceil(Fraction(i_hi - i_lo, bp_hi - bp_lo) * (c - bp_lo) + i_lo)
    return top_iaqi  # unreachable: value <= top_bp


def _concentrations(concentrations: Mapping[str, float]) -> dict[str, float]:
    for name, value in concentrations.items():
        if name not in DISPLAY_NAMES:
            raise AQIError(
                f"unknown pollutant {name!r}: use one of {', '.join(POLLUTANTS)}"
                " (parse_pollutant takes display names)"
            )
        _decimal(name, value)
    if not concentrations:
        raise AQIError(f"no concentrations given: give at least one of {', '.join(POLLUTANTS)}")
    return dict(concentrations)


class _Scorer:
    """Collects IAQIs, their columns and notes for one result."""

    def __init__(self, rules: RuleSet) -> None:
        self.rules = rules
        self.iaqi: dict[str, int] = {}
        self.averaging: dict[str, Averaging] = {}
        self.unscored: list[str] = []
        self.notes: list[str] = []

    def score(self, pollutant: str, value: float, averaging: Averaging) -> int | None:
        result = iaqi(pollutant, value, averaging=averaging, rules=self.rules)
        if result is not None:
            self.iaqi[pollutant] = result
            self.averaging[pollutant] = averaging
        return result

    def result(self, kind: Kind, given: set[str]) -> AQIResult:
        if not self.iaqi:
            raise AQIError(
                "no pollutant could be scored: " + "; ".join(self.notes or ["none given"])
            )
        top = max(self.iaqi.values())
        aqi = max(top, 1) if self.rules == "2026" else top  # HJ 633-2026: AQI 1–500
        primary = tuple(p for p in POLLUTANTS if self.iaqi.get(p) == top) if aqi > 50 else ()
        band = level_for(aqi)
        return AQIResult(
            aqi=aqi,
            iaqi=MappingProxyType({p: self.iaqi[p] for p in POLLUTANTS if p in self.iaqi}),
            primary=primary,
            level=band.level,
            level_name_zh=band.name_zh,
            level_name_en=band.name_en,
            colour=band.colour,
            colour_hex=band.colour_hex,
            rules=self.rules,
            kind=kind,
            missing=tuple(p for p in POLLUTANTS if p not in given),
            unscored=tuple(p for p in POLLUTANTS if p in self.unscored),
            averaging=MappingProxyType(
                {p: self.averaging[p] for p in POLLUTANTS if p in self.averaging}
            ),
            notes=tuple(self.notes),
        )


def hourly_aqi(
    concentrations: Mapping[str, float],
    at: datetime,
    *,
    pm_24h: Mapping[str, float] | None = None,
    so2_24h: float | None = None,
) -> AQIResult:
    """The hourly AQI of 1-hour means observed at `at` (timezone-aware).

    `concentrations` maps metric names to 1-hour means; any may be missing. Under
    HJ 633-2012, PM10 and PM2.5 are scored by their 24-hour moving means from
    `pm_24h` (falling back to the 1-hour value, with a note, when absent), and SO2
    above 800 µg/m³ by `so2_24h` against the 24h breakpoints (not scored without it).
    Under HJ 633-2026, PM10 and PM2.5 1-hour means are scored against the 24h
    breakpoints (`pm_24h` is not used) and SO2 above 800 scores 200.
    """
    rules = rules_for(at)
    values = _concentrations(concentrations)
    moving = dict(pm_24h or {})
    for name, value in moving.items():
        if name not in ("pm2_5", "pm10"):
            raise AQIError(f"pm_24h: {name!r} is not a particulate; use pm2_5 or pm10")
        _decimal(f"{name} 24h moving mean", value)
    if so2_24h is not None:
        _decimal("so2 24h mean", so2_24h)

    scorer = _Scorer(rules)
    given = set(values)
    for pollutant in POLLUTANTS:
        if pollutant in ("pm2_5", "pm10"):
            name = DISPLAY_NAMES[pollutant]
            if rules == "2026":
                if pollutant in values:
                    scorer.score(pollutant, values[pollutant], "24h")
                if pollutant in moving:
                    scorer.notes.append(
                        f"{name}: HJ 633-2026 scores the 1-hour mean; the 24-hour moving mean"
                        " was not used"
                    )
            elif pollutant in moving:
                given.add(pollutant)
                scorer.score(pollutant, moving[pollutant], "24h")
            elif pollutant in values:
                scorer.score(pollutant, values[pollutant], "24h")
                scorer.notes.append(
                    f"{name}: no 24-hour moving mean given; its 1-hour mean was scored against"
                    " the 24h breakpoints"
                )
        elif pollutant in values and scorer.score(pollutant, values[pollutant], "1h") is None:
            # Only SO2 1h above 800 under HJ 633-2012 lands here.
            value = values[pollutant]
            if so2_24h is not None:
                scorer.score(pollutant, so2_24h, "24h")
                scorer.notes.append(
                    f"SO2: 1-hour mean {value:g} µg/m³ is above 800, not scored under"
                    f" HJ 633-2012; its 24-hour mean {so2_24h:g} was scored instead"
                )
            else:
                scorer.unscored.append(pollutant)
                scorer.notes.append(
                    f"SO2: 1-hour mean {value:g} µg/m³ is above 800, not scored under"
                    " HJ 633-2012, and no 24-hour mean was given"
                )
    return scorer.result("hourly", given)


def daily_aqi(
    concentrations: Mapping[str, float],
    at: datetime,
    *,
    o3_1h_max: float | None = None,
) -> AQIResult:
    """The daily AQI of the day containing `at` (timezone-aware; the day in China time).

    `concentrations` maps metric names to 24-hour means, except o3: the day's maximum
    8-hour moving mean. Under HJ 633-2012, O3 8h above 800 µg/m³ is scored by
    `o3_1h_max` (the day's maximum 1-hour mean) against the 1h breakpoints, and is not
    scored without it; under HJ 633-2026 it scores 300.
    """
    rules = rules_for(at)
    values = _concentrations(concentrations)
    if o3_1h_max is not None:
        _decimal("o3 daily maximum 1-hour mean", o3_1h_max)

    scorer = _Scorer(rules)
    for pollutant in POLLUTANTS:
        if pollutant not in values:
            continue
        averaging: Averaging = "8h" if pollutant == "o3" else "24h"
        if scorer.score(pollutant, values[pollutant], averaging) is not None:
            continue
        # Only O3 8h above 800 under HJ 633-2012 lands here.
        value = values[pollutant]
        if o3_1h_max is not None:
            scorer.score(pollutant, o3_1h_max, "1h")
            scorer.notes.append(
                f"O3: maximum 8-hour mean {value:g} µg/m³ is above 800, not scored under"
                f" HJ 633-2012; the maximum 1-hour mean {o3_1h_max:g} was scored instead"
            )
        else:
            scorer.unscored.append(pollutant)
            scorer.notes.append(
                f"O3: maximum 8-hour mean {value:g} µg/m³ is above 800, not scored under"
                " HJ 633-2012, and no maximum 1-hour mean was given"
            )
    return scorer.result("daily", set(values))


# -- the hourly AQI alone, fast ------------------------------------------------------------------

_TIE: Final = 1e-9
"""Float arithmetic is trusted where the exact result is farther than this from a rounding
tie (an integer for rounding up, a half for HJ 633-2026's rounding); nearer, the exact path
decides. The float error is below 1e-12 for concentrations up to the table's top."""


def _fast_iaqi(pollutant: str, c: float, averaging: Averaging, rules: RuleSet) -> int | None:
    """`iaqi(...)` for a finite, non-negative float, in float arithmetic where that is exact.

    A float compares with an integer breakpoint as its shortest decimal spelling does
    (no float lies strictly between them), so the segment found is the exact one.
    """
    points = BREAKPOINTS[rules][pollutant, averaging]
    if rules == "2026":
        # Round half up to 1 (CO: 0.1) as the decimal spelling would be: a float's
        # fraction is on the same side of one half as its spelling's.
        scale = 10 if pollutant == "co" else 1
        y = c * scale
        floor = math.floor(y)
        fraction = y - floor
        if abs(fraction - 0.5) < _TIE * max(1.0, y):
            return iaqi(pollutant, c, averaging=averaging, rules=rules)
        k = floor + 1 if fraction > 0.5 else floor
        top_bp, top_iaqi = points[-1]
        if k > top_bp * scale:
            return iaqi(pollutant, c, averaging=averaging, rules=rules)
        for (bp_lo, i_lo), (bp_hi, i_hi) in itertools.pairwise(points):
            if k <= bp_hi * scale:
                span = scale * (bp_hi - bp_lo)
                return -(-((i_hi - i_lo) * (k - scale * bp_lo) + i_lo * span) // span)
        return top_iaqi
    top_bp, top_iaqi = points[-1]
    if c > top_bp:
        return iaqi(pollutant, c, averaging=averaging, rules=rules)
    for (bp_lo, i_lo), (bp_hi, i_hi) in itertools.pairwise(points):
        if c <= bp_hi:
            x = (i_hi - i_lo) * (c - bp_lo) / (bp_hi - bp_lo) + i_lo
            up = math.ceil(x)
            if up - x < _TIE * 1000 or x - (up - 1) < _TIE * 1000:
                return iaqi(pollutant, c, averaging=averaging, rules=rules)
            return up
    return top_iaqi


def hourly_aqi_value(
    concentrations: Mapping[str, float], at: datetime, *, pm_24h: Mapping[str, float] | None = None
) -> int:
    """`hourly_aqi(concentrations, at, pm_24h=pm_24h).aqi`, for the rule engine's every reading.

    The same number, without the result's details: plain finite non-negative floats of
    known pollutants are scored in float arithmetic wherever that cannot change the
    rounding, anything else goes through `hourly_aqi`. Raises as `hourly_aqi` does.
    """
    moving = pm_24h or {}
    for values in (concentrations, moving):
        for name, value in values.items():
            if type(value) is not float or name not in DISPLAY_NAMES or not 0.0 <= value < math.inf:
                return hourly_aqi(concentrations, at, pm_24h=pm_24h).aqi
    if not concentrations or any(name not in ("pm2_5", "pm10") for name in moving):
        return hourly_aqi(concentrations, at, pm_24h=pm_24h).aqi
    rules = rules_for(at)
    top: int | None = None
    for pollutant, value in concentrations.items():
        if pollutant in ("pm2_5", "pm10"):
            if rules == "2012" and pollutant in moving:
                continue  # scored below, by its 24-hour moving mean
            score = _fast_iaqi(pollutant, value, "24h", rules)
        else:
            score = _fast_iaqi(pollutant, value, "1h", rules)
        if score is not None and (top is None or score > top):
            top = score
    if rules == "2012":
        for pollutant, value in moving.items():
            score = _fast_iaqi(pollutant, value, "24h", rules)
            if score is not None and (top is None or score > top):
                top = score
    if top is None:
        return hourly_aqi(concentrations, at, pm_24h=pm_24h).aqi  # raises: nothing scored
    return max(top, 1) if rules == "2026" else top
