"""The rule runtime's side of the ingest: chunks of whole device instants, a bounded backlog."""

from __future__ import annotations

import itertools
import queue
import threading
from datetime import UTC, datetime, timedelta

from alerts.model import ConditionState
from cityvitals.rules_runtime import (
    RuleRuntime,
    _chunks,
    decode_batch,
    decode_runs,
    encode_batch,
)
from devices.model import DeviceEvent, Reading
from devices.profile import load_profiles
from rules.config import RuleSet, load_rules
from rules.engine import DeviceInfo, Engine

T0 = datetime(2026, 5, 1, tzinfo=UTC)


def _batch(devices: int, instants: int, metrics: int) -> list[Reading]:
    return [
        Reading(T0 + timedelta(seconds=i), f"d{d}", f"m{m}", float(m))
        for d in range(devices)
        for i in range(instants)
        for m in range(metrics)
    ]


def test_chunks_keep_every_device_instant_whole_and_in_order() -> None:
    readings = _batch(7, 5, 9)
    chunks = _chunks(readings, 40)
    assert [r for c in chunks for r in c] == readings
    assert all(len(c) <= 40 + 8 for c in chunks)
    for before, after in itertools.pairwise(chunks):
        assert (before[-1].device_id, before[-1].ts) != (after[0].device_id, after[0].ts)
    assert _chunks(readings, 10_000) == [readings]


def test_submit_never_lets_the_backlog_pass_its_bound() -> None:
    runtime = RuleRuntime(
        RuleSet(()), load_profiles(), "postgresql://unused", None, max_backlog=100, chunk=30
    )
    readings = _batch(10, 10, 5)  # 500 readings: five times the bound, in one batch
    event = DeviceEvent(T0, "d1", "door_open")
    done = threading.Event()
    thread = threading.Thread(
        target=lambda: (runtime.submit(readings, [event]), done.set()), daemon=True
    )
    thread.start()
    seen: list[Reading] = []
    events: list[DeviceEvent] = []
    most = 0
    while not (done.is_set() and runtime._queue.empty()):
        try:
            item = runtime._queue.get(timeout=2)
        except queue.Empty:  # the submitting thread is stuck
            break
        assert item is not None
        most = max(most, runtime.backlog)
        seen += item[0]
        events += item[1]
        runtime._done(len(item[0]) + len(item[1]))
    thread.join(5)
    assert seen == readings and events == [event]
    assert most <= 100
    assert runtime.backlog == 0


def test_a_chunk_crosses_the_pipe_unchanged() -> None:
    readings = [*_batch(3, 4, 5), Reading(T0, "d9", "count", 3, 1)]  # an int stays an int
    events = [DeviceEvent(T0, "d1", "door_open", 7, {"floor": 3})]
    got_readings, got_events = decode_batch(encode_batch(readings, events))
    assert got_readings == readings and got_events == events
    assert [type(r.value) for r in got_readings] == [type(r.value) for r in readings]
    assert all(type(r) is Reading for r in got_readings)
    assert decode_batch(encode_batch([], [])) == ([], [])


def test_runs_evaluate_as_the_readings_do() -> None:
    profiles = load_profiles()
    rules = load_rules(profiles)
    attributes = {
        "warning_level_m": 4.5,
        "guaranteed_level_m": 5.2,
        "historical_max_m": 6.0,
        "approach_margin_m": 0.3,
    }
    devices = [
        DeviceInfo(f"wl-{i}", profiles["water_level"], "d01", "", attributes) for i in range(3)
    ]
    batches: list[list[Reading]] = []
    for b in range(6):
        batch = []
        for k in range(20):
            at = T0 + timedelta(minutes=10 * b + k / 2)
            for d in devices:
                level = 4.0 + 1.5 * ((b + k // 5) % 3 == 0) + 0.01 * k
                batch.append(Reading(at, d.device_id, "level_m", level))
                batch.append(Reading(at, d.device_id, "battery_v", 12.6))
        # The same instant again, apart from its first readings, and a late reading.
        batch.append(Reading(T0 + timedelta(minutes=10 * b), "wl-0", "rssi_dbm", -90.0))
        batch.append(Reading(T0 + timedelta(minutes=10 * b - 3), "wl-1", "level_m", 4.9))
        batches.append(batch)
    by_readings, by_runs = Engine(rules), Engine(rules)
    for engine in (by_readings, by_runs):
        engine.set_devices(devices)
    for batch in batches:
        want = by_readings.ingest(batch)
        runs, events, n = decode_runs(encode_batch(batch, []))
        assert n == len(batch) and events == []
        assert by_runs.ingest_runs(runs) == want
    assert any(t.state is ConditionState.FIRING for t in want) or by_readings.alerts
    for device_id, state in by_readings.devices.items():
        other = by_runs.devices[device_id]
        assert (state.latest, state.last_seen) == (other.latest, other.last_seen)
        assert {m: list(s) for m, s in state.history.items()} == {
            m: list(s) for m, s in other.history.items()
        }
    assert by_readings.alerts == by_runs.alerts


def test_the_handover_leaves_out_unread_metrics_but_no_instant() -> None:
    # d0 at T0: one read metric among unread ones; d1 at T0 and d0 at T0+1s: none read.
    later = T0 + timedelta(seconds=1)
    readings = [
        Reading(T0, "d0", "floor", 3.0),
        Reading(T0, "d0", "fault_code", 0.0),
        Reading(T0, "d0", "door", 1.0),
        Reading(T0, "d1", "rssi_dbm", -90.0),
        Reading(T0, "d1", "floor", 2.0),
        Reading(later, "d0", "door", 0.0),
    ]
    runs, _, given = decode_runs(encode_batch(readings, [], frozenset({"fault_code"})))
    assert given == len(readings)
    t0 = T0.timestamp()
    assert runs == [
        ("d0", t0, ["floor", "fault_code"], [3.0, 0.0]),
        ("d1", t0, ["rssi_dbm"], [-90.0]),
        ("d0", t0 + 1, ["door"], [0.0]),
    ]
    assert decode_runs(encode_batch([], [], frozenset()))[0] == []


def test_the_engine_reads_rule_window_derived_and_summary_metrics() -> None:
    profiles = load_profiles()
    read = Engine(load_rules(profiles)).metrics_read()
    # Conditions, windows, what AQI and fill ratio are derived from.
    assert {"level_m", "rain_mm", "laeq_db", "pm2_5", "o3", "cover_open"} <= read
    # The floor an elevator event's summary names.
    assert "floor" in read
    # An elevator's motion, a monitor's percentiles, any radio's signal strength: no rule.
    assert not {"door", "speed_mps", "load_pct", "l90_db", "rssi_dbm"} & read
