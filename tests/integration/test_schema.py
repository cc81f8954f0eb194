"""Migrations and the schema, on the harness's real PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from cityvitals.db import MIGRATIONS_DIR, MigrationError, available_migrations, upgrade
from tests.support import rows, scalar

CORE_TABLES = {
    "devices",
    "readings",
    "events",
    "device_status",
    "dead_letters",
    "ingest_stats",
    "alerts",
    "alert_events",
    "rule_state",
    "rule_health",
    "vital_signs",
    "users",
    "api_tokens",
    "silences",
}


def _timescale_available(url: str) -> bool:
    return bool(
        scalar(url, "SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'")
    )


def test_upgrade_creates_schema_and_is_idempotent(empty_database: str) -> None:
    first = upgrade(empty_database)
    versions = [m.version for m in available_migrations(first.flavor)]
    # Gaps are allowed: work in parallel branches takes numbers ahead (0007 before 0005).
    assert [m.version for m in first.applied] == versions == sorted(set(versions))
    assert versions[0] == 1
    assert first.current == versions[-1]
    tables = {
        r[0]
        for r in rows(empty_database, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    }
    assert tables >= CORE_TABLES
    second = upgrade(empty_database)
    assert second.applied == []
    assert second.current == versions[-1]
    assert scalar(empty_database, "SELECT count(*) FROM schema_migrations") == len(versions)
    assert scalar(empty_database, "SELECT min(variant) FROM schema_migrations") == first.flavor


def test_a_migration_numbered_below_the_applied_ones_is_applied_later(
    empty_database: str, tmp_path: Path
) -> None:
    """A branch's 0007 may reach a database before another branch's 0005: 0005 is still
    applied when it arrives (versions are applied by set difference, not by a high mark)."""
    (tmp_path / "0001_core.sql").write_text((MIGRATIONS_DIR / "0001_core.sql").read_text())
    (tmp_path / "0007_later.sql").write_text("CREATE TABLE later (x int);")
    assert upgrade(empty_database, tmp_path).current == 7
    (tmp_path / "0005_earlier.sql").write_text("CREATE TABLE earlier (x int);")
    result = upgrade(empty_database, tmp_path)
    assert [m.version for m in result.applied] == [5]
    assert result.current == 7
    assert scalar(empty_database, "SELECT count(*) FROM earlier") == 0


def test_failed_migration_changes_nothing(empty_database: str, tmp_path: Path) -> None:
    (tmp_path / "0001_core.sql").write_text((MIGRATIONS_DIR / "0001_core.sql").read_text())
    (tmp_path / "0002_broken.sql").write_text("CREATE TABLE oops (; -- syntax error")
    with pytest.raises(MigrationError, match=r"0002_broken\.sql failed, nothing was changed"):
        upgrade(empty_database, tmp_path)
    # One transaction: 0001 was rolled back with 0002.
    assert scalar(empty_database, "SELECT to_regclass('devices') IS NULL")
    assert scalar(empty_database, "SELECT to_regclass('schema_migrations') IS NULL")


def test_migration_file_names_are_checked(tmp_path: Path) -> None:
    (tmp_path / "1_bad name.sql").write_text("SELECT 1")
    with pytest.raises(MigrationError, match="NNNN_name"):
        available_migrations("plain", tmp_path)


def test_each_flavor_has_every_version() -> None:
    plain = [m.version for m in available_migrations("plain")]
    timescale = [m.version for m in available_migrations("timescale")]
    assert plain == timescale == sorted(set(plain))


def test_rollup_views_aggregate_readings(database: str) -> None:
    t0 = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
    with psycopg.connect(database) as conn:
        for i in range(120):  # two hours of one reading a minute, value = minute index
            conn.execute(
                "INSERT INTO readings (ts, device_id, metric, value) "
                "VALUES (%s, 'wl-1', 'level_m', %s)",
                (t0 + timedelta(minutes=i), float(i)),
            )
    if _timescale_available(database):
        with psycopg.connect(database, autocommit=True) as conn:
            for view in ("readings_1m", "readings_1h"):
                conn.execute(f"CALL refresh_continuous_aggregate('{view}', NULL, NULL)")
    hourly = rows(
        database,
        "SELECT bucket, avg_value, min_value, max_value, sum_value, samples "
        "FROM readings_1h WHERE device_id = 'wl-1' AND metric = 'level_m' ORDER BY bucket",
    )
    assert hourly == [
        (t0, 29.5, 0.0, 59.0, float(sum(range(60))), 60),
        (t0 + timedelta(hours=1), 89.5, 60.0, 119.0, float(sum(range(60, 120))), 60),
    ]
    assert scalar(database, "SELECT count(*) FROM readings_1m WHERE device_id = 'wl-1'") == 120


def test_readings_primary_key_stores_a_reading_once(database: str) -> None:
    ts = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
    with psycopg.connect(database) as conn:
        conn.execute(
            "INSERT INTO readings (ts, device_id, metric, value) VALUES (%s, 'd', 'm', 1)", (ts,)
        )
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(
                "INSERT INTO readings (ts, device_id, metric, value) VALUES (%s, 'd', 'm', 2)",
                (ts,),
            )


@pytest.mark.timescaledb
def test_timescale_hypertables_policies_and_aggregates(database: str) -> None:
    if scalar(database, "SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'") == 0:
        pytest.skip("the TimescaleDB extension is not installed in this PostgreSQL")
    hypertables = {
        r[0]
        for r in rows(database, "SELECT hypertable_name FROM timescaledb_information.hypertables")
    }
    assert {"readings", "events"} <= hypertables
    jobs = {
        (r[0], r[1])
        for r in rows(
            database,
            "SELECT proc_name, coalesce(hypertable_name, '') FROM timescaledb_information.jobs",
        )
    }
    assert ("policy_compression", "readings") in jobs
    assert ("policy_retention", "readings") in jobs
    caggs = {
        r[0]
        for r in rows(
            database, "SELECT view_name FROM timescaledb_information.continuous_aggregates"
        )
    }
    assert caggs == {"readings_1m", "readings_1h"}
    segment = scalar(
        database,
        "SELECT string_agg(attname, ',' ORDER BY segmentby_column_index) "
        "FROM timescaledb_information.compression_settings "
        "WHERE hypertable_name = 'readings' AND segmentby_column_index IS NOT NULL",
    )
    assert segment == "device_id,metric"
