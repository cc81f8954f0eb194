"""The topic contract: `{root}/{district}/{profile}/{device_id}/{channel}`."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Channel(enum.StrEnum):
    TELEMETRY = "telemetry"
    EVENT = "event"
    STATUS = "status"


class TopicError(ValueError):
    """A topic outside the contract; `reason` is the dead-letter reason code."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class Topic:
    root: str
    district: str
    profile: str
    device_id: str
    channel: Channel

    def __str__(self) -> str:
        return f"{self.root}/{self.district}/{self.profile}/{self.device_id}/{self.channel}"


_CHANNELS = {c.value: c for c in Channel}


def parse_topic(topic: str, root: str) -> Topic:
    parts = topic.split("/")
    if len(parts) != 5 or parts[0] != root or not all(parts):
        raise TopicError(
            "bad_topic",
            f"topic {topic!r} is not {root}/<district>/<profile>/<device_id>/<channel>",
        )
    channel = _CHANNELS.get(parts[4])
    if channel is None:
        raise TopicError(
            "unknown_channel",
            f"topic {topic!r}: channel {parts[4]!r} is not telemetry, event or status",
        )
    return Topic(parts[0], parts[1], parts[2], parts[3], channel)


def subscription_filters(root: str, districts: list[str] | tuple[str, ...] = ()) -> list[str]:
    """All districts, or only the given ones when work is split by district."""
    if not districts:
        return [f"{root}/+/+/+/+"]
    return [f"{root}/{district}/+/+/+" for district in districts]
