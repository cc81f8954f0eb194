"""Local PostgreSQL and Mosquitto, started from the installed binaries.

When no `CITYVITALS_DATABASE_URL` / `CITYVITALS_MQTT_URL` is given, the platform
and the test harness run their own instances on free loopback ports, with data
under a directory of their own, and stop them cleanly. The test suite uses the
`stop`, `start` and `kill` methods to test failures.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self


class ServiceError(RuntimeError):
    """A local service could not be found, started or stopped."""


PG_INSTALL_HINT = (
    "install PostgreSQL 15 or newer (Debian/Ubuntu: apt-get install postgresql; "
    "macOS: brew install postgresql@16), or set CITYVITALS_DATABASE_URL to a running server"
)
MOSQUITTO_INSTALL_HINT = (
    "install Mosquitto 2 (Debian/Ubuntu: apt-get install mosquitto; macOS: brew install "
    "mosquitto), or set CITYVITALS_MQTT_URL to a running broker"
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float, process: subprocess.Popen[bytes] | None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ServiceError(f"process exited with code {process.returncode} during start-up")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise ServiceError(f"nothing accepted connections on 127.0.0.1:{port} within {timeout:.0f}s")


@dataclass(frozen=True)
class _RunAs:
    """Servers refuse to run as root: run them as their own system user instead."""

    uid: int | None
    gid: int | None

    @classmethod
    def for_service(cls, user: str) -> _RunAs:
        if os.geteuid() != 0:
            return cls(None, None)
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            entry = pwd.getpwnam("nobody")
        return cls(entry.pw_uid, entry.pw_gid)

    def own(self, *paths: Path) -> None:
        if self.uid is None or self.gid is None:
            return
        for path in paths:
            os.chown(path, self.uid, self.gid)
            for root, dirs, files in os.walk(path):
                for name in dirs + files:
                    os.chown(os.path.join(root, name), self.uid, self.gid)

    def run(self, args: list[str], **kwargs: object) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(args, user=self.uid, group=self.gid, **kwargs)  # type: ignore[call-overload, no-any-return]


def _reachable_dirs(path: Path) -> None:
    """Let a service user reach `path` through directories root created 0700 (mkdtemp)."""
    if os.geteuid() != 0:
        return
    for parent in [path, *path.parents]:
        if str(parent) in ("/", "/root") or parent == Path.home():
            continue
        mode = parent.stat().st_mode
        if not mode & 0o001:
            os.chmod(parent, mode | 0o711)


def find_pg_bindir() -> Path:
    """The directory holding initdb/pg_ctl/postgres: CITYVITALS_PG_BINDIR, PATH, or Debian's."""
    if env := os.environ.get("CITYVITALS_PG_BINDIR"):
        return Path(env)
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
    for directory in reversed(candidates):
        if (Path(directory) / "initdb").exists():
            return Path(directory)
    if found := shutil.which("initdb"):
        return Path(found).resolve().parent
    raise ServiceError(f"PostgreSQL server binaries (initdb, pg_ctl) not found: {PG_INSTALL_HINT}")


def find_mosquitto() -> Path:
    for candidate in (os.environ.get("CITYVITALS_MOSQUITTO"), shutil.which("mosquitto")):
        if candidate:
            return Path(candidate)
    for path in (
        "/usr/sbin/mosquitto",
        "/usr/local/sbin/mosquitto",
        "/opt/homebrew/sbin/mosquitto",
    ):
        if Path(path).exists():
            return Path(path)
    raise ServiceError(f"the mosquitto broker binary was not found: {MOSQUITTO_INSTALL_HINT}")


class LocalPostgres:
    """A PostgreSQL cluster in `directory`, listening on 127.0.0.1:`port`."""

    def __init__(
        self,
        directory: Path,
        port: int | None = None,
        database: str = "cityvitals",
        fast_unsafe: bool = False,
    ) -> None:
        self.directory = directory.resolve()
        self.port = port or free_port()
        self.database = database
        self.fast_unsafe = fast_unsafe
        """fsync off: for throw-away test clusters only."""
        self.bindir = find_pg_bindir()
        self._as = _RunAs.for_service("postgres")

    @property
    def datadir(self) -> Path:
        return self.directory / "pgdata"

    @property
    def logfile(self) -> Path:
        return self.directory / "postgres.log"

    def url(self, database: str | None = None) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database or self.database}"

    def _initdb(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        _reachable_dirs(self.directory)
        self._as.own(self.directory)
        if (self.datadir / "PG_VERSION").exists():
            return
        result = self._as.run(
            [
                str(self.bindir / "initdb"),
                "-D",
                str(self.datadir),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                *(["--no-sync"] if self.fast_unsafe else []),
            ],
            capture_output=True,
        )
        if result.returncode != 0:
            raise ServiceError(
                f"initdb into {self.datadir} failed: {result.stderr.decode(errors='replace')}"
            )

    def _pg_ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        result = self._as.run(
            [str(self.bindir / "pg_ctl"), "-D", str(self.datadir), *args], capture_output=True
        )
        if check and result.returncode != 0:
            log = self.logfile.read_text(errors="replace")[-2000:] if self.logfile.exists() else ""
            raise ServiceError(
                f"pg_ctl {' '.join(args[:1])} failed for {self.datadir}: "
                f"{result.stderr.decode(errors='replace')}\n{log}"
            )
        return result

    def running(self) -> bool:
        return self._pg_ctl("status", check=False).returncode == 0

    def start(self, timeout: float = 60) -> None:
        self._initdb()
        if self.running():
            self._pg_ctl("stop", "-m", "fast")
        options = [
            f"-p {self.port}",
            "-c listen_addresses=127.0.0.1",
            f"-c unix_socket_directories={self.directory}",
            "-c max_connections=200",
        ]
        if self.fast_unsafe:
            options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        self._pg_ctl(
            "start", "-w", "-t", str(int(timeout)), "-l", str(self.logfile), "-o", " ".join(options)
        )
        self._ensure_database()

    def _ensure_database(self) -> None:
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)
            ).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{self.database}"')

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: `fast` (clean), or `immediate` (like a crash)."""
        if self.running():
            self._pg_ctl("stop", "-w", "-m", mode)

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class LocalMosquitto:
    """A Mosquitto broker in `directory`, listening on 127.0.0.1:`port`.

    Configured for lossless ingest: sessions persist across broker restarts and
    queued QoS 1 messages are never dropped for a slow or absent subscriber.
    """

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = directory.resolve()
        self.port = port or free_port()
        self.binary = find_mosquitto()
        self._as = _RunAs.for_service("mosquitto")
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def config_file(self) -> Path:
        return self.directory / "mosquitto.conf"

    @property
    def logfile(self) -> Path:
        return self.directory / "mosquitto.log"

    def _write_config(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        user = pwd.getpwuid(self._as.uid).pw_name if self._as.uid is not None else None
        lines = [
            "# Written by cityvitals.services: a local broker for the platform or its tests.",
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {self.directory}/",
            "autosave_interval 5",
            "max_queued_messages 1000000",
            "max_inflight_messages 0",
            "message_size_limit 10485760",
            f"log_dest file {self.logfile}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "connection_messages false",
        ]
        if user:
            lines.append(f"user {user}")
        self.config_file.write_text("\n".join(lines) + "\n")
        _reachable_dirs(self.directory)
        self._as.own(self.directory)

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 20) -> None:
        if self.running():
            return
        self._write_config()
        self._process = subprocess.Popen(
            [str(self.binary), "-c", str(self.config_file)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            wait_for_port(self.port, timeout, self._process)
        except ServiceError as exc:
            stderr = (
                self._process.stderr.read().decode(errors="replace") if self._process.stderr else ""
            )
            raise ServiceError(f"mosquitto on port {self.port}: {exc}\n{stderr}") from None

    def stop(self, timeout: float = 20) -> None:
        """Stop cleanly: Mosquitto saves sessions and queued messages to disk first."""
        if not self.running():
            return
        assert self._process is not None
        self._process.send_signal(signal.SIGTERM)
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._close()

    def kill(self) -> None:
        if self.running():
            assert self._process is not None
            self._process.kill()
            self._process.wait()
        self._close()

    def _close(self) -> None:
        if self._process is not None and self._process.stderr is not None:
            self._process.stderr.close()

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
