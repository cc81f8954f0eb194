"""Fault injection: each kind's effect on a known stream, its count, what the ingest makes of it.

A tiny fake device reports known values every five minutes; the stream goes
through the injector exactly as the fleet sends it (on_values → encode →
on_message → flush), and the result through the real ingest decoder.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from devices import Quality, load_profiles
from devices.profile import ProfileSet
from ingest.decode import DeadLetterReason, DecodedMessage, MessageDecoder
from simulators.faults import (
    FaultInjector,
    FaultKind,
    FaultSpec,
    FaultSpecError,
    MalformedVariant,
    parse_fault_spec,
)
from simulators.model import SimDevice, Value, WireMessage

PROFILES: ProfileSet = load_profiles()
T0 = datetime(2026, 11, 25, 2, 0, tzinfo=UTC)
STEP = timedelta(minutes=5)
STEPS = 48  # four hours

WL = SimDevice("wl-1", PROFILES["water_level"], "pudong", 31.2, 121.5)
WL2 = SimDevice("wl-2", PROFILES["water_level"], "huangpu", 31.2, 121.5)
EF = SimDevice("ef-1", PROFILES["elevator_frame"], "pudong", 31.2, 121.5)
REGISTRY = {"wl-1": "water_level", "wl-2": "water_level", "ef-1": "elevator_frame"}


def level(i: int) -> float:
    return round(3.0 + 0.01 * i, 6)


def known_values(i: int) -> dict[str, Value]:
    """What the fake water-level gauge reports at step i."""
    return {"level_m": level(i), "battery_v": 3.6, "trend": "rising"}


def topic(device: SimDevice, channel: str = "telemetry") -> str:
    return f"city/{device.district}/{device.profile.name}/{device.device_id}/{channel}"


def encode(device: SimDevice, t: datetime, seq: int, values: dict[str, Value]) -> bytes:
    if device.profile.decoder == "json":
        return orjson.dumps({"ts": t, "seq": seq, "values": values})
    ms = int(t.timestamp() * 1000)
    return f"EF1,{ms},{seq},1,{values.get('floor', 7)},0,1,2.50,35,01".encode()


def run(
    specs: Iterable[FaultSpec | str],
    *,
    seed: int = 7,
    devices: Iterable[SimDevice] = (WL,),
    steps: int = STEPS,
    injector: FaultInjector | None = None,
) -> tuple[FaultInjector, list[WireMessage]]:
    """Drive the injector the way the fleet does, device by device each step."""
    parsed = [parse_fault_spec(s) if isinstance(s, str) else s for s in specs]
    inj = injector or FaultInjector(parsed, seed, PROFILES)
    out: list[WireMessage] = []
    for i in range(steps):
        t = T0 + i * STEP
        for device in devices:
            values, offset = inj.on_values(device, t, known_values(i))
            payload = encode(device, t + offset, i, values)
            msg = WireMessage(t, device.device_id, "telemetry", topic(device), payload)
            out += inj.on_message(msg, device)
    out += inj.flush()
    return inj, out


def body(msg: WireMessage) -> dict[str, Any]:
    data = orjson.loads(msg.payload)
    assert isinstance(data, dict)
    return data


def telemetry(out: list[WireMessage]) -> list[WireMessage]:
    return [m for m in out if m.channel == "telemetry"]


def step_of(msg: WireMessage) -> int:
    return int(body(msg)["seq"])


def decode(msg: WireMessage, received_at: datetime | None = None) -> DecodedMessage:
    decoder = MessageDecoder(PROFILES, REGISTRY)
    return decoder.decode(msg.topic, msg.payload, received_at or msg.t)


# --- no faults ---------------------------------------------------------------------


def test_without_faults_the_stream_passes_unchanged() -> None:
    inj, out = run([])
    assert [step_of(m) for m in out] == list(range(STEPS))
    assert [body(m)["values"] for m in out] == [known_values(i) for i in range(STEPS)]
    assert inj.counts == {}
    assert not inj


def test_faults_for_other_devices_leave_a_device_alone() -> None:
    inj, out = run(["dropout:1@3h:devices=wl-2", "malformed:1:devices=wl-2"])
    assert [step_of(m) for m in out] == list(range(STEPS))
    assert inj.counts == {"dropout": 0, "malformed": 0}


# --- episode kinds -----------------------------------------------------------------


def test_dropout_silences_the_device_for_whole_episodes() -> None:
    inj, out = run(["dropout:0.5@30m"], seed=4)
    sent = [step_of(m) for m in out]
    missing = sorted(set(range(STEPS)) - set(sent))
    assert sent == sorted(sent), "a dropout reorders nothing"
    assert missing
    assert inj.affected["dropout"] == len(missing)
    gaps = 1 + sum(1 for a, b in itertools.pairwise(missing) if b != a + 1)
    assert 1 <= gaps <= inj.counts["dropout"]


def test_dropout_silences_events_and_status_too() -> None:
    spec = FaultSpec(FaultKind.DROPOUT, 1.0, timedelta(hours=3))
    inj = FaultInjector([spec], 1, PROFILES)
    event = WireMessage(T0, "wl-1", "event", topic(WL, "event"), b'{"type":"low_battery"}')
    status = WireMessage(T0, "wl-1", "status", topic(WL, "status"), b"offline", retain=True)
    assert inj.on_message(event, WL) == []
    assert inj.on_message(status, WL) == []
    assert inj.counts["dropout"] == 1
    assert inj.affected["dropout"] == 2


def test_dropout_at_full_rate_and_long_episodes_is_one_long_silence() -> None:
    inj, out = run(["dropout:1@3h"])
    assert out == []
    assert inj.counts["dropout"] == 1
    assert inj.affected["dropout"] == STEPS


def test_flapping_toggles_retained_status_and_ends_online() -> None:
    inj, out = run(["flapping:1@3h:period=2m"])
    statuses = [m for m in out if m.channel == "status"]
    assert [step_of(m) for m in telemetry(out)] == list(range(STEPS)), "telemetry still flows"
    words = [m.payload for m in statuses]
    assert len(words) > 20
    assert words[0] == b"offline"
    assert all(a != b for a, b in itertools.pairwise(words)), "they alternate"
    assert words[-1] == b"online"
    assert all(m.retain and m.qos == 1 and m.topic == topic(WL, "status") for m in statuses)
    assert [m.t for m in statuses] == sorted(m.t for m in statuses)
    assert inj.affected["flapping"] == len(statuses)
    assert inj.counts["flapping"] >= 1
    decoded = decode(statuses[0])
    assert decoded.dead_letter is None
    assert decoded.status is not None and not decoded.status.online


def test_flapping_status_comes_before_the_message_that_released_it() -> None:
    _, out = run(["flapping:1@3h:period=2m"])
    for i, m in enumerate(out):
        if m.channel == "status" and i + 1 < len(out):
            assert m.t <= out[i + 1].t


def test_stuck_freezes_the_values_of_the_last_report_before_the_episode() -> None:
    start = T0 + timedelta(minutes=62)  # between the reports of 01:00 and 01:05
    spec = FaultSpec("stuck", 1.0, "30m", start=start, once=True)  # type: ignore[arg-type]
    inj, out = run([spec])
    by_step = {step_of(m): body(m)["values"] for m in out}
    frozen = known_values(12)  # 01:00, the last report before the episode
    for i in range(STEPS):
        t = T0 + i * STEP
        expected = frozen if start <= t < start + timedelta(minutes=30) else known_values(i)
        assert by_step[i] == expected, i
    assert inj.counts["stuck"] == 1
    assert inj.affected["stuck"] == 6


def test_stuck_can_be_limited_to_some_metrics() -> None:
    spec = parse_fault_spec("stuck:1@5h:metrics=level_m")
    _, out = run([spec])
    levels = {body(m)["values"]["level_m"] for m in out}
    assert len(levels) == 1
    assert all(body(m)["values"]["trend"] == "rising" for m in out)


def test_drift_adds_an_offset_growing_linearly_per_hour() -> None:
    start = T0 + timedelta(hours=1)
    spec = FaultSpec(
        FaultKind.DRIFT,
        1.0,
        timedelta(hours=2),
        params={"metrics": "level_m", "per_hour": 0.6},
        start=start,
        once=True,
    )
    inj, out = run([spec])
    for m in out:
        i = step_of(m)
        t = T0 + i * STEP
        drift = (
            0.6 * (t - start) / timedelta(hours=1) if start <= t < start + timedelta(hours=2) else 0
        )
        assert body(m)["values"]["level_m"] == pytest.approx(level(i) + drift), i
        assert body(m)["values"]["battery_v"] == 3.6
    assert inj.counts["drift"] == 1
    assert inj.affected["drift"] == 24


def test_drift_by_default_picks_a_metric_and_stays_in_range() -> None:
    inj, out = run(["drift:1@6h"], seed=3)
    changed = {
        k for m in out for k, v in body(m)["values"].items() if v != known_values(step_of(m))[k]
    }
    assert len(changed) == 1
    assert inj.counts["drift"] == 1
    assert all(decode(m).out_of_range == 0 for m in out)


# --- per-message value faults --------------------------------------------------------


def test_spike_pushes_one_value_far_off_for_one_message() -> None:
    inj, out = run(["spike:0.2:metrics=level_m:factor=10"])
    spiked = [m for m in out if body(m)["values"] != known_values(step_of(m))]
    assert spiked
    assert len(spiked) == inj.counts["spike"] == inj.affected["spike"]
    for m in spiked:
        i = step_of(m)
        values = body(m)["values"]
        assert {k for k in values if values[k] != known_values(i)[k]} == {"level_m"}
        assert abs(values["level_m"] - level(i)) >= 9 * level(i)
        decoded = decode(m)
        assert decoded.dead_letter is None
        assert decoded.out_of_range == 0, "a spike is wrong but physically possible"


def test_out_of_range_values_are_flagged_by_the_decoder() -> None:
    inj, out = run(["out_of_range:0.25"])
    flagged = 0
    for m in out:
        decoded = decode(m)
        assert decoded.dead_letter is None
        for r in decoded.readings:
            if r.quality & Quality.OUT_OF_RANGE:
                flagged += 1
                spec = PROFILES["water_level"].metrics[r.metric]
                assert spec.range is not None
                assert not spec.range[0] <= r.value <= spec.range[1]
    assert flagged > 0
    assert flagged == inj.counts["out_of_range"]


def test_clock_skew_forward_beyond_tolerance_is_flagged() -> None:
    inj, out = run(["clock_skew:0.25:offset=+10m"])
    skewed = 0
    for m in out:
        ts = datetime.fromisoformat(body(m)["ts"])
        decoded = decode(m)
        assert decoded.dead_letter is None
        if ts != m.t:
            skewed += 1
            assert ts - m.t == timedelta(minutes=10)
            assert all(r.quality & Quality.CLOCK_SKEW for r in decoded.readings)
        else:
            assert all(r.quality == Quality.GOOD for r in decoded.readings)
    assert skewed > 0
    assert skewed == inj.counts["clock_skew"]


def test_clock_skew_default_offsets_run_ahead_or_behind() -> None:
    _, out = run(["clock_skew:0.5"])
    offsets = {datetime.fromisoformat(body(m)["ts"]) - m.t for m in out}
    assert offsets == {timedelta(0), timedelta(minutes=10), timedelta(hours=-1)}


# --- per-message wire faults --------------------------------------------------------


def test_duplicate_sends_the_same_message_twice_in_a_row() -> None:
    inj, out = run(["duplicate:0.2"])
    steps = [step_of(m) for m in out]
    assert sorted(set(steps)) == list(range(STEPS))
    doubled = [i for i in set(steps) if steps.count(i) == 2]
    assert doubled
    assert len(out) - STEPS == len(doubled) == inj.counts["duplicate"]
    for i in doubled:
        first = steps.index(i)
        assert out[first] == out[first + 1]


def test_out_of_order_messages_arrive_after_the_next_message() -> None:
    inj, out = run(["out_of_order:0.2"])
    steps = [step_of(m) for m in out]
    assert sorted(steps) == list(range(STEPS)), "nothing lost, nothing doubled"
    late = [s for k, s in enumerate(steps) if any(s < e for e in steps[:k])]
    assert late
    held = inj.counts["out_of_order"]
    # A message held last of all is flushed at the end, which is no reordering.
    assert held - len(late) in (0, 1)
    if held != len(late):
        assert steps[-1] == STEPS - 1
    for k, s in enumerate(steps):
        if s in late:
            assert out[k].t > T0 + s * STEP, "sent later than its payload says"
            assert datetime.fromisoformat(body(out[k])["ts"]) == T0 + s * STEP


def test_out_of_order_after_more_messages() -> None:
    _, out = run(["out_of_order:0.1:after=3"], seed=11)
    steps = [step_of(m) for m in out]
    assert sorted(steps) == list(range(STEPS))
    for k, s in enumerate(steps):
        if any(s < e for e in steps[:k]):
            assert sum(1 for e in steps[:k] if e > s) >= 3 or k == len(steps) - 1


@pytest.mark.parametrize(
    ("variant", "reason"),
    [
        (MalformedVariant.TRUNCATED_JSON, DeadLetterReason.MALFORMED_PAYLOAD),
        (MalformedVariant.WRONG_TYPE, DeadLetterReason.WRONG_TYPE),
        (MalformedVariant.NAN, DeadLetterReason.MALFORMED_PAYLOAD),
        (MalformedVariant.NON_UTF8, DeadLetterReason.BAD_ENCODING),
        (MalformedVariant.UNKNOWN_METRIC, DeadLetterReason.UNKNOWN_METRIC),
        (MalformedVariant.NAIVE_TS, DeadLetterReason.BAD_TIMESTAMP),
        (MalformedVariant.EMPTY_OBJECT, DeadLetterReason.BAD_STRUCTURE),
    ],
)
def test_malformed_payloads_are_dead_lettered_by_the_ingest(
    variant: MalformedVariant, reason: DeadLetterReason
) -> None:
    inj, out = run([f"malformed:1:variant={variant}"], steps=12)
    assert len(out) == 12
    for m in out:
        decoded = decode(m)
        assert decoded.dead_letter is not None, m.payload
        assert decoded.dead_letter.reason == reason.value, decoded.dead_letter.detail
    assert inj.counts["malformed"] == 12
    assert inj.variants == {variant.value: 12}


def test_malformed_payloads_keep_the_good_values_when_only_one_is_wrong() -> None:
    _, out = run(["malformed:1:variant=unknown_metric"], steps=1)
    decoded = decode(out[0])
    assert {r.metric for r in decoded.readings} == {"level_m", "battery_v", "trend"}


def test_malformed_default_mixes_variants_all_rejected() -> None:
    inj, out = run(["malformed:1"])
    assert all(decode(m).dead_letter is not None for m in out)
    assert len(inj.variants) == len(MalformedVariant)
    assert sum(inj.variants.values()) == inj.counts["malformed"] == STEPS


@pytest.mark.parametrize("variant", list(MalformedVariant))
def test_malformed_vendor_frames_are_dead_lettered(variant: MalformedVariant) -> None:
    clean = decode(run([], devices=(EF,), steps=1)[1][0])
    assert clean.dead_letter is None and clean.readings, "the fake frame itself is valid"
    inj, out = run([f"malformed:1:variant={variant}"], devices=(EF,), steps=6)
    # Non-ASCII bytes may earn bad_encoding once the frame decoder's code maps to it.
    reasons = {DeadLetterReason.MALFORMED_PAYLOAD.value}
    if variant is MalformedVariant.NON_UTF8:
        reasons.add(DeadLetterReason.BAD_ENCODING.value)
    for m in out:
        decoded = decode(m)
        assert decoded.dead_letter is not None, m.payload
        assert decoded.dead_letter.reason in reasons
    assert inj.counts["malformed"] == 6


def test_malformed_leaves_events_and_status_alone() -> None:
    inj = FaultInjector([parse_fault_spec("malformed:1")], 1, PROFILES)
    event = WireMessage(T0, "wl-1", "event", topic(WL, "event"), b'{"type":"low_battery"}')
    assert inj.on_message(event, WL) == [event]
    assert inj.counts["malformed"] == 0


def test_unregistered_ids_are_registered_provisionally_by_the_ingest() -> None:
    inj, out = run(["unregistered:0.2"])
    ghosts = [m for m in out if m.device_id not in REGISTRY]
    assert ghosts
    assert len(ghosts) == inj.counts["unregistered"]
    assert len({m.device_id for m in ghosts}) == len(ghosts), "one new device per fault"
    for m in ghosts:
        assert m.topic == f"city/pudong/water_level/{m.device_id}/telemetry"
        decoded = decode(m)
        assert decoded.dead_letter is None
        assert decoded.new_device is not None
        assert decoded.new_device.device_id == m.device_id
        assert (decoded.new_device.profile, decoded.new_device.district) == (
            "water_level",
            "pudong",
        )


def test_unregistered_never_invents_a_registered_id() -> None:
    inj = FaultInjector(
        [parse_fault_spec("unregistered:1")], 1, PROFILES, registry_ids={"wl-1-unreg1"}
    )
    _, out = run([], injector=inj, steps=2)
    assert [m.device_id for m in out] == ["wl-1-unreg2", "wl-1-unreg3"]


def test_on_message_without_a_device_reads_the_topic() -> None:
    inj = FaultInjector([parse_fault_spec("malformed:1:variant=empty_object")], 1, PROFILES)
    msg = WireMessage(T0, "", "telemetry", topic(WL), encode(WL, T0, 0, known_values(0)))
    (out,) = inj.on_message(msg)
    assert out.payload == b"{}"
    with pytest.raises(ValueError, match="is not <root>"):
        inj.on_message(WireMessage(T0, "", "telemetry", "city/wl-1/telemetry", b"{}"))


# --- windows, scenarios, determinism ---------------------------------------------------


def test_a_window_limits_per_message_faults() -> None:
    start, end = T0 + timedelta(hours=1), T0 + timedelta(hours=2)
    spec = FaultSpec(FaultKind.DUPLICATE, 1.0, start=start, end=end)
    inj, out = run([spec])
    assert inj.counts["duplicate"] == 12
    doubled = {m.t for m in out if out.count(m) == 2}
    assert doubled == {start + k * STEP for k in range(12)}


def test_a_scenario_entry_schedules_one_drill_at_its_time() -> None:
    start = T0 + timedelta(hours=1)
    entry = {"kind": "dropout", "rate": 1.0, "duration": timedelta(minutes=30), "devices": []}
    spec = FaultSpec.from_entry(entry, start)
    assert spec.once and spec.start == start
    inj, out = run([spec], devices=(WL, WL2))
    for device in (WL, WL2):
        sent = {step_of(m) for m in out if m.device_id == device.device_id}
        assert set(range(STEPS)) - sent == set(range(12, 18))
    assert inj.counts["dropout"] == 2


def test_a_scenario_entry_of_a_message_kind_lasts_its_duration() -> None:
    start = T0 + timedelta(hours=1)
    spec = FaultSpec.from_entry(
        {"kind": "malformed", "rate": 1, "duration": "10m", "params": {"variant": "nan"}}, start
    )
    assert (spec.start, spec.end, spec.duration) == (start, start + timedelta(minutes=10), None)
    inj, _ = run([spec])
    assert inj.counts["malformed"] == 2
    with pytest.raises(FaultSpecError, match="at 2026-11-25T03:00:00"):
        FaultSpec.from_entry({"kind": "malformd", "rate": 1}, start)


ALL_KINDS = [
    "dropout:0.3@20m",
    "flapping:0.3@10m",
    "stuck:0.3@30m",
    "drift:0.3@2h",
    "spike:0.05",
    "out_of_range:0.05",
    "duplicate:0.05",
    "out_of_order:0.05",
    "clock_skew:0.05",
    "malformed:0.05",
    "unregistered:0.05",
]


def fingerprint(out: list[WireMessage]) -> list[tuple[Any, ...]]:
    return [(m.t, m.device_id, m.channel, m.topic, m.payload, m.qos, m.retain) for m in out]


def test_same_seed_same_faults_and_a_different_seed_different_ones() -> None:
    devices = (WL, WL2, EF)
    a_inj, a = run(ALL_KINDS, seed=42, devices=devices)
    b_inj, b = run(ALL_KINDS, seed=42, devices=devices)
    _, c = run(ALL_KINDS, seed=43, devices=devices)
    assert fingerprint(a) == fingerprint(b)
    assert a_inj.counts == b_inj.counts
    assert fingerprint(a) != fingerprint(c)
    assert set(a_inj.counts) == {s.split(":")[0] for s in ALL_KINDS}
    assert sum(a_inj.counts.values()) > 10


def test_faults_do_not_depend_on_how_devices_are_interleaved() -> None:
    _, together = run(ALL_KINDS, seed=5, devices=(WL, WL2))
    _, alone = run(ALL_KINDS, seed=5, devices=(WL2,))
    assert fingerprint([m for m in together if m.topic.startswith("city/huangpu/")]) == (
        fingerprint([m for m in alone if m.topic.startswith("city/huangpu/")])
    )


def test_adding_a_spec_of_another_kind_keeps_the_faults_of_the_first() -> None:
    one, _ = run(["spike:0.1"], seed=9)
    two, _ = run(["malformed:0.1", "spike:0.1"], seed=9)
    assert one.counts["spike"] == two.counts["spike"]


# --- spec parsing --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "check"),
    [
        (
            "dropout:0.05@30m",
            lambda s: (s.kind, s.rate, s.duration) == ("dropout", 0.05, timedelta(minutes=30)),
        ),
        (
            "malformed:0.01",
            lambda s: (
                (s.kind, s.rate, s.duration, s.devices) == ("malformed", 0.01, None, frozenset())
            ),
        ),
        ("duplicate:0.02", lambda s: s.kind is FaultKind.DUPLICATE),
        (
            "stuck:0.1@1h:devices=wl-001,wl-002",
            lambda s: s.devices == {"wl-001", "wl-002"} and s.duration == timedelta(hours=1),
        ),
        ("dropout:5%", lambda s: s.rate == 0.05 and s.duration == timedelta(minutes=30)),
        ("Flapping:0.1", lambda s: s.duration == timedelta(minutes=10)),
        (
            "clock_skew:0.1:offset=-1h,+10m",
            lambda s: s.params["offset"] == (timedelta(hours=-1), timedelta(minutes=10)),
        ),
        (
            "malformed:0.1:variant=nan,non_utf8",
            lambda s: s.params["variant"] == (MalformedVariant.NAN, MalformedVariant.NON_UTF8),
        ),
        ("spike:0.1:metrics=level_m:factor=20", lambda s: s.metrics == ("level_m",)),
        ("out_of_order:0.1:after=2", lambda s: s.params["after"] == 2),
    ],
)
def test_parse_good_specs(text: str, check: Callable[[FaultSpec], bool]) -> None:
    spec = parse_fault_spec(text)
    assert check(spec)
    assert parse_fault_spec(str(spec)) == spec


def test_yaml_mappings_parse_to_the_same_specs() -> None:
    assert parse_fault_spec(
        {"kind": "stuck", "rate": 0.1, "duration": "1h", "devices": ["wl-001", "wl-002"]}
    ) == parse_fault_spec("stuck:0.1@1h:devices=wl-001,wl-002")
    assert parse_fault_spec(
        {"kind": "malformed", "rate": "1%", "params": {"variant": ["nan"]}}
    ) == parse_fault_spec("malformed:0.01:variant=nan")
    assert parse_fault_spec({"kind": "dropout", "rate": 0.05, "duration": 1800}) == (
        parse_fault_spec("dropout:0.05@30m")
    )
    assert parse_fault_spec({"kind": "out_of_order", "rate": 0.1, "after": 2}).params == {
        "after": 2
    }


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("dropuot:0.05@30m", "did you mean dropout?"),
        ("dropout", "KIND:RATE"),
        ("dropout:", "rate is missing"),
        ("dropout:often", "rate 'often' is not a number"),
        ("dropout:1.5", "from 0 to 1"),
        ("dropout:0.1@", "duration after @ is missing"),
        ("stuck:0.1@soon", "'soon' is not a duration"),
        ("stuck:0.1@0s", "longer than zero"),
        ({"kind": "stuck", "rate": 0.1, "duration": 1e400}, "duration"),
        ("malformed:0.1@30m", "malformed happens to single messages and takes no duration"),
        ("stuck:0.1:foo=1", "stuck has no parameter 'foo' (stuck takes: metrics)"),
        ("duplicate:0.1:copies=1", "copies '1' must be a whole number of at least 2"),
        ("stuck:0.1:devices", "'devices' is not KEY=VALUE"),
        ("stuck:0.1:devices=wl 1", "'wl 1' is not a device id"),
        ("malformed:0.1:variant=garbage", "'garbage' is not a malformed variant"),
        ("clock_skew:0.1:offset=0s", "must be non-zero"),
        ("clock_skew:0.1:offset=later", "signed durations"),
        ("spike:0.1:factor=1", "greater than 1"),
        ("drift:0.1:direction=sideways", "up or down"),
        ("spike:0.1:metrics=Level M", "metric names"),
        ({"kind": "dropout"}, "needs 'rate'"),
        ({"rate": 0.1}, "needs 'kind'"),
        ({"kind": "stuck", "rate": 0.1, "params": {"metrics": "a"}, "metrics": "b"}, "both"),
        ({"kind": "stuck", "rate": 0.1, "colour": "red"}, "no parameter 'colour'"),
    ],
)
def test_parse_bad_specs_name_the_bad_part(source: str | dict[str, Any], message: str) -> None:
    with pytest.raises(FaultSpecError) as caught:
        parse_fault_spec(source)
    text = str(caught.value)
    assert message in text
    if isinstance(source, str):
        assert repr(source) in text


def test_bad_windows_are_refused() -> None:
    with pytest.raises(FaultSpecError, match="UTC offset"):
        FaultSpec(FaultKind.DUPLICATE, 0.1, start=datetime(2026, 1, 1))
    with pytest.raises(FaultSpecError, match="not after start"):
        FaultSpec(FaultKind.DUPLICATE, 0.1, start=T0, end=T0)
    with pytest.raises(FaultSpecError, match="once is for an episode kind"):
        FaultSpec(FaultKind.DUPLICATE, 0.1, start=T0, once=True)
