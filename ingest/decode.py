"""Decode and validate one MQTT message against its device profile.

Pure: the received time and the registry are arguments. Anything wrong with a
message becomes a `DeadLetter` with a reason code and a message that names the
topic, device and field; valid parts of a partly bad message are still kept.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from devices.errors import DecodeError
from devices.model import DeviceEvent, Quality, Reading, StatusUpdate
from devices.profile import DeviceProfile, MetricSpec
from ingest.topics import Channel, Topic, TopicError, parse_topic


class DeadLetterReason(enum.StrEnum):
    BAD_TOPIC = "bad_topic"
    UNKNOWN_CHANNEL = "unknown_channel"
    UNKNOWN_PROFILE = "unknown_profile"
    PROFILE_MISMATCH = "profile_mismatch"
    TOO_LARGE = "too_large"
    BAD_ENCODING = "bad_encoding"
    MALFORMED_PAYLOAD = "malformed_payload"
    BAD_STRUCTURE = "bad_structure"
    UNKNOWN_METRIC = "unknown_metric"
    WRONG_TYPE = "wrong_type"
    BAD_TIMESTAMP = "bad_timestamp"
    UNKNOWN_EVENT = "unknown_event"
    REJECTED_BY_DATABASE = "rejected_by_database"


_BIGINT_MAX = 2**63 - 1
_INT_MAX = 2**31 - 1
_EPOCH_MS_MIN = 946_684_800_000  # 2000-01-01
_EPOCH_MS_MAX = 4_102_444_800_000  # 2100-01-01

# Quality bits as plain ints: IntFlag arithmetic costs about a microsecond per operation.
_GOOD = int(Quality.GOOD)
_OUT_OF_RANGE = int(Quality.OUT_OF_RANGE)
_RECEIVE_TIME = int(Quality.RECEIVE_TIME)
_CLOCK_SKEW = int(Quality.CLOCK_SKEW)

_TOPIC_CACHE_SIZE = 100_000


@dataclass(frozen=True, slots=True)
class DeadLetter:
    received_at: datetime
    topic: str
    payload: bytes
    """The raw payload, cut to the configured size when larger."""
    payload_size: int
    reason: str
    detail: str
    device_id: str | None = None


@dataclass(frozen=True, slots=True)
class NewDevice:
    """A device seen on the wire but absent from the registry: registered as provisional."""

    device_id: str
    profile: str
    district: str


@dataclass(slots=True)
class DecodedMessage:
    readings: list[Reading] = field(default_factory=list)
    events: list[DeviceEvent] = field(default_factory=list)
    status: StatusUpdate | None = None
    dead_letter: DeadLetter | None = None
    new_device: NewDevice | None = None
    device_id: str | None = None
    received_at: datetime | None = None
    last_seq: int | None = None
    first_seq: int | None = None
    out_of_range: int = 0


_NumberRule = tuple[float, float, bool]
"""(low, high, whole numbers only) of a float or int metric, for `MessageDecoder._items`."""


class _Reject(Exception):  # noqa: N818 - control flow inside decode(), never escapes
    def __init__(self, reason: DeadLetterReason, detail: str) -> None:
        self.reason = reason
        self.detail = detail


class MessageDecoder:
    """Turns (topic, payload) into readings, events and status, or a dead letter.

    `registry` maps device ids to their registered profile name. Unknown devices
    on a known profile are accepted and reported as `new_device`, then treated
    as registered.
    """

    def __init__(
        self,
        profiles: Mapping[str, DeviceProfile],
        registry: Mapping[str, str],
        root: str = "city",
        max_payload_bytes: int = 256 * 1024,
        dead_letter_keep_bytes: int = 64 * 1024,
        future_tolerance: timedelta = timedelta(minutes=5),
    ) -> None:
        self.profiles = profiles
        self.registry: dict[str, str] = dict(registry)
        self.root = root
        self.max_payload_bytes = max_payload_bytes
        self.keep_bytes = dead_letter_keep_bytes
        self.future_tolerance = future_tolerance
        self._tolerance_ms = future_tolerance.total_seconds() * 1000
        self._profiles = dict(profiles)  # a plain dict: ProfileSet.get runs Python code
        self._window: tuple[datetime | None, float] = (None, 0.0)
        """(now, the newest epoch-ms ts the fast path takes at that receive time)."""
        self._topics: dict[str, Topic] = {}
        self._rules: dict[str, tuple[DeviceProfile, dict[str, _NumberRule]]] = {}

    def replace_registry(self, registry: Mapping[str, str]) -> None:
        self.registry = dict(registry)

    def decode(self, topic: str, payload: bytes, received_at: datetime) -> DecodedMessage:
        out = DecodedMessage(received_at=received_at)
        try:
            self._decode(topic, payload, received_at, out)
        except _Reject as reject:
            out.readings.clear()
            out.events.clear()
            out.status = None
            out.dead_letter = self._dead(topic, payload, received_at, reject, out.device_id)
        except TopicError as exc:
            reason = DeadLetterReason(exc.reason)
            out.dead_letter = self._dead(topic, payload, received_at, _Reject(reason, str(exc)))
        return out

    def _dead(
        self,
        topic: str,
        payload: bytes,
        received_at: datetime,
        reject: _Reject,
        device_id: str | None = None,
    ) -> DeadLetter:
        return DeadLetter(
            received_at=received_at,
            topic=topic,
            payload=payload[: self.keep_bytes],
            payload_size=len(payload),
            reason=reject.reason.value,
            detail=reject.detail,
            device_id=device_id,
        )

    def _topic(self, topic: str) -> Topic:
        t = self._topics.get(topic)
        if t is None:
            t = parse_topic(topic, self.root)
            if len(self._topics) >= _TOPIC_CACHE_SIZE:
                self._topics.clear()
            self._topics[topic] = t
        return t

    def _number_rules(self, profile: DeviceProfile) -> dict[str, _NumberRule]:
        """(low, high, whole numbers only) of each float or int metric of `profile`."""
        held = self._rules.get(profile.name)
        if held is not None and held[0] is profile:
            return held[1]
        rules: dict[str, _NumberRule] = {}
        for name, spec in profile.metrics.items():
            if spec.type in ("float", "int"):
                low, high = spec.range if spec.range is not None else (-math.inf, math.inf)
                rules[name] = (low, high, spec.type == "int")
        self._rules[profile.name] = (profile, rules)
        return rules

    def _decode(self, topic: str, payload: bytes, now: datetime, out: DecodedMessage) -> None:
        t = self._topic(topic)
        out.device_id = t.device_id
        profile = self._profiles.get(t.profile)
        if profile is None:
            raise _Reject(
                DeadLetterReason.UNKNOWN_PROFILE,
                f"{topic}: no device profile named {t.profile!r}; add "
                f"devices/profiles/{t.profile}.yaml or fix the device's topic",
            )
        registered = self.registry.get(t.device_id)
        if registered is None:
            out.new_device = NewDevice(t.device_id, t.profile, t.district)
            self.registry[t.device_id] = t.profile
        elif registered != t.profile:
            raise _Reject(
                DeadLetterReason.PROFILE_MISMATCH,
                f"{topic}: device {t.device_id} is registered with profile {registered!r} "
                f"but published under {t.profile!r}; fix the device's topic or its registry row",
            )
        if len(payload) > self.max_payload_bytes:
            raise _Reject(
                DeadLetterReason.TOO_LARGE,
                f"{topic}: payload of {len(payload)} bytes exceeds the limit of "
                f"{self.max_payload_bytes} (CITYVITALS_MAX_PAYLOAD_BYTES)",
            )
        if t.channel is Channel.STATUS:
            out.status = self._status(t, profile, payload, now)
            return
        data = self._parse(t, profile, payload)
        if not isinstance(data, dict):
            raise _Reject(
                DeadLetterReason.BAD_STRUCTURE,
                f"{topic}: payload must be a JSON object, got {type(data).__name__}",
            )
        if t.channel is Channel.EVENT:
            out.events.append(self._event(t, profile, data, now))
            return
        problems: list[tuple[DeadLetterReason, str]] = []
        batch = data.get("readings")
        if batch is not None:
            if not isinstance(batch, list) or not batch:
                raise _Reject(
                    DeadLetterReason.BAD_STRUCTURE,
                    f"{topic}: 'readings' must be a non-empty list of {{ts, seq, values}}",
                )
            self._items(t, profile, batch, now, out, problems, True)
        else:
            self._items(t, profile, [data], now, out, problems, False)
        if problems:
            detail = f"{topic}: " + "; ".join(p for _, p in problems[:10])
            if len(problems) > 10:
                detail += f"; and {len(problems) - 10} more"
            if out.readings:
                detail += f" (the other {len(out.readings)} value(s) were stored)"
            reject = _Reject(problems[0][0], detail)
            out.dead_letter = self._dead(topic, payload, now, reject, t.device_id)

    def _parse(self, t: Topic, profile: DeviceProfile, payload: bytes) -> Any:
        decoder = profile.decode
        if decoder is not None:
            try:
                return decoder(payload, t.channel.value)
            except DecodeError as exc:
                raise _Reject(_reason(exc.reason), f"{t}: {exc.message}") from None
            except Exception as exc:  # a vendor decoder's bug must not stop ingest
                raise _Reject(
                    DeadLetterReason.MALFORMED_PAYLOAD,
                    f"{t}: decoder {profile.decoder} failed: {type(exc).__name__}: {exc}",
                ) from None
        try:
            return orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            if b"\x00" in payload:
                raise _Reject(
                    DeadLetterReason.BAD_ENCODING,
                    f"{t}: payload holds NUL bytes (UTF-16 or binary?); devices must send "
                    "UTF-8 JSON",
                ) from None
            try:
                payload.decode("utf-8")
            except UnicodeDecodeError as uexc:
                raise _Reject(
                    DeadLetterReason.BAD_ENCODING,
                    f"{t}: payload is not UTF-8 ({uexc.reason} at byte {uexc.start}); "
                    "devices must send UTF-8 JSON",
                ) from None
            raise _Reject(
                DeadLetterReason.MALFORMED_PAYLOAD, f"{t}: payload is not valid JSON: {exc}"
            ) from None

    def _timestamp(self, raw: Any, now: datetime, where: str) -> tuple[datetime, int]:
        if raw is None:
            return now, _RECEIVE_TIME
        if isinstance(raw, str):
            try:
                ts = datetime.fromisoformat(raw)
            except ValueError:
                raise _Reject(
                    DeadLetterReason.BAD_TIMESTAMP,
                    f"{where}ts {raw[:40]!r} is not ISO 8601 (e.g. 2026-11-25T10:00:00+08:00)",
                ) from None
            if ts.tzinfo is None:
                raise _Reject(
                    DeadLetterReason.BAD_TIMESTAMP,
                    f"{where}ts {raw!r} has no UTC offset; add one, e.g. +08:00",
                )
        elif isinstance(raw, int | float) and not isinstance(raw, bool):
            if not (_EPOCH_MS_MIN <= raw < _EPOCH_MS_MAX):
                hint = (
                    " (it looks like seconds)"
                    if _EPOCH_MS_MIN <= raw * 1000 < _EPOCH_MS_MAX
                    else ""
                )
                raise _Reject(
                    DeadLetterReason.BAD_TIMESTAMP,
                    f"{where}ts {raw} is not epoch milliseconds between 2000 and 2100{hint}",
                )
            ts = datetime.fromtimestamp(raw / 1000, UTC)
        else:
            raise _Reject(
                DeadLetterReason.BAD_TIMESTAMP,
                f"{where}ts must be an ISO 8601 string or epoch milliseconds, "
                f"got {type(raw).__name__}",
            )
        if ts - now > self.future_tolerance:
            return ts, _CLOCK_SKEW
        return ts, _GOOD

    def _telemetry(
        self,
        t: Topic,
        profile: DeviceProfile,
        item: dict[str, Any],
        now: datetime,
        out: DecodedMessage,
        problems: list[tuple[DeadLetterReason, str]],
        where: str,
    ) -> None:
        try:
            ts, flags = self._timestamp(item.get("ts"), now, where)
        except _Reject as reject:
            problems.append((reject.reason, reject.detail))
            return
        seq = item.get("seq")
        if seq is not None:
            if isinstance(seq, int) and not isinstance(seq, bool) and 0 <= seq <= _BIGINT_MAX:
                out.last_seq = seq if out.last_seq is None else max(out.last_seq, seq)
                out.first_seq = seq if out.first_seq is None else min(out.first_seq, seq)
            else:
                problems.append(
                    (
                        DeadLetterReason.WRONG_TYPE,
                        f"{where}seq must be an integer from 0 to {_BIGINT_MAX}",
                    )
                )
        values = item.get("values")
        if not isinstance(values, dict) or not values:
            problems.append(
                (
                    DeadLetterReason.BAD_STRUCTURE,
                    f"{where}values must be a non-empty object of metric: value",
                )
            )
            return
        for metric, raw in values.items():
            self._value(t, profile, metric, raw, ts, flags, out, problems, where)

    def _value(
        self,
        t: Topic,
        profile: DeviceProfile,
        metric: str,
        raw: Any,
        ts: datetime,
        flags: int,
        out: DecodedMessage,
        problems: list[tuple[DeadLetterReason, str]],
        where: str,
    ) -> None:
        spec = profile.metrics.get(metric)
        if spec is None:
            problems.append(
                (
                    DeadLetterReason.UNKNOWN_METRIC,
                    f"{where}values.{metric} is not a metric of profile {profile.name} "
                    f"(known: {', '.join(profile.metrics)})",
                )
            )
            return
        try:
            value = _coerce(spec, raw)
        except ValueError as exc:
            problems.append((DeadLetterReason.WRONG_TYPE, f"{where}values.{metric}: {exc}"))
            return
        if spec.range is not None and not (spec.range[0] <= value <= spec.range[1]):
            flags |= _OUT_OF_RANGE
            out.out_of_range += 1
        out.readings.append(Reading(ts, t.device_id, metric, value, flags))

    def _items(
        self,
        t: Topic,
        profile: DeviceProfile,
        items: list[Any],
        now: datetime,
        out: DecodedMessage,
        problems: list[tuple[DeadLetterReason, str]],
        batch: bool,
    ) -> None:
        """Telemetry items: the common shape in a tight loop, anything else by `_telemetry`.

        An item takes the fast path when it is a dict whose ts is epoch milliseconds
        well inside the accepted window, whose seq is absent or valid and whose values
        are a non-empty dict; each value does when it is a finite number for a float or
        int metric. Everything else, and every problem, is handled by the general code,
        so results and messages are the same either way.
        """
        rules = self._number_rules(profile)
        device = t.device_id
        append = out.readings.append
        new = tuple.__new__  # what Reading(...) does, without its Python-level __new__
        reading = Reading
        from_ts = datetime.fromtimestamp
        utc = UTC
        good, out_of_range_flag = _GOOD, _OUT_OF_RANGE
        window_now, ts_max = self._window
        if now is not window_now:  # messages of one read share their receive time
            # Fast-path timestamps stay a millisecond clear of the future tolerance, where
            # float rounding could decide differently from the exact datetime comparison.
            ts_max = min(now.timestamp() * 1000 + self._tolerance_ms - 1, _EPOCH_MS_MAX)
            self._window = (now, ts_max)
        ts_min = _EPOCH_MS_MIN
        seq_max = _BIGINT_MAX
        first_seq, last_seq = out.first_seq, out.last_seq
        out_of_range = 0
        raw_ts: Any
        values: Any
        i = -1
        for item in items:
            i += 1
            if type(item) is dict:
                raw_ts = item.get("ts")
                seq = item.get("seq")
                values = item.get("values")
                fast = (
                    type(raw_ts) is int
                    and ts_min <= raw_ts < ts_max
                    and (seq is None or (type(seq) is int and 0 <= seq <= seq_max))
                    and type(values) is dict
                    and values
                )
            else:
                fast = False
            if not fast:
                if not isinstance(item, dict):
                    problems.append(
                        (DeadLetterReason.BAD_STRUCTURE, f"readings[{i}] is not an object")
                    )
                    continue
                out.first_seq, out.last_seq = first_seq, last_seq
                self._telemetry(
                    t, profile, item, now, out, problems, f"readings[{i}]." if batch else ""
                )
                first_seq, last_seq = out.first_seq, out.last_seq
                continue
            if seq is not None:
                if first_seq is None or seq < first_seq:
                    first_seq = seq
                if last_seq is None or seq > last_seq:
                    last_seq = seq
            ts = from_ts(raw_ts / 1000, utc)
            for metric, raw in values.items():
                rule = rules.get(metric)
                if rule is not None:
                    kind = type(raw)
                    if kind is float:
                        # Finite (inf - inf and nan - nan are nan), and whole for an int metric.
                        if raw - raw == 0.0 and not (rule[2] and not raw.is_integer()):
                            if rule[0] <= raw <= rule[1]:
                                append(new(reading, (ts, device, metric, raw, good)))
                            else:
                                out_of_range += 1
                                append(new(reading, (ts, device, metric, raw, out_of_range_flag)))
                            continue
                    elif kind is int:
                        value = float(raw)
                        if rule[0] <= value <= rule[1]:
                            append(new(reading, (ts, device, metric, value, good)))
                        else:
                            out_of_range += 1
                            append(new(reading, (ts, device, metric, value, out_of_range_flag)))
                        continue
                self._value(
                    t, profile, metric, raw, ts, good, out, problems,
                    f"readings[{i}]." if batch else "",
                )  # fmt: skip
        out.first_seq, out.last_seq = first_seq, last_seq
        out.out_of_range += out_of_range

    def _event(
        self, t: Topic, profile: DeviceProfile, data: dict[str, Any], now: datetime
    ) -> DeviceEvent:
        ts, _ = self._timestamp(data.get("ts"), now, "")
        etype, code = data.get("type"), data.get("code")
        if code is not None and (
            not isinstance(code, int) or isinstance(code, bool) or not 0 <= code <= _INT_MAX
        ):
            raise _Reject(
                DeadLetterReason.WRONG_TYPE,
                f"{t}: event code must be an integer from 0 to {_INT_MAX}",
            )
        if etype is None and code is not None:
            etype = profile.event_by_code.get(code)
            if etype is None:
                raise _Reject(
                    DeadLetterReason.UNKNOWN_EVENT,
                    f"{t}: event code {code} is not an event of profile {profile.name}",
                )
        if not isinstance(etype, str) or etype not in profile.events:
            raise _Reject(
                DeadLetterReason.UNKNOWN_EVENT,
                f"{t}: event type {etype!r} is not an event of profile {profile.name} "
                f"(known: {', '.join(profile.events) or 'none'})",
            )
        if code is None:
            code = profile.events[etype].code
        detail = data.get("detail", {})
        if not isinstance(detail, dict):
            raise _Reject(DeadLetterReason.BAD_STRUCTURE, f"{t}: event detail must be an object")
        _no_nul(t, detail, "event detail")
        return DeviceEvent(ts, t.device_id, etype, code, detail)

    def _status(
        self, t: Topic, profile: DeviceProfile, payload: bytes, now: datetime
    ) -> StatusUpdate:
        text = payload.strip()
        if text in (b"online", b"offline"):
            return StatusUpdate(now, t.device_id, text.decode())
        data = self._parse(t, profile, payload)
        if isinstance(data, dict) and isinstance(data.get("state"), str) and data["state"]:
            _no_nul(t, data, "status")
            ts, _ = self._timestamp(data.get("ts"), now, "")
            detail = {k: v for k, v in data.items() if k not in ("state", "ts")}
            return StatusUpdate(ts, t.device_id, data["state"][:64], detail)
        raise _Reject(
            DeadLetterReason.BAD_STRUCTURE,
            f"{t}: status must be 'online', 'offline' or JSON with a 'state' string",
        )


def _no_nul(t: Topic, value: Any, what: str) -> None:
    """PostgreSQL text and jsonb cannot hold U+0000: refuse it here, naming where it was."""
    if isinstance(value, str):
        if "\x00" in value:
            raise _Reject(DeadLetterReason.BAD_STRUCTURE, f"{t}: {what} holds a NUL character")
    elif isinstance(value, dict):
        for k, v in value.items():
            _no_nul(t, k, what)
            _no_nul(t, v, what)
    elif isinstance(value, list):
        for v in value:
            _no_nul(t, v, what)


def _reason(code: str) -> DeadLetterReason:
    try:
        return DeadLetterReason(code)
    except ValueError:
        return DeadLetterReason.MALFORMED_PAYLOAD


def _coerce(spec: MetricSpec, raw: Any) -> float:
    """The number stored for a raw JSON value, or ValueError saying what was expected."""
    if spec.type == "enum":
        assert spec.values is not None
        if isinstance(raw, str) and raw in spec.values:
            return float(spec.values[raw])
        if isinstance(raw, int) and not isinstance(raw, bool) and raw in spec.code_to_word:
            return float(raw)
        raise ValueError(f"{raw!r} is not one of {', '.join(spec.values)}")
    if spec.type == "bool":
        if isinstance(raw, bool):
            return 1.0 if raw else 0.0
        if raw in (0, 1) and not isinstance(raw, float):
            return float(raw)
        raise ValueError(f"expected true or false, got {raw!r}"[:120])
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise ValueError(f"expected a number, got {type(raw).__name__} {raw!r}"[:120])
    value = float(raw)
    if not math.isfinite(value):
        raise ValueError(f"{raw!r} is not a finite number")
    if spec.type == "int" and not value.is_integer():
        raise ValueError(f"expected an integer, got {raw!r}")
    return value
