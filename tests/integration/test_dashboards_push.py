"""`cityvitals dashboards push` against a real HTTP server on loopback that answers like
Grafana's API and records what grafana-client sends (no Grafana can run here)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from typer.testing import CliRunner

from cityvitals.cli import app
from dashboards.build import build_all
from dashboards.push import PushError, push
from dashboards.style import DATASOURCE_UID, FOLDER_TITLE, FOLDER_UID


@dataclass
class FakeGrafana:
    """Grafana's folder, datasource and dashboard endpoints, in memory."""

    token: str = "glsa_test"
    folders: dict[str, str] = field(default_factory=dict)
    datasources: set[str] = field(default_factory=set)
    dashboards: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: list[tuple[str, str, Any]] = field(default_factory=list)

    def answer(self, method: str, path: str, body: Any, auth: str | None) -> tuple[int, Any]:
        self.calls.append((method, path, body))
        if auth != f"Bearer {self.token}":
            return 401, {"message": "Unauthorized"}
        if method == "GET" and path.startswith("/api/folders/"):
            uid = path.rsplit("/", 1)[1]
            if uid in self.folders:
                return 200, {"uid": uid, "title": self.folders[uid]}
            return 404, {"message": "folder not found"}
        if method == "POST" and path == "/api/folders":
            self.folders[body["uid"]] = body["title"]
            return 200, {"uid": body["uid"], "title": body["title"]}
        if method == "GET" and path.startswith("/api/datasources/uid/"):
            uid = path.rsplit("/", 1)[1]
            if uid in self.datasources:
                return 200, {"uid": uid}
            return 404, {"message": "Data source not found"}
        if method == "POST" and path == "/api/dashboards/db":
            if body["folderUid"] not in self.folders:
                return 400, {"message": "folder not found"}
            uid = body["dashboard"]["uid"]
            self.dashboards[uid] = body
            return 200, {"status": "success", "uid": uid, "url": f"/d/{uid}/x", "version": 1}
        return 404, {"message": f"no route {method} {path}"}


@pytest.fixture
def grafana() -> Iterator[tuple[str, FakeGrafana]]:
    fake = FakeGrafana()

    class Handler(BaseHTTPRequestHandler):
        def _handle(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            status, answer = fake.answer(
                method, self.path.split("?")[0], body, self.headers.get("Authorization")
            )
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._handle("GET")

        def do_POST(self) -> None:
            self._handle("POST")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", fake
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_push_creates_the_folder_and_uploads_every_dashboard(
    grafana: tuple[str, FakeGrafana],
) -> None:
    url, fake = grafana
    built = build_all()
    result = push(url, fake.token)
    assert result.folder_created
    assert fake.folders == {FOLDER_UID: FOLDER_TITLE}
    assert [c[:2] for c in fake.calls[:3]] == [
        ("GET", f"/api/folders/{FOLDER_UID}"),
        ("POST", "/api/folders"),
        ("GET", f"/api/datasources/uid/{DATASOURCE_UID}"),
    ]
    assert any(DATASOURCE_UID in w for w in result.warnings)
    assert set(fake.dashboards) == {b.uid for b in built}
    for b in built:
        sent = fake.dashboards[b.uid]
        assert sent["overwrite"] is True and sent["folderUid"] == FOLDER_UID
        assert sent["dashboard"] == json.loads(b.text), b.name
    assert result.dashboards == [f"/d/{b.uid}/x" for b in built]

    # Again, with the folder and the datasource there: no folder created, no warning.
    fake.datasources.add(DATASOURCE_UID)
    fake.calls.clear()
    again = push(url, fake.token)
    assert not again.folder_created and not again.warnings
    assert [c[0] for c in fake.calls].count("POST") == len(built)


def test_push_reports_a_refused_token_and_an_absent_grafana(
    grafana: tuple[str, FakeGrafana],
) -> None:
    url, fake = grafana
    with pytest.raises(PushError, match="Unauthorized"):
        push(url, "wrong")
    assert not fake.dashboards
    with pytest.raises(PushError, match=r"cannot reach|Grafana at"):
        push("http://127.0.0.1:9", fake.token, timeout=2)


def test_cli_push_takes_the_token_from_the_environment(grafana: tuple[str, FakeGrafana]) -> None:
    url, fake = grafana
    runner = CliRunner()
    result = runner.invoke(
        app, ["dashboards", "push", "--url", url], env={"GRAFANA_TOKEN": fake.token}
    )
    assert result.exit_code == 0, result.output
    assert "pushed /d/cityvitals-wall/x" in result.output
    assert len(fake.dashboards) == len(build_all())
    missing = runner.invoke(app, ["dashboards", "push", "--url", url], env={"GRAFANA_TOKEN": ""})
    assert missing.exit_code == 2
    refused = runner.invoke(
        app, ["dashboards", "push", "--url", url, "--token", "nope"], env={"GRAFANA_TOKEN": ""}
    )
    assert refused.exit_code == 1
