"""A small built-in publisher of sample readings for `cityvitals demo`.

It stands in for field hardware until the simulators arrive: a dozen devices in
two districts publish canonical JSON readings, occasional events, a device the
registry does not know and, now and then, a malformed payload, so every path
of the ingest is visible in `cityvitals status`.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import orjson
import psycopg
from rich.console import Console
from rich.live import Live

from cityvitals import status as status_view
from cityvitals.app import Platform, endpoints
from cityvitals.settings import Settings
from devices.profile import DeviceProfile, MetricSpec, ProfileSet
from devices.registry import DeviceRecord, read_registry_csv
from devices.registry_store import upsert_devices
from ingest.mqtt import BrokerAddress, make_client

DEMO_REGISTRY = Path(__file__).with_name("demo_devices.csv")


@dataclass
class SamplePublisher:
    """Publishes plausible random-walk values within each metric's physical range."""

    mqtt_url: str
    root: str
    devices: list[DeviceRecord]
    profiles: ProfileSet
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    published: int = 0
    _state: dict[tuple[str, str], float] = field(default_factory=dict)
    _seq: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        address = BrokerAddress.from_url(self.mqtt_url)
        self.client, props = make_client(address, "cityvitals-demo-publisher")
        self.client.connect(address.host, address.port, properties=props)
        self.client.loop_start()
        for d in self.devices:
            self._publish(d, "status", b"online", retain=True)

    def _publish(self, d: DeviceRecord, channel: str, payload: bytes, retain: bool = False) -> None:
        topic = f"{self.root}/{d.district}/{d.profile}/{d.device_id}/{channel}"
        self.client.publish(topic, payload, qos=1, retain=retain)
        self.published += 1

    def _value(self, device_id: str, metric: str, spec: MetricSpec) -> float | str | bool:
        if spec.type == "enum":
            assert spec.values is not None
            return self.rng.choice(list(spec.values))
        if spec.type == "bool":
            return self.rng.random() < 0.05
        lo, hi = spec.range or (0.0, 100.0)
        span = hi - lo
        key = (device_id, metric)
        value = self._state.get(key, lo + span * self.rng.uniform(0.05, 0.2))
        value = min(max(value + self.rng.gauss(0, span * 0.005), lo), lo + span * 0.3)
        self._state[key] = value
        return round(value) if spec.type == "int" else round(value, 3)

    def tick(self, n: int) -> None:
        now = int(datetime.now(UTC).timestamp() * 1000)
        for d in self.devices:
            profile: DeviceProfile = self.profiles[d.profile]
            seq = self._seq[d.device_id] = self._seq.get(d.device_id, 0) + 1
            values = {m: self._value(d.device_id, m, s) for m, s in profile.metrics.items()}
            self._publish(d, "telemetry", orjson.dumps({"ts": now, "seq": seq, "values": values}))
            if profile.events and self.rng.random() < 0.01:
                etype = self.rng.choice(list(profile.events))
                self._publish(d, "event", orjson.dumps({"ts": now, "type": etype}))
        if n % 30 == 7:
            first = self.devices[0]
            self._publish(first, "telemetry", b'{"ts": 1764036000000, "values": {"level_m": ')
        if n % 30 == 19:
            ghost = DeviceRecord("rg-unregistered-01", "rain_gauge", "jingan", "", None, None, {})
            self._publish(ghost, "telemetry", orjson.dumps({"ts": now, "values": {"rain_mm": 0.2}}))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def run_demo(settings: Settings, console: Console, duration: float | None, rate: float) -> None:
    with endpoints(settings) as ends:
        platform = Platform(settings, ends)
        registry = read_registry_csv(DEMO_REGISTRY, platform.profiles)
        with psycopg.connect(ends.database_url) as conn:
            upsert_devices(conn, registry.records)
        platform.start()
        publisher = SamplePublisher(
            ends.mqtt_url, settings.topic_root, registry.records, platform.profiles
        )
        console.print(
            f"demo: {len(registry.records)} devices publishing to {ends.mqtt_url}; "
            f"database {ends.database_url}. Ctrl-C to stop."
        )
        started = time.monotonic()
        n = 0
        try:
            with Live(
                status_view.render(ends.database_url), console=console, refresh_per_second=1
            ) as live:
                while duration is None or time.monotonic() - started < duration:
                    publisher.tick(n)
                    n += 1
                    time.sleep(1.0 / rate)
                    if n % max(int(rate), 1) == 0:
                        live.update(status_view.render(ends.database_url))
        except KeyboardInterrupt:
            pass
        finally:
            publisher.close()
            platform.stop()
        c = platform.ingest.counters
        console.print(
            f"demo stopped: published {publisher.published}, stored {c.readings} readings, "
            f"{c.events} events, {c.dead_letters} dead letters, "
            f"{c.provisional} provisional device(s)"
        )
