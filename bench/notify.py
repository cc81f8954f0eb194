# ruff: noqa: E402 - the path fix below must run before the project's packages are imported
"""Notification benchmark: an alert storm through the notifier, the outbox and a webhook.

    .venv/bin/python -m bench.notify [--quick] [--json results.json] [--help]

A local PostgreSQL (normal durability) is started in a temporary directory, or
`--database-url` is used (a scratch database is created there and dropped).
The storm: `--transitions` alert transitions (default 10,000) over `--seconds`
(default 60) across `--districts` districts (default 10): drainage alerts fire
(40 %), change level (30 %) and resolve (30 %), stored in 100 ms batches with
`alerts.store.record_transitions`, as the rule runtime stores them. The
platform's notifier and sender run as the platform runs them
(cityvitals.notify_runtime.Notifications, default poll intervals), with the
shipped routing file whose teams each get a webhook on a loopback HTTP server,
and every route's timers set by `--group-wait` / `--group-interval`.

Figures: notifications created and sent (grouped), webhook requests received,
the time from the storm's end until every event is processed, every group's
last change sent (it waits for the group interval) and the outbox drained,
p50/p99 firing → first delivery (an alert's `started_at`, the wall time it was
raised, to the `sent_at` of the first notification whose `alert_ids` hold it),
the notifier's slowest step and its state's size.
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _ROOT / "bench"]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import argparse
import json
import random
import shutil
import statistics
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
import yaml

from alerts.model import AlertTransition, ConditionState, Level
from alerts.route import DEFAULT_ROUTING_FILE
from alerts.store import record_transitions
from cityvitals.db import upgrade
from cityvitals.notify_runtime import Notifications
from cityvitals.services import LocalPostgres
from cityvitals.settings import Settings
from devices.durations import parse_duration

P99_MARGIN = 2.0
"""p99 firing → first delivery may exceed the longer of group_wait and group_interval
(an alert joining a group that has just sent waits for its next update) by this, s."""


class Receiver:
    def __init__(self) -> None:
        self.count = 0
        self.keys: set[str] = set()
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver.lock:
                    receiver.count += 1
                    receiver.keys.add(self.headers.get("Idempotency-Key", ""))
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def routing(path: Path, url: str, group_wait: str, group_interval: str) -> Path:
    doc = yaml.safe_load(DEFAULT_ROUTING_FILE.read_text())
    for team in doc["teams"].values():
        team["channels"] = [{"type": "webhook", "url": url, "secret": "bench-secret"}]
    for route in [doc["route"], *doc["route"]["routes"]]:
        route.update(group_wait=group_wait, group_interval=group_interval)
    path.write_text(yaml.safe_dump(doc))
    return path


def storm(n: int, districts: int, rnd: random.Random) -> list[tuple[str, str, str, Level]]:
    """(fingerprint, district, state, level): fire, re-level, resolve; in order."""
    open_alerts: dict[str, tuple[str, Level]] = {}
    out: list[tuple[str, str, str, Level]] = []
    serial = 0
    while len(out) < n:
        roll = rnd.random()
        if roll < 0.4 or len(open_alerts) < 10:
            serial += 1
            fp = f"bench:dr-{serial:06d}"
            district = f"d{rnd.randrange(districts) + 1:02d}"
            level = Level(rnd.choice((1, 2, 3)))
            open_alerts[fp] = (district, level)
            out.append((fp, district, "firing", level))
        elif roll < 0.7:
            fp = rnd.choice(list(open_alerts))
            district, level = open_alerts[fp]
            new = Level(min(4, int(level) + 1)) if level < Level.RED else Level.ORANGE
            open_alerts[fp] = (district, new)
            out.append((fp, district, "firing", new))
        else:
            fp = rnd.choice(list(open_alerts))
            district, level = open_alerts.pop(fp)
            out.append((fp, district, "resolved", level))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transitions", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--districts", type=int, default=10)
    parser.add_argument("--group-wait", default="5s")
    parser.add_argument("--group-interval", default="10s")
    parser.add_argument("--quick", action="store_true", help="2,000 transitions in 15 s")
    parser.add_argument("--database-url", help="use this server instead of a local one")
    parser.add_argument("--json", type=Path, help="write every figure here too")
    args = parser.parse_args()
    if args.quick:
        args.transitions, args.seconds = 2000, 15.0

    work = Path(tempfile.mkdtemp(prefix="cv-bench-notify-"))
    pg: LocalPostgres | None = None
    if args.database_url:
        admin = args.database_url
    else:
        pg = LocalPostgres(work / "pg", database="postgres")
        pg.start()
        admin = pg.url("postgres")
    name = f"bench_notify_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = admin.rsplit("/", 1)[0] + f"/{name}"
    try:
        upgrade(url)
        receiver = Receiver()
        settings = Settings(
            database_url=url,
            routing_file=routing(
                work / "routing.yaml", receiver.url, args.group_wait, args.group_interval
            ),
            public_url="https://cv.example",
            link_secret="bench-link-secret-0123456789",
            _env_file=None,  # type: ignore[call-arg]
        )
        service = Notifications(settings, url, None)
        steps: list[float] = []
        original_step = service.notifier.step

        def timed_step() -> int:
            t = time.perf_counter()
            try:
                return original_step()
            finally:
                steps.append(time.perf_counter() - t)

        service.notifier.step = timed_step  # type: ignore[method-assign]
        service.start()

        plan = storm(args.transitions, args.districts, random.Random(20261126))
        batches = max(1, int(args.seconds / 0.1))
        per_batch = -(-len(plan) // batches)
        levels: dict[str, Level] = {}
        t_start = time.monotonic()
        with psycopg.connect(url) as conn:
            for b in range(batches):
                chunk = plan[b * per_batch : (b + 1) * per_batch]
                if not chunk:
                    break
                now = datetime.now(UTC)
                transitions = []
                for fp, district, state, level in chunk:
                    previous = levels.get(fp, Level.NORMAL)
                    levels[fp] = level
                    transitions.append(
                        AlertTransition(
                            fp,
                            "drainage_fill",
                            "drainage",
                            ConditionState(state),
                            level,
                            previous,
                            now,
                            fp.split(":")[1],
                            district,
                            f"{fp} {level.label}",
                        )
                    )
                record_transitions(conn, transitions)
                delay = t_start + (b + 1) * 0.1 - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
        storm_s = time.monotonic() - t_start
        t_end = time.monotonic()
        with psycopg.connect(url, autocommit=True) as conn:
            while True:
                last = conn.execute("SELECT coalesce(max(id), 0) FROM alert_events").fetchone()
                cursor = conn.execute(
                    "SELECT last_event FROM notifier_state WHERE name = 'default'"
                ).fetchone()
                waiting = conn.execute(
                    "SELECT count(*) FROM notifications WHERE status IN ('pending', 'sending')"
                ).fetchone()
                assert last and cursor and waiting
                try:
                    unsent = service.notifier._grouper.unsent()
                except RuntimeError:  # the notifier thread changed a group meanwhile
                    unsent = 1
                if cursor[0] >= last[0] and waiting[0] == 0 and unsent == 0:
                    break
                if time.monotonic() - t_end > 600:
                    raise SystemExit("not drained after 10 minutes")
                time.sleep(0.05)
            drained_s = time.monotonic() - t_end
            service.notifier.stop()
            service.sender.drain(30)  # what the last step queued
            service.sender.stop()
            rows = conn.execute(
                """SELECT extract(epoch FROM min(n.sent_at) - a.started_at)
                   FROM alerts a JOIN notifications n ON a.id = ANY(n.alert_ids)
                   WHERE n.status = 'sent' AND n.team = 'drainage' GROUP BY a.id"""
            ).fetchall()
            counts = dict(
                conn.execute(
                    "SELECT status, count(*) FROM notifications GROUP BY status"
                ).fetchall()
            )
            kinds = dict(
                conn.execute("SELECT kind, count(*) FROM notifications GROUP BY kind").fetchall()
            )
            state = conn.execute(
                "SELECT pg_column_size(groups) + pg_column_size(escalations) FROM notifier_state"
            ).fetchone()
            alerts = conn.execute("SELECT count(*) FROM alerts").fetchone()
        latencies = sorted(float(r[0]) for r in rows)
        p50 = statistics.median(latencies)
        p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
        wait_s = parse_duration(args.group_wait).total_seconds()
        bound = max(wait_s, parse_duration(args.group_interval).total_seconds())
        figures = {
            "transitions": len(plan),
            "storm_seconds": round(storm_s, 2),
            "alerts": alerts[0] if alerts else 0,
            "districts": args.districts,
            "group_wait_s": wait_s,
            "group_interval": args.group_interval,
            "notifications": counts,
            "notifications_by_kind": kinds,
            "webhook_requests": receiver.count,
            "webhook_distinct_keys": len(receiver.keys),
            "drained_after_storm_s": round(drained_s, 2),
            "first_delivery_p50_s": round(p50, 3),
            "first_delivery_p99_s": round(p99, 3),
            "first_delivery_p99_beyond_timers_s": round(p99 - bound, 3),
            "notifier_steps": len(steps),
            "notifier_step_max_s": round(max(steps), 3),
            "notifier_state_bytes": state[0] if state else 0,
        }
        ok = (
            receiver.count == len(receiver.keys) == counts.get("sent", 0)
            and p99 - bound <= P99_MARGIN
        )
        for k, v in figures.items():
            print(f"{k:34} {v}")
        print(
            f"{'result':34} {'PASS' if ok else 'FAIL'} (p99 firing → first delivery ≤ "
            f"max(group_wait, group_interval) + {P99_MARGIN:g} s; every notification "
            "delivered once)"
        )
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2, sort_keys=True))
        return 0 if ok else 1
    finally:
        try:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        finally:
            if pg is not None:
                pg.stop()
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
