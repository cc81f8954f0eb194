"""The rule engine: readings and events in, alert transitions out.

Pure: time is the readings' own timestamps (so simulated and replayed history
evaluate as they happened) or the `now` given to `tick`. The per-alert state
machine lives in `_advance` alone, in the manner of Prometheus's
`AlertingRule.Eval`: pending → firing (after `for`) → resolved (after the
clear condition held for `clear_for`), with escalation and de-escalation along
a rule's ladder inside one alert. A rule that fails to evaluate is marked
unhealthy with its last error and a counter; the others keep running.
"""

from __future__ import annotations

import bisect
import math
import re
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from operator import itemgetter
from typing import Any
from zoneinfo import ZoneInfo

from alerts.model import AlertTransition, ConditionState, Level
from devices.model import DeviceEvent, Reading
from devices.profile import DeviceProfile
from rules.config import Rule, RuleSet
from rules.derived import COMPUTE, HISTORY, INPUTS, enrich_attributes
from rules.expr import EvalError, MissingValueError, window_aggregate

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def epoch_seconds(t: datetime) -> float:
    return (t - _EPOCH).total_seconds()


def from_epoch(t: float) -> datetime:
    return _EPOCH + timedelta(seconds=t)


@dataclass(frozen=True)
class DeviceInfo:
    device_id: str
    profile: DeviceProfile
    district: str
    name: str = ""
    attributes: Mapping[str, Any] = field(default_factory=dict)


def _add_exact(partials: list[float], x: float) -> None:
    """Add `x` to the exact sum held as non-overlapping `partials` (Shewchuk, as `math.fsum`)."""
    i = 0
    for y in partials:
        if abs(x) < abs(y):
            x, y = y, x
        hi = x + y
        lo = y - (hi - x)
        if lo:
            partials[i] = lo
            i += 1
        x = hi
    partials[i:] = [x]


class _RunningSum:
    """The exact sum of a series' points [first, end) (absolute indices), kept as it slides.

    `math.fsum(partials)` is the correctly rounded sum of exactly those points, so a
    window's sum or mean is bit for bit what `math.fsum` over its points gives.
    """

    __slots__ = ("end", "first", "partials")

    def __init__(self) -> None:
        self.first = self.end = 0
        self.partials: list[float] = []


class Series:
    """A metric's recent (time, value) points in time order, 16 bytes a point.

    Two float arrays with a moving start: appending and dropping the oldest are
    cheap, iteration yields (t, v) pairs oldest first, `reversed` newest first.
    `window` finds a window's points by bisection and keeps a running exact sum per
    window length, so a sliding sum or mean costs the points that enter and leave it,
    not the whole window.
    """

    __slots__ = ("_base", "_start", "_sums", "_ts", "_vs")

    def __init__(self) -> None:
        self._ts = array("d")
        self._vs = array("d")
        self._start = 0
        self._base = 0
        """Points deleted from the arrays' front so far: index i is point _base + i."""
        self._sums: dict[float, _RunningSum] | None = None

    def __len__(self) -> int:
        return len(self._ts) - self._start

    def __iter__(self) -> Iterator[tuple[float, float]]:
        return zip(self._ts[self._start :], self._vs[self._start :], strict=True)

    def __reversed__(self) -> Iterator[tuple[float, float]]:
        ts, vs, start = self._ts, self._vs, self._start
        for i in range(len(ts) - 1, start - 1, -1):
            yield ts[i], vs[i]

    @property
    def last_time(self) -> float | None:
        return self._ts[-1] if len(self) else None

    def add(self, t: float, v: float) -> None:
        if len(self) and t < self._ts[-1]:
            # A late reading: insert it in time order (running sums start again).
            i = bisect.bisect_right(self._ts, t, lo=self._start)
            self._ts.insert(i, t)
            self._vs.insert(i, v)
            self._sums = None
        else:
            self._ts.append(t)
            self._vs.append(v)

    def drop_until(self, horizon: float) -> None:
        """Forget points at or before `horizon`."""
        ts, n = self._ts, len(self._ts)
        start = self._start
        if start < n and ts[start] > horizon:
            return
        start = bisect.bisect_right(ts, horizon, lo=start)
        self._start = start
        if start > 64 and start * 2 > n:
            del self._ts[:start]
            del self._vs[:start]
            self._base += start
            self._start = 0

    def values(self, lo: float, hi: float) -> array[float]:
        """The values of the points in (lo, hi], oldest first."""
        i = bisect.bisect_right(self._ts, lo, self._start)
        return self._vs[i : bisect.bisect_right(self._ts, hi, i)]

    def window(self, func: str, lo: float, now: float) -> float | None:
        """`window_aggregate(func, points)` over the points in (lo, now]."""
        ts = self._ts
        i = bisect.bisect_right(ts, lo, self._start)
        j = bisect.bisect_right(ts, now, i)
        if func == "sum" or func == "avg":
            if i == j:
                return None
            total = self._sum(now - lo, i, j)
            return total if func == "sum" else total / (j - i)
        if func == "count":
            return j - i
        vs = self._vs
        if i == j:
            return None
        if func == "delta":
            return vs[j - 1] - vs[i]
        if func == "rate":
            elapsed = ts[j - 1] - ts[i]
            return None if elapsed <= 0 else (vs[j - 1] - vs[i]) / elapsed * 3600.0
        if func == "min":
            return min(vs[i:j])
        if func == "max":
            return max(vs[i:j])
        return window_aggregate(func, list(zip(ts[i:j], vs[i:j], strict=True)))

    def _sum(self, seconds: float, i: int, j: int) -> float:
        vs, base = self._vs, self._base
        sums = self._sums
        if sums is None:
            sums = self._sums = {}
        run = sums.get(seconds)
        first, end = i + base, j + base
        if (
            run is None
            or run.first < base
            or run.first > first
            or run.end > end
            or (first - run.first) + (end - run.end) > j - i
        ):
            # New, stale, moved back or moved past: sum the window's points afresh.
            run = sums[seconds] = _RunningSum()
            run.first = run.end = first
        partials = run.partials
        for k in range(run.end - base, j):
            _add_exact(partials, vs[k])
        for k in range(run.first - base, i):
            _add_exact(partials, -vs[k])
        run.first, run.end = first, end
        try:
            total = math.fsum(partials)
        except (OverflowError, ValueError):
            total = math.nan
        if not math.isfinite(total):
            # Overflow or a non-finite value: let fsum itself say what it makes of them.
            del sums[seconds]
            return math.fsum(vs[i:j])
        return total


class DeviceState:
    """What the engine remembers of one device: latest values and just enough history."""

    __slots__ = ("history", "info", "keep", "last_seen", "latest")

    def __init__(self, info: DeviceInfo, keep: Mapping[str, float]) -> None:
        self.info = info
        self.keep = keep
        self.latest: dict[str, tuple[float, float]] = {}
        self.history: dict[str, Series] = {m: Series() for m in keep}
        self.last_seen: float | None = None

    def add(self, ts: float, metric: str, value: float) -> None:
        previous = self.latest.get(metric)
        if previous is None or ts >= previous[0]:
            self.latest[metric] = (ts, value)
        if self.last_seen is None or ts > self.last_seen:
            self.last_seen = ts
        history = self.history.get(metric)
        if history is None:
            return
        history.add(ts, value)
        history.drop_until(self.latest[metric][0] - self.keep[metric])

    def add_instant(self, ts: float, metrics: list[str], values: list[float]) -> set[str]:
        """`add` the values of one instant (all at `ts`); the metrics they bring."""
        latest, history, keep = self.latest, self.history, self.keep
        last_seen = self.last_seen
        if last_seen is not None and ts >= last_seen and not history:
            # In order, as nearly always: every value is its metric's newest.
            for metric, value in zip(metrics, values, strict=True):
                latest[metric] = (ts, value)
            self.last_seen = ts
            return set(metrics)
        for metric, value in zip(metrics, values, strict=True):
            previous = latest.get(metric)
            if previous is None or ts >= previous[0]:
                latest[metric] = previous = (ts, value)
            series = history.get(metric)
            if series is not None:
                series.add(ts, value)
                series.drop_until(previous[0] - keep[metric])
        if last_seen is None or ts > last_seen:
            self.last_seen = ts
        return set(metrics)


class _Context:
    """The expression language's view of one device at one instant."""

    __slots__ = ("_clock", "cache", "event", "now", "state", "tz")

    def __init__(
        self, state: DeviceState, now: float, tz: ZoneInfo, event: DeviceEvent | None = None
    ) -> None:
        self.state, self.now, self.tz, self.event = state, now, tz, event
        self.cache: dict[tuple[str, str, float], float | None] = {}
        self._clock: str | None = None

    def value(self, metric: str) -> float | None:
        latest = self.state.latest.get(metric)
        return None if latest is None else latest[1]

    def window(self, metric: str, func: str, seconds: float) -> float | None:
        key = (metric, func, seconds)
        cache = self.cache
        if key in cache:
            return cache[key]
        history = self.state.history.get(metric)
        if history is None:
            value = window_aggregate(func, ())
        else:
            value = history.window(func, self.now - seconds, self.now)
        result = cache[key] = None if value is None else float(value)
        return result

    def attribute(self, name: str) -> Any:
        attributes = self.state.info.attributes
        if name not in attributes:
            raise EvalError(
                f"device {self.state.info.device_id} has no attribute {name!r}; "
                "set it in the registry"
            )
        return attributes[name]

    def device_field(self, name: str) -> Any:
        info = self.state.info
        return {
            "id": info.device_id,
            "district": info.district,
            "profile": info.profile.name,
            "name": info.name,
        }.get(name)

    def event_field(self, name: str) -> Any:
        if self.event is None:
            raise EvalError("this rule is not evaluated on an event")
        return {"type": self.event.type, "code": self.event.code, "detail": self.event.detail}.get(
            name
        )

    def local_time(self) -> datetime:
        return datetime.fromtimestamp(self.now, self.tz)

    def local_clock(self) -> str:
        """Local "HH:MM" (schedules compare it with their hours), worked out once."""
        if self._clock is None:
            self._clock = self.local_time().strftime("%H:%M")
        return self._clock

    def age(self, metric: str) -> float | None:
        latest = self.state.latest.get(metric)
        return None if latest is None else self.now - latest[0]


@dataclass
class AlertState:
    """The condition state of one alert (rule × device, or rule × area)."""

    fingerprint: str
    rule: str
    device_id: str | None
    district: str | None
    state: ConditionState
    level: Level
    since: float
    """When the current state began (pending since, or firing since)."""
    up_level: Level | None = None
    up_since: float | None = None
    down_since: float | None = None
    """Below the current level since (for stepping down the ladder)."""
    resolve_since: float | None = None
    """The clear condition holding since (for resolving)."""
    last_event: float | None = None
    values: dict[str, Any] = field(default_factory=dict)
    parent: str | None = None


@dataclass
class RuleHealth:
    evaluations: int = 0
    errors: int = 0
    last_error: str | None = None
    last_error_at: datetime | None = None

    @property
    def healthy(self) -> bool:
        """A rule that failed for any device is unhealthy until it is reloaded."""
        return self.errors == 0


_TEMPLATE = re.compile(r"\{([a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)?)(?::([^{}]*))?\}")


def render(
    template: str, state: DeviceState | None, level: Level, extra: Mapping[str, Any] | None = None
) -> str:
    """Fill `{metric}`, `{metric:.1f}`, `{attr.x}`, `{device.name}`, `{level}` — nothing else."""

    def lookup(name: str) -> Any:
        if extra and name in extra:
            return extra[name]
        if name == "level":
            return level.label
        if state is None:
            return None
        head, _, tail = name.partition(".")
        if head == "attr" and tail:
            return state.info.attributes.get(tail)
        if head == "device" and tail:
            info = state.info
            return {
                "id": info.device_id,
                "name": info.name or info.device_id,
                "district": info.district,
                "profile": info.profile.name,
            }.get(tail)
        latest = state.latest.get(name)
        return None if latest is None else latest[1]

    def replace(m: re.Match[str]) -> str:
        value = lookup(m.group(1))
        if value is None:
            return "?"
        try:
            return format(value, m.group(2) or "")
        except (ValueError, TypeError):
            return str(value)

    return _TEMPLATE.sub(replace, template)


_METRIC = itemgetter(2)
_VALUE = itemgetter(3)
_Instant = tuple[list[str], list[float]]
"""The metrics and values of one device instant, in the order given."""


def _group_time(item: tuple[tuple[str, float], _Instant]) -> float:
    return item[0][1]


class _RulePlan:
    """Which of a device's rules a device instant evaluates, by the metrics it brings.

    A condition rule is evaluated when the instant brings a metric it reads (or it
    reads none); every no-data rule hears that the device spoke. In the device's
    rule order, so transitions come out as they would rule by rule.
    """

    __slots__ = ("_by_metrics", "rules")

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = tuple(rules)
        self._by_metrics: dict[frozenset[str], tuple[tuple[Rule, bool], ...]] = {}

    def select(self, metrics: set[str]) -> tuple[tuple[Rule, bool], ...]:
        key = frozenset(metrics)
        chosen = self._by_metrics.get(key)
        if chosen is None:
            if len(self._by_metrics) > 256:
                self._by_metrics.clear()  # odd mixes of metrics: keep the cache small
            chosen = self._by_metrics[key] = tuple(
                (rule, rule.spec.kind == "condition")
                for rule in self.rules
                if (rule.spec.kind == "condition" and (not rule.metrics or rule.metrics & key))
                or rule.spec.kind == "no_data"
            )
        return chosen


class Engine:
    def __init__(self, rules: RuleSet, timezone: str = "Asia/Shanghai") -> None:
        self.rules = rules
        self.tz = ZoneInfo(timezone)
        self.devices: dict[str, DeviceState] = {}
        self.alerts: dict[str, AlertState] = {}
        self.health: dict[str, RuleHealth] = {r.name: RuleHealth() for r in rules.rules}
        self.clock: float | None = None
        self._by_device: dict[str, list[Rule]] = {}
        self._plans: dict[str, _RulePlan] = {}
        self._by_kind: dict[str, list[Rule]] = {}
        self._population: dict[tuple[str, str], int] = {}
        for rule in rules.rules:
            self._by_kind.setdefault(rule.spec.kind, []).append(rule)

    def metrics_read(self) -> frozenset[str]:
        """Every metric the engine reads: in conditions, windows, derived values' inputs
        and summaries. Readings of other metrics change no alert; only that the device
        spoke matters (`RuleProcess` hands over just these, and one reading an instant)."""
        names = {metric for kept in HISTORY.values() for metric in kept}
        for rule in self.rules.rules:
            names |= rule.metrics
            names.update(rule.window_seconds)
            for text in (rule.spec.summary, rule.spec.title):
                names.update(m.group(1) for m in _TEMPLATE.finditer(text) if "." not in m.group(1))
        for inputs in INPUTS.values():
            names |= inputs
        return frozenset(names)

    # -- registry ---------------------------------------------------------------------

    def set_devices(self, devices: Iterable[DeviceInfo]) -> None:
        """(Re)load the registry; known devices keep their values and history."""
        # Devices with the same rules share one plan (and its cache).
        plans: dict[tuple[int, ...], _RulePlan] = {}
        for given in devices:
            info = DeviceInfo(
                given.device_id,
                given.profile,
                given.district,
                given.name,
                enrich_attributes(given.profile.name, given.attributes),
            )
            rules = [
                r
                for r in self.rules.rules
                if r.spec.kind != "area"
                and r.applies_to(info.profile, info.district, info.device_id, info.attributes)
            ]
            keep: dict[str, float] = dict(HISTORY.get(info.profile.name, {}))
            for r in rules:
                for metric, seconds in r.window_seconds.items():
                    keep[metric] = max(keep.get(metric, 0.0), seconds)
            old = self.devices.get(info.device_id)
            state = DeviceState(info, keep)
            if old is not None:
                state.latest, state.last_seen = old.latest, old.last_seen
                for metric in keep:
                    state.history[metric] = old.history.get(metric, Series())
            self.devices[info.device_id] = state
            self._by_device[info.device_id] = rules
            same = tuple(id(r) for r in rules)
            plan = plans.get(same)
            if plan is None:
                plan = plans[same] = _RulePlan(rules)
            self._plans[info.device_id] = plan
        # Devices each rule applies to, per district and city-wide (for area rules).
        population: dict[tuple[str, str], int] = {}
        for device_id, rules in self._by_device.items():
            district = self.devices[device_id].info.district
            for rule in rules:
                for key in ((rule.name, district), (rule.name, "*")):
                    population[key] = population.get(key, 0) + 1
        self._population = population

    # -- persistence ------------------------------------------------------------------

    def restore(self, states: Iterable[AlertState]) -> None:
        """Take back pending and firing alerts saved before a restart: not raised again."""
        for st in states:
            self.alerts[st.fingerprint] = st

    def seen(self, device_id: str, at: datetime) -> None:
        """When a device was last heard of before a restart (for no-data rules)."""
        state = self.devices.get(device_id)
        if state is not None:
            t = epoch_seconds(at)
            state.last_seen = t if state.last_seen is None else max(state.last_seen, t)

    # -- input --------------------------------------------------------------------------

    def warm(self, readings: Iterable[Reading]) -> None:
        """Refill values and windows from stored history, without raising anything."""
        for r in readings:
            state = self.devices.get(r.device_id)
            if state is not None:
                state.add(epoch_seconds(r.ts), r.metric, r.value)

    def ingest(self, readings: Sequence[Reading]) -> list[AlertTransition]:
        """Evaluate the device rules on new readings, instant by instant, per device."""
        groups: dict[tuple[str, float], list[Reading]] = {}
        # The ingest hands the readings of one device instant over together, sharing
        # one datetime: group runs, and convert each distinct time once.
        seconds_of: dict[datetime, float] = {}
        run_device: str | None = None
        run_ts: datetime | None = None
        run: list[Reading] = []
        for r in readings:
            if r.ts is run_ts and r.device_id is run_device:
                run.append(r)
                continue
            run_device, run_ts = r.device_id, r.ts
            t = seconds_of.get(run_ts)
            if t is None:
                t = seconds_of[run_ts] = epoch_seconds(run_ts)
            run = groups.setdefault((run_device, t), [])
            run.append(r)
        return self._ingest_instants(
            {
                key: (list(map(_METRIC, group)), list(map(_VALUE, group)))
                for key, group in groups.items()
            }
        )

    def ingest_runs(
        self, runs: Iterable[tuple[str, float, list[str], list[float]]]
    ) -> list[AlertTransition]:
        """`ingest` of readings given as runs: (device_id, epoch seconds, metrics, values).

        The same evaluation as `ingest` of the same readings in the same order (runs of
        one device and time are merged as `ingest` groups readings); the rule process
        decodes its chunks straight into runs.
        """
        groups: dict[tuple[str, float], _Instant] = {}
        for device_id, t, metrics, values in runs:
            group = groups.get((device_id, t))
            if group is None:
                groups[device_id, t] = (metrics, values)
            else:
                group[0].extend(metrics)
                group[1].extend(values)
        return self._ingest_instants(groups)

    def _ingest_instants(self, groups: dict[tuple[str, float], _Instant]) -> list[AlertTransition]:
        out: list[AlertTransition] = []
        touched_districts: set[str] = set()
        devices, plans, tz = self.devices, self._plans, self.tz
        clock = self.clock
        for (device_id, ts), (names, values) in sorted(groups.items(), key=_group_time):
            state = devices.get(device_id)
            if state is None:
                continue
            metrics = state.add_instant(ts, names, values)
            if clock is None or ts > clock:
                clock = self.clock = ts
            # One context per device instant: window results are shared by every rule.
            ctx = _Context(state, ts, tz)
            info = state.info
            derive = COMPUTE.get(info.profile.name)
            if derive is not None:
                for name, value in derive(ctx, ts, info.attributes, metrics).items():
                    state.add(ts, name, value)
                    metrics.add(name)
            plan = plans.get(device_id)
            if plan is None:
                continue
            before = len(out)
            for rule, condition in plan.select(metrics):
                if condition:
                    self._evaluate(rule, state, ts, out, ctx)
                else:
                    self._no_data_back(rule, state, ts, out)
            if len(out) > before:
                touched_districts.add(info.district)
        out += self._areas(touched_districts, self.clock)
        return out

    def events(self, events: Sequence[DeviceEvent]) -> list[AlertTransition]:
        out: list[AlertTransition] = []
        touched: set[str] = set()
        for e in sorted(events, key=lambda e: e.ts):
            state = self.devices.get(e.device_id)
            if state is None:
                continue
            t = epoch_seconds(e.ts)
            self.clock = t if self.clock is None else max(self.clock, t)
            for rule in self._by_device.get(e.device_id, ()):
                if rule.spec.kind != "event":
                    continue
                fp = f"{rule.name}:{e.device_id}"
                current = self.alerts.get(fp)
                if e.type in rule.spec.events:
                    if current is None:
                        level = rule.spec.level or Level.RED
                        st = AlertState(
                            fp,
                            rule.name,
                            e.device_id,
                            state.info.district,
                            ConditionState.FIRING,
                            level,
                            t,
                            last_event=t,
                            values={"event": e.type, "code": e.code, **e.detail},
                        )
                        self.alerts[fp] = st
                        out.append(self._transition(rule, st, Level.NORMAL, t, state))
                        touched.add(state.info.district)
                    else:
                        current.last_event = t
                elif current is not None and e.type in rule.spec.resolve_on:
                    out.append(self._resolve(rule, current, t, state))
                    touched.add(state.info.district)
        out += self._areas(touched, self.clock)
        return out

    def tick(self, now: datetime) -> list[AlertTransition]:
        """Time passing: `for` timers, silent devices, event alerts that time out."""
        t = epoch_seconds(now)
        self.clock = t if self.clock is None else max(self.clock, t)
        out: list[AlertTransition] = []
        touched: set[str] = set()
        rules = self.rules.by_name()
        for st in list(self.alerts.values()):
            rule = rules.get(st.rule)
            if rule is None or st.device_id is None:
                continue
            state = self.devices.get(st.device_id)
            if state is None:
                continue
            before = len(out)
            if rule.spec.kind == "condition" and st.state is ConditionState.PENDING:
                if t - st.since >= rule.spec.for_.total_seconds():
                    self._evaluate(rule, state, t, out)
            elif (
                rule.spec.kind == "event"
                and rule.spec.resolve_after is not None
                and st.last_event is not None
                and t - st.last_event >= rule.spec.resolve_after.total_seconds()
            ):
                out.append(self._resolve(rule, st, t, state))
            if len(out) > before:
                touched.add(state.info.district)
        for rule in self._by_kind.get("no_data", ()):
            for device_id, rs in self._by_device.items():
                if rule not in rs:
                    continue
                state = self.devices[device_id]
                if self._no_data(rule, state, t, out):
                    touched.add(state.info.district)
        out += self._areas(touched, t)
        return out

    # -- the state machine ----------------------------------------------------------------

    def _fail(self, rule: Rule, state: DeviceState | None, t: float, exc: Exception) -> None:
        health = self.health[rule.name]
        health.errors += 1
        where = f" on device {state.info.device_id}" if state is not None else ""
        health.last_error = f"{rule.source}: {rule.name}{where}: {exc}"
        health.last_error_at = from_epoch(t)

    @staticmethod
    def _scheduled_out(rule: Rule, ctx: _Context) -> bool:
        """True outside the rule's active hours (local time; windows may wrap midnight)."""
        active = rule.spec.active
        if active is None:
            return False
        local = ctx.local_clock()
        start, end = active.between
        inside = start <= local < end if start <= end else (local >= start or local < end)
        return not inside

    def _level_now(self, rule: Rule, ctx: _Context) -> Level | None:
        if self._scheduled_out(rule, ctx):
            return None
        level: Level | None = None
        for rung in rule.rungs:
            if rung.when.evaluate(ctx):
                level = rung.level
        return level

    def _evaluate(
        self,
        rule: Rule,
        state: DeviceState,
        t: float,
        out: list[AlertTransition],
        ctx: _Context | None = None,
    ) -> None:
        if ctx is None:
            ctx = _Context(state, t, self.tz)
        health = self.health[rule.name]
        health.evaluations += 1
        fp = f"{rule.name}:{state.info.device_id}"
        st = self.alerts.get(fp)
        try:
            level = self._level_now(rule, ctx)
            clear_ok = self._clear_ok(rule, st, level, ctx)
        except MissingValueError:
            return  # no data for it yet: nothing to decide, and nothing wrong with the rule
        except EvalError as exc:
            self._fail(rule, state, t, exc)
            return
        self._advance(rule, state, fp, st, level, clear_ok, t, out)

    def _clear_ok(
        self, rule: Rule, st: AlertState | None, level: Level | None, ctx: _Context
    ) -> bool:
        """Whether the alert may step down from its current level (hysteresis)."""
        if st is None or st.state is not ConditionState.FIRING:
            return True
        if self._scheduled_out(rule, ctx):
            return True  # the rule's hours are over: its alert ends, whatever the value
        if level is None and rule.clear is not None:
            return bool(rule.clear.evaluate(ctx))
        rung = next((r for r in rule.rungs if r.level == st.level), None)
        if rung is not None and rung.clear is not None:
            return bool(rung.clear.evaluate(ctx))
        return True

    def _advance(
        self,
        rule: Rule,
        state: DeviceState,
        fp: str,
        st: AlertState | None,
        level: Level | None,
        clear_ok: bool,
        t: float,
        out: list[AlertTransition],
    ) -> None:
        if st is None and level is None:
            return
        hold = rule.spec.for_.total_seconds()
        clear_for = rule.spec.clear_for.total_seconds()
        if st is None:
            if level is None:
                return
            st = AlertState(
                fp,
                rule.name,
                state.info.device_id,
                state.info.district,
                ConditionState.PENDING,
                level,
                t,
            )
            self.alerts[fp] = st
            if hold > 0:
                out.append(self._transition(rule, st, Level.NORMAL, t, state))
                return
        if st.state is ConditionState.PENDING:
            if level is None:
                # Never fired: the pending alert ends (the alerts service shows nothing).
                out.append(self._resolve(rule, st, t, state))
                return
            st.level = level
            if t - st.since >= hold:
                st.state, st.since = ConditionState.FIRING, t
                out.append(self._transition(rule, st, Level.NORMAL, t, state))
            return
        # Firing.
        if level is not None and level > st.level:
            st.down_since = st.resolve_since = None
            if st.up_level != level:
                st.up_level, st.up_since = level, t
            assert st.up_since is not None
            if t - st.up_since >= hold:
                previous, st.level = st.level, level
                st.up_level = st.up_since = None
                out.append(self._transition(rule, st, previous, t, state))
            return
        st.up_level = st.up_since = None
        if level == st.level:
            st.down_since = st.resolve_since = None
            return
        # Resolving: the rule's clear condition (default: no rung holds) has held for
        # clear_for, counted from when it began to hold.
        if level is None and clear_ok:
            if st.resolve_since is None:
                st.resolve_since = t
            if t - st.resolve_since >= clear_for:
                out.append(self._resolve(rule, st, t, state))
            return  # on its way out: no step down the ladder first
        st.resolve_since = None
        # Stepping down the ladder: below the current level for clear_for (and the rung's
        # own clear, if it has one). In the hysteresis band the lowest rung holds.
        target = level if level is not None else rule.rungs[0].level
        if target >= st.level or (level is not None and not clear_ok):
            st.down_since = None
            return
        if st.down_since is None:
            st.down_since = t
        if t - st.down_since >= clear_for:
            previous, st.level, st.down_since = st.level, target, None
            out.append(self._transition(rule, st, previous, t, state))

    def _resolve(
        self, rule: Rule, st: AlertState, t: float, state: DeviceState | None
    ) -> AlertTransition:
        self.alerts.pop(st.fingerprint, None)
        previous = st.level
        st.state = ConditionState.RESOLVED
        return self._transition(rule, st, previous, t, state)

    def _transition(
        self, rule: Rule, st: AlertState, previous: Level, t: float, state: DeviceState | None
    ) -> AlertTransition:
        values = dict(st.values)
        if state is not None:
            for metric in sorted(rule.metrics):
                latest = state.latest.get(metric)
                if latest is not None:
                    values[metric] = latest[1]
        st.values = values
        level = st.level
        summary = render(rule.spec.summary or rule.spec.title or rule.name, state, level, values)
        return AlertTransition(
            fingerprint=st.fingerprint,
            rule=rule.name,
            domain=rule.spec.domain,
            state=st.state,
            level=level,
            previous_level=previous,
            at=from_epoch(t),
            device_id=st.device_id,
            district=st.district,
            summary=summary,
            labels=dict(rule.spec.labels),
            values=values,
            parent=st.parent,
        )

    # -- silence ----------------------------------------------------------------------------

    def _silent_after(self, rule: Rule, state: DeviceState) -> float:
        assert rule.spec.no_data is not None
        return rule.spec.no_data * state.info.profile.reporting_interval.total_seconds()

    def _no_data(
        self, rule: Rule, state: DeviceState, t: float, out: list[AlertTransition]
    ) -> bool:
        if state.last_seen is None:
            state.last_seen = t  # first heard of now: give it its full interval
            return False
        fp = f"{rule.name}:{state.info.device_id}"
        if fp in self.alerts or t - state.last_seen < self._silent_after(rule, state):
            return False
        level = rule.spec.level or Level.BLUE
        st = AlertState(
            fp,
            rule.name,
            state.info.device_id,
            state.info.district,
            ConditionState.FIRING,
            level,
            t,
            values={"silent_s": round(t - state.last_seen)},
        )
        self.alerts[fp] = st
        out.append(self._transition(rule, st, Level.NORMAL, t, state))
        return True

    def _no_data_back(
        self, rule: Rule, state: DeviceState, t: float, out: list[AlertTransition]
    ) -> None:
        st = self.alerts.get(f"{rule.name}:{state.info.device_id}")
        if st is not None:
            out.append(self._resolve(rule, st, t, state))

    # -- areas --------------------------------------------------------------------------------

    def _areas(self, districts: set[str], now: float | None) -> list[AlertTransition]:
        out: list[AlertTransition] = []
        if now is None or not districts:
            return out
        for rule in self._by_kind.get("area", ()):
            spec = rule.spec
            assert spec.member is not None
            scopes = sorted(districts) if spec.area == "district" else ["*"]
            for district in scopes:
                firing = [
                    st
                    for st in self.alerts.values()
                    if st.rule == spec.member
                    and st.state is ConditionState.FIRING
                    and (district == "*" or st.district == district)
                ]
                fp = f"{rule.name}:{spec.area}:{district}"
                st = self.alerts.get(fp)
                # `within` bounds how close together the members must start to raise the
                # area alert; once raised, it holds while enough members still fire.
                members = (
                    firing
                    if st is not None or spec.within is None
                    else [m for m in firing if now - m.since <= spec.within.total_seconds()]
                )
                population = self._population.get((spec.member, district), 0)
                holds = (
                    len(members) >= spec.count
                    if spec.count is not None
                    else population > 0 and len(members) / population >= (spec.share or 1)
                )
                level = spec.level or Level.ORANGE
                values = {
                    "members": len(members),
                    "devices": population,
                    "member_alerts": sorted(m.fingerprint for m in members),
                }
                if holds and st is None:
                    st = AlertState(
                        fp,
                        rule.name,
                        None,
                        None if district == "*" else district,
                        ConditionState.FIRING,
                        level,
                        now,
                        values=values,
                    )
                    self.alerts[fp] = st
                    for m in members:
                        m.parent = fp
                    out.append(self._transition(rule, st, Level.NORMAL, now, None))
                elif holds and st is not None:
                    for m in members:
                        m.parent = fp
                elif not holds and st is not None:
                    st.values = values
                    out.append(self._resolve(rule, st, now, None))
        return out
