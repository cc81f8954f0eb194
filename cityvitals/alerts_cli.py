"""`cityvitals alerts|silences|users|tokens|api`: alert handling from the command line.

The CLI works on the database directly, with operator rights; every action
records who did it: `--as NAME`, or the CITYVITALS_USER environment variable.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import psycopg
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from alerts.auth import (
    USER_PATTERN,
    AuthError,
    add_user,
    create_token,
    disable_user,
    get_user,
    list_tokens,
    list_users,
    revoke_token,
)
from alerts.handling import (
    MAX_LIMIT,
    AlertFilter,
    AlertRecord,
    act,
    alert_timeline,
    get_alert,
    list_alerts,
)
from alerts.lifecycle import Action, Handling, HandlingError
from alerts.model import ConditionState, Level
from alerts.silence import (
    Matcher,
    Silence,
    SilenceError,
    add_silence,
    expire_silence,
    list_silences,
)
from devices.durations import parse_duration
from ingest.mqtt import redact

alerts_app = typer.Typer(
    help="Alerts: list, show, acknowledge, dispatch, report handled, close.",
    no_args_is_help=True,
)
silences_app = typer.Typer(help="Silences and maintenance windows.", no_args_is_help=True)
users_app = typer.Typer(help="API users and their roles.", no_args_is_help=True)
tokens_app = typer.Typer(help="API tokens (shown once, stored hashed).", no_args_is_help=True)

console = Console()
err = Console(stderr=True)

LEVEL_STYLES = {
    Level.NORMAL: "green",
    Level.BLUE: "bold blue",
    Level.YELLOW: "bold yellow",
    Level.ORANGE: "bold dark_orange",
    Level.RED: "bold red",
}

As = Annotated[
    str | None,
    typer.Option(
        "--as",
        envvar="CITYVITALS_USER",
        help="Who does it (recorded in the audit trail); default $CITYVITALS_USER.",
        show_default=False,
    ),
]
Note = Annotated[str | None, typer.Option(help="What and why, for the audit trail.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _now() -> datetime:
    return datetime.now(UTC)


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[red]error:[/red] {escape(message)}")
    return typer.Exit(code)


@contextmanager
def _connect() -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to the platform's database."""
    from cityvitals.cli import _database, _settings

    settings = _settings()
    with _database(settings) as url:
        try:
            conn = psycopg.connect(url, autocommit=True, connect_timeout=10)
        except psycopg.OperationalError as exc:
            raise _fail(f"cannot reach the database at {redact(url)}: {exc}") from None
        with conn:
            try:
                yield conn
            except psycopg.errors.UndefinedTable as exc:
                raise _fail(
                    f"the database at {redact(url)} lacks a table ({exc}): run "
                    "`cityvitals db upgrade`"
                ) from None


def _zone() -> ZoneInfo:
    from cityvitals.cli import _settings

    return ZoneInfo(_settings().timezone)


def _when(text: str, option: str) -> datetime:
    """ISO 8601; without an offset the time is local (CITYVITALS_TIMEZONE)."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise _fail(
            f"{option}: {text!r} is not an ISO 8601 time such as 2026-07-20T08:00+08:00", 2
        ) from None
    return value if value.tzinfo is not None else value.replace(tzinfo=_zone())


def _actor(conn: psycopg.Connection[Any], name: str | None) -> str:
    if name is None or not name.strip():
        raise _fail("say who you are: --as NAME, or set CITYVITALS_USER", 2)
    name = name.strip()
    if not USER_PATTERN.fullmatch(name):
        raise _fail(f"--as {name!r}: a user name is 1-64 letters, digits, _ . @ -", 2)
    user = get_user(conn, name)
    if user is not None and user.disabled_at is not None:
        raise _fail(f"user {name} is disabled; act as another user", 2)
    return name


def _local(at: datetime | None) -> str:
    return "" if at is None else at.astimezone(_zone()).strftime("%Y-%m-%d %H:%M:%S")


def _level(level: Level) -> Text:
    return Text(level.label, style=LEVEL_STYLES[level])


def _alert_json(r: AlertRecord) -> dict[str, Any]:
    out = asdict(r)
    out.update(
        level=r.level.label,
        max_level=r.max_level.label,
        condition=r.condition.value,
        handling=r.handling.value,
        silenced=r.silenced,
        silenced_by=list(r.silenced_by),
        labels=dict(r.labels),
        detail=dict(r.detail),
    )
    for key, value in out.items():
        if isinstance(value, datetime):
            out[key] = value.isoformat()
    return out


# --- alerts --------------------------------------------------------------------------------


@alerts_app.command("list")
def alerts_list(
    state: Annotated[str, typer.Option(help="open, closed or all.")] = "open",
    handling: Annotated[
        list[str] | None, typer.Option(help="new, acknowledged, dispatched, handled, closed.")
    ] = None,
    condition: Annotated[str | None, typer.Option(help="firing or resolved.")] = None,
    level: Annotated[str | None, typer.Option(help="At least this level (blue…red).")] = None,
    domain: Annotated[str | None, typer.Option()] = None,
    district: Annotated[str | None, typer.Option()] = None,
    team: Annotated[str | None, typer.Option()] = None,
    rule: Annotated[str | None, typer.Option()] = None,
    device: Annotated[str | None, typer.Option(help="Device id.")] = None,
    since: Annotated[str | None, typer.Option(help="Started at or after (ISO 8601).")] = None,
    until: Annotated[str | None, typer.Option(help="Started before (ISO 8601).")] = None,
    order: Annotated[str, typer.Option(help="newest, oldest, level or updated.")] = "newest",
    limit: Annotated[int, typer.Option(help=f"At most this many (≤ {MAX_LIMIT}).")] = 50,
    offset: Annotated[int, typer.Option()] = 0,
    as_json: AsJson = False,
) -> None:
    """Alerts, newest first; silenced ones are marked."""
    try:
        f = AlertFilter(
            state=_choice(state, ("open", "closed", "all"), "--state"),
            handling=tuple(_enum(Handling, h, "--handling") for h in handling or ()),
            condition=None
            if condition is None
            else _enum(ConditionState, condition, "--condition"),
            min_level=None if level is None else Level.parse(level),
            domain=domain,
            district=district,
            team=team,
            rule=rule,
            device_id=device,
            since=None if since is None else _when(since, "--since"),
            until=None if until is None else _when(until, "--until"),
            order=_choice(order, ("newest", "oldest", "level", "updated"), "--order"),
            limit=limit,
            offset=offset,
        )
    except (HandlingError, ValueError) as exc:
        raise _fail(str(exc), 2) from None
    with _connect() as conn:
        records, total = list_alerts(conn, f, _now())
    if as_json:
        typer.echo(
            json.dumps(
                {"items": [_alert_json(r) for r in records], "total": total},
                ensure_ascii=False,
                indent=2,
            )
        )
        return
    table = Table(
        "id",
        "level",
        "condition",
        "handling",
        "team",
        "district",
        "domain",
        "rule",
        "device",
        "started",
        "summary",
    )
    for r in records:
        handling_text = Text(r.handling.value)
        if r.silenced:
            handling_text.append(" (silenced)", style="dim")
        table.add_row(
            str(r.id),
            _level(r.level),
            r.condition.value,
            handling_text,
            escape(r.team or ""),
            escape(r.district or ""),
            escape(r.domain),
            escape(r.rule),
            escape(r.device_id or ""),
            _local(r.started_at),
            escape(r.summary),
        )
    console.print(table)
    console.print(f"{len(records)} of {total} alert(s)")


def _choice(value: str, allowed: tuple[str, ...], option: str) -> Any:
    if value not in allowed:
        raise HandlingError(f"{option} {value!r}: one of {', '.join(allowed)}")
    return value


def _enum(kind: Any, value: str, option: str) -> Any:
    try:
        return kind(value)
    except ValueError:
        raise HandlingError(
            f"{option} {value!r}: one of {', '.join(m.value for m in kind)}"
        ) from None


@alerts_app.command("show")
def alerts_show(
    alert_id: Annotated[int, typer.Argument(help="The alert's id.")],
    as_json: AsJson = False,
) -> None:
    """One alert, whether it is silenced, and its timeline."""
    with _connect() as conn:
        record = get_alert(conn, alert_id, _now())
        if record is None:
            raise _fail(f"alert {alert_id} does not exist; `cityvitals alerts list --state all`")
        events = alert_timeline(conn, alert_id)
    if as_json:
        out = _alert_json(record)
        out["timeline"] = [
            {**asdict(e), "at": e.at.isoformat(), "level": e.level.label if e.level else None}
            for e in events
        ]
        typer.echo(json.dumps(out, ensure_ascii=False, indent=2))
        return
    head = Text(f"alert {record.id} ")
    head.append_text(_level(record.level))
    head.append(f"  {record.condition.value} · {record.handling.value}")
    if record.silenced:
        head.append(f"  silenced by {', '.join(map(str, record.silenced_by))}", style="dim")
    console.print(head)
    for name, value in (
        ("summary", record.summary),
        ("rule", record.rule),
        ("domain", record.domain),
        ("district", record.district or ""),
        ("device", record.device_id or ""),
        ("team", record.team or ""),
        ("started", _local(record.started_at)),
        ("resolved", _local(record.resolved_at)),
        ("acknowledged", _local(record.acknowledged_at)),
        ("dispatched", _local(record.dispatched_at)),
        ("handled", _local(record.handled_at)),
        ("closed", _local(record.closed_at)),
    ):
        if value:
            console.print(f"  {name:<13}{escape(value)}")
    table = Table("at", "actor", "dimension", "from", "to", "team", "note", title="timeline")
    for e in events:
        table.add_row(
            _local(e.at),
            escape(e.actor),
            e.dimension,
            e.from_state or "",
            e.to_state,
            escape(e.team or ""),
            escape(e.note),
        )
    console.print(table)


def _act(
    alert_id: int,
    action: Action,
    who: str | None,
    *,
    team: str | None = None,
    note: str | None = None,
) -> None:
    with _connect() as conn:
        actor = _actor(conn, who)
        try:
            step = act(conn, alert_id, action, actor, _now(), team=team, note=note)
        except HandlingError as exc:
            raise _fail(str(exc)) from None
    if step.changed:
        extra = f" to {step.after.team}" if action is Action.DISPATCH else ""
        console.print(
            f"alert {alert_id}: {step.before.handling.value} → {step.after.handling.value}"
            f"{escape(extra)} (by {escape(actor)})"
        )
    else:
        console.print(f"alert {alert_id} was already {step.before.handling.value}; nothing changed")


@alerts_app.command("ack")
def alerts_ack(
    alert_id: Annotated[int, typer.Argument()], note: Note = None, who: As = None
) -> None:
    """Acknowledge: someone is on it (again: nothing changes)."""
    _act(alert_id, Action.ACK, who, note=note)


@alerts_app.command("dispatch")
def alerts_dispatch(
    alert_id: Annotated[int, typer.Argument()],
    team: Annotated[str, typer.Option(help="The team that will act, e.g. drainage-futian.")],
    note: Note = None,
    who: As = None,
) -> None:
    """Dispatch to a team (also re-dispatch to another team, or send handled work back)."""
    _act(alert_id, Action.DISPATCH, who, team=team, note=note)


@alerts_app.command("handle")
def alerts_handle(
    alert_id: Annotated[int, typer.Argument()],
    note: Annotated[str, typer.Option(help="What the team did (required).")],
    who: As = None,
) -> None:
    """Report a dispatched alert handled, saying what was done."""
    _act(alert_id, Action.HANDLE, who, note=note)


@alerts_app.command("close")
def alerts_close(
    alert_id: Annotated[int, typer.Argument()],
    note: Annotated[
        str | None,
        typer.Option(help="Required unless handled and resolved, e.g. 'false alarm'."),
    ] = None,
    who: As = None,
) -> None:
    """Close: the centre verified it (or closes it with a reason)."""
    _act(alert_id, Action.CLOSE, who, note=note)


# --- silences ------------------------------------------------------------------------------


@silences_app.command("add")
def silences_add(
    matchers: Annotated[
        list[str],
        typer.Argument(help="All must hold: district=futian rule=~drainage.* level!=red"),
    ],
    reason: Annotated[str, typer.Option(help="Why, e.g. 'pump station maintenance'.")],
    duration: Annotated[
        str | None, typer.Option("--for", help="How long from the start: 30m, 2h, 1d.")
    ] = None,
    until: Annotated[str | None, typer.Option(help="End (ISO 8601) instead of --for.")] = None,
    starts: Annotated[str | None, typer.Option(help="Start (ISO 8601); default now.")] = None,
    author: Annotated[
        str | None, typer.Option(envvar="CITYVITALS_USER", help="Default $CITYVITALS_USER.")
    ] = None,
) -> None:
    """Silence matching alerts for a while: recorded and shown, not notified."""
    if (duration is None) == (until is None):
        raise _fail("give how long with --for 2h, or the end with --until TIME", 2)
    start = _now() if starts is None else _when(starts, "--starts")
    if until is not None:
        end = _when(until, "--until")
    else:
        try:
            end = start + parse_duration(duration or "")
        except ValueError as exc:
            raise _fail(f"--for: {exc}", 2) from None
    with _connect() as conn:
        who = _actor(conn, author)
        try:
            silence = Silence.build([Matcher.parse(m) for m in matchers], start, end, who, reason)
        except SilenceError as exc:
            raise _fail(str(exc), 2) from None
        stored = add_silence(conn, silence)
    console.print(
        f"silence {stored.id}: {escape(' '.join(map(str, stored.matchers)))} "
        f"from {_local(stored.starts_at)} to {_local(stored.ends_at)}"
    )


@silences_app.command("list")
def silences_list(
    include_expired: Annotated[bool, typer.Option("--all", help="Expired ones too.")] = False,
) -> None:
    """Pending and active silences, soonest end first."""
    now = _now()
    with _connect() as conn:
        found = list_silences(conn, now, include_expired)
    table = Table("id", "state", "matchers", "starts", "ends", "author", "reason")
    for s in found:
        table.add_row(
            str(s.id),
            s.state(now).value,
            escape(" ".join(map(str, s.matchers))),
            _local(s.starts_at),
            _local(s.end),
            escape(s.author),
            escape(s.reason),
        )
    console.print(table)
    console.print(f"{len(found)} silence(s)")


@silences_app.command("expire")
def silences_expire(silence_id: Annotated[int, typer.Argument()], who: As = None) -> None:
    """End a silence now."""
    with _connect() as conn:
        actor = _actor(conn, who)
        try:
            expire_silence(conn, silence_id, actor, _now())
        except SilenceError as exc:
            raise _fail(str(exc)) from None
    console.print(f"silence {silence_id} expired (by {escape(actor)})")


# --- users and tokens ------------------------------------------------------------------------


@users_app.command("add")
def users_add(
    name: Annotated[str, typer.Argument(help="Login name: letters, digits, _ . @ -")],
    role: Annotated[str, typer.Option(help="operator, member or viewer.")],
    team: Annotated[str | None, typer.Option(help="The team of a member.")] = None,
    display_name: Annotated[str, typer.Option(help="Full name.")] = "",
    email: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Add an API user; then `cityvitals tokens create NAME`."""
    with _connect() as conn:
        try:
            user = add_user(
                conn, name, role, _now(), team=team, display_name=display_name, email=email
            )
        except AuthError as exc:
            raise _fail(str(exc)) from None
    team_text = f" of team {user.team}" if user.team else ""
    console.print(f"user {escape(user.name)}: {user.role.value}{escape(team_text)}")


@users_app.command("list")
def users_list() -> None:
    """Users, their roles and teams."""
    with _connect() as conn:
        found = list_users(conn)
    table = Table("name", "role", "team", "display name", "email", "created", "disabled")
    for u in found:
        table.add_row(
            escape(u.name),
            u.role.value,
            escape(u.team or ""),
            escape(u.display_name),
            escape(u.email or ""),
            _local(u.created_at),
            _local(u.disabled_at),
        )
    console.print(table)


@users_app.command("disable")
def users_disable(name: Annotated[str, typer.Argument()]) -> None:
    """Disable a user: their tokens stop working at once."""
    with _connect() as conn:
        try:
            disable_user(conn, name, _now())
        except AuthError as exc:
            raise _fail(str(exc)) from None
    console.print(f"user {escape(name)} disabled; their tokens no longer work")


@tokens_app.command("create")
def tokens_create(
    user: Annotated[str, typer.Argument(help="The user the token acts as.")],
    label: Annotated[str, typer.Option(help="What it is for, e.g. 'flood team tablet'.")] = "",
    expires: Annotated[
        str | None, typer.Option(help="Lifetime (90d) or an end time (ISO 8601); default never.")
    ] = None,
) -> None:
    """Make an API token. It is printed once: store it now."""
    now = _now()
    expires_at: datetime | None = None
    if expires is not None:
        try:
            expires_at = now + parse_duration(expires)
        except ValueError:
            expires_at = _when(expires, "--expires")
    with _connect() as conn:
        try:
            info, text = create_token(conn, user, now, label=label, expires_at=expires_at)
        except AuthError as exc:
            raise _fail(str(exc)) from None
    err.print(
        f"token {info.prefix} for {escape(user)}"
        + (f", expires {_local(info.expires_at)}" if info.expires_at else "")
        + " — shown once, store it now:"
    )
    typer.echo(text)


@tokens_app.command("list")
def tokens_list(user: Annotated[str | None, typer.Option(help="Only this user's.")] = None) -> None:
    """Tokens (prefixes only; secrets are never stored)."""
    now = _now()
    with _connect() as conn:
        found = list_tokens(conn, user)
    table = Table("prefix", "user", "label", "created", "expires", "last used", "state")
    for t in found:
        if t.revoked_at is not None:
            state = "revoked"
        elif t.expires_at is not None and t.expires_at <= now:
            state = "expired"
        else:
            state = "active"
        table.add_row(
            t.prefix,
            escape(t.user_name),
            escape(t.label),
            _local(t.created_at),
            _local(t.expires_at),
            _local(t.last_used_at),
            state,
        )
    console.print(table)


@tokens_app.command("revoke")
def tokens_revoke(
    prefix: Annotated[str, typer.Argument(help="The token's prefix (or the whole token).")],
) -> None:
    """Revoke a token: it stops working at once."""
    with _connect() as conn:
        try:
            info = revoke_token(conn, prefix, _now())
        except AuthError as exc:
            raise _fail(str(exc)) from None
    console.print(f"token {info.prefix} of {escape(info.user_name)} revoked")


# --- serving -------------------------------------------------------------------------------


def api() -> None:
    """Serve the HTTP API (OpenAPI docs at /docs) until Ctrl-C."""
    from cityvitals.api_server import serve_forever
    from cityvitals.cli import _database, _logging, _settings

    settings = _settings()
    _logging(settings)
    with _database(settings) as url:
        console.print(f"CityVitals API on {settings.api_url} (docs: {settings.api_url}/docs)")
        serve_forever(settings, url)
