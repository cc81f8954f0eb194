"""Simulator throughput: messages per second from one simulator process to Mosquitto.

Three figures, each over the same simulated city and hour:

- generate: the fleet's models stepping and encoding messages, nothing sent;
- publish: pre-generated messages published at QoS 1 until every PUBACK is in;
- end to end: generating and publishing together, as `cityvitals simulate` runs.

Target (simulators issue): at least 20,000 messages/s to Mosquitto from one
process, so the simulator never limits the ingest benchmarks.

    .venv/bin/python bench/simulator.py [--devices 2000] [--minutes 60] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.ingest import machine_info
from cityvitals.services import LocalMosquitto
from devices.profile import load_profiles
from simulators.city import generate_city
from simulators.fleet import Fleet, sim_devices
from simulators.model import WireMessage
from simulators.publish import MqttPublisher
from simulators.runner import fleet_stream, play
from simulators.world import World

TARGET = 20_000
START = datetime(2026, 11, 25, 0, 0, tzinfo=UTC)


def make_fleet(devices: int, seed: int) -> Fleet:
    city = generate_city(max(1, devices // 250), devices, seed)
    return Fleet(
        sim_devices(city.devices, load_profiles()), World(tuple(city.districts)), START, seed
    )


def run(devices: int, minutes: int, seed: int, mqtt_url: str | None) -> dict[str, Any]:
    end = START + timedelta(minutes=minutes)
    results: dict[str, Any] = {"devices": devices, "simulated_minutes": minutes}

    t = time.perf_counter()
    messages: list[WireMessage] = list(fleet_stream(make_fleet(devices, seed), end))
    gen = time.perf_counter() - t
    results["messages"] = len(messages)
    results["generate_msg_s"] = len(messages) / gen

    with tempfile.TemporaryDirectory() as tmp:
        broker = None
        if mqtt_url is None:
            broker = LocalMosquitto(Path(tmp) / "mosquitto")
            broker.start()
            mqtt_url = broker.url
        try:
            publisher = MqttPublisher(mqtt_url, client_prefix="bench")
            t = time.perf_counter()
            play(iter(messages), publisher, START, None, threading.Event())
            assert publisher.wait_acknowledged(120), "the broker did not acknowledge everything"
            pub = time.perf_counter() - t
            publisher.close()
            results["publish_msg_s"] = len(messages) / pub

            publisher = MqttPublisher(mqtt_url, client_prefix="bench")
            t = time.perf_counter()
            play(
                fleet_stream(make_fleet(devices, seed), end),
                publisher,
                START,
                None,
                threading.Event(),
            )
            assert publisher.wait_acknowledged(120), "the broker did not acknowledge everything"
            both = time.perf_counter() - t
            results["end_to_end_msg_s"] = publisher.stats.published / both
            publisher.close()
        finally:
            if broker is not None:
                broker.stop()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--minutes", type=int, default=30, help="simulated minutes")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--mqtt-url", help="an existing broker (default: a local Mosquitto)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    machine = machine_info()
    results = run(args.devices, args.minutes, args.seed, args.mqtt_url)
    print(
        "CityVitals simulator throughput (load average before the run: "
        f"{machine['load_average'][0]:.2f})"
    )
    for key, value in machine.items():
        print(f"  {key:<18} {value}")
    print(
        f"  {'fleet':<18} {results['devices']:,} devices, {results['simulated_minutes']} "
        f"simulated minutes, {results['messages']:,} messages"
    )
    for key, label in (
        ("generate_msg_s", "generate only"),
        ("publish_msg_s", "publish only"),
        ("end_to_end_msg_s", "generate + publish"),
    ):
        print(f"  {label:<18} {results[key]:>10,.0f} msg/s")
    verdict = "PASS" if results["end_to_end_msg_s"] >= TARGET else "FAIL"
    print(f"  target             ≥ {TARGET:,} msg/s end to end: {verdict}")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, **results}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
