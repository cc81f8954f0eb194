"""What Grafana sends to PostgreSQL: a panel's SQL with variables and macros expanded.

Grafana does it in two steps, mirrored here so the tests and the benchmark run
exactly the SQL a dashboard would:

1. the browser interpolates template variables (`$district`, `${device}`,
   `[[profile]]`) and the built-ins `$__interval` / `$__interval_ms`. The SQL
   datasources quote string values of multi-value or include-All variables
   (`'a','b'`), pass a custom "All" value through untouched, and escape quotes
   of the others;
2. the PostgreSQL datasource's backend expands its macros
   (pkg/tsdb/grafana-postgresql-datasource/macros.go): `$__time`,
   `$__timeEpoch`, `$__timeFilter`, `$__timeFrom`, `$__timeTo`,
   `$__timeGroup`, `$__timeGroupAlias`, `$__unixEpochFilter`,
   `$__unixEpochFrom`, `$__unixEpochTo`.

`$__interval` follows Grafana's `rangeutil.calculateInterval`: the range over
the panel's max data points, rounded to a "nice" interval.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

ALL = object()
"""A variable's "All" selection."""

VariableValue = str | Sequence[str] | object
"""One value, several values (multi-value), or `ALL`."""


class MacroError(ValueError):
    """A macro or variable Grafana would refuse, or one this expander does not know."""


@dataclass(frozen=True, slots=True)
class TimeRange:
    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise MacroError("time range bounds need a UTC offset")
        if self.end <= self.start:
            raise MacroError("the time range ends before it starts")

    @classmethod
    def last(cls, span: timedelta, end: datetime) -> TimeRange:
        return cls(end - span, end)


@dataclass(frozen=True, slots=True)
class Variable:
    """How a template variable is defined: what its interpolation depends on."""

    name: str
    multi: bool = True
    include_all: bool = True
    all_value: str | None = None


# Grafana's rangeutil.roundInterval: (below this many ms, use this interval).
_NICE: tuple[tuple[int, int], ...] = (
    (15, 10),
    (35, 20),
    (75, 50),
    (150, 100),
    (350, 200),
    (750, 500),
    (1_500, 1_000),
    (3_500, 2_000),
    (7_500, 5_000),
    (12_500, 10_000),
    (17_500, 15_000),
    (25_000, 20_000),
    (45_000, 30_000),
    (90_000, 60_000),
    (210_000, 120_000),
    (450_000, 300_000),
    (750_000, 600_000),
    (1_050_000, 900_000),
    (1_500_000, 1_200_000),
    (2_700_000, 1_800_000),
    (5_400_000, 3_600_000),
    (9_000_000, 7_200_000),
    (16_200_000, 10_800_000),
    (27_000_000, 21_600_000),
    (39_600_000, 43_200_000),
    (604_800_000, 86_400_000),
    (1_814_400_000, 604_800_000),
    (3_628_800_000, 2_592_000_000),
)
_YEAR_MS = 31_536_000_000


def round_interval(ms: float) -> int:
    for below, nice in _NICE:
        if ms < below:
            return nice
    return _YEAR_MS


def interval_ms(time_range: TimeRange, max_data_points: int = 1000, min_ms: int = 1) -> int:
    """`$__interval_ms` of a panel `max_data_points` wide (Grafana's default is its
    width in pixels; 1000 is a wide wall-screen panel)."""
    span = (time_range.end - time_range.start) / timedelta(milliseconds=1)
    return max(round_interval(span / max_data_points), min_ms)


def format_interval(ms: int) -> str:
    """`$__interval`: Grafana's `secondsToHms`, the largest whole unit (`5m`, `2h`, `1d`)."""
    seconds = ms / 1000
    for unit, size in (("y", 31_536_000), ("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)):
        whole = int((seconds % 31_536_000 if unit != "y" else seconds) // size)
        if unit == "y" and whole:
            return f"{whole}y"
        if unit != "y" and whole:
            return f"{whole}{unit}"
    return f"{ms}ms"


def parse_interval(text: str) -> float:
    """Seconds in a Go-style interval as Grafana's `gtime.ParseInterval` reads it."""
    m = re.fullmatch(r"\s*'?(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)'?\s*", text)
    if m is None:
        raise MacroError(f"{text!r} is not an interval (e.g. 5m, 1h, '30s')")
    size = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    return float(m.group(1)) * size[m.group(2)]


# -- step 1: template variables ---------------------------------------------------------------

_VARIABLE = re.compile(
    r"\$(\w+)|\[\[(\w+)(?::(\w+))?\]\]|\$\{(\w+)(?::(\w+))?\}",
)


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _format(variable: Variable, value: VariableValue, all_values: Sequence[str]) -> str:
    if value is ALL:
        if variable.all_value is not None:
            return variable.all_value  # a custom all value is never formatted
        value = list(all_values)
    if isinstance(value, str):
        if variable.multi or variable.include_all:
            return _quote(value)
        return value.replace("'", "''")
    if isinstance(value, Sequence):
        return ",".join(_quote(str(v)) for v in value)
    raise MacroError(f"${variable.name}: unsupported value {value!r}")


def interpolate(
    sql: str,
    variables: Mapping[str, Variable],
    values: Mapping[str, VariableValue],
    interval: int,
    time_range: TimeRange,
    all_values: Mapping[str, Sequence[str]] | None = None,
) -> str:
    """Step 1: the SQL with template variables and `$__interval(_ms)`, `$__from`,
    `$__to` replaced. Unknown `$names` that are not macros are an error here
    (Grafana would leave them, and PostgreSQL would then fail)."""
    builtins = {
        "__interval": format_interval(interval),
        "__interval_ms": str(interval),
        "__from": str(int(time_range.start.timestamp() * 1000)),
        "__to": str(int(time_range.end.timestamp() * 1000)),
    }

    def one(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(4)
        if name in builtins:
            return builtins[name]
        if name.startswith("__"):
            return m.group(0)  # a macro: step 2
        if name not in variables:
            raise MacroError(f"${name} is not a variable of the dashboard")
        if name not in values:
            raise MacroError(f"${name} has no value")
        return _format(variables[name], values[name], (all_values or {}).get(name, ()))

    return _VARIABLE.sub(one, sql)


# -- step 2: the datasource's macros ----------------------------------------------------------

_MACRO = re.compile(r"\$(__[_a-zA-Z0-9]+)\(([^)]*)\)")


def _rfc3339(t: datetime) -> str:
    text = t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    if t.microsecond:
        text += f".{t.astimezone(UTC).microsecond:06d}".rstrip("0")
    return text + "Z"


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def expand_macros(sql: str, time_range: TimeRange) -> str:
    """Step 2: the datasource's macros, as its backend expands them."""
    start, end = time_range.start, time_range.end

    def one(m: re.Match[str]) -> str:
        name = m.group(1)
        args = [a.strip() for a in m.group(2).split(",")] if m.group(2).strip() else []

        def need(n: int) -> None:
            if len(args) < n:
                raise MacroError(f"macro {name} needs {n} argument(s), got {args}")

        match name:
            case "__time":
                need(1)
                return f'{args[0]} AS "time"'
            case "__timeEpoch":
                need(1)
                return f'extract(epoch from {args[0]}) as "time"'
            case "__timeFilter":
                need(1)
                return f"{args[0]} BETWEEN '{_rfc3339(start)}' AND '{_rfc3339(end)}'"
            case "__timeFrom":
                return f"'{_rfc3339(start)}'"
            case "__timeTo":
                return f"'{_rfc3339(end)}'"
            case "__timeGroup" | "__timeGroupAlias":
                need(2)
                if len(args) > 2:
                    raise MacroError(f"{name}: fill modes are not used here")
                seconds = _number(parse_interval(args[1]))
                group = f"floor(extract(epoch from {args[0]})/{seconds})*{seconds}"
                return group + (' AS "time"' if name == "__timeGroupAlias" else "")
            case "__unixEpochFilter":
                need(1)
                return (
                    f"{args[0]} >= {int(start.timestamp())} AND {args[0]} <= {int(end.timestamp())}"
                )
            case "__unixEpochFrom":
                return str(int(start.timestamp()))
            case "__unixEpochTo":
                return str(int(end.timestamp()))
        raise MacroError(f"unknown macro ${name}")

    return _MACRO.sub(one, sql)


def render(
    sql: str,
    time_range: TimeRange,
    variables: Mapping[str, Variable] | None = None,
    values: Mapping[str, VariableValue] | None = None,
    *,
    max_data_points: int = 1000,
    all_values: Mapping[str, Sequence[str]] | None = None,
) -> str:
    """The SQL PostgreSQL receives for this range and these variable values."""
    interval = interval_ms(time_range, max_data_points)
    step1 = interpolate(sql, variables or {}, values or {}, interval, time_range, all_values)
    return expand_macros(step1, time_range)
