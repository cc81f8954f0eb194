"""The rule runtime in its own process: fed through the pipe, reporting back, stopping clean."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg.types.json import Jsonb

from alerts.model import AlertTransition, ConditionState
from cityvitals.rules_runtime import RuleProcess
from devices.model import Reading
from devices.profile import ProfileSet
from rules.config import load_rules
from tests.support import scalar, wait_until

pytestmark = pytest.mark.slow

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
GAUGES = 30


def _register(database: str) -> None:
    attributes = {"warning_level_m": 4.5, "guaranteed_level_m": 5.2, "historical_max_m": 6.0}
    with psycopg.connect(database) as conn:
        for i in range(GAUGES):
            conn.execute(
                "INSERT INTO devices (device_id, profile, district, name, attributes) "
                "VALUES (%s, 'water_level', 'd01', '', %s)",
                (f"wl-{i}", Jsonb(attributes)),
            )


def test_transitions_come_back_and_stop_loses_nothing(database: str, profiles: ProfileSet) -> None:
    _register(database)
    runtime = RuleProcess(
        load_rules(profiles), profiles, database, None, max_backlog=500, chunk=100
    )
    got: list[AlertTransition] = []
    evaluated: list[float] = []
    runtime.on_transitions.append(got.extend)
    runtime.on_evaluated.append(lambda out, started, finished: evaluated.append(finished))
    runtime.start()
    try:
        assert runtime.ready.wait(30), runtime.last_error
        assert runtime.restored == frozenset()
        # Every gauge above its warning level, in one batch far larger than the bound,
        # with plenty of quiet readings before it.
        quiet = [
            Reading(T0 + timedelta(seconds=10 * k), f"wl-{i}", "level_m", 3.0)
            for k in range(60)
            for i in range(GAUGES)
        ]
        high = [
            Reading(T0 + timedelta(seconds=700), f"wl-{i}", "level_m", 4.8) for i in range(GAUGES)
        ]
        runtime.submit(quiet + high, [])
        assert runtime.backlog <= 500
    finally:
        runtime.stop()  # at once: what was handed over is still evaluated and stored
    assert runtime.stopped.is_set()
    assert runtime.stats.readings == len(quiet) + len(high)
    assert runtime.stats.chunks >= len(quiet) // 100
    assert runtime.rule_errors == {}
    assert evaluated
    firing = {t.device_id for t in got if t.state is ConditionState.FIRING}
    assert firing == {f"wl-{i}" for i in range(GAUGES)}
    assert runtime.transitions == len(got)
    wait_until(
        lambda: (
            scalar(database, "SELECT count(*) FROM rule_state WHERE rule = 'water_level'") == GAUGES
        ),
        what="rule state stored",
    )
