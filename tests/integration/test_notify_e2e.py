"""End to end: a typhoon's alerts reach the right teams' webhooks, grouped.

The scenario's water devices are played through the ingest's decoder and the
rule engine (as tests/integration/test_scenario_alerts.py does, for seven hours
of the storm); the alert transitions are stored minute by minute as the rule
runtime stores them, and the notifier steps along in the data's time. Every team
of the shipped routing file gets a webhook on a real loopback server; a real
sender delivers the outbox. A second test runs the whole platform — MQTT ingest,
rule engine, notifier and sender — on a few river gauges.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from psycopg.types.json import Jsonb

from alerts.channels.registry import ChannelSet
from alerts.links import verify
from alerts.model import ConditionState, Level
from alerts.notifier import Notifier, NotifierConfig
from alerts.outbox import RetryPolicy, Sender
from alerts.render import Renderer
from alerts.route import DEFAULT_ROUTING_FILE, load_routing
from alerts.store import record_transitions
from cityvitals.app import Endpoints, Platform
from cityvitals.services import LocalMosquitto
from cityvitals.settings import Settings
from tests.integration.test_scenario_alerts import WATER, play
from tests.receivers import WebhookReceiver
from tests.support import Publisher, rows, wait_until

pytestmark = pytest.mark.slow

SECRET = "e2e-webhook-secret"
LINK_SECRET = b"e2e-link-secret-0123456789"


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver(SECRET.encode()).start()
    yield receiver
    receiver.stop()


def routing_with_webhooks(path: Path, url: str, **route_changes: Any) -> Path:
    """The shipped routing file, every team's channels replaced by one webhook."""
    doc = yaml.safe_load(DEFAULT_ROUTING_FILE.read_text())
    for team in doc["teams"].values():
        team["channels"] = [{"type": "webhook", "url": url, "secret": SECRET}]
    for route in doc["route"]["routes"]:
        route.update(route_changes.get(route.get("name"), {}))
    path.write_text(yaml.safe_dump(doc, allow_unicode=True))
    return path


def test_typhoon_alerts_reach_the_right_teams_grouped(
    database: str, webhook: WebhookReceiver, tmp_path: Path
) -> None:
    transitions, _ = play("typhoon", WATER, (timedelta(hours=8), timedelta(hours=15)))
    fired = [t for t in transitions if t.state is ConditionState.FIRING]
    assert len(fired) > 100

    path = routing_with_webhooks(tmp_path / "routing.yaml", webhook.url)
    routing = load_routing(path)
    clock = {"now": transitions[0].at}
    notifier = Notifier(
        database,
        NotifierConfig(routing, Renderer("https://cv.example", LINK_SECRET), gap_wait=timedelta(0)),
        clock=lambda: clock["now"],
    )
    by_minute: dict[datetime, list[Any]] = defaultdict(list)
    for t in transitions:
        by_minute[t.at.replace(second=0, microsecond=0)].append(t)
    start = min(by_minute)
    end = max(by_minute) + timedelta(minutes=30)
    with psycopg.connect(database) as conn:
        minute = start
        while minute <= end:
            if minute in by_minute:
                record_transitions(conn, by_minute[minute])
            clock["now"] = minute + timedelta(seconds=59)
            notifier.step()
            minute += timedelta(minutes=1)
    assert notifier._conn is not None
    notifier._conn.close()

    sender = Sender(database, ChannelSet(routing), RetryPolicy(max_attempts=3))
    assert sender.drain(60)
    sender.stop()
    assert dict(rows(database, "SELECT status, count(*) FROM notifications GROUP BY 1")) == {
        "sent": len(webhook.deliveries)
    }
    keys = webhook.keys()
    assert max(keys.values()) == 1
    docs = webhook.documents()
    assert all(d.signed for d in webhook.deliveries)

    # Each team receives only its domains.
    teams_domains: dict[str, set[str]] = defaultdict(set)
    for d in docs:
        teams_domains[d["team"]] |= {a["domain"] for a in d["alerts"]}
    assert teams_domains["drainage"] == {"drainage"}
    assert teams_domains["flood-control"] <= {"hydrology", "meteorology"}
    assert "hydrology" in teams_domains["flood-control"]
    assert set(teams_domains) <= {"drainage", "flood-control", "duty-officer", "supervisor"}

    # Drainage: one group per district, one message per group update — not one per device.
    drainage = [d for d in docs if d["team"] == "drainage"]
    drainage_changes = [
        t for t in transitions if t.domain == "drainage" and t.state is not ConditionState.PENDING
    ]
    groups = {d["group"]["id"] for d in drainage}
    districts = {d["group"]["labels"]["district"] for d in drainage}
    assert len(groups) >= len(districts) >= 2
    for d in drainage:
        assert {a["district"] for a in d["alerts"]} == {d["group"]["labels"]["district"]}
    # (Seven hours of storm: 109 messages for 295 changes of drainage alerts, the largest
    # listing 111 alerts, when this was written.)
    assert len(drainage) * 2 < len(drainage_changes), (len(drainage), len(drainage_changes))
    biggest = max(d["firing"] for d in drainage)
    assert biggest >= 20  # a storm in one district is one message listing many alerts
    # Updates come no faster than the route's group_interval (5 min in data time).
    sent_at = defaultdict(list)
    for key, at in rows(
        database,
        "SELECT idempotency_key, created_at FROM notifications WHERE team = 'drainage' ORDER BY id",
    ):
        sent_at[key.split(".")[1]].append(at)  # g.<group id>.<seq>.<team>.<channel>
    for times in sent_at.values():
        assert all(b - a >= timedelta(minutes=5) for a, b in itertools.pairwise(times))

    # Every red alert also reached the duty officer, grouped by district.
    red = {t.fingerprint for t in fired if t.level is Level.RED}
    if red:
        duty = [d for d in docs if d["team"] == "duty-officer" and d["kind"] != "escalation"]
        assert duty and all(
            a["level"]["value"] == 4 or not a["firing"] for d in duty for a in d["alerts"]
        )

    # Nobody acknowledged: red and orange alerts escalated to the duty officer.
    escalations = [d for d in docs if d["kind"] == "escalation"]
    assert escalations and {d["team"] for d in escalations} <= {"duty-officer", "supervisor"}

    # Resolved notices went out; ack links in firing messages verify at send time.
    assert any(d["resolved"] for d in drainage)
    link = next(a["ack_url"] for d in drainage for a in d["alerts"] if a["ack_url"])
    token = link.removeprefix("https://cv.example/ack/")
    assert verify(token, LINK_SECRET, start).action == "ack"

    # The alerts' owning team is the route's team.
    owners = Counter(
        (domain, team) for domain, team in rows(database, "SELECT domain, team FROM alerts")
    )
    assert {team for (domain, team) in owners if domain == "drainage"} == {"drainage"}
    assert {team for (domain, team) in owners if domain == "hydrology"} == {"flood-control"}


T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
GAUGE = {
    "warning_level_m": 4.5,
    "guaranteed_level_m": 5.2,
    "historical_max_m": 6.0,
    "approach_margin_m": 0.3,
}


def test_platform_ingest_rules_notifier_sender(
    database: str,
    broker: LocalMosquitto,
    topic_root: str,
    webhook: WebhookReceiver,
    tmp_path: Path,
) -> None:
    gauges = [(f"wl-{i}", "d01" if i < 4 else "d02") for i in range(6)]
    with psycopg.connect(database) as conn:
        for device_id, district in gauges:
            conn.execute(
                "INSERT INTO devices (device_id, profile, district, name, lat, lon, attributes) "
                "VALUES (%s, 'water_level', %s, %s, 22.5, 114.0, %s)",
                (device_id, district, f"Gauge {device_id}", Jsonb(GAUGE)),
            )
    path = routing_with_webhooks(
        tmp_path / "routing.yaml",
        webhook.url,
        flood={"group_wait": "2s", "group_interval": "2s"},
        **{"red-to-duty-officer": {"group_wait": "2s"}},
    )
    settings = Settings(
        database_url=database,
        mqtt_url=broker.url,
        topic_root=topic_root,
        client_id=f"ingest-{topic_root}",
        flush_interval=0.02,
        rules_tick=0.2,
        vitals_interval=5,
        registry_refresh=1.0,
        stats_interval=1.0,
        routing_file=path,
        notify_poll_interval=0.2,
        sender_poll_interval=0.2,
        public_url="https://cv.example",
        link_secret=LINK_SECRET.decode(),
    )
    platform = Platform(settings, Endpoints(database, broker.url, False))
    platform.start()
    pub = Publisher(broker.url)
    try:
        assert platform.rules is not None and platform.rules.ready.wait(20)
        wait_until(lambda: platform.ingest._receiver.subscribed.is_set(), what="subscribed")
        for minute in range(0, 40, 5):
            for device_id, district in gauges:
                level = 3.0 if minute < 10 else 4.8  # above the warning level from 10 min
                pub.send(
                    f"{topic_root}/{district}/water_level/{device_id}/telemetry",
                    {
                        "ts": (T0 + timedelta(minutes=minute)).isoformat(),
                        "values": {"level_m": level},
                    },
                )
        pub.flush()
        wait_until(
            lambda: (
                {
                    d["group"]["labels"].get("district")
                    for d in webhook.documents()
                    if d["team"] == "flood-control"
                }
                == {"d01", "d02"}
            ),
            timeout=30,
            what="flood-control messages for both districts",
        )
    finally:
        pub.close()
        platform.stop()
    flood = [d for d in webhook.documents() if d["team"] == "flood-control"]
    # One message per district group, listing its gauges — not one per gauge.
    firsts = {d["group"]["labels"]["district"]: d for d in flood if d["group"]["seq"] == 1}
    assert {a["device_id"] for a in firsts["d01"]["alerts"]} == {"wl-0", "wl-1", "wl-2", "wl-3"}
    assert {a["device_id"] for a in firsts["d02"]["alerts"]} == {"wl-4", "wl-5"}
    assert all(a["ack_url"] for a in firsts["d01"]["alerts"])
    assert "Gauge wl-0" in firsts["d01"]["text"] and "22.50000" in firsts["d01"]["text"]
    assert rows(database, "SELECT DISTINCT team FROM alerts") == [("flood-control",)]
