"""The notifier: alert events in, outbox rows out — routing, silences, grouping, escalation.

It reads `alert_events` in id order from a cursor kept in `notifier_state`, and
in one transaction per step: routes each newly firing alert (recording the
matched teams, the owning team and any silences in `alert_routing`), feeds its
groups, turns the groups that are due into messages, notifies the teams of
escalation stages that are due and of dispatches, inserts every message into
the outbox, and saves the cursor, the groups and the escalation tracks. A
crash anywhere rolls the whole step back, so a restart resumes exactly where
the last commit left off. After the commit, `alerts.team` is set to the owning
team where it is still empty. The step's transaction takes no lock on `alerts`
rows, so it never waits on or deadlocks with the rule runtime.

Silenced alerts are routed and recorded but left out of messages and
escalations while the silence holds. A `Sender` (alerts/outbox.py) delivers
what this produces. Time comes from `clock`; the logic it drives is pure.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from alerts.escalation import Track, advance, relevel
from alerts.group import AlertSnapshot, Grouper, GroupNotice
from alerts.model import Level
from alerts.outbox import OutboxItem, enqueue, wall_clock
from alerts.render import Message, Renderer
from alerts.route import Routing
from alerts.silence import Silence, alert_attributes, list_silences, silenced_by

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class NotifierConfig:
    routing: Routing
    renderer: Renderer
    max_attempts: int = 8
    name: str = "default"
    """Names the notifier's row in notifier_state (one notifier per name at a time)."""
    batch: int = 2000
    """Alert events taken per step."""
    gap_wait: timedelta = timedelta(seconds=5)
    """How long a gap in event ids is waited for before it is taken as a rollback."""


@dataclass(frozen=True, slots=True)
class _Event:
    id: int
    alert_id: int
    dimension: str
    from_state: str | None
    to_state: str
    level: int | None
    note: str
    alert: Mapping[str, Any]


def _snapshot(alert: Mapping[str, Any], state: str, level: int | None = None) -> AlertSnapshot:
    return AlertSnapshot(
        alert_id=int(alert["id"]),
        state=state,
        level=int(level if level is not None else alert["level"]),
        rule=str(alert["rule"]),
        domain=str(alert["domain"]),
        district=alert["district"],
        device_id=alert["device_id"],
        summary=str(alert["summary"]),
        started_at=alert["started_at"].isoformat(),
        labels={str(k): str(v) for k, v in (alert["labels"] or {}).items()},
        values=dict(alert["detail"] or {}),
        device_name=alert.get("device_name") or None,
        lat=alert.get("lat"),
        lon=alert.get("lon"),
    )


def _attributes(a: AlertSnapshot) -> dict[str, str]:
    return alert_attributes(
        rule=a.rule,
        domain=a.domain,
        device_id=a.device_id,
        district=a.district,
        level=a.level,
        labels=a.labels,
    )


_ALERT_COLUMNS = """a.id, a.rule, a.domain, a.device_id, a.district, a.level, a.max_level,
    a.condition, a.handling, a.summary, a.labels, a.detail, a.started_at, a.team,
    d.name AS device_name, d.lat, d.lon"""


class Notifier:
    def __init__(
        self,
        database_url: str,
        config: NotifierConfig,
        clock: Callable[[], datetime] = wall_clock,
        poll_interval: float = 1.0,
        on_enqueued: Callable[[], None] | None = None,
    ) -> None:
        self.database_url = database_url
        self.config = config
        self.clock = clock
        self.poll_interval = poll_interval
        self.on_enqueued = on_enqueued
        self.enqueued = 0
        self.events = 0
        self.last_error: str | None = None
        self.ready = threading.Event()
        self._conn: psycopg.Connection[Any] | None = None
        self._grouper = Grouper()
        self._tracks: dict[int, Track] = {}
        self._state_stamp: datetime | None = None
        self._gap_seen: tuple[int, float] | None = None
        self._owners: list[int] = []
        self._swept = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- one step -------------------------------------------------------------------

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.database_url, autocommit=True)
        return self._conn

    def _load_state(self, cur: psycopg.Cursor[Any]) -> int:
        cur.execute(
            "INSERT INTO notifier_state (name) VALUES (%s) ON CONFLICT (name) DO NOTHING",
            (self.config.name,),
        )
        cur.execute(
            "SELECT last_event, groups, escalations, updated_at FROM notifier_state "
            "WHERE name = %s FOR UPDATE",
            (self.config.name,),
        )
        row = cur.fetchone()
        assert row is not None
        if row["updated_at"] != self._state_stamp:
            # First step, or another process advanced the state: take the stored state.
            self._grouper = Grouper.from_json(row["groups"])
            self._grouper.retime({r.id: r for r in self.config.routing.routes()})
            tracks = (Track.from_json(t) for t in row["escalations"])
            self._tracks = {t.alert_id: t for t in tracks}
        return int(row["last_event"])

    def _save_state(self, cur: psycopg.Cursor[Any], cursor: int, now: datetime) -> None:
        cur.execute(
            "UPDATE notifier_state SET last_event = %s, groups = %s, escalations = %s, "
            "updated_at = %s WHERE name = %s RETURNING updated_at",
            (
                cursor,
                Jsonb(self._grouper.to_json()),
                Jsonb([t.to_json() for t in self._tracks.values()]),
                now,
                self.config.name,
            ),
        )
        row = cur.fetchone()
        assert row is not None
        self._state_stamp = row["updated_at"]

    def _events(self, cur: psycopg.Cursor[Any], after: int) -> list[_Event]:
        cur.execute(
            f"""SELECT e.id AS event_id, e.dimension, e.from_state, e.to_state,
                       e.level AS event_level, e.note, {_ALERT_COLUMNS}
                FROM alert_events e JOIN alerts a ON a.id = e.alert_id
                LEFT JOIN devices d ON d.device_id = a.device_id
                WHERE e.id > %s ORDER BY e.id LIMIT %s""",
            (after, self.config.batch),
        )
        out = []
        expected = after + 1
        for row in cur.fetchall():
            if row["event_id"] != expected and not self._gap_passed(expected):
                # A lower id may belong to a transaction not yet committed: wait for it.
                break
            out.append(
                _Event(
                    int(row["event_id"]),
                    int(row["id"]),
                    str(row["dimension"]),
                    row["from_state"],
                    str(row["to_state"]),
                    row["event_level"],
                    str(row["note"] or ""),
                    row,
                )
            )
            expected = int(row["event_id"]) + 1
        return out

    def _gap_passed(self, missing: int) -> bool:
        now = time.monotonic()
        if self._gap_seen is None or self._gap_seen[0] != missing:
            self._gap_seen = (missing, now)
        return now - self._gap_seen[1] >= self.config.gap_wait.total_seconds()

    def step(self) -> int:
        """Process new events, due groups and escalations; returns outbox rows added."""
        conn = self._connection()
        now = self.clock()
        items: list[OutboxItem] = []
        try:
            with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
                cursor = self._load_state(cur)
                silences = list_silences(conn, now)
                events = self._events(cur, cursor)
                for event in events:
                    items += self._apply(cur, event, silences, now)
                changed = bool(events)
                muted = self._muter(silences, now)
                notices = self._grouper.flush(now, muted)
                for notice in notices:
                    items += self._group_items(notice, now)
                escalated, tracks_changed = self._escalate(cur, silences, now)
                items += escalated
                changed = changed or bool(notices) or tracks_changed
                added = enqueue(conn, items, now, self.config.max_attempts) if items else 0
                if changed:
                    self._save_state(cur, events[-1].id if events else cursor, now)
        except BaseException:
            self._state_stamp = None  # reload the committed state next step
            self._owners.clear()
            self._swept = False  # and catch up on owners then
            raise
        self._assign_owners(conn)
        self.events += len(events)
        self.enqueued += added
        if added and self.on_enqueued is not None:
            self.on_enqueued()
        return added

    def _assign_owners(self, conn: psycopg.Connection[Any]) -> None:
        """Copy each routed alert's owning team to alerts.team where that is still empty.

        Outside the step's transaction and one row per statement: the rule runtime
        locks alert rows in its own order, so the notifier must never hold several
        (a crash before this ran is caught up by the sweep at the first step).
        """
        if not self._swept:
            found = conn.execute(
                "SELECT r.alert_id FROM alert_routing r JOIN alerts a ON a.id = r.alert_id "
                "WHERE a.team IS NULL AND r.owner IS NOT NULL AND a.handling <> 'closed'"
            ).fetchall()
            self._owners += [int(r[0]) for r in found]
            self._swept = True
        while self._owners:
            conn.execute(
                "UPDATE alerts SET team = r.owner FROM alert_routing r "
                "WHERE alerts.id = %s AND r.alert_id = alerts.id AND alerts.team IS NULL",
                (self._owners[0],),
            )
            self._owners.pop(0)

    # --- events ---------------------------------------------------------------------

    def _apply(
        self,
        cur: psycopg.Cursor[Any],
        event: _Event,
        silences: Sequence[Silence],
        now: datetime,
    ) -> list[OutboxItem]:
        alert = event.alert
        if event.dimension == "handling":
            if event.to_state == "closed":
                self._tracks.pop(event.alert_id, None)
                self._grouper.drop(event.alert_id, now)
            if event.to_state == "dispatched" and alert["team"]:
                return self._dispatch_items(event, str(alert["team"]), now)
            return []
        routing = self.config.routing
        if event.to_state == "firing":
            snap = _snapshot(alert, "firing", event.level)
            attrs = _attributes(snap)
            routes = routing.match(attrs)
            if event.from_state in (None, "resolved", "pending"):
                teams = list(dict.fromkeys(r.receiver for r in routes))
                quiet = silenced_by(silences, attrs, now)
                owners = [r.receiver for r in routes if not r.continue_] or teams
                owner = owners[0] if owners else None
                cur.execute(
                    """INSERT INTO alert_routing (alert_id, routes, teams, owner, silenced_by,
                                                  routed_at)
                       VALUES (%s, %s, %s, %s, %s, %s)
                       ON CONFLICT (alert_id) DO UPDATE SET
                           silenced_by = ARRAY(SELECT DISTINCT unnest(
                               alert_routing.silenced_by || EXCLUDED.silenced_by))""",
                    (event.alert_id, [r.id for r in routes], teams, owner, quiet, now),
                )
                if owner is not None and alert["team"] is None:
                    self._owners.append(event.alert_id)
            for route in routes:
                self._grouper.add(route, attrs, snap, now)
            level = Level(snap.level)
            track = self._tracks.get(event.alert_id)
            if track is None:
                if routing.escalation.get(level):
                    self._tracks[event.alert_id] = Track(event.alert_id, level, now)
            else:
                self._tracks[event.alert_id] = relevel(track, level)
        elif event.to_state == "resolved":
            self._grouper.resolve(_snapshot(alert, "resolved"), now)
        return []

    def _muter(self, silences: Sequence[Silence], now: datetime) -> Callable[[AlertSnapshot], bool]:
        active = [s for s in silences if s.state(now).value == "active"]

        def muted(a: AlertSnapshot) -> bool:
            return bool(active) and bool(silenced_by(active, _attributes(a), now))

        return muted

    # --- messages -------------------------------------------------------------------

    def _channel_items(
        self,
        team: str,
        kind: str,
        key: str,
        alert_ids: Sequence[int],
        group_key: str | None,
        level: int,
        render: Callable[[str], Message],
    ) -> list[OutboxItem]:
        spec = self.config.routing.teams.get(team)
        if spec is None:
            log.warning("team %r is not in the routing file; %s not sent", team, key)
            return []
        rendered: dict[str, Message] = {}
        out = []
        for name, channel in spec.named_channels():
            language = channel.language or spec.language
            if language not in rendered:
                rendered[language] = render(language)
            message = rendered[language]
            out.append(
                OutboxItem(
                    idempotency_key=f"{key}.{team}.{name}",
                    kind=kind,
                    team=team,
                    channel=name,
                    channel_type=channel.type,
                    target=channel.target,
                    language=language,
                    alert_ids=alert_ids,
                    group_key=group_key,
                    level=level,
                    subject=message.subject,
                    payload=message.to_json(),
                )
            )
        return out

    def _group_items(self, notice: GroupNotice, now: datetime) -> list[OutboxItem]:
        team = notice.receiver
        return self._channel_items(
            team,
            "group",
            f"g.{notice.group_id}.{notice.seq}",
            [a.alert_id for a in notice.alerts],
            notice.group_key,
            notice.level,
            lambda lang: self.config.renderer.group(notice, team, lang, now),
        )

    def _dispatch_items(self, event: _Event, team: str, now: datetime) -> list[OutboxItem]:
        # Rendered as firing: the ack link is wanted even when the condition has cleared.
        snap = _snapshot(event.alert, "firing")
        return self._channel_items(
            team,
            "dispatch",
            f"d.{event.id}",
            [event.alert_id],
            None,
            snap.level,
            lambda lang: self.config.renderer.dispatch(snap, team, event.note, lang, now),
        )

    def _escalate(
        self, cur: psycopg.Cursor[Any], silences: Sequence[Silence], now: datetime
    ) -> tuple[list[OutboxItem], bool]:
        policy = self.config.routing.escalation
        due: list[Track] = []
        for track in self._tracks.values():
            stages = policy.get(track.level, ())
            if track.done >= len(stages) or now >= track.since + stages[track.done].after:
                due.append(track)
        if not due:
            return [], False
        cur.execute(
            f"""SELECT {_ALERT_COLUMNS} FROM alerts a
                LEFT JOIN devices d ON d.device_id = a.device_id WHERE a.id = ANY(%s)""",
            ([t.alert_id for t in due],),
        )
        alerts = {int(r["id"]): r for r in cur.fetchall()}
        muted = self._muter(silences, now)
        items: list[OutboxItem] = []
        for track in due:
            alert = alerts.get(track.alert_id)
            if alert is None:
                del self._tracks[track.alert_id]
                continue
            outcome = advance(policy, track, str(alert["handling"]), now)
            if outcome.track is None:
                del self._tracks[track.alert_id]
            else:
                self._tracks[track.alert_id] = outcome.track
            snap = _snapshot(alert, "firing")
            if muted(snap):
                continue  # silenced: the stages pass unannounced
            for step in outcome.steps:
                team = step.after.notify
                render = functools.partial(
                    self.config.renderer.escalation,
                    snap,
                    step,
                    team,
                    str(alert["handling"]),
                    alert["team"],
                    now=now,
                )
                items += self._channel_items(
                    team,
                    "escalation",
                    f"e.{track.alert_id}.{int(step.level)}.{step.stage}",
                    [track.alert_id],
                    None,
                    int(step.level),
                    lambda lang, render=render: render(language=lang),  # type: ignore[misc]
                )
        return items, True

    # --- running --------------------------------------------------------------------

    def run(self) -> None:
        delay = 0.5
        while not self._stop.is_set():
            try:
                self.step()
                self.ready.set()
                delay = 0.5
                self.last_error = None
            except psycopg.Error as exc:
                self.last_error = f"notifier: {exc}"
                log.warning("%s", self.last_error)
                if self._conn is not None:
                    self._conn.close()
                self._stop.wait(delay)
                delay = min(delay * 2, 30)
                continue
            self._stop.wait(self.poll_interval)
        if self._conn is not None:
            self._conn.close()

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="notifier", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
