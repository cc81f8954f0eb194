"""Fault injection: the ways field devices misbehave, on purpose and reproducibly.

The fleet passes every emission through a `FaultInjector` in two places:

1. `on_values(device, t, values)` before a telemetry message is encoded, for
   faults of the values themselves; it returns the values to encode and an
   offset to add to the payload's `ts` (clock skew);
2. `on_message(msg, device)` after encoding, for faults of the message on the
   wire; it returns what the device actually sends: nothing, the message, the
   message twice, a replacement, and messages held back earlier;

and `flush()` at the end of the run returns whatever is still held back.

Kinds (`FaultSpec.rate` is per message for the per-message kinds, and the
chance per device per hour of an episode starting for the episode kinds):

================  =======  ====================================================
kind              scope    effect
================  =======  ====================================================
``dropout``       episode  the device sends nothing (telemetry, events, status)
                           for `duration`; the ingest sees a gap in ts and seq
``flapping``      episode  retained `offline` / `online` status messages
                           alternate every ~`period` (default 1m) over
                           `duration`, always ending `online`
``stuck``         episode  values frozen at the last values before the episode
                           (`metrics` limits which)
``drift``         episode  one metric (from `metrics`, else picked per episode)
                           offset by `per_hour` per hour since the episode
                           started (default ±5 % of its first value per hour),
                           kept inside the physical range
``spike``         message  one numeric value pushed far off (about `factor`,
                           default 10, times its size), inside the range
``out_of_range``  message  one ranged value set beyond the metric's physical
                           range, so the ingest flags it OUT_OF_RANGE
``duplicate``     message  the message is sent `copies` (default 2) times
``out_of_order``  message  the message is held and sent after the device's next
                           `after` (default 1) message(s)
``clock_skew``    message  the payload ts is shifted by `offset` (default +10m
                           or -1h, picked per message)
``malformed``     message  the payload is replaced by one of `MalformedVariant`
                           (`variant` picks; default any), which the ingest
                           dead-letters
``unregistered``  message  the message is re-addressed to a device id that is
                           not in the registry, same profile and district, so
                           the ingest registers it provisionally
================  =======  ====================================================

Value faults apply to telemetry, message faults to telemetry and events
(`malformed` to telemetry only); status messages only ever meet `dropout`.
A spec may be limited to some devices and to a window of simulated time
(`start`, `end`); with `once`, an episode kind starts one episode at `start`
instead of at random each hour, which is how a scenario schedules a drill
(`FaultSpec.from_entry`).

Determinism: every decision is a hash of (seed, the spec's kind and its place
among the specs of that kind, device id, and the device's message number or
the hour), so the same seed and the same emissions give the same faults
whatever order devices are interleaved in, and adding a spec of one kind never
changes the faults of another kind. Episode schedules depend on simulated
time only, not on how often a device reports.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import math
import random
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from types import MappingProxyType
from typing import Any

import orjson

from devices.durations import format_duration, parse_duration
from devices.profile import DeviceProfile, MetricSpec
from devices.registry import DEVICE_ID_PATTERN
from simulators.model import SimDevice, Value, WireMessage

__all__ = [
    "EPISODE_KINDS",
    "FaultInjector",
    "FaultKind",
    "FaultSpec",
    "FaultSpecError",
    "MalformedVariant",
    "parse_fault_spec",
    "parse_fault_specs",
]


class FaultKind(StrEnum):
    DROPOUT = "dropout"
    FLAPPING = "flapping"
    STUCK = "stuck"
    SPIKE = "spike"
    DRIFT = "drift"
    OUT_OF_RANGE = "out_of_range"
    DUPLICATE = "duplicate"
    OUT_OF_ORDER = "out_of_order"
    CLOCK_SKEW = "clock_skew"
    MALFORMED = "malformed"
    UNREGISTERED = "unregistered"

    @property
    def episodic(self) -> bool:
        """True when `rate` is the chance per device per hour of an episode of `duration`."""
        return self in EPISODE_KINDS


EPISODE_KINDS = frozenset({FaultKind.DROPOUT, FaultKind.FLAPPING, FaultKind.STUCK, FaultKind.DRIFT})

DEFAULT_DURATIONS: Mapping[FaultKind, timedelta] = MappingProxyType(
    {
        FaultKind.DROPOUT: timedelta(minutes=30),
        FaultKind.FLAPPING: timedelta(minutes=10),
        FaultKind.STUCK: timedelta(hours=1),
        FaultKind.DRIFT: timedelta(hours=6),
    }
)


class MalformedVariant(StrEnum):
    """What a `malformed` fault puts on the wire, and the dead-letter reason it earns.

    For a profile with a vendor decoder (not JSON) `non_utf8` inserts non-ASCII
    bytes, `empty_object` sends an empty payload and every other variant
    truncates the frame; the reason is then the decoder's (`malformed_payload`
    from the elevator frame decoder).
    """

    TRUNCATED_JSON = "truncated_json"
    """The JSON cut short: `malformed_payload`."""
    WRONG_TYPE = "wrong_type"
    """One metric's value of the wrong JSON type (a number as text): `wrong_type`."""
    NAN = "nan"
    """One metric's value the bare literal NaN, which JSON forbids: `malformed_payload`."""
    NON_UTF8 = "non_utf8"
    """A GBK-encoded site name inside the JSON: `bad_encoding`."""
    UNKNOWN_METRIC = "unknown_metric"
    """An extra value under a name the profile lacks: `unknown_metric` (others kept)."""
    NAIVE_TS = "naive_ts"
    """`ts` in ISO 8601 without a UTC offset: `bad_timestamp`."""
    EMPTY_OBJECT = "empty_object"
    """`{}`: `bad_structure` (no values)."""


class FaultSpecError(ValueError):
    """A fault spec that cannot be used; the message names the bad part."""


# --- spec ------------------------------------------------------------------------

_ID = re.compile(DEVICE_ID_PATTERN)
_NAME = re.compile(r"[a-z][a-z0-9_]*")
_SIGNED_DURATION = re.compile(r"\s*([+-]?)\s*(.+)")


def _to_float(name: str, raw: Any) -> float:
    if isinstance(raw, bool):
        raise FaultSpecError(f"{name} {raw!r} is not a number")
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise FaultSpecError(f"{name} {raw!r} is not a number") from None
    if not math.isfinite(value):
        raise FaultSpecError(f"{name} {raw!r} is not a finite number")
    return value


def _positive(name: str, raw: Any) -> float:
    value = _to_float(name, raw)
    if value <= 0:
        raise FaultSpecError(f"{name} {raw!r} must be greater than 0")
    return value


def _factor(name: str, raw: Any) -> float:
    value = _to_float(name, raw)
    if value <= 1:
        raise FaultSpecError(f"{name} {raw!r} must be greater than 1")
    return value


def _count(minimum: int) -> Callable[[str, Any], int]:
    def convert(name: str, raw: Any) -> int:
        text = str(raw).strip()
        if isinstance(raw, bool) or not re.fullmatch(r"\d+", text) or int(text) < minimum:
            raise FaultSpecError(f"{name} {raw!r} must be a whole number of at least {minimum}")
        return int(text)

    return convert


def _items(raw: Any) -> list[Any]:
    if isinstance(raw, str):
        return [part.strip() for part in raw.split(",") if part.strip()]
    if isinstance(raw, Iterable) and not isinstance(raw, Mapping):
        return list(raw)
    return [raw]


def _names(name: str, raw: Any) -> tuple[str, ...]:
    out = tuple(str(item).strip() for item in _items(raw))
    bad = [item for item in out if not _NAME.fullmatch(item)]
    if not out or bad:
        raise FaultSpecError(
            f"{name} {raw!r} must be metric names separated by commas, e.g. level_m,battery_v"
        )
    return out


def _direction(name: str, raw: Any) -> str:
    text = str(raw).strip().lower()
    if text not in ("up", "down"):
        raise FaultSpecError(f"{name} {raw!r} must be up or down")
    return text


def _duration(name: str, raw: Any) -> timedelta:
    try:
        value = raw if isinstance(raw, timedelta) else parse_duration(raw)
    except (ValueError, OverflowError) as exc:
        raise FaultSpecError(f"{name}: {exc}") from None
    if value <= timedelta(0):
        raise FaultSpecError(f"{name} {raw!r} must be longer than zero")
    return value


def _signed_duration(raw: Any) -> timedelta:
    if isinstance(raw, timedelta):
        return raw
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        return timedelta(seconds=raw)
    match = _SIGNED_DURATION.fullmatch(str(raw))
    assert match is not None
    sign, rest = match.groups()
    value = parse_duration(rest)
    return -value if sign == "-" else value


def _offsets(name: str, raw: Any) -> tuple[timedelta, ...]:
    try:
        out = tuple(_signed_duration(item) for item in _items(raw))
    except (ValueError, OverflowError):
        raise FaultSpecError(
            f"{name} {raw!r} must be signed durations separated by commas, e.g. +10m or -1h"
        ) from None
    if not out or any(o == timedelta(0) for o in out):
        raise FaultSpecError(f"{name} {raw!r} must be non-zero, e.g. +10m or -1h")
    return out


def _variants(name: str, raw: Any) -> tuple[MalformedVariant, ...]:
    out: list[MalformedVariant] = []
    for item in _items(raw):
        try:
            out.append(MalformedVariant(str(item).strip()))
        except ValueError:
            raise FaultSpecError(
                f"{name} {item!r} is not a malformed variant; "
                f"known: {', '.join(v.value for v in MalformedVariant)}"
            ) from None
    if not out:
        raise FaultSpecError(f"{name} is empty")
    return tuple(dict.fromkeys(out))


_ParamConverter = Callable[[str, Any], Any]

PARAMETERS: Mapping[FaultKind, Mapping[str, _ParamConverter]] = MappingProxyType(
    {
        FaultKind.DROPOUT: {},
        FaultKind.FLAPPING: {"period": _duration},
        FaultKind.STUCK: {"metrics": _names},
        FaultKind.SPIKE: {"metrics": _names, "factor": _factor, "direction": _direction},
        FaultKind.DRIFT: {
            "metrics": _names,
            "per_hour": _to_float,
            "per_hour_pct": _positive,
            "direction": _direction,
        },
        FaultKind.OUT_OF_RANGE: {"metrics": _names, "direction": _direction},
        FaultKind.DUPLICATE: {"copies": _count(2)},
        FaultKind.OUT_OF_ORDER: {"after": _count(1)},
        FaultKind.CLOCK_SKEW: {"offset": _offsets},
        FaultKind.MALFORMED: {"variant": _variants},
        FaultKind.UNREGISTERED: {},
    }
)
"""The parameters each kind takes, with the converter that checks each."""


def _unknown_kind(raw: Any) -> FaultSpecError:
    known = [k.value for k in FaultKind]
    close = difflib.get_close_matches(str(raw).strip().lower(), known, n=1)
    guess = f"did you mean {close[0]}? " if close else ""
    return FaultSpecError(f"unknown fault kind {raw!r}; {guess}known: {', '.join(known)}")


@dataclass(frozen=True)
class FaultSpec:
    """One kind of fault, how often, for how long, on which devices.

    Fields are checked and normalised on construction (strings are accepted for
    every field, as a CLI or YAML gives them); a bad one raises FaultSpecError.
    """

    kind: FaultKind
    rate: float
    """Per message for per-message kinds; per device per hour of starting an
    episode for the episode kinds (dropout, flapping, stuck, drift)."""
    duration: timedelta | None = None
    """Episode length; the kind's default when None. Only for episode kinds."""
    devices: frozenset[str] = frozenset()
    """Device ids the fault is limited to; empty means the whole fleet."""
    params: Mapping[str, Any] = field(default_factory=dict, hash=False)
    """Kind-specific settings, see `PARAMETERS` and the module docstring."""
    start: datetime | None = None
    """The fault is switched on at this simulated time; None: from the start of the run."""
    end: datetime | None = None
    """The fault is switched off at this simulated time; None: at the end of the run."""
    once: bool = False
    """Episode kinds only: instead of episodes starting at random each hour, one
    episode at `start` on each device chosen with probability `rate` (a drill)."""

    def __post_init__(self) -> None:
        try:
            kind = FaultKind(str(self.kind).strip().lower())
        except ValueError:
            raise _unknown_kind(self.kind) from None
        object.__setattr__(self, "kind", kind)

        rate = _to_float("rate", self.rate)
        if not 0.0 <= rate <= 1.0:
            unit = "per device per hour" if kind.episodic else "per message"
            raise FaultSpecError(f"rate {self.rate!r} must be a probability {unit} from 0 to 1")
        object.__setattr__(self, "rate", rate)

        if kind.episodic:
            duration = (
                DEFAULT_DURATIONS[kind]
                if self.duration is None
                else _duration("duration", self.duration)
            )
            object.__setattr__(self, "duration", duration)
        elif self.duration is not None:
            raise FaultSpecError(
                f"{kind} happens to single messages and takes no duration; "
                f"only {', '.join(sorted(EPISODE_KINDS))} do"
            )

        devices = frozenset(str(d).strip() for d in _items(self.devices) if str(d).strip())
        bad = sorted(d for d in devices if not _ID.fullmatch(d))
        if bad:
            raise FaultSpecError(f"devices: {bad[0]!r} is not a device id")
        object.__setattr__(self, "devices", devices)

        allowed = PARAMETERS[kind]
        params: dict[str, Any] = {}
        for key, raw in dict(self.params).items():
            convert = allowed.get(key)
            if convert is None:
                takes = ", ".join(allowed) if allowed else "no parameters"
                raise FaultSpecError(f"{kind} has no parameter {key!r} ({kind} takes: {takes})")
            params[key] = convert(key, raw)
        object.__setattr__(self, "params", MappingProxyType(params))

        for name in ("start", "end"):
            value = getattr(self, name)
            if isinstance(value, str):
                try:
                    value = datetime.fromisoformat(value.strip())
                except ValueError:
                    raise FaultSpecError(f"{name} {value!r} is not an ISO 8601 time") from None
            if value is not None and (not isinstance(value, datetime) or value.tzinfo is None):
                raise FaultSpecError(f"{name} {value!r} must be a time with a UTC offset")
            object.__setattr__(self, name, value)
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise FaultSpecError(f"end {self.end.isoformat()} is not after start")
        if self.once and not (kind.episodic and self.start is not None):
            raise FaultSpecError("once is for an episode kind with a start time")

    @classmethod
    def from_entry(cls, entry: Any, start: datetime) -> FaultSpec:
        """A scenario step's fault, switched on at the step's time `start`.

        `entry` has `kind`, `rate`, `duration`, `devices` and `params` (a
        scenario's fault entry, or a mapping with those keys). Per-message kinds
        then apply for `duration` (to the end of the run without one); episode
        kinds start one episode of `duration` at `start` on each device chosen
        with probability `rate` (`once`), so a drill happens when it says.
        """

        def get(name: str, default: Any = None) -> Any:
            if isinstance(entry, Mapping):
                return entry.get(name, default)
            return getattr(entry, name, default)

        kind_text = get("kind")
        try:
            try:
                kind = FaultKind(str(kind_text).strip().lower())
            except ValueError:
                raise _unknown_kind(kind_text) from None
            duration = get("duration")
            if duration is not None and not isinstance(duration, timedelta):
                duration = _duration("duration", duration)
            common: dict[str, Any] = {
                "kind": kind,
                "rate": get("rate"),
                "devices": get("devices") or frozenset(),
                "params": get("params") or {},
                "start": start,
            }
            if kind.episodic:
                return cls(duration=duration, once=True, **common)
            return cls(end=start + duration if duration else None, **common)
        except FaultSpecError as exc:
            raise FaultSpecError(f"fault {kind_text} at {start.isoformat()}: {exc}") from None

    def active(self, t: datetime) -> bool:
        """Whether the fault is switched on at `t` (its window, not its episodes)."""
        return (self.start is None or self.start <= t) and (self.end is None or t < self.end)

    @property
    def metrics(self) -> tuple[str, ...]:
        """The metrics a value fault is limited to; empty for any."""
        return tuple(self.params.get("metrics", ()))

    def applies_to(self, device_id: str) -> bool:
        return not self.devices or device_id in self.devices

    def __str__(self) -> str:
        """The CLI form, which `parse_fault_spec` reads back (without the time window)."""
        text = f"{self.kind}:{self.rate:g}"
        if self.duration is not None:
            text += f"@{format_duration(self.duration)}"
        if self.devices:
            text += ":devices=" + ",".join(sorted(self.devices))
        for key, value in self.params.items():
            text += f":{key}={_param_text(value, signed=key == 'offset')}"
        return text


def _param_text(value: Any, *, signed: bool = False) -> str:
    if isinstance(value, tuple):
        return ",".join(_param_text(v, signed=signed) for v in value)
    if isinstance(value, timedelta):
        if not signed:
            return format_duration(value)
        return ("-" if value < timedelta(0) else "+") + format_duration(abs(value))
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _rate(raw: str) -> float:
    text = raw.strip()
    if text.endswith("%"):
        return _to_float("rate", text[:-1]) / 100
    return _to_float("rate", text)


_EXAMPLE = "e.g. dropout:0.05@30m, malformed:0.01 or stuck:0.1@1h:devices=wl-001,wl-002"


def parse_fault_spec(source: str | Mapping[str, Any]) -> FaultSpec:
    """A FaultSpec from a CLI string or a YAML mapping.

    CLI: `KIND:RATE[@DURATION][:KEY=VALUE]...`, where KEY is `devices` (ids
    separated by commas) or one of the kind's parameters: `dropout:0.05@30m`,
    `malformed:0.01:variant=nan`, `stuck:0.1@1h:devices=wl-001,wl-002`. RATE may
    be written as a percentage (`5%`).

    YAML: `{kind: dropout, rate: 0.05, duration: 30m, devices: [wl-001]}`, with
    parameters under `params:` or beside the other keys.

    Raises FaultSpecError naming the spec and its bad part.
    """
    if isinstance(source, Mapping):
        return _from_mapping(source)
    text = str(source)
    try:
        return _from_text(text)
    except FaultSpecError as exc:
        raise FaultSpecError(f"fault {text!r}: {exc}") from None


def parse_fault_specs(sources: Iterable[str | Mapping[str, Any]]) -> list[FaultSpec]:
    """Several specs, e.g. the repeated `--fault` options or a scenario's `faults:` list."""
    return [parse_fault_spec(s) for s in sources]


def _from_text(text: str) -> FaultSpec:
    parts = text.strip().split(":")
    if len(parts) < 2 or not parts[0].strip():
        raise FaultSpecError(f"write KIND:RATE[@DURATION][:KEY=VALUE...], {_EXAMPLE}")
    kind = parts[0].strip()
    try:
        FaultKind(kind.lower())
    except ValueError:
        raise _unknown_kind(kind) from None
    rate_text, at, duration_text = parts[1].partition("@")
    if not rate_text.strip():
        raise FaultSpecError(f"the rate is missing after {kind}:, {_EXAMPLE}")
    rate = _rate(rate_text)
    if at and not duration_text.strip():
        raise FaultSpecError("the duration after @ is missing, e.g. @30m")
    devices: list[str] = []
    params: dict[str, str] = {}
    for part in parts[2:]:
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq or not key or not value.strip():
            raise FaultSpecError(f"{part!r} is not KEY=VALUE, e.g. devices=wl-001,wl-002")
        if key == "devices":
            devices += _items(value)
        elif key in params:
            raise FaultSpecError(f"{key} is given twice")
        else:
            params[key] = value.strip()
    return FaultSpec(
        kind=FaultKind(kind.lower()),
        rate=rate,
        duration=_duration("duration", duration_text) if at else None,
        devices=frozenset(devices),
        params=params,
    )


_MAPPING_KEYS = ("kind", "rate", "duration", "devices", "params", "start", "end", "once")


def _from_mapping(data: Mapping[str, Any]) -> FaultSpec:
    label = f"fault {data.get('kind', '?')!s}"
    try:
        for key in ("kind", "rate"):
            if key not in data:
                raise FaultSpecError(
                    f"needs {key!r}, e.g. {{kind: dropout, rate: 0.05, duration: 30m}}"
                )
        params = data.get("params") or {}
        if not isinstance(params, Mapping):
            raise FaultSpecError("params must be a mapping of parameter: value")
        extra = {k: v for k, v in data.items() if k not in _MAPPING_KEYS}
        clash = sorted(set(params) & set(extra))
        if clash:
            raise FaultSpecError(f"{clash[0]} is given both under params and beside it")
        rate = data["rate"]
        return FaultSpec(
            kind=data["kind"],
            rate=_rate(rate) if isinstance(rate, str) else rate,
            duration=data.get("duration"),
            devices=data.get("devices") or frozenset(),
            params={**params, **extra},
            start=data.get("start"),
            end=data.get("end"),
            once=bool(data.get("once", False)),
        )
    except FaultSpecError as exc:
        raise FaultSpecError(f"{label}: {exc}") from None


# --- injector --------------------------------------------------------------------

_ZERO = timedelta(0)
_HOUR_S = 3600
_TWO_64 = float(2**64)

# The order message faults are applied in, whatever the order of the specs.
_MESSAGE_ORDER = (
    FaultKind.MALFORMED,
    FaultKind.UNREGISTERED,
    FaultKind.DUPLICATE,
    FaultKind.OUT_OF_ORDER,
)
_VALUE_ORDER = (FaultKind.SPIKE, FaultKind.OUT_OF_RANGE, FaultKind.CLOCK_SKEW)
_DEFAULT_SKEWS = (timedelta(minutes=10), timedelta(hours=-1))
_GBK_SITE = "测站".encode("gbk")


@dataclass(slots=True)
class _Episode:
    start: datetime
    end: datetime
    key: int
    """Seeds the episode's own choices (metric, direction, toggle times)."""
    counted: bool = False
    metric: str | None = None
    per_hour: float = 0.0
    frozen: dict[str, Value] | None = None
    rng: random.Random | None = None
    next_toggle: datetime | None = None


@dataclass(slots=True)
class _Schedule:
    scanned_to: int | None = None
    """The last hour slot whose episode draw is known."""
    horizon: datetime | None = None
    """Where the next undrawn slot starts: before it there is nothing to draw."""
    episodes: list[_Episode] = field(default_factory=list)


@dataclass(slots=True)
class _Stream:
    """Which of a device's messages a per-message spec hits next.

    The gaps between hits are geometric with the spec's rate, which is the same
    as a coin per message but costs one comparison per message instead of a draw.
    """

    base: int
    draws: int = 0
    next: int = -1
    """The device's message number of the next hit (-1: not drawn yet)."""


@dataclass(slots=True)
class _Held:
    msg: WireMessage
    remaining: int


@dataclass(slots=True)
class _DeviceState:
    episode_specs: dict[FaultKind, list[tuple[int, FaultSpec]]]
    value_specs: list[tuple[int, FaultSpec, _Stream]]
    message_specs: list[tuple[int, FaultSpec, _Stream]]
    schedules: dict[int, _Schedule]
    tracks_last: bool
    values_seen: int = 0
    messages_seen: int = 0
    last_values: dict[str, Value] | None = None
    held: list[_Held] = field(default_factory=list)
    offline: bool = False
    status_topic: str | None = None
    since: datetime | None = None
    """When the device was first seen: flapping starts no earlier."""
    last_t: datetime | None = None
    ghosts: int = 0


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _hour(t: datetime, anchor: datetime) -> int:
    return math.floor((t - anchor).total_seconds() / _HOUR_S)


def _numeric(spec: MetricSpec | None, value: Any) -> bool:
    return (
        spec is not None
        and spec.type in ("float", "int")
        and isinstance(value, int | float)
        and not isinstance(value, bool)
    )


def _fit(spec: MetricSpec, value: float) -> Value:
    """The value as the metric's type (an int metric gets an int), to the micro-unit."""
    return round(value) if spec.type == "int" else round(value, 6)


_MASK = 2**64 - 1


def _splitmix(x: int) -> int:
    """SplitMix64's output function: 64 well-mixed bits from any 64-bit integer."""
    z = (x + 0x9E3779B97F4A7C15) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def _advance(stream: _Stream, rate: float, n: int) -> None:
    """Move the stream's next hit to message `n` or later."""
    if rate <= 0.0:
        stream.next = _NEVER
        return
    while stream.next < n:
        stream.draws += 1
        gap = 0
        if rate < 1.0:
            u = ((_splitmix(stream.base + stream.draws * 0x9E3779B97F4A7C15) >> 11) + 1) / 2**53
            gap = int(math.log(u) / math.log1p(-rate))
        stream.next += 1 + gap


_NEVER = 2**62


def _topic_parts(topic: str) -> list[str]:
    parts = topic.rsplit("/", 4)
    if len(parts) != 5 or not all(parts):
        raise ValueError(
            f"topic {topic!r} is not <root>/<district>/<profile>/<device_id>/<channel>"
        )
    return parts


class FaultInjector:
    """Injects the faults of `specs` into a fleet's stream; see the module docstring.

    `profiles` supplies metric ranges and decoders when `on_message` is called
    without a device. `registry_ids` are ids the `unregistered` fault must not
    invent. `counts` holds the faults injected per kind (an episode counts once,
    when it first touches a message); `affected` the messages each kind touched;
    `variants` the malformed payloads per variant.
    """

    def __init__(
        self,
        specs: Iterable[FaultSpec],
        seed: int,
        profiles: Mapping[str, DeviceProfile],
        *,
        registry_ids: Collection[str] = (),
    ) -> None:
        self.specs: tuple[FaultSpec, ...] = tuple(specs)
        self.seed = seed
        self.profiles = profiles
        self.registry_ids = frozenset(registry_ids)
        self.counts: dict[str, int] = {spec.kind.value: 0 for spec in self.specs}
        self.affected: dict[str, int] = dict(self.counts)
        self.variants: dict[str, int] = {}
        self._states: dict[str, _DeviceState | None] = {}
        ordinal: dict[FaultKind, int] = {}
        self._salts: list[str] = []
        for spec in self.specs:
            ordinal[spec.kind] = ordinal.get(spec.kind, 0) + 1
            self._salts.append(f"{spec.kind.value}#{ordinal[spec.kind]}")

    def __bool__(self) -> bool:
        return bool(self.specs)

    # --- the fleet's calls ------------------------------------------------------

    def on_values(
        self, device: SimDevice, t: datetime, values: dict[str, Value]
    ) -> tuple[dict[str, Value], timedelta]:
        """Value faults on one telemetry emission: (values to encode, ts offset).

        `values` is never changed; a changed copy is returned when a fault applies.
        """
        state = self._state(device.device_id)
        if state is None:
            return values, _ZERO
        n = state.values_seen
        state.values_seen += 1
        if self._silent(state, device.device_id, t, record=False):
            return values, _ZERO
        out = values
        metrics = device.profile.metrics

        stuck = False
        for index, spec in state.episode_specs.get(FaultKind.STUCK, ()):
            episode = self._episode(state, index, spec, device.device_id, t)
            if episode is None:
                continue
            if episode.frozen is None:
                episode.frozen = dict(state.last_values if state.last_values else values)
            only = spec.metrics
            out = {
                k: episode.frozen.get(k, v) if not only or k in only else v for k, v in out.items()
            }
            self._record(spec.kind, episode)
            stuck = True
        if state.tracks_last and not stuck:
            state.last_values = dict(values)

        if not stuck:
            for index, spec in state.episode_specs.get(FaultKind.DRIFT, ()):
                episode = self._episode(state, index, spec, device.device_id, t)
                if episode is not None:
                    drifted = self._drift(spec, episode, metrics, out, t)
                    if drifted is not None:
                        out = drifted
                        self._record(spec.kind, episode)

        offset = _ZERO
        for _, spec, stream in state.value_specs:
            if stream.next < n:
                _advance(stream, spec.rate, n)
            if stream.next != n or not spec.active(t):
                continue
            rng = random.Random(_splitmix(stream.base ^ n))
            if spec.kind is FaultKind.CLOCK_SKEW:
                offset += rng.choice(spec.params.get("offset", _DEFAULT_SKEWS))
                self._record(spec.kind)
                continue
            changed = (
                self._spike(spec, rng, metrics, out)
                if spec.kind is FaultKind.SPIKE
                else self._out_of_range(spec, rng, metrics, out)
            )
            if changed is not None:
                out = changed
                self._record(spec.kind)
        return out, offset

    def on_message(self, msg: WireMessage, device: SimDevice | None = None) -> list[WireMessage]:
        """What the device actually sends instead of `msg`, in sending order.

        Status messages of a flapping episode that fall due by `msg.t` come first
        (each stamped with its own time), then `msg` or what replaced it, then
        messages held back earlier whose turn has come (stamped `msg.t`).
        """
        device_id = msg.device_id or _topic_parts(msg.topic)[3]
        state = self._state(device_id)
        if state is None:
            return [msg]
        state.last_t = msg.t
        if state.since is None:
            state.since = msg.t
        if state.status_topic is None:
            parts = _topic_parts(msg.topic)
            state.status_topic = "/".join([*parts[:4], "status"])
        out: list[WireMessage] = []
        if FaultKind.FLAPPING in state.episode_specs:
            out += self._flaps(state, device_id, msg.t)
        if self._silent(state, device_id, msg.t, record=True):
            return out

        n = state.messages_seen
        state.messages_seen += 1
        sent = [msg]
        hold = 0
        if msg.channel != "status":
            for _, spec, stream in state.message_specs:
                if stream.next < n:
                    _advance(stream, spec.rate, n)
                if (
                    stream.next != n
                    or not spec.active(msg.t)
                    or (spec.kind is FaultKind.MALFORMED and msg.channel != "telemetry")
                ):
                    continue
                rng = random.Random(_splitmix(stream.base ^ n))
                match spec.kind:
                    case FaultKind.MALFORMED:
                        profile = device.profile if device else self._profile(msg.topic)
                        variant = rng.choice(spec.params.get("variant", tuple(MalformedVariant)))
                        sent = [_malform(m, variant, profile, rng) for m in sent]
                        self.variants[variant.value] = self.variants.get(variant.value, 0) + 1
                    case FaultKind.UNREGISTERED:
                        ghost = self._ghost(state, device_id)
                        sent = [_readdress(m, ghost) for m in sent]
                    case FaultKind.DUPLICATE:
                        sent = sent * int(spec.params.get("copies", 2))
                    case FaultKind.OUT_OF_ORDER:
                        hold = int(spec.params.get("after", 1))
                self._record(spec.kind)

        if hold:
            # Held behind the device's next `hold` messages that actually go out.
            state.held += [_Held(m, hold) for m in sent]
            return out
        released: list[WireMessage] = []
        waiting: list[_Held] = []
        for held in state.held:
            held.remaining -= 1
            if held.remaining <= 0:
                released.append(dataclasses.replace(held.msg, t=msg.t))
            else:
                waiting.append(held)
        state.held = waiting
        return out + sent + released

    def flush(self) -> list[WireMessage]:
        """At the end of a run: messages still held back, and `online` for any
        device a flapping episode left offline; stamped with the device's last time."""
        out: list[WireMessage] = []
        for device_id, state in self._states.items():
            if state is None or state.last_t is None:
                continue
            out += [dataclasses.replace(h.msg, t=state.last_t) for h in state.held]
            state.held = []
            if state.offline and state.status_topic is not None:
                out.append(self._status(device_id, state, state.last_t, "online"))
                self.affected[FaultKind.FLAPPING.value] += 1
        out.sort(key=lambda m: m.t)
        return out

    # --- state and randomness ---------------------------------------------------

    def _state(self, device_id: str) -> _DeviceState | None:
        try:
            return self._states[device_id]
        except KeyError:
            pass
        mine = [(i, s) for i, s in enumerate(self.specs) if s.applies_to(device_id)]
        state: _DeviceState | None = None
        if mine:
            episodes: dict[FaultKind, list[tuple[int, FaultSpec]]] = {}
            for i, s in mine:
                if s.kind.episodic:
                    episodes.setdefault(s.kind, []).append((i, s))

            def ordered(
                kinds: tuple[FaultKind, ...], phase: str
            ) -> list[tuple[int, FaultSpec, _Stream]]:
                chosen = sorted(
                    ((i, s) for i, s in mine if s.kind in kinds),
                    key=lambda item: (kinds.index(item[1].kind), item[0]),
                )
                return [(i, s, _Stream(self._draw(i, device_id, phase))) for i, s in chosen]

            state = _DeviceState(
                episode_specs=episodes,
                value_specs=ordered(_VALUE_ORDER, "values"),
                message_specs=ordered(_MESSAGE_ORDER, "messages"),
                schedules={i: _Schedule() for i, s in mine if s.kind.episodic},
                tracks_last=FaultKind.STUCK in episodes,
            )
        self._states[device_id] = state
        return state

    def _draw(self, index: int, device_id: str, *where: object) -> int:
        """64 random bits, a pure function of the seed, the spec, the device and `where`."""
        text = ":".join(str(p) for p in (self.seed, self._salts[index], device_id, *where))
        return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")

    def _record(self, kind: FaultKind, episode: _Episode | None = None) -> None:
        self.affected[kind.value] += 1
        if episode is None or not episode.counted:
            self.counts[kind.value] += 1
            if episode is not None:
                episode.counted = True

    def _scan(
        self, state: _DeviceState, index: int, spec: FaultSpec, device_id: str, t: datetime
    ) -> _Schedule:
        """Draw the hour slots up to `t` (from `t - duration` on the first call).

        Each hour slot (counted from the spec's start, or from the epoch) starts
        an episode with probability `rate` at an offset within the hour;
        overlapping episodes merge into one. A `once` spec has a single slot.
        """
        assert spec.duration is not None
        schedule = state.schedules[index]
        if schedule.horizon is not None and t < schedule.horizon:
            return schedule
        if spec.once:
            assert spec.start is not None
            if schedule.scanned_to is None:
                schedule.scanned_to = 0
                schedule.horizon = datetime.max.replace(tzinfo=UTC)
                key = self._draw(index, device_id, "once")
                if key / _TWO_64 < spec.rate:
                    schedule.episodes.append(_Episode(spec.start, spec.start + spec.duration, key))
            return schedule
        anchor = spec.start or _EPOCH
        last = _hour(t, anchor)
        first = _hour(t - spec.duration, anchor)
        if spec.start is not None:
            first = max(first, 0)
        if schedule.scanned_to is not None:
            first = max(first, schedule.scanned_to + 1)
        for slot in range(first, last + 1):
            key = self._draw(index, device_id, "h", slot)
            if key / _TWO_64 >= spec.rate:
                continue
            key = self._draw(index, device_id, "start", slot)
            start = anchor + timedelta(seconds=slot * _HOUR_S, milliseconds=key % (_HOUR_S * 1000))
            if spec.end is not None and start >= spec.end:
                continue
            end = start + spec.duration
            episodes = schedule.episodes
            if episodes and start <= episodes[-1].end:
                episodes[-1].end = max(episodes[-1].end, end)
            else:
                episodes.append(_Episode(start, end, key))
        if schedule.scanned_to is None or last > schedule.scanned_to:
            schedule.scanned_to = last
            schedule.horizon = anchor + timedelta(hours=last + 1)
        return schedule

    def _episode(
        self, state: _DeviceState, index: int, spec: FaultSpec, device_id: str, t: datetime
    ) -> _Episode | None:
        """The episode of this spec active at `t`, if any."""
        episodes = self._scan(state, index, spec, device_id, t).episodes
        while episodes and episodes[0].end <= t:
            episodes.pop(0)
        if episodes and episodes[0].start <= t:
            return episodes[0]
        return None

    def _silent(self, state: _DeviceState, device_id: str, t: datetime, *, record: bool) -> bool:
        for index, spec in state.episode_specs.get(FaultKind.DROPOUT, ()):
            episode = self._episode(state, index, spec, device_id, t)
            if episode is not None:
                if record:
                    self._record(spec.kind, episode)
                return True
        return False

    def _profile(self, topic: str) -> DeviceProfile | None:
        return self.profiles.get(_topic_parts(topic)[2])

    # --- value faults -----------------------------------------------------------

    def _candidates(
        self, spec: FaultSpec, metrics: Mapping[str, MetricSpec], values: Mapping[str, Value]
    ) -> list[str]:
        only = spec.metrics
        return [
            name
            for name, value in values.items()
            if (not only or name in only) and _numeric(metrics.get(name), value)
        ]

    def _spike(
        self,
        spec: FaultSpec,
        rng: random.Random,
        metrics: Mapping[str, MetricSpec],
        values: dict[str, Value],
    ) -> dict[str, Value] | None:
        names = self._candidates(spec, metrics, values)
        if not names:
            return None
        name = rng.choice(names)
        m = metrics[name]
        value = float(values[name])
        lo, hi = m.range if m.range is not None else (-math.inf, math.inf)
        floor = (hi - lo) / 1000 if m.range is not None else 1.0
        size = max(abs(value), floor, 1.0 if m.type == "int" else 0.0) * (
            float(spec.params.get("factor", 10.0)) - 1
        )
        direction = spec.params.get("direction") or rng.choice(("up", "down"))
        signs = (1, -1) if direction == "up" else (-1, 1)
        new = next(
            (value + s * size for s in signs if lo <= value + s * size <= hi),
            min(max(value + signs[0] * size, lo), hi),
        )
        return {**values, name: _fit(m, new)}

    def _out_of_range(
        self,
        spec: FaultSpec,
        rng: random.Random,
        metrics: Mapping[str, MetricSpec],
        values: dict[str, Value],
    ) -> dict[str, Value] | None:
        names = [n for n in self._candidates(spec, metrics, values) if metrics[n].range]
        if not names:
            return None
        name = rng.choice(names)
        m = metrics[name]
        assert m.range is not None
        lo, hi = m.range
        beyond = max((hi - lo) * 0.1, 1.0)
        direction = spec.params.get("direction") or rng.choice(("up", "down"))
        new = hi + beyond if direction == "up" else lo - beyond
        return {**values, name: _fit(m, new)}

    def _drift(
        self,
        spec: FaultSpec,
        episode: _Episode,
        metrics: Mapping[str, MetricSpec],
        values: dict[str, Value],
        t: datetime,
    ) -> dict[str, Value] | None:
        if episode.metric is None:
            names = self._candidates(spec, metrics, values)
            if not names:
                return None
            rng = random.Random(episode.key)
            episode.metric = rng.choice(names)
            m = metrics[episode.metric]
            if "per_hour" in spec.params:
                episode.per_hour = float(spec.params["per_hour"])
            else:
                base = abs(float(values[episode.metric]))
                if m.range is not None:
                    base = max(base, (m.range[1] - m.range[0]) / 1000)
                pct = float(spec.params.get("per_hour_pct", 5.0))
                direction = spec.params.get("direction") or rng.choice(("up", "down"))
                episode.per_hour = (1 if direction == "up" else -1) * max(base, 1e-3) * pct / 100
        name = episode.metric
        m = metrics[name]
        if name not in values or not _numeric(m, values[name]):
            return None
        hours = (t - episode.start) / timedelta(hours=1)
        new = float(values[name]) + episode.per_hour * hours
        if m.range is not None:
            new = min(max(new, m.range[0]), m.range[1])
        return {**values, name: _fit(m, new)}

    # --- message faults ---------------------------------------------------------

    def _ghost(self, state: _DeviceState, device_id: str) -> str:
        while True:
            state.ghosts += 1
            suffix = f"-unreg{state.ghosts}"
            ghost = device_id[: 128 - len(suffix)] + suffix
            if ghost not in self.registry_ids:
                return ghost

    def _status(self, device_id: str, state: _DeviceState, t: datetime, word: str) -> WireMessage:
        assert state.status_topic is not None
        state.offline = word == "offline"
        return WireMessage(
            t, device_id, "status", state.status_topic, word.encode(), qos=1, retain=True
        )

    def _flaps(self, state: _DeviceState, device_id: str, t: datetime) -> list[WireMessage]:
        """Status toggles of flapping episodes due by `t`, closing each with `online`."""
        out: list[WireMessage] = []
        for index, spec in state.episode_specs[FaultKind.FLAPPING]:
            schedule = self._scan(state, index, spec, device_id, t)
            period = spec.params.get("period", timedelta(minutes=1))
            while schedule.episodes and schedule.episodes[0].start <= t:
                episode = schedule.episodes[0]
                if episode.rng is None:
                    episode.rng = random.Random(episode.key)
                    episode.next_toggle = max(episode.start, state.since or t)
                assert episode.next_toggle is not None
                while episode.next_toggle < episode.end and episode.next_toggle <= t:
                    word = "online" if state.offline else "offline"
                    out.append(self._status(device_id, state, episode.next_toggle, word))
                    self._record(spec.kind, episode)
                    episode.next_toggle += period * episode.rng.uniform(0.5, 1.5)
                if episode.end > t:
                    break
                if state.offline:
                    out.append(self._status(device_id, state, episode.end, "online"))
                    self._record(spec.kind, episode)
                schedule.episodes.pop(0)
        return out


def _readdress(msg: WireMessage, device_id: str) -> WireMessage:
    parts = _topic_parts(msg.topic)
    parts[3] = device_id
    return dataclasses.replace(msg, device_id=device_id, topic="/".join(parts))


def _malform(
    msg: WireMessage,
    variant: MalformedVariant,
    profile: DeviceProfile | None,
    rng: random.Random,
) -> WireMessage:
    payload = msg.payload
    if profile is not None and profile.decoder != "json":
        return dataclasses.replace(msg, payload=_malform_frame(payload, variant, rng))
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        return dataclasses.replace(msg, payload=_truncate(payload, rng))
    batch = data.get("readings")
    item = batch[0] if isinstance(batch, list) and batch and isinstance(batch[0], dict) else data
    values = item.get("values")
    values = values if isinstance(values, dict) else {}
    known = profile.metrics if profile is not None else {}
    numeric = [k for k, v in values.items() if _numeric(known.get(k), v)] or list(values)
    placeholder = "\x00cityvitals-placeholder\x00"
    splice: bytes | None = None

    match variant:
        case MalformedVariant.TRUNCATED_JSON:
            return dataclasses.replace(msg, payload=_truncate(payload, rng))
        case MalformedVariant.EMPTY_OBJECT:
            return dataclasses.replace(msg, payload=b"{}")
        case MalformedVariant.WRONG_TYPE if values:
            name = rng.choice(list(values))
            value = values[name]
            if isinstance(value, bool):
                values[name] = "true" if value else "false"
            elif isinstance(value, int | float):
                values[name] = str(value)
            else:
                values[name] = [value]
        case MalformedVariant.NAN if numeric:
            values[rng.choice(numeric)] = placeholder
            splice = b"NaN"
        case MalformedVariant.NON_UTF8:
            item["site"] = placeholder
            splice = b'"' + _GBK_SITE + b'"'
        case MalformedVariant.UNKNOWN_METRIC:
            base = rng.choice(numeric) if numeric else "value"
            name = f"{base}_raw"
            while name in known or name in values:
                name += "_x"
            values[name] = values.get(base, 0)
            item["values"] = values
        case MalformedVariant.NAIVE_TS:
            item["ts"] = _naive_ts(item.get("ts"), msg.t)
        case _:  # the variant needs a value and there is none
            return dataclasses.replace(msg, payload=_truncate(payload, rng))
    encoded = orjson.dumps(data)
    if splice is not None:
        encoded = encoded.replace(orjson.dumps(placeholder), splice)
    return dataclasses.replace(msg, payload=encoded)


def _naive_ts(raw: Any, t: datetime) -> str:
    if isinstance(raw, str):
        try:
            return datetime.fromisoformat(raw).replace(tzinfo=None).isoformat()
        except ValueError:
            pass
    elif isinstance(raw, int | float) and not isinstance(raw, bool):
        return datetime.fromtimestamp(raw / 1000, UTC).replace(tzinfo=None).isoformat()
    return t.replace(tzinfo=None).isoformat()


def _truncate(payload: bytes, rng: random.Random) -> bytes:
    """A proper prefix of the payload, cut on a character boundary."""
    if len(payload) < 2:
        return b"{"
    cut = rng.randint(max(1, len(payload) // 3), max(1, 2 * len(payload) // 3))
    return payload[:cut].decode("utf-8", "ignore").encode() or b"{"


def _malform_frame(payload: bytes, variant: MalformedVariant, rng: random.Random) -> bytes:
    if variant is MalformedVariant.EMPTY_OBJECT:
        return b""
    if variant is MalformedVariant.NON_UTF8:
        cut = rng.randint(0, len(payload))
        return payload[:cut] + _GBK_SITE + payload[cut:]
    text = payload.decode("ascii", "replace").strip()
    fields = text.split(",")
    # Keep fewer fields than any frame needs, so the cut is always malformed.
    return ",".join(fields[: max(1, min(len(fields) - 1, 2))]).encode("ascii", "replace")
