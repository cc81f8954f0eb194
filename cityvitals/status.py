"""`cityvitals status`: what the ingest is doing, read from the database."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import psycopg
from rich.console import Group
from rich.markup import escape
from rich.table import Table

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
    return PlatformStatus(ingest, dead, devices)


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
    return Group(ingest, dead, devices)
