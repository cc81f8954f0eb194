"""Vendor payload decoders.

Each module exposes `decode(payload: bytes, channel: str) -> dict[str, Any]`,
named by a profile as `decoder: devices.decoders.<module>:decode`. It turns one
MQTT payload of `channel` (`telemetry`, `event` or `status`) into the canonical
JSON shape of that channel and raises `devices.errors.DecodeError` — nothing
else — when the payload cannot be decoded. Decoders are pure functions of their
input: no I/O, no clock.
"""
