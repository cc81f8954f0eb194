"""Checking a scenario's `expect` list against the alert transitions a run produced.

An expectation is met when its domain (and rule, district, event, when given)
first reaches its level — by a new alert or an escalation — inside its
[after, before] window from the scenario's start.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta

from alerts.model import AlertTransition, ConditionState, Level
from simulators.scenario import Expectation, Scenario
from simulators.world import District


@dataclass(frozen=True)
class Finding:
    expectation: Expectation
    first: timedelta | None
    """When the level was first reached, from the scenario's start (None: never)."""

    @property
    def met(self) -> bool:
        e = self.expectation
        if self.first is None:
            return False
        return e.after <= self.first and (e.before is None or self.first <= e.before)

    def __str__(self) -> str:
        e = self.expectation
        when = "never" if self.first is None else f"at +{self.first}"
        window = f"[{e.after}, {e.before or '…'}]"
        where = f" in district {e.district}" if e.district else ""
        return (
            f"{'met' if self.met else 'NOT MET'}: {e.level} {e.domain} '{e.what}'{where} "
            f"expected in {window}, reached {when}"
        )


def _district(name: str | None, districts: list[District]) -> str | None:
    if name is None:
        return None
    if name.isdigit() and 1 <= int(name) <= len(districts):
        return districts[int(name) - 1].name
    return name


def check(
    scenario: Scenario, transitions: Iterable[AlertTransition], districts: list[District]
) -> list[Finding]:
    reached = list(t for t in transitions if t.state is ConditionState.FIRING)
    findings = []
    for e in scenario.expect:
        level = Level.parse(e.level)
        district = _district(e.district, districts)
        times = [
            t.at - scenario.start
            for t in reached
            if t.domain == e.domain
            and t.level == level
            and (e.rule is None or t.rule == e.rule)
            and (district is None or t.district == district)
            # The device event behind it, unless the rule is named (a condition rule's
            # transition carries readings, not the event that the device also sent).
            and (e.rule is not None or e.event is None or t.values.get("event") == e.event)
        ]
        findings.append(Finding(e, min(times) if times else None))
    return findings


def too_loud(scenario: Scenario, transitions: Iterable[AlertTransition]) -> list[AlertTransition]:
    """Alerts above the scenario's `quiet_above` level (empty when it sets none)."""
    if scenario.quiet_above is None:
        return []
    ceiling = Level.parse(scenario.quiet_above)
    return [t for t in transitions if t.state is ConditionState.FIRING and t.level > ceiling]
