"""`cityvitals aqi`: the China AQI of a set of concentrations, for engineers."""

from __future__ import annotations

import json
import math
from datetime import UTC, date, datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from rules.aqi import (
    CHINA_TIME,
    DISPLAY_NAMES,
    POLLUTANTS,
    RULES_2026_FROM,
    STANDARDS,
    UNITS,
    AQIError,
    AQIResult,
    daily_aqi,
    hourly_aqi,
    parse_pollutant,
)

console = Console()
err = Console(stderr=True)

_USAGE_NAMES = " ".join(f"{DISPLAY_NAMES[p]}=…" for p in POLLUTANTS)


def _bad(argument: str, message: str) -> typer.Exit:
    err.print(f"[red]error:[/red] {escape(argument)}: {escape(message)}")
    return typer.Exit(2)


def _number(argument: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise _bad(argument, f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise _bad(argument, f"{text!r} is not a finite number")
    if value < 0:
        raise _bad(argument, f"{text!r} is negative")
    return value


def _time(text: str | None) -> datetime:
    if text is None:
        return datetime.now(UTC)
    try:
        # A bare date is that day in China time, the day the AQI is reported for.
        return datetime.combine(date.fromisoformat(text), datetime.min.time(), CHINA_TIME)
    except ValueError:
        pass
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise _bad("--at", f"{text!r} is not an ISO 8601 time") from None
    if at.tzinfo is None:
        raise _bad("--at", f"{text!r} has no UTC offset; write e.g. {text}+08:00")
    return at


def _concentrations(pairs: list[str]) -> dict[str, float]:
    values: dict[str, float] = {}
    spelled: dict[str, str] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name.strip():
            raise _bad(pair, f"write NAME=VALUE, e.g. PM2.5=80 (names: {_USAGE_NAMES})")
        try:
            pollutant = parse_pollutant(name)
        except AQIError as exc:
            raise _bad(pair, str(exc)) from None
        if pollutant in values:
            raise _bad(pair, f"{DISPLAY_NAMES[pollutant]} already given as {spelled[pollutant]}")
        values[pollutant] = _number(pair, text.strip())
        spelled[pollutant] = pair
    if not values:
        raise _bad("CONCENTRATIONS", f"give at least one NAME=VALUE: {_USAGE_NAMES}")
    return values


def _optional(option: str, text: str | None) -> float | None:
    return None if text is None else _number(option, text)


def _report(result: AQIResult, at: datetime, given: dict[str, float]) -> None:
    standard = STANDARDS[result.rules]
    when = "before" if result.rules == "2012" else "on or after"
    table = Table("pollutant", "scored as", "concentration", "IAQI", "", title=f"{result.kind} AQI")
    for pollutant in POLLUTANTS:
        name = DISPLAY_NAMES[pollutant]
        shown = "" if pollutant not in given else f"{given[pollutant]:g} {UNITS[pollutant]}"
        if pollutant in result.iaqi:
            mark = "[bold]primary[/bold]" if pollutant in result.primary else ""
            table.add_row(
                name, result.averaging[pollutant], shown, str(result.iaqi[pollutant]), mark
            )
        elif pollutant in result.unscored:
            table.add_row(name, "", shown, "not scored", "")
        else:
            table.add_row(name, "", "[dim]missing[/dim]", "", "")
    console.print(table)
    primary = ", ".join(DISPLAY_NAMES[p] for p in result.primary) or "none (AQI ≤ 50)"
    console.print(
        f"AQI [bold]{result.aqi}[/bold]  [on {result.colour_hex}]    [/]  "
        f"level {result.level} {result.level_name_zh} ({result.level_name_en}), "
        f"{result.colour} {result.colour_hex}"
    )
    console.print(f"primary pollutant: {primary}")
    console.print(
        f"rules: {standard} ({at.isoformat()} is {when} {RULES_2026_FROM.isoformat(' ')})",
        highlight=False,
    )
    for note in result.notes:
        console.print(f"[yellow]note:[/yellow] {escape(note)}")


def aqi(
    concentrations: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="NAME=VALUE...",
            help=f"Concentrations: {_USAGE_NAMES} (CO in mg/m³, the rest in µg/m³; "
            "names in any case, PM2.5 or pm2_5). Hourly: 1-hour means. Daily: 24-hour "
            "means, O3 as the day's maximum 8-hour mean.",
            show_default=False,
        ),
    ] = None,
    at: Annotated[
        str | None,
        typer.Option(
            help="Observation time, ISO 8601 with a UTC offset (a bare date is that day in "
            "China time); picks HJ 633-2012 before 2026-03-01 00:00 +08:00, HJ 633-2026 "
            "from then. Default: now.",
            show_default=False,
        ),
    ] = None,
    hourly: Annotated[
        bool | None,
        typer.Option("--hourly/--daily", help="Hourly or daily report (one is required)."),
    ] = None,
    pm25_24h: Annotated[
        str | None,
        typer.Option(
            "--pm25-24h",
            help="Hourly, 2012 rules: PM2.5 24-hour moving mean (default: its 1-hour mean).",
        ),
    ] = None,
    pm10_24h: Annotated[
        str | None,
        typer.Option(
            "--pm10-24h",
            help="Hourly, 2012 rules: PM10 24-hour moving mean (default: its 1-hour mean).",
        ),
    ] = None,
    so2_24h: Annotated[
        str | None,
        typer.Option(
            "--so2-24h", help="Hourly, 2012 rules: SO2 24-hour mean, scored when SO2 1h > 800."
        ),
    ] = None,
    o3_1h_max: Annotated[
        str | None,
        typer.Option(
            "--o3-1h-max",
            help="Daily, 2012 rules: O3 maximum 1-hour mean, scored when O3 8h > 800.",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """China AQI (HJ 633): IAQI per pollutant, AQI, primary pollutant, level and colour."""
    if hourly is None:
        raise _bad("--hourly/--daily", "say whether the concentrations are hourly or daily")
    when = _time(at)
    values = _concentrations(concentrations or [])
    pm_24h = {
        p: v
        for p, v in (
            ("pm2_5", _optional("--pm25-24h", pm25_24h)),
            ("pm10", _optional("--pm10-24h", pm10_24h)),
        )
        if v is not None
    }
    so2_daily = _optional("--so2-24h", so2_24h)
    o3_max = _optional("--o3-1h-max", o3_1h_max)
    if hourly and o3_max is not None:
        raise _bad("--o3-1h-max", "applies to --daily only")
    if not hourly and (pm_24h or so2_daily is not None):
        option = "--so2-24h" if so2_daily is not None else "--pm25-24h/--pm10-24h"
        raise _bad(option, "applies to --hourly only (daily values are 24-hour means already)")
    try:
        if hourly:
            result = hourly_aqi(values, when, pm_24h=pm_24h or None, so2_24h=so2_daily)
        else:
            result = daily_aqi(values, when, o3_1h_max=o3_max)
    except AQIError as exc:
        raise _bad("CONCENTRATIONS", str(exc)) from None
    if as_json:
        document: dict[str, Any] = {
            "at": when.isoformat(),
            "concentrations": values,
            **result.as_dict(),
        }
        typer.echo(json.dumps(document, ensure_ascii=False, indent=2, sort_keys=True))
        return
    _report(result, when, values)
