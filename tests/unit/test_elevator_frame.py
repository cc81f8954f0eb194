"""The compact CSV elevator frame decoder (profile `elevator_frame`)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devices.decoders import elevator_frame
from devices.decoders.elevator_frame import decode
from devices.errors import DecodeError
from devices.profile import BUILTIN_PROFILE_DIR, load_profile

CHANNELS = ("telemetry", "event", "status")
TS = 1764036000123


# --- telemetry -----------------------------------------------------------------


def test_full_telemetry_frame() -> None:
    frame = b"EF1,1764036000123,1042,1,7,0,1,2.50,35,01,0,0,183211,0\r\n"
    assert decode(frame, "telemetry") == {
        "ts": TS,
        "seq": 1042,
        "values": {
            "state": "running",
            "floor": 7,
            "door": "closed",
            "direction": "up",
            "speed_mps": 2.5,
            "load_pct": 35.0,
            "in_door_zone": True,
            "passengers_present": False,
            "service_mode": "normal",
            "power": "mains",
            "run_count": 183211,
            "fault_code": 0,
        },
    }


def test_firmware_1_frame_ends_after_flags() -> None:
    decoded = decode(b"EF1,1764036000123,7,2,-2,2,0,0,80.5,3", "telemetry")
    assert decoded == {
        "ts": TS,
        "seq": 7,
        "values": {
            "state": "stopped",
            "floor": -2,
            "door": "open",
            "direction": "stopped",
            "speed_mps": 0.0,
            "load_pct": 80.5,
            "in_door_zone": True,
            "passengers_present": True,
        },
    }


def test_frame_may_end_after_any_firmware_2_field() -> None:
    decoded = decode(b"EF1,1764036000123,8,3,5,0,0,0,0,0,6,1", "telemetry")
    values = decoded["values"]
    assert (values["state"], values["service_mode"], values["power"]) == (
        "fault",
        "out_of_service",
        "battery",
    )
    assert "run_count" not in values and "fault_code" not in values


def test_empty_fields_are_left_out() -> None:
    decoded = decode(b"EF1,1764036000123,9,,12,,,,,,,2,,11", "telemetry")
    assert decoded["values"] == {"floor": 12, "power": "off", "fault_code": 11}


def test_zero_ts_means_no_clock() -> None:
    assert decode(b"EF1,0,1,0,1,0,0,0,0,0", "telemetry") == {
        "seq": 1,
        "values": {
            "state": "idle",
            "floor": 1,
            "door": "closed",
            "direction": "stopped",
            "speed_mps": 0.0,
            "load_pct": 0.0,
            "in_door_zone": False,
            "passengers_present": False,
        },
    }


def test_reserved_flag_bits_are_ignored() -> None:
    values = decode(b"EF1,1,1,0,1,0,0,0,0,FE", "telemetry")["values"]
    assert values["in_door_zone"] is False
    assert values["passengers_present"] is True


def test_decoded_telemetry_fits_the_elevator_frame_profile() -> None:
    profile = load_profile(BUILTIN_PROFILE_DIR / "elevator_frame.yaml")
    assert profile.decode is decode
    frame = b"EF1,1764036000123,1042,1,7,3,2,2.5,35,03,5,2,9,11"
    for metric, value in decode(frame, "telemetry")["values"].items():
        spec = profile.metrics[metric]
        if spec.type == "enum":
            assert spec.values is not None and value in spec.values, metric
        elif spec.type == "bool":
            assert isinstance(value, bool), metric
        else:
            assert spec.range is not None and spec.range[0] <= value <= spec.range[1], metric


def test_every_wire_word_is_a_profile_word() -> None:
    metrics = load_profile(BUILTIN_PROFILE_DIR / "elevator.yaml").metrics
    for metric, words in (
        ("state", elevator_frame.STATES),
        ("door", elevator_frame.DOORS),
        ("direction", elevator_frame.DIRECTIONS),
        ("service_mode", elevator_frame.SERVICE_MODES),
        ("power", elevator_frame.POWER_STATES),
    ):
        assert set(words) <= set(metrics[metric].values or {}), metric


# --- events and status ------------------------------------------------------------


def test_event_frame_with_detail() -> None:
    frame = b"EV1,1764036000123,11,floor=7;since_s=45;load_pct=62.5;note=car stuck, lights on"
    assert decode(frame, "event") == {
        "ts": TS,
        "code": 11,
        "detail": {"floor": 7, "since_s": 45, "load_pct": 62.5, "note": "car stuck, lights on"},
    }


def test_event_frame_without_detail() -> None:
    assert decode(b"EV1,1764036000123,01", "event") == {"ts": TS, "code": 1, "detail": {}}
    assert decode(b"EV1,1764036000123,90,", "event") == {"ts": TS, "code": 90, "detail": {}}


def test_event_codes_name_profile_events() -> None:
    profile = load_profile(BUILTIN_PROFILE_DIR / "elevator_frame.yaml")
    decoded = decode(b"EV1,1764036000123,11", "event")
    assert profile.event_by_code[decoded["code"]] == "trapped_passengers"


@pytest.mark.parametrize(
    ("payload", "state"),
    [(b"online", "online"), (b"offline\r\n", "offline"), (b"OFFLINE", "offline")],
)
def test_status_word(payload: bytes, state: str) -> None:
    assert decode(payload, "status") == {"state": state}


# --- malformed frames -----------------------------------------------------------

MALFORMED = {
    # case: (payload, channel, words the message must contain)
    "empty": (b"", "telemetry", "empty"),
    "blank": (b" \r\n", "event", "empty"),
    "too long": (b"EF1," + b"0" * 600, "telemetry", "longer than"),
    "two lines": (b"EF1,1,1,0,1,0,0,0,0,0\nEF1,2,2,0,1,0,0,0,0,0", "telemetry", "one line"),
    "nul byte": (b"EF1,1,1,0,1,0,0,0,0,\x00", "telemetry", "offset 20"),
    "wrong tag": (b"EF2,1,1,0,1,0,0,0,0,0", "telemetry", "field 1 (tag)"),
    "event frame on telemetry": (b"EV1,1,11", "telemetry", "'EF1' on the telemetry channel"),
    "telemetry frame on event": (
        b"EF1,1,1,0,1,0,0,0,0,0",
        "event",
        "'EV1' on the event channel",
    ),
    "too few fields": (b"EF1,1,1,0,1,0,0,0,0", "telemetry", "has 9 fields, expected 10-14"),
    "too many fields": (b"EF1,1,1,0,1,0,0,0,0,0,0,0,0,0,0", "telemetry", "has 15 fields"),
    "ts not a number": (b"EF1,now,1,0,1,0,0,0,0,0", "telemetry", "field 2 (ts)"),
    "ts negative": (b"EF1,-5,1,0,1,0,0,0,0,0", "telemetry", "field 2 (ts)"),
    "ts past year 9999": (b"EF1,999999999999999,1,0,1,0,0,0,0,0", "telemetry", "field 2 (ts)"),
    "ts empty": (b"EF1,,1,0,1,0,0,0,0,0", "telemetry", "field 2 (ts)"),
    "seq missing": (b"EF1,1,,0,1,0,0,0,0,0", "telemetry", "field 3 (seq)"),
    "seq decimal": (b"EF1,1,1.5,0,1,0,0,0,0,0", "telemetry", "field 3 (seq)"),
    "state unknown": (b"EF1,1,1,4,1,0,0,0,0,0", "telemetry", "field 4 (state)"),
    "state as word": (b"EF1,1,1,running,1,0,0,0,0,0", "telemetry", "field 4 (state)"),
    "floor decimal": (b"EF1,1,1,0,1.5,0,0,0,0,0", "telemetry", "field 5 (floor)"),
    "floor too long": (b"EF1,1,1,0,12345,0,0,0,0,0", "telemetry", "field 5 (floor)"),
    "door unknown": (b"EF1,1,1,0,1,4,0,0,0,0", "telemetry", "field 6 (door)"),
    "direction unknown": (b"EF1,1,1,0,1,0,3,0,0,0", "telemetry", "field 7 (direction)"),
    "speed negative": (b"EF1,1,1,0,1,0,0,-1.0,0,0", "telemetry", "field 8 (speed_mps)"),
    "speed nan": (b"EF1,1,1,0,1,0,0,nan,0,0", "telemetry", "field 8 (speed_mps)"),
    "speed exponent": (b"EF1,1,1,0,1,0,0,1e3,0,0", "telemetry", "field 8 (speed_mps)"),
    "load with space": (b"EF1,1,1,0,1,0,0,0, 35,0", "telemetry", "field 9 (load_pct)"),
    "flags not hex": (b"EF1,1,1,0,1,0,0,0,0,G1", "telemetry", "field 10 (flags)"),
    "flags too wide": (b"EF1,1,1,0,1,0,0,0,0,100", "telemetry", "field 10 (flags)"),
    "mode unknown": (b"EF1,1,1,0,1,0,0,0,0,0,7", "telemetry", "field 11 (service_mode)"),
    "power unknown": (b"EF1,1,1,0,1,0,0,0,0,0,0,3", "telemetry", "field 12 (power)"),
    "runs negative": (b"EF1,1,1,0,1,0,0,0,0,0,0,0,-1", "telemetry", "field 13 (run_count)"),
    "fault too long": (b"EF1,1,1,0,1,0,0,0,0,0,0,0,1,1000", "telemetry", "field 14 (fault_code)"),
    "event without code": (b"EV1,1764036000123", "event", "expected at least 3"),
    "event code zero": (b"EV1,1764036000123,0", "event", "field 3 (code)"),
    "event code word": (b"EV1,1764036000123,trapped", "event", "field 3 (code)"),
    "event ts": (b"EV1,yesterday,11", "event", "field 2 (ts)"),
    "detail without =": (b"EV1,1,11,floor", "event", "field 4 (detail)"),
    "detail empty value": (b"EV1,1,11,floor=", "event", "pair 1"),
    "detail empty pair": (b"EV1,1,11,floor=7;", "event", "pair 2"),
    "detail bad key": (b"EV1,1,11,Floor=7", "event", "lower-case key"),
    "detail repeated key": (b"EV1,1,11,floor=7;floor=8", "event", "repeats"),
    "status two words": (b"on line", "status", "one word"),
    "status json": (b'{"state": "online"}', "status", "one word"),
    "unknown channel": (b"online", "command", "unknown channel 'command'"),
}


@pytest.mark.parametrize("case", MALFORMED, ids=list(MALFORMED))
def test_malformed_frame(case: str) -> None:
    payload, channel, words = MALFORMED[case]
    with pytest.raises(DecodeError) as caught:
        decode(payload, channel)
    assert caught.value.reason == "malformed_payload"
    assert words in caught.value.message


@pytest.mark.parametrize(
    "payload",
    [b"\xff", "EF1,1,1,0,1,0,0,0,0,0,é".encode(), "online\u00a0".encode(), b"EV1,1,11,x=\x80"],
)
@pytest.mark.parametrize("channel", CHANNELS)
def test_non_ascii_is_an_encoding_error(payload: bytes, channel: str) -> None:
    with pytest.raises(DecodeError) as caught:
        decode(payload, channel)
    assert caught.value.reason == "bad_encoding"
    assert "not ASCII" in caught.value.message


def test_encoding_error_names_the_offset() -> None:
    with pytest.raises(DecodeError, match=r"byte 0xc3 at offset 4"):
        decode("EF1,é".encode(), "telemetry")


# --- properties ---------------------------------------------------------------------


def _assert_decodes_or_rejects(payload: bytes, channel: str) -> None:
    try:
        decoded = decode(payload, channel)
    except DecodeError as exc:
        assert exc.reason in ("malformed_payload", "bad_encoding")
        assert exc.message
    else:
        assert isinstance(decoded, dict)


@settings(max_examples=300, deadline=None)
@given(payload=st.binary(max_size=700), channel=st.sampled_from(CHANNELS))
def test_any_bytes_decode_or_raise_decode_error(payload: bytes, channel: str) -> None:
    _assert_decodes_or_rejects(payload, channel)


# Tokens near the format's edges, so the fuzzer reaches every field's check.
_TOKENS = st.one_of(
    st.sampled_from(
        ["", "0", "1", "3", "7", "-", "-0", "01", "FF", "1.", ".5", "2.50", "nan", "inf", "1e3"]
    ),
    st.sampled_from(["999999999999999", "9" * 20, "a=1", "a=1;b=2", "=", ";", "x="]),
    st.from_regex(r"-?[0-9]{1,16}(\.[0-9]{0,8})?", fullmatch=True),
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=127), max_size=12),
)


@st.composite
def _frames(draw: st.DrawFn) -> bytes:
    tag = draw(st.sampled_from(["EF1", "EV1", "ef1", "EF2", ""]))
    fields = draw(st.lists(_TOKENS, max_size=16))
    return ",".join([tag, *fields]).encode("ascii")


@settings(max_examples=200, deadline=None)
@given(payload=_frames(), channel=st.sampled_from(CHANNELS))
def test_frame_like_text_decodes_or_raises_decode_error(payload: bytes, channel: str) -> None:
    _assert_decodes_or_rejects(payload, channel)


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=80), channel=st.sampled_from(CHANNELS))
def test_any_text_decodes_or_raises_decode_error(text: str, channel: str) -> None:
    _assert_decodes_or_rejects(text.encode("utf-8", "surrogatepass"), channel)


def _code(words: tuple[str, ...]) -> st.SearchStrategy[tuple[str, str]]:
    return st.sampled_from([(str(i), word) for i, word in enumerate(words)])


_TELEMETRY_FIELDS = st.fixed_dictionaries(
    {
        "ts": st.integers(1, elevator_frame.MAX_TS_MS),
        "seq": st.integers(0, 2**32 - 1),
        "state": _code(elevator_frame.STATES),
        "floor": st.integers(-9999, 9999),
        "door": _code(elevator_frame.DOORS),
        "direction": _code(elevator_frame.DIRECTIONS),
        "speed_cm_s": st.integers(0, 2500),
        "load_permille": st.integers(0, 1500),
        "flags": st.integers(0, 255),
        "mode": _code(elevator_frame.SERVICE_MODES),
        "power": _code(elevator_frame.POWER_STATES),
        "runs": st.integers(0, 2**32 - 1),
        "fault": st.integers(0, 999),
    }
)


@settings(max_examples=200, deadline=None)
@given(f=_TELEMETRY_FIELDS)
def test_valid_telemetry_frames_round_trip(f: dict[str, Any]) -> None:
    speed = f"{f['speed_cm_s'] / 100:.2f}"
    load = f"{f['load_permille'] / 10:.1f}"
    frame = (
        f"EF1,{f['ts']},{f['seq']},{f['state'][0]},{f['floor']},{f['door'][0]},"
        f"{f['direction'][0]},{speed},{load},{f['flags']:02X},{f['mode'][0]},"
        f"{f['power'][0]},{f['runs']},{f['fault']}"
    )
    assert decode(frame.encode("ascii"), "telemetry") == {
        "ts": f["ts"],
        "seq": f["seq"],
        "values": {
            "state": f["state"][1],
            "floor": f["floor"],
            "door": f["door"][1],
            "direction": f["direction"][1],
            "speed_mps": float(speed),
            "load_pct": float(load),
            "in_door_zone": bool(f["flags"] & 1),
            "passengers_present": bool(f["flags"] & 2),
            "service_mode": f["mode"][1],
            "power": f["power"][1],
            "run_count": f["runs"],
            "fault_code": f["fault"],
        },
    }


_DETAIL_VALUES = st.one_of(
    st.integers(-(10**14), 10**14),
    st.text(
        alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters=";"),
        min_size=1,
        max_size=20,
    ).filter(
        lambda s: (
            s == s.strip()
            and not s.lstrip("-").replace(".", "").isdigit()
            and s.lower() not in ("true", "false")
        )  # those decode as booleans
    ),
)


@settings(max_examples=200, deadline=None)
@given(
    ts=st.integers(1, elevator_frame.MAX_TS_MS),
    code=st.integers(1, 999),
    detail=st.dictionaries(
        st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True), _DETAIL_VALUES, max_size=12
    ),
)
def test_valid_event_frames_round_trip(ts: int, code: int, detail: dict[str, Any]) -> None:
    pairs = ";".join(f"{key}={value}" for key, value in detail.items())
    frame = f"EV1,{ts},{code:02d}" + (f",{pairs}" if pairs else "")
    assert decode(frame.encode("ascii"), "event") == {"ts": ts, "code": code, "detail": detail}
