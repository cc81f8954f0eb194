"""Every dashboard query runs, as Grafana would send it, against a real PostgreSQL filled
by a simulated typhoon (tests/integration/dashboard_scenario.py), as the read-only role
Grafana logs in as.

Grafana's macros and template variables are expanded by dashboards/macros.py for the
scenario's window, a day and 30 days, with every variable on "All", and each query
variable on one value and on two; panels the scenario guarantees data for must return
rows. The SQL helpers of migration 0007 are checked against the Python they mirror.
"""

from __future__ import annotations

import itertools
import math
import re
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from cityvitals.db import MIGRATIONS_DIR as MIGRATIONS
from cityvitals.db import upgrade
from cityvitals.services import LocalPostgres
from dashboards.build import Built, build_all
from dashboards.macros import ALL, TimeRange, VariableValue, render
from dashboards.queries import Query, fixed_values, queries, variables
from rules.aqi import BREAKPOINTS, hourly_aqi, iaqi
from rules.derived import NOISE_LIMITS
from rules.vitals import DOMAINS, RULE_DOMAINS
from tests.integration.dashboard_scenario import Played, play_into

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MAY_BE_EMPTY = {
    # Nothing in a four-hour typhoon window guarantees these.
    ("cityvitals-air", "Open air alerts"),
    ("cityvitals-elevators", "Faults and events by code"),
    ("cityvitals-elevators", "Events per interval"),
    ("cityvitals-elevators", "Trapped-passenger incidents"),
    ("cityvitals-elevators", "Out of service or in fault now"),
    ("cityvitals-elevators", "Open elevator alerts"),
    ("cityvitals-noise", "Open noise alerts"),
    ("cityvitals-device-health", "Silent devices"),
    ("cityvitals-device-health", "Dead letters by reason"),
    ("cityvitals-device-health", "Dead letters in the range"),
    ("cityvitals-device-health", "Ingest processes"),
    ("cityvitals-drainage", "Cover, gas and water events"),
}


@pytest.fixture(scope="module")
def scenario(postgres: LocalPostgres, template_db: str) -> Iterator[tuple[str, Played]]:
    """Hours 10-14 of the typhoon (rainstorm signal blue → red, rivers at warning) for a
    city of 200 devices; about 20 s."""
    name = f"dash_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres.url("postgres"), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {template_db}")
    url = postgres.url(name)
    played = play_into(url, "typhoon", (timedelta(hours=10), timedelta(hours=14)), devices=200)
    assert played.alerts > 0 and played.readings > 0
    yield url, played
    with psycopg.connect(postgres.url("postgres"), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="module")
def grafana(scenario: tuple[str, Played]) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
    """A session as Grafana's role: its privileges, read-only."""
    url, _ = scenario
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET ROLE cityvitals_grafana")
        conn.execute("SET default_transaction_read_only = on")
        yield conn


@pytest.fixture(scope="module")
def built() -> list[Built]:
    return build_all()


def _run(conn: psycopg.Connection[tuple[Any, ...]], q: Query, sql: str) -> list[tuple[Any, ...]]:
    try:
        return conn.execute(sql).fetchall()  # type: ignore[arg-type]
    except psycopg.Error as exc:
        pytest.fail(f"{q.label}: {exc}\n{sql}")


def _options(
    conn: psycopg.Connection[tuple[Any, ...]], document: dict[str, Any], tr: TimeRange
) -> dict[str, list[str]]:
    """Each query variable's options, the others on All (as Grafana loads them)."""
    defs = variables(document)
    all_values: dict[str, VariableValue] = {n: ALL for n in defs} | fixed_values(document)
    out = {}
    for q in queries(document):
        if q.kind == "variable":
            rows = _run(conn, q, render(q.sql, tr, defs, all_values))
            out[q.title] = [str(r[0]) for r in rows]
    return out


@pytest.mark.parametrize("name", [b.name for b in build_all()])
def test_every_query_runs_for_every_selection(
    name: str,
    built: list[Built],
    scenario: tuple[str, Played],
    grafana: psycopg.Connection[tuple[Any, ...]],
) -> None:
    _, played = scenario
    document = next(b.document for b in built if b.name == name)
    window = TimeRange(played.start, played.end)
    defs = variables(document)
    fixed = fixed_values(document)
    options = _options(grafana, document, window)
    for var, values in options.items():
        assert values, f"{name}: variable {var} has no options"
    everything: dict[str, VariableValue] = {n: ALL for n in defs} | fixed
    selections: list[dict[str, VariableValue]] = [everything]
    for var, values in options.items():
        selections.append(everything | {var: values[:1]})
        selections.append(everything | {var: values[:2]})
        selections.append(everything | {var: values[0]})
    panel_queries = [q for q in queries(document) if q.kind != "variable"]
    for q in panel_queries:
        rows = _run(grafana, q, render(q.sql, window, defs, everything))
        if (q.dashboard, q.title) not in MAY_BE_EMPTY:
            assert rows, f"{q.label}: no rows for the typhoon window"
        for tr in (
            TimeRange.last(timedelta(days=1), played.end),
            TimeRange.last(timedelta(days=30), played.end),
        ):
            _run(grafana, q, render(q.sql, tr, defs, everything))
        for values in selections[1:]:
            _run(grafana, q, render(q.sql, window, defs, values))


def test_a_district_selection_narrows_the_wall_screen(
    built: list[Built], scenario: tuple[str, Played], grafana: psycopg.Connection[tuple[Any, ...]]
) -> None:
    _, played = scenario
    document = next(b.document for b in built if b.name == "city-vital-signs")
    window = TimeRange(played.start, played.end)
    grid = next(q for q in queries(document) if q.title == "Districts × domains")
    values: dict[str, VariableValue] = {n: ALL for n in variables(document)}
    every = _run(grafana, grid, render(grid.sql, window, variables(document), values))
    one = _run(
        grafana, grid, render(grid.sql, window, variables(document), values | {"district": "d01"})
    )
    assert [r[0] for r in every][:2] == ["city", "d01"]
    assert [r[0] for r in one] == ["city", "d01"]
    # The grid's columns are the vital-sign domains, levels 0-4.
    assert all(0 <= v <= 4 for r in every for v in r[1:] if v is not None)
    assert max(v for r in every for v in r[1:] if v is not None) >= 3  # the typhoon


def test_the_grafana_role_reads_and_only_reads(
    grafana: psycopg.Connection[tuple[Any, ...]],
) -> None:
    conn = grafana
    assert conn.execute("SELECT count(*) FROM vital_signs_latest").fetchone()
    assert conn.execute("SELECT count(*) FROM alert_handling_times").fetchone()
    conn.execute("SELECT id, reason, topic FROM dead_letters LIMIT 1")
    for forbidden in (
        "SELECT payload FROM dead_letters LIMIT 1",
        "SELECT * FROM users",
        "SELECT * FROM api_tokens",
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(forbidden)
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        conn.execute("DELETE FROM alerts")


def test_sql_helpers_match_the_python_they_mirror(
    grafana: psycopg.Connection[tuple[Any, ...]],
) -> None:
    conn = grafana
    row = conn.execute("SELECT cityvitals_vital_domains()").fetchone()
    assert row is not None and tuple(row[0]) == DOMAINS
    for rule_domain, vital in RULE_DOMAINS.items():
        assert conn.execute("SELECT cityvitals_vital_domain(%s)", (rule_domain,)).fetchone() == (
            vital,
        )
    assert conn.execute("SELECT cityvitals_vital_domain('bridges')").fetchone() == (None,)
    for zone, (day, night) in NOISE_LIMITS.items():
        got = conn.execute(
            "SELECT cityvitals_noise_limit(jsonb_build_object('zone', %s::text),"
            " '2026-07-20 10:00+08', 'Asia/Shanghai'),"
            " cityvitals_noise_limit(jsonb_build_object('zone', %s::text),"
            " '2026-07-20 23:30+08', 'Asia/Shanghai')",
            (zone, zone),
        ).fetchone()
        assert got == (day, night), zone


@pytest.mark.parametrize("rules", ["2012", "2026"])
def test_iaqi_in_sql_equals_rules_aqi(
    rules: str, grafana: psycopg.Connection[tuple[Any, ...]]
) -> None:
    cases = []
    for (pollutant, averaging), points in BREAKPOINTS[rules].items():  # type: ignore[index]
        top = points[-1][0]
        for c in {0, 0.4, 1, *(bp for bp, _ in points), *(bp + 0.5 for bp, _ in points)}:
            cases.append((pollutant, averaging, float(c)))
        for c in (top * 0.37, top * 0.81, top + 1, top * 3):
            cases.append((pollutant, averaging, round(float(c), 1)))
    for (pollutant, averaging, c), step in itertools.product(cases, (1.0, 0.33)):
        value = round(c * step, 2)
        want = iaqi(pollutant, value, averaging=averaging, rules=rules)  # type: ignore[arg-type]
        got = grafana.execute(
            "SELECT cityvitals_iaqi(%s, %s, %s, %s)", (rules, pollutant, averaging, value)
        ).fetchone()
        assert got == (want,), (rules, pollutant, averaging, value)


def test_hourly_aqi_in_sql_equals_rules_aqi(
    scenario: tuple[str, Played], grafana: psycopg.Connection[tuple[Any, ...]]
) -> None:
    """The typhoon is in July 2026: HJ 633-2026 rules, PM scored on 1-hour means."""
    _, played = scenario
    rows = grafana.execute(
        "SELECT bucket, device_id, aqi, primary_pollutant FROM air_quality_hourly(%s, %s)"
        " ORDER BY device_id, bucket LIMIT 40",
        (played.start, played.end),
    ).fetchall()
    assert rows
    for bucket, device_id, aqi, primary in rows:
        means = dict(
            grafana.execute(
                "SELECT metric, avg(value) FROM readings WHERE device_id = %s"
                " AND metric IN ('pm2_5', 'pm10', 'so2', 'no2', 'co', 'o3')"
                " AND ts >= %s AND ts < %s + INTERVAL '1 hour' GROUP BY metric",
                (device_id, bucket, bucket),
            ).fetchall()
        )
        want = hourly_aqi(means, bucket + timedelta(hours=1))
        assert aqi == want.aqi, (device_id, bucket, means)
        names = {"pm2_5": "PM2.5", "pm10": "PM10", "so2": "SO2", "no2": "NO2", "co": "CO"}
        names["o3"] = "O3"
        expected = ", ".join(names[p] for p in want.primary) if want.aqi > 50 else None
        assert (primary or None) == (expected or None), (device_id, bucket)
        assert not math.isnan(aqi)


def test_the_migration_gives_the_role_its_password_from_a_setting(
    empty_database: str, postgres: LocalPostgres
) -> None:
    """As docker-compose.yml's `migrate` service does with PGOPTIONS; the role exists
    already (roles belong to the cluster: the template database made it)."""
    try:
        upgrade(empty_database + "?options=-c%20cityvitals.grafana_password%3Ds3cret-1")
        with psycopg.connect(postgres.url("postgres")) as conn:
            row = conn.execute(
                "SELECT rolcanlogin, rolpassword IS NOT NULL FROM pg_authid"
                " WHERE rolname = 'cityvitals_grafana'"
            ).fetchone()
        assert row == (True, True)
        login = empty_database.replace("postgres@", "cityvitals_grafana:s3cret-1@")
        with psycopg.connect(login) as conn:
            assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
            assert conn.execute("SHOW statement_timeout").fetchone() == ("30s",)
            assert conn.execute("SELECT count(*) FROM device_alert_levels").fetchone() == (0,)
    finally:
        with psycopg.connect(postgres.url("postgres"), autocommit=True) as conn:
            conn.execute("ALTER ROLE cityvitals_grafana NOLOGIN PASSWORD NULL")


def test_the_timescaledb_readings_series_agrees_with_the_plain_one(
    scenario: tuple[str, Played],
) -> None:
    """No TimescaleDB here: its variant of readings_series (migration 0007) is created
    under another name over the plain rollup views, which have the continuous
    aggregates' names and columns, and must give the plain variant's hourly and
    per-minute buckets."""
    url, played = scenario
    text = (MIGRATIONS / "0007_grafana.sql").read_text()
    variants = re.findall(r"EXECUTE \$fn\$(.*?)\$fn\$;", text, re.S)
    assert len(variants) == 3 and "readings_1h" in variants[0]  # then the plain ones
    timescale = variants[0].replace("FUNCTION readings_series(", "FUNCTION readings_series_ts(")
    query = """
        SELECT s.t, s.metric, round(s.sum_value::numeric, 6), s.samples,
               round(s.min_value::numeric, 6), round(s.max_value::numeric, 6)
        FROM devices d
        CROSS JOIN LATERAL {fn}(d.device_id, ARRAY['level_m', 'rain_mm'], %s, %s, %s) s
        WHERE d.profile IN ('water_level', 'rain_gauge')
        ORDER BY d.device_id, 1, 2"""
    with psycopg.connect(url) as conn:
        conn.execute(timescale)
        for interval_ms in (3_600_000, 60_000):
            # Whole buckets only: the continuous aggregate's buckets start at their start.
            args = (played.start, played.end - timedelta(microseconds=1), interval_ms)
            plain = conn.execute(query.format(fn="readings_series"), args).fetchall()
            ts = conn.execute(query.format(fn="readings_series_ts"), args).fetchall()
            assert plain and ts == plain, interval_ms
        conn.rollback()


def test_the_benchmark_runs_on_a_small_city(postgres: LocalPostgres) -> None:
    """bench/dashboards.py end to end on 300 devices and 2 days (its figures are not
    checked here: see bench/README.md)."""
    from bench.dashboards import main

    name = f"bench_{uuid.uuid4().hex[:8]}"
    try:
        code = main(
            [
                "--devices",
                "300",
                "--days",
                "2",
                "--repeat",
                "1",
                "--reuse",
                name,
                "--database-url",
                postgres.url("postgres"),
            ]
        )
        assert code == 0
    finally:
        with psycopg.connect(postgres.url("postgres"), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_the_materialized_hourly_rollup_equals_the_view(scenario: tuple[str, Played]) -> None:
    """Plain PostgreSQL: readings_hourly, as the platform's refresher leaves it, holds
    what the readings_1h view computes, and readings_series reads it over long ranges."""
    url, played = scenario
    with psycopg.connect(url) as conn:
        view = conn.execute(
            "SELECT bucket, device_id, metric, samples, round(sum_value::numeric, 6)"
            " FROM readings_1h ORDER BY 1, 2, 3"
        ).fetchall()
        table = conn.execute(
            "SELECT bucket, device_id, metric, samples, round(sum_value::numeric, 6)"
            " FROM readings_hourly ORDER BY 1, 2, 3"
        ).fetchall()
        assert view and table == view
        month = (played.end - timedelta(days=30), played.end, 1_800_000)
        series = conn.execute(
            "SELECT s.t, s.metric, s.samples FROM devices d CROSS JOIN LATERAL"
            " readings_series(d.device_id, ARRAY['level_m'], %s, %s, %s) s"
            " WHERE d.profile = 'water_level' ORDER BY d.device_id, 1",
            month,
        ).fetchall()
        assert series and all(t.minute == 0 for t, _, _ in series)  # hourly buckets
        plan = "\n".join(
            r[0]
            for r in conn.execute(
                "EXPLAIN SELECT * FROM readings_series('x', ARRAY['level_m'], %s, %s, %s)", month
            )
        )
        assert "readings_hourly" in plan


def test_readings_after_the_last_refresh_are_read_raw_until_the_next(database: str) -> None:
    from cityvitals.rollups import RollupRefresher, refresh_rollups

    hour = datetime(2026, 5, 1, 10, tzinfo=UTC)
    with psycopg.connect(database) as conn:
        conn.execute(
            "INSERT INTO devices (device_id, profile, district) VALUES ('w1', 'water_level', '1')"
        )
        conn.execute(
            "INSERT INTO readings (ts, device_id, metric, value)"
            " SELECT %s + make_interval(mins => m), 'w1', 'level_m', m"
            " FROM generate_series(0, 179) m",
            (hour,),
        )
    args = (hour - timedelta(days=4), hour + timedelta(hours=3), 3_600_000)
    query = "SELECT t, samples, sum_value FROM readings_series('w1', ARRAY['level_m'], %s, %s, %s)"

    def series() -> list[tuple[Any, ...]]:
        with psycopg.connect(database) as conn:
            return sorted(conn.execute(query, args).fetchall())

    expected = [
        (hour + timedelta(hours=h), 60, float(sum(range(60 * h, 60 * h + 60)))) for h in range(3)
    ]
    assert series() == expected  # nothing materialized yet: all raw
    with psycopg.connect(database, autocommit=True) as conn:
        assert conn.execute(
            "SELECT cityvitals_refresh_rollups(%s)", (hour + timedelta(hours=2, minutes=5),)
        ).fetchone() == (2,)
        assert conn.execute(
            "SELECT cityvitals_refresh_rollups(%s)", (hour + timedelta(hours=2, minutes=30),)
        ).fetchone() == (0,)  # no new hour completed
    assert series() == expected  # two hours materialized, the third raw
    # A late reading in a materialized hour, within the look-back: counted at the next hour.
    with psycopg.connect(database) as conn:
        conn.execute(
            "INSERT INTO readings (ts, device_id, metric, value)"
            " VALUES (%s, 'w1', 'level_m', 1000)",
            (hour + timedelta(hours=1, seconds=30),),
        )
    assert refresh_rollups(database) > 0  # now() is past every hour here
    late = series()
    assert late[1][1:] == (61, expected[1][2] + 1000)
    refresher = RollupRefresher(database, interval=0.05)
    refresher.start()
    try:
        deadline = time.monotonic() + 10
        while refresher.refreshes < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        refresher.stop()
    assert refresher.refreshes >= 2 and refresher.last_error is None
