"""`cityvitals simulate …`: a virtual city, scenarios and replays on the real broker."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Annotated

import psycopg
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cityvitals.app import recorded_endpoints
from cityvitals.settings import Settings
from devices.durations import parse_duration
from devices.profile import ProfileSet, load_profiles
from devices.registry import DeviceRecord, read_registry_csv, write_registry_csv
from devices.registry_store import upsert_devices
from simulators.city import City, generate_city
from simulators.faults import FaultInjector, FaultSpec, parse_fault_spec
from simulators.fleet import Fleet, SimulatorError, sim_devices
from simulators.publish import MqttPublisher
from simulators.replay import read_replay_csv, replay_messages
from simulators.runner import Progress as RunProgress
from simulators.runner import RunSummary, fleet_stream, play
from simulators.scenario import ScenarioError, load_scenario
from simulators.world import World

simulate_app = typer.Typer(
    help="Simulated field devices: a virtual city, scenarios, replays.", no_args_is_help=True
)
console = Console()
err = Console(stderr=True)


def _fail(message: str) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}")
    return typer.Exit(1)


def _speed(text: str) -> float | None:
    if text in ("max", "0", "inf"):
        return None
    try:
        value = float(text.rstrip("x"))
    except ValueError:
        raise typer.BadParameter(f"{text!r}: give a factor like 60 or 60x, or max") from None
    if value <= 0:
        raise typer.BadParameter("the speed factor must be positive")
    return value


def _duration(text: str) -> timedelta:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def _endpoints(settings: Settings) -> tuple[str | None, str]:
    db_url, mqtt_url = recorded_endpoints(settings)
    if mqtt_url is None:
        raise _fail(
            "no broker to publish to: set CITYVITALS_MQTT_URL, or start the platform "
            "with `cityvitals run` (its local broker is found automatically)"
        )
    return db_url, mqtt_url


def import_registry(db_url: str | None, records: list[DeviceRecord]) -> str:
    if db_url is None:
        return "registry not imported (no database known; import it with cityvitals devices import)"
    with psycopg.connect(db_url) as conn:
        counts = upsert_devices(conn, records)
    return f"registry imported: {counts.inserted} added, {counts.updated} updated"


@contextlib.contextmanager
def _stop_on_signal() -> Iterator[threading.Event]:
    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _progress_bar(total: float | None) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("sim {task.fields[sim]}"),
        TextColumn("{task.fields[published]:>10,} msgs"),
        TextColumn("{task.fields[rate]:>8,.0f} msg/s"),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    )


def run_fleet(
    fleet: Fleet,
    publisher: MqttPublisher,
    duration: timedelta,
    speed: float | None,
    stop: threading.Event,
    title: str,
    show_progress: bool = True,
) -> RunSummary:
    end = fleet.start + duration
    total = duration.total_seconds()
    with _progress_bar(total) as bar:
        task = bar.add_task(title, total=total, sim="", published=0, rate=0.0)

        def on_progress(p: RunProgress) -> None:
            bar.update(
                task,
                completed=(p.sim_time - p.sim_start).total_seconds(),
                sim=f"{p.sim_time.astimezone():%m-%d %H:%M}",
                published=p.published,
                rate=p.rate,
            )

        wall = datetime.now(UTC)
        reached, early = play(
            fleet_stream(fleet, end),
            publisher,
            fleet.start,
            speed,
            stop,
            on_progress if show_progress else None,
            end,
        )
        if early:  # devices leave the air when the simulation is stopped
            publisher.publish_all(fleet.finish())
            publisher.publish_all(fleet.status_messages("offline", reached))
        bar.update(
            task,
            completed=(reached - fleet.start).total_seconds(),
            published=publisher.stats.published,
        )
    publisher.close()
    injector = fleet.injector
    return RunSummary(
        sim_start=fleet.start,
        sim_end=reached,
        messages=publisher.stats.published,
        devices=len(fleet.devices),
        wall_seconds=(datetime.now(UTC) - wall).total_seconds(),
        stopped_early=early,
        by_channel=dict(publisher.stats.by_channel),
        faults=dict(getattr(injector, "counts", {}) or {}),
    )


def print_summary(summary: RunSummary) -> None:
    table = Table(
        title="Simulation " + ("stopped" if summary.stopped_early else "finished"),
        show_header=False,
        title_justify="left",
    )
    table.add_row(
        "simulated",
        f"{summary.sim_start.astimezone():%Y-%m-%d %H:%M} → "
        f"{summary.sim_end.astimezone():%Y-%m-%d %H:%M}",
    )
    table.add_row("devices", f"{summary.devices:,}")
    table.add_row(
        "messages",
        f"{summary.messages:,} ("
        + ", ".join(f"{k} {v:,}" for k, v in sorted(summary.by_channel.items()))
        + ")",
    )
    rate = summary.messages / summary.wall_seconds if summary.wall_seconds else 0
    table.add_row("wall time", f"{summary.wall_seconds:,.1f} s ({rate:,.0f} msg/s)")
    faults = ", ".join(f"{k} {v:,}" for k, v in sorted(summary.faults.items()) if v)
    table.add_row("faults injected", faults or "none")
    console.print(table)


def _faults(specs: list[str]) -> list[FaultSpec]:
    try:
        return [parse_fault_spec(s) for s in specs]
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def _city(
    settings: Settings,
    profiles: ProfileSet,
    city: City,
    seed: int,
    world: World,
    start: datetime,
    faults: list[FaultSpec],
) -> Fleet:
    try:
        devices = sim_devices(city.devices, profiles)
        injector = (
            FaultInjector(faults, seed, profiles, registry_ids={d.device_id for d in city.devices})
            if faults
            else None
        )
        return Fleet(devices, world, start, seed, settings.topic_root, injector)
    except SimulatorError as exc:
        raise _fail(str(exc)) from None


@simulate_app.command("city")
def simulate_city(
    districts: Annotated[int, typer.Option(help="Number of districts.")] = 4,
    devices: Annotated[int, typer.Option(help="Number of devices across all profiles.")] = 200,
    seed: Annotated[int, typer.Option(help="Same seed, same city and readings.")] = 1,
    duration: Annotated[str, typer.Option(help="Simulated time to run, e.g. 1h, 2d.")] = "1h",
    speed: Annotated[str, typer.Option(help="Simulated seconds per real second, or max.")] = "60",
    start: Annotated[
        str | None, typer.Option(help="Simulated start, ISO 8601 with offset (default: now).")
    ] = None,
    registry_out: Annotated[
        Path | None, typer.Option(help="Write the generated registry CSV here.")
    ] = None,
    import_registry_: Annotated[
        bool, typer.Option("--import/--no-import", help="Load the registry into the database.")
    ] = True,
    fault: Annotated[
        list[str] | None,
        typer.Option(help="Fault spec, repeatable: KIND:RATE[@DURATION][:devices=a,b]."),
    ] = None,
    mode: Annotated[
        str, typer.Option(help="gateway (many devices per connection) or device.")
    ] = "gateway",
) -> None:
    """Generate a city's registry and run its whole fleet against the broker.

    Without --start the simulated period ends about now at the chosen speed
    (it starts `duration` ago at max speed), so the platform never sees readings
    stamped in the future.
    """
    # Every option is checked before anything is written or published.
    run_for = _duration(duration)
    factor = _speed(speed)
    faults = _faults(fault or [])
    if mode not in ("gateway", "device"):
        raise typer.BadParameter(f"--mode must be gateway or device, not {mode!r}")
    if start:
        try:
            begin = datetime.fromisoformat(start)
        except ValueError:
            raise typer.BadParameter(
                f"--start {start!r} is not ISO 8601, e.g. 2026-07-20T12:00:00+08:00"
            ) from None
        if begin.tzinfo is None:
            raise typer.BadParameter("--start needs a UTC offset, e.g. +08:00")
    else:
        wall = run_for if factor is None else run_for / factor
        begin = (datetime.now(UTC) + wall - run_for).replace(microsecond=0)
    settings = Settings()
    db_url, mqtt_url = _endpoints(settings)
    profiles = load_profiles(settings.profile_dirs)
    city = generate_city(districts, devices, seed)
    out = registry_out or settings.data_dir / "city.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_registry_csv(out, city.devices)
    console.print(f"city: {districts} districts, {len(city.devices)} devices → {out}")
    if import_registry_:
        console.print(import_registry(db_url, city.devices))
    fleet = _city(settings, profiles, city, seed, World(tuple(city.districts)), begin, faults)
    publisher = MqttPublisher(mqtt_url, mode, gateways=max(1, min(districts, 4)))
    with _stop_on_signal() as stop:
        summary = run_fleet(fleet, publisher, run_for, factor, stop, "city")
    print_summary(summary)


@simulate_app.command("scenario")
def simulate_scenario(
    scenario: Annotated[
        str,
        typer.Argument(
            help="A scenario file, or a shipped name: typhoon, pollution, entrapment, quiet_day."
        ),
    ],
    speed: Annotated[
        str | None, typer.Option(help="Override the scenario's speed factor (or max).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Override the scenario's seed.")] = None,
    import_registry_: Annotated[
        bool, typer.Option("--import/--no-import", help="Load the registry into the database.")
    ] = True,
    registry_out: Annotated[
        Path | None, typer.Option(help="Write the generated registry CSV here.")
    ] = None,
) -> None:
    """Run a scenario timeline (weather, pollution, power cuts, faults) on a simulated city."""
    settings = Settings()
    try:
        sc = load_scenario(scenario)
    except ScenarioError as exc:
        raise _fail(str(exc)) from None
    factor = _speed(speed) if speed else sc.speed
    db_url, mqtt_url = _endpoints(settings)
    profiles = load_profiles(settings.profile_dirs)
    used_seed = sc.seed if seed is None else seed
    city = generate_city(sc.city.districts, sc.city.devices, used_seed)
    out = registry_out or settings.data_dir / f"{sc.name}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_registry_csv(out, city.devices)
    if import_registry_:
        console.print(import_registry(db_url, city.devices))
    try:
        world = sc.world(city.districts)
    except ScenarioError as exc:
        raise _fail(str(exc)) from None
    faults = [FaultSpec.from_entry(entry, sc.start + at) for at, entry in sc.faults()]
    fleet = _city(settings, profiles, city, used_seed, world, sc.start, faults)
    console.print(
        f"scenario {sc.name}: {sc.title} — {len(city.devices)} devices, "
        f"{sc.duration} simulated at {'max' if factor is None else f'{factor:g}'}×"
    )
    for e in sc.expect:
        console.print(
            f"  expect {e.level:<6} {e.domain}: {e.what}"
            + (f" in district {e.district}" if e.district else "")
        )
    publisher = MqttPublisher(mqtt_url, gateways=max(1, min(sc.city.districts, 4)))
    with _stop_on_signal() as stop:
        summary = run_fleet(fleet, publisher, sc.duration, factor, stop, sc.name)
    print_summary(summary)


@simulate_app.command("replay")
def simulate_replay(
    file: Annotated[
        Path, typer.Argument(help="CSV: ts, device, metric, value[, profile, district]")
    ],
    registry: Annotated[
        Path | None, typer.Option(help="Registry CSV giving each device's profile and district.")
    ] = None,
    speed: Annotated[str, typer.Option(help="Simulated seconds per real second, or max.")] = "60",
) -> None:
    """Publish recorded readings in time order at a chosen speed."""
    settings = Settings()
    db_url, mqtt_url = _endpoints(settings)
    profiles = load_profiles(settings.profile_dirs)
    records: list[DeviceRecord] = []
    if registry is not None:
        records = read_registry_csv(registry, profiles).records
        console.print(import_registry(db_url, records))
    try:
        messages = list(
            replay_messages(read_replay_csv(file), records, settings.topic_root, profiles=profiles)
        )
    except ValueError as exc:
        raise _fail(str(exc)) from None
    if not messages:
        raise _fail(f"{file}: no readings to replay")
    publisher = MqttPublisher(mqtt_url)
    start, end = messages[0].t, messages[-1].t
    with _stop_on_signal() as stop, _progress_bar(None) as bar:
        task = bar.add_task(
            "replay", total=(end - start).total_seconds() or 1, sim="", published=0, rate=0.0
        )

        def on_progress(p: RunProgress) -> None:
            bar.update(
                task,
                completed=(p.sim_time - start).total_seconds(),
                sim=f"{p.sim_time.astimezone():%m-%d %H:%M}",
                published=p.published,
                rate=p.rate,
            )

        reached, early = play(
            iter(messages), publisher, start, _speed(speed), stop, on_progress, end
        )
    publisher.close()
    console.print(
        f"replayed {publisher.stats.published:,} messages from {file} "
        f"({start:%Y-%m-%d %H:%M} → {reached:%Y-%m-%d %H:%M})"
        + (", stopped early" if early else "")
    )
