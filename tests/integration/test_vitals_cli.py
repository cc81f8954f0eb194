"""`cityvitals vitals` against the harness's real PostgreSQL: the latest sign per scope
and domain, as a table and as JSON, filtered by district, and an empty database."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb
from typer.testing import CliRunner, Result

from cityvitals.cli import app

Invoke = Callable[..., Result]

T0 = datetime(2026, 7, 20, 4, 0, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)


@pytest.fixture
def cli(database: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Invoke:
    monkeypatch.chdir(tmp_path)  # no stray .env or cityvitals.toml
    for name in list(os.environ):
        if name.startswith("CITYVITALS_"):
            monkeypatch.delenv(name)
    env = {
        "CITYVITALS_DATABASE_URL": database,
        "CITYVITALS_DATA_DIR": str(tmp_path / "data"),
        "COLUMNS": "250",
    }

    def invoke(*args: str) -> Result:
        return CliRunner().invoke(app, ["vitals", *args], env=env)

    return invoke


def store(url: str, rows: list[tuple[datetime, str, str, int, dict[str, Any]]]) -> None:
    with psycopg.connect(url) as conn:
        for ts, scope, domain, level, indicators in rows:
            conn.execute(
                "INSERT INTO vital_signs (ts, scope, domain, level, indicators)"
                " VALUES (%s, %s, %s, %s, %s)",
                (ts, scope, domain, level, Jsonb(indicators)),
            )


ROWS: list[tuple[datetime, str, str, int, dict[str, Any]]] = [
    # An older flood sign of the city, superseded at T1.
    (T0, "city", "flood", 2, {"alerts_firing": 1, "water_level_ratio": 1.02}),
    (T1, "city", "flood", 3, {"alerts_firing": 2, "water_level_ratio": 1.3}),
    (T1, "city", "air", 2, {"alerts_firing": 1, "aqi_max": 158, "primary_pollutants": ["PM2.5"]}),
    (T1, "city", "device_health", 1, {"alerts_firing": 1, "online_share": 0.923}),
    (T1, "2", "flood", 3, {"alerts_firing": 1, "water_level_ratio": 1.3}),
    (T1, "2", "elevators", 4, {"alerts_firing": 1, "elevators": 2, "trapped_alerts": 1}),
    (T0, "10", "air", 0, {"alerts_firing": 0, "stations": 1}),
    (T0, "1", "noise", 1, {"alerts_firing": 1, "monitors": 1, "monitors_over_limit": 1}),
]


def test_table_of_the_latest_signs(cli: Invoke, database: str) -> None:
    store(database, ROWS)
    result = cli()
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "City vital signs" in out
    for title in ("flood", "drainage", "air", "elevators", "noise", "device health"):
        assert title in out
    # Rows: the city first, then districts in natural order.
    lines = out.splitlines()
    first = {
        scope: next(i for i, line in enumerate(lines) if f"│ {scope} " in line)
        for scope in ("city", "1", "2", "10")
    }
    assert first["city"] < first["1"] < first["2"] < first["10"]
    city_row = lines[first["city"]]
    assert "orange" in city_row and "yellow" in city_row and "blue" in city_row
    assert "water 130% of warning" in out  # the latest city flood sign, not the older one
    assert "water 102%" not in out
    assert "AQI 158 PM2.5" in out
    assert "92% online" in out
    assert "1 trapped" in out
    assert "red" in lines[first["2"]]


def test_json_and_district_filter(cli: Invoke, database: str) -> None:
    store(database, ROWS)
    result = cli("--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert [d["scope"] for d in document] == ["city", "1", "2", "10"]
    city = document[0]
    assert city["level"] == "orange"
    assert city["at"] == T1.isoformat()
    assert list(city["domains"]) == ["flood", "air", "device_health"]
    assert city["domains"]["flood"] == {
        "level": "orange",
        "indicators": {"alerts_firing": 2, "water_level_ratio": 1.3},
        "at": T1.isoformat(),
    }
    only = cli("--district", "2", "--json")
    assert only.exit_code == 0, only.output
    scopes = json.loads(only.stdout)
    assert [d["scope"] for d in scopes] == ["2"]
    assert scopes[0]["level"] == "red"
    assert set(scopes[0]["domains"]) == {"flood", "elevators"}
    table = cli("--district", "10")
    assert table.exit_code == 0, table.output
    assert "│ 10 " in table.stdout and "│ city " not in table.stdout


def test_nothing_stored_yet(cli: Invoke) -> None:
    result = cli()
    assert result.exit_code == 0, result.output
    assert "no vital signs are stored yet" in result.stdout
    assert "cityvitals run" in result.stdout
    as_json = cli("--json")
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.stdout) == []
    assert "no vital signs are stored yet" in as_json.stderr
    missing = cli("--district", "99")
    assert "no vital signs are stored for 99 yet" in missing.stdout
