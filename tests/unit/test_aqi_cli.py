"""`cityvitals aqi`: JSON and terminal output, and bad input naming the argument."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cityvitals.cli import app

runner = CliRunner()


def test_json_hourly_2026() -> None:
    result = runner.invoke(
        app,
        [
            "aqi",
            "--at",
            "2026-03-01T00:00:00+08:00",
            "--hourly",
            "PM2.5=80",
            "pm10=120",
            "SO2=900",
            "no2=50",
            "CO=1.2",
            "O3=180",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["at"] == "2026-03-01T00:00:00+08:00"
    assert document["rules"] == "2026" and document["standard"] == "HJ 633-2026"
    assert document["kind"] == "hourly"
    assert document["iaqi"] == {
        "pm2_5": 119,
        "pm10": 100,
        "so2": 200,
        "no2": 25,
        "co": 12,
        "o3": 75,
    }
    assert document["aqi"] == 200
    assert document["primary"] == ["so2"]
    assert (document["level"], document["level_name_zh"], document["level_name_en"]) == (
        4,
        "中度污染",
        "medium",
    )
    assert (document["colour"], document["colour_hex"]) == ("red", "#FF0000")
    assert document["missing"] == [] and document["notes"] == []
    assert document["concentrations"]["pm2_5"] == 80


def test_json_hourly_2012_one_second_earlier() -> None:
    result = runner.invoke(
        app,
        [
            "aqi",
            "--at",
            "2026-02-28T23:59:59+08:00",
            "--hourly",
            "PM2.5=80",
            "SO2=900",
            "--so2-24h",
            "475",
            "--pm25-24h",
            "75",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["rules"] == "2012"
    assert document["iaqi"] == {"pm2_5": 100, "so2": 150}
    assert document["averaging"] == {"pm2_5": "24h", "so2": "24h"}
    assert document["missing"] == ["pm10", "no2", "co", "o3"]
    assert document["primary"] == ["so2"]
    assert any("instead" in note for note in document["notes"])


def test_json_daily_with_a_bare_date_in_china_time() -> None:
    result = runner.invoke(
        app, ["aqi", "--at", "2026-03-01", "--daily", "o3=900", "pm2_5=35", "--json"]
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["at"] == "2026-03-01T00:00:00+08:00"
    assert document["rules"] == "2026"
    assert document["iaqi"] == {"o3": 300, "pm2_5": 50}
    assert document["averaging"]["o3"] == "8h"


def test_terminal_report() -> None:
    result = runner.invoke(
        app,
        ["aqi", "--at", "2025-12-01T12:00Z", "--hourly", "PM2.5=80", "so2=900", "NO2=250"],
    )
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "AQI 107" in out
    assert "轻度污染" in out and "light" in out and "orange #FF7E00" in out
    assert "primary pollutant: PM2.5" in out
    assert "HJ 633-2012" in out
    assert "not scored" in out and "missing" in out
    assert "no 24-hour moving mean" in out


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--hourly", "PM2.5=abc"], "PM2.5=abc"),
        (["--hourly", "PM2.5=-5"], "PM2.5=-5"),
        (["--hourly", "PM2.5=nan"], "PM2.5=nan"),
        (["--hourly", "PM1=5"], "PM1=5"),
        (["--hourly", "PM2.5"], "PM2.5"),
        (["--hourly", "PM2.5=5", "pm2_5=6"], "pm2_5=6"),
        (["--hourly"], "NAME=VALUE"),
        (["PM2.5=5"], "--hourly/--daily"),
        (["--at", "2026-03-01T08:00", "--hourly", "PM2.5=5"], "--at"),
        (["--at", "yesterday", "--hourly", "PM2.5=5"], "--at"),
        (["--hourly", "SO2=900", "--at", "2025-01-01T00:00+08:00"], "SO2"),
        (["--hourly", "PM2.5=5", "--so2-24h", "x"], "--so2-24h"),
        (["--hourly", "PM2.5=5", "--o3-1h-max", "900"], "--o3-1h-max"),
        (["--daily", "PM2.5=5", "--pm25-24h", "9"], "--pm25-24h"),
    ],
)
def test_bad_input_exits_2_naming_the_argument(args: list[str], named: str) -> None:
    result = runner.invoke(app, ["aqi", *args])
    assert result.exit_code == 2, result.output
    assert named in result.stderr
    assert result.stdout == ""


def test_at_defaults_to_now() -> None:
    result = runner.invoke(app, ["aqi", "--daily", "pm10=50", "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["aqi"] == 50 and document["rules"] in ("2012", "2026")
