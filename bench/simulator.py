"""Simulator throughput: messages per second from one simulator process to Mosquitto.

Three figures, each over the same simulated city and period:

- generate: the fleet's models stepping and encoding messages, nothing sent;
- publish: pre-generated messages published at QoS 1 until every PUBACK is in;
- end to end: generating and publishing together, as `cityvitals simulate` runs.

Target (simulators issue): at least 20,000 messages/s to Mosquitto from one
process, so the simulator never limits the ingest benchmarks.

Each fleet is built (profiles read, models made) before its clock starts: that
is a one-off cost of a run, shown on its own line. Beside messages/s, the table
shows the CPU this process spent per message and the broker's share of a core,
which tell a slow machine from a slow simulator when other work shares the
cores. On a busy machine use `--repeat` (best of N).

    .venv/bin/python -m bench.simulator [--devices 2000] [--minutes 20] [--repeat 3]
                                        [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.ingest import machine_info
from cityvitals.services import LocalMosquitto
from devices.profile import ProfileSet, load_profiles
from simulators.city import generate_city
from simulators.fleet import Fleet, sim_devices
from simulators.model import WireMessage
from simulators.publish import MqttPublisher
from simulators.runner import fleet_stream, play
from simulators.world import World

TARGET = 20_000
START = datetime(2026, 11, 25, 0, 0, tzinfo=UTC)
_TICK = os.sysconf("SC_CLK_TCK")


def make_fleet(devices: int, seed: int, profiles: ProfileSet | None = None) -> Fleet:
    city = generate_city(max(1, devices // 250), devices, seed)
    return Fleet(
        sim_devices(city.devices, profiles or load_profiles()),
        World(tuple(city.districts)),
        START,
        seed,
    )


def _cpu_seconds(pid: int | None) -> float:
    """CPU time (user + system) of process `pid` so far; 0 when unknown."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


class _Meter:
    """Wall time, this process's CPU time and the broker's CPU time over a section."""

    def __init__(self, broker_pid: int | None = None) -> None:
        self.broker_pid = broker_pid

    def __enter__(self) -> _Meter:
        self._wall = time.perf_counter()
        self._cpu = time.process_time()
        self._broker = _cpu_seconds(self.broker_pid)
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu
        self.broker = _cpu_seconds(self.broker_pid) - self._broker

    def figures(self, messages: int) -> dict[str, float]:
        return {
            "msg_s": messages / self.wall,
            "cpu_us_per_msg": 1e6 * self.cpu / messages,
            "broker_cores": self.broker / self.wall,
            "wall_s": self.wall,
        }


def _best(repeat: int, run: Callable[[], dict[str, float]]) -> dict[str, float]:
    results = [run() for _ in range(repeat)]
    return max(results, key=lambda r: r["msg_s"])


def run(
    devices: int, minutes: int, seed: int, mqtt_url: str | None, repeat: int = 1
) -> dict[str, Any]:
    end = START + timedelta(minutes=minutes)
    profiles = load_profiles()
    results: dict[str, Any] = {"devices": devices, "simulated_minutes": minutes}

    t = time.perf_counter()
    make_fleet(devices, seed, profiles)
    results["build_s"] = time.perf_counter() - t

    messages: list[WireMessage] = []

    def generate() -> dict[str, float]:
        fleet = make_fleet(devices, seed, profiles)
        with _Meter() as meter:
            out = list(fleet_stream(fleet, end))
        messages[:] = out
        return meter.figures(len(out))

    results["generate"] = _best(repeat, generate)
    results["messages"] = len(messages)

    with tempfile.TemporaryDirectory() as tmp:
        broker = None
        broker_pid = None
        if mqtt_url is None:
            broker = LocalMosquitto(Path(tmp) / "mosquitto")
            broker.start()
            mqtt_url = broker.url
            broker_pid = broker._process.pid if broker._process is not None else None
        try:

            def publish() -> dict[str, float]:
                assert mqtt_url is not None
                publisher = MqttPublisher(mqtt_url, client_prefix="bench")
                with _Meter(broker_pid) as meter:
                    play(iter(messages), publisher, START, None, threading.Event())
                    done = publisher.wait_acknowledged(120)
                assert done, "the broker did not acknowledge everything"
                publisher.close()
                assert publisher.stats.acknowledged == len(messages)
                return meter.figures(len(messages))

            def end_to_end() -> dict[str, float]:
                assert mqtt_url is not None
                fleet = make_fleet(devices, seed, profiles)
                publisher = MqttPublisher(mqtt_url, client_prefix="bench")
                with _Meter(broker_pid) as meter:
                    play(fleet_stream(fleet, end), publisher, START, None, threading.Event())
                    done = publisher.wait_acknowledged(120)
                assert done, "the broker did not acknowledge everything"
                publisher.close()
                assert publisher.stats.acknowledged == publisher.stats.published == len(messages)
                return meter.figures(publisher.stats.published)

            results["publish"] = _best(repeat, publish)
            results["end_to_end"] = _best(repeat, end_to_end)
        finally:
            if broker is not None:
                broker.stop()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--minutes", type=int, default=30, help="simulated minutes")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=1, help="best of N runs of each figure")
    parser.add_argument("--mqtt-url", help="an existing broker (default: a local Mosquitto)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    machine = machine_info()
    results = run(args.devices, args.minutes, args.seed, args.mqtt_url, max(1, args.repeat))
    load_after = os.getloadavg()
    print(
        "CityVitals simulator throughput (load average before the run: "
        f"{machine['load_average'][0]:.2f}, after: {load_after[0]:.2f})"
    )
    for key, value in machine.items():
        print(f"  {key:<18} {value}")
    print(
        f"  {'fleet':<18} {results['devices']:,} devices, {results['simulated_minutes']} "
        f"simulated minutes, {results['messages']:,} messages; built in "
        f"{results['build_s']:.2f} s (not timed below)"
    )
    print(f"  {'':<18} {'msg/s':>10} {'CPU µs/msg':>11} {'broker cores':>13}")
    for key, label in (
        ("generate", "generate only"),
        ("publish", "publish only"),
        ("end_to_end", "generate + publish"),
    ):
        r = results[key]
        broker = f"{r['broker_cores']:>13.2f}" if key != "generate" else f"{'':>13}"
        print(f"  {label:<18} {r['msg_s']:>10,.0f} {r['cpu_us_per_msg']:>11.1f} {broker}")
    verdict = "PASS" if results["end_to_end"]["msg_s"] >= TARGET else "FAIL"
    print(f"  target             ≥ {TARGET:,} msg/s end to end: {verdict}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {"machine": machine, "load_average_after": load_after, **results},
                indent=2,
                default=str,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
