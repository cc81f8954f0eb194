"""The `cityvitals` command line."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import psycopg
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

from alerts.route import RoutingError
from cityvitals import status as status_view
from cityvitals.alerts_cli import alerts_app, api, silences_app, tokens_app, users_app
from cityvitals.api_server import ApiServerError
from cityvitals.app import Platform, endpoints, recorded_endpoints
from cityvitals.aqi_cli import aqi
from cityvitals.dashboards_cli import dashboards_app
from cityvitals.db import MigrationError, schema_status, upgrade
from cityvitals.notify_cli import notifications_app, routes_app
from cityvitals.rollups import refresh_rollups
from cityvitals.rules_cli import rules_app
from cityvitals.services import ServiceError
from cityvitals.settings import Settings
from cityvitals.simulate_cli import simulate_app
from cityvitals.vitals_cli import vitals
from devices.errors import ProfileError, RegistryError
from devices.profile import load_profile, load_profiles, profile_files
from devices.registry import read_registry_csv
from devices.registry_store import list_devices, upsert_devices
from ingest.mqtt import redact
from simulators.fleet import SimulatorError
from simulators.publish import PublishError
from simulators.scenario import ScenarioError

app = typer.Typer(
    help="CityVitals: city sensors over MQTT → TimescaleDB → vital-sign alerts → Grafana.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
devices_app = typer.Typer(help="Device profiles and the device registry.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(devices_app, name="devices")
app.add_typer(simulate_app, name="simulate")
app.add_typer(rules_app, name="rules")
app.add_typer(routes_app, name="routes")
app.add_typer(notifications_app, name="notifications")
app.add_typer(dashboards_app, name="dashboards")
app.command("aqi")(aqi)
app.command("vitals")(vitals)
app.add_typer(alerts_app, name="alerts")
app.add_typer(silences_app, name="silences")
app.add_typer(users_app, name="users")
app.add_typer(tokens_app, name="tokens")
app.command("api")(api)

console = Console()
err = Console(stderr=True)


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        for e in exc.errors():
            field = ".".join(str(p) for p in e["loc"])
            err.print(f"[red]setting CITYVITALS_{field.upper()}[/red]: {escape(e['msg'])}")
        raise typer.Exit(2) from None


def _logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(message)s",
        handlers=[RichHandler(console=err, show_path=False, rich_tracebacks=True)],
    )


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[red]error:[/red] {escape(message)}")
    return typer.Exit(code)


@contextlib.contextmanager
def _database(settings: Settings) -> Iterator[str]:
    """The database URL: configured, recorded by a running platform, or a local one started now."""
    db_url, _ = recorded_endpoints(settings)
    if db_url is not None:
        yield db_url
        return
    local = settings.model_copy(update={"mqtt_url": "mqtt://unused"})
    try:
        with endpoints(local) as ends:
            upgrade(ends.database_url)
            yield ends.database_url
    except ServiceError as exc:
        raise _fail(str(exc)) from None


@app.command()
def run() -> None:
    """Run the platform: ingest (and later rules and alerts) until Ctrl-C.

    Without CITYVITALS_DATABASE_URL / CITYVITALS_MQTT_URL it starts a local
    PostgreSQL and Mosquitto under CITYVITALS_DATA_DIR.
    """
    settings = _settings()
    _logging(settings)
    try:
        with endpoints(settings) as ends:
            platform = Platform(settings, ends)
            console.print(
                f"CityVitals running: schema v{platform.schema.current} "
                f"({platform.schema.flavor}), "
                f"{len(platform.profiles)} profiles, MQTT {redact(ends.mqtt_url)}, "
                f"subscribed to {settings.topic_root}/"
                f"{'{' + ','.join(settings.districts) + '}' if settings.districts else '+'}/+/+/+"
            )
            platform.start()
            if platform.api is not None:
                console.print(f"API on {platform.api.url} (docs: {platform.api.url}/docs)")
            platform.wait()
            c = platform.ingest.counters
            console.print(
                f"stopped: {c.messages} messages, {c.readings} readings stored, "
                f"{c.duplicates} duplicates, {c.dead_letters} dead letters"
            )
    except (ServiceError, MigrationError, ProfileError, ApiServerError, RoutingError) as exc:
        raise _fail(str(exc)) from None


@app.command()
def demo(
    scenario: Annotated[
        str,
        typer.Option(
            help="Scenario to play: typhoon, pollution, entrapment, quiet_day or a scenario file."
        ),
    ] = "typhoon",
    speed: Annotated[
        float | None,
        typer.Option(help="Simulated seconds per real second (default: the scenario's)."),
    ] = None,
    duration: Annotated[
        float | None,
        typer.Option(help="Stop after this many real seconds (default: the whole scenario)."),
    ] = None,
) -> None:
    """Run the platform with a simulated city playing a scenario, and watch it live."""
    from cityvitals.demo import run_demo

    settings = _settings()
    _logging(settings)
    try:
        run_demo(settings, console, scenario, speed, duration)
    except (
        ServiceError,
        MigrationError,
        ProfileError,
        ScenarioError,
        SimulatorError,
        RoutingError,
    ) as exc:
        raise _fail(str(exc)) from None


@app.command()
def status() -> None:
    """Ingest, dead letters, devices, vital signs, open alerts, rules in error, notifications."""
    settings = _settings()
    db_url, _ = recorded_endpoints(settings)
    if db_url is None:
        raise _fail(
            "no platform to ask: set CITYVITALS_DATABASE_URL, or start one with `cityvitals run`"
        )
    try:
        console.print(status_view.render(db_url))
    except psycopg.OperationalError as exc:
        raise _fail(f"cannot reach the database at {redact(db_url)}: {exc}") from None


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply pending migrations (also done at every start)."""
    settings = _settings()
    try:
        with _database(settings) as url:
            result = upgrade(url)
    except MigrationError as exc:
        raise _fail(str(exc)) from None
    if result.applied:
        for m in result.applied:
            console.print(f"applied {m.version:04d} {m.name}")
    console.print(f"schema at version {result.current} ({result.flavor})")


@db_app.command("status")
def db_status() -> None:
    """Show the applied migrations and whether TimescaleDB is in use."""
    settings = _settings()
    with _database(settings) as url:
        flavor, applied = schema_status(url)
    table = Table("version", "migration", "applied at", title=f"schema ({flavor or 'empty'})")
    for version, name, at in applied:
        table.add_row(f"{version:04d}", name, at)
    console.print(table)


@db_app.command("refresh-rollups")
def db_refresh_rollups() -> None:
    """Plain PostgreSQL: materialize the hourly rollup the dashboards read up to the last
    completed hour (the running platform does it every 5 minutes; run this after
    loading history). With TimescaleDB its own policies do it."""
    settings = _settings()
    with _database(settings) as url:
        flavor, _ = schema_status(url)
        if flavor != "plain":
            console.print(
                f"nothing to do: the schema is {flavor or 'empty'}"
                " (TimescaleDB refreshes its continuous aggregates itself)"
            )
            return
        try:
            written = refresh_rollups(url)
        except psycopg.Error as exc:
            raise _fail(f"refreshing the hourly rollup failed: {exc}") from None
    console.print(f"hourly rollup up to date ({written} rows written)")


@devices_app.command("validate")
def devices_validate(
    paths: Annotated[list[Path], typer.Argument(help="Profile files or directories.")],
) -> None:
    """Check device profile files; every problem names the file and field."""
    files: list[Path] = []
    for path in paths:
        try:
            files += profile_files([path]) if path.is_dir() else [path]
        except ProfileError as exc:
            raise _fail(str(exc)) from None
    bad = 0
    for path in files:
        try:
            profile = load_profile(path, [path.parent])
        except ProfileError as exc:
            bad += 1
            err.print(f"[red]✗[/red] {escape(str(exc))}")
            continue
        console.print(
            f"[green]✓[/green] {escape(str(path))}: {profile.name} ({profile.domain}), "
            f"{len(profile.metrics)} metrics, {len(profile.events)} events"
        )
    if bad:
        raise _fail(f"{bad} of {len(files)} profile file(s) invalid")


@devices_app.command("import")
def devices_import(
    file: Annotated[Path, typer.Argument(help="CSV: id, profile, district, name, lat, lon, …")],
) -> None:
    """Add or update devices from a CSV file; bad rows are reported, good rows kept."""
    settings = _settings()
    try:
        profiles = load_profiles(settings.profile_dirs)
        result = read_registry_csv(file, profiles)
    except (ProfileError, RegistryError) as exc:
        raise _fail(str(exc)) from None
    for problem in result.problems:
        err.print(f"[yellow]skipped[/yellow] {escape(str(problem))}")
    with _database(settings) as url, psycopg.connect(url) as conn:
        counts = upsert_devices(conn, result.records)
    console.print(
        f"{escape(str(file))}: {counts.inserted} added, {counts.updated} updated, "
        f"{result.rejected} row(s) skipped"
    )
    if result.problems:
        raise typer.Exit(1)


@devices_app.command("list")
def devices_list(
    profile: Annotated[str | None, typer.Option(help="Only this profile.")] = None,
    district: Annotated[str | None, typer.Option(help="Only this district.")] = None,
    provisional: Annotated[
        bool | None, typer.Option("--provisional/--registered", help="Only provisional ones.")
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many rows.")] = 200,
) -> None:
    """List registered (and provisional) devices."""
    settings = _settings()
    with _database(settings) as url, psycopg.connect(url) as conn:
        records = list_devices(conn, profile, district, provisional, limit)
    table = Table("id", "profile", "district", "name", "lat", "lon", "attributes", "provisional")
    for r in records:
        table.add_row(
            *map(
                escape,
                (
                    r.device_id,
                    r.profile,
                    r.district,
                    r.name,
                    "" if r.lat is None else f"{r.lat:.5f}",
                    "" if r.lon is None else f"{r.lon:.5f}",
                    ", ".join(f"{k}={v}" for k, v in sorted(r.attributes.items())),
                    "yes" if r.provisional else "",
                ),
            )
        )
    console.print(table)
    console.print(f"{len(records)} device(s)")


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    try:
        app(prog_name="cityvitals")
    except PublishError as exc:  # the broker refused or dropped the simulator for good
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
