"""Decoder for the compact one-line ASCII frames of an elevator monitoring unit.

Profile `elevator_frame` names it as `devices.decoders.elevator_frame:decode`.

A frame is one line of printable ASCII, fields separated by commas. Whitespace
around the whole frame (a gateway's trailing CR LF) is ignored; whitespace
inside fields is not allowed. Frames are at most 512 bytes.

Telemetry channel — an `EF1` frame::

    EF1,<ts>,<seq>,<state>,<floor>,<door>,<dir>,<speed>,<load>,<flags>[,<mode>[,<power>[,<runs>[,<fault>]]]]

    EF1,1764036000123,1042,1,7,0,1,2.50,35,01,0,0,183211,0

==  ========  ============================================================
 #  field     format
==  ========  ============================================================
 1  tag       `EF1`
 2  ts        epoch milliseconds, 1-15 digits; `0` means the unit has no
              valid clock, and the reading takes the receive time
 3  seq       frame counter, 1-10 digits
 4  state     0 idle, 1 running, 2 stopped, 3 fault
 5  floor     integer, 1-4 digits, `-` for basements
 6  door      0 closed, 1 opening, 2 open, 3 closing
 7  dir       0 stopped, 1 up, 2 down
 8  speed     car speed in m/s, unsigned decimal, e.g. `2.50`
 9  load      car load in % of rated load, unsigned decimal
10  flags     1-2 hex digits: bit 0 in door zone, bit 1 passengers
              present; other bits are reserved and ignored
11  mode      0 normal, 1 inspection, 2 fire return, 3 firefighter,
              4 emergency power, 5 earthquake, 6 out of service
12  power     0 mains, 1 battery, 2 off
13  runs      cumulative run count, 1-10 digits
14  fault     active fault code, 1-3 digits, 0 = none
==  ========  ============================================================

Fields 11-14 came with firmware 2; older units end the frame after field 10.
Any value field (4-14) may be empty when the unit did not measure it; it is
then left out of `values`.

Event channel — an `EV1` frame::

    EV1,<ts>,<code>[,<detail>]

    EV1,1764036000123,11,floor=7;since_s=45;note=car stuck

`code` is 1-3 digits (`01` is 1), the elevator profile's event code. `detail`
is `key=value` pairs separated by `;`: keys are lower-case names, values are
non-empty printable ASCII without `;`; integer values become int, decimal
values float, `true` / `false` (any case) booleans, anything else stays text.

Status channel — a single word such as `online` or `offline` (the unit's
retained last will), case-insensitive.

Output (the canonical JSON shape of DESIGN.md):

- telemetry: `{"ts": 1764036000123, "seq": 1042, "values": {"state": "running", ...}}`,
  enum values as the profile's words;
- event: `{"ts": 1764036000123, "code": 11, "detail": {"floor": 7, ...}}`;
  ingest names the event from the code through the profile;
- status: `{"state": "online"}`.

Undecodable bytes raise `DecodeError("bad_encoding", ...)`; any other
malformed frame raises `DecodeError("malformed_payload", ...)` naming the
field, its position and what was expected. Nothing else is ever raised.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from devices.errors import DecodeError

TELEMETRY_TAG = "EF1"
EVENT_TAG = "EV1"
MAX_FRAME_BYTES = 512

# Wire code → the elevator profile's word; the index is the code.
STATES = ("idle", "running", "stopped", "fault")
DOORS = ("closed", "opening", "open", "closing")
DIRECTIONS = ("stopped", "up", "down")
SERVICE_MODES = (
    "normal",
    "inspection",
    "fire_return",
    "firefighter",
    "emergency_power",
    "earthquake",
    "out_of_service",
)
POWER_STATES = ("mains", "battery", "off")

FLAG_IN_DOOR_ZONE = 0x01
FLAG_PASSENGERS_PRESENT = 0x02

# Epoch milliseconds of 9999-12-31T23:59:59.999Z, so every ts fits a datetime.
MAX_TS_MS = 253_402_300_799_999

_TS = re.compile(r"\d{1,15}")
_SEQ = re.compile(r"\d{1,10}")
_CODE = re.compile(r"\d{1,3}")
_FLOOR = re.compile(r"-?\d{1,4}")
_UNSIGNED_INT = re.compile(r"\d{1,10}")
_UNSIGNED_DECIMAL = re.compile(r"\d{1,6}(?:\.\d{1,6})?")
_HEX_FLAGS = re.compile(r"[0-9A-Fa-f]{1,2}")
_DETAIL_KEY = re.compile(r"[a-z][a-z0-9_]{0,31}")
_DETAIL_INT = re.compile(r"-?\d{1,15}")
_DETAIL_DECIMAL = re.compile(r"-?\d{1,15}\.\d{1,15}")
_PRINTABLE = re.compile(r"[\x20-\x7e]*")
_STATUS_WORD = re.compile(r"[a-z][a-z0-9_]{0,31}")

_FieldParser = Callable[[str, int], dict[str, Any]]


def decode(payload: bytes, channel: str) -> dict[str, Any]:
    """Decode one frame received on `channel`; see the module docstring."""
    text = _text(payload)
    if channel == "telemetry":
        return _telemetry(text)
    if channel == "event":
        return _event(text)
    if channel == "status":
        return _status(text)
    raise DecodeError(
        "malformed_payload", f"unknown channel {channel!r}; expected telemetry, event or status"
    )


def _text(payload: bytes) -> str:
    if len(payload) > MAX_FRAME_BYTES:
        raise DecodeError(
            "malformed_payload",
            f"frame is {len(payload)} bytes, longer than the {MAX_FRAME_BYTES} allowed",
        )
    try:
        text = payload.decode("ascii")
    except UnicodeDecodeError as exc:
        raise DecodeError(
            "bad_encoding",
            f"byte 0x{payload[exc.start]:02x} at offset {exc.start} is not ASCII; "
            "frames are ASCII text",
        ) from None
    text = text.strip()
    if not text:
        raise DecodeError("malformed_payload", "empty frame")
    if not _PRINTABLE.fullmatch(text):
        offset = next(i for i, ch in enumerate(text) if not " " <= ch <= "~")
        raise DecodeError(
            "malformed_payload",
            f"control character {text[offset]!r} at offset {offset}; "
            "a frame is one line of printable ASCII",
        )
    return text


def _bad(tag: str, position: int, name: str, expected: str, got: str) -> DecodeError:
    shown = got if len(got) <= 40 else got[:37] + "..."
    return DecodeError(
        "malformed_payload", f"{tag} field {position} ({name}): expected {expected}, got {shown!r}"
    )


def _fields(text: str, tag: str, channel: str) -> list[str]:
    fields = text.split(",")
    if fields[0] != tag:
        raise _bad(tag, 1, "tag", f"{tag!r} on the {channel} channel", fields[0])
    return fields


def _ts(tag: str, raw: str) -> int | None:
    if not _TS.fullmatch(raw):
        raise _bad(tag, 2, "ts", "epoch milliseconds (1-15 digits)", raw)
    ts = int(raw)
    if ts > MAX_TS_MS:
        raise _bad(tag, 2, "ts", f"epoch milliseconds up to {MAX_TS_MS}", raw)
    return ts or None


def _enum(name: str, words: tuple[str, ...]) -> _FieldParser:
    by_code = {str(code): word for code, word in enumerate(words)}
    expected = "a code " + ", ".join(f"{code} ({word})" for code, word in by_code.items())

    def parse(raw: str, position: int) -> dict[str, Any]:
        word = by_code.get(raw)
        if word is None:
            raise _bad(TELEMETRY_TAG, position, name, expected, raw)
        return {name: word}

    return parse


def _number(
    name: str, pattern: re.Pattern[str], expected: str, convert: Callable[[str], float | int]
) -> _FieldParser:
    def parse(raw: str, position: int) -> dict[str, Any]:
        if not pattern.fullmatch(raw):
            raise _bad(TELEMETRY_TAG, position, name, expected, raw)
        return {name: convert(raw)}

    return parse


def _flags(raw: str, position: int) -> dict[str, Any]:
    if not _HEX_FLAGS.fullmatch(raw):
        raise _bad(TELEMETRY_TAG, position, "flags", "1-2 hex digits", raw)
    bits = int(raw, 16)
    return {
        "in_door_zone": bool(bits & FLAG_IN_DOOR_ZONE),
        "passengers_present": bool(bits & FLAG_PASSENGERS_PRESENT),
    }


# Positions 4 onwards, in frame order; the first seven are mandatory.
_TELEMETRY_FIELDS: tuple[_FieldParser, ...] = (
    _enum("state", STATES),
    _number("floor", _FLOOR, "an integer of 1-4 digits, '-' for basements", int),
    _enum("door", DOORS),
    _enum("direction", DIRECTIONS),
    _number("speed_mps", _UNSIGNED_DECIMAL, "an unsigned decimal such as 2.50", float),
    _number("load_pct", _UNSIGNED_DECIMAL, "an unsigned decimal such as 35", float),
    _flags,
    _enum("service_mode", SERVICE_MODES),
    _enum("power", POWER_STATES),
    _number("run_count", _UNSIGNED_INT, "an unsigned integer of 1-10 digits", int),
    _number("fault_code", _CODE, "a fault code of 1-3 digits, 0 for none", int),
)
_TELEMETRY_MIN_FIELDS = 3 + 7
_TELEMETRY_MAX_FIELDS = 3 + len(_TELEMETRY_FIELDS)


def _telemetry(text: str) -> dict[str, Any]:
    fields = _fields(text, TELEMETRY_TAG, "telemetry")
    if not _TELEMETRY_MIN_FIELDS <= len(fields) <= _TELEMETRY_MAX_FIELDS:
        raise DecodeError(
            "malformed_payload",
            f"{TELEMETRY_TAG} frame has {len(fields)} fields, expected "
            f"{_TELEMETRY_MIN_FIELDS}-{_TELEMETRY_MAX_FIELDS}: tag, ts, seq, state, floor, "
            "door, dir, speed, load, flags[, mode, power, runs, fault]",
        )
    ts = _ts(TELEMETRY_TAG, fields[1])
    if not _SEQ.fullmatch(fields[2]):
        raise _bad(TELEMETRY_TAG, 3, "seq", "a frame counter of 1-10 digits", fields[2])
    values: dict[str, Any] = {}
    for position, (raw, parse) in enumerate(zip(fields[3:], _TELEMETRY_FIELDS, strict=False), 4):
        if raw:
            values.update(parse(raw, position))
    out: dict[str, Any] = {"seq": int(fields[2]), "values": values}
    if ts is not None:
        out = {"ts": ts, **out}
    return out


def _event(text: str) -> dict[str, Any]:
    fields = text.split(",", 3)
    if fields[0] != EVENT_TAG:
        raise _bad(EVENT_TAG, 1, "tag", f"{EVENT_TAG!r} on the event channel", fields[0])
    if len(fields) < 3:
        raise DecodeError(
            "malformed_payload",
            f"{EVENT_TAG} frame has {len(fields)} fields, expected at least 3: tag, ts, code",
        )
    ts = _ts(EVENT_TAG, fields[1])
    if not _CODE.fullmatch(fields[2]) or int(fields[2]) == 0:
        raise _bad(EVENT_TAG, 3, "code", "an event code of 1-3 digits, not 0", fields[2])
    detail = _detail(fields[3]) if len(fields) == 4 else {}
    out: dict[str, Any] = {"code": int(fields[2]), "detail": detail}
    if ts is not None:
        out = {"ts": ts, **out}
    return out


def _detail(raw: str) -> dict[str, Any]:
    detail: dict[str, Any] = {}
    if not raw:
        return detail
    for number, pair in enumerate(raw.split(";"), 1):
        key, sep, value = pair.partition("=")
        where = f"pair {number} of the detail"
        if not sep or not value:
            raise _bad(EVENT_TAG, 4, "detail", f"key=value in {where}", pair)
        if not _DETAIL_KEY.fullmatch(key):
            raise _bad(
                EVENT_TAG, 4, "detail", f"a lower-case key of up to 32 characters in {where}", key
            )
        if key in detail:
            raise _bad(EVENT_TAG, 4, "detail", f"each key once, but {where} repeats it", key)
        detail[key] = _detail_value(value)
    return detail


def _detail_value(value: str) -> int | float | bool | str:
    lowered = value.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if _DETAIL_INT.fullmatch(value):
        return int(value)
    if _DETAIL_DECIMAL.fullmatch(value):
        return float(value)
    return value


def _status(text: str) -> dict[str, Any]:
    word = text.lower()
    if not _STATUS_WORD.fullmatch(word):
        raise DecodeError(
            "malformed_payload",
            f"status must be one word such as online or offline, got {text[:40]!r}",
        )
    return {"state": word}
