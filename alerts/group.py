"""Grouping: many alerts, few messages (Alertmanager's aggregation groups).

Alerts that a route takes are grouped by the route and the values of its
`group_by` names. A new group waits `group_wait` before its first message (so a
storm arrives as one message), then sends an update at most every
`group_interval` when its alerts changed (new, re-levelled or resolved), and
repeats an unchanged firing group every `repeat_interval`. A group whose alerts
have all resolved sends a resolved notice and ends.

Pure: every call takes `now`; the state is plain data that `to_json` /
`from_json` carry across restarts.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from alerts.route import Route


class NoticeKind(enum.StrEnum):
    FIRING = "firing"
    """The group's first message."""
    UPDATE = "update"
    """Alerts were added, changed level or resolved since the last message."""
    REPEAT = "repeat"
    """Nothing changed, the alerts still fire: a reminder."""
    RESOLVED = "resolved"
    """Every alert of the group has resolved; the group ends."""


@dataclass(frozen=True, slots=True)
class AlertSnapshot:
    """What a message says about one alert."""

    alert_id: int
    state: str
    """firing or resolved"""
    level: int
    rule: str
    domain: str
    district: str | None
    device_id: str | None
    summary: str
    started_at: str
    """ISO 8601, as stored."""
    labels: Mapping[str, str] = field(default_factory=dict)
    values: Mapping[str, Any] = field(default_factory=dict)
    device_name: str | None = None
    lat: float | None = None
    lon: float | None = None

    @property
    def firing(self) -> bool:
        return self.state == "firing"

    def to_json(self) -> dict[str, Any]:
        return {
            "alert_id": self.alert_id,
            "state": self.state,
            "level": self.level,
            "rule": self.rule,
            "domain": self.domain,
            "district": self.district,
            "device_id": self.device_id,
            "summary": self.summary,
            "started_at": self.started_at,
            "labels": dict(self.labels),
            "values": dict(self.values),
            "device_name": self.device_name,
            "lat": self.lat,
            "lon": self.lon,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AlertSnapshot:
        return cls(
            int(data["alert_id"]),
            str(data["state"]),
            int(data["level"]),
            str(data["rule"]),
            str(data["domain"]),
            data.get("district"),
            data.get("device_id"),
            str(data.get("summary", "")),
            str(data.get("started_at", "")),
            dict(data.get("labels") or {}),
            dict(data.get("values") or {}),
            data.get("device_name"),
            data.get("lat"),
            data.get("lon"),
        )


@dataclass(frozen=True, slots=True)
class GroupNotice:
    """One message a group sends; `seq` counts the group's messages from 1."""

    group_key: str
    group_id: str
    """Short, stable identity of this group's life (key hash + creation time)."""
    route_id: str
    receiver: str
    labels: Mapping[str, str]
    kind: NoticeKind
    seq: int
    alerts: tuple[AlertSnapshot, ...]
    """Firing alerts first (highest level first), then those resolved since the last message."""
    new: frozenset[int]
    """Alerts that were not in the previous message."""

    @property
    def firing(self) -> tuple[AlertSnapshot, ...]:
        return tuple(a for a in self.alerts if a.firing)

    @property
    def resolved(self) -> tuple[AlertSnapshot, ...]:
        return tuple(a for a in self.alerts if not a.firing)

    @property
    def level(self) -> int:
        return max((a.level for a in self.firing), default=max(a.level for a in self.alerts))


@dataclass(slots=True)
class Group:
    key: str
    route_id: str
    receiver: str
    labels: dict[str, str]
    created_at: datetime
    group_wait: timedelta
    group_interval: timedelta
    repeat_interval: timedelta
    next_flush: datetime
    alerts: dict[int, AlertSnapshot] = field(default_factory=dict)
    sent: dict[int, tuple[str, int]] = field(default_factory=dict)
    """What the last message said: alert id → (state, level)."""
    last_sent_at: datetime | None = None
    seq: int = 0

    @property
    def id(self) -> str:
        digest = hashlib.sha256(self.key.encode("utf-8")).hexdigest()[:16]
        return f"{digest}-{int(self.created_at.timestamp() * 1000)}"


def group_key(route: Route, attributes: Mapping[str, str]) -> tuple[str, dict[str, str]]:
    labels = dict(route.group_labels(attributes))
    return route.id + "|" + ",".join(f"{k}={v}" for k, v in labels.items()), labels


def _order(alerts: Iterable[AlertSnapshot]) -> tuple[AlertSnapshot, ...]:
    return tuple(sorted(alerts, key=lambda a: (not a.firing, -a.level, a.started_at, a.alert_id)))


class Grouper:
    """All open groups. Not thread-safe: one notifier owns it."""

    def __init__(self) -> None:
        self.groups: dict[str, Group] = {}

    def __len__(self) -> int:
        return len(self.groups)

    def add(
        self, route: Route, attributes: Mapping[str, str], alert: AlertSnapshot, now: datetime
    ) -> Group | None:
        """Put a firing alert into its group, or record its new state there.

        A resolved alert that its group never reported is dropped quietly (it
        fired and cleared inside the wait); one the group does not hold is ignored.
        Returns the group, or None when nothing was recorded.
        """
        key, labels = group_key(route, attributes)
        group = self.groups.get(key)
        if group is None:
            if not alert.firing:
                return None
            group = Group(
                key,
                route.id,
                route.receiver,
                labels,
                now,
                route.group_wait,
                route.group_interval,
                route.repeat_interval,
                next_flush=now + route.group_wait,
            )
            self.groups[key] = group
        return group if self._put(group, alert, now) else None

    def resolve(self, alert: AlertSnapshot, now: datetime) -> int:
        """Record a resolved alert in every group that holds it; returns how many."""
        held = [g for g in self.groups.values() if alert.alert_id in g.alerts]
        for group in held:
            self._put(group, alert, now)
        return len(held)

    def drop(self, alert_id: int, now: datetime) -> int:
        """Forget an alert (it was closed): the groups that reported it send an update
        without it at their next interval; a group left empty ends quietly."""
        held = [g for g in self.groups.values() if alert_id in g.alerts]
        for group in held:
            del group.alerts[alert_id]
            if not group.alerts:
                del self.groups[group.key]
            elif alert_id in group.sent and group.last_sent_at is not None:
                soonest = max(now, group.last_sent_at + group.group_interval)
                group.next_flush = min(group.next_flush, soonest)
        return len(held)

    def _put(self, group: Group, alert: AlertSnapshot, now: datetime) -> bool:
        if not alert.firing:
            if alert.alert_id not in group.alerts:
                return False
            if alert.alert_id not in group.sent:
                del group.alerts[alert.alert_id]
                if not group.alerts and group.last_sent_at is None:
                    del self.groups[group.key]
                return True
        group.alerts[alert.alert_id] = alert
        if group.last_sent_at is not None:
            soonest = max(now, group.last_sent_at + group.group_interval)
            group.next_flush = min(group.next_flush, soonest)
        return True

    def unsent(self) -> int:
        """Groups holding changes their last message did not carry (silences aside)."""
        return sum(
            1
            for g in list(self.groups.values())
            if {i: (a.state, a.level) for i, a in list(g.alerts.items())} != g.sent
        )

    def next_due(self) -> datetime | None:
        return min((g.next_flush for g in self.groups.values()), default=None)

    def flush(
        self, now: datetime, muted: Callable[[AlertSnapshot], bool] | None = None
    ) -> list[GroupNotice]:
        """Messages of every group due at `now`; muted (silenced) alerts are left out."""
        out: list[GroupNotice] = []
        for key in sorted(k for k, g in self.groups.items() if g.next_flush <= now):
            group = self.groups[key]
            shown = {i: a for i, a in group.alerts.items() if muted is None or not muted(a)}
            # A silenced alert that resolves is forgotten: it was not notified, or
            # its silence began after, and the operator chose quiet.
            for i, a in list(group.alerts.items()):
                if i not in shown and not a.firing:
                    del group.alerts[i]
            reported = {i: (a.state, a.level) for i, a in shown.items()}
            changed = reported != group.sent
            firing = [a for a in shown.values() if a.firing]
            repeat_due = (
                group.last_sent_at is not None and now >= group.last_sent_at + group.repeat_interval
            )
            if not shown and group.last_sent_at is None:
                if not group.alerts:
                    del self.groups[key]
                else:
                    group.next_flush = now + group.group_interval
                continue
            if changed or (firing and repeat_due):
                if not firing:
                    kind = NoticeKind.RESOLVED
                elif group.last_sent_at is None:
                    kind = NoticeKind.FIRING
                elif changed:
                    kind = NoticeKind.UPDATE
                else:
                    kind = NoticeKind.REPEAT
                if kind is NoticeKind.RESOLVED and not group.sent:
                    pass  # never announced: nothing to resolve
                else:
                    group.seq += 1
                    out.append(
                        GroupNotice(
                            key,
                            group.id,
                            group.route_id,
                            group.receiver,
                            dict(group.labels),
                            kind,
                            group.seq,
                            _order(shown.values()),
                            frozenset(i for i in shown if i not in group.sent),
                        )
                    )
                    group.last_sent_at = now
                group.sent = {i: (a.state, a.level) for i, a in shown.items() if a.firing}
                for i, a in shown.items():
                    if not a.firing:
                        del group.alerts[i]
            if not group.alerts:
                del self.groups[key]
                continue
            base = group.last_sent_at or now
            group.next_flush = max(now, base + group.repeat_interval)
            if any(i not in shown for i in group.alerts):
                # Silenced alerts: look again each interval, so an ended silence is noticed.
                group.next_flush = min(group.next_flush, now + group.group_interval)
        return out

    # --- persistence ---------------------------------------------------------------

    def to_json(self) -> list[dict[str, Any]]:
        return [
            {
                "key": g.key,
                "route_id": g.route_id,
                "receiver": g.receiver,
                "labels": g.labels,
                "created_at": g.created_at.isoformat(),
                "group_wait": g.group_wait.total_seconds(),
                "group_interval": g.group_interval.total_seconds(),
                "repeat_interval": g.repeat_interval.total_seconds(),
                "next_flush": g.next_flush.isoformat(),
                "alerts": [a.to_json() for a in g.alerts.values()],
                "sent": [[i, s, lv] for i, (s, lv) in g.sent.items()],
                "last_sent_at": g.last_sent_at.isoformat() if g.last_sent_at else None,
                "seq": g.seq,
            }
            for g in self.groups.values()
        ]

    @classmethod
    def from_json(cls, data: Iterable[Mapping[str, Any]]) -> Grouper:
        grouper = cls()
        for d in data:
            alerts = [AlertSnapshot.from_json(a) for a in d["alerts"]]
            grouper.groups[d["key"]] = Group(
                d["key"],
                d["route_id"],
                d["receiver"],
                dict(d["labels"]),
                datetime.fromisoformat(d["created_at"]),
                timedelta(seconds=d["group_wait"]),
                timedelta(seconds=d["group_interval"]),
                timedelta(seconds=d["repeat_interval"]),
                datetime.fromisoformat(d["next_flush"]),
                {a.alert_id: a for a in alerts},
                {int(i): (str(s), int(lv)) for i, s, lv in d["sent"]},
                datetime.fromisoformat(d["last_sent_at"]) if d["last_sent_at"] else None,
                int(d["seq"]),
            )
        return grouper

    def retime(self, routes: Mapping[str, Route]) -> None:
        """Take the timers of a reloaded routing file for the groups whose route still exists."""
        for g in self.groups.values():
            r = routes.get(g.route_id)
            if r is not None:
                g.group_wait, g.group_interval = r.group_wait, r.group_interval
                g.repeat_interval = r.repeat_interval
