"""`cityvitals rules check | test | backtest` against the harness's real PostgreSQL."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest
from psycopg.types.json import Jsonb
from typer.testing import CliRunner, Result

from cityvitals.cli import app
from devices.profile import load_profiles
from rules.config import BUILTIN_RULE_DIR, load_rules
from rules.testing import LIBRARY_TEST_DIR, RuleTestFile, expand_series

Invoke = Callable[..., Result]


@pytest.fixture
def cli(database: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Invoke:
    """Run `cityvitals …` with CITYVITALS_DATABASE_URL set to the test's database."""
    monkeypatch.chdir(tmp_path)  # no stray .env or cityvitals.toml
    for name in list(os.environ):
        if name.startswith("CITYVITALS_"):
            monkeypatch.delenv(name)
    env = {
        "CITYVITALS_DATABASE_URL": database,
        "CITYVITALS_DATA_DIR": str(tmp_path / "data"),
        "COLUMNS": "300",  # rich wraps tables and messages at the terminal width
    }

    def invoke(*args: str, **extra_env: str) -> Result:
        return CliRunner().invoke(app, list(args), env={**env, **extra_env})

    return invoke


def one_line(text: str) -> str:
    return " ".join(text.split())


# --- check ----------------------------------------------------------------------------------


def test_check_lists_every_library_rule(cli: Invoke) -> None:
    result = cli("rules", "check")
    assert result.exit_code == 0, result.output
    library = load_rules(load_profiles())
    for rule in library.rules:
        assert f"│ {rule.name} " in result.output
    assert "0 error(s), 0 warning(s)" in result.output
    out = one_line(result.output)
    assert "water_level │ hydrology │ condition │ blue → yellow → orange → red" in out
    assert "each district: 3 or more drainage_surcharge within 15m" in out
    assert "profiles noise; 22:00–06:00" in out


BROKEN_RULES = """\
- name: fine
  domain: hydrology
  scope: {profiles: [water_level]}
  when: "level_m > 9"
  level: blue

- name: half_written
  domain: hydrology
  scope: {profiles: [water_level]}
  when: "level_m >= attr.warning_level_m and"
  level: yellow

- name: wrong_event
  domain: elevator
  scope: {profiles: [elevator]}
  event: trapped_passenger
  level: red

- name: fine
  domain: hydrology
  scope: {profiles: [water_leve]}
  when: "level_m > 9"
  level: blue
"""


def test_check_names_file_line_and_problem_of_every_error(cli: Invoke, tmp_path: Path) -> None:
    rules = tmp_path / "deployment"
    rules.mkdir()
    broken = rules / "broken.yaml"
    broken.write_text(BROKEN_RULES)
    (rules / "not_yaml.yaml").write_text("- name: x\n  when: [\n")
    result = cli("rules", "check", str(rules))
    assert result.exit_code == 1, result.output
    out = one_line(result.output)
    assert f"{broken}:7: rule 'half_written', when: 1:" in out
    assert f"{broken}:13: rule 'wrong_event': no profile in its scope sends the event" in out
    assert f"{broken}:19: rule 'fine': scope names unknown profile(s) water_leve" in out
    assert f"{rules / 'not_yaml.yaml'}:3:1: not valid YAML" in out
    assert "4 error(s)" in out
    # The good rule and the library still show.
    assert "│ fine " in result.output and "│ water_level " in result.output


def test_check_reads_the_deployment_rule_dirs(cli: Invoke, tmp_path: Path) -> None:
    rules = tmp_path / "site"
    rules.mkdir()
    (rules / "site.yaml").write_text(BROKEN_RULES.split("\n\n")[0] + "\n")
    result = cli("rules", "check", CITYVITALS_RULE_DIRS=str(rules))
    assert result.exit_code == 0, result.output
    assert "│ fine " in result.output and "site.yaml:1" in result.output


# --- test -----------------------------------------------------------------------------------


def test_shipped_rule_tests_pass(cli: Invoke) -> None:
    result = cli("rules", "test", str(LIBRARY_TEST_DIR))
    assert result.exit_code == 0, result.output
    count = sum(len(RuleTestFile(p).names) for p in LIBRARY_TEST_DIR.glob("*.yaml"))
    assert f"{count} passed, 0 failed, 0 error(s)" in result.output
    assert "FAIL" not in result.output
    # Without arguments: the same library tests.
    again = cli("rules", "test")
    assert again.exit_code == 0 and f"{count} passed" in again.output


FAILING_TESTS = f"""\
rule_files: [{BUILTIN_RULE_DIR / "hydrology.yaml"}]
start: 2026-07-20T12:00:00+08:00
devices:
  - {{id: wl-1, profile: water_level,
     attributes: {{warning_level_m: 4.5, guaranteed_level_m: 5.2}}}}
tests:
  - name: right
    only: [water_level]
    input:
      - {{device: wl-1, metric: level_m, values: "4.0 4.6"}}
    expect:
      - {{at: 5m, alert: water_level, device: wl-1, level: yellow}}
  - name: wrong level
    only: [water_level]
    input:
      - {{device: wl-1, metric: level_m, values: "4.0 4.6"}}
    expect:
      - {{at: 5m, alert: water_level, device: wl-1, level: orange}}
  - name: broken
    input:
      - {{device: wl-2, metric: level_m, values: "4.0"}}
    expect: []
"""


def test_a_failing_rule_test_exits_1_with_a_diff(cli: Invoke, tmp_path: Path) -> None:
    path = tmp_path / "river_test.yaml"
    path.write_text(FAILING_TESTS)
    result = cli("rules", "test", str(path))
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert f"PASS {path}::right" in lines
    assert f"FAIL {path}::wrong level" in lines
    assert "       - 5m  water_level  wl-1         firing  orange" in lines
    assert "       + 5m  water_level  wl-1         firing  yellow" in lines
    assert f"ERROR {path}::broken" in lines
    assert f"{path}:19: test 'broken': input[0]: unknown device 'wl-2'" in one_line(result.output)
    assert "1 passed, 1 failed, 1 error(s)" in result.output


def test_missing_test_file(cli: Invoke, tmp_path: Path) -> None:
    result = cli("rules", "test", str(tmp_path / "nope.yaml"))
    assert result.exit_code == 1
    assert "nope.yaml: no such file or directory" in one_line(result.output)


# --- backtest --------------------------------------------------------------------------------

CST = timezone(timedelta(hours=8))
START = datetime(2026, 7, 20, 12, 0, tzinfo=CST)
# Two floods at gauge wl-1 (5-minute reports): blue at 1h, yellow at 1h30m, cleared at
# 2h15m; yellow again at 4h, cleared at 5h15m.
LEVELS = "3.0x11 4.3x5 4.7x5 3.0x23 4.6x11 3.0x11"


def insert_history(url: str) -> int:
    readings = [
        (START + timedelta(minutes=5 * i), "wl-1", "level_m", v, 0)
        for i, v in enumerate(expand_series(LEVELS))
        if v is not None
    ]
    # An hour before the range: warms the windows, raises nothing by itself.
    readings += [
        (START - timedelta(minutes=5 * i), "wl-1", "level_m", 3.0, 0) for i in range(1, 13)
    ]
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO devices (device_id, profile, district, name, attributes) "
            "VALUES (%s, %s, %s, %s, %s)",
            [
                (
                    "wl-1",
                    "water_level",
                    "d01",
                    "Qiantang gauge",
                    Jsonb({"warning_level_m": 4.5, "guaranteed_level_m": 5.2}),
                ),
                ("el-1", "elevator", "d02", "", Jsonb({"floors": 12})),
                ("zz-1", "no_such_profile", "d02", "", Jsonb({})),
            ],
        )
        cur.executemany(
            "INSERT INTO readings (ts, device_id, metric, value, quality) "
            "VALUES (%s, %s, %s, %s, %s)",
            readings,
        )
        cur.executemany(
            "INSERT INTO events (ts, device_id, type, code, detail) VALUES (%s, %s, %s, %s, %s)",
            [
                (START + timedelta(minutes=30), "el-1", "trapped_passengers", 11, Jsonb({})),
                (START + timedelta(minutes=50), "el-1", "back_to_normal", 40, Jsonb({})),
            ],
        )
    return len(readings) - 12


def test_backtest_reports_what_the_rules_would_have_raised(cli: Invoke, database: str) -> None:
    count = insert_history(database)
    args = ("--from", START.isoformat(), "--to", (START + timedelta(hours=6)).isoformat())
    result = cli("rules", "backtest", *args, "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert (document["readings"], document["events"], document["devices"]) == (count, 2, 2)
    rules = {r["rule"]: r for r in document["rules"]}
    level = rules["water_level"]
    assert (level["alerts"], level["escalations"], level["max_level"]) == (2, 1, "yellow")
    assert datetime.fromisoformat(level["first"]) == START + timedelta(hours=1)
    assert datetime.fromisoformat(level["last"]) == START + timedelta(hours=4)
    assert level["firing_s"] == (75 + 75) * 60
    assert level["still_firing"] == 0 and level["errors"] == 0
    # The elevator never reported a reading: silent from 3 minutes into the range.
    assert rules["device_silent"]["alerts"] == 1
    assert rules["elevator_trapped"]["alerts"] == 1
    assert rules["elevator_trapped"]["firing_s"] == 20 * 60
    assert rules["air_quality_index"]["alerts"] == 0
    alerts = [(a["rule"], a["subject"]) for a in document["alerts"]]
    assert alerts.count(("water_level", "wl-1")) == 2

    table = cli("rules", "backtest", *args)
    assert table.exit_code == 0, table.output
    out = one_line(table.output)
    assert f"replayed {count} reading(s) and 2 event(s) of 2 device(s)" in out
    assert "device zz-1: unknown profile no_such_profile; skipped" in out
    assert "│ water_level │ condition │ 2 │ 1 │ 0 │ 1 │ yellow │ 2026-07-20 13:00 │" in out
    assert "│ water_level_stuck │ condition │ 0 │ 0 │ 0 │ 0 │ │ │ │ │ 0 │ 0 │" in out
    assert "2026-07-20 16:00 │ 2h30m │ 0 │ 0 │" in out


def test_backtest_one_device_and_named_rules(cli: Invoke, database: str) -> None:
    insert_history(database)
    result = cli(
        "rules",
        "backtest",
        "water_level",
        "device_silent",
        "--from",
        "2026-07-20T12:00",  # local time (Asia/Shanghai)
        "--to",
        "2026-07-20T18:00",
        "--device",
        "wl-1",
        "--json",
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["devices"] == 1 and document["events"] == 0
    assert [r["rule"] for r in document["rules"]] == ["device_silent", "water_level"]
    assert [r["alerts"] for r in document["rules"]] == [0, 2]


def test_backtest_a_rule_file(cli: Invoke, database: str, tmp_path: Path) -> None:
    insert_history(database)
    rules = tmp_path / "high.yaml"
    rules.write_text(
        "- name: river_high\n"
        "  domain: hydrology\n"
        "  scope: {profiles: [water_level]}\n"
        "  when: 'level_m >= 4.6'\n"
        "  level: orange\n"
        "  for: 10m\n"
    )
    args = ("--from", "2026-07-20T12:00+08:00", "--to", "2026-07-20T18:00+08:00")
    result = cli("rules", "backtest", str(rules), *args, "--json")
    assert result.exit_code == 0, result.output
    (record,) = json.loads(result.stdout)["rules"]
    # 4.7 for 30 minutes fires after 10; 4.6 for an hour fires after 10.
    assert (record["rule"], record["alerts"], record["dropped"]) == ("river_high", 2, 0)
    assert datetime.fromisoformat(record["first"]) == START + timedelta(minutes=100)


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (("--from", "yesterday", "--to", "2026-07-21"), "--from: 'yesterday' is not an ISO 8601"),
        (("--from", "2026-07-21", "--to", "2026-07-20"), "must be after --from"),
        (("--to", "2026-07-20"), "give the range with --from and --to"),
        (("no_such_rule", "--from", "2026-07-20", "--to", "2026-07-21"), "no_such_rule: neither"),
        (
            ("--from", "2026-07-20", "--to", "2026-07-21", "--device", "wl-9"),
            "no such device(s) in the registry: wl-9",
        ),
    ],
)
def test_backtest_mistakes(cli: Invoke, args: tuple[str, ...], problem: str) -> None:
    result = cli("rules", "backtest", *args)
    assert result.exit_code in (1, 2), result.output
    assert problem in one_line(result.output)
