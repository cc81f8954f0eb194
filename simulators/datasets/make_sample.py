"""Generate `sample_replay.csv`: a synthetic hour of readings for the demo registry.

    python -m simulators.datasets.make_sample [--out simulators/datasets/sample_replay.csv]

The readings are made up, not measured: a summer-morning shower over the two
demo districts (huangpu, then pudong five minutes later) that fills the rain
gauges, lifts the drainage fill ratios and the river levels a little, washes
out some particulate matter and adds a couple of decibels, while two lifts run
between floors. It exists so `cityvitals simulate replay` has something to play
out of the box. The output is deterministic: the same file every run.
"""

from __future__ import annotations

import argparse
import csv
import math
import random
import sys
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

SAMPLE = Path(__file__).with_name("sample_replay.csv")
START = datetime(2026, 7, 15, 8, 0, tzinfo=timezone(timedelta(hours=8)))
STEP = timedelta(minutes=5)
STEPS = 10
SEED = 20260715

# (peak intensity mm/h, minutes after START of the peak) of the shower per district.
SHOWER = {"huangpu": (30.0, 20.0), "pudong": (24.0, 25.0)}


def _intensity(district: str, minutes: float) -> float:
    peak, at = SHOWER[district]
    return peak * math.exp(-(((minutes - at) / 8.0) ** 2))


def sample_rows() -> list[list[str]]:
    """The rows of the sample file, header first."""
    rng = random.Random(SEED)
    rows: list[list[str]] = [["ts", "device", "metric", "value"]]
    rain_total = {"huangpu": 0.0, "pudong": 0.0}
    floors = {"el-hp-001": 1, "el-pd-001": 1}
    top = {"el-hp-001": 32, "el-pd-001": 6}

    def noise(size: float) -> float:
        return rng.uniform(-size, size)

    for step in range(STEPS):
        ts = (START + step * STEP).isoformat()
        minutes = step * STEP.total_seconds() / 60
        out: list[tuple[str, str, object]] = []
        for district, suffix in (("huangpu", "hp"), ("pudong", "pd")):
            intensity = _intensity(district, minutes)
            # Rain per 5-minute report in whole 0.2 mm bucket tips.
            rain_mm = math.floor(intensity * STEP.total_seconds() / 3600 / 0.2) * 0.2
            rain_total[district] += rain_mm
            washout = 1 - 0.35 * min(1.0, rain_total[district] / 4)
            base_level = 3.10 if district == "huangpu" else 2.60
            diameter_m = 0.8 if district == "huangpu" else 1.2
            fill = 0.30 + 0.018 * intensity + noise(0.01)
            pm2_5 = (42.0 if district == "huangpu" else 35.0) * washout + noise(2)
            laeq = (64.0 if district == "huangpu" else 52.0) + intensity / 15 + noise(1.5)
            out += [
                (
                    f"wl-{suffix}-001",
                    "level_m",
                    round(base_level + 0.012 * rain_total[district] + noise(0.004), 3),
                ),
                (f"rg-{suffix}-001", "rain_mm", round(rain_mm, 1)),
                (f"rg-{suffix}-001", "intensity_mm_h", round(intensity, 1)),
                (f"dr-{suffix}-001", "level_m", round(fill * diameter_m, 3)),
                (f"dr-{suffix}-001", "fill_ratio", round(fill, 3)),
                (f"aq-{suffix}-001", "pm2_5", round(pm2_5, 1)),
                (f"aq-{suffix}-001", "pm10", round(pm2_5 * 1.6 + noise(3), 1)),
                (f"nz-{suffix}-001", "laeq_db", round(laeq, 1)),
            ]
            lift = f"el-{suffix}-001"
            running = rng.random() < 0.6
            if running:
                floors[lift] = rng.choice([f for f in range(1, top[lift] + 1) if f != floors[lift]])
            out += [
                (lift, "floor", floors[lift]),
                (lift, "state", "running" if running else "idle"),
            ]
        order = ("wl", "rg", "dr", "aq", "nz", "el")
        out.sort(key=lambda r: (order.index(r[0][:2]), r[0]))
        rows += [[ts, device, metric, str(value)] for device, metric, value in out]
    return rows


def write_sample(path: Path = SAMPLE) -> int:
    """Write the sample; returns the number of readings."""
    rows = sample_rows()
    with path.open("w", encoding="utf-8", newline="") as stream:
        csv.writer(stream, lineterminator="\n").writerows(rows)
    return len(rows) - 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m simulators.datasets.make_sample",
        description="Write the synthetic sample replay file for the demo registry.",
    )
    parser.add_argument("--out", type=Path, default=SAMPLE, help=f"default {SAMPLE}")
    args = parser.parse_args(argv)
    count = write_sample(args.out)
    print(f"{count} synthetic readings written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
