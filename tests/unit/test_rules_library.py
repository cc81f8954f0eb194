"""The shipped rule tests (rules/library/tests) pass, and they cover every default rule.

One pytest case per rule test, so a failure names the test and shows the runner's diff.
A rule added to the library without tests fails the coverage checks here.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest

from alerts.model import Level
from devices.profile import load_profiles
from rules.config import BUILTIN_RULE_DIR, load_rules
from rules.testing import (
    LIBRARY_TEST_DIR,
    ExpectedAlert,
    ExpectedTransition,
    RuleTestFile,
)

TEST_FILES = sorted(LIBRARY_TEST_DIR.glob("*.yaml"))
SUITES = {path.name: RuleTestFile(path) for path in TEST_FILES}
CASES = [(name, test) for name, suite in SUITES.items() for test in suite.names]
LIBRARY = load_rules(load_profiles())


@pytest.mark.parametrize(("file", "test"), CASES, ids=[f"{f}::{t}" for f, t in CASES])
def test_library_rule_test_passes(file: str, test: str) -> None:
    (result,) = SUITES[file].run([test])
    assert result.passed, "\n" + result.report


def test_every_library_rule_file_has_a_test_file() -> None:
    rule_files = {p.name for p in BUILTIN_RULE_DIR.glob("*.yaml")}
    assert rule_files, "no rule library?"
    assert rule_files <= {p.name for p in TEST_FILES}


def _expected() -> dict[str, list[ExpectedTransition | ExpectedAlert]]:
    by_rule: dict[str, list[ExpectedTransition | ExpectedAlert]] = defaultdict(list)
    for suite in SUITES.values():
        for alerts in suite.expected_alerts().values():
            for alert in alerts:
                by_rule[alert.alert].append(alert)
    return by_rule


EXPECTED = _expected()
RULES = sorted(r.name for r in LIBRARY.rules)


@pytest.mark.parametrize("rule", RULES)
def test_every_library_rule_is_tested_firing_and_resolving(rule: str) -> None:
    transitions = [e for e in EXPECTED[rule] if isinstance(e, ExpectedTransition)]
    states = {e.state for e in transitions}
    assert "firing" in states, f"no rule test expects {rule} to fire"
    assert "resolved" in states, f"no rule test expects {rule} to resolve"


@pytest.mark.parametrize("rule", sorted(r.name for r in LIBRARY.rules if len(r.spec.ladder) > 1))
def test_every_ladder_is_tested_up_and_down(rule: str) -> None:
    ladder = LIBRARY.by_name()[rule].spec.ladder
    firing = [
        e for e in EXPECTED[rule] if isinstance(e, ExpectedTransition) and e.state == "firing"
    ]
    levels = {e.level for e in firing}
    assert levels == {r.level for r in ladder}, f"{rule}: not every rung is tested"
    up = [e for e in firing if e.previous is not None and Level.NORMAL < e.previous < e.level]
    down = [e for e in firing if e.previous is not None and e.previous > e.level]
    assert up, f"{rule}: no test expects an escalation (give `previous:`)"
    assert down, f"{rule}: no test expects a de-escalation (give `previous:`)"


def test_every_event_of_the_event_rules_is_tested() -> None:
    tested: set[tuple[str, str]] = set()
    for path in TEST_FILES:
        suite = SUITES[path.name]
        for _, _, raw in suite.tests:
            for event in raw.get("events", []):
                tested.add((event["device"], event["type"]))
    event_types = {e for r in LIBRARY.rules for e in r.spec.events}
    assert event_types <= {t for _, t in tested}, sorted(event_types - {t for _, t in tested})


# --- engine behaviour the rule tests brought to light ------------------------------------------

WATER_LEVEL_TEST = """\
rule_files: [{rules}]
start: 2026-07-20T12:00:00+08:00
devices:
  - {{id: wl-1, profile: water_level,
     attributes: {{warning_level_m: 4.5, guaranteed_level_m: 5.2}}}}
tests:
  - name: clear_for counts from when the clear condition holds
    only: [water_level]
    input:
      # Yellow, then 10 minutes in the blue band, then under the clear line (4.15 m) from
      # 15m: the clear condition has held for clear_for (15m) only at 30m.
      - {{device: wl-1, metric: level_m, values: "4.6 4.3 4.3 4.0x5"}}
    expect:
      - {{at: 0m, alert: water_level, device: wl-1, level: yellow}}
      - {{at: 30m, alert: water_level, device: wl-1, state: resolved, level: yellow}}
"""


def test_clear_for_counts_from_when_the_clear_condition_holds(tmp_path: Path) -> None:
    test_file = tmp_path / "clear_for.yaml"
    test_file.write_text(WATER_LEVEL_TEST.format(rules=BUILTIN_RULE_DIR / "hydrology.yaml"))
    (result,) = RuleTestFile(test_file).run()
    assert result.passed, "\n" + result.report


SCHEDULE_RULES = """\
- name: night_level
  domain: hydrology
  scope: {profiles: [water_level]}
  active: {between: ["22:00", "06:00"]}
  when: "level_m > 4"
  level: blue
  clear: "level_m < 3.5"
  clear_for: 15m
"""

SCHEDULE_TEST = """\
rule_files: [rules.yaml]
start: 2026-07-20T21:30:00+08:00
devices:
  - {id: wl-1, profile: water_level, attributes: {warning_level_m: 4.5, guaranteed_level_m: 5.2}}
tests:
  - name: a scheduled rule's alert ends with its schedule
    input:
      - {device: wl-1, metric: level_m, values: "4.2x120"}
    expect_at:
      - {at: 1h, firing: [{alert: night_level, device: wl-1, level: blue}]}
      # 06:15: the rule stopped applying at 06:00; its `clear` (a hysteresis band) must
      # not keep the alert open all day.
      - {at: 8h45m, firing: []}
"""


def test_a_scheduled_alert_ends_with_its_schedule(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(SCHEDULE_RULES)
    test_file = tmp_path / "schedule.yaml"
    test_file.write_text(SCHEDULE_TEST)
    (result,) = RuleTestFile(test_file).run()
    assert result.passed, "\n" + result.report
