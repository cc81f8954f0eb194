"""The notifier against a real PostgreSQL, with a fake clock: routing (alerts.team),
silences, grouping, escalation, dispatch, and a restart that sends nothing twice."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from alerts.model import AlertTransition, ConditionState, Level
from alerts.notifier import Notifier, NotifierConfig
from alerts.render import Renderer
from alerts.route import load_routing
from alerts.silence import Matcher, Silence, add_silence
from alerts.store import record_transitions
from tests.support import rows, scalar

T0 = datetime(2026, 7, 20, 6, 0, tzinfo=UTC)
SECRET = b"link-secret-for-the-tests-0123456"


def routing_file(tmp_path: Path, topic: str = "t/x", **extra: Any) -> Path:
    def team(**more: Any) -> dict[str, Any]:
        return {"channels": [{"type": "mqtt", "topic": topic}], **more}

    doc = {
        "route": {
            "receiver": "duty",
            "group_by": ["domain", "district"],
            "group_wait": "1m",
            "group_interval": "5m",
            "repeat_interval": "4h",
            "routes": [
                {
                    "name": "red",
                    "level": "red",
                    "receiver": "duty",
                    "continue": True,
                    "group_by": ["district"],
                    "group_wait": "0s",
                },
                {
                    "name": "drainage",
                    "match": {"domain": "drainage"},
                    "receiver": "drain",
                    "group_by": ["district"],
                },
                {
                    "name": "lift",
                    "match": {"domain": "elevator"},
                    "receiver": "lift",
                    "group_wait": "0s",
                },
            ],
        },
        "teams": {
            "duty": team(),
            "drain": {
                "language": "en",
                "channels": [
                    {"type": "mqtt", "topic": topic},
                    {"type": "mqtt", "name": "display-zh", "topic": topic, "language": "zh"},
                ],
            },
            "lift": team(),
            "sup": team(),
        },
        "escalation": {
            "red": [
                {"after": "5m", "unless": "acknowledged", "notify": "duty"},
                {"after": "30m", "unless": "handled", "notify": "sup"},
            ]
        },
        **extra,
    }
    path = tmp_path / "routing.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def at(self, seconds: float) -> None:
        self.now = T0 + timedelta(seconds=seconds)


def transition(
    fp: str,
    domain: str,
    district: str,
    level: Level,
    state: str = "firing",
    previous: Level = Level.NORMAL,
    at: datetime = T0,
) -> AlertTransition:
    return AlertTransition(
        fingerprint=fp,
        rule=f"{domain}_rule",
        domain=domain,
        state=ConditionState(state),
        level=level,
        previous_level=previous,
        at=at,
        device_id=fp,
        district=district,
        summary=f"{fp} at {level.label}",
        values={"v": 1.5},
    )


def store(database: str, *ts: AlertTransition) -> None:
    with psycopg.connect(database) as conn:
        record_transitions(conn, ts)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make(database: str, tmp_path: Path, clock: Clock) -> Iterator[Any]:
    made: list[Notifier] = []

    def build() -> Notifier:
        config = NotifierConfig(
            load_routing(routing_file(tmp_path)),
            Renderer("https://cv.example", SECRET),
            gap_wait=timedelta(0),
        )
        n = Notifier(database, config, clock=clock)
        made.append(n)
        return n

    yield build
    for n in made:
        if n._conn is not None:
            n._conn.close()


def outbox(database: str) -> list[tuple[Any, ...]]:
    return rows(
        database,
        "SELECT kind, team, channel, idempotency_key, alert_ids, subject, language "
        "FROM notifications ORDER BY id",
    )


def handle(database: str, fp: str, to: str, team: str | None = None) -> None:
    """What the API branch does on ack/dispatch/handle/close, as plain SQL."""
    column = {
        "acknowledged": "acknowledged_at",
        "dispatched": "dispatched_at",
        "handled": "handled_at",
        "closed": "closed_at",
    }[to]
    with psycopg.connect(database) as conn:
        alert_id, previous = conn.execute(
            "SELECT id, handling FROM alerts WHERE fingerprint = %s AND handling <> 'closed'",
            (fp,),
        ).fetchone()  # type: ignore[misc]
        conn.execute(
            f"UPDATE alerts SET handling = %s, {column} = now(), team = COALESCE(%s, team) "
            "WHERE id = %s",
            (to, team, alert_id),
        )
        conn.execute(
            "INSERT INTO alert_events (alert_id, at, actor, dimension, from_state, to_state, "
            "note) VALUES (%s, now(), 'operator', 'handling', %s, %s, %s)",
            (alert_id, previous, to, f"{to} by the test"),
        )


def test_storm_is_grouped_routed_and_silences_hold(database: str, make: Any, clock: Clock) -> None:
    with psycopg.connect(database) as conn:
        add_silence(
            conn,
            Silence.build(
                [Matcher.parse("district=d03")],
                T0 - timedelta(hours=1),
                T0 + timedelta(hours=1),
                "ops",
                "pump works",
            ),
        )
    store(
        database, *[transition(f"dr-{i:03d}", "drainage", "d01", Level.ORANGE) for i in range(40)]
    )
    store(
        database, *[transition(f"dr-2{i:02d}", "drainage", "d02", Level.YELLOW) for i in range(3)]
    )
    store(database, transition("dr-300", "drainage", "d03", Level.ORANGE))
    notifier = make()
    assert notifier.step() == 0  # group_wait
    # Routing is recorded and the alert's team set at once.
    assert scalar(database, "SELECT count(*) FROM alerts WHERE team = 'drain'") == 44
    assert rows(
        database,
        "SELECT a.fingerprint, r.teams, r.silenced_by <> '{}' FROM alert_routing r "
        "JOIN alerts a ON a.id = r.alert_id WHERE a.fingerprint IN ('dr-000', 'dr-300') "
        "ORDER BY 1",
    ) == [("dr-000", ["drain"], False), ("dr-300", ["drain"], True)]

    clock.at(59)
    assert notifier.step() == 0
    clock.at(60)
    assert notifier.step() == 4  # d01 and d02, two channels each; d03 silenced
    sent = outbox(database)
    assert {(k, t, c) for k, t, c, *_ in sent} == {
        ("group", "drain", "mqtt"),
        ("group", "drain", "display-zh"),
    }
    by_channel = {(s[2], len(s[4])) for s in sent}
    assert by_channel == {("mqtt", 40), ("mqtt", 3), ("display-zh", 40), ("display-zh", 3)}
    langs = {s[2]: s[6] for s in sent}
    assert langs == {"mqtt": "en", "display-zh": "zh"}
    assert all("d03" not in s[5] for s in sent)

    # A restart resumes from the stored cursor and groups: nothing is sent twice.
    again = make()
    clock.at(61)
    assert again.step() == 0
    # Half of d01 resolves: one update after group_interval, from the restarted notifier.
    store(
        database,
        *[
            transition(f"dr-{i:03d}", "drainage", "d01", Level.ORANGE, "resolved")
            for i in range(20)
        ],
    )
    clock.at(200)
    assert again.step() == 0
    clock.at(360)
    assert again.step() == 2
    update = outbox(database)[-1]
    assert update[5].startswith("【更新】") and "20条已解除" in update[5]
    # The rest resolves: a resolved notice, and the group ends.
    store(
        database,
        *[
            transition(f"dr-{i:03d}", "drainage", "d01", Level.ORANGE, "resolved")
            for i in range(20, 40)
        ],
    )
    clock.at(700)
    assert again.step() == 2
    assert outbox(database)[-1][5].startswith("【已解除】")
    assert len(outbox(database)) == 8
    assert scalar(database, "SELECT count(DISTINCT idempotency_key) FROM notifications") == 8


def test_escalation_stops_when_handled_and_dispatch_reaches_the_team(
    database: str, make: Any, clock: Clock
) -> None:
    store(database, transition("el-1", "elevator", "d01", Level.RED))
    store(database, transition("el-2", "elevator", "d02", Level.RED))
    with psycopg.connect(database) as conn:
        conn.execute("UPDATE alerts SET team = 'night-crew' WHERE fingerprint = 'el-2'")
    notifier = make()
    notifier.step()
    first = outbox(database)
    # Red: the duty officer at once (continue) and the elevator team.
    assert sorted({(t, len(a)) for _, t, _, _, a, *_ in first}) == [("duty", 1), ("lift", 1)]
    # A team already set (an operator's choice) is kept.
    assert scalar(database, "SELECT team FROM alerts WHERE fingerprint = 'el-2'") == "night-crew"
    assert scalar(database, "SELECT team FROM alerts WHERE fingerprint = 'el-1'") == "lift"

    handle(database, "el-2", "acknowledged")
    clock.at(299)
    notifier.step()
    assert [r for r in outbox(database) if r[0] == "escalation"] == []
    clock.at(300)
    notifier.step()
    esc = [r for r in outbox(database) if r[0] == "escalation"]
    # el-1 was not acknowledged: the duty officer; el-2 was: no stage.
    assert [(r[1], r[4]) for r in esc] == [
        ("duty", [scalar(database, "SELECT id FROM alerts WHERE fingerprint = 'el-1'")])
    ]
    assert esc[0][5].startswith("【升级】红色预警未确认")

    handle(database, "el-1", "dispatched", team="lift")
    clock.at(301)
    notifier.step()
    dispatch = [r for r in outbox(database) if r[0] == "dispatch"]
    assert [(r[1], r[5][:4]) for r in dispatch] == [("lift", "【派单】")]

    handle(database, "el-2", "dispatched")
    handle(database, "el-2", "handled")
    clock.at(1800)
    notifier.step()
    esc = [r for r in outbox(database) if r[0] == "escalation"]
    # el-1 dispatched but not handled: the supervisor; el-2 handled: nothing more.
    assert [r[1] for r in esc] == ["duty", "sup"]
    assert "未处置完成" in esc[-1][5]
    clock.at(7200)
    notifier.step()
    assert len([r for r in outbox(database) if r[0] == "escalation"]) == 2


def test_a_silence_ending_lets_the_alert_through(database: str, make: Any, clock: Clock) -> None:
    with psycopg.connect(database) as conn:
        add_silence(
            conn,
            Silence.build(
                [Matcher.parse("device_id=~el-.*")],
                T0,
                T0 + timedelta(minutes=10),
                "ops",
                "lift maintenance",
            ),
        )
    store(database, transition("el-9", "elevator", "d01", Level.ORANGE))
    notifier = make()
    notifier.step()
    clock.at(300)
    notifier.step()
    assert outbox(database) == []
    clock.at(600)
    notifier.step()
    assert [r[1] for r in outbox(database)] == ["lift"]


def test_an_upgraded_deployment_does_not_notify_its_old_alerts(
    empty_database: str, tmp_path: Path
) -> None:
    from cityvitals.db import MIGRATIONS_DIR, upgrade

    old = tmp_path / "migrations"
    old.mkdir()
    for f in MIGRATIONS_DIR.glob("000[1-4]_*.sql"):
        (old / f.name).write_text(f.read_text())
    upgrade(empty_database, old)
    store(empty_database, transition("old-1", "drainage", "d01", Level.RED))
    last = scalar(empty_database, "SELECT max(id) FROM alert_events")
    upgrade(empty_database)
    assert scalar(empty_database, "SELECT last_event FROM notifier_state") == last
    config = NotifierConfig(load_routing(routing_file(tmp_path)), Renderer())
    notifier = Notifier(empty_database, config, clock=lambda: T0 + timedelta(hours=1))
    assert notifier.step() == 0
    assert notifier._conn is not None
    notifier._conn.close()
    assert outbox(empty_database) == []
