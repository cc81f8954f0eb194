"""Rule unit tests (rules/testing.py) and backtests (rules/backtest.py), on synthetic data."""

from __future__ import annotations

import json
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from alerts.model import ConditionState, Level
from devices.model import DeviceEvent, Reading
from devices.profile import load_profiles
from rules.backtest import SUMMARY_COLUMNS, backtest, warm_seconds
from rules.config import RuleSet, compile_rule
from rules.engine import DeviceInfo
from rules.testing import (
    RuleTestError,
    RuleTestFile,
    RuleTestResult,
    SeriesError,
    expand_series,
    run_rule_tests,
)

# --- series expansion ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "values"),
    [
        ("1 2 3", [1.0, 2.0, 3.0]),
        ("3.0x3", [3.0, 3.0, 3.0, 3.0]),  # a and then three more, as promtool
        ("1+2x3", [1.0, 3.0, 5.0, 7.0]),
        ("-2+4x3", [-2.0, 2.0, 6.0, 10.0]),
        ("1-2x4", [1.0, -1.0, -3.0, -5.0, -7.0]),
        ("4.2+0.1x3", [4.2, 4.3, 4.4, 4.5]),  # rounded to the decimals written
        ("1e3 2.5e-1", [1000.0, 0.25]),
        ("1 _ 3", [1.0, None, 3.0]),
        ("_x3 5", [None, None, None, 5.0]),  # _xn is n missing samples, as promtool
        ("true false truex2", [1.0, 0.0, 1.0, 1.0, 1.0]),
        ("  7   8\n9 ", [7.0, 8.0, 9.0]),
        ("", []),
    ],
)
def test_expand_series(text: str, values: list[float | None]) -> None:
    assert expand_series(text) == values


def test_expand_series_enum_words() -> None:
    words = {"idle": 0.0, "running": 1.0}
    assert expand_series("idle runningx2 3", words) == [0.0, 1.0, 1.0, 1.0, 3.0]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("1 two 3", "'two' is not a value"),
        ("1+2", r"'1\+2': an increment needs a count"),
        ("3x", "'3x' is not a value"),
        ("nan", "'nan' is not a value"),
        ("1x2000000", "more than 1000000 samples"),
    ],
)
def test_expand_series_errors(text: str, problem: str) -> None:
    with pytest.raises(SeriesError, match=problem):
        expand_series(text)


# --- the runner ------------------------------------------------------------------------------

RULES = """\
- name: level
  domain: hydrology
  scope: {profiles: [water_level]}
  ladder:
    - {level: yellow, when: "level_m >= attr.warning_level_m"}
    - {level: orange, when: "level_m >= attr.guaranteed_level_m"}
  clear: "level_m < attr.warning_level_m - 0.2"
  summary: "{device.name}: {level_m:.1f} m"

- name: held
  domain: hydrology
  scope: {profiles: [water_level]}
  when: "level_m > 10"
  level: blue
  for: 10m

- name: trapped
  domain: elevator
  scope: {profiles: [elevator]}
  event: trapped_passengers
  level: red
  resolve_on: [back_to_normal]
  summary: "{device.name}: trapped at floor {floor}"
"""

HEADER = """\
rule_files: [rules.yaml]
start: 2026-07-20T12:00:00+08:00
devices:
  - {id: wl-1, profile: water_level, name: Gauge 1,
     attributes: {warning_level_m: 4.0, guaranteed_level_m: 5.0}}
  - {id: el-1, profile: elevator, district: d02, attributes: {floors: 12}}
tests:
"""


def write_tests(tmp_path: Path, tests: str, header: str = HEADER) -> Path:
    (tmp_path / "rules.yaml").write_text(RULES)
    path = tmp_path / "test.yaml"
    path.write_text(header + textwrap.indent(textwrap.dedent(tests), "  "))
    return path


def run(tmp_path: Path, tests: str, header: str = HEADER) -> list[RuleTestResult]:
    return RuleTestFile(write_tests(tmp_path, tests, header)).run()


FIRST_TEST_LINE = HEADER.count("\n") + 1


PASSING = """\
- name: escalates and clears
  input:
    - {device: wl-1, metric: level_m, interval: 5m, values: "3.5 4.2 5.1 4.5 3.9 3.7"}
  expect:
    - {at: 5m, alert: level, device: wl-1, level: yellow, summary: "Gauge 1: 4.2 m"}
    - {at: 10m, alert: level, device: wl-1, level: orange, previous: yellow}
    - {at: 15m, alert: level, device: wl-1, level: yellow, previous: orange}
    - {at: 25m, alert: level, device: wl-1, state: resolved, level: yellow,
       values: {level_m: 3.7}, labels: {}}
"""


def test_a_passing_test(tmp_path: Path) -> None:
    (result,) = RuleTestFile(write_tests(tmp_path, PASSING)).run()
    assert result.passed, result.report
    assert result.name == "escalates and clears"
    assert result.line == FIRST_TEST_LINE and result.problems == () and not result.error
    assert [(t.state, t.level) for t in result.transitions] == [
        (ConditionState.FIRING, Level.YELLOW),
        (ConditionState.FIRING, Level.ORANGE),
        (ConditionState.FIRING, Level.YELLOW),
        (ConditionState.RESOLVED, Level.YELLOW),
    ]


def test_a_failing_test_shows_a_readable_diff(tmp_path: Path) -> None:
    path = write_tests(
        tmp_path,
        """\
        - name: wrong expectations
          input:
            - {device: wl-1, metric: level_m, interval: 5m, values: "3.5 4.2 5.1 4.5 3.9 3.7"}
          expect:
            - {at: 5m, alert: level, device: wl-1, level: yellow}
            - {at: 15m, alert: level, device: wl-1, level: orange}
            - {at: 25m, alert: level, device: wl-1, state: resolved, level: yellow}
            - {at: 1h, alert: held, device: wl-1, level: blue}
        """,
    )
    (result,) = RuleTestFile(path).run()
    assert not result.passed and not result.error
    assert result.report == "\n".join(
        [
            f"{path}:{FIRST_TEST_LINE}: test 'wrong expectations': "
            "alert transitions differ (- expected, + got):",
            "    at   alert  device/area  state     level",
            "    5m   level  wl-1         firing    yellow",
            "  - 15m  level  wl-1         firing    orange",
            "  + 10m  level  wl-1         firing    orange",
            "  + 15m  level  wl-1         firing    yellow",
            "    25m  level  wl-1         resolved  yellow",
            "  - 1h   held   wl-1         firing    blue",
        ]
    )


def test_details_are_compared_only_where_given(tmp_path: Path) -> None:
    (result,) = run(
        tmp_path,
        """\
        - name: details
          input:
            - {device: wl-1, metric: level_m, values: "4.2"}
          expect:
            - {at: 0m, alert: level, device: wl-1, level: yellow, previous: blue,
               summary: "Gauge 1: 4.3 m", values: {level_m: 4.3, other: 1},
               labels: {team: x}, parent: "p:1", district: d09}
        """,
    )
    assert not result.passed
    what = "0s level wl-1 firing"
    assert result.problems[0].endswith(
        f"test 'details': {what}: previous level expected blue, got normal"
    )
    assert result.problems[1:] == (
        f"{what}: district expected 'd09', got 'd01'",
        f"{what}: summary expected 'Gauge 1: 4.3 m', got 'Gauge 1: 4.2 m'",
        f"{what}: parent expected 'p:1', got None",
        f"{what}: values.level_m expected 4.3, got 4.2",
        f"{what}: values.other expected 1, got nothing",
        f"{what}: labels.team expected 'x', got None",
    )


def test_expect_at_compares_the_firing_and_pending_sets(tmp_path: Path) -> None:
    results = run(
        tmp_path,
        """\
        - name: firing set
          input:
            - {device: wl-1, metric: level_m, interval: 5m, values: "4.5 11 11 11"}
          expect_at:
            - {at: 0m, firing: [{alert: level, device: wl-1, level: yellow}]}
            - {at: 5m, firing: [{alert: level, device: wl-1, level: orange}],
               pending: [{alert: held, device: wl-1, level: blue}]}
            - {at: 15m, firing: [{alert: level, device: wl-1, level: orange},
                                 {alert: held, device: wl-1, level: blue}], pending: []}
        - name: wrong firing set
          only: [held]
          input:
            - {device: wl-1, metric: level_m, interval: 5m, values: "4.5 11 11 11"}
          expect_at:
            - {at: 10m, firing: [{alert: held, device: wl-1, level: blue}]}
        """,
    )
    assert results[0].passed, results[0].report
    failed = results[1]
    assert not failed.passed
    assert failed.problems[0].endswith(
        "firing alerts at 10m differ (- expected, + got):\n"
        "    alert  device/area  level\n"
        "  - held   wl-1         blue"
    )


def test_for_and_ticks(tmp_path: Path) -> None:
    results = run(
        tmp_path,
        """\
        - name: without ticks the next reading fires it
          only: [held]
          input:
            - {device: wl-1, metric: level_m, interval: 15m, values: "11 11"}
          expect:
            - {at: 0m, alert: held, device: wl-1, state: pending, level: blue}
            - {at: 15m, alert: held, device: wl-1, level: blue}
        - name: with ticks the clock fires it
          only: [held]
          ticks: 1m
          input:
            - {device: wl-1, metric: level_m, interval: 15m, values: "11 11"}
          expect:
            - {at: 0m, alert: held, device: wl-1, state: pending, level: blue}
            - {at: 10m, alert: held, device: wl-1, level: blue}
        - name: a blip is dropped
          only: [held]
          input:
            - {device: wl-1, metric: level_m, at: 2026-07-20T04:05:00Z, values: "11 3"}
          expect:
            - {at: 2026-07-20T12:05:00+08:00, alert: held, device: wl-1, state: pending,
               level: blue}
            - {at: 10m, alert: held, device: wl-1, state: resolved, level: blue}
        """,
    )
    for result in results:
        assert result.passed, result.report


def test_events(tmp_path: Path) -> None:
    (result,) = run(
        tmp_path,
        """\
        - name: trapped
          events:
            - {device: el-1, at: 2m, type: trapped_passengers, detail: {floor: 9}}
            - {device: el-1, at: 3m, type: trapped_passengers, code: 99}
            - {device: el-1, at: 20m, type: back_to_normal}
          expect:
            - {at: 2m, alert: trapped, device: el-1, level: red, district: d02,
               summary: "el-1: trapped at floor 9", values: {code: 11, floor: 9}}
            - {at: 20m, alert: trapped, device: el-1, state: resolved, level: red}
        """,
    )
    assert result.passed, result.report


RULE_ERROR_RULES = """\
- name: needs_attr
  domain: hydrology
  scope: {profiles: [water_level]}
  when: "level_m > attr.flood_plain_m"
  level: blue
"""


def test_a_rule_failing_to_evaluate_fails_the_test(tmp_path: Path) -> None:
    (tmp_path / "other.yaml").write_text(RULE_ERROR_RULES)
    header = HEADER.replace("rule_files: [rules.yaml]", "rule_files: [other.yaml]")
    results = run(
        tmp_path,
        """\
        - name: unhealthy
          input:
            - {device: wl-1, metric: level_m, values: "3 4"}
          expect: []
        - name: expected to be unhealthy
          expect_rule_errors: [needs_attr]
          input:
            - {device: wl-1, metric: level_m, values: "3 4"}
          expect: []
        - name: expected to be unhealthy but healthy
          expect_rule_errors: [needs_attr]
          expect: []
        """,
        header,
    )
    passed = [r.passed for r in results]
    assert passed == [False, True, False]
    assert "rule needs_attr failed 2 evaluation(s); last: " in results[0].report
    assert "has no attribute 'flood_plain_m'" in results[0].report
    assert (
        results[2]
        .problems[0]
        .endswith("rule needs_attr was expected to fail an evaluation, but never did")
    )


@pytest.mark.parametrize(
    ("test", "problem"),
    [
        (
            "{name: t, input: [{device: wl-9, metric: level_m, values: '1'}], expect: []}",
            "input[0]: unknown device 'wl-9'; the devices are: wl-1, el-1",
        ),
        (
            "{name: t, input: [{device: wl-1, metric: depth_m, values: '1'}], expect: []}",
            "input[0]: 'depth_m' is not a metric of profile water_level; its metrics are: "
            "level_m, rate_m_h, trend, battery_v, rssi_dbm",
        ),
        (
            "{name: t, input: [{device: wl-1, metric: level_m, values: '1 x'}], expect: []}",
            "input[0] (wl-1 level_m): 'x' is not a value",
        ),
        (
            "{name: t, events: [{device: el-1, at: 1m, type: trapped}], expect: []}",
            "events[0]: 'trapped' is not an event of profile elevator",
        ),
        (
            "{name: t, expect: [{at: 1m, alert: levle, device: wl-1, level: blue}]}",
            "expect[0]: no rule named 'levle' under test; the rules are: held, level, trapped",
        ),
        (
            "{name: t, expect: [{at: 1m, alert: level, device: wl-7, level: blue}]}",
            "expect[0]: unknown device 'wl-7'",
        ),
        ("{name: t, input: []}", "a test needs `expect` (the transitions, [] for none)"),
        (
            "{name: t, expect: [{at: soon, alert: level, device: wl-1, level: blue}]}",
            "expect.0.at: 'soon' is neither a duration",
        ),
        (
            "{name: t, expect: [{at: 1m, alert: level, device: wl-1, level: purple}]}",
            "expect.0.level: 'purple' is not a level",
        ),
        ("{name: t, expect: [], colour: red}", "colour: Extra inputs are not permitted"),
    ],
)
def test_mistakes_in_a_test_name_file_line_and_test(
    tmp_path: Path, test: str, problem: str
) -> None:
    path = write_tests(tmp_path, f"- {test}\n- {{name: fine, expect: []}}\n")
    first, second = RuleTestFile(path).run()
    assert first.error and not first.passed
    assert first.report.startswith(f"{path}:{FIRST_TEST_LINE}: test 't': "), first.report
    assert problem in first.report, first.report
    assert second.passed  # the other tests still run


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("tests: [\n", ":2:1: not valid YAML: expected the node content"),
        (b"tests: [\xff]\n", "cannot read the rule test file"),
        ("- a\n- b\n", "a rule test file is a mapping with `tests:`"),
        ("start: 2026-07-20T12:00:00+08:00\ntests: []\n", "no tests"),
        ("rule_files: [missing.yaml]\ntests: [{name: t, expect: []}]\n", "rule_files: "),
        ("timezone: Mars/Olympus\ntests: [{name: t, expect: []}]\n", "timezone 'Mars/Olympus'"),
        (
            "devices: [{id: x, profile: gauge}]\ntests: [{name: t, expect: []}]\n",
            "device 'x': unknown profile 'gauge'",
        ),
        (
            "devices: [{id: x, profile: water_level}]\ntests: [{name: t, expect: []}]\n",
            "device 'x': attribute warning_level_m is required",
        ),
        (
            "start: 2026-07-20T12:00:00\ntests: [{name: t, expect: []}]\n",
            "start: 2026-07-20 12:00:00 has no UTC offset",
        ),
        (
            "tests: [{name: t, expect: []}, {name: t, expect: []}]\n",
            "test 't' is named twice",
        ),
    ],
)
def test_mistakes_in_a_file_name_the_file(
    tmp_path: Path, content: str | bytes, problem: str
) -> None:
    path = tmp_path / "broken.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(RuleTestError) as info:
        RuleTestFile(path)
    assert str(info.value).startswith(str(path)), str(info.value)
    assert problem in str(info.value), str(info.value)


def test_a_test_without_start_is_an_error(tmp_path: Path) -> None:
    header = HEADER.replace("start: 2026-07-20T12:00:00+08:00\n", "")
    (result,) = run(tmp_path, "- {name: t, expect: []}\n", header)
    assert result.error
    assert "no `start`: give one for the file or for this test" in result.report


def test_run_rule_tests_reports_broken_files_and_runs_the_others(tmp_path: Path) -> None:
    good = write_tests(tmp_path, PASSING)
    broken = tmp_path / "zz_broken.yaml"
    broken.write_text("tests: {")
    results = run_rule_tests([tmp_path / "rules.yaml", good, broken])
    # rules.yaml is not a test file: it errors as one, naming itself.
    by_file = {r.file.name: r for r in results}
    assert by_file["test.yaml"].passed
    assert by_file["zz_broken.yaml"].error
    assert by_file["zz_broken.yaml"].name == "(file)"
    assert str(broken) in by_file["zz_broken.yaml"].report
    assert by_file["rules.yaml"].error


def test_defaults_to_the_builtin_library(tmp_path: Path) -> None:
    path = tmp_path / "library.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            start: 2026-07-20T12:00:00+08:00
            devices:
              - {id: rg-1, profile: rain_gauge}
            tests:
              - name: library rules are loaded
                input:
                  - {device: rg-1, metric: rain_mm, values: "2x11"}
                expect:
                  - {at: 45m, alert: short_heavy_rain, device: rg-1, level: blue}
            """
        )
    )
    suite = RuleTestFile(path)
    assert "water_level" in suite.rules.by_name()
    (result,) = suite.run()
    assert result.passed, result.report


# --- backtests --------------------------------------------------------------------------------

PROFILES = load_profiles()
T0 = datetime(2026, 7, 20, 4, 0, tzinfo=UTC)


def gauge(device_id: str, district: str = "d01") -> DeviceInfo:
    profile = PROFILES["water_level"]
    attributes, problems = profile.device_attributes(
        {"warning_level_m": 4.0, "guaranteed_level_m": 5.0}
    )
    assert not problems
    return DeviceInfo(device_id, profile, district, "", attributes)


def rule_set(*raw: str) -> RuleSet:
    import yaml

    return RuleSet(
        tuple(
            compile_rule(yaml.safe_load(text), f"test.yaml:{i}", PROFILES)
            for i, text in enumerate(raw)
        )
    )


LEVEL = """
name: level
domain: hydrology
scope: {profiles: [water_level]}
ladder:
  - {level: yellow, when: "level_m >= attr.warning_level_m"}
  - {level: orange, when: "level_m >= attr.guaranteed_level_m"}
"""
HELD = """
name: held
domain: device_health
scope: {profiles: [water_level]}
when: "battery_v < 11"
level: blue
for: 20m
"""
SILENT = """
name: silent
domain: device_health
no_data: 3
level: blue
"""
TRAPPED = """
name: trapped
domain: elevator
scope: {profiles: [elevator]}
event: trapped_passengers
level: red
resolve_on: [back_to_normal]
"""


def series(
    device_id: str, values: str, start: datetime = T0, metric: str = "level_m"
) -> list[Reading]:
    return [
        Reading(start + timedelta(minutes=5 * i), device_id, metric, v)
        for i, v in enumerate(expand_series(values))
        if v is not None
    ]


def test_backtest_counts_alerts_escalations_and_firing_time() -> None:
    rules = rule_set(LEVEL, HELD, SILENT)
    # wl-1: yellow 10m-20m, orange 20m-30m (one alert, one escalation), again yellow at
    # 1h (a second alert, still firing at the end). wl-2: a blip under `for`, then silent.
    readings = sorted(
        series("wl-1", "3 3 4.5 4.5 5.5 5.5 3x5 4.5x11")
        + series("wl-2", "10 10 12", metric="battery_v"),
        key=lambda r: r.ts,
    )
    ticks: list[datetime] = []
    result = backtest(
        rules,
        [gauge("wl-1"), gauge("wl-2")],
        readings,
        [],
        T0,
        T0 + timedelta(hours=2),
        progress=ticks.append,
    )
    assert result.readings == len(readings) and result.events == 0 and result.devices == 2
    assert ticks[0] == T0 and ticks[-1] == T0 + timedelta(minutes=119) and len(ticks) == 120
    summary = result.summary().set_index("rule")
    assert list(result.summary().columns) == list(SUMMARY_COLUMNS)
    level = summary.loc["level"]
    assert level["alerts"] == 2 and level["escalations"] == 1 and level["de_escalations"] == 0
    assert level["subjects"] == 1 and level["max_level"] == "orange"
    assert level["first"] == pd.Timestamp(T0 + timedelta(minutes=10))
    assert level["last"] == pd.Timestamp(T0 + timedelta(minutes=60))
    # 10m → 30m, then 1h → the end of the range (2h).
    assert level["firing"] == pd.Timedelta(minutes=20 + 60)
    assert level["still_firing"] == 1
    held = summary.loc["held"]
    assert held["alerts"] == 0 and held["dropped"] == 1 and pd.isna(held["max_level"])
    assert pd.isna(held["first"])
    silent = summary.loc["silent"]
    # wl-2 last reported at 10m: silent from 25m on.
    assert silent["alerts"] == 1 and silent["first"] == pd.Timestamp(T0 + timedelta(minutes=25))
    assert silent["still_firing"] == 1 and silent["errors"] == 0
    records = {r["rule"]: r for r in result.records()}
    assert records["held"]["max_level"] is None and records["held"]["first"] is None
    json.dumps(list(records.values()), allow_nan=False)
    episodes = [e for e in result.episodes() if e.fired]
    assert [(e.rule, e.subject, e.max_level.label) for e in episodes] == [
        ("level", "wl-1", "orange"),
        ("silent", "wl-2", "blue"),
        ("level", "wl-1", "yellow"),
    ]


def test_backtest_replays_events_and_reports_json_records() -> None:
    elevator = PROFILES["elevator"]
    attributes, _ = elevator.device_attributes({"floors": 10})
    devices = [DeviceInfo("el-1", elevator, "d02", "", attributes)]
    events = [
        DeviceEvent(T0 + timedelta(minutes=3), "el-1", "trapped_passengers", 11, {"floor": 4}),
        DeviceEvent(T0 + timedelta(minutes=33), "el-1", "back_to_normal", 40),
        DeviceEvent(T0 + timedelta(minutes=50), "el-1", "trapped_passengers", 11),
        DeviceEvent(T0 + timedelta(hours=3), "el-1", "back_to_normal", 40),  # after the range
    ]
    result = backtest(rule_set(TRAPPED), devices, [], events, T0, T0 + timedelta(hours=1))
    assert result.events == 3
    (record,) = result.records()
    assert record == {
        "rule": "trapped",
        "domain": "elevator",
        "kind": "event",
        "alerts": 2,
        "escalations": 0,
        "de_escalations": 0,
        "dropped": 0,
        "subjects": 1,
        "max_level": "red",
        "first": "2026-07-20T04:03:00+00:00",
        "last": "2026-07-20T04:50:00+00:00",
        "firing_s": 30 * 60.0 + 10 * 60.0,
        "still_firing": 1,
        "errors": 0,
        "last_error": None,
    }
    json.dumps(result.records())


def test_backtest_warms_windows_from_history() -> None:
    rising = """
name: rising
domain: hydrology
scope: {profiles: [water_level]}
when: "delta(level_m, '1h') >= 0.5"
level: yellow
"""
    rules = rule_set(rising)
    devices = [gauge("wl-1")]
    assert warm_seconds(rules, devices) == 3600
    history = series("wl-1", "3.0", start=T0 - timedelta(minutes=50))
    readings = series("wl-1", "3.6")
    cold = backtest(rules, devices, readings, [], T0, T0 + timedelta(minutes=30))
    warm = backtest(rules, devices, readings, [], T0, T0 + timedelta(minutes=30), history=history)
    assert cold.summary().set_index("rule").loc["rising", "alerts"] == 0
    assert warm.summary().set_index("rule").loc["rising", "alerts"] == 1


def test_backtest_skips_data_outside_the_range_and_checks_it() -> None:
    rules = rule_set(LEVEL)
    readings = series("wl-1", "4.5 4.5 4.5", start=T0 - timedelta(minutes=5))
    result = backtest(rules, [gauge("wl-1")], readings, [], T0, T0 + timedelta(minutes=5))
    assert result.readings == 1
    with pytest.raises(ValueError, match="the range is empty"):
        backtest(rules, [], [], [], T0, T0)
    with pytest.raises(ValueError, match="timezone-aware"):
        backtest(rules, [], [], [], T0.replace(tzinfo=None), T0 + timedelta(hours=1))


def test_backtest_counts_rule_errors() -> None:
    broken = """
name: broken
domain: hydrology
scope: {profiles: [water_level]}
when: "level_m > attr.nowhere_m"
level: blue
"""
    result = backtest(
        rule_set(broken), [gauge("wl-1")], series("wl-1", "1 2"), [], T0, T0 + timedelta(hours=1)
    )
    (record,) = result.records()
    assert record["errors"] == 2 and "nowhere_m" in record["last_error"]
