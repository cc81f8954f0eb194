"""The `cityvitals` command line against the harness's real PostgreSQL."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner, Result

from cityvitals.cli import app
from cityvitals.db import available_migrations
from cityvitals.services import LocalMosquitto
from devices.profile import BUILTIN_PROFILE_DIR, load_profiles
from tests.support import rows, scalar

Invoke = Callable[..., Result]


def _invoker(
    url: str, broker: LocalMosquitto, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Invoke:
    monkeypatch.chdir(tmp_path)  # no stray .env or cityvitals.toml
    for name in list(os.environ):
        if name.startswith("CITYVITALS_"):
            monkeypatch.delenv(name)
    env = {
        "CITYVITALS_DATABASE_URL": url,
        "CITYVITALS_MQTT_URL": broker.url,
        "CITYVITALS_DATA_DIR": str(tmp_path / "data"),
        "COLUMNS": "300",  # rich wraps tables and messages at the terminal width
    }

    def invoke(*args: str, **extra_env: str) -> Result:
        return CliRunner().invoke(app, list(args), env={**env, **extra_env})

    return invoke


@pytest.fixture
def cli(
    database: str, broker: LocalMosquitto, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Invoke:
    """Run `cityvitals …` with CITYVITALS_DATABASE_URL set to the test's database."""
    return _invoker(database, broker, monkeypatch, tmp_path)


@pytest.fixture
def cli_offline(broker: LocalMosquitto, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Invoke:
    """Run `cityvitals …` for commands that need no database (a URL that is never used)."""
    return _invoker("postgresql://nobody@127.0.0.1:9/unused", broker, monkeypatch, tmp_path)


@pytest.fixture
def cli_empty(
    empty_database: str, broker: LocalMosquitto, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Invoke:
    """Run `cityvitals …` against a database without the schema."""
    return _invoker(empty_database, broker, monkeypatch, tmp_path)


def one_line(text: str) -> str:
    return " ".join(text.split())


# --- devices validate -----------------------------------------------------------------


def test_validate_shipped_profiles(cli_offline: Invoke) -> None:
    result = cli_offline("devices", "validate", str(BUILTIN_PROFILE_DIR))
    assert result.exit_code == 0, result.output
    shipped = sorted(p.stem for p in BUILTIN_PROFILE_DIR.glob("*.yaml"))
    assert len(shipped) >= 7
    for name in shipped:
        assert f"{BUILTIN_PROFILE_DIR / name}.yaml: {name} (" in result.output
    assert "✗" not in result.output
    # The vendor profile inherits the elevator's events and metrics through `extends`.
    elevator = load_profiles()["elevator"]
    assert (
        f"elevator_frame (elevator), {len(elevator.metrics)} metrics, "
        f"{len(elevator.events)} events" in result.output
    )


GOOD_PROFILE = """\
name: tide_gauge
domain: hydrology
title: Tide gauge
reporting_interval: 1m
metrics:
  level_m: {unit: m, range: [-10, 10]}
"""

BROKEN_PROFILE = """\
name: silt_gauge
domain: hydrology
title: Silt gauge
reporting_interval: soon
metrics:
  depth_m: {unit: m, range: [10, 0]}
"""


def test_validate_broken_profile(cli_offline: Invoke, tmp_path: Path) -> None:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "tide_gauge.yaml").write_text(GOOD_PROFILE)
    broken = profiles / "silt_gauge.yaml"
    broken.write_text(BROKEN_PROFILE)
    result = cli_offline("devices", "validate", str(profiles))
    assert result.exit_code == 1, result.output
    out = one_line(result.output)
    assert f"{profiles / 'tide_gauge.yaml'}: tide_gauge (hydrology), 1 metrics" in out
    assert f"{broken}: 2 problem(s)" in out
    assert "reporting_interval: 'soon' is not a duration" in out
    assert "metrics.depth_m: range minimum 10.0 exceeds maximum 0.0" in out
    assert "1 of 2 profile file(s) invalid" in out


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("name: p\ndomain: x\ntitle: t\nreporting_interval: 1m\nmetrics: {}\n", "metrics"),
        ("name: other\ndomain: x\ntitle: t\nreporting_interval: 1m\nmetrics: {a: {}}\n", "name"),
        (
            "name: p\ndomain: x\ntitle: t\nreporting_interval: 1m\nmetrics: {a: {}}\n"
            "decoder: nowhere.module:decode\n",
            "decoder",
        ),
        (
            "name: p\ndomain: x\ntitle: t\nreporting_interval: 1m\nmetrics: {a: {colour: red}}\n",
            "metrics.a.colour",
        ),
        ("name: p\ndomain: x\ntitle: t\nreporting_interval: 1m\nmetrics: {a: {}\n", "line"),
    ],
    ids=["no-metrics", "name-mismatch", "bad-decoder", "unknown-key", "bad-yaml"],
)
def test_validate_names_file_and_field(
    cli_offline: Invoke, tmp_path: Path, text: str, field: str
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    result = cli_offline("devices", "validate", str(path))
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    out = one_line(result.output)
    assert str(path) in out
    assert f"{field}" in out
    assert "1 of 1 profile file(s) invalid" in out


def test_validate_infinite_reporting_interval(cli_offline: Invoke, tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("name: p\ndomain: x\ntitle: t\nreporting_interval: .inf\nmetrics: {a: {}}\n")
    result = cli_offline("devices", "validate", str(path))
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert result.exit_code == 1
    assert "reporting_interval" in result.output


def test_validate_missing_directory(cli_offline: Invoke, tmp_path: Path) -> None:
    result = cli_offline("devices", "validate", str(tmp_path / "absent"))
    assert result.exit_code == 1
    out = one_line(result.output)
    assert f"{tmp_path / 'absent'}: 1 problem(s)" in out
    assert "cannot read the file" in out


# --- devices import ---------------------------------------------------------------------

HEADER = "id,profile,district,name,lat,lon,warning_level_m,guaranteed_level_m,floors,zone"
REGISTRY_ROWS = [
    HEADER,  # line 1
    "wl-1,water_level,pudong,Huangpu gauge,31.23,121.49,4.5,5.5,,",  # 2 good
    "el-1,elevator,jingan,Tower A car 1,,,,,18,",  # 3 good
    "wl-2,water_level,pudong,No levels,,,,,,",  # 4 bad: required attributes missing
    "nm-1,noise,minhang,Park gate,31.1,121.3,,,,2",  # 5 good
    "x/y,noise,minhang,Slash,,,,,,2",  # 6 bad: id is not a topic level
    "rg-1,tide_gauge,pudong,,,,,,,",  # 7 bad: unknown profile
    "el-2,elevator,jingan,,91,121,,,12,",  # 8 bad: lat out of range
]


def write_registry(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def devices_in(url: str) -> dict[str, tuple[object, ...]]:
    found = rows(
        url,
        "SELECT device_id, profile, district, name, lat, lon, attributes, provisional "
        "FROM devices ORDER BY device_id",
    )
    return {r[0]: r[1:] for r in found}


def test_import_keeps_good_rows_and_reports_bad_ones(
    cli: Invoke, database: str, tmp_path: Path
) -> None:
    csv = write_registry(tmp_path / "registry.csv", REGISTRY_ROWS)
    result = cli("devices", "import", str(csv))
    assert result.exit_code == 1, result.output
    out = one_line(result.output)
    assert f"{csv}:4 (device wl-2): attribute warning_level_m is required" in out
    assert f"{csv}:4 (device wl-2): attribute guaranteed_level_m is required" in out
    assert f"{csv}:6" in out and "'x/y'" in out
    assert f"{csv}:7 (device rg-1): unknown profile 'tide_gauge'" in out
    assert f"{csv}:8 (device el-2): lat 91 is outside -90..90" in out
    assert f"{csv}: 3 added, 0 updated, 4 row(s) skipped" in out
    for line in (2, 3, 5):
        assert f"{csv}:{line} " not in out

    stored = devices_in(database)
    assert sorted(stored) == ["el-1", "nm-1", "wl-1"]
    assert stored["wl-1"] == (
        "water_level",
        "pudong",
        "Huangpu gauge",
        31.23,
        121.49,
        {
            "warning_level_m": 4.5,
            "guaranteed_level_m": 5.5,
            "datum": "1985 National Height Datum",
            "approach_margin_m": 0.3,
        },
        False,
    )
    assert stored["el-1"][:3] == ("elevator", "jingan", "Tower A car 1")
    assert stored["el-1"][5]["floors"] == 18  # type: ignore[index]
    assert stored["nm-1"][5]["zone"] == "2"  # type: ignore[index]


def test_reimport_updates_rather_than_duplicates(
    cli: Invoke, database: str, tmp_path: Path
) -> None:
    csv = write_registry(tmp_path / "a.csv", [REGISTRY_ROWS[0], REGISTRY_ROWS[1], REGISTRY_ROWS[2]])
    first = cli("devices", "import", str(csv))
    assert first.exit_code == 0, first.output
    assert "2 added, 0 updated, 0 row(s) skipped" in one_line(first.output)
    created = scalar(database, "SELECT created_at FROM devices WHERE device_id = 'wl-1'")

    renamed = (
        REGISTRY_ROWS[1]
        .replace("Huangpu gauge", "Huangpu gauge (moved)")
        .replace("4.5,5.5", "4.8,5.9")
    )
    write_registry(csv, [REGISTRY_ROWS[0], renamed, REGISTRY_ROWS[2], REGISTRY_ROWS[4]])
    second = cli("devices", "import", str(csv))
    assert second.exit_code == 0, second.output
    assert "1 added, 2 updated, 0 row(s) skipped" in one_line(second.output)
    assert scalar(database, "SELECT count(*) FROM devices") == 3
    name, attributes, created_again, updated = rows(
        database,
        "SELECT name, attributes, created_at, updated_at FROM devices WHERE device_id = 'wl-1'",
    )[0]
    assert name == "Huangpu gauge (moved)"
    assert (attributes["warning_level_m"], attributes["guaranteed_level_m"]) == (4.8, 5.9)
    assert created_again == created
    assert updated > created


def test_import_registers_a_provisional_device(cli: Invoke, database: str, tmp_path: Path) -> None:
    # As the ingest leaves a device it heard of but nobody registered.
    with psycopg.connect(database) as conn:
        conn.execute(
            "INSERT INTO devices (device_id, profile, district, provisional) "
            "VALUES ('wl-1', 'water_level', 'pudong', true)"
        )
    assert cli("devices", "list", "--provisional").output.count("wl-1") == 1
    csv = write_registry(tmp_path / "r.csv", [REGISTRY_ROWS[0], REGISTRY_ROWS[1]])
    result = cli("devices", "import", str(csv))
    assert result.exit_code == 0, result.output
    assert "0 added, 1 updated" in one_line(result.output)
    assert rows(database, "SELECT name, provisional, lat FROM devices") == [
        ("Huangpu gauge", False, 31.23)
    ]
    assert "0 device(s)" in cli("devices", "list", "--provisional").output


def test_import_unreadable_file(cli: Invoke, tmp_path: Path) -> None:
    result = cli("devices", "import", str(tmp_path / "absent.csv"))
    assert result.exit_code == 1
    assert "absent.csv" in one_line(result.output)
    bad = tmp_path / "bad.csv"
    bad.write_text("device;profile;district\nwl-1;water_level;pudong\n")
    result = cli("devices", "import", str(bad))
    assert result.exit_code == 1
    assert "separated by commas" in one_line(result.output)


def test_import_reports_rows_with_brackets(cli: Invoke, database: str, tmp_path: Path) -> None:
    csv = write_registry(
        tmp_path / "r.csv", [REGISTRY_ROWS[0], REGISTRY_ROWS[1], "[/x],noise,minhang,,,,,,,2"]
    )
    result = cli("devices", "import", str(csv))
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert result.exit_code == 1
    assert f"{csv}:3" in one_line(result.output)


def test_list_shows_names_with_brackets(cli: Invoke, tmp_path: Path) -> None:
    csv = write_registry(tmp_path / "r.csv", [HEADER, "nm-1,noise,minhang,Gate [north],,,,,,2"])
    assert cli("devices", "import", str(csv)).exit_code == 0
    assert "Gate [north]" in cli("devices", "list").output


# --- devices list -------------------------------------------------------------------------


def listed(result: Result) -> set[str]:
    assert result.exit_code == 0, result.output
    return {d for d in ("wl-1", "el-1", "nm-1", "wl-9", "rg-9") if d in result.output}


def test_list_with_filters(cli: Invoke, database: str, tmp_path: Path) -> None:
    csv = write_registry(tmp_path / "r.csv", [REGISTRY_ROWS[i] for i in (0, 1, 2, 4)])
    assert cli("devices", "import", str(csv)).exit_code == 0
    with psycopg.connect(database) as conn:
        conn.execute(
            "INSERT INTO devices (device_id, profile, district, provisional) VALUES "
            "('wl-9', 'water_level', 'minhang', true), ('rg-9', 'rain_gauge', 'pudong', true)"
        )
    everything = cli("devices", "list")
    assert listed(everything) == {"wl-1", "el-1", "nm-1", "wl-9", "rg-9"}
    assert "5 device(s)" in everything.output
    assert "Huangpu gauge" in everything.output and "31.23000" in everything.output
    assert "warning_level_m=4.5" in everything.output

    assert listed(cli("devices", "list", "--profile", "water_level")) == {"wl-1", "wl-9"}
    assert listed(cli("devices", "list", "--district", "pudong")) == {"wl-1", "rg-9"}
    assert listed(cli("devices", "list", "--provisional")) == {"wl-9", "rg-9"}
    assert listed(cli("devices", "list", "--registered")) == {"wl-1", "el-1", "nm-1"}
    assert listed(cli("devices", "list", "--profile", "water_level", "--district", "minhang")) == {
        "wl-9"
    }
    assert listed(cli("devices", "list", "--district", "nowhere")) == set()
    limited = cli("devices", "list", "--limit", "2")
    assert len(listed(limited)) == 2 and "2 device(s)" in limited.output


# --- db -----------------------------------------------------------------------------------


def test_db_upgrade_applies_migrations_once(cli_empty: Invoke, empty_database: str) -> None:
    first = cli_empty("db", "upgrade")
    assert first.exit_code == 0, first.output
    versions = rows(empty_database, "SELECT version, name, variant FROM schema_migrations")
    (flavor,) = {v for _, _, v in versions}
    expected = available_migrations(flavor)
    assert [(v, n) for v, n, _ in versions] == [(m.version, m.name) for m in expected]
    for m in expected:
        assert f"applied {m.version:04d} {m.name}" in first.output
    assert f"schema at version {expected[-1].version} ({flavor})" in first.output
    assert scalar(empty_database, "SELECT to_regclass('readings') IS NOT NULL") is True

    second = cli_empty("db", "upgrade")
    assert second.exit_code == 0, second.output
    assert "applied" not in second.output
    assert f"schema at version {expected[-1].version} ({flavor})" in second.output
    assert scalar(empty_database, "SELECT count(*) FROM schema_migrations") == len(expected)


def test_db_status_lists_versions(cli_empty: Invoke) -> None:
    before = cli_empty("db", "status")
    assert before.exit_code == 0, before.output
    assert "schema (empty)" in before.output
    assert "0001" not in before.output

    assert cli_empty("db", "upgrade").exit_code == 0
    after = cli_empty("db", "status")
    assert after.exit_code == 0, after.output
    assert "schema (plain)" in after.output or "schema (timescale)" in after.output
    assert "0001" in after.output and "core" in after.output
    assert "0002" in after.output and "timeseries" in after.output


def test_bad_setting_is_reported_with_its_variable(cli: Invoke) -> None:
    result = cli("devices", "list", CITYVITALS_BATCH_SIZE="0")
    assert result.exit_code == 2
    assert "CITYVITALS_BATCH_SIZE" in result.output
