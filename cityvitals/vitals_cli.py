"""`cityvitals vitals`: the latest city vital signs, as a coloured table or JSON."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any

import psycopg
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from alerts.model import Level
from ingest.mqtt import redact
from rules.vitals import (
    DOMAINS,
    VitalSign,
    by_scope,
    domain_sort_key,
    payload_document,
)

console = Console()
err = Console(stderr=True)

STYLES: Mapping[Level, str] = {
    Level.NORMAL: "green",
    Level.BLUE: "bold blue",
    Level.YELLOW: "bold yellow",
    Level.ORANGE: "bold dark_orange",
    Level.RED: "bold red",
}

TITLES: Mapping[str, str] = {
    "flood": "flood",
    "drainage": "drainage",
    "air": "air",
    "elevators": "elevators",
    "noise": "noise",
    "device_health": "device health",
}

_LATEST = """
SELECT DISTINCT ON (scope, domain) scope, domain, level, indicators, ts
FROM vital_signs
WHERE %(scope)s::text IS NULL OR scope = %(scope)s::text
ORDER BY scope, domain, ts DESC
"""


def latest_signs(url: str, scope: str | None = None) -> list[VitalSign]:
    """The latest stored sign of every (scope, domain), or of one scope's domains."""
    with psycopg.connect(url, connect_timeout=5) as conn:
        rows = conn.execute(_LATEST, {"scope": scope}).fetchall()
    return [
        VitalSign(scope, domain, Level(level), dict(indicators), ts)
        for scope, domain, level, indicators, ts in rows
    ]


def _share(value: Any) -> str:
    return f"{float(value) * 100:.0f}%"


def key_indicator(domain: str, ind: Mapping[str, Any]) -> str:
    """The one indicator shown under a domain's level in the table ("" if none)."""
    text = ""
    if domain == "flood":
        if "water_level_ratio" in ind:
            text = f"water {_share(ind['water_level_ratio'])} of warning"
        elif "rain_3h_max_mm" in ind:
            text = f"rain {ind['rain_3h_max_mm']:g} mm in 3 h"
    elif domain == "drainage":
        if ind.get("pipes_surcharged"):
            text = f"{ind['pipes_surcharged']} surcharged"
        elif "fill_ratio_max" in ind:
            text = f"fill ratio max {ind['fill_ratio_max']:.2f}"
    elif domain == "air":
        if "aqi_max" in ind:
            primary = ", ".join(ind.get("primary_pollutants") or [])
            text = f"AQI {ind['aqi_max']}" + (f" {primary}" if primary else "")
    elif domain == "elevators":
        if ind.get("trapped_alerts"):
            text = f"{ind['trapped_alerts']} trapped"
        elif "elevators" in ind:
            text = f"{ind.get('elevators_in_fault', 0)}/{ind['elevators']} in fault"
    elif domain == "noise":
        if "monitors" in ind:
            text = f"{ind.get('monitors_over_limit', 0)}/{ind['monitors']} over limit"
    elif domain == "device_health" and "online_share" in ind:
        text = f"{_share(ind['online_share'])} online"
    if not text and ind.get("alerts_firing"):
        text = f"{ind['alerts_firing']} alert(s) firing"
    return text


def _cell(sign: VitalSign | None) -> Text:
    if sign is None:
        return Text("-", style="dim")
    text = Text()
    text.append(sign.level.label, style=STYLES[sign.level])
    detail = key_indicator(sign.domain, sign.indicators)
    if detail:
        text.append("\n" + detail)
    return text


def render(signs: list[VitalSign]) -> Table:
    groups = by_scope(signs)
    domains = sorted({s.domain for s in signs} | set(DOMAINS), key=domain_sort_key)
    latest = max(s.at for s in signs)
    table = Table(title="City vital signs", title_justify="left", show_lines=True)
    table.add_column("scope", style="bold")
    table.add_column("level")
    for domain in domains:
        table.add_column(TITLES.get(domain, domain))
    for scope, scope_signs in groups.items():
        of_domain = {s.domain: s for s in scope_signs}
        overall = max(s.level for s in scope_signs)
        table.add_row(
            escape(scope),
            Text(overall.label, style=STYLES[overall]),
            *(_cell(of_domain.get(d)) for d in domains),
        )
    table.caption = f"latest values as of {_when(latest)}"
    return table


def _when(at: datetime) -> str:
    return at.astimezone().strftime("%Y-%m-%d %H:%M:%S %z")


def _document(signs: list[VitalSign]) -> list[dict[str, Any]]:
    out = []
    for scope_signs in by_scope(signs).values():
        document = payload_document(scope_signs)
        for s in scope_signs:
            document["domains"][s.domain]["at"] = s.at.isoformat()
        out.append(document)
    return out


def vitals(
    district: Annotated[
        str | None, typer.Option(help="Only this district (or `city`).", show_default=False)
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """City vital signs: the latest level and key indicator per district and domain."""
    # Imported here: cityvitals.cli imports this module to register the command.
    from cityvitals.cli import _database, _fail, _settings

    settings = _settings()
    with _database(settings) as url:
        try:
            signs = latest_signs(url, district)
        except psycopg.errors.UndefinedTable:
            raise _fail(
                f"the database at {redact(url)} has no vital_signs table: "
                "run `cityvitals db upgrade`"
            ) from None
        except psycopg.OperationalError as exc:
            raise _fail(f"cannot reach the database at {redact(url)}: {exc}") from None
    if as_json:
        typer.echo(json.dumps(_document(signs), ensure_ascii=False, indent=2))
    if not signs:
        where = f" for {district}" if district is not None else ""
        # With --json the message goes to stderr, so stdout stays parseable ([]).
        (err if as_json else console).print(
            f"no vital signs are stored{escape(where)} yet: start the platform: cityvitals run"
        )
    elif not as_json:
        console.print(render(signs))
