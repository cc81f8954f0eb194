"""Rule unit tests: YAML files in the manner of `promtool test rules`.

A test file names the rule files under test (default: the built-in library and the
profiles' rules), the devices, and tests. Each test feeds series of readings (and device
events) through a fresh `Engine` with a fake clock — the readings' own timestamps, and
`tick`s at a fixed interval when asked — and compares the alert transitions that come out
with the expected ones, or the set of firing alerts at given instants. Pure: no database,
no broker, no wall clock. `rules/README.md` documents the format; `cityvitals rules test`
runs it.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError, model_validator

from alerts.model import AlertTransition, ConditionState, Level
from devices.durations import format_duration, parse_duration
from devices.errors import ProfileError
from devices.model import DeviceEvent, Reading
from devices.profile import DeviceProfile, load_profiles
from rules.config import Rule, RuleError, RuleSet, load_rule_file, load_rules
from rules.engine import DeviceInfo, Engine

LIBRARY_TEST_DIR = Path(__file__).parent / "library" / "tests"
"""Rule tests of the built-in library (`rules/library/*.yaml`)."""

LINE_KEY = "__line__"


class RuleTestError(ValueError):
    """A rule test file or one of its tests is invalid; the message names file, line, test."""


class SeriesError(ValueError):
    """A `values` string is not in the expanding notation."""


# --- YAML with line numbers -------------------------------------------------------------------


class _LineLoader(yaml.SafeLoader):
    """Records the line of every mapping under `LINE_KEY`, for error messages."""


def _mapping_with_line(loader: _LineLoader, node: yaml.MappingNode) -> dict[str, Any]:
    mapping = {str(k): v for k, v in loader.construct_mapping(node, deep=True).items()}
    mapping[LINE_KEY] = node.start_mark.line + 1
    return mapping


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_with_line)


def load_yaml_with_lines(path: Path) -> Any:
    """The YAML document at `path`, each mapping carrying its line under `LINE_KEY`.

    Raises OSError, UnicodeDecodeError or yaml.YAMLError.
    """
    return yaml.load(path.read_text(encoding="utf-8"), Loader=_LineLoader)


def describe_yaml_error(path: Path, exc: Exception, what: str) -> str:
    """`file:line:col: not valid YAML: problem` for a parse error, else `file: cannot read`."""
    mark = getattr(exc, "problem_mark", None)
    if isinstance(exc, yaml.YAMLError) and mark is not None:
        problem = getattr(exc, "problem", None) or str(exc)
        return f"{path}:{mark.line + 1}:{mark.column + 1}: not valid YAML: {problem}"
    return f"{path}: cannot read the {what}: {exc}"


def strip_lines(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: strip_lines(v) for k, v in value.items() if k != LINE_KEY}
    if isinstance(value, list):
        return [strip_lines(v) for v in value]
    return value


def _line_at(raw: Any, loc: Sequence[int | str]) -> int | None:
    """The line of the innermost mapping on the path `loc` into `raw`."""
    line = raw.get(LINE_KEY) if isinstance(raw, dict) else None
    node = raw
    for key in loc:
        in_dict = isinstance(node, dict) and key in node
        in_list = isinstance(node, list) and isinstance(key, int) and 0 <= key < len(node)
        if not (in_dict or in_list):
            break
        node = node[key]
        if isinstance(node, dict) and LINE_KEY in node:
            line = node[LINE_KEY]
    return line if isinstance(line, int) else None


# --- series: promtool's expanding notation ----------------------------------------------------

_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_TERM = re.compile(
    rf"^(?P<start>{_NUMBER})(?:(?P<op>[-+])(?P<step>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?))?"
    r"(?:x(?P<times>\d+))?$"
)
_WORD = re.compile(r"^(?P<word>[A-Za-z_][A-Za-z0-9_]*?)(?:x(?P<times>\d+))?$")
_MAX_SAMPLES = 1_000_000


def _decimals(text: str) -> int:
    try:
        exponent = Decimal(text).as_tuple().exponent
    except InvalidOperation:  # pragma: no cover - the regex admits only numbers
        return 12
    return max(0, -exponent) if isinstance(exponent, int) else 12


def expand_series(text: str, words: Mapping[str, float] | None = None) -> list[float | None]:
    """Expand promtool's notation into one value per interval; None is a missing sample.

    - `a` is one value; `a+bxn` is `a a+b … a+n*b` and `a-bxn` counts down (n + 1 values);
      `axn` is `a` n + 1 times (`a+0xn`);
    - `_` is a missing sample (the device sent nothing that interval), `_xn` is n of them;
    - `true` / `false`, and the words of `words` (an enum metric's), stand for their
      numbers, and may repeat like numbers (`runningx3`).

    Increments are rounded to the decimals written, so `4.2+0.1x3` ends at 4.5, not
    4.500000000000001.
    """
    lookup = {"true": 1.0, "false": 0.0, **(words or {})}
    out: list[float | None] = []
    for token in text.split():
        if token == "_":
            out.append(None)
            continue
        if token.startswith("_x") and token[2:].isdigit():
            out.extend([None] * min(int(token[2:]), _MAX_SAMPLES + 1))
            continue
        m = _TERM.match(token)
        if m is not None:
            start = float(m.group("start"))
            times = int(m.group("times") or 0)
            if times > _MAX_SAMPLES:
                raise SeriesError(f"{token!r}: more than {_MAX_SAMPLES} samples")
            if m.group("step") is None:
                out.extend([start] * (times + 1))
                continue
            if m.group("times") is None:
                raise SeriesError(f"{token!r}: an increment needs a count, as in 1+0.5x4")
            step = float(m.group("step")) * (-1 if m.group("op") == "-" else 1)
            digits = max(_decimals(m.group("start")), _decimals(m.group("step")))
            out.extend(round(start + i * step, digits) for i in range(times + 1))
            continue
        w = _WORD.match(token)
        if w is not None and w.group("word") in lookup:
            times = min(int(w.group("times") or 0), _MAX_SAMPLES)
            out.extend([lookup[w.group("word")]] * (times + 1))
            continue
        known = ", ".join(sorted(lookup))
        raise SeriesError(
            f"{token!r} is not a value; write numbers (3.5), a+bxn (1+0.5x4), axn (3x6), "
            f"_ for a missing sample, or one of: {known}"
        )
    if len(out) > _MAX_SAMPLES:
        raise SeriesError(f"more than {_MAX_SAMPLES} samples")
    for v in out:
        if v is not None and not math.isfinite(v):
            raise SeriesError(f"{v} is not a finite number")
    return out


# --- the file format --------------------------------------------------------------------------


def _duration(value: Any) -> timedelta:
    return value if isinstance(value, timedelta) else parse_duration(value)


def _aware(value: Any) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value.strip())
    if isinstance(value, date) and not isinstance(value, datetime):
        raise ValueError(f"{value} is a date; give a time with its UTC offset")
    if not isinstance(value, datetime):
        raise ValueError(f"{value!r} is not a timestamp such as 2026-07-20T12:00:00+08:00")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{value} has no UTC offset; write e.g. 2026-07-20T12:00:00+08:00")
    return value


def _offset(value: Any) -> timedelta | datetime:
    """A duration after the test's start (`10m`, `1h30m`), or an absolute timestamp."""
    if isinstance(value, timedelta | datetime):
        return _aware(value) if isinstance(value, datetime) else value
    if isinstance(value, str):
        try:
            return parse_duration(value)
        except ValueError:
            pass
        try:
            return _aware(value)
        except ValueError:
            raise ValueError(
                f"{value!r} is neither a duration after the start (10m, 1h30m) nor a "
                "timestamp with its UTC offset"
            ) from None
    return parse_duration(value)


Duration = Annotated[timedelta, BeforeValidator(_duration)]
Offset = Annotated[timedelta | datetime, BeforeValidator(_offset)]
Timestamp = Annotated[datetime, BeforeValidator(_aware)]
LevelField = Annotated[Level, BeforeValidator(Level.parse)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DeviceSpec(_Model):
    id: str
    profile: str
    district: str = "d01"
    name: str = ""
    attributes: dict[str, Any] = {}


class SeriesSpec(_Model):
    device: str
    metric: str
    values: str | list[float | str | None]
    interval: Duration | None = None
    """Default: the device profile's reporting interval."""
    at: Offset = timedelta(0)
    """When the first value is read."""


class EventSpec(_Model):
    device: str
    at: Offset
    type: str
    code: int | None = None
    """Default: the code of the event type in the device's profile."""
    detail: dict[str, Any] = {}


class ExpectedTransition(_Model):
    at: Offset
    alert: str
    device: str | None = None
    """Absent for an area alert; then `district` names the district (absent: the city)."""
    district: str | None = None
    state: Literal["pending", "firing", "resolved"] = "firing"
    level: LevelField
    previous: LevelField | None = None
    summary: str | None = None
    values: dict[str, Any] | None = None
    labels: dict[str, str] | None = None
    parent: str | None = None


class ExpectedAlert(_Model):
    alert: str
    device: str | None = None
    district: str | None = None
    level: LevelField


class ExpectAt(_Model):
    at: Offset
    firing: list[ExpectedAlert] = []
    pending: list[ExpectedAlert] | None = None
    """Compared only when given."""


class RuleTestSpec(_Model):
    name: str
    start: Timestamp | None = None
    input: list[SeriesSpec] = []
    events: list[EventSpec] = []
    ticks: Duration | None = None
    until: Offset | None = None
    only: list[str] = []
    """Compare only the alerts of these rules (default: every rule under test)."""
    expect: list[ExpectedTransition] | None = None
    expect_at: list[ExpectAt] = []
    expect_rule_errors: list[str] = []
    """Rules expected to fail evaluation (any other rule's failure fails the test)."""

    @model_validator(mode="after")
    def _something_expected(self) -> RuleTestSpec:
        if self.expect is None and not self.expect_at:
            raise ValueError("a test needs `expect` (the transitions, [] for none) or `expect_at`")
        if self.ticks is not None and self.ticks <= timedelta(0):
            raise ValueError("ticks: must be longer than zero, e.g. 1m")
        return self


class RuleTestFileSpec(_Model):
    rule_files: list[str] | None = None
    """Rule files or directories, relative to the test file (default: the built-in library
    and the profiles' rules)."""
    profile_dirs: list[str] = []
    timezone: str = "Asia/Shanghai"
    start: Timestamp | None = None
    devices: list[DeviceSpec] = []
    tests: list[dict[str, Any]]


# --- results ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RuleTestResult:
    file: Path
    name: str
    passed: bool
    problems: tuple[str, ...] = ()
    """Why it failed: readable lines, including a diff of expected and got transitions."""
    error: bool = False
    """The test (or its file) could not run: a mistake in the test, not in the rules."""
    line: int | None = None
    transitions: tuple[AlertTransition, ...] = ()

    @property
    def id(self) -> str:
        return f"{self.file}::{self.name}"

    @property
    def report(self) -> str:
        return "\n".join(self.problems)


@dataclass(frozen=True)
class _Subject:
    """What an alert is about: a device, a district or the city."""

    device: str | None
    district: str | None

    def __str__(self) -> str:
        if self.device is not None:
            return self.device
        return f"district {self.district}" if self.district is not None else "city"


@dataclass
class _Step:
    readings: list[Reading] = field(default_factory=list)
    events: list[DeviceEvent] = field(default_factory=list)
    tick: bool = False
    snapshots: list[int] = field(default_factory=list)
    """Indexes into the test's `expect_at`."""


# --- loading ----------------------------------------------------------------------------------


def _problems(exc: ValidationError, raw: Any, path: Path, test: str | None = None) -> str:
    """One line per problem: `file:line: [test 'name': ]field: message`."""
    parts = []
    for e in exc.errors():
        loc = [p for p in e["loc"] if isinstance(p, int) or not _UNION_TAG.match(p)]
        line = _line_at(raw, loc)
        where = f"{path}:{line}" if line else str(path)
        if test is not None:
            where += f": test {test!r}"
        field_path = ".".join(str(p) for p in loc) or "(top level)"
        msg = str(e["msg"]).removeprefix("Value error, ")
        parts.append(f"{where}: {field_path}: {msg}")
    return "\n".join(parts)


_UNION_TAG = re.compile(r"^(str|list\[.*\]|function-.*|timedelta|datetime|float|int|none)$")


class RuleTestFile:
    """A loaded test file: its rules compiled, its devices checked, its tests listed."""

    def __init__(self, path: Path, extra_profile_dirs: Iterable[Path] = ()) -> None:
        self.path = path
        try:
            raw = load_yaml_with_lines(path)
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise RuleTestError(describe_yaml_error(path, exc, "rule test file")) from None
        if not isinstance(raw, dict):
            raise RuleTestError(f"{path}: a rule test file is a mapping with `tests:`")
        try:
            self.spec = RuleTestFileSpec.model_validate(
                {k: strip_lines(v) if k != "tests" else v for k, v in raw.items() if k != LINE_KEY}
            )
        except ValidationError as exc:
            raise RuleTestError(_problems(exc, raw, path)) from None
        try:
            self.tz = ZoneInfo(self.spec.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise RuleTestError(f"{path}: timezone {self.spec.timezone!r} is unknown") from None
        base = path.parent
        dirs = [*extra_profile_dirs, *(base / d for d in self.spec.profile_dirs)]
        try:
            self.profiles = load_profiles(dirs)
        except ProfileError as exc:
            raise RuleTestError(f"{path}: profiles: {exc}") from None
        try:
            if self.spec.rule_files is None:
                self.rules = load_rules(self.profiles)
            else:
                self.rules = rule_set_from([base / f for f in self.spec.rule_files], self.profiles)
        except RuleError as exc:
            raise RuleTestError(f"{path}: rule_files: {exc}") from None
        self.devices = self._devices(raw)
        self.tests: list[tuple[str, int | None, dict[str, Any]]] = []
        seen: set[str] = set()
        for i, item in enumerate(raw.get("tests") or []):
            line = item.get(LINE_KEY) if isinstance(item, dict) else None
            name = str(item.get("name", f"tests[{i}]")) if isinstance(item, dict) else f"tests[{i}]"
            if name in seen:
                raise RuleTestError(f"{path}:{line}: test {name!r} is named twice")
            seen.add(name)
            self.tests.append((name, line, item if isinstance(item, dict) else {}))
        if not self.tests:
            raise RuleTestError(f"{path}: no tests")

    def _devices(self, raw: dict[str, Any]) -> dict[str, DeviceInfo]:
        out: dict[str, DeviceInfo] = {}
        raw_devices = raw.get("devices") or []
        for i, d in enumerate(self.spec.devices):
            where = f"{self.path}:{_line_at(raw_devices, [i]) or '?'}: device {d.id!r}"
            profile = self.profiles.get(d.profile)
            if profile is None:
                raise RuleTestError(
                    f"{where}: unknown profile {d.profile!r}; "
                    f"the profiles are: {', '.join(sorted(self.profiles))}"
                )
            if d.id in out:
                raise RuleTestError(f"{where}: listed twice")
            attributes, problems = profile.device_attributes(d.attributes)
            if problems:
                raise RuleTestError(f"{where}: {'; '.join(problems)}")
            out[d.id] = DeviceInfo(d.id, profile, d.district, d.name, attributes)
        return out

    @property
    def names(self) -> list[str]:
        return [name for name, _, _ in self.tests]

    def expected_alerts(self) -> dict[str, list[ExpectedTransition | ExpectedAlert]]:
        """Every expected alert of every valid test, by test name (for coverage checks)."""
        out: dict[str, list[ExpectedTransition | ExpectedAlert]] = {}
        for name, _, raw in self.tests:
            try:
                spec = RuleTestSpec.model_validate(strip_lines(raw))
            except ValidationError:
                continue
            alerts: list[ExpectedTransition | ExpectedAlert] = list(spec.expect or [])
            for at in spec.expect_at:
                alerts += [*at.firing, *(at.pending or [])]
            out[name] = alerts
        return out

    def run(self, names: Iterable[str] | None = None) -> list[RuleTestResult]:
        wanted = None if names is None else set(names)
        unknown = (wanted or set()) - set(self.names)
        if unknown:
            raise RuleTestError(f"{self.path}: no test named {', '.join(sorted(unknown))}")
        return [
            self._run_one(name, line, raw)
            for name, line, raw in self.tests
            if wanted is None or name in wanted
        ]

    # -- one test ---------------------------------------------------------------------------

    def _run_one(self, name: str, line: int | None, raw: dict[str, Any]) -> RuleTestResult:
        where = f"{self.path}:{line}: test {name!r}" if line else f"{self.path}: test {name!r}"
        try:
            spec = RuleTestSpec.model_validate(strip_lines(raw))
            start = spec.start or self.spec.start
            if start is None:
                raise RuleTestError("no `start`: give one for the file or for this test")
            steps = self._timeline(spec, start)
            self._check_names(spec)
        except ValidationError as exc:
            invalid = tuple(_problems(exc, raw, self.path, name).splitlines())
            return RuleTestResult(self.path, name, False, invalid, True, line)
        except (RuleTestError, SeriesError) as exc:
            return RuleTestResult(self.path, name, False, (f"{where}: {exc}",), True, line)

        engine = Engine(self.rules, self.spec.timezone)
        engine.set_devices(self.devices.values())
        got: list[AlertTransition] = []
        snapshots: dict[int, tuple[list[tuple[str, str, str]], list[tuple[str, str, str]]]] = {}
        only = set(spec.only)
        for t, step in sorted(steps.items()):
            if step.readings:
                got += engine.ingest(step.readings)
            if step.events:
                got += engine.events(step.events)
            if step.tick:
                got += engine.tick(t)
            for index in step.snapshots:
                snapshots[index] = _snapshot(engine, only)
        if only:
            got = [g for g in got if g.rule in only]

        problems: list[str] = []
        if spec.expect is not None:
            problems += _compare_transitions(spec.expect, got, start)
        for index, expect_at in enumerate(spec.expect_at):
            problems += _compare_snapshot(expect_at, snapshots[index], start)
        problems += _rule_errors(engine, spec, only)
        return RuleTestResult(
            self.path,
            name,
            not problems,
            tuple(f"{where}: {p}" if i == 0 else p for i, p in enumerate(problems)),
            False,
            line,
            tuple(got),
        )

    def _timeline(self, spec: RuleTestSpec, start: datetime) -> dict[datetime, _Step]:
        steps: dict[datetime, _Step] = {}

        def at(offset: timedelta | datetime) -> datetime:
            return offset if isinstance(offset, datetime) else start + offset

        def step(t: datetime) -> _Step:
            return steps.setdefault(t, _Step())

        for i, series in enumerate(spec.input):
            device = self._device(series.device, f"input[{i}]")
            metric = device.profile.metrics.get(series.metric)
            if metric is None:
                raise RuleTestError(
                    f"input[{i}]: {series.metric!r} is not a metric of profile "
                    f"{device.profile.name}; its metrics are: {', '.join(device.profile.metrics)}"
                )
            interval = series.interval or device.profile.reporting_interval
            if interval <= timedelta(0):
                raise RuleTestError(f"input[{i}]: interval must be longer than zero")
            words = {k: float(v) for k, v in (metric.values or {}).items()}
            try:
                values = _series_values(series.values, words)
            except SeriesError as exc:
                raise RuleTestError(
                    f"input[{i}] ({series.device} {series.metric}): {exc}"
                ) from None
            first = at(series.at)
            for n, value in enumerate(values):
                if value is not None:
                    ts = first + n * interval
                    step(ts).readings.append(Reading(ts, series.device, series.metric, value))
        for i, event in enumerate(spec.events):
            device = self._device(event.device, f"events[{i}]")
            declared = device.profile.events.get(event.type)
            if declared is None:
                raise RuleTestError(
                    f"events[{i}]: {event.type!r} is not an event of profile "
                    f"{device.profile.name}; its events are: "
                    f"{', '.join(device.profile.events) or 'none'}"
                )
            ts = at(event.at)
            code = event.code if event.code is not None else declared.code
            step(ts).events.append(DeviceEvent(ts, event.device, event.type, code, event.detail))
        instants = [
            *steps,
            *(at(e.at) for e in spec.expect or []),
            *(at(e.at) for e in spec.expect_at),
            *([at(spec.until)] if spec.until is not None else []),
        ]
        end = max(instants, default=start)
        if spec.ticks is not None:
            t = start
            while t <= end:
                step(t).tick = True
                t += spec.ticks
        for index, expect_at in enumerate(spec.expect_at):
            step(at(expect_at.at)).snapshots.append(index)
        return steps

    def _device(self, device_id: str, where: str) -> DeviceInfo:
        device = self.devices.get(device_id)
        if device is None:
            known = ", ".join(self.devices) or "none"
            raise RuleTestError(f"{where}: unknown device {device_id!r}; the devices are: {known}")
        return device

    def _check_names(self, spec: RuleTestSpec) -> None:
        rules = self.rules.by_name()
        named: list[tuple[str, str]] = [(f"only[{i}]", r) for i, r in enumerate(spec.only)]
        named += [(f"expect_rule_errors[{i}]", r) for i, r in enumerate(spec.expect_rule_errors)]
        named += [(f"expect[{i}]", e.alert) for i, e in enumerate(spec.expect or [])]
        for i, expect_at in enumerate(spec.expect_at):
            named += [
                (f"expect_at[{i}]", a.alert)
                for a in [*expect_at.firing, *(expect_at.pending or [])]
            ]
        for where, rule in named:
            if rule not in rules:
                raise RuleTestError(
                    f"{where}: no rule named {rule!r} under test; "
                    f"the rules are: {', '.join(sorted(rules))}"
                )
        devices: list[tuple[str, str | None]] = [
            (f"expect[{i}]", e.device) for i, e in enumerate(spec.expect or [])
        ]
        for i, expect_at in enumerate(spec.expect_at):
            devices += [(f"expect_at[{i}]", a.device) for a in expect_at.firing]
        for where, device in devices:
            if device is not None:
                self._device(device, where)


def _series_values(
    values: str | list[float | str | None], words: Mapping[str, float]
) -> list[float | None]:
    if isinstance(values, str):
        return expand_series(values, words)
    out: list[float | None] = []
    for v in values:
        if v is None or isinstance(v, float | int):
            out.append(None if v is None else float(v))
        else:
            out += expand_series(str(v), words)
    return out


def rule_set_from(paths: Iterable[Path], profiles: Mapping[str, DeviceProfile]) -> RuleSet:
    """The rules of these files and directories (`*.yaml` inside), later names overriding.

    Raises RuleError naming the file, line and problem; an area rule's member must be a
    device rule among them.
    """
    ordered: list[Rule] = []
    for path in paths:
        if path.is_dir():
            for file in sorted(path.glob("*.y*ml")):
                ordered += load_rule_file(file, profiles)
        elif path.is_file():
            ordered += load_rule_file(path, profiles)
        else:
            raise RuleError(f"{path}: no such rule file or directory")
    rules = {r.name: r for r in ordered}
    for rule in rules.values():
        member = rule.spec.member
        if member is not None and (member not in rules or rules[member].spec.kind == "area"):
            raise RuleError(
                f"{rule.source}: rule {rule.name!r}: member {member!r} is not a device rule"
            )
    return RuleSet(tuple(rules.values()))


# --- comparing --------------------------------------------------------------------------------


def _offset_text(t: datetime, start: datetime) -> str:
    delta = t - start
    if delta < timedelta(0):
        return "-" + _offset_text(start, t)
    whole = timedelta(seconds=int(delta.total_seconds()))
    text = format_duration(whole)
    rest = delta - whole
    if rest:
        text = (text if whole else "") + f"{rest.total_seconds() * 1000:g}ms"
    return text


def _subject_of(t: AlertTransition) -> _Subject:
    return _Subject(t.device_id, None if t.device_id is not None else t.district)


def _expected_subject(e: ExpectedTransition | ExpectedAlert) -> _Subject:
    return _Subject(e.device, None if e.device is not None else e.district)


def _resolve(at: timedelta | datetime, start: datetime) -> datetime:
    return at if isinstance(at, datetime) else start + at


def _row(at: str, alert: str, subject: _Subject, state: str, level: str) -> tuple[str, ...]:
    return (at, alert, str(subject), state, level)


def _table(rows: Sequence[tuple[str, tuple[str, ...]]], header: tuple[str, ...]) -> list[str]:
    widths = [max(len(c) for c in col) for col in zip(header, *(r for _, r in rows), strict=True)]

    def line(mark: str, cells: tuple[str, ...]) -> str:
        return f"  {mark} " + "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True))

    return [line(" ", header).rstrip(), *(line(mark, cells).rstrip() for mark, cells in rows)]


def _compare_transitions(
    expected: Sequence[ExpectedTransition], got: Sequence[AlertTransition], start: datetime
) -> list[str]:
    # Within one instant the engine's order is an implementation detail: compare sorted.
    exp = sorted(
        expected,
        key=lambda e: (_resolve(e.at, start), e.alert, str(_expected_subject(e))),
    )
    hits = sorted(got, key=lambda g: (g.at, g.rule, str(_subject_of(g))))
    exp_rows = [
        _row(
            _offset_text(_resolve(e.at, start), start),
            e.alert,
            _expected_subject(e),
            e.state,
            e.level.label,
        )
        for e in exp
    ]
    got_rows = [
        _row(_offset_text(g.at, start), g.rule, _subject_of(g), g.state.value, g.level.label)
        for g in hits
    ]
    problems: list[str] = []
    matcher = difflib.SequenceMatcher(None, exp_rows, got_rows, autojunk=False)
    diff: list[tuple[str, tuple[str, ...]]] = []
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            diff += [(" ", r) for r in exp_rows[i1:i2]]
            for e, g in zip(exp[i1:i2], hits[j1:j2], strict=True):
                problems += _compare_details(e, g, start)
            continue
        diff += [("-", r) for r in exp_rows[i1:i2]]
        diff += [("+", r) for r in got_rows[j1:j2]]
    if any(mark != " " for mark, _ in diff):
        header = ("at", "alert", "device/area", "state", "level")
        problems.insert(
            0,
            "alert transitions differ (- expected, + got):\n" + "\n".join(_table(diff, header)),
        )
    return problems


def _same(expected: Any, got: Any) -> bool:
    if isinstance(expected, bool) or isinstance(got, bool):
        return bool(expected == got)
    if isinstance(expected, int | float) and isinstance(got, int | float):
        return math.isclose(expected, got, rel_tol=1e-9, abs_tol=1e-9)
    return bool(expected == got)


def _compare_details(e: ExpectedTransition, g: AlertTransition, start: datetime) -> list[str]:
    what = f"{_offset_text(g.at, start)} {g.rule} {_subject_of(g)} {g.state.value}"
    out: list[str] = []
    if e.previous is not None and e.previous is not g.previous_level:
        out.append(
            f"{what}: previous level expected {e.previous.label}, got {g.previous_level.label}"
        )
    if e.device is not None and e.district is not None and e.district != g.district:
        out.append(f"{what}: district expected {e.district!r}, got {g.district!r}")
    if e.summary is not None and e.summary != g.summary:
        out.append(f"{what}: summary expected {e.summary!r}, got {g.summary!r}")
    if e.parent is not None and e.parent != g.parent:
        out.append(f"{what}: parent expected {e.parent!r}, got {g.parent!r}")
    for key, value in (e.values or {}).items():
        if key not in g.values:
            out.append(f"{what}: values.{key} expected {value!r}, got nothing")
        elif not _same(value, g.values[key]):
            out.append(f"{what}: values.{key} expected {value!r}, got {g.values[key]!r}")
    for key, value in (e.labels or {}).items():
        if g.labels.get(key) != value:
            out.append(f"{what}: labels.{key} expected {value!r}, got {g.labels.get(key)!r}")
    return out


def _snapshot(
    engine: Engine, only: set[str]
) -> tuple[list[tuple[str, str, str]], list[tuple[str, str, str]]]:
    firing: list[tuple[str, str, str]] = []
    pending: list[tuple[str, str, str]] = []
    for st in engine.alerts.values():
        if only and st.rule not in only:
            continue
        subject = _Subject(st.device_id, None if st.device_id is not None else st.district)
        item = (st.rule, str(subject), st.level.label)
        if st.state is ConditionState.FIRING:
            firing.append(item)
        elif st.state is ConditionState.PENDING:
            pending.append(item)
    return sorted(firing), sorted(pending)


def _compare_snapshot(
    expect_at: ExpectAt,
    snapshot: tuple[list[tuple[str, str, str]], list[tuple[str, str, str]]],
    start: datetime,
) -> list[str]:
    at = _offset_text(_resolve(expect_at.at, start), start)
    out: list[str] = []
    sets: list[tuple[str, list[ExpectedAlert] | None, list[tuple[str, str, str]]]] = [
        ("firing", expect_at.firing, snapshot[0]),
        ("pending", expect_at.pending, snapshot[1]),
    ]
    for state, expected, got in sets:
        if expected is None:
            continue
        want = sorted((a.alert, str(_expected_subject(a)), a.level.label) for a in expected)
        if want == got:
            continue
        rows = [("-", w) for w in want if w not in got] + [("+", g) for g in got if g not in want]
        rows += [(" ", w) for w in want if w in got]
        out.append(
            f"{state} alerts at {at} differ (- expected, + got):\n"
            + "\n".join(_table(rows, ("alert", "device/area", "level")))
        )
    return out


def _rule_errors(engine: Engine, spec: RuleTestSpec, only: set[str]) -> list[str]:
    out: list[str] = []
    failed = {
        name: h for name, h in engine.health.items() if h.errors and (not only or name in only)
    }
    for name, health in sorted(failed.items()):
        if name not in spec.expect_rule_errors:
            out.append(
                f"rule {name} failed {health.errors} evaluation(s); last: {health.last_error}"
            )
    for name in spec.expect_rule_errors:
        if name not in failed:
            out.append(f"rule {name} was expected to fail an evaluation, but never did")
    return out


# --- running files ----------------------------------------------------------------------------


def rule_test_files(paths: Iterable[Path]) -> list[Path]:
    """The test files among `paths`: files as given, directories' `*.yaml` sorted."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out += sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml"))
        else:
            out.append(path)
    return out


def run_rule_tests(
    paths: Iterable[Path], extra_profile_dirs: Iterable[Path] = ()
) -> list[RuleTestResult]:
    """Run every test of these files (directories: their `*.yaml`); a broken file is one
    error result naming the file."""
    results: list[RuleTestResult] = []
    dirs = list(extra_profile_dirs)
    for path in rule_test_files(paths):
        try:
            results += RuleTestFile(path, dirs).run()
        except RuleTestError as exc:
            results.append(RuleTestResult(path, "(file)", False, (str(exc),), True))
    return results


__all__ = [
    "LIBRARY_TEST_DIR",
    "ExpectedAlert",
    "ExpectedTransition",
    "RuleTestError",
    "RuleTestFile",
    "RuleTestResult",
    "SeriesError",
    "describe_yaml_error",
    "expand_series",
    "rule_set_from",
    "rule_test_files",
    "run_rule_tests",
]
