"""Cheaper constructors for the frozen dataclasses made once per simulated message.

A frozen dataclass's `__init__` sets each field through `object.__setattr__`;
for `WireMessage` (seven fields) that costs about as much as encoding the
payload. These build the same objects by setting the slots directly. They
check at import that the classes still have exactly the fields they set.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

from simulators.model import Channel, Emission, WireMessage

_WIRE_FIELDS = ("t", "device_id", "channel", "topic", "payload", "qos", "retain")
_EMISSION_FIELDS = ("t", "channel", "body")
for _cls, _names in ((WireMessage, _WIRE_FIELDS), (Emission, _EMISSION_FIELDS)):
    if tuple(f.name for f in dataclasses.fields(_cls)) != _names:
        raise ImportError(f"simulators.construct is out of step with {_cls.__name__}'s fields")

_set_t, _set_device, _set_channel, _set_topic, _set_payload, _set_qos, _set_retain = (
    getattr(WireMessage, name).__set__ for name in _WIRE_FIELDS
)
_set_emission_t, _set_emission_channel, _set_emission_body = (
    getattr(Emission, name).__set__ for name in _EMISSION_FIELDS
)
_new = object.__new__


def wire_message(
    t: datetime, device_id: str, channel: Channel, topic: str, payload: bytes, retain: bool
) -> WireMessage:
    """`WireMessage(t, device_id, channel, topic, payload, qos=1, retain=retain)`."""
    msg: WireMessage = _new(WireMessage)
    _set_t(msg, t)
    _set_device(msg, device_id)
    _set_channel(msg, channel)
    _set_topic(msg, topic)
    _set_payload(msg, payload)
    _set_qos(msg, 1)
    _set_retain(msg, retain)
    return msg


def emission(t: datetime, channel: Channel, body: dict[str, Any]) -> Emission:
    """`Emission(t, channel, body)`."""
    e: Emission = _new(Emission)
    _set_emission_t(e, t)
    _set_emission_channel(e, channel)
    _set_emission_body(e, body)
    return e
