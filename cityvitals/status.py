"""`cityvitals status`: what the platform is doing, read from the database.

The ingest's rates and backlog, dead letters, devices, then what operators act
on: the city's vital signs, open alerts by level and handling state, rules in
error, and the notification outbox.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import psycopg
from rich.console import Group
from rich.markup import escape
from rich.table import Table

from alerts.model import Level

LIVE_SECONDS = 60
"""An ingest process whose heartbeat is older than this is shown as stopped."""


@dataclass(frozen=True)
class IngestRow:
    instance: str
    live: bool
    connected: bool
    updated_at: datetime
    messages: int
    readings: int
    duplicates: int
    dead_letters: int
    out_of_range: int
    provisional: int
    backlog: int
    readings_per_s: float
    messages_per_s: float
    last_error: str | None


@dataclass(frozen=True)
class PlatformStatus:
    ingest: list[IngestRow]
    dead_letters: list[tuple[str, int, int, datetime]]
    """(reason, total, in the last hour, latest)"""
    devices: list[tuple[str, int, int, int]]
    """(profile, devices, online, provisional)"""
    vitals: list[tuple[str, int, datetime]]
    """The city's latest level per domain: (domain, level, since)"""
    open_alerts: list[tuple[int, str, int]]
    """(level, handling, count) of alerts not closed"""
    failing_rules: list[tuple[str, int, str | None, datetime | None]]
    """(rule, errors, last error, when) of rules that have failed"""
    notifications: dict[str, int]
    """Outbox rows by status: pending, sending, sent, failed"""


def collect(url: str) -> PlatformStatus:
    with psycopg.connect(url, connect_timeout=5) as conn:
        ingest = [
            IngestRow(*row)
            for row in conn.execute(
                """SELECT instance, updated_at > now() - make_interval(secs => %s), connected,
                          updated_at, messages, readings, duplicates, dead_letters,
                          out_of_range, provisional, backlog, readings_per_s, messages_per_s,
                          last_error
                   FROM ingest_stats
                   WHERE updated_at > now() - interval '1 day'
                   ORDER BY updated_at DESC""",
                (LIVE_SECONDS,),
            )
        ]
        dead = conn.execute(
            """SELECT reason, count(*),
                      count(*) FILTER (WHERE received_at > now() - interval '1 hour'),
                      max(received_at)
               FROM dead_letters GROUP BY reason ORDER BY count(*) DESC"""
        ).fetchall()
        devices = conn.execute(
            """SELECT d.profile, count(*), count(*) FILTER (WHERE s.online),
                      count(*) FILTER (WHERE d.provisional)
               FROM devices d LEFT JOIN device_status s USING (device_id)
               GROUP BY d.profile ORDER BY d.profile"""
        ).fetchall()
        vitals = conn.execute(
            """SELECT DISTINCT ON (domain) domain, level, ts FROM vital_signs
               WHERE scope = 'city' ORDER BY domain, ts DESC"""
        ).fetchall()
        open_alerts = conn.execute(
            """SELECT level, handling, count(*) FROM alerts WHERE handling <> 'closed'
               GROUP BY level, handling"""
        ).fetchall()
        failing = conn.execute(
            """SELECT rule, errors, last_error, last_error_at FROM rule_health
               WHERE errors > 0 ORDER BY last_error_at DESC NULLS LAST LIMIT 10"""
        ).fetchall()
        outbox: dict[str, int] = dict(
            conn.execute("SELECT status, count(*) FROM notifications GROUP BY status").fetchall()
        )
    return PlatformStatus(ingest, dead, devices, vitals, open_alerts, failing, outbox)


HANDLING = ("new", "acknowledged", "dispatched", "handled")


def _level(level: int) -> str:
    lv = Level(level)
    return f"[{lv.colour}]{lv.label}[/]"


def render(url: str) -> Group:
    s = collect(url)
    ingest = Table(title="Ingest", title_justify="left")
    for col in (
        "instance",
        "state",
        "readings/s",
        "messages/s",
        "backlog",
        "readings",
        "duplicates",
        "dead letters",
        "out of range",
        "provisional",
        "last error",
    ):
        ingest.add_column(
            col, justify="left" if col in ("instance", "state", "last error") else "right"
        )
    for r in s.ingest:
        state = (
            ("[green]running[/green]" if r.connected else "[yellow]disconnected[/yellow]")
            if r.live
            else f"[dim]stopped {r.updated_at:%Y-%m-%d %H:%M:%S}[/dim]"
        )
        ingest.add_row(
            escape(r.instance),
            state,
            f"{r.readings_per_s:,.0f}" if r.live else "-",
            f"{r.messages_per_s:,.0f}" if r.live else "-",
            f"{r.backlog:,}",
            f"{r.readings:,}",
            f"{r.duplicates:,}",
            f"{r.dead_letters:,}",
            f"{r.out_of_range:,}",
            f"{r.provisional:,}",
            escape(r.last_error or ""),
        )
    if not s.ingest:
        ingest.caption = "no ingest process has reported in the last day"
    dead = Table(
        "reason", "total", "last hour", "latest", title="Dead letters", title_justify="left"
    )
    for reason, total, hour, latest in s.dead_letters:
        dead.add_row(reason, f"{total:,}", f"{hour:,}", f"{latest:%Y-%m-%d %H:%M:%S}")
    if not s.dead_letters:
        dead.caption = "none"
    devices = Table(
        "profile", "devices", "online", "provisional", title="Devices", title_justify="left"
    )
    for profile, n, online, provisional in s.devices:
        devices.add_row(profile, f"{n:,}", f"{online:,}", f"{provisional:,}")
    return Group(ingest, dead, devices, *_operations(s))


def _operations(s: PlatformStatus) -> list[Table]:
    vitals = Table("domain", "level", "since", title="City vital signs", title_justify="left")
    for domain, level, since in s.vitals:
        vitals.add_row(escape(domain), _level(level), f"{since:%Y-%m-%d %H:%M:%S}")
    if not s.vitals:
        vitals.caption = "none computed yet"
    alerts = Table("level", *HANDLING, "open", title="Open alerts", title_justify="left")
    counts = {(level, handling): n for level, handling, n in s.open_alerts}
    for level in sorted({level for level, _, _ in s.open_alerts}, reverse=True):
        row = [counts.get((level, h), 0) for h in HANDLING]
        alerts.add_row(_level(level), *(f"{n:,}" for n in row), f"{sum(row):,}")
    if not s.open_alerts:
        alerts.caption = "none open"
    tables = [vitals, alerts]
    if s.failing_rules:
        rules = Table(
            "rule", "errors", "last error", "at", title="Rules in error", title_justify="left"
        )
        for rule, errors, last, at in s.failing_rules:
            when = f"{at:%Y-%m-%d %H:%M:%S}" if at is not None else ""
            rules.add_row(escape(rule), f"{errors:,}", escape(last or ""), when)
        tables.append(rules)
    outbox = Table(
        "pending", "sending", "sent", "failed", title="Notifications", title_justify="left"
    )
    outbox.add_row(
        *(f"{s.notifications.get(k, 0):,}" for k in ("pending", "sending", "sent", "failed"))
    )
    if s.notifications.get("failed"):
        outbox.caption = "failed: see `cityvitals notifications list --status failed`"
        outbox.caption_justify = "left"
    tables.append(outbox)
    return tables
