"""Replay of recorded readings: a CSV of (ts, device, metric, value) as MQTT telemetry.

The file is UTF-8 CSV with a header naming the columns:

- `ts`: ISO 8601 with a UTC offset (`2017-02-28T23:00:00+08:00`) or epoch
  milliseconds;
- `device`: the device id;
- `metric`: a metric of the device's profile;
- `value`: a number, `true` / `false`, or an enum word (`rising`); an empty
  cell or `NA`, `N/A`, `NaN`, `null`, `None` marks a missing value, and the
  row is skipped;
- optional `profile` and `district`: where a row gives them, they place the
  device; otherwise the registry does. Other columns are ignored.

Rows must be in time order (equal times are fine). `replay_messages` turns
the rows of one time and one device into one canonical telemetry message,
`{"ts": …, "values": {…}}`, whose `WireMessage.t` is that time, so a
publisher can pace the replay by `t`. Problems raise `ReplayError` naming the
file, the line and the column.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson

from devices.profile import NAME_PATTERN, DeviceProfile, MetricSpec
from devices.registry import DEVICE_ID_PATTERN, DeviceRecord
from simulators.model import WireMessage

__all__ = [
    "MISSING",
    "ReplayError",
    "ReplayRow",
    "ReplayValue",
    "parse_replay_csv",
    "read_replay_csv",
    "replay_messages",
]

ReplayValue = float | int | bool | str

REQUIRED_COLUMNS = ("ts", "device", "metric", "value")
OPTIONAL_COLUMNS = ("profile", "district")
MISSING = frozenset({"", "na", "n/a", "nan", "null", "none"})
"""Cell texts (compared in lower case) that mark a missing value: the row is skipped."""

_EPOCH_MS_MIN = 946_684_800_000  # 2000-01-01
_EPOCH_MS_MAX = 4_102_444_800_000  # 2100-01-01
_ID = re.compile(DEVICE_ID_PATTERN)
_NAME = re.compile(NAME_PATTERN)
_INT = re.compile(r"[+-]?\d+")
_EPOCH = re.compile(r"\d+")
_WORD = re.compile(r"[A-Za-z0-9_.-]+")


class ReplayError(ValueError):
    """A replay file or row that cannot be replayed; the message names file, line, column."""


@dataclass(frozen=True, slots=True)
class ReplayRow:
    """One reading of a replay file."""

    ts: datetime
    device: str
    metric: str
    value: ReplayValue
    profile: str | None = None
    district: str | None = None
    source: str = "<rows>"
    """The file the row comes from, for messages."""
    line: int = 0
    """The line the row starts on; the header is line 1."""

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


def read_replay_csv(path: Path | str) -> Iterator[ReplayRow]:
    """The rows of a replay file, lazily and in order; see the module docstring.

    Raises ReplayError (while iterating) for an unreadable file, a bad header, a
    bad cell or a row earlier than the one before it.
    """
    path = Path(path)
    try:
        with path.open(encoding="utf-8-sig", newline="") as stream:
            yield from parse_replay_csv(stream, str(path))
    except OSError as exc:
        raise ReplayError(f"{path}: cannot read the replay file ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise ReplayError(
            f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x}); save it as CSV UTF-8"
        ) from None


def parse_replay_csv(lines: Iterable[str], source: str = "<replay>") -> Iterator[ReplayRow]:
    """`read_replay_csv` on text already open (a file opened with `newline=""`)."""
    reader = csv.reader(lines, strict=True)
    header: list[str] | None = None
    columns: dict[str, int] = {}
    previous: ReplayRow | None = None
    while True:
        line = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise ReplayError(f"{source}:{line}: cannot split the row into cells ({exc})") from None
        if not any(cell.strip() for cell in cells):
            continue
        if header is None:
            header, columns = _header(cells, source)
            continue
        if len(cells) != len(header):
            raise ReplayError(
                f"{source}:{line}: the row has {len(cells)} cells, the header {len(header)}"
            )
        row = _row(cells, columns, source, line)
        if row is None:
            continue
        if previous is not None and row.ts < previous.ts:
            raise ReplayError(
                f"{source}:{line}: column ts: {row.ts.isoformat()} is earlier than "
                f"{previous.ts.isoformat()} on line {previous.line}; sort the file by ts"
            )
        previous = row
        yield row
    if header is None:
        raise ReplayError(
            f"{source}: the file is empty; the first line must name the columns "
            f"{','.join(REQUIRED_COLUMNS)}[,{','.join(OPTIONAL_COLUMNS)}]"
        )


def _header(cells: list[str], source: str) -> tuple[list[str], dict[str, int]]:
    names = [cell.strip().lower() for cell in cells]
    columns: dict[str, int] = {}
    for index, name in enumerate(names):
        if name in columns and name in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS):
            raise ReplayError(f"{source}:1: column {name!r} appears twice")
        columns.setdefault(name, index)
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise ReplayError(
            f"{source}:1: the header lacks column(s) {', '.join(missing)}; it must name "
            f"{','.join(REQUIRED_COLUMNS)} and may add {','.join(OPTIONAL_COLUMNS)} "
            f"(found: {','.join(names)[:80]})"
        )
    return names, columns


def _row(cells: list[str], columns: dict[str, int], source: str, line: int) -> ReplayRow | None:
    def cell(name: str) -> str:
        index = columns.get(name)
        return cells[index].strip() if index is not None else ""

    def bad(column: str, message: str) -> ReplayError:
        return ReplayError(f"{source}:{line}: column {column}: {message}")

    raw_value = cell("value")
    if raw_value.lower() in MISSING:
        return None
    device = cell("device")
    if not _ID.fullmatch(device):
        raise bad("device", f"{device[:40]!r} is not a device id (letters, digits, '_', '.', '-')")
    metric = cell("metric")
    if not _NAME.fullmatch(metric):
        raise bad("metric", f"{metric[:40]!r} is not a metric name (e.g. level_m, pm2_5)")
    profile = cell("profile") or None
    if profile is not None and not _NAME.fullmatch(profile):
        raise bad("profile", f"{profile[:40]!r} is not a profile name")
    district = cell("district") or None
    if district is not None and not _ID.fullmatch(district):
        raise bad("district", f"{district[:40]!r} is not a district (an MQTT topic level)")
    try:
        ts = parse_ts(cell("ts"))
    except ValueError as exc:
        raise bad("ts", str(exc)) from None
    try:
        value = parse_value(raw_value)
    except ValueError as exc:
        raise bad("value", str(exc)) from None
    return ReplayRow(ts, device, metric, value, profile, district, source, line)


def parse_ts(text: str) -> datetime:
    """ISO 8601 with a UTC offset, or epoch milliseconds; ValueError says what is wrong."""
    if _EPOCH.fullmatch(text):
        ms = int(text)
        if not _EPOCH_MS_MIN <= ms < _EPOCH_MS_MAX:
            hint = " (it looks like seconds)" if _EPOCH_MS_MIN <= ms * 1000 < _EPOCH_MS_MAX else ""
            raise ValueError(f"{text} is not epoch milliseconds between 2000 and 2100{hint}")
        return datetime.fromtimestamp(ms / 1000, UTC)
    try:
        ts = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text[:40]!r} is neither ISO 8601 (2017-02-28T23:00:00+08:00) nor epoch milliseconds"
        ) from None
    if ts.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset; add one, e.g. +08:00")
    return ts


def parse_value(text: str) -> ReplayValue:
    """A cell as int, float, bool or an enum word."""
    if _INT.fullmatch(text):
        return int(text)
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        number = float(text)
    except ValueError:
        if not _WORD.fullmatch(text):
            raise ValueError(f"{text[:40]!r} is neither a number nor an enum word") from None
        return text
    if not math.isfinite(number):
        raise ValueError(f"{text!r} is not a finite number")
    return number


def replay_messages(
    rows: Iterable[ReplayRow],
    registry: Iterable[DeviceRecord] | Mapping[str, DeviceRecord],
    root: str = "city",
    *,
    profiles: Mapping[str, DeviceProfile] | None = None,
) -> Iterator[WireMessage]:
    """Telemetry messages for `rows`, in time order.

    The rows of one time are grouped by device into one message per device (in
    the order the devices first appear at that time). A device's profile and
    district come from the row's `profile` / `district` cells or else from
    `registry`. With `profiles`, every metric and value is checked against the
    device's profile (enum words and codes, integers, booleans) and converted to
    what the ingest expects. Raises ReplayError naming the row.
    """
    records = registry if isinstance(registry, Mapping) else {r.device_id: r for r in registry}
    group_ts: datetime | None = None
    group: dict[str, _Group] = {}
    for row in rows:
        if group_ts is not None and row.ts != group_ts:
            if row.ts < group_ts:
                raise ReplayError(
                    f"{row.where}: column ts: {row.ts.isoformat()} is earlier than the "
                    f"previous row's {group_ts.isoformat()}; sort the rows by ts"
                )
            yield from _messages(group, root)
            group = {}
        group_ts = row.ts
        current = group.get(row.device)
        if current is None:
            profile, district = _place(row, records)
            spec = None
            if profiles is not None:
                spec = profiles.get(profile)
                if spec is None:
                    raise ReplayError(
                        f"{row.where}: device {row.device} has profile {profile!r}, which is "
                        f"not loaded (known: {', '.join(sorted(profiles))})"
                    )
            current = group[row.device] = _Group(row, profile, district, spec)
        current.add(row)
    yield from _messages(group, root)


class _Group:
    """The readings of one device at one time."""

    __slots__ = ("district", "first", "lines", "profile", "spec", "values")

    def __init__(
        self, first: ReplayRow, profile: str, district: str, spec: DeviceProfile | None
    ) -> None:
        self.first = first
        self.profile = profile
        self.district = district
        self.spec = spec
        self.values: dict[str, ReplayValue] = {}
        self.lines: dict[str, int] = {}

    def add(self, row: ReplayRow) -> None:
        if (row.profile and row.profile != self.profile) or (
            row.district and row.district != self.district
        ):
            raise ReplayError(
                f"{row.where}: device {row.device} is placed in {row.profile or self.profile}/"
                f"{row.district or self.district} here but in {self.profile}/{self.district} "
                f"on line {self.first.line}"
            )
        if row.metric in self.values:
            raise ReplayError(
                f"{row.where}: column metric: {row.metric} of device {row.device} at "
                f"{row.ts.isoformat()} already appears on line {self.lines[row.metric]}"
            )
        value = row.value
        if self.spec is not None:
            metric = self.spec.metrics.get(row.metric)
            if metric is None:
                raise ReplayError(
                    f"{row.where}: column metric: {row.metric} is not a metric of profile "
                    f"{self.spec.name} (known: {', '.join(self.spec.metrics)})"
                )
            try:
                value = _convert(metric, value)
            except ValueError as exc:
                raise ReplayError(f"{row.where}: column value: {row.metric}: {exc}") from None
        self.values[row.metric] = value
        self.lines[row.metric] = row.line


def _place(row: ReplayRow, records: Mapping[str, DeviceRecord]) -> tuple[str, str]:
    record = records.get(row.device)
    profile = row.profile or (record.profile if record else None)
    district = row.district or (record.district if record else None)
    if profile is None or district is None:
        raise ReplayError(
            f"{row.where}: column device: {row.device} is not in the device registry; "
            "add it to the registry or give the row profile and district columns"
        )
    if record is not None and profile != record.profile:
        raise ReplayError(
            f"{row.where}: column profile: device {row.device} is registered with profile "
            f"{record.profile!r}, not {profile!r}"
        )
    return profile, district


def _convert(metric: MetricSpec, value: ReplayValue) -> ReplayValue:
    """The JSON value the ingest accepts for this metric, or ValueError."""
    match metric.type:
        case "enum":
            assert metric.values is not None
            if isinstance(value, str) and value in metric.values:
                return value
            if (
                isinstance(value, int)
                and not isinstance(value, bool)
                and value in metric.code_to_word
            ):
                return metric.code_to_word[value]
            raise ValueError(f"{value!r} is not one of {', '.join(metric.values)}")
        case "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise ValueError(f"{value!r} is not true or false")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{value!r} is not a number")
    if metric.type == "int":
        if not float(value).is_integer():
            raise ValueError(f"{value!r} is not an integer")
        return int(value)
    return value


def _iso(ts: datetime) -> str:
    spec = "seconds" if ts.microsecond == 0 else "milliseconds"
    if ts.microsecond % 1000:
        spec = "microseconds"
    return ts.isoformat(timespec=spec)


def _messages(group: Mapping[str, _Group], root: str) -> Iterator[WireMessage]:
    for device, g in group.items():
        ts = g.first.ts
        payload = orjson.dumps({"ts": _iso(ts), "values": g.values})
        topic = f"{root}/{g.district}/{g.profile}/{device}/telemetry"
        yield WireMessage(ts, device, "telemetry", topic, payload, qos=1, retain=False)
