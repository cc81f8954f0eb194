"""A scenario's city played offline, as the platform would see it (without the wire)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta

from devices.model import DeviceEvent, Reading
from devices.profile import ProfileSet
from devices.registry import DeviceRecord
from ingest.decode import MessageDecoder
from rules.engine import DeviceInfo
from simulators.fleet import Fleet, sim_devices
from simulators.runner import fleet_stream
from simulators.scenario import Scenario
from simulators.world import District


def device_infos(records: Iterable[DeviceRecord], profiles: ProfileSet) -> list[DeviceInfo]:
    """Registry records as the engine takes them, attributes converted by their profile."""
    return [
        DeviceInfo(
            r.device_id,
            profiles[r.profile],
            r.district,
            r.name,
            profiles[r.profile].device_attributes(r.attributes)[0],
        )
        for r in records
    ]


def minutes(
    sc: Scenario,
    districts: list[District],
    records: list[DeviceRecord],
    profiles: ProfileSet,
    start: datetime,
    end: datetime,
) -> Iterator[tuple[datetime | None, list[Reading], list[DeviceEvent]]]:
    """The fleet of `records` from `start` to `end`, decoded as the ingest decodes it, a
    minute at a time: (the minute's end, its readings, its events); the last, partial
    minute comes with None. Every message must decode."""
    fleet = Fleet(sim_devices(records, profiles), sc.world(districts), start, sc.seed)
    decoder = MessageDecoder(
        profiles, {r.device_id: r.profile for r in records}, future_tolerance=timedelta(days=3650)
    )
    readings: list[Reading] = []
    events: list[DeviceEvent] = []
    flush_at = start + timedelta(minutes=1)
    for msg in fleet_stream(fleet, end):
        if msg.t >= flush_at:
            yield flush_at, readings, events
            readings, events = [], []
            flush_at = msg.t + timedelta(minutes=1)
        d = decoder.decode(msg.topic, msg.payload, msg.t)
        assert d.dead_letter is None, d.dead_letter
        readings += d.readings
        events += d.events
    yield None, readings, events
