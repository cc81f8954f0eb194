"""`cityvitals dashboards build`: every dashboard as a deterministic JSON file.

The files go to the folder Grafana's dashboard provider reads
(deploy/grafana/dashboards/ in this repository, committed): building twice
gives the same bytes, and `check()` tells whether the committed files are
what the code builds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dashboards.catalog import DASHBOARDS
from dashboards.sql import register
from dashboards.style import render

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "dashboards"
"""Where the files are committed (a source checkout); `--out` elsewhere."""


@dataclass(frozen=True, slots=True)
class Built:
    name: str
    uid: str
    title: str
    document: dict[str, Any]
    text: str

    @property
    def filename(self) -> str:
        return f"{self.name}.json"


def build_all(
    dashboards: Mapping[str, Callable[[], dict[str, Any]]] = DASHBOARDS,
) -> list[Built]:
    """Every dashboard, built and rendered, in catalogue order."""
    register()
    out = []
    for name, function in dashboards.items():
        document = function()
        out.append(Built(name, document["uid"], document["title"], document, render(document)))
    uids = [b.uid for b in out]
    if len(set(uids)) != len(uids):
        raise ValueError(f"dashboard uids are not unique: {uids}")
    return out


def write(out_dir: Path, built: list[Built] | None = None) -> list[Path]:
    """Write every dashboard to `out_dir` and remove JSON files no dashboard makes."""
    built = build_all() if built is None else built
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for b in built:
        path = out_dir / b.filename
        if not path.exists() or path.read_text() != b.text:
            path.write_text(b.text)
        written.append(path)
    keep = {b.filename for b in built}
    for stale in out_dir.glob("*.json"):
        if stale.name not in keep:
            stale.unlink()
    return written


def check(out_dir: Path, built: list[Built] | None = None) -> list[str]:
    """What differs between `out_dir` and a fresh build (empty: up to date)."""
    built = build_all() if built is None else built
    problems = []
    for b in built:
        path = out_dir / b.filename
        if not path.exists():
            problems.append(f"{path} is missing")
        elif path.read_text() != b.text:
            problems.append(f"{path} differs from the code: run `cityvitals dashboards build`")
    extra = {p.name for p in out_dir.glob("*.json")} - {b.filename for b in built}
    problems += [f"{out_dir / name} is built by no dashboard" for name in sorted(extra)]
    return problems
