# ruff: noqa: E402 - the path fix below must run before the project's packages are imported
"""Dashboard query benchmark: every query of the wall screen over 24 h and 30 days.

    .venv/bin/python bench/dashboards.py [--devices 10000] [--days 30] [--interval 10m]
                                         [--all-dashboards] [--keep] [--json out.json]

A database with `--days` simulated days of a city of `--devices` devices is
generated in SQL (generate_series, no simulator, no broker): the registry (the
simulator's profile mix in 16 districts), one reading of each device's main
metric every `--interval` (air stations two: PM2.5 and PM10), battery voltages
hourly for battery-powered devices, device status, elevator events, dead
letters, ~1000 alerts a day with their audit trail (handled and closed, except
the last hours'), and vital signs changing every ~20 minutes per district and
domain. Then each query of the wall-screen dashboard, with Grafana's macros
expanded for "All" and a 1000-point panel (dashboards/macros.py), is run as the
read-only Grafana role on plain PostgreSQL: once cold, then `--repeat` times;
the figure is the median of the repeats. `--all-dashboards` times the other
dashboards too (for information; their targets are not set by the issue).

Targets: the slowest wall-screen query ≤ 1 s over 24 h and ≤ 3 s over 30 days.
The exit code is 1 when one is missed.

PostgreSQL is started in a temporary directory with the platform's settings
(`cityvitals.services.LocalPostgres`) unless `--database-url` is given; the
generated database is dropped at the end unless `--keep` (then `--reuse NAME`
skips the generation next time).
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _ROOT / "bench"]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import argparse
import contextlib
import json
import statistics
import string
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from bench.ingest import machine_info
from cityvitals.db import upgrade
from cityvitals.services import LocalPostgres
from dashboards.build import build_all
from dashboards.macros import ALL, TimeRange, VariableValue, parse_interval, render
from dashboards.queries import fixed_values, queries, variables

TARGETS = {"24h": 1.0, "30d": 3.0}
"""Seconds the slowest wall-screen query may take, by range."""

PROFILES = (
    # (profile, share in %, main metric, battery powered)
    ("elevator", 40, "load_pct", False),
    ("drainage", 22, "fill_ratio", True),
    ("noise", 14, "laeq_db", True),
    ("rain_gauge", 9, "rain_mm", True),
    ("water_level", 8, "level_m", True),
    ("air_quality", 7, "pm2_5", False),
)
DOMAIN_OF = {
    "elevator": "elevator",
    "drainage": "drainage",
    "noise": "noise",
    "rain_gauge": "meteorology",
    "water_level": "hydrology",
    "air_quality": "air",
}


def _profile_case(column: str) -> str:
    """SQL choosing a device's profile from its number: the shares of PROFILES."""
    parts, upto = [], 0
    for profile, share, _, _ in PROFILES:
        upto += share
        parts.append(f"WHEN {column} % 100 < {upto} THEN '{profile}'")
    return "CASE " + " ".join(parts) + " END"


def generate(
    url: str, devices: int, days: int, interval: timedelta, end: datetime
) -> dict[str, Any]:
    """Fill the migrated database at `url`; returns the row counts and how long it took."""
    step = int(interval.total_seconds())
    start = end - timedelta(days=days)
    timings: dict[str, float] = {}
    with psycopg.connect(url, autocommit=True) as conn:

        def timed(
            label: str, sql: str, values: dict[str, Any] | None = None, done: str = ""
        ) -> None:
            """Run one step, unless `done` (a query) says an earlier run finished it."""
            if done and conn.execute(done).fetchone() == (True,):
                print(f"  {label:<28}    done before", flush=True)
                return
            t = time.perf_counter()
            # Only numbers and instants of our own go in: no parameters, so `%` is modulo.
            conn.execute(string.Template(sql).substitute(values or {}).encode())
            timings[label] = round(time.perf_counter() - t, 1)
            print(f"  {label:<28} {timings[label]:7.1f} s", flush=True)

        conn.execute("SET maintenance_work_mem = '512MB'")
        conn.execute("SET work_mem = '64MB'")
        p = {
            "n": devices,
            "days": days,
            "step": step,
            "start": f"'{start.isoformat()}'",
            "end": f"'{end.isoformat()}'",
        }
        timed(
            "devices",
            f"""
            INSERT INTO devices (device_id, profile, district, name, lat, lon, attributes)
            SELECT format('dev-%s', lpad(i::text, 6, '0')), prof,
                   format('d%s', lpad((1 + i % 16)::text, 2, '0')), format('device %s', i),
                   31.0 + (i % 16) / 40.0 + (i * 7919 % 1000) / 40000.0,
                   121.2 + (i % 16) / 30.0 + (i * 104729 % 1000) / 30000.0,
                   CASE prof
                     WHEN 'water_level' THEN '{{"warning_level_m": 5.0,
                       "guaranteed_level_m": 6.5, "historical_max_m": 7.5}}'::jsonb
                     WHEN 'noise' THEN jsonb_build_object('zone',
                       (ARRAY['0', '1', '2', '3', '4a', '4b'])[1 + i % 6])
                     WHEN 'drainage' THEN '{{"pipe_diameter_mm": 600}}'::jsonb
                     ELSE '{{}}'::jsonb END
            FROM (SELECT i, {_profile_case("i")} AS prof
                  FROM generate_series(0, $n - 1) AS i) d
            """,
            p,
            "SELECT EXISTS (SELECT 1 FROM devices)",
        )
        if conn.execute("SELECT NOT EXISTS (SELECT 1 FROM readings)").fetchone() == (True,):
            # Loading without indexes, then indexing, is several times faster.
            conn.execute("ALTER TABLE readings DROP CONSTRAINT IF EXISTS readings_pkey")
            conn.execute("DROP INDEX IF EXISTS readings_ts_brin")
        metric_case = (
            "CASE d.profile "
            + " ".join(f"WHEN '{prof}' THEN '{metric}'" for prof, _, metric, _ in PROFILES)
            + " END"
        )
        timed(
            "readings (main metric)",
            f"""
            INSERT INTO readings (ts, device_id, metric, value)
            SELECT t + make_interval(secs => n % $step), d.device_id, {metric_case},
                   CASE d.profile
                     WHEN 'elevator' THEN (n * 37 + extract(epoch FROM t)::bigint) % 90
                     WHEN 'drainage' THEN 0.3 + 0.2 * sin(extract(epoch FROM t) / 7200.0 + n)
                     WHEN 'noise' THEN 55 + 8 * sin(extract(epoch FROM t) / 43200.0 + n)
                     WHEN 'rain_gauge'
                         THEN greatest(0, 2 * sin(extract(epoch FROM t) / 20000.0 + n))
                     WHEN 'water_level' THEN 3.5 + sin(extract(epoch FROM t) / 86400.0 + n)
                     ELSE 40 + 30 * sin(extract(epoch FROM t) / 30000.0 + n) END
            FROM (SELECT device_id, profile,
                         substring(device_id FROM 5)::int AS n FROM devices) d
            CROSS JOIN generate_series($start::timestamptz, $end::timestamptz
                                       - make_interval(secs => $step),
                                       make_interval(secs => $step)) AS t
            """,
            p,
            "SELECT EXISTS (SELECT 1 FROM readings)",
        )
        timed(
            "readings (pm10, batteries)",
            """
            INSERT INTO readings (ts, device_id, metric, value)
            SELECT t + make_interval(secs => n % $step), d.device_id, 'pm10',
                   70 + 40 * sin(extract(epoch FROM t) / 30000.0 + n)
            FROM (SELECT device_id, substring(device_id FROM 5)::int AS n FROM devices
                  WHERE profile = 'air_quality') d
            CROSS JOIN generate_series($start::timestamptz, $end::timestamptz
                                       - make_interval(secs => $step),
                                       make_interval(secs => $step)) AS t
            UNION ALL
            SELECT t + make_interval(secs => n % 3600), d.device_id, 'battery_v',
                   3.9 - (n % 50) / 100.0 - extract(epoch FROM t - $start::timestamptz)
                         / 86400.0 / 1000.0
            FROM (SELECT device_id, substring(device_id FROM 5)::int AS n FROM devices
                  WHERE profile IN ('drainage', 'noise', 'rain_gauge', 'water_level')) d
            CROSS JOIN generate_series($start::timestamptz, $end::timestamptz
                                       - INTERVAL '1 hour', INTERVAL '1 hour') AS t
            """,
            p,
            "SELECT EXISTS (SELECT 1 FROM readings WHERE metric = 'battery_v')",
        )
        timed(
            "readings primary key",
            "ALTER TABLE readings ADD PRIMARY KEY (device_id, metric, ts)",
            done="SELECT EXISTS (SELECT FROM pg_constraint WHERE conname = 'readings_pkey')",
        )
        timed(
            "readings BRIN index",
            "CREATE INDEX readings_ts_brin ON readings USING brin (ts)",
            done="SELECT to_regclass('readings_ts_brin') IS NOT NULL",
        )
        timed(
            "device_status, events",
            """
            INSERT INTO device_status (device_id, state, online, last_seen, changed_at)
            SELECT device_id, 'online', true,
                   CASE WHEN substring(device_id FROM 5)::int % 33 = 0
                        THEN $end::timestamptz - INTERVAL '3 hours'
                        ELSE $end::timestamptz - make_interval(
                            secs => substring(device_id FROM 5)::int % $step) END,
                   $start
            FROM devices;
            INSERT INTO events (ts, device_id, type, code)
            SELECT $start::timestamptz + make_interval(secs => (k * 7919) % ($days * 86400)),
                   format('dev-%s', lpad((((k * 104729) % $n) / 100 * 100
                                           + (k % 40))::text, 6, '0')),
                   (ARRAY['door_close_fault', 'door_open_fault', 'back_to_normal',
                          'trapped_passengers', 'main_power_off'])[1 + k % 5],
                   (ARRAY[2, 3, 40, 11, 41])[1 + k % 5]
            FROM generate_series(1::bigint, 4 * $n) AS k
            ON CONFLICT DO NOTHING;
            INSERT INTO dead_letters (received_at, topic, payload, payload_size, reason)
            SELECT $start::timestamptz + make_interval(secs => (k * 7919) % ($days * 86400)),
                   'city/d01/noise/x/telemetry', '\\x7b'::bytea, 1,
                   (ARRAY['bad_json', 'unknown_profile', 'out_of_range'])[1 + k % 3]
            FROM generate_series(1::bigint, $n) AS k
            """,
            p,
            "SELECT EXISTS (SELECT 1 FROM device_status)",
        )
        timed(
            "alerts, alert_events",
            """
            INSERT INTO alerts (fingerprint, rule, domain, device_id, district, level, max_level,
                                condition, handling, team, summary, started_at, updated_at,
                                resolved_at, acknowledged_at, dispatched_at, handled_at, closed_at)
            SELECT format('fp-%s', k), d.profile || '_rule', dom.domain, d.device_id, d.district,
                   lv, lv,
                   CASE WHEN open THEN 'firing' ELSE 'resolved' END,
                   CASE WHEN NOT open THEN 'closed'
                        ELSE (ARRAY['new', 'acknowledged', 'dispatched', 'handled'])[1 + k % 4] END,
                   dom.domain || '-team', 'bench alert', st, st,
                   CASE WHEN open THEN NULL ELSE st + INTERVAL '40 minutes' END,
                   CASE WHEN NOT open OR k % 4 > 0
                        THEN st + make_interval(secs => 60 + k % 600) END,
                   CASE WHEN NOT open OR k % 4 > 1 THEN st + INTERVAL '15 minutes' END,
                   CASE WHEN NOT open OR k % 4 > 2 THEN st + INTERVAL '50 minutes' END,
                   CASE WHEN NOT open THEN st + make_interval(secs => 3600 + k % 7200) END
            FROM generate_series(1::bigint, 1000 * $days) AS k
            CROSS JOIN LATERAL (
                SELECT $end::timestamptz - make_interval(
                           secs => ((k * 7919) % ($days * 86400))) AS st,
                       1 + (k * k) % 4 AS lv) s
            CROSS JOIN LATERAL (SELECT st > $end::timestamptz - INTERVAL '6 hours' AS open) o
            JOIN devices d
                ON d.device_id = format('dev-%s', lpad(((k * 104729) % $n)::text, 6, '0'))
            CROSS JOIN LATERAL (SELECT CASE d.profile WHEN 'elevator' THEN 'elevator'
                     WHEN 'drainage' THEN 'drainage' WHEN 'noise' THEN 'noise'
                     WHEN 'rain_gauge' THEN 'meteorology' WHEN 'water_level' THEN 'hydrology'
                     ELSE 'air' END AS domain) dom;
            INSERT INTO alert_events (alert_id, at, actor, dimension, from_state, to_state, level)
            SELECT a.id, e.at, e.actor, e.dim, e.f, e.t, a.level
            FROM alerts a
            CROSS JOIN LATERAL (VALUES
                (a.started_at, 'rules', 'condition', NULL, 'firing'),
                (a.resolved_at, 'rules', 'condition', 'firing', 'resolved'),
                (a.acknowledged_at, 'operator', 'handling', 'new', 'acknowledged'),
                (a.dispatched_at, 'operator', 'handling', 'acknowledged', 'dispatched'),
                (a.handled_at, 'team', 'handling', 'dispatched', 'handled'),
                (a.closed_at, 'operator', 'handling', 'handled', 'closed')
            ) AS e (at, actor, dim, f, t)
            WHERE e.at IS NOT NULL
            """,
            p,
            "SELECT EXISTS (SELECT 1 FROM alerts)",
        )
        timed(
            "vital_signs",
            """
            INSERT INTO vital_signs (ts, scope, domain, level, indicators)
            SELECT $end::timestamptz - make_interval(secs => k * 1200 + o), s.scope, dm.domain,
                   CASE WHEN (k + o) % 17 = 0 THEN 1 + (k + o) % 4 ELSE 0 END,
                   jsonb_build_object('alerts_firing', (k + o) % 5,
                                      'online_share', 0.95 + (k % 5) / 100.0)
            FROM (SELECT DISTINCT district AS scope FROM devices UNION SELECT 'city') s
            CROSS JOIN unnest(cityvitals_vital_domains()) WITH ORDINALITY AS dm (domain, o)
            CROSS JOIN generate_series(0::bigint, ($days * 72) - 1) AS k
            ON CONFLICT DO NOTHING
            """,
            p,
            "SELECT EXISTS (SELECT 1 FROM vital_signs)",
        )
        timed("vacuum analyze", "VACUUM ANALYZE")
        if conn.execute("SELECT to_regclass('readings_hourly') IS NOT NULL").fetchone() == (True,):
            # What the running platform does every few minutes on plain PostgreSQL.
            timed(
                "hourly rollup (refresh)",
                "SELECT cityvitals_refresh_rollups($end::timestamptz + INTERVAL '1 hour');"
                " ANALYZE readings_hourly",
                p,
                "SELECT materialized_until > '-infinity' FROM rollup_state",
            )
        counts = {
            t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # type: ignore[index]
            for t in (
                "devices",
                "readings",
                "events",
                "alerts",
                "alert_events",
                "vital_signs",
                "dead_letters",
            )
        }
        size = conn.execute("SELECT pg_size_pretty(pg_database_size(current_database()))")
        counts["database_size"] = size.fetchone()[0]  # type: ignore[index]
        if conn.execute("SELECT to_regclass('readings_hourly') IS NOT NULL").fetchone() == (True,):
            hourly = conn.execute("SELECT count(*) FROM readings_hourly").fetchone()
            counts["readings_hourly"] = hourly[0]  # type: ignore[index]
    return {"rows": counts, "seconds": timings}


def time_queries(url: str, names: list[str], end: datetime, repeat: int) -> list[dict[str, Any]]:
    """Each query of the named dashboards over 24 h and 30 days, as Grafana's role."""
    out = []
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET ROLE cityvitals_grafana")
        conn.execute("SET default_transaction_read_only = on")
        for built in build_all():
            if built.name not in names:
                continue
            doc = built.document
            defs = variables(doc)
            values: dict[str, VariableValue] = {n: ALL for n in defs} | fixed_values(doc)
            for q in queries(doc):
                for label, span in (("24h", timedelta(hours=24)), ("30d", timedelta(days=30))):
                    sql = render(q.sql, TimeRange.last(span, end), defs, values)
                    t = time.perf_counter()
                    rows = len(conn.execute(sql).fetchall())  # type: ignore[arg-type]
                    cold = time.perf_counter() - t
                    runs = []
                    for _ in range(repeat):
                        t = time.perf_counter()
                        conn.execute(sql).fetchall()  # type: ignore[arg-type]
                        runs.append(time.perf_counter() - t)
                    out.append(
                        {
                            "dashboard": built.name,
                            "kind": q.kind,
                            "query": f"{q.title} {q.ref_id}".strip(),
                            "range": label,
                            "rows": rows,
                            "cold_s": round(cold, 4),
                            "median_s": round(statistics.median(runs), 4),
                        }
                    )
                    r = out[-1]
                    print(
                        f"  {r['dashboard']:<20} {r['range']:>4} {r['median_s']:8.3f} s"
                        f" (cold {r['cold_s']:7.3f}) {r['rows']:7d} rows  {r['kind']} {r['query']}",
                        flush=True,
                    )
    return out


@contextlib.contextmanager
def database(given: str | None, reuse: str | None, keep: bool) -> Iterator[tuple[str, bool]]:
    """(URL of the bench database, whether it still needs its data)."""
    with contextlib.ExitStack() as stack:
        if given is None:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cv-bench-dash-")))
            pg = LocalPostgres(tmp / "postgres", database="postgres")
            pg.start()
            stack.callback(pg.stop)
            admin = pg.url("postgres")
        else:
            admin = given
        name = reuse or f"bench_dash_{uuid.uuid4().hex[:8]}"
        base = admin.rsplit("/", 1)[0]
        url = f"{base}/{name}"
        with psycopg.connect(admin, autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
            ).fetchone()
            if not exists:
                conn.execute(f"CREATE DATABASE {name}")
        fresh = not exists
        if fresh:
            upgrade(url)
        try:
            yield url, fresh
        finally:
            if not keep and not reuse:
                with psycopg.connect(admin, autocommit=True) as conn:
                    conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--interval", default="10m", help="main metric's interval (default 10m)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--all-dashboards", action="store_true")
    parser.add_argument("--database-url", help="a PostgreSQL to create the bench database in")
    parser.add_argument("--keep", action="store_true", help="keep the generated database")
    parser.add_argument("--reuse", metavar="NAME", help="use (or create and keep) this database")
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args(argv)

    machine = machine_info()
    print(
        f"machine: {machine['cpu']}, {machine['cores_usable']}/{machine['cores']} cores,"
        f" {machine['ram_bytes'] / 2**30:.1f} GiB, load {machine['load_average'][0]:.2f}"
    )
    end = datetime.now(UTC).replace(second=0, microsecond=0)
    interval = timedelta(seconds=parse_interval(args.interval))
    with database(args.database_url, args.reuse, args.keep) as (url, fresh):
        with psycopg.connect(url) as conn:
            server = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
            if not fresh:
                row = conn.execute("SELECT max(ts) FROM readings").fetchone()
                end = row[0] if row and row[0] else end  # type: ignore[index]
        print(f"PostgreSQL {server} (plain), database {url.rsplit('/', 1)[1]}")
        generated: dict[str, Any] = {}
        # With --reuse, the steps an earlier run finished are skipped.
        print(
            f"generating {args.devices} devices x {args.days} days, main metric every"
            f" {args.interval} ..."
        )
        generated = generate(url, args.devices, args.days, interval, end)
        print(f"  rows: {generated['rows']}")
        names = [b.name for b in build_all()] if args.all_dashboards else ["city-vital-signs"]
        print("timing (median of repeats, as the read-only Grafana role):")
        results = time_queries(url, names, end, args.repeat)

    wall = [r for r in results if r["dashboard"] == "city-vital-signs"]
    ok = True
    print("\nwall screen: slowest query per range")
    for label, target in TARGETS.items():
        slowest = max((r for r in wall if r["range"] == label), key=lambda r: r["median_s"])
        passed = slowest["median_s"] <= target
        ok &= passed
        print(
            f"  {label:>4}: {slowest['median_s']:.3f} s (cold {slowest['cold_s']:.3f} s)"
            f" {slowest['query']!r}  target <= {target:g} s  {'PASS' if passed else 'FAIL'}"
        )
    if args.all_dashboards:
        print("other dashboards: slowest query per range (no target)")
        for label in TARGETS:
            rows = [
                r for r in results if r["range"] == label and r["dashboard"] != "city-vital-signs"
            ]
            slowest = max(rows, key=lambda r: r["median_s"])
            print(
                f"  {label:>4}: {slowest['median_s']:.3f} s {slowest['dashboard']}"
                f" {slowest['query']!r}"
            )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": machine,
                    "postgresql": server,
                    "devices": args.devices,
                    "days": args.days,
                    "interval": args.interval,
                    "generated": generated,
                    "results": results,
                    "targets": TARGETS,
                    "passed": ok,
                },
                indent=2,
                default=str,
            )
        )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
