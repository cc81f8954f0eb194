"""The rule runtime in its own process: fed through the pipe, reporting back, stopping clean."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from alerts.model import AlertTransition, ConditionState
from cityvitals.rules_runtime import RuleProcess, RuleRuntime
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
        RuleRuntime(load_rules(profiles), profiles, database, None, max_backlog=500, chunk=100)
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


def _quiet_then_high(offset: int) -> tuple[list[Reading], list[Reading]]:
    quiet = [
        Reading(T0 + timedelta(seconds=offset + 10 * k), f"wl-{i}", "level_m", 3.0)
        for k in range(30)
        for i in range(GAUGES)
    ]
    high = [
        Reading(T0 + timedelta(seconds=offset + 700), f"wl-{i}", "level_m", 4.8)
        for i in range(GAUGES)
    ]
    return quiet, high


def test_a_killed_rule_process_is_replaced_and_loses_nothing(
    database: str, profiles: ProfileSet
) -> None:
    _register(database)
    runtime = RuleProcess(
        RuleRuntime(load_rules(profiles), profiles, database, None, max_backlog=100_000, chunk=50)
    )
    runtime.start()
    try:
        assert runtime.ready.wait(30), runtime.last_error
        first = runtime.pid
        assert first is not None
        quiet, high = _quiet_then_high(0)
        runtime.submit(quiet, [])
        os.kill(first, signal.SIGKILL)
        # Handed over while the child is dead or being replaced: kept, then evaluated.
        runtime.submit(high, [])
        wait_until(lambda: runtime.restarts == 1, what="the rule process replaced")
        assert runtime.pid != first
        # The new child's reports replace last_error; the restart is kept on its own.
        assert runtime.last_restart is not None and "died" in runtime.last_restart
        wait_until(
            lambda: (
                scalar(
                    database,
                    "SELECT count(*) FROM rule_state WHERE rule = 'water_level' "
                    "AND state = 'firing'",
                )
                == GAUGES
            ),
            timeout=30,
            what="every gauge's alert firing after the restart",
        )
        wait_until(lambda: runtime.backlog == 0, what="everything handed over evaluated")
    finally:
        runtime.stop()
    assert runtime.restarts == 1
    assert scalar(database, "SELECT count(*) FROM alerts WHERE rule = 'water_level'") == GAUGES


def test_the_rule_process_ends_when_its_parent_is_killed(database: str, tmp_path: Path) -> None:
    _register(database)
    script = tmp_path / "parent.py"
    script.write_text(
        "import sys, time\n"
        "from cityvitals.rules_runtime import RuleProcess, RuleRuntime\n"
        "from devices.profile import load_profiles\n"
        "from rules.config import load_rules\n"
        "profiles = load_profiles([])\n"
        "rp = RuleProcess(RuleRuntime(load_rules(profiles), profiles, sys.argv[1], None))\n"
        "rp.start()\n"
        "assert rp.ready.wait(30)\n"
        "print(rp.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, str(script), database], stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)

        def gone() -> bool:
            try:
                os.kill(child, 0)
            except ProcessLookupError:
                return True
            # A zombie (reaped by init soon) counts as gone.
            with contextlib.suppress(OSError):
                return Path(f"/proc/{child}/stat").read_text().split()[2] == "Z"
            return True

        wait_until(gone, timeout=20, what="the orphaned rule process to end")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)
        if parent.stdout is not None:
            parent.stdout.close()


def test_alerts_do_not_wait_for_the_vital_signs(
    database: str, profiles: ProfileSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recomputing the vital signs pauses between signs to evaluate what came meanwhile."""
    import cityvitals.rules_runtime as rules_runtime

    _register(database)
    started = threading.Event()
    signs: list[float] = []
    real = rules_runtime.iter_vitals

    def slow(engine: Any, at: datetime) -> Any:
        # Stands for a city a hundred times larger: 30 ms a sign, about 3 s for them all.
        for sign in real(engine, at):
            started.set()
            time.sleep(0.03)
            signs.append(time.monotonic())
            yield sign

    monkeypatch.setattr(rules_runtime, "iter_vitals", slow)
    runtime = RuleRuntime(load_rules(profiles), profiles, database, None, vitals_interval=3600)
    stored: list[float] = []
    runtime.on_transitions.append(lambda out: stored.append(time.monotonic()))
    runtime.start()
    try:
        assert runtime.ready.wait(30), runtime.last_error
        runtime.submit([Reading(T0, "wl-0", "level_m", 3.0)], [])  # the first recomputation
        assert started.wait(10)
        runtime.submit([Reading(T0 + timedelta(seconds=10), "wl-1", "level_m", 4.8)], [])
        wait_until(lambda: stored, what="the transition stored")
        wait_until(lambda: len(signs) == 12, what="the recomputation done")  # 2 scopes × 6
        # Stored while the recomputation went on: most signs came after it.
        assert sum(t > stored[0] for t in signs) >= 6, [round(t - stored[0], 3) for t in signs]
    finally:
        runtime.stop()
