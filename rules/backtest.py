"""Backtests: replay stored history through a rule set and report what it would have raised.

Pure: readings, events and devices come in as iterables (the shell reads them from the
database), time is the data's own. The replay feeds a fresh `Engine` in time order and
ticks it at a fixed step of data time, so `for` timers, silent devices and event time-outs
behave as they would have live. The summary per rule is a pandas DataFrame.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pandas as pd

from alerts.model import AlertTransition, ConditionState, Level
from devices.model import DeviceEvent, Reading
from rules.config import RuleSet
from rules.derived import HISTORY
from rules.engine import DeviceInfo, Engine, RuleHealth

SUMMARY_COLUMNS = (
    "rule",
    "domain",
    "kind",
    "alerts",
    "escalations",
    "de_escalations",
    "dropped",
    "subjects",
    "max_level",
    "first",
    "last",
    "firing",
    "still_firing",
    "errors",
)
"""Columns of `BacktestResult.summary()`: alerts raised (a firing that opened an alert),
escalations and de-escalations within them, pending alerts dropped before `for` ran out,
distinct devices or areas alerted, the highest level, when the first and the last alert
was raised, the total time alerts were firing (until the end of the range for those still
firing), how many were still firing at the end, and the rule's evaluation errors."""

BATCH = 5000
"""Readings handed to the engine at once, at most (a batch never spans a tick)."""


def warm_seconds(rules: RuleSet, devices: Iterable[DeviceInfo]) -> float:
    """How much history before the range the windows and derived values need."""
    profiles = {d.profile.name for d in devices}
    longest = 0.0
    for name in profiles:
        longest = max([longest, *HISTORY.get(name, {}).values()])
    for rule in rules.rules:
        if not rule.profiles or rule.profiles & profiles:
            longest = max([longest, *rule.window_seconds.values()])
    return longest


@dataclass(frozen=True)
class Episode:
    """One alert from the transition that opened it to the one that ended it."""

    rule: str
    fingerprint: str
    subject: str
    """Device id, `district <name>` or `city`."""
    started: datetime
    ended: datetime | None
    max_level: Level
    escalations: int
    de_escalations: int
    fired: bool
    """False for a pending alert dropped before its `for` ran out."""


@dataclass(frozen=True)
class BacktestResult:
    rules: RuleSet
    start: datetime
    end: datetime
    transitions: tuple[AlertTransition, ...]
    health: dict[str, RuleHealth]
    readings: int
    events: int
    devices: int

    def episodes(self) -> list[Episode]:
        """The alerts, in the order they started."""
        out: list[Episode] = []
        open_: dict[str, dict[str, Any]] = {}
        for t in sorted(self.transitions, key=lambda t: t.at):
            current = open_.get(t.fingerprint)
            if current is None:
                if t.state is ConditionState.RESOLVED:
                    continue  # an alert opened before the range (not in a backtest)
                subject = t.device_id or (f"district {t.district}" if t.district else "city")
                current = open_[t.fingerprint] = {
                    "rule": t.rule,
                    "subject": subject,
                    "started": t.at,
                    "fired_at": None,
                    "max_level": t.level,
                    "up": 0,
                    "down": 0,
                }
            if t.state is ConditionState.FIRING:
                if current["fired_at"] is None:
                    current["fired_at"] = t.at
                elif t.level > t.previous_level:
                    current["up"] += 1
                elif t.level < t.previous_level:
                    current["down"] += 1
                current["max_level"] = max(current["max_level"], t.level)
            elif t.state is ConditionState.RESOLVED:
                out.append(self._episode(t.fingerprint, open_.pop(t.fingerprint), t.at))
        out += [self._episode(fp, c, None) for fp, c in open_.items()]
        return sorted(out, key=lambda e: (e.started, e.rule, e.subject))

    @staticmethod
    def _episode(fingerprint: str, c: dict[str, Any], ended: datetime | None) -> Episode:
        fired = c["fired_at"] is not None
        return Episode(
            rule=c["rule"],
            fingerprint=fingerprint,
            subject=c["subject"],
            started=c["fired_at"] if fired else c["started"],
            ended=ended,
            max_level=c["max_level"],
            escalations=c["up"],
            de_escalations=c["down"],
            fired=fired,
        )

    def summary(self) -> pd.DataFrame:
        """One row per rule of the set (those that raised nothing too), in `SUMMARY_COLUMNS`."""
        rows = [
            {
                "rule": e.rule,
                "subject": e.subject,
                "fired": e.fired,
                "started": e.started,
                "firing_s": ((e.ended or self.end) - e.started).total_seconds() if e.fired else 0.0,
                "open": e.fired and e.ended is None,
                "escalations": e.escalations,
                "de_escalations": e.de_escalations,
                "max_level": int(e.max_level) if e.fired else 0,
            }
            for e in self.episodes()
        ]
        names = [r.name for r in self.rules.rules]
        episodes = pd.DataFrame(
            rows,
            columns=[
                "rule",
                "subject",
                "fired",
                "started",
                "firing_s",
                "open",
                "escalations",
                "de_escalations",
                "max_level",
            ],
        )
        episodes = episodes.astype(
            {"fired": bool, "open": bool, "firing_s": float, "max_level": int}
        )
        fired = episodes.loc[episodes["fired"]]
        grouped = fired.groupby("rule")
        table = pd.DataFrame(index=pd.Index(names, name="rule"))
        table["domain"] = [r.spec.domain for r in self.rules.rules]
        table["kind"] = [r.spec.kind for r in self.rules.rules]
        table["alerts"] = grouped.size().reindex(names, fill_value=0)
        table["escalations"] = grouped["escalations"].sum().reindex(names, fill_value=0)
        table["de_escalations"] = grouped["de_escalations"].sum().reindex(names, fill_value=0)
        dropped = episodes.loc[~episodes["fired"]].groupby("rule").size()
        table["dropped"] = dropped.reindex(names, fill_value=0)
        table["subjects"] = grouped["subject"].nunique().reindex(names, fill_value=0)
        max_level = grouped["max_level"].max().reindex(names, fill_value=0)
        table["max_level"] = [Level(int(v)).label if v else None for v in max_level]
        table["first"] = grouped["started"].min().reindex(names)
        table["last"] = grouped["started"].max().reindex(names)
        firing = grouped["firing_s"].sum().reindex(names, fill_value=0.0)
        table["firing"] = pd.to_timedelta(firing, unit="s")
        table["still_firing"] = grouped["open"].sum().reindex(names, fill_value=0)
        table["errors"] = [self.health[n].errors for n in names]
        for column in ("alerts", "escalations", "de_escalations", "dropped", "subjects"):
            table[column] = table[column].astype(int)
        table["still_firing"] = table["still_firing"].astype(int)
        return table.reset_index()[list(SUMMARY_COLUMNS)]

    def records(self) -> list[dict[str, Any]]:
        """The summary as JSON-ready dicts: ISO times, firing time in seconds."""
        out: list[dict[str, Any]] = []
        for row in self.summary().to_dict(orient="records"):
            record: dict[str, Any] = {}
            for key, value in row.items():
                name = str(key)
                if name == "firing":
                    record["firing_s"] = float(pd.Timedelta(value).total_seconds())
                elif value is None or (not isinstance(value, str) and pd.isna(value)):
                    record[name] = None
                elif name in ("first", "last"):
                    record[name] = pd.Timestamp(value).isoformat()
                elif isinstance(value, bool | int | float | str):
                    record[name] = value
                else:
                    record[name] = int(value) if hasattr(value, "__int__") else str(value)
            last_error = self.health[record["rule"]].last_error
            record["last_error"] = last_error
            out.append(record)
        return out


def _merged(
    readings: Iterable[Reading], events: Iterable[DeviceEvent]
) -> Iterator[Reading | DeviceEvent]:
    """Readings and events by time (each stream is in time order); at one instant,
    readings first."""
    tagged_readings: Iterator[tuple[datetime, int, Reading | DeviceEvent]] = (
        (r.ts, 0, r) for r in readings
    )
    tagged_events: Iterator[tuple[datetime, int, Reading | DeviceEvent]] = (
        (e.ts, 1, e) for e in events
    )
    for _, _, item in heapq.merge(tagged_readings, tagged_events, key=lambda x: (x[0], x[1])):
        yield item


def backtest(
    rules: RuleSet,
    devices: Iterable[DeviceInfo],
    readings: Iterable[Reading],
    events: Iterable[DeviceEvent],
    start: datetime,
    end: datetime,
    *,
    history: Iterable[Reading] = (),
    tick: timedelta = timedelta(minutes=1),
    timezone: str = "Asia/Shanghai",
    progress: Callable[[datetime], None] | None = None,
) -> BacktestResult:
    """Replay `readings` and `events` of [start, end) through a fresh engine.

    Both streams must be in time order (items outside the range are skipped). `history`
    (readings before `start`) warms the windows without raising anything. The engine
    ticks at `start` and every `tick` of data time up to `end`; `progress` is called with
    the data time at every tick.
    """
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("start and end must be timezone-aware")
    if end <= start:
        raise ValueError(f"the range is empty: {start.isoformat()} to {end.isoformat()}")
    if tick <= timedelta(0):
        raise ValueError("tick must be longer than zero")
    devices = list(devices)
    engine = Engine(rules, timezone)
    engine.set_devices(devices)
    engine.warm(history)
    out: list[AlertTransition] = []
    batch: list[Reading] = []
    counts = {"readings": 0, "events": 0}
    next_tick = start

    def flush() -> None:
        if batch:
            out.extend(engine.ingest(batch))
            batch.clear()

    def tick_until(t: datetime, inclusive: bool) -> None:
        nonlocal next_tick
        while next_tick < t or (inclusive and next_tick == t):
            flush()
            out.extend(engine.tick(next_tick))
            if progress is not None:
                progress(next_tick)
            next_tick += tick

    for item in _merged(readings, events):
        if item.ts < start or item.ts >= end:
            continue
        tick_until(item.ts, inclusive=False)
        if isinstance(item, Reading):
            counts["readings"] += 1
            batch.append(item)
            if len(batch) >= BATCH:
                flush()
        else:
            counts["events"] += 1
            flush()
            out.extend(engine.events([item]))
    tick_until(end, inclusive=False)
    flush()
    return BacktestResult(
        rules=rules,
        start=start,
        end=end,
        transitions=tuple(out),
        health=dict(engine.health),
        readings=counts["readings"],
        events=counts["events"],
        devices=len(devices),
    )
