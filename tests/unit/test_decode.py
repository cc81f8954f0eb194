"""MessageDecoder: (topic, payload, received_at) → readings, events, status or a dead letter.

Pure tests with the shipped profiles and a fixed receive time; no broker, no database.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devices import Quality, load_profiles
from devices.model import Reading
from devices.profile import ProfileSet
from ingest.decode import DeadLetterReason, DecodedMessage, MessageDecoder, NewDevice

NOW = datetime(2026, 11, 25, 2, 0, 0, tzinfo=UTC)
"""The fixed receive time of every message here (10:00 in Shanghai)."""

PROFILES: ProfileSet = load_profiles()

WL = "city/pudong/water_level/wl-1/telemetry"
EL_EVENT = "city/pudong/elevator/el-1/event"
EL_STATUS = "city/pudong/elevator/el-1/status"
FRAME = "city/pudong/elevator_frame/ef-1"

REGISTRY = {
    "wl-1": "water_level",
    "el-1": "elevator",
    "ef-1": "elevator_frame",
    "dr-1": "drainage",
    "aq-1": "air_quality",
}


def decoder(**kwargs: Any) -> MessageDecoder:
    return MessageDecoder(PROFILES, REGISTRY, **kwargs)


def decode(topic: str, payload: bytes | str | dict[str, Any], **kwargs: Any) -> DecodedMessage:
    if isinstance(payload, dict):
        payload = orjson.dumps(payload)
    elif isinstance(payload, str):
        payload = payload.encode()
    return decoder(**kwargs).decode(topic, payload, NOW)


def values(msg: DecodedMessage) -> dict[str, float]:
    return {r.metric: r.value for r in msg.readings}


def assert_clean(msg: DecodedMessage) -> None:
    assert msg.dead_letter is None, msg.dead_letter


def assert_dead(msg: DecodedMessage, reason: DeadLetterReason) -> str:
    assert msg.dead_letter is not None, "expected a dead letter"
    assert msg.dead_letter.reason == reason.value, msg.dead_letter.detail
    return msg.dead_letter.detail


# --- telemetry ------------------------------------------------------------------


def test_canonical_telemetry() -> None:
    msg = decode(
        WL,
        {
            "ts": "2026-11-25T10:00:00.123+08:00",
            "seq": 1042,
            "values": {"level_m": 3.21, "battery_v": 3.62},
        },
    )
    assert_clean(msg)
    ts = datetime(2026, 11, 25, 2, 0, 0, 123000, tzinfo=UTC)
    assert msg.readings == [
        Reading(ts, "wl-1", "level_m", 3.21, 0),
        Reading(ts, "wl-1", "battery_v", 3.62, 0),
    ]
    assert msg.device_id == "wl-1"
    assert (msg.first_seq, msg.last_seq) == (1042, 1042)
    assert msg.events == [] and msg.status is None and msg.new_device is None
    assert msg.out_of_range == 0


def test_iso_timestamp_offset_is_honoured() -> None:
    # The same instant written in three offsets is one UTC instant.
    stamps = ["2026-11-25T10:00:00+08:00", "2026-11-25T02:00:00Z", "2026-11-24T21:00:00-05:00"]
    seen = {decode(WL, {"ts": s, "values": {"level_m": 1}}).readings[0].ts for s in stamps}
    assert seen == {NOW}
    ts = decode(WL, {"ts": "2026-11-25T10:00:00+08:00", "values": {"level_m": 1}}).readings[0].ts
    assert ts.utcoffset() is not None
    assert ts == NOW


def test_epoch_milliseconds() -> None:
    msg = decode(WL, {"ts": 1764036000123, "values": {"level_m": 2.5}})
    assert_clean(msg)
    (r,) = msg.readings
    assert r.ts == datetime(2025, 11, 25, 2, 0, 0, 123000, tzinfo=UTC)
    assert r.quality == Quality.GOOD


def test_epoch_milliseconds_as_float() -> None:
    (r,) = decode(WL, {"ts": 1764036000123.0, "values": {"level_m": 2.5}}).readings
    assert r.ts == datetime(2025, 11, 25, 2, 0, 0, 123000, tzinfo=UTC)


def test_missing_ts_takes_receive_time_and_is_flagged() -> None:
    msg = decode(WL, {"seq": 1, "values": {"level_m": 2.5, "battery_v": 12.1}})
    assert_clean(msg)
    assert [r.ts for r in msg.readings] == [NOW, NOW]
    assert all(r.quality == Quality.RECEIVE_TIME for r in msg.readings)


def test_ts_without_offset_is_rejected() -> None:
    msg = decode(WL, {"ts": "2026-11-25T10:00:00", "values": {"level_m": 2.5}})
    detail = assert_dead(msg, DeadLetterReason.BAD_TIMESTAMP)
    assert msg.readings == []
    assert "no UTC offset" in detail and "+08:00" in detail
    assert msg.dead_letter is not None and msg.dead_letter.device_id == "wl-1"


def test_epoch_seconds_are_rejected_with_a_hint() -> None:
    msg = decode(WL, {"ts": 1764036000, "values": {"level_m": 2.5}})
    detail = assert_dead(msg, DeadLetterReason.BAD_TIMESTAMP)
    assert msg.readings == []
    assert "looks like seconds" in detail


def test_out_of_era_epoch_has_no_seconds_hint() -> None:
    detail = assert_dead(
        decode(WL, {"ts": 12, "values": {"level_m": 2.5}}), DeadLetterReason.BAD_TIMESTAMP
    )
    assert "looks like seconds" not in detail


@pytest.mark.parametrize("ts", ["yesterday", "2026-13-01T00:00:00+08:00", True, [1], {"a": 1}])
def test_unusable_ts(ts: Any) -> None:
    msg = decode(WL, {"ts": ts, "values": {"level_m": 2.5}})
    assert_dead(msg, DeadLetterReason.BAD_TIMESTAMP)
    assert msg.readings == []


def test_future_ts_is_stored_and_flagged_clock_skew() -> None:
    ahead = NOW + timedelta(hours=1)
    msg = decode(WL, {"ts": ahead.isoformat(), "values": {"level_m": 2.5}})
    assert_clean(msg)
    (r,) = msg.readings
    assert r.ts == ahead
    assert r.quality == Quality.CLOCK_SKEW


def test_small_clock_lead_is_tolerated() -> None:
    ahead = NOW + timedelta(minutes=4)
    (r,) = decode(WL, {"ts": ahead.isoformat(), "values": {"level_m": 2.5}}).readings
    assert r.quality == Quality.GOOD
    (r,) = decode(
        WL,
        {"ts": ahead.isoformat(), "values": {"level_m": 2.5}},
        future_tolerance=timedelta(minutes=1),
    ).readings
    assert r.quality == Quality.CLOCK_SKEW


def test_batch_payload() -> None:
    base = 1764036000000
    batch = {
        "readings": [
            {"ts": base + i * 60_000, "seq": 10 + i, "values": {"level_m": 3.0 + i / 100}}
            for i in range(20)
        ]
    }
    msg = decode(WL, batch)
    assert_clean(msg)
    assert len(msg.readings) == 20
    assert [r.value for r in msg.readings] == [3.0 + i / 100 for i in range(20)]
    assert msg.readings[-1].ts - msg.readings[0].ts == timedelta(minutes=19)
    assert (msg.first_seq, msg.last_seq) == (10, 29)


def test_batch_keeps_good_items_and_dead_letters_the_bad() -> None:
    msg = decode(
        WL,
        {
            "readings": [
                {"ts": 1764036000000, "values": {"level_m": 1.0}},
                "not an object",
                {"ts": "noon", "values": {"level_m": 2.0}},
                {"ts": 1764036060000, "values": {"level_m": 3.0}},
            ]
        },
    )
    detail = assert_dead(msg, DeadLetterReason.BAD_STRUCTURE)
    assert [r.value for r in msg.readings] == [1.0, 3.0]
    assert "readings[1] is not an object" in detail
    assert "readings[2].ts" in detail
    assert "the other 2 value(s) were stored" in detail


@pytest.mark.parametrize("batch", [[], {"a": 1}, "x"])
def test_batch_must_be_a_non_empty_list(batch: Any) -> None:
    msg = decode(WL, {"readings": batch})
    assert_dead(msg, DeadLetterReason.BAD_STRUCTURE)
    assert msg.readings == []


def test_enum_words_and_codes() -> None:
    msg = decode(
        "city/pudong/elevator/el-1/telemetry",
        {"values": {"state": "running", "door": 2, "service_mode": "fire_return", "power": "off"}},
    )
    assert_clean(msg)
    assert values(msg) == {"state": 1.0, "door": 2.0, "service_mode": 2.0, "power": 2.0}
    # Negative enum numbers, as words and as codes.
    assert values(decode(WL, {"values": {"trend": "falling"}})) == {"trend": -1.0}
    assert values(decode(WL, {"values": {"trend": -1}})) == {"trend": -1.0}


@pytest.mark.parametrize("raw", ["RUNNING", "flying", 9, 1.0, True, None])
def test_enum_rejects_unknown_words_and_codes(raw: Any) -> None:
    msg = decode("city/pudong/elevator/el-1/telemetry", {"values": {"state": raw, "floor": 3}})
    detail = assert_dead(msg, DeadLetterReason.WRONG_TYPE)
    assert values(msg) == {"floor": 3.0}
    assert "values.state" in detail


def test_bool_metrics() -> None:
    msg = decode(
        "city/pudong/drainage/dr-1/telemetry",
        {"values": {"cover_open": True}},
    )
    assert values(msg) == {"cover_open": 1.0}
    msg = decode(
        "city/pudong/elevator/el-1/telemetry",
        {"values": {"in_door_zone": False, "passengers_present": 1}},
    )
    assert_clean(msg)
    assert values(msg) == {"in_door_zone": 0.0, "passengers_present": 1.0}


@pytest.mark.parametrize("raw", ["true", 2, 0.5, 1.0, None])
def test_bool_rejects_non_booleans(raw: Any) -> None:
    msg = decode("city/pudong/drainage/dr-1/telemetry", {"values": {"cover_open": raw}})
    assert_dead(msg, DeadLetterReason.WRONG_TYPE)
    assert msg.readings == []


def test_int_metric_with_a_fraction_is_wrong_type() -> None:
    msg = decode("city/pudong/elevator/el-1/telemetry", {"values": {"floor": 7.5, "load_pct": 40}})
    detail = assert_dead(msg, DeadLetterReason.WRONG_TYPE)
    assert "values.floor" in detail and "integer" in detail
    assert values(msg) == {"load_pct": 40.0}
    # A whole number written as a float is an integer.
    assert values(decode("city/pudong/elevator/el-1/telemetry", {"values": {"floor": 7.0}})) == {
        "floor": 7.0
    }


@pytest.mark.parametrize("raw", ["3.2", None, [3.2], {"v": 3.2}, True])
def test_float_metric_needs_a_number(raw: Any) -> None:
    msg = decode(WL, {"values": {"level_m": raw}})
    detail = assert_dead(msg, DeadLetterReason.WRONG_TYPE)
    assert "values.level_m" in detail
    assert msg.readings == []


def test_out_of_range_is_stored_flagged_and_counted() -> None:
    msg = decode(
        WL,
        {
            "ts": 1764036000000,
            "values": {"level_m": 6000.0, "rate_m_h": -9.0, "battery_v": 12.0},
        },
    )
    assert_clean(msg)
    flags = {r.metric: r.quality for r in msg.readings}
    assert flags == {
        "level_m": Quality.OUT_OF_RANGE,
        "rate_m_h": Quality.OUT_OF_RANGE,
        "battery_v": Quality.GOOD,
    }
    assert values(msg)["level_m"] == 6000.0
    assert msg.out_of_range == 2


def test_range_bounds_are_inclusive() -> None:
    msg = decode(WL, {"ts": 1764036000000, "values": {"rate_m_h": 5, "rssi_dbm": -140}})
    assert [r.quality for r in msg.readings] == [0, 0]
    assert msg.out_of_range == 0


def test_out_of_range_combines_with_receive_time_flag() -> None:
    (r,) = decode(WL, {"values": {"level_m": -60}}).readings
    assert r.quality == Quality.OUT_OF_RANGE | Quality.RECEIVE_TIME


def test_unknown_metric_keeps_the_good_ones() -> None:
    msg = decode(
        WL,
        {"ts": 1764036000000, "values": {"level_m": 3.1, "water_temp_c": 12.0, "battery_v": 3.6}},
    )
    detail = assert_dead(msg, DeadLetterReason.UNKNOWN_METRIC)
    assert values(msg) == {"level_m": 3.1, "battery_v": 3.6}
    assert "water_temp_c" in detail
    assert "level_m" in detail  # the known metrics are listed
    assert "the other 2 value(s) were stored" in detail
    assert msg.dead_letter is not None
    assert msg.dead_letter.topic == WL and msg.dead_letter.device_id == "wl-1"


def test_many_problems_are_summarised() -> None:
    bad = {f"m{i}": 1 for i in range(15)}
    detail = assert_dead(decode(WL, {"values": bad}), DeadLetterReason.UNKNOWN_METRIC)
    assert "and 5 more" in detail


@pytest.mark.parametrize("payload", [{"seq": 1}, {"values": {}}, {"values": [1, 2]}, {}])
def test_telemetry_without_values(payload: dict[str, Any]) -> None:
    msg = decode(WL, payload)
    assert_dead(msg, DeadLetterReason.BAD_STRUCTURE)
    assert msg.readings == []


@pytest.mark.parametrize("seq", [-1, 1.5, "7", True])
def test_bad_seq_is_reported_but_values_kept(seq: Any) -> None:
    msg = decode(WL, {"seq": seq, "values": {"level_m": 1.0}})
    assert_dead(msg, DeadLetterReason.WRONG_TYPE)
    assert values(msg) == {"level_m": 1.0}
    assert msg.last_seq is None


@pytest.mark.parametrize(
    "payload",
    [
        b'{"values": {"level_m": NaN}}',
        b'{"values": {"level_m": Infinity}}',
        b'{"values": {"level_m": -Infinity}}',
        b'{"values": {"level_m": 3.2}',
        b'{"values": {"level_m": 3.2,}}',
        b"level_m=3.2",
        b"",
    ],
)
def test_not_json_is_malformed(payload: bytes) -> None:
    msg = decode(WL, payload)
    detail = assert_dead(msg, DeadLetterReason.MALFORMED_PAYLOAD)
    assert msg.readings == []
    assert "not valid JSON" in detail
    assert msg.dead_letter is not None and msg.dead_letter.payload == payload


@pytest.mark.parametrize("payload", [b"[1, 2]", b"3.2", b'"x"', b"null"])
def test_json_that_is_not_an_object(payload: bytes) -> None:
    assert_dead(decode(WL, payload), DeadLetterReason.BAD_STRUCTURE)


def test_non_utf8_is_bad_encoding() -> None:
    payload = '{"values": {"level_m": 3.2}, "site": "黄浦江"}'.encode("gb18030")
    msg = decode(WL, payload)
    detail = assert_dead(msg, DeadLetterReason.BAD_ENCODING)
    assert "not UTF-8" in detail
    assert msg.dead_letter is not None and msg.dead_letter.payload == payload


def test_utf16_with_bom_is_bad_encoding() -> None:
    payload = '{"values": {"level_m": 3.2}}'.encode("utf-16")
    msg = decode(WL, payload)
    assert_dead(msg, DeadLetterReason.BAD_ENCODING)
    assert msg.readings == []


@pytest.mark.parametrize("codec", ["utf-16-le", "utf-16-be"])
def test_utf16_without_bom_is_bad_encoding(codec: str) -> None:
    msg = decode(WL, '{"values": {"level_m": 3.2}}'.encode(codec))
    assert_dead(msg, DeadLetterReason.BAD_ENCODING)


def test_utf8_text_is_fine() -> None:
    msg = decode(EL_EVENT, {"type": "alarm_button", "detail": {"note": "按了警铃"}})
    assert_clean(msg)
    assert msg.events[0].detail == {"note": "按了警铃"}


def test_too_large_payload_is_cut_in_the_dead_letter() -> None:
    payload = orjson.dumps({"values": {"level_m": 1.0}, "pad": "x" * 5000})
    msg = decode(WL, payload, max_payload_bytes=4096, dead_letter_keep_bytes=300)
    detail = assert_dead(msg, DeadLetterReason.TOO_LARGE)
    assert msg.readings == []
    letter = msg.dead_letter
    assert letter is not None
    assert letter.payload == payload[:300]
    assert letter.payload_size == len(payload)
    assert str(len(payload)) in detail and "4096" in detail


def test_payload_at_the_limit_is_accepted() -> None:
    base = orjson.dumps({"values": {"level_m": 1.0}, "pad": ""})
    payload = orjson.dumps({"values": {"level_m": 1.0}, "pad": "x" * (2048 - len(base))})
    assert len(payload) == 2048
    assert_clean(decode(WL, payload, max_payload_bytes=2048))


def test_small_dead_letters_keep_the_whole_payload() -> None:
    payload = b'{"values": {"level_m": "high"}}'
    letter = decode(WL, payload, dead_letter_keep_bytes=300).dead_letter
    assert letter is not None
    assert (letter.payload, letter.payload_size, letter.received_at) == (payload, len(payload), NOW)


# --- topics, profiles and the registry -----------------------------------------


def test_unknown_profile() -> None:
    msg = decode("city/pudong/tide_gauge/tg-1/telemetry", {"values": {"level_m": 1}})
    detail = assert_dead(msg, DeadLetterReason.UNKNOWN_PROFILE)
    assert "tide_gauge" in detail
    assert msg.new_device is None and msg.readings == []


@pytest.mark.parametrize(
    ("topic", "reason"),
    [
        ("city/pudong/water_level/telemetry", DeadLetterReason.BAD_TOPIC),
        ("elsewhere/pudong/water_level/wl-1/telemetry", DeadLetterReason.BAD_TOPIC),
        ("city/pudong/water_level/wl-1/readings", DeadLetterReason.UNKNOWN_CHANNEL),
    ],
)
def test_bad_topics_are_dead_letters(topic: str, reason: DeadLetterReason) -> None:
    msg = decode(topic, {"values": {"level_m": 1}})
    assert_dead(msg, reason)
    assert msg.readings == [] and msg.new_device is None
    assert msg.dead_letter is not None and msg.dead_letter.topic == topic


def test_profile_mismatch_with_registry() -> None:
    msg = decode("city/pudong/rain_gauge/wl-1/telemetry", {"values": {"rain_mm": 1}})
    detail = assert_dead(msg, DeadLetterReason.PROFILE_MISMATCH)
    assert "water_level" in detail and "rain_gauge" in detail
    assert msg.readings == [] and msg.new_device is None
    assert msg.dead_letter is not None and msg.dead_letter.device_id == "wl-1"


def test_new_device_is_reported_once_then_known() -> None:
    dec = decoder()
    topic = "city/minhang/rain_gauge/rg-new/telemetry"
    first = dec.decode(topic, b'{"values": {"rain_mm": 0.2}}', NOW)
    assert_clean(first)
    assert first.new_device == NewDevice("rg-new", "rain_gauge", "minhang")
    assert values(first) == {"rain_mm": 0.2}
    second = dec.decode(topic, b'{"values": {"rain_mm": 0.4}}', NOW)
    assert second.new_device is None
    assert values(second) == {"rain_mm": 0.4}
    # Now registered with that profile: another profile is a mismatch.
    third = dec.decode("city/minhang/noise/rg-new/telemetry", b'{"values": {"laeq_db": 50}}', NOW)
    assert_dead(third, DeadLetterReason.PROFILE_MISMATCH)


def test_replace_registry_forgets_provisional_devices() -> None:
    dec = decoder()
    topic = "city/minhang/rain_gauge/rg-x/telemetry"
    assert dec.decode(topic, b'{"values": {"rain_mm": 0.2}}', NOW).new_device is not None
    dec.replace_registry({"rg-x": "rain_gauge"})
    assert dec.decode(topic, b'{"values": {"rain_mm": 0.2}}', NOW).new_device is None
    dec.replace_registry({})
    assert dec.decode(topic, b'{"values": {"rain_mm": 0.2}}', NOW).new_device is not None


def test_custom_root() -> None:
    dec = MessageDecoder(PROFILES, REGISTRY, root="sh")
    assert values(
        dec.decode("sh/pudong/water_level/wl-1/telemetry", b'{"values":{"level_m":1}}', NOW)
    )
    msg = dec.decode(WL, b'{"values":{"level_m":1}}', NOW)
    assert_dead(msg, DeadLetterReason.BAD_TOPIC)


# --- events -------------------------------------------------------------------


def test_event_by_type() -> None:
    msg = decode(
        EL_EVENT,
        {
            "ts": "2026-11-25T10:00:00+08:00",
            "type": "trapped_passengers",
            "detail": {"floor": 7, "since_s": 45},
        },
    )
    assert_clean(msg)
    (e,) = msg.events
    assert (e.ts, e.device_id, e.type, e.code) == (NOW, "el-1", "trapped_passengers", 11)
    assert e.detail == {"floor": 7, "since_s": 45}
    assert msg.readings == []


def test_event_by_code_only_takes_type_from_profile() -> None:
    msg = decode(EL_EVENT, {"ts": 1764036000000, "code": 41})
    assert_clean(msg)
    (e,) = msg.events
    assert (e.type, e.code, e.detail) == ("main_power_off", 41, {})


def test_event_without_ts_takes_receive_time() -> None:
    (e,) = decode(EL_EVENT, {"type": "alarm_button"}).events
    assert e.ts == NOW


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"type": "elevator_on_fire"}, DeadLetterReason.UNKNOWN_EVENT),
        ({"code": 99}, DeadLetterReason.UNKNOWN_EVENT),
        ({}, DeadLetterReason.UNKNOWN_EVENT),
        ({"type": 11}, DeadLetterReason.UNKNOWN_EVENT),
        ({"type": "alarm_button", "code": "90"}, DeadLetterReason.WRONG_TYPE),
        ({"type": "alarm_button", "detail": [1]}, DeadLetterReason.BAD_STRUCTURE),
        ({"type": "alarm_button", "ts": "today"}, DeadLetterReason.BAD_TIMESTAMP),
    ],
)
def test_bad_events(payload: dict[str, Any], reason: DeadLetterReason) -> None:
    msg = decode(EL_EVENT, payload)
    assert_dead(msg, reason)
    assert msg.events == []


def test_unknown_event_names_the_known_ones() -> None:
    detail = assert_dead(
        decode("city/pudong/water_level/wl-1/event", {"type": "flood"}),
        DeadLetterReason.UNKNOWN_EVENT,
    )
    assert "'flood'" in detail and "sensor_fault" in detail


# --- status ---------------------------------------------------------------------


@pytest.mark.parametrize(("payload", "online"), [(b"online", True), (b"offline\n", False)])
def test_status_words(payload: bytes, online: bool) -> None:
    msg = decode(EL_STATUS, payload)
    assert_clean(msg)
    assert msg.status is not None
    assert msg.status.state == payload.strip().decode()
    assert msg.status.online is online
    assert msg.status.ts == NOW and msg.status.device_id == "el-1"


def test_json_status() -> None:
    msg = decode(
        EL_STATUS,
        {"state": "online", "fw": "1.4.2", "rssi": -71, "ts": "2026-11-25T09:59:00+08:00"},
    )
    assert_clean(msg)
    s = msg.status
    assert s is not None
    assert (s.state, s.online) == ("online", True)
    assert s.detail == {"fw": "1.4.2", "rssi": -71}
    assert s.ts == NOW - timedelta(minutes=1)


@pytest.mark.parametrize("payload", [b"sleeping", b"{}", b'{"state": ""}', b'{"state": 1}', b"[]"])
def test_bad_status(payload: bytes) -> None:
    msg = decode(EL_STATUS, payload)
    assert msg.status is None
    assert msg.dead_letter is not None
    assert msg.dead_letter.reason in ("bad_structure", "malformed_payload")


# --- the vendor decoder (profile elevator_frame) --------------------------------


def test_elevator_frame_telemetry() -> None:
    msg = decode(
        f"{FRAME}/telemetry", b"EF1,1764036000123,1042,1,7,0,1,2.50,35,01,0,0,183211,0\r\n"
    )
    assert_clean(msg)
    ts = datetime(2025, 11, 25, 2, 0, 0, 123000, tzinfo=UTC)
    assert {r.ts for r in msg.readings} == {ts}
    assert {r.device_id for r in msg.readings} == {"ef-1"}
    assert values(msg) == {
        "state": 1.0,
        "floor": 7.0,
        "door": 0.0,
        "direction": 1.0,
        "speed_mps": 2.5,
        "load_pct": 35.0,
        "in_door_zone": 1.0,
        "passengers_present": 0.0,
        "service_mode": 0.0,
        "power": 0.0,
        "run_count": 183211.0,
        "fault_code": 0.0,
    }
    assert msg.last_seq == 1042


def test_elevator_frame_without_clock_takes_receive_time() -> None:
    msg = decode(f"{FRAME}/telemetry", b"EF1,0,5,2,-2,2,0,0,80.5,3")
    assert_clean(msg)
    assert {r.ts for r in msg.readings} == {NOW}
    assert {r.quality for r in msg.readings} == {Quality.RECEIVE_TIME}
    assert values(msg)["floor"] == -2.0


def test_elevator_frame_out_of_range_load() -> None:
    msg = decode(f"{FRAME}/telemetry", b"EF1,1764036000123,6,1,3,0,1,1.0,180,0")
    assert_clean(msg)
    assert {r.metric: r.quality for r in msg.readings}["load_pct"] == Quality.OUT_OF_RANGE
    assert msg.out_of_range == 1


def test_elevator_frame_event() -> None:
    msg = decode(f"{FRAME}/event", b"EV1,1764036000123,11,floor=7;since_s=45;note=car stuck")
    assert_clean(msg)
    (e,) = msg.events
    assert (e.type, e.code, e.device_id) == ("trapped_passengers", 11, "ef-1")
    assert e.detail == {"floor": 7, "since_s": 45, "note": "car stuck"}
    assert e.ts == datetime(2025, 11, 25, 2, 0, 0, 123000, tzinfo=UTC)


def test_elevator_frame_unknown_event_code() -> None:
    msg = decode(f"{FRAME}/event", b"EV1,1764036000123,77")
    detail = assert_dead(msg, DeadLetterReason.UNKNOWN_EVENT)
    assert "77" in detail


def test_elevator_frame_status() -> None:
    msg = decode(f"{FRAME}/status", b"OFFLINE\r\n")
    assert msg.status is not None
    assert (msg.status.state, msg.status.online) == ("offline", False)


@pytest.mark.parametrize(
    "payload",
    [
        b'{"values": {"state": "running"}}',  # JSON where a frame is expected
        b"EF1,1764036000123,1042,9,7,0,1,2.50,35,01",  # state 9
        b"EF1,1764036000123",
        b"EV1,1764036000123,11",  # an event frame on the telemetry channel
        b"EF1," + b"1" * 600,
    ],
)
def test_elevator_frame_malformed(payload: bytes) -> None:
    msg = decode(f"{FRAME}/telemetry", payload)
    assert_dead(msg, DeadLetterReason.MALFORMED_PAYLOAD)
    assert msg.readings == []


def test_elevator_frame_non_ascii_is_bad_encoding() -> None:
    msg = decode(f"{FRAME}/telemetry", "EF1,1764036000123,1,1,7,0,1,2.50,35,01,0,0,1,0é".encode())
    assert_dead(msg, DeadLetterReason.BAD_ENCODING)


# --- decode() never raises --------------------------------------------------------

_TOPIC_LEVELS = st.sampled_from(
    ["city", "pudong", "water_level", "elevator", "elevator_frame", "wl-1", "el-1", "x", ""]
)
_CHANNELS = st.sampled_from(["telemetry", "event", "status", "cmd"])
TOPICS = st.one_of(
    st.builds(
        lambda root, district, profile, device, channel: "/".join(
            (root, district, profile, device, channel)
        ),
        st.sampled_from(["city", "other"]),
        _TOPIC_LEVELS,
        st.sampled_from([*PROFILES, "nope"]),
        _TOPIC_LEVELS,
        _CHANNELS,
    ),
    st.lists(_TOPIC_LEVELS | _CHANNELS, max_size=7).map("/".join),
    st.text(max_size=40),
)

_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.sampled_from(
        [
            "online",
            "offline",
            "running",
            "trapped_passengers",
            "2026-11-25T10:00:00+08:00",
            "2026-11-25T10:00:00",
            "0001-01-01T00:00:00+14:00",
            "9999-12-31T23:59:59-14:00",
        ]
    ),
)
_KEYS = st.sampled_from(
    ["ts", "seq", "values", "readings", "type", "code", "detail", "state", "level_m", "state", "x"]
)
JSONISH = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(_KEYS | st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=12,
)


def _never_raises(topic: str, payload: bytes) -> None:
    dec = MessageDecoder(PROFILES, REGISTRY, max_payload_bytes=2048, dead_letter_keep_bytes=256)
    msg = dec.decode(topic, payload, NOW)
    assert isinstance(msg, DecodedMessage)
    if msg.dead_letter is not None:
        assert msg.dead_letter.reason in {r.value for r in DeadLetterReason}
        assert len(msg.dead_letter.payload) <= 256
        assert msg.dead_letter.payload_size == len(payload)
        # A rejected message keeps nothing; a partial one keeps only readings.
        assert not (msg.events or msg.status)
    for r in msg.readings:
        assert math.isfinite(r.value)
        assert r.ts.tzinfo is not None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(topic=TOPICS, payload=st.binary(max_size=600))
def test_decode_never_raises_on_bytes(topic: str, payload: bytes) -> None:
    _never_raises(topic, payload)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(topic=TOPICS, data=JSONISH)
def test_decode_never_raises_on_json(topic: str, data: Any) -> None:
    _never_raises(topic, orjson.dumps(data))


@settings(max_examples=100, deadline=None)
@given(
    channel=st.sampled_from(["telemetry", "event", "status"]),
    fields=st.lists(
        st.sampled_from(["EF1", "EV1", "0", "1", "11", "-2", "2.50", "ff", "", "a=1", "x"]),
        max_size=15,
    ),
)
def test_decode_never_raises_on_frames(channel: str, fields: list[str]) -> None:
    _never_raises(f"{FRAME}/{channel}", ",".join(fields).encode())
