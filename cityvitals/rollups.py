"""The hourly rollup on plain PostgreSQL, kept up to date by the platform.

With TimescaleDB, `readings_1h` is a continuous aggregate its own policy
refreshes. On plain PostgreSQL it is a view over every reading, so migration
0007 materializes it as `readings_hourly`, which `cityvitals_refresh_rollups()`
brings up to date: each completed hour once, plus a look-back for late
readings. `RollupRefresher` calls it from a thread of the platform; Grafana's
`readings_series()` reads the materialized hours and adds the rest from the raw
readings, so a dashboard is never behind, only slower when this falls behind.
"""

from __future__ import annotations

import logging
import threading

import psycopg

log = logging.getLogger(__name__)


def refresh_rollups(url: str) -> int:
    """Materialize the hours completed since the last refresh; returns the rows written."""
    with psycopg.connect(url, autocommit=True, application_name="cityvitals-rollups") as conn:
        row = conn.execute("SELECT cityvitals_refresh_rollups(now())").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


class RollupRefresher:
    """Calls `refresh_rollups` every `interval` seconds in a thread; errors are logged
    and retried at the next turn (the dashboards read raw readings meanwhile)."""

    def __init__(self, url: str, interval: float = 300.0) -> None:
        self.url = url
        self.interval = interval
        self.refreshes = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="rollups", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                written = refresh_rollups(self.url)
                self.refreshes += 1
                self.last_error = None
                if written:
                    log.info("hourly rollup: %d rows materialized", written)
            except psycopg.Error as exc:
                self.last_error = str(exc).strip()
                log.warning("hourly rollup refresh failed (retried later): %s", self.last_error)
            self._stop.wait(self.interval)
