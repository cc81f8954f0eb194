"""A fleet of simulated devices producing wire messages in simulated-time order.

Each device's model is stepped at its own tick; what it emits is stamped with
the simulated time and the device's sequence number, encoded the way its
profile's decoder expects (canonical JSON, or a vendor frame), passed through
the fault injector, and yielded in time order.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Protocol

import orjson

from devices.profile import ProfileSet
from devices.registry import DeviceRecord
from simulators.construct import wire_message
from simulators.model import DeviceModel, Emission, SimDevice, WireMessage, device_rng
from simulators.models import MODELS
from simulators.world import World


class SimulatorError(ValueError):
    """A device cannot be simulated (no model, bad parameters); the message says which."""


class Injector(Protocol):
    """The fault injector's interface as the fleet uses it (see simulators.faults)."""

    def on_values(
        self, device: SimDevice, t: datetime, values: dict[str, Any]
    ) -> tuple[dict[str, Any], timedelta]: ...

    def on_message(self, msg: WireMessage, device: SimDevice) -> list[WireMessage]: ...

    def flush(self) -> list[WireMessage]: ...


CHINA_TZ = timezone(timedelta(hours=8))
"""Payload timestamps carry the city's offset, as field devices in China send them."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_CHINA_EPOCH = _EPOCH.astimezone(CHINA_TZ)


def china_time(t: datetime) -> datetime:
    """`t.astimezone(CHINA_TZ)` (for an aware `t`) at a fifth of the cost: this is done
    for every message."""
    return _CHINA_EPOCH + (t - _EPOCH)


Encoder = Callable[[SimDevice, Emission, int, datetime], bytes]


def _json_encoder(device: SimDevice, emission: Emission, seq: int, ts: datetime) -> bytes:
    if emission.channel == "status":
        return str(emission.body["state"]).encode()
    if emission.channel == "event":
        return orjson.dumps({"ts": ts, **emission.body})
    return orjson.dumps({"ts": ts, "seq": seq, "values": emission.body})


_EF1_CODES: dict[str, dict[str, int]] = {
    "state": {"idle": 0, "running": 1, "stopped": 2, "fault": 3},
    "door": {"closed": 0, "opening": 1, "open": 2, "closing": 3},
    "direction": {"stopped": 0, "up": 1, "down": 2},
    "service_mode": {
        "normal": 0,
        "inspection": 1,
        "fire_return": 2,
        "firefighter": 3,
        "emergency_power": 4,
        "earthquake": 5,
        "out_of_service": 6,
    },
    "power": {"mains": 0, "battery": 1, "off": 2},
}


def _ef1_field(values: Mapping[str, Any], name: str) -> str:
    value = values.get(name)
    if value is None:
        return ""
    if name in _EF1_CODES:
        return str(_EF1_CODES[name].get(str(value), "")) if isinstance(value, str) else str(value)
    if isinstance(value, float):
        return f"{abs(value):.2f}" if name in ("speed_mps", "load_pct") else str(round(value))
    return str(int(value))


def _elevator_frame_encoder(device: SimDevice, emission: Emission, seq: int, ts: datetime) -> bytes:
    """The vendor frames that devices.decoders.elevator_frame reads (see its docstring)."""
    ms = int(ts.timestamp() * 1000)
    if emission.channel == "status":
        return str(emission.body["state"]).encode()
    if emission.channel == "event":
        detail = emission.body.get("detail") or {}
        pairs = ";".join(f"{k}={v}" for k, v in detail.items() if str(v) and ";" not in str(v))
        code = emission.body.get("code") or device.profile.events[emission.body["type"]].code
        return f"EV1,{ms},{code}{',' + pairs if pairs else ''}".encode()
    v = emission.body
    flags = (1 if v.get("in_door_zone") else 0) | (2 if v.get("passengers_present") else 0)
    fields = [
        "EF1",
        str(ms),
        str(seq),
        *(
            _ef1_field(v, n)
            for n in ("state", "floor", "door", "direction", "speed_mps", "load_pct")
        ),
        f"{flags:X}",
        *(_ef1_field(v, n) for n in ("service_mode", "power", "run_count", "fault_code")),
    ]
    return ",".join(fields).encode()


_MICROSECOND = timedelta(microseconds=1)

ENCODERS: dict[str, Encoder] = {
    "json": _json_encoder,
    "devices.decoders.elevator_frame:decode": _elevator_frame_encoder,
}
"""Payload encoder per profile decoder: a vendor decoder needs its simulator twin here."""


def build_model(device: SimDevice, seed: int) -> DeviceModel:
    spec = device.profile.simulator
    if spec is None:
        raise SimulatorError(
            f"profile {device.profile.name} has no `simulator:` section; add one naming a "
            f"model ({', '.join(sorted(MODELS))}) to simulate device {device.device_id}"
        )
    model_cls = MODELS.get(spec.model)
    if model_cls is None:
        raise SimulatorError(
            f"profile {device.profile.name}: simulator model {spec.model!r} does not exist; "
            f"known models: {', '.join(sorted(MODELS))}"
        )
    params = {**(spec.model_extra or {}), **device.attributes}
    return model_cls(device, params, device_rng(seed, device.device_id))


def sim_devices(
    records: Sequence[DeviceRecord],
    profiles: ProfileSet,
    fallback_lat: float = 31.23,
    fallback_lon: float = 121.47,
) -> list[SimDevice]:
    devices = []
    for r in records:
        profile = profiles.get(r.profile)
        if profile is None:
            raise SimulatorError(f"device {r.device_id}: no profile named {r.profile!r}")
        attributes, problems = profile.device_attributes(r.attributes)
        if problems:
            raise SimulatorError(f"device {r.device_id}: {'; '.join(problems)}")
        devices.append(
            SimDevice(
                r.device_id,
                profile,
                r.district,
                fallback_lat if r.lat is None else r.lat,
                fallback_lon if r.lon is None else r.lon,
                attributes,
            )
        )
    return devices


@dataclass
class FleetStats:
    emissions: int = 0
    messages: int = 0


class Fleet:
    """Steps every device's model and yields its messages in simulated-time order."""

    def __init__(
        self,
        devices: Sequence[SimDevice],
        world: World,
        start: datetime,
        seed: int = 0,
        root: str = "city",
        injector: Injector | None = None,
    ) -> None:
        if start.tzinfo is None:
            raise SimulatorError("the simulation start needs a UTC offset")
        self.devices = list(devices)
        self.world = world
        self.start = start
        self.root = root
        self.injector = injector
        self.stats = FleetStats()
        self._models = [build_model(d, seed) for d in self.devices]
        self._encoders: list[Encoder] = []
        for d in self.devices:
            encoder = ENCODERS.get(d.profile.decoder)
            if encoder is None:
                raise SimulatorError(
                    f"profile {d.profile.name}: no simulator encoder for decoder "
                    f"{d.profile.decoder}; add one to simulators.fleet.ENCODERS"
                )
            self._encoders.append(encoder)
        self._seq = [0] * len(self.devices)
        self._topics: list[dict[str, str]] = [
            {channel: self.topic(d, channel) for channel in ("telemetry", "event", "status")}
            for d in self.devices
        ]
        # Stagger first reports across each device's tick, as real fleets are.
        rng = device_rng(seed, "__fleet__")
        self._due = [start + m.tick * rng.random() for m in self._models]
        self._schedule()
        self.now = start

    def _schedule(self) -> None:
        """Order the devices' steps: by time, then by device index.

        A step is keyed by an int, microseconds since the start (what datetimes
        resolve) × the number of devices + the device index; `_due` holds its
        datetime. A model's tick is fixed, so devices of the same tick whose first
        steps lie within one tick of each other step in the same cyclic order
        forever: each such group is a queue (the device that stepped goes to the
        back), and only the heads of the groups, a handful, need a heap.
        """
        n = max(1, len(self.devices))
        self._ticks = [(m.tick, m.tick // _MICROSECOND * n) for m in self._models]
        keys = [(t - self.start) // _MICROSECOND * n + i for i, t in enumerate(self._due)]
        by_tick: dict[int, list[int]] = {}
        for i, (_, tick_key) in enumerate(self._ticks):
            by_tick.setdefault(tick_key, []).append(keys[i])
        self._queues: list[deque[int]] = [deque()] * len(self.devices)
        self._heads: list[int] = []
        for tick_key, members in by_tick.items():
            members.sort()
            if members[-1] // n - members[0] // n < tick_key // n:
                groups = [members]
            else:  # too spread out for the cyclic order: each device on its own
                groups = [[key] for key in members]
            for group in groups:
                queue = deque(group)
                for key in group:
                    self._queues[key % n] = queue
                self._heads.append(group[0])
        heapq.heapify(self._heads)

    def topic(self, device: SimDevice, channel: str) -> str:
        return f"{self.root}/{device.district}/{device.profile.name}/{device.device_id}/{channel}"

    def status_messages(self, state: str, t: datetime | None = None) -> list[WireMessage]:
        """Retained online/offline for every device: what devices say on connect and leave."""
        when = t or self.now
        return [
            WireMessage(
                when, d.device_id, "status", self.topic(d, "status"), state.encode(), retain=True
            )
            for d in self.devices
        ]

    def _encode(self, i: int, emission: Emission) -> WireMessage | None:
        device = self.devices[i]
        channel = emission.channel
        t = emission.t
        if channel == "telemetry":
            self._seq[i] += 1
            if self.injector is not None:
                body, offset = self.injector.on_values(device, t, dict(emission.body))
                if not body:
                    return None
                emission = Emission(t, channel, body)
                t += offset
        payload = self._encoders[i](device, emission, self._seq[i], china_time(t))
        return wire_message(
            emission.t,
            device.device_id,
            channel,
            self._topics[i][channel],
            payload,
            channel == "status",
        )

    def advance(self, until: datetime) -> Iterator[WireMessage]:
        """Messages of every device due up to and including `until`, in time order."""
        heads, queues = self._heads, self._queues
        injector = self.injector
        models, ticks, devices = self._models, self._ticks, self.devices
        world, stats, encode = self.world, self.stats, self._encode
        seq, encoders, topics = self._seq, self._encoders, self._topics
        due, n = self._due, max(1, len(devices))
        limit = ((until - self.start) // _MICROSECOND + 1) * n  # keys before the next µs
        heapreplace = heapq.heapreplace
        while heads and heads[0] < limit:
            key = heads[0]
            i = key % n
            t = due[i]
            tick, tick_key = ticks[i]
            queue = queues[i]
            queue.popleft()
            queue.append(key + tick_key)
            heapreplace(heads, queue[0])
            due[i] = t + tick
            self.now = t
            for emission in models[i].step(t, world):
                stats.emissions += 1
                if injector is not None:
                    msg = encode(i, emission)
                    if msg is None:
                        continue
                    for m in injector.on_message(msg, devices[i]):
                        stats.messages += 1
                        yield m
                    continue
                # _encode without an injector, inlined: this runs for every message.
                channel = emission.channel
                encoder = encoders[i]
                if channel == "telemetry":
                    seq[i] += 1
                    if encoder is _json_encoder:
                        payload = orjson.dumps(
                            {
                                "ts": _CHINA_EPOCH + (emission.t - _EPOCH),
                                "seq": seq[i],
                                "values": emission.body,
                            }
                        )
                    else:
                        payload = encoder(devices[i], emission, seq[i], china_time(emission.t))
                else:
                    payload = encoder(devices[i], emission, seq[i], china_time(emission.t))
                stats.messages += 1
                yield wire_message(
                    emission.t,
                    devices[i].device_id,
                    channel,
                    topics[i][channel],
                    payload,
                    channel == "status",
                )
        self.now = max(self.now, until)

    def finish(self) -> list[WireMessage]:
        """Messages a fault held back (out of order), released at the end of a run."""
        held = self.injector.flush() if self.injector is not None else []
        self.stats.messages += len(held)
        return held


def utc(text: str) -> datetime:
    """Parse an ISO 8601 time with offset (used for scenario starts)."""
    t = datetime.fromisoformat(text)
    if t.tzinfo is None:
        raise SimulatorError(f"time {text!r} needs a UTC offset, e.g. +08:00")
    return t.astimezone(UTC)
