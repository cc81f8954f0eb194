"""The device registry file: one CSV row per device, validated row by row.

The header names the columns: `id`, `profile` and `district` are required,
`name`, `lat` and `lon` optional, and every other column is a per-device
attribute (a gauge's `warning_level_m`, a noise monitor's `zone`, or a
deployment's own label). Attribute cells are converted by the device's
profile; empty cells are left out, so the profile's defaults apply. Cells
are trimmed, blank rows skipped, and every other row must have exactly as
many cells as the header.

A bad row is reported with the line it starts on and dropped; the good rows
are kept. Only a file that cannot be read as a whole (unreadable, empty, an
unusable header, broken quoting) raises `RegistryError`. Reading and writing
touch nothing but the file; the database upsert and the CLI live in the shell.
"""

from __future__ import annotations

import csv
import difflib
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devices.errors import RegistryError
from devices.profile import DeviceProfile

DEVICE_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}"
"""Device ids and districts are MQTT topic levels: no `/`, `+`, `#`, spaces or leading `$`."""
_TOPIC_LEVEL = re.compile(DEVICE_ID_PATTERN)

REQUIRED_COLUMNS = ("id", "profile", "district")
STANDARD_COLUMNS = (*REQUIRED_COLUMNS, "name", "lat", "lon")
EXAMPLE_HEADER = ",".join(STANDARD_COLUMNS) + ",<attribute>,..."

_SHOW_LIMIT = 40


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """One device as the registry describes it, attributes already converted."""

    device_id: str
    profile: str
    district: str
    name: str
    lat: float | None
    lon: float | None
    attributes: dict[str, Any]
    provisional: bool = False
    """Registered by the platform on first contact rather than by an operator;
    never set by `read_registry_csv`, and not written by `write_registry_csv`."""


@dataclass(frozen=True, slots=True)
class RowProblem:
    """Why one row of a registry file was rejected; a row may have several."""

    line: int
    """Physical line in the file where the row starts; the header is line 1."""
    device_id: str | None
    message: str
    path: Path | None = None

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.path is not None else f"line {self.line}"
        if self.device_id:
            where += f" (device {_shorten(self.device_id)})"
        return f"{where}: {self.message}"


@dataclass(frozen=True)
class RegistryImport:
    """What a registry file yielded: the good rows as records and the bad rows' problems."""

    records: list[DeviceRecord]
    problems: list[RowProblem]
    path: Path
    rows: int = 0
    """Data rows read, blank rows not counted: `len(records) + rejected == rows`."""

    @property
    def rejected(self) -> int:
        """How many rows were dropped (a row with several problems counts once)."""
        return len({p.line for p in self.problems})


def read_registry_csv(path: Path, profiles: Mapping[str, DeviceProfile]) -> RegistryImport:
    """Read and validate a registry file (UTF-8, with or without a byte-order mark).

    Raises RegistryError, naming the file and what to do, when the file cannot be
    read, is empty, has an unusable header or broken quoting; every other problem
    is a RowProblem and the row is skipped.
    """
    path = Path(path)
    try:
        with path.open(encoding="utf-8-sig", newline="") as stream:
            return parse_registry_csv(stream, profiles, path)
    except OSError as exc:
        raise RegistryError(
            f"{path}: cannot read the device registry ({exc.strerror or exc}); check the path"
        ) from None
    except UnicodeDecodeError as exc:
        raise RegistryError(
            f"{path}: not UTF-8 text (it holds byte {exc.object[exc.start]:#04x}); "
            "save the registry as 'CSV UTF-8'"
        ) from None


def parse_registry_csv(
    lines: Iterable[str], profiles: Mapping[str, DeviceProfile], path: Path
) -> RegistryImport:
    """`read_registry_csv` on text already open, e.g. a file opened with `newline=""`.

    `path` only names the source in messages.
    """
    rows = _physical_rows(lines, path)
    first = next(rows, None)
    if first is None:
        raise RegistryError(
            f"{path}: the file is empty; the first line must be the header, e.g. {EXAMPLE_HEADER}"
        )
    header, columns = _check_header(first[1], path)
    id_column = columns["id"]

    records: list[DeviceRecord] = []
    problems: list[RowProblem] = []
    first_line_of: dict[str, int] = {}
    count = 0
    for line, cells in rows:
        count += 1
        messages, record = _check_row(cells, header, columns, profiles)
        device_id = cells[id_column].strip() if id_column < len(cells) else ""
        if _TOPIC_LEVEL.fullmatch(device_id):
            seen_on = first_line_of.setdefault(device_id, line)
            if seen_on != line:
                messages.append(f"id {device_id} already appears on line {seen_on}")
        if messages:
            problems += [RowProblem(line, device_id or None, m, path) for m in messages]
        elif record is not None:
            records.append(record)
    return RegistryImport(records, problems, path, count)


def write_registry_csv(path: Path, records: Iterable[DeviceRecord], *, bom: bool = False) -> None:
    """Write records in the format `read_registry_csv` reads back.

    The header is the standard columns, then the sorted union of attribute keys.
    Attribute values must be text, numbers or booleans (ValueError otherwise,
    before the file is touched). `bom=True` starts the file with a byte-order
    mark, which spreadsheet programs need to show non-ASCII names correctly.
    """
    records = list(records)
    keys = sorted({key for record in records for key in record.attributes})
    for key in keys:
        if key in STANDARD_COLUMNS or not key.strip() or key != key.strip():
            raise ValueError(f"attribute name {key!r} cannot be a registry column")
    body = [
        [
            record.device_id,
            record.profile,
            record.district,
            record.name,
            _cell(record.lat),
            _cell(record.lon),
            *(_attribute_cell(record, key) for key in keys),
        ]
        for record in records
    ]
    with Path(path).open("w", encoding="utf-8-sig" if bom else "utf-8", newline="") as stream:
        # The default "\r\n" (RFC 4180) also makes the writer quote a lone "\r".
        writer = csv.writer(stream)
        writer.writerow([*STANDARD_COLUMNS, *keys])
        writer.writerows(body)


def _physical_rows(lines: Iterable[str], path: Path) -> Iterator[tuple[int, list[str]]]:
    """Non-blank records with the line each starts on.

    csv.DictReader skips blank lines inside one `next()`, which loses where a
    record starts; the plain reader consumes one record per call, so the start
    is the line after the previous `line_num`.
    """
    reader = csv.reader(lines, strict=True, skipinitialspace=True)
    while True:
        start = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise RegistryError(
                f"{path}:{start}: cannot split the row starting on this line into cells "
                f"({exc}); a cell holding a comma, a quote or a line break must be "
                'enclosed in double quotes, and a quote inside it written twice ("")'
            ) from None
        if any(cell.strip() for cell in cells):
            yield start, cells


def _check_header(cells: list[str], path: Path) -> tuple[list[str], dict[str, int]]:
    """The column names and the index of each named column."""
    names = [cell.removeprefix("\ufeff").strip() for cell in cells]
    columns: dict[str, int] = {}
    for index, name in enumerate(names):
        if not name:
            continue
        if name in columns:
            raise RegistryError(
                f"{path}: columns {columns[name] + 1} and {index + 1} are both named {name!r}; "
                "give each column its own name"
            )
        columns[name] = index
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        hint = ""
        if len(names) == 1 and any(sep in names[0] for sep in ";\t|"):
            hint = "; the columns must be separated by commas"
        raise RegistryError(
            f"{path}: the header lacks column(s) {', '.join(missing)}{hint}; "
            f"the first line must name the columns, e.g. {EXAMPLE_HEADER} "
            f"(found: {_show(','.join(names))})"
        )
    return names, columns


def _check_row(
    cells: list[str],
    header: list[str],
    columns: dict[str, int],
    profiles: Mapping[str, DeviceProfile],
) -> tuple[list[str], DeviceRecord | None]:
    """The row's problems and, when there are none, its record.

    Duplicate ids span rows, so the caller checks those.
    """
    if len(cells) < len(header):
        return [
            f"row has {len(cells)} cells, the header has {len(header)}; "
            "write every cell, empty ones too"
        ], None
    if len(cells) > len(header):
        return [
            f"row has {len(cells)} cells, the header has {len(header)}; "
            "a cell holding a comma must be enclosed in double quotes"
        ], None
    values = {name: cells[i].strip() for i, name in enumerate(header) if name}
    messages = [
        f"cell {i + 1} ({_show(cells[i].strip())}) is under a column with no name"
        for i, name in enumerate(header)
        if not name and cells[i].strip()
    ]

    device_id = values["id"]
    messages += _topic_level_problems("id", device_id)
    profile_name = values["profile"]
    profile = profiles.get(profile_name)
    if profile is None:
        messages.append(_unknown_profile(profile_name, profiles))
    district = values["district"]
    messages += _topic_level_problems("district", district)

    lat, lat_problem = _coordinate("lat", values.get("lat", ""), 90.0)
    lon, lon_problem = _coordinate("lon", values.get("lon", ""), 180.0)
    messages += [p for p in (lat_problem, lon_problem) if p]
    if not lat_problem and not lon_problem and (lat is None) != (lon is None):
        given, absent = ("lat", "lon") if lon is None else ("lon", "lat")
        messages.append(f"{given} is given but {absent} is empty; give both or neither")

    attributes: dict[str, Any] = {}
    if profile is not None:
        raw = {k: v for k, v in values.items() if k not in STANDARD_COLUMNS and v}
        attributes, attribute_problems = profile.device_attributes(raw)
        messages += attribute_problems

    if messages:
        return messages, None
    return [], DeviceRecord(
        device_id=device_id,
        profile=profile_name,
        district=district,
        name=values.get("name", ""),
        lat=lat,
        lon=lon,
        attributes=attributes,
    )


def _topic_level_problems(column: str, value: str) -> list[str]:
    if not value:
        return [f"{column} is empty"]
    if _TOPIC_LEVEL.fullmatch(value):
        return []
    return [
        f"{column} {_show(value)} must be 1 to 128 letters, digits, '_', '.' or '-' "
        "starting with a letter or digit (it is an MQTT topic level)"
    ]


def _unknown_profile(name: str, profiles: Mapping[str, DeviceProfile]) -> str:
    known = sorted(profiles)
    if not known:
        return f"profile {_show(name)} is unknown: no profiles are loaded"
    if not name:
        return f"profile is empty; known profiles: {', '.join(known)}"
    close = difflib.get_close_matches(name.lower(), known, n=1)
    guess = f"did you mean {close[0]}? " if close else ""
    return f"unknown profile {_show(name)}; {guess}known profiles: {', '.join(known)}"


def _coordinate(column: str, text: str, limit: float) -> tuple[float | None, str | None]:
    if not text:
        return None, None
    try:
        value = float(text)
    except ValueError:
        return None, f"{column} {_show(text)} is not a number (decimal degrees, WGS 84)"
    if not math.isfinite(value):
        return None, f"{column} {_show(text)} is not a finite number"
    if not -limit <= value <= limit:
        return None, f"{column} {_shorten(text)} is outside {-limit:g}..{limit:g}"
    return value, None


def _cell(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def _attribute_cell(record: DeviceRecord, key: str) -> str:
    value = record.attributes.get(key)
    match value:
        case None:
            return ""
        case bool():
            return "true" if value else "false"
        case int() | str():
            return str(value)
        case float():
            return repr(value)
    raise ValueError(
        f"device {record.device_id}: attribute {key} is a {type(value).__name__}; "
        "a registry cell holds text, a number or a boolean"
    )


def _shorten(text: str) -> str:
    """`text` cut short so a runaway cell keeps a message readable."""
    return text if len(text) <= _SHOW_LIMIT else text[: _SHOW_LIMIT - 1] + "…"


def _show(text: str) -> str:
    return repr(_shorten(text))
