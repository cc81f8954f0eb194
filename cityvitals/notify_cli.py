"""`cityvitals routes …` (check and try the routing tree) and `cityvitals notifications …`
(the outbox: list, show, retry, and a stand-alone sender)."""

from __future__ import annotations

import signal
import threading
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import psycopg
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from alerts.model import Level
from alerts.outbox import STATUSES, counts, get_notification, list_notifications, retry
from alerts.route import Routing, RoutingError, describe_timers, load_routing
from alerts.silence import alert_attributes
from cityvitals.app import recorded_endpoints
from cityvitals.notify_runtime import make_sender
from cityvitals.settings import Settings
from devices.durations import format_duration

routes_app = typer.Typer(help="The alert routing tree: check it, try it.", no_args_is_help=True)
notifications_app = typer.Typer(
    help="The notification outbox: what was sent, what waits, what failed.",
    no_args_is_help=True,
)

console = Console()
err = Console(stderr=True)


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[red]error:[/red] {escape(message)}")
    return typer.Exit(code)


def _settings() -> Settings:
    from cityvitals.cli import _settings as settings

    return settings()


def _routing(file: Path | None) -> Routing:
    try:
        return load_routing(file if file is not None else _settings().routing_file)
    except RoutingError as exc:
        for line in str(exc).splitlines():
            err.print(f"[red]✗[/red] {escape(line)}")
        raise typer.Exit(1) from None


@routes_app.command("check")
def routes_check(
    file: Annotated[
        Path | None,
        typer.Argument(help="Routing file (default: CITYVITALS_ROUTING_FILE or the shipped one)."),
    ] = None,
) -> None:
    """Validate a routing file; every problem names the file, the field and what is wrong."""
    routing = _routing(file)
    routes = routing.routes()
    channels = sum(len(t.channels) for t in routing.teams.values())
    console.print(
        f"[green]✓[/green] {escape(routing.source)}: {len(routes)} routes, "
        f"{len(routing.teams)} teams, {channels} channels, "
        f"escalation for {', '.join(lv.label for lv in routing.escalation) or 'no level'}"
    )
    unused = (
        set(routing.teams)
        - {r.receiver for r in routes}
        - {s.notify for stages in routing.escalation.values() for s in stages}
    )
    for team in sorted(unused):
        console.print(f"[yellow]note[/yellow]: team {team} is never a receiver")
    for name, spec in sorted(routing.teams.items()):
        if not spec.channels:
            console.print(f"[yellow]note[/yellow]: team {name} has no channels")


@routes_app.command("test")
def routes_test(
    domain: Annotated[str, typer.Option(help="The alert's domain, e.g. drainage.")],
    district: Annotated[str, typer.Option(help="Its district.")] = "",
    level: Annotated[str, typer.Option(help="blue, yellow, orange or red.")] = "yellow",
    rule: Annotated[str, typer.Option(help="The rule that raised it.")] = "",
    device: Annotated[str, typer.Option("--device", help="Its device id.")] = "",
    label: Annotated[
        list[str] | None, typer.Option(help="A label as name=value; repeat for more.")
    ] = None,
    file: Annotated[Path | None, typer.Option(help="Routing file to use.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show routes.")] = False,
) -> None:
    """Which teams an alert would reach (like `amtool config routes test`)."""
    routing = _routing(file)
    try:
        lvl = Level.parse(level)
    except ValueError as exc:
        raise _fail(str(exc), 2) from None
    labels: dict[str, str] = {}
    for item in label or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise _fail(f"--label {item!r}: write name=value", 2)
        labels[name.strip()] = value.strip()
    attrs = alert_attributes(
        rule=rule,
        domain=domain,
        device_id=device or None,
        district=district or None,
        level=lvl,
        labels=labels,
    )
    matched = routing.match(attrs)
    console.print(",".join(dict.fromkeys(r.receiver for r in matched)))
    if verbose:
        for r in matched:
            console.print(
                f"  route {r.id} {escape(r.describe())} → {r.receiver}: "
                + escape(describe_timers(r))
            )
        stages = routing.escalation.get(lvl, ())
        for s in stages:
            console.print(
                f"  escalation: not {s.unless} after {format_duration(s.after)} → {s.notify}"
            )


def _database() -> str:
    settings = _settings()
    db_url, _ = recorded_endpoints(settings)
    if db_url is None:
        raise _fail("no database: set CITYVITALS_DATABASE_URL, or start one with `cityvitals run`")
    return db_url


def _when(value: Any) -> str:
    return value.isoformat(timespec="seconds") if isinstance(value, datetime) else ""


@notifications_app.command("list")
def notifications_list(
    status: Annotated[str | None, typer.Option(help=f"One of {', '.join(STATUSES)}.")] = None,
    team: Annotated[str | None, typer.Option(help="Only this team's.")] = None,
    alert: Annotated[int | None, typer.Option(help="Only those about this alert id.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10000, help="At most this many.")] = 50,
) -> None:
    """Newest notifications first, with their delivery status."""
    if status is not None and status not in STATUSES:
        raise _fail(f"--status {status!r}: use one of {', '.join(STATUSES)}", 2)
    url = _database()
    try:
        with psycopg.connect(url) as conn:
            found = list_notifications(conn, status, team, alert, limit)
            total = counts(conn)
    except psycopg.OperationalError as exc:
        raise _fail(f"cannot reach the database: {exc}") from None
    table = Table("id", "created", "kind", "team", "channel", "status", "attempts", "subject")
    for n in found:
        table.add_row(
            str(n["id"]),
            _when(n["created_at"]),
            n["kind"],
            escape(n["team"]),
            escape(f"{n['channel']} ({n['channel_type']})"),
            n["status"],
            f"{n['attempts']}/{n['max_attempts']}",
            escape(n["subject"][:60]),
        )
    console.print(table)
    console.print(", ".join(f"{k} {v}" for k, v in total.items()))


@notifications_app.command("show")
def notifications_show(notification_id: Annotated[int, typer.Argument()]) -> None:
    """One notification: target, key, message and every delivery attempt."""
    url = _database()
    with psycopg.connect(url) as conn:
        found = get_notification(conn, notification_id)
    if found is None:
        raise _fail(f"notification {notification_id} does not exist")
    n, attempts = found
    for key in (
        "id",
        "idempotency_key",
        "kind",
        "team",
        "channel",
        "channel_type",
        "target",
        "language",
        "alert_ids",
        "status",
        "attempts",
        "max_attempts",
        "created_at",
        "next_attempt_at",
        "sent_at",
        "last_error",
    ):
        value = n[key]
        console.print(f"[bold]{key}[/bold]: {escape(_when(value) or str(value))}")
    console.print(f"\n[bold]{escape(n['payload'].get('subject', ''))}[/bold]")
    console.print(escape(n["payload"].get("body", "")))
    table = Table("attempt", "started", "finished", "outcome", "error", "sender")
    for a in attempts:
        table.add_row(
            str(a["attempt"]),
            _when(a["started_at"]),
            _when(a["finished_at"]),
            a["outcome"],
            escape(a["error"] or ""),
            escape(a["sender"]),
        )
    console.print(table)


@notifications_app.command("retry")
def notifications_retry(
    ids: Annotated[list[int] | None, typer.Argument(help="Failed notification ids.")] = None,
    all_failed: Annotated[bool, typer.Option("--all-failed", help="Every failed one.")] = False,
    attempts: Annotated[int, typer.Option(min=1, max=100, help="Attempts to add.")] = 3,
) -> None:
    """Send failed notifications again (after fixing the channel)."""
    if not ids and not all_failed:
        raise _fail("name notification ids, or --all-failed", 2)
    url = _database()
    with psycopg.connect(url) as conn:
        if all_failed:
            ids = [
                int(r[0])
                for r in conn.execute(
                    "SELECT id FROM notifications WHERE status = 'failed'"
                ).fetchall()
            ]
        changed = retry(conn, ids or [], datetime.now(UTC), attempts)
    console.print(f"{changed} notification(s) queued again")


@notifications_app.command("send")
def notifications_send(
    drain: Annotated[bool, typer.Option("--drain", help="Stop when nothing is due.")] = False,
) -> None:
    """Run a sender only (delivers the outbox; the notifier runs in `cityvitals run`)."""
    settings = _settings()
    url = _database()
    _, mqtt_url = recorded_endpoints(settings)
    try:
        sender = make_sender(settings, url, mqtt_url)
    except RoutingError as exc:
        raise _fail(str(exc)) from None
    if drain:
        sender.drain(timeout=3600)
        sender.stop()
        console.print(f"sent {sender.sent}, failed {sender.failed}")
        return
    done = threading.Event()

    def _handler(signum: int, frame: FrameType | None) -> None:
        done.set()

    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, _handler)
    sender.start()
    console.print("sender running; Ctrl-C stops it")
    done.wait()
    sender.stop()
    console.print(f"sent {sender.sent}, failed {sender.failed}")
