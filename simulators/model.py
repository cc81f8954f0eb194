"""What every simulated device model is: a seeded, clock-injected generator.

A model never reads the wall clock or a global random generator: time comes in
as an argument, randomness from the `random.Random` it was built with (seeded
from the fleet seed and the device id), and the shared state of the city —
rain, pollution, power — from the `World`. The same seed and the same calls
therefore give the same emissions.
"""

from __future__ import annotations

import hashlib
import random
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from devices.profile import DeviceProfile

if TYPE_CHECKING:
    from simulators.world import World

Channel = Literal["telemetry", "event", "status"]
Value = float | int | str | bool


@dataclass(frozen=True, slots=True)
class SimDevice:
    device_id: str
    profile: DeviceProfile
    district: str
    lat: float
    lon: float
    attributes: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Emission:
    """One thing a device says at simulated time `t`.

    telemetry: `body` is {metric: value}; event: {"type": …, "code": …, "detail": {…}};
    status: {"state": "online" | "offline"}. The fleet adds ts and seq and encodes it.
    """

    t: datetime
    channel: Channel
    body: dict[str, Any]


def device_rng(seed: int, device_id: str) -> random.Random:
    """A generator of the device's own, stable across runs and Python versions."""
    digest = hashlib.blake2b(f"{seed}:{device_id}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "big"))


class DeviceModel(ABC):
    """Base of every model. Subclasses implement `step`.

    `params` are the profile's `simulator` section merged with the device's
    registry attributes (attributes win), so a gauge's own warning level shapes
    its simulated flood.
    """

    name: str = ""

    def __init__(self, device: SimDevice, params: Mapping[str, Any], rng: random.Random) -> None:
        self.device = device
        self.params = params
        self.rng = rng

    @property
    def tick(self) -> timedelta:
        """How often `step` is called: by default the profile's reporting interval."""
        return self.device.profile.reporting_interval

    def param(self, name: str, default: float) -> float:
        value = self.params.get(name, default)
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(
                f"simulator parameter {name!r} of device {self.device.device_id} "
                f"({self.device.profile.name}) must be a number, got {value!r}"
            ) from None

    @abstractmethod
    def step(self, t: datetime, world: World) -> list[Emission]:
        """Advance the device to simulated time `t` and return what it says then."""


@dataclass(frozen=True, slots=True)
class WireMessage:
    """An encoded message as it goes to the broker, stamped with simulated send time."""

    t: datetime
    device_id: str
    channel: Channel
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False
