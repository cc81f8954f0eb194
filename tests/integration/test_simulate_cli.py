"""`cityvitals simulate city|scenario|replay` against the real broker, ingest and database.

Each command runs in-process through typer's CliRunner while the harness's
ingest service listens on the test's own topic root; the fleet is
deterministic, so where the command takes a start time the test replays the
same fleet offline to know exactly what must land.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from cityvitals.cli import app
from cityvitals.services import LocalMosquitto
from devices import load_profiles
from devices.registry import read_registry_csv
from ingest.decode import MessageDecoder
from simulators.city import generate_city
from simulators.faults import FaultInjector, FaultSpec
from simulators.fleet import Fleet, sim_devices
from simulators.model import WireMessage
from simulators.runner import fleet_stream
from simulators.scenario import load_scenario
from simulators.world import World
from tests.conftest import RunningIngest
from tests.support import rows, scalar, wait_until

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "simulators" / "datasets" / "sample_replay.csv"
DEMO_REGISTRY = REPO / "cityvitals" / "demo_devices.csv"
PROFILES = load_profiles()
CST = timezone(timedelta(hours=8))

Simulate = Callable[..., Result]


@pytest.fixture
def simulate(
    database: str,
    broker: LocalMosquitto,
    topic_root: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Simulate:
    """`cityvitals simulate …` with the harness's broker, database and topic root."""
    monkeypatch.chdir(tmp_path)  # no stray .env or cityvitals.toml
    for name in list(os.environ):
        if name.startswith("CITYVITALS_"):
            monkeypatch.delenv(name)
    env = {
        "CITYVITALS_MQTT_URL": broker.url,
        "CITYVITALS_DATABASE_URL": database,
        "CITYVITALS_TOPIC_ROOT": topic_root,
        "CITYVITALS_DATA_DIR": str(tmp_path),
        "COLUMNS": "300",  # rich wraps tables and messages at the terminal width
    }

    def invoke(*args: str) -> Result:
        return CliRunner().invoke(app, ["simulate", *args], env=env)

    return invoke


def one_line(text: str) -> str:
    """Output without rich's line breaks and panel borders."""
    return " ".join(text.replace("│", " ").split())


def summary(output: str) -> dict[str, str]:
    """The rows of the printed 'Simulation finished' table."""
    found = {}
    for line in output.splitlines():
        cells = [c.strip() for c in re.split(r"\s{2,}|│", line.strip()) if c.strip()]
        if len(cells) >= 2:
            found[cells[0]] = " ".join(cells[1:])
    return found


def number(text: str) -> int:
    match = re.match(r"\d{1,3}(?:,\d{3})*", text)
    assert match, text
    return int(match.group().replace(",", ""))


def drained(ingest: RunningIngest, messages: int, timeout: float = 60) -> None:
    wait_until(
        lambda: ingest.service.counters.messages >= messages,
        timeout=timeout,
        what=f"the ingest to take {messages} messages",
    )
    wait_until(
        lambda: ingest.service.backlog == 0 and ingest.service._receiver.queued == 0,
        what="ingest drained",
    )


def expected_from(messages: list[WireMessage], root: str) -> dict[str, int]:
    """Readings, events and dead letters the ingest makes of a stream (decoded offline)."""
    decoder = MessageDecoder(PROFILES, {}, root=root)
    readings: set[tuple[str, str, datetime]] = set()
    counts = {"events": 0, "dead_letters": 0}
    received = datetime.now(UTC)
    for m in messages:
        decoded = decoder.decode(m.topic, m.payload, received)
        readings |= {(r.device_id, r.metric, r.ts) for r in decoded.readings}
        counts["events"] += len(decoded.events)
        counts["dead_letters"] += decoded.dead_letter is not None
    return {"readings": len(readings), "messages": len(messages), **counts}


# --- simulate city ---------------------------------------------------------------------


CITY = ("city", "--districts", "2", "--devices", "20", "--duration", "10m", "--speed", "max")


def test_city_writes_imports_and_lands_its_registry_and_readings(
    simulate: Simulate, database: str, tmp_path: Path, ingest: RunningIngest
) -> None:
    result = simulate(*CITY, "--seed", "3")
    assert result.exit_code == 0, result.output
    out = one_line(result.output)

    registry = tmp_path / "city.csv"
    assert f"city: 2 districts, 20 devices → {registry}" in out
    imported = read_registry_csv(registry, PROFILES)
    assert imported.problems == [] and len(imported.records) == 20
    generated = generate_city(2, 20, 3).devices
    assert [(r.device_id, r.profile, r.district, r.lat, r.lon) for r in imported.records] == [
        (r.device_id, r.profile, r.district, r.lat, r.lon) for r in generated
    ]
    assert "registry imported: 20 added, 0 updated" in out
    assert scalar(database, "SELECT count(*) FROM devices WHERE NOT provisional") == 20
    assert {r[0] for r in rows(database, "SELECT device_id FROM devices")} == {
        r.device_id for r in imported.records
    }

    table = summary(result.output)
    assert "Simulation finished" in out
    assert number(table["devices"]) == 20
    sent = number(table["messages"])
    by_channel = dict(
        re.findall(r"(event|status|telemetry) (\d{1,3}(?:,\d{3})*)", table["messages"])
    )
    assert int(by_channel["status"]) == 40, "online and offline for every device"
    assert sent == sum(int(v.replace(",", "")) for v in by_channel.values())
    assert table["faults injected"] == "none"

    drained(ingest, sent)
    assert scalar(database, "SELECT count(*) FROM devices") == 20, "nothing provisional"
    assert scalar(database, "SELECT count(*) FROM readings") > 0
    assert scalar(database, "SELECT count(*) FROM dead_letters") == 0
    reporting = scalar(database, "SELECT count(DISTINCT device_id) FROM readings")
    assert reporting >= 20 - sum(r.profile == "drainage" for r in imported.records)
    assert scalar(database, "SELECT count(*) FROM device_status WHERE state = 'offline'") == 20


def test_city_with_a_start_lands_exactly_what_the_fleet_sends(
    simulate: Simulate, database: str, topic_root: str, ingest: RunningIngest
) -> None:
    start = (datetime.now(UTC) - timedelta(minutes=20)).replace(microsecond=0)
    result = simulate(*CITY, "--seed", "3", "--start", start.isoformat())
    assert result.exit_code == 0, result.output

    city = generate_city(2, 20, 3)
    fleet = Fleet(
        sim_devices(city.devices, PROFILES), World(tuple(city.districts)), start, 3, topic_root
    )
    expected = expected_from(list(fleet_stream(fleet, start + timedelta(minutes=10))), topic_root)
    assert number(summary(result.output)["messages"]) == expected["messages"]

    drained(ingest, expected["messages"])
    assert scalar(database, "SELECT count(*) FROM readings") == expected["readings"]
    assert scalar(database, "SELECT count(*) FROM events") == expected["events"]
    assert scalar(database, "SELECT count(*) FROM readings WHERE quality <> 0") == 0
    low, high = rows(database, "SELECT min(ts), max(ts) FROM readings")[0]
    assert start <= low and high <= start + timedelta(minutes=10)


def test_city_with_malformed_faults_leaves_dead_letters(
    simulate: Simulate, database: str, ingest: RunningIngest
) -> None:
    result = simulate(*CITY, "--seed", "3", "--fault", "malformed:0.2")
    assert result.exit_code == 0, result.output
    table = summary(result.output)
    match = re.fullmatch(r"malformed (\S+)", table["faults injected"])
    assert match, table["faults injected"]
    malformed = number(match.group(1))
    assert malformed > 0

    drained(ingest, number(table["messages"]))
    dead = scalar(database, "SELECT count(*) FROM dead_letters")
    assert dead == malformed, "each malformed payload is dead-lettered once"
    assert scalar(database, "SELECT count(*) FROM readings") > 0
    reasons = {r[0] for r in rows(database, "SELECT DISTINCT reason FROM dead_letters")}
    assert reasons <= {
        "malformed_payload",
        "wrong_type",
        "bad_encoding",
        "unknown_metric",
        "bad_timestamp",
        "bad_structure",
    }


def test_a_bad_fault_spec_is_refused_naming_it(simulate: Simulate) -> None:
    result = simulate(*CITY, "--fault", "nonsense:2")
    assert result.exit_code != 0
    out = one_line(result.output)
    assert "nonsense:2" in out and "unknown fault kind 'nonsense'" in out
    assert "Traceback" not in result.output


def test_a_bad_fault_spec_changes_nothing(simulate: Simulate, database: str) -> None:
    result = simulate(*CITY, "--fault", "nonsense:2")
    assert result.exit_code != 0
    assert scalar(database, "SELECT count(*) FROM devices") == 0


# --- simulate scenario -------------------------------------------------------------------------


def tiny_scenario(path: Path, start: datetime) -> Path:
    path.write_text(
        f"""\
title: A squall over a small town
start: {start.isoformat()}
duration: 20m
speed: 60
seed: 5
city: {{districts: 1, devices: 10}}
timeline:
  - at: 0m
    storm: {{peak_mm_h: 40, duration: 20m, radius_km: 20, start_at: west, end_at: east}}
  - at: 5m
    faults:
      - {{kind: duplicate, rate: 0.5, duration: 10m}}
expect:
  - {{domain: meteorology, level: blue, what: heavy shower, after: 0m, before: 20m}}
""",
        encoding="utf-8",
    )
    return path


def test_a_scenario_file_runs_and_lands(
    simulate: Simulate, database: str, topic_root: str, tmp_path: Path, ingest: RunningIngest
) -> None:
    start = (datetime.now(CST) - timedelta(hours=1)).replace(second=0, microsecond=0)
    path = tiny_scenario(tmp_path / "squall.yaml", start)
    result = simulate("scenario", str(path), "--speed", "max")
    assert result.exit_code == 0, result.output
    out = one_line(result.output)
    assert "scenario squall: A squall over a small town — 10 devices" in out
    assert "expect blue meteorology: heavy shower" in out
    assert (tmp_path / "squall.csv").is_file()
    assert scalar(database, "SELECT count(*) FROM devices WHERE NOT provisional") == 10

    # The same scenario offline: city, world and faults as the command builds them.
    sc = load_scenario(path)
    city = generate_city(1, 10, 5)
    faults = [FaultSpec.from_entry(e, sc.start + at) for at, e in sc.faults()]
    injector = FaultInjector(faults, 5, PROFILES, registry_ids={d.device_id for d in city.devices})
    fleet = Fleet(
        sim_devices(city.devices, PROFILES),
        sc.world(city.districts),
        sc.start,
        5,
        topic_root,
        injector,
    )
    messages = list(fleet_stream(fleet, sc.start + sc.duration))
    expected = expected_from(messages, topic_root)
    assert injector.counts["duplicate"] > 0
    table = summary(result.output)
    assert number(table["messages"]) == expected["messages"]
    assert table["faults injected"] == f"duplicate {injector.counts['duplicate']}"

    drained(ingest, expected["messages"])
    assert scalar(database, "SELECT count(*) FROM readings") == expected["readings"]
    assert scalar(database, "SELECT count(*) FROM events") == expected["events"]
    rain = scalar(
        database,
        "SELECT sum(value) FROM readings WHERE metric = 'rain_mm' AND device_id LIKE 'rg-%%'",
    )
    assert rain is not None and rain > 1, "the squall rained on the gauge"


def test_an_invalid_scenario_file_exits_1_naming_the_field(
    simulate: Simulate, database: str, tmp_path: Path
) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(
        "title: Broken\nstart: 2026-07-20T12:00:00+08:00\nduration: until dawn\n",
        encoding="utf-8",
    )
    result = simulate("scenario", str(path), "--speed", "max")
    assert result.exit_code == 1, result.output
    out = one_line(result.output)
    assert f"error: {path}: invalid scenario" in out
    assert "duration: 'until dawn' is not a duration" in out
    assert scalar(database, "SELECT count(*) FROM devices") == 0


def test_an_unknown_shipped_scenario_lists_the_shipped_ones(simulate: Simulate) -> None:
    result = simulate("scenario", "hurricane", "--speed", "max")
    assert result.exit_code == 1, result.output
    out = one_line(result.output)
    assert "no scenario file 'hurricane'" in out
    for name in ("entrapment", "pollution", "quiet_day", "typhoon"):
        assert name in out


def test_a_scenario_with_an_unknown_fault_kind_exits_1_naming_it(
    simulate: Simulate, database: str, tmp_path: Path
) -> None:
    path = tmp_path / "meltdown.yaml"
    path.write_text(
        "title: T\nstart: 2026-07-20T12:00:00+08:00\nduration: 10m\n"
        "city: {districts: 1, devices: 6}\n"
        "timeline:\n  - at: 1m\n    faults: [{kind: meltdown, rate: 0.1}]\n",
        encoding="utf-8",
    )
    result = simulate("scenario", str(path), "--speed", "max")
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 1
    out = one_line(result.output)
    assert str(path) in out and "meltdown" in out
    assert scalar(database, "SELECT count(*) FROM devices") == 0


# --- simulate replay -------------------------------------------------------------------------


def test_replay_of_the_shipped_sample_lands_every_reading(
    simulate: Simulate, database: str, ingest: RunningIngest
) -> None:
    with SAMPLE.open(encoding="utf-8", newline="") as stream:
        sample = [row for row in csv.DictReader(stream) if row["value"].strip()]
    result = simulate("replay", str(SAMPLE), "--registry", str(DEMO_REGISTRY), "--speed", "max")
    assert result.exit_code == 0, result.output
    out = one_line(result.output)
    demo = read_registry_csv(DEMO_REGISTRY, PROFILES).records
    assert f"registry imported: {len(demo)} added, 0 updated" in out
    match = re.search(r"replayed (\S+) messages from ", out)
    assert match, out
    published = number(match.group(1))
    assert 0 < published <= len(sample)

    drained(ingest, published)
    assert scalar(database, "SELECT count(*) FROM readings") == len(sample)
    stored = {
        (device, metric, ts)
        for device, metric, ts in rows(database, "SELECT device_id, metric, ts FROM readings")
    }
    assert stored == {(r["device"], r["metric"], datetime.fromisoformat(r["ts"])) for r in sample}
    assert scalar(database, "SELECT count(*) FROM devices WHERE provisional") == 0
    assert scalar(database, "SELECT count(*) FROM dead_letters") == 0


def test_a_bad_start_is_a_usage_error(simulate: Simulate) -> None:
    result = simulate(*CITY, "--start", "tomorrow")
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 2
    assert "--start" in one_line(result.output)


def test_a_start_without_offset_is_refused(simulate: Simulate) -> None:
    result = simulate(*CITY, "--start", "2026-07-20T12:00:00")
    assert result.exit_code == 2, result.output
    assert "--start needs a UTC offset" in one_line(result.output)
