"""`cityvitals demo`: the platform with a simulated city playing a scenario.

Starts the platform (local PostgreSQL and Mosquitto unless URLs are set),
generates the scenario's city and imports its registry, then plays the
scenario through the real broker while a live view shows the simulation and
what the ingest stores.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime

import psycopg
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.text import Text

from cityvitals import status as status_view
from cityvitals.app import Platform, endpoints
from cityvitals.settings import Settings
from devices.registry_store import upsert_devices
from simulators.city import generate_city
from simulators.fleet import Fleet, sim_devices
from simulators.publish import MqttPublisher
from simulators.runner import Progress, fleet_stream, play
from simulators.scenario import load_scenario


def run_demo(
    settings: Settings,
    console: Console,
    scenario_name: str,
    speed: float | None,
    duration: float | None,
) -> None:
    scenario = load_scenario(scenario_name)
    factor = speed or scenario.speed
    with endpoints(settings) as ends:
        platform = Platform(settings, ends)
        city = generate_city(scenario.city.districts, scenario.city.devices, scenario.seed)
        with psycopg.connect(ends.database_url) as conn:
            upsert_devices(conn, city.devices)
        fleet = Fleet(
            sim_devices(city.devices, platform.profiles),
            scenario.world(city.districts),
            scenario.start,
            scenario.seed,
            settings.topic_root,
        )
        platform.start()
        publisher = MqttPublisher(ends.mqtt_url, client_prefix="demo")
        console.print(
            f"[bold]{escape(scenario.title)}[/bold]: {len(city.devices)} devices in "
            f"{len(city.districts)} districts, {scenario.duration} of simulated time at "
            f"{factor:g}×. Ctrl-C stops."
        )
        for e in scenario.expect:
            console.print(f"  expect {e.level:<6} {e.domain}: {escape(e.what)}")
        console.print(
            "In another terminal: `cityvitals alerts list`, `cityvitals alerts ack ID --as you`, "
            "`cityvitals notifications list`."
        )
        stop = threading.Event()
        latest: list[Progress] = []
        end = scenario.start + scenario.duration
        player = threading.Thread(
            target=play,
            args=(
                fleet_stream(fleet, end),
                publisher,
                scenario.start,
                factor,
                stop,
                latest.append,
                end,
            ),
            name="simulator",
            daemon=True,
        )
        player.start()
        started = time.monotonic()

        def view() -> Group:
            p = latest[-1] if latest else None
            line = Text("simulated ")
            if p is not None:
                line.append(f"{p.sim_time.astimezone(scenario.start.tzinfo):%Y-%m-%d %H:%M}")
                line.append(f"  published {p.published:,}  ({p.rate:,.0f} msg/s)")
            return Group(line, status_view.render(ends.database_url))

        try:
            with Live(view(), console=console, refresh_per_second=1) as live:
                while player.is_alive():
                    if duration is not None and time.monotonic() - started >= duration:
                        break
                    player.join(1.0)
                    live.update(view())
        except KeyboardInterrupt:
            pass
        finally:
            stop.set()
            player.join(10)
            publisher.close()
            time.sleep(settings.flush_interval * 2)
            platform.stop()
        c = platform.ingest.counters
        reached: datetime = latest[-1].sim_time if latest else scenario.start
        console.print(
            f"demo stopped at simulated "
            f"{reached.astimezone(scenario.start.tzinfo):%Y-%m-%d %H:%M}: "
            f"published {publisher.stats.published:,}, stored {c.readings:,} readings, "
            f"{c.events:,} events, {c.dead_letters:,} dead letters. Data stays in "
            f"{escape(str(settings.data_dir))}; `cityvitals status` shows it while "
            "`cityvitals run` is up."
        )
