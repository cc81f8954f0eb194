"""A database filled by a simulated scenario, as the platform would have filled it.

The scenario's fleet is played offline (no broker): its messages go through the
ingest's decoder and batch writer into `readings`, `events` and `device_status`,
the readings and events through the rule engine with the default rules, whose
transitions become `alerts` / `alert_events` (alerts/store.py) and whose vital
signs are stored on change (rules/store.py) — the same code the platform runs —
and the hourly rollup is materialized as the platform's refresher does.
Some alerts are then acknowledged, dispatched and closed by a team, so the
handling panels have something to show.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import psycopg

from alerts.store import record_transitions
from cityvitals.rollups import refresh_rollups
from devices.profile import load_profiles
from devices.registry_store import upsert_devices
from ingest.decode import MessageDecoder
from ingest.writer import Batch, BatchWriter, SeenDevice
from rules.config import load_rules
from rules.engine import Engine
from rules.store import save_vitals
from rules.vitals import VitalSign, changed, compute_vitals
from simulators.city import generate_city
from simulators.fleet import Fleet, sim_devices
from simulators.runner import fleet_stream
from simulators.scenario import load_scenario
from tests.scenarios import device_infos


@dataclass(frozen=True, slots=True)
class Played:
    start: datetime
    end: datetime
    alerts: int
    readings: int


def play_into(
    url: str,
    scenario: str = "typhoon",
    window: tuple[timedelta, timedelta] = (timedelta(hours=8), timedelta(hours=14)),
    devices: int | None = None,
    step: timedelta = timedelta(minutes=1),
) -> Played:
    """Play `window` of `scenario` (offsets from its start) into the database at `url`."""
    sc = load_scenario(scenario)
    profiles = load_profiles()
    city = generate_city(sc.city.districts, devices or sc.city.devices, sc.seed)
    records = list(city.devices)
    start, end = sc.start + window[0], sc.start + window[1]
    fleet = Fleet(sim_devices(records, profiles), sc.world(city.districts), start, sc.seed)
    engine = Engine(load_rules(profiles))
    engine.set_devices(device_infos(records, profiles))
    decoder = MessageDecoder(
        profiles, {r.device_id: r.profile for r in records}, future_tolerance=timedelta(days=3650)
    )
    with psycopg.connect(url) as conn:
        upsert_devices(conn, records)
    writer = BatchWriter(url)
    conn = psycopg.connect(url, autocommit=True)
    vitals: dict[tuple[str, str], VitalSign] = {}
    batch = Batch([], [], [], [], [], [])
    seen: dict[str, datetime] = {}
    flush_at = start + step
    stored = 0

    def flush(at: datetime) -> None:
        nonlocal batch, seen, stored
        batch.seen = [SeenDevice(d, t, None, 0, t) for d, t in seen.items()]
        stored += writer.write(batch).readings
        writer.conn.commit()
        transitions = engine.ingest(batch.readings) + engine.events(batch.events)
        transitions += engine.tick(at)
        record_transitions(conn, transitions)
        signs = compute_vitals(engine, at)
        new = changed(vitals, signs)
        if new:
            save_vitals(conn, new)
            vitals.update({s.key: s for s in new})
        batch, seen = Batch([], [], [], [], [], []), {}

    for msg in fleet_stream(fleet, end):
        if msg.t >= flush_at:
            flush(flush_at)
            flush_at = max(flush_at + step, msg.t)
        d = decoder.decode(msg.topic, msg.payload, msg.t)
        batch.readings += d.readings
        batch.events += d.events
        if d.status is not None:
            batch.statuses.append(d.status)
        if d.dead_letter is not None:
            batch.dead_letters.append(d.dead_letter)
        if d.device_id is not None and d.readings:
            seen[d.device_id] = max(seen.get(d.device_id, d.readings[-1].ts), d.readings[-1].ts)
    flush(end)
    writer.close()
    refresh_rollups(url)  # as the platform does every few minutes (plain PostgreSQL)
    with conn:
        _handle_some(conn, end)
        row = conn.execute("SELECT count(*) FROM alerts").fetchone()
    return Played(start, end, int(row[0]) if row else 0, stored)


def _handle_some(conn: psycopg.Connection[tuple[object, ...]], at: datetime) -> None:
    """Half the alerts acknowledged and dispatched by a team within minutes, a quarter
    closed, each step an audit row, as the alerts API would record them."""
    with conn.transaction():
        rows = conn.execute("SELECT id, started_at, domain FROM alerts ORDER BY id").fetchall()
        for i, (alert_id, started, domain) in enumerate(rows):
            if i % 2:
                continue
            team = f"{domain}-team"
            steps = [
                ("acknowledged", "acknowledged_at", timedelta(minutes=2 + i % 5)),
                ("dispatched", "dispatched_at", timedelta(minutes=6 + i % 7)),
            ]
            if i % 4 == 0:
                steps += [
                    ("handled", "handled_at", timedelta(minutes=30)),
                    ("closed", "closed_at", timedelta(minutes=40)),
                ]
            previous = "new"
            for state, column, after in steps:
                when = min(started + after, at)  # type: ignore[operator]
                conn.execute(
                    f"UPDATE alerts SET handling = %s, {column} = %s, team = %s, updated_at = %s"
                    " WHERE id = %s",
                    (state, when, team, when, alert_id),
                )
                conn.execute(
                    "INSERT INTO alert_events (alert_id, at, actor, dimension, from_state,"
                    " to_state, note) VALUES (%s, %s, %s, 'handling', %s, %s, %s)",
                    (alert_id, when, "operator-1", previous, state, f"{state} in the test"),
                )
                previous = state
