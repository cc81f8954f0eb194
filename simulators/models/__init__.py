"""Device models by name, as a profile's `simulator.model` names them.

Each module registers its models with `@register("name")`; a new model for a
new kind of device is one module here plus its import below.
"""

from __future__ import annotations

from collections.abc import Callable

from simulators.model import DeviceModel

MODELS: dict[str, type[DeviceModel]] = {}


def register(name: str) -> Callable[[type[DeviceModel]], type[DeviceModel]]:
    def add(cls: type[DeviceModel]) -> type[DeviceModel]:
        if name in MODELS:
            raise ValueError(f"two simulator models are named {name!r}")
        cls.name = name
        MODELS[name] = cls
        return cls

    return add


# Imported for their registrations.
from simulators.models import elevator, environment, hydrology  # noqa: E402, F401
