"""`cityvitals routes …` and `cityvitals notifications …` against the real PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
import yaml

from cityvitals.services import LocalMosquitto
from tests.integration.test_cli import Invoke, _invoker
from tests.integration.test_notifier import routing_file
from tests.receivers import WebhookReceiver
from tests.support import scalar


@pytest.fixture
def cli(
    database: str, broker: LocalMosquitto, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Invoke:
    return _invoker(database, broker, monkeypatch, tmp_path)


def test_routes_check_accepts_the_shipped_file_and_names_problems(
    cli: Invoke, tmp_path: Path
) -> None:
    ok = cli("routes", "check")
    assert ok.exit_code == 0, ok.output
    assert "routing.yaml: 7 routes, 7 teams" in ok.output
    bad = tmp_path / "bad.yaml"
    doc = yaml.safe_load(routing_file(tmp_path).read_text())
    doc["route"]["group_wait"] = "later"
    doc["teams"]["duty"]["channels"][0]["topic"] = "a/#"
    bad.write_text(yaml.safe_dump(doc))
    result = cli("routes", "check", str(bad))
    assert result.exit_code == 1
    assert "bad.yaml: route.group_wait: 'later' is not a duration" in result.output
    assert "bad.yaml: teams.duty.channels[0].topic" in result.output
    doc["route"]["group_wait"] = "1m"
    doc["teams"]["duty"]["channels"][0]["topic"] = "a/b"
    doc["route"]["routes"][1]["receiver"] = "ghosts"
    bad.write_text(yaml.safe_dump(doc))
    result = cli("routes", "check", str(bad))
    assert result.exit_code == 1
    assert "route.routes[1].receiver: team 'ghosts' is not in teams" in result.output


def test_routes_test_prints_the_matched_teams(cli: Invoke, tmp_path: Path) -> None:
    result = cli("routes", "test", "--domain", "drainage", "--district", "d01", "--level", "red")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "duty-officer,drainage"
    result = cli("routes", "test", "--domain", "air", "--level", "blue", "-v")
    assert result.output.splitlines()[0] == "environment"
    assert "group_by [domain, district]" in result.output
    path = routing_file(tmp_path)
    result = cli(
        "routes", "test", "--domain", "elevator", "--level", "red", "--file", str(path), "-v"
    )
    assert result.output.splitlines()[0] == "duty,lift"
    assert "not acknowledged after 5m → duty" in result.output
    assert cli("routes", "test", "--domain", "x", "--level", "purple").exit_code == 2
    assert cli("routes", "test", "--domain", "x", "--label", "novalue").exit_code == 2


def test_notifications_list_show_retry_send(cli: Invoke, database: str, tmp_path: Path) -> None:
    from tests.integration.test_notify_delivery import SECRET, fill_outbox, write_routing

    hook = WebhookReceiver(SECRET.encode()).start()
    try:
        path = write_routing(
            tmp_path / "r.yaml", [{"type": "webhook", "url": hook.url, "secret": SECRET}]
        )
        fill_outbox(database, path, 2)
        env = {"CITYVITALS_ROUTING_FILE": str(path)}
        listed = cli("notifications", "list", **env)
        assert listed.exit_code == 0, listed.output
        assert "pending 2, sending 0, sent 0, failed 0" in listed.output
        hook.status = 400
        sent = cli("notifications", "send", "--drain", **env)
        assert sent.exit_code == 0, sent.output
        assert "sent 0, failed 2" in sent.output
        assert "failed 2" in cli("notifications", "list", "--status", "failed").output
        first = scalar(database, "SELECT min(id) FROM notifications")
        shown = cli("notifications", "show", str(first))
        assert shown.exit_code == 0, shown.output
        assert "HTTP 400" in shown.output and "permanent" in shown.output
        assert "Orange alert · drainage" in shown.output
        assert cli("notifications", "show", "999999").exit_code == 1
        retried = cli("notifications", "retry", "--all-failed")
        assert "2 notification(s) queued again" in retried.output
        hook.status = 200
        sent = cli("notifications", "send", "--drain", **env)
        assert "sent 2, failed 0" in sent.output
        assert len(hook.keys()) == 2
        assert cli("notifications", "list", "--status", "nope").exit_code == 2
        with psycopg.connect(database) as conn:
            assert conn.execute("SELECT count(*) FROM notification_attempts").fetchone() == (4,)
    finally:
        hook.stop()
