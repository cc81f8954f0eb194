"""Serving the HTTP API (alerts/api.py) with uvicorn: from `cityvitals api` or the platform.

The link secret signs ack links in notifications and checks them here, so
every process of a deployment must share it: set `CITYVITALS_LINK_SECRET`.
Unset, a random secret is made once and kept in `data_dir/link_secret`
(mode 0600), with a warning — fine for one machine, wrong for several.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version

import uvicorn
from fastapi import FastAPI

from alerts.api import create_app
from alerts.links import ActionLink, sign
from alerts.outbox import wall_clock
from cityvitals.settings import Settings

log = logging.getLogger(__name__)

LINK_SECRET_FILE = "link_secret"


class ApiServerError(RuntimeError):
    """The API cannot be served; the message says why and what to change."""


def link_secret(settings: Settings) -> bytes:
    """CITYVITALS_LINK_SECRET, else the one kept in data_dir (made on first use)."""
    if settings.link_secret is not None:
        return settings.link_secret.get_secret_value().encode("utf-8")
    path = settings.data_dir.resolve() / LINK_SECRET_FILE
    try:
        stored = path.read_text().strip()
    except FileNotFoundError:
        stored = ""
    if len(stored) < 16:
        path.parent.mkdir(parents=True, exist_ok=True)
        stored = secrets.token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(stored + "\n")
        log.warning(
            "CITYVITALS_LINK_SECRET is not set: ack links are signed with a secret made for "
            "this machine (%s); set it to share links across processes",
            path,
        )
    return stored.encode("utf-8")


def ack_link_base(settings: Settings) -> str | None:
    """Where ack links point: CITYVITALS_PUBLIC_URL, else the API this platform serves
    (CITYVITALS_API_ENABLED), else None — then messages carry no ack links."""
    if settings.public_url is not None or settings.api_enabled:
        return settings.api_url
    return None


def ack_url(settings: Settings, link: ActionLink) -> str | None:
    """The address to put in a message: `{base}/ack/{signed token}`, or None (no API)."""
    base = ack_link_base(settings)
    return None if base is None else f"{base}/ack/{sign(link, link_secret(settings))}"


def _version() -> str:
    try:
        return package_version("cityvitals")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0"


def build_app(settings: Settings, database_url: str) -> FastAPI:
    return create_app(
        database_url,
        clock=wall_clock,
        link_secret=link_secret(settings),
        version=_version(),
    )


class ApiServer:
    """uvicorn serving an app in a thread of its own, on a socket bound at start."""

    def __init__(self, app: FastAPI, host: str, port: int, log_level: str = "warning") -> None:
        self.host, self.port = host, port
        config = uvicorn.Config(
            app, log_level=log_level.lower(), lifespan="on", access_log=False, server_header=False
        )
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 15) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            raise ApiServerError(
                f"cannot listen on {self.host}:{self.port} ({exc.strerror}); "
                "set CITYVITALS_API_HOST / CITYVITALS_API_PORT"
            ) from None
        self.port = sock.getsockname()[1]
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="api", daemon=True
        )
        self._thread.start()
        deadline = threading.Event()
        waited = 0.0
        while not self._server.started:
            if not self._thread.is_alive():
                raise ApiServerError(f"the API server on {self.url} stopped while starting")
            if waited > timeout:
                raise ApiServerError(f"the API server on {self.url} did not start in {timeout}s")
            deadline.wait(0.05)
            waited += 0.05
        log.info("API listening on %s (OpenAPI at %s/docs)", self.url, self.url)

    def stop(self, timeout: float = 10) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()


def serve_forever(settings: Settings, database_url: str) -> None:
    """`cityvitals api`: serve in the foreground until Ctrl-C."""
    app = build_app(settings, database_url)
    config = uvicorn.Config(
        app,
        host=settings.api_host,
        port=settings.api_port,
        log_level=settings.log_level.lower(),
        lifespan="on",
        server_header=False,
    )
    uvicorn.Server(config).run()
