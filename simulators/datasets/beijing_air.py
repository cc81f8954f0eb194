"""Convert the UCI "Beijing Multi-Site Air-Quality Data" into a replay file and a registry.

    python -m simulators.datasets.beijing_air PRSA_Data_*.csv \\
        --out replay.csv --registry-out devices.csv [--since 2016-12-01] [--until 2017-01-01]

The data set (Zhang et al., "Cautionary tales on air-quality improvement in
Beijing", Proc. R. Soc. A, 2017; CC BY 4.0) holds hourly readings of twelve
national monitoring stations from March 2013 to February 2017, one file per
station with the columns
`No,year,month,day,hour,PM2.5,PM10,SO2,NO2,CO,O3,TEMP,PRES,DEWP,RAIN,wd,WSPM,station`.
Download it yourself from https://archive.ics.uci.edu/dataset/501 and keep the
attribution when you share what you make from it.

Each station becomes an `air_quality` device `aq-bj-<station>` in district
`<station>` (lower case). Times are Beijing time (+08:00). Pollutants map to
the profile's metrics pm2_5, pm10, so2, no2, co and o3 (all µg/m³ except CO,
which the data set gives in µg/m³ and the profile wants in mg/m³), TEMP to
temperature_c; `NA` values are left out. Station coordinates are approximate.
"""

from __future__ import annotations

import argparse
import csv
import heapq
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

from devices.registry import DeviceRecord, write_registry_csv

BEIJING = timezone(timedelta(hours=8), "CST")

METRICS: tuple[tuple[str, str, float], ...] = (
    # (data set column, air_quality metric, factor to the profile's unit)
    ("PM2.5", "pm2_5", 1.0),
    ("PM10", "pm10", 1.0),
    ("SO2", "so2", 1.0),
    ("NO2", "no2", 1.0),
    ("CO", "co", 0.001),  # µg/m³ → mg/m³
    ("O3", "o3", 1.0),
    ("TEMP", "temperature_c", 1.0),
)
TIME_COLUMNS = ("year", "month", "day", "hour")
MISSING = frozenset({"", "NA", "NaN", "nan"})

STATIONS: dict[str, tuple[str, float, float]] = {
    # Station: (Chinese name, approximate lat, lon)
    "Aotizhongxin": ("奥体中心", 39.982, 116.397),
    "Changping": ("昌平镇", 40.217, 116.230),
    "Dingling": ("定陵", 40.292, 116.220),
    "Dongsi": ("东四", 39.929, 116.417),
    "Guanyuan": ("官园", 39.929, 116.339),
    "Gucheng": ("古城", 39.914, 116.184),
    "Huairou": ("怀柔镇", 40.328, 116.628),
    "Nongzhanguan": ("农展馆", 39.937, 116.461),
    "Shunyi": ("顺义新城", 40.127, 116.655),
    "Tiantan": ("天坛", 39.886, 116.407),
    "Wanliu": ("万柳", 39.987, 116.287),
    "Wanshouxigong": ("万寿西宫", 39.878, 116.352),
}


class ConversionError(ValueError):
    """An input file that cannot be converted; the message names file, line and column."""


@dataclass
class Summary:
    rows_read: int = 0
    readings_written: int = 0
    missing_skipped: int = 0
    stations: dict[str, int] = field(default_factory=dict)
    """Readings written per station."""


def slug(station: str) -> str:
    """A station name as a district / topic level: lower case, `-` between words."""
    return re.sub(r"[^a-z0-9]+", "-", station.strip().lower()).strip("-")


def _number(value: float) -> str:
    return f"{value:.10g}"


@dataclass(frozen=True, slots=True)
class _Hour:
    ts: datetime
    station: str
    values: tuple[tuple[str, float], ...] = ()


def _read(path: Path, summary: Summary) -> Iterator[_Hour]:
    try:
        with path.open(encoding="utf-8-sig", newline="") as stream:
            yield from _rows(path, stream, summary)
    except OSError as exc:
        raise ConversionError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise ConversionError(f"{path}: not UTF-8 text at byte {exc.start}") from None


def _rows(path: Path, stream: Iterator[str], summary: Summary) -> Iterator[_Hour]:
    reader = csv.reader(stream)
    try:
        header = [cell.strip() for cell in next(reader)]
    except StopIteration:
        raise ConversionError(f"{path}: the file is empty") from None
    columns = {name: i for i, name in enumerate(header)}
    needed = [*TIME_COLUMNS, *(c for c, _, _ in METRICS), "station"]
    missing = [c for c in needed if c not in columns]
    if missing:
        raise ConversionError(
            f"{path}:1: the header lacks {', '.join(missing)}; is this a PRSA_Data_*.csv file "
            "of the Beijing Multi-Site Air-Quality data set?"
        )
    previous: datetime | None = None
    for cells in reader:
        line = reader.line_num
        if not any(c.strip() for c in cells):
            continue
        if len(cells) != len(header):
            raise ConversionError(
                f"{path}:{line}: the row has {len(cells)} cells, the header {len(header)}"
            )
        summary.rows_read += 1
        try:
            y, mo, d, h = (int(cells[columns[c]]) for c in TIME_COLUMNS)
            ts = datetime(y, mo, d, h, tzinfo=BEIJING)
        except ValueError as exc:
            stamp = "-".join(cells[columns[c]] for c in TIME_COLUMNS)
            raise ConversionError(
                f"{path}:{line}: columns year,month,day,hour: {stamp!r} is not a time ({exc})"
            ) from None
        if previous is not None and ts <= previous:
            raise ConversionError(
                f"{path}:{line}: columns year,month,day,hour: {ts.isoformat()} does not "
                f"follow {previous.isoformat()}; the file must be in time order"
            )
        previous = ts
        station = cells[columns["station"]].strip()
        if not slug(station):
            raise ConversionError(f"{path}:{line}: column station is empty")
        values: list[tuple[str, float]] = []
        for column, metric, factor in METRICS:
            text = cells[columns[column]].strip()
            if text in MISSING:
                summary.missing_skipped += 1
                continue
            try:
                value = float(text)
            except ValueError:
                raise ConversionError(
                    f"{path}:{line}: column {column}: {text[:40]!r} is not a number or NA"
                ) from None
            values.append((metric, round(value * factor, 6)))
        yield _Hour(ts, station, tuple(values))


def device_id(station: str, prefix: str = "aq-bj-") -> str:
    return f"{prefix}{slug(station)}"


def convert(
    files: Sequence[Path],
    out: Path,
    registry_out: Path | None = None,
    *,
    since: date | None = None,
    until: date | None = None,
    prefix: str = "aq-bj-",
) -> Summary:
    """Write the replay file (and the registry) for `files`; see the module docstring.

    `since` and `until` (Beijing dates, `until` excluded) cut a window out of the
    four years. Raises ConversionError naming the file, line and column.
    """
    summary = Summary()
    start = datetime.combine(since, datetime.min.time(), BEIJING) if since else None
    stop = datetime.combine(until, datetime.min.time(), BEIJING) if until else None
    streams = [_read(Path(f), summary) for f in files]
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8", newline="") as stream:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(["ts", "device", "metric", "value"])
        for hour in heapq.merge(*streams, key=lambda h: (h.ts, device_id(h.station, prefix))):
            if (start and hour.ts < start) or (stop and hour.ts >= stop):
                continue
            device = device_id(hour.station, prefix)
            stamp = hour.ts.isoformat()
            for metric, value in hour.values:
                writer.writerow([stamp, device, metric, _number(value)])
            summary.stations[hour.station] = summary.stations.get(hour.station, 0) + len(
                hour.values
            )
            summary.readings_written += len(hour.values)
    if registry_out is not None:
        write_registry_csv(registry_out, station_records(summary.stations, prefix))
    return summary


def station_records(stations: Iterable[str], prefix: str = "aq-bj-") -> list[DeviceRecord]:
    """Registry rows for the stations, sorted by device id; unknown stations get no coordinates."""
    records = []
    for station in sorted(stations, key=lambda s: device_id(s, prefix)):
        known = STATIONS.get(station)
        name = f"Beijing {station}" + (f" ({known[0]})" if known else "")
        records.append(
            DeviceRecord(
                device_id=device_id(station, prefix),
                profile="air_quality",
                district=slug(station),
                name=f"{name} national station",
                lat=known[1] if known else None,
                lon=known[2] if known else None,
                attributes={"station_type": "national", "area": station},
            )
        )
    return records


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m simulators.datasets.beijing_air",
        description="Convert UCI Beijing Multi-Site Air-Quality files (PRSA_Data_*.csv) "
        "into a CityVitals replay CSV and device registry.",
    )
    parser.add_argument("files", nargs="+", type=Path, help="PRSA_Data_<station>_*.csv files")
    parser.add_argument("--out", type=Path, required=True, help="replay CSV to write")
    parser.add_argument("--registry-out", type=Path, help="device registry CSV to write")
    parser.add_argument("--since", type=date.fromisoformat, help="first Beijing date kept")
    parser.add_argument("--until", type=date.fromisoformat, help="Beijing date to stop before")
    parser.add_argument("--prefix", default="aq-bj-", help="device id prefix (default aq-bj-)")
    args = parser.parse_args(argv)
    try:
        summary = convert(
            args.files,
            args.out,
            args.registry_out,
            since=args.since,
            until=args.until,
            prefix=args.prefix,
        )
    except ConversionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"{summary.readings_written} readings of {len(summary.stations)} station(s) "
        f"from {summary.rows_read} hourly rows written to {args.out} "
        f"({summary.missing_skipped} NA values skipped)"
        + (f"; registry in {args.registry_out}" if args.registry_out else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
