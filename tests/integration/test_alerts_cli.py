"""`cityvitals alerts|silences|users|tokens` against the real PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from alerts.auth import authenticate
from alerts.model import AlertTransition, ConditionState, Level
from alerts.store import record_transitions
from cityvitals.services import LocalMosquitto
from tests.integration.test_cli import Invoke, _invoker, one_line
from tests.support import rows, scalar

T0 = datetime(2026, 7, 1, 8, 0, tzinfo=UTC)


@pytest.fixture
def cli(
    database: str, broker: LocalMosquitto, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Invoke:
    with psycopg.connect(database, autocommit=True) as conn:
        for i, (district, level) in enumerate((("futian", Level.RED), ("nanshan", Level.BLUE))):
            record_transitions(
                conn,
                [
                    AlertTransition(
                        fingerprint=f"fp{i}",
                        rule="pipe_fill",
                        domain="drainage",
                        state=ConditionState.FIRING,
                        level=level,
                        previous_level=Level.NORMAL,
                        at=T0 + timedelta(minutes=i),
                        device_id=f"dr-{i}",
                        district=district,
                        summary=f"pipe {i} surcharged",
                    )
                ],
            )
    return _invoker(database, broker, monkeypatch, tmp_path)


def test_handling_commands_record_the_actor(cli: Invoke, database: str) -> None:
    listed = cli("alerts", "list")
    assert listed.exit_code == 0, listed.output
    assert "pipe 0 surcharged" in listed.output and "2 of 2 alert(s)" in listed.output
    page = json.loads(cli("alerts", "list", "--level", "red", "--json").output)
    assert [a["district"] for a in page["items"]] == ["futian"] and page["total"] == 1

    missing = cli("alerts", "ack", "1")
    assert missing.exit_code == 2 and "--as NAME" in one_line(missing.output)

    ok = cli("alerts", "ack", "1", "--as", "chen")
    assert ok.exit_code == 0 and "alert 1: new → acknowledged (by chen)" in one_line(ok.output)
    again = cli("alerts", "ack", "1", CITYVITALS_USER="chen")
    assert again.exit_code == 0 and "already acknowledged" in again.output
    r = cli(
        "alerts", "dispatch", "1", "--team", "drainage-futian", "--note", "truck", "--as", "chen"
    )
    assert r.exit_code == 0, r.output
    r = cli("alerts", "handle", "1", "--note", "cleared", CITYVITALS_USER="li")
    assert r.exit_code == 0, r.output
    refused = cli("alerts", "close", "1", "--as", "chen")
    assert refused.exit_code == 1 and "still firing" in one_line(refused.output)
    r = cli("alerts", "close", "1", "--note", "checked on camera", "--as", "chen")
    assert r.exit_code == 0, r.output
    closed = cli("alerts", "ack", "1", "--as", "chen")
    assert closed.exit_code == 1 and "alert 1 is closed" in one_line(closed.output)
    nope = cli("alerts", "ack", "77", "--as", "chen")
    assert nope.exit_code == 1 and "alert 77 does not exist" in one_line(nope.output)

    assert rows(
        database,
        "SELECT actor, from_state, to_state, team, note FROM alert_events "
        "WHERE dimension = 'handling' ORDER BY id",
    ) == [
        ("chen", "new", "acknowledged", None, ""),
        ("chen", "acknowledged", "dispatched", "drainage-futian", "truck"),
        ("li", "dispatched", "handled", None, "cleared"),
        ("chen", "handled", "closed", None, "checked on camera"),
    ]
    shown = cli("alerts", "show", "1")
    assert shown.exit_code == 0 and "checked on camera" in shown.output
    detail = json.loads(cli("alerts", "show", "1", "--json").output)
    assert detail["handling"] == "closed" and len(detail["timeline"]) == 5
    bad = cli("alerts", "list", "--order", "id; DROP TABLE alerts")
    assert bad.exit_code == 2 and "--order" in bad.output
    assert scalar(database, "SELECT count(*) FROM alerts") == 2


def test_silences_commands(cli: Invoke, database: str) -> None:
    r = cli(
        "silences",
        "add",
        "district=futian",
        "rule=~pipe.*",
        "--for",
        "2h",
        "--reason",
        "pump station maintenance",
        "--author",
        "chen",
    )
    assert r.exit_code == 0, r.output
    assert "silence 1: district=futian rule=~pipe.*" in one_line(r.output)
    listed = cli("silences", "list")
    assert "pump station maintenance" in listed.output and "active" in listed.output
    alerts = json.loads(cli("alerts", "list", "--json").output)["items"]
    assert {a["district"]: a["silenced"] for a in alerts} == {"futian": True, "nanshan": False}
    assert "(silenced)" in cli("alerts", "list").output
    both = cli("silences", "add", "district=x", "--reason", "r", "--author", "chen")
    assert both.exit_code == 2 and "--for 2h" in one_line(both.output)
    bad = cli("silences", "add", "district", "--for", "1h", "--reason", "r", "--author", "chen")
    assert bad.exit_code == 2 and "name=value" in one_line(bad.output)
    r = cli("silences", "expire", "1", "--as", "chen")
    assert r.exit_code == 0 and "silence 1 expired" in r.output
    again = cli("silences", "expire", "1", "--as", "chen")
    assert again.exit_code == 1 and "already ended" in one_line(again.output)
    assert rows(database, "SELECT author, expired_by FROM silences") == [("chen", "chen")]


def test_users_and_tokens(cli: Invoke, database: str) -> None:
    r = cli("users", "add", "li", "--role", "member", "--team", "drainage-futian")
    assert r.exit_code == 0 and "member of team drainage-futian" in r.output
    no_team = cli("users", "add", "zhao", "--role", "member")
    assert no_team.exit_code == 1 and "needs a team" in one_line(no_team.output)
    dup = cli("users", "add", "li", "--role", "viewer")
    assert dup.exit_code == 1 and "already exists" in dup.output
    bad = cli("users", "add", "x'; DROP TABLE users;--", "--role", "viewer")
    assert bad.exit_code == 1 and "user name" in one_line(bad.output)
    assert "drainage-futian" in cli("users", "list").output

    made = cli("tokens", "create", "li", "--label", "tablet", "--expires", "90d")
    assert made.exit_code == 0, made.output
    token = made.stdout.strip().splitlines()[-1]
    assert token.startswith("cv_")
    with psycopg.connect(database, autocommit=True) as conn:
        principal = authenticate(conn, token, datetime.now(UTC))
        assert principal is not None and principal.team == "drainage-futian"
    assert token not in str(rows(database, "SELECT * FROM api_tokens"))  # stored hashed
    unknown = cli("tokens", "create", "nobody")
    assert unknown.exit_code == 1 and "users add nobody" in one_line(unknown.output)
    prefix = token.split("_")[1]
    assert prefix in cli("tokens", "list").output
    r = cli("tokens", "revoke", prefix)
    assert r.exit_code == 0 and "revoked" in r.output
    assert "revoked" in cli("tokens", "list", "--user", "li").output
    with psycopg.connect(database, autocommit=True) as conn:
        assert authenticate(conn, token, datetime.now(UTC)) is None
    gone = cli("tokens", "revoke", "ffffffffffff")
    assert gone.exit_code == 1 and "no token" in gone.output
    r = cli("users", "disable", "li")
    assert r.exit_code == 0 and "disabled" in r.output
    disabled = cli("alerts", "ack", "1", "--as", "li")
    assert disabled.exit_code == 2 and "user li is disabled" in one_line(disabled.output)
