"""The platform serves the API when CITYVITALS_API_ENABLED; the link secret it uses."""

from __future__ import annotations

import socket
import stat
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psycopg
import pytest

from alerts.api import create_app
from alerts.auth import add_user, create_token
from alerts.links import ActionLink, verify
from cityvitals.api_server import (
    LINK_SECRET_FILE,
    ApiServer,
    ApiServerError,
    ack_url,
    link_secret,
)
from cityvitals.app import Endpoints, Platform
from cityvitals.services import LocalMosquitto
from cityvitals.settings import Settings


def test_platform_serves_the_api(
    database: str, broker: LocalMosquitto, topic_root: str, tmp_path: Path
) -> None:
    settings = Settings(
        database_url=database,
        mqtt_url=broker.url,
        data_dir=tmp_path,
        topic_root=topic_root,
        client_id=f"ingest-{topic_root}",
        rules_enabled=False,
        api_enabled=True,
        api_port=0,
    )
    with psycopg.connect(database, autocommit=True) as conn:
        add_user(conn, "chen", "operator", datetime.now(UTC))
        token = create_token(conn, "chen", datetime.now(UTC))[1]
    platform = Platform(settings, Endpoints(database, broker.url, False))
    platform.start()
    try:
        assert platform.api is not None and platform.api.alive()
        with httpx.Client(base_url=platform.api.url, timeout=10) as c:
            assert c.get("/health").json()["status"] == "ok"
            assert c.get("/alerts").status_code == 401
            r = c.get("/alerts", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200 and r.json()["total"] == 0
    finally:
        platform.stop()
    assert not platform.api.alive()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{platform.api.url}/health", timeout=2)


def test_link_secret_from_settings_or_made_once(tmp_path: Path) -> None:
    given = Settings(data_dir=tmp_path, link_secret="s" * 20)
    assert link_secret(given) == b"s" * 20
    assert not (tmp_path / LINK_SECRET_FILE).exists()
    made = link_secret(Settings(data_dir=tmp_path))
    path = tmp_path / LINK_SECRET_FILE
    assert len(made) >= 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert link_secret(Settings(data_dir=tmp_path)) == made  # kept, not remade
    with pytest.raises(ValueError, match="at least 16"):
        Settings(data_dir=tmp_path, link_secret="short")


def test_ack_url_is_signed_with_the_deployment_secret(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path, link_secret="k" * 24, public_url="https://ops.example.cn/cv/"
    )
    link = ActionLink(42, "ack", datetime(2026, 7, 1, 12, tzinfo=UTC), "flood-duty")
    url = ack_url(settings, link)
    prefix = "https://ops.example.cn/cv/ack/"
    assert url is not None and url.startswith(prefix)
    assert verify(url.removeprefix(prefix), b"k" * 24, datetime(2026, 7, 1, 8, tzinfo=UTC)) == link
    # without a public URL, links point at the API this platform serves, if it serves one
    assert ack_url(Settings(data_dir=tmp_path, link_secret="k" * 24), link) is None
    served = Settings(data_dir=tmp_path, link_secret="k" * 24, api_enabled=True, api_port=9000)
    assert (ack_url(served, link) or "").startswith("http://127.0.0.1:9000/ack/")


def test_port_in_use_is_a_clear_error(database: str) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        app = create_app(database, clock=lambda: datetime.now(UTC))
        server = ApiServer(app, "127.0.0.1", taken.getsockname()[1])
        with pytest.raises(ApiServerError, match="CITYVITALS_API_PORT"):
            server.start()
    finally:
        taken.close()
