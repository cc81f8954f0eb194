"""Scenarios: YAML timelines of weather, pollution, power cuts, incidents and faults.

A scenario compiles into a `World` (pure functions of simulated time) and a
list of fault specs; `expect` states the alerts an operator should see, which
the end-to-end tests check once the rules and alerts exist. Shipped scenarios
live in `simulators/scenarios/`; `cityvitals simulate scenario NAME` finds them
by name.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from devices.durations import parse_duration
from simulators.faults import FaultSpec
from simulators.world import (
    EARTH_KM_PER_DEG,
    District,
    Incident,
    PollutionEpisode,
    PowerCut,
    StormCell,
    World,
)

SCENARIO_DIR = Path(__file__).parent / "scenarios"


class ScenarioError(ValueError):
    """A scenario file is unreadable or invalid; the message names file and field."""


def _duration(value: Any) -> timedelta:
    return value if isinstance(value, timedelta) else parse_duration(value)


Duration = Annotated[timedelta, BeforeValidator(_duration)]
Point = (
    tuple[float, float]
    | Literal[
        "north",
        "south",
        "east",
        "west",
        "centre",
        "northwest",
        "northeast",
        "southwest",
        "southeast",
    ]
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Storm(_Strict):
    peak_mm_h: Annotated[float, Field(gt=0, le=300)]
    duration: Duration
    radius_km: Annotated[float, Field(gt=0)] = 15.0
    start_at: Point = "west"
    end_at: Point = "east"
    """Where the cell's centre starts and ends: a compass side of the city or [lat, lon]."""


class Pollution(_Strict):
    peak_factor: Annotated[float, Field(ge=1, le=30)]
    build: Duration
    hold: Duration = timedelta(hours=12)
    clear: Duration = timedelta(hours=12)
    districts: list[str] = []


class PowerCutSpec(_Strict):
    district: str
    duration: Duration


class IncidentSpec(_Strict):
    kind: str
    duration: Duration
    district: str = ""
    devices: list[str] = []
    params: dict[str, float] = {}


class FaultEntry(_Strict):
    kind: str
    rate: Annotated[float, Field(ge=0, le=1)]
    duration: Duration | None = None
    devices: list[str] = []
    params: dict[str, Any] = {}


class Step(_Strict):
    at: Duration
    storm: Storm | None = None
    pollution: Pollution | None = None
    power_cut: PowerCutSpec | None = None
    incident: IncidentSpec | None = None
    faults: list[FaultEntry] = []
    note: str = ""


class Expectation(_Strict):
    """An alert the operator should see: matched against alert transitions by the e2e tests."""

    domain: str
    level: Literal["blue", "yellow", "orange", "red"]
    what: str
    district: str | None = None
    profile: str | None = None
    after: Duration = timedelta(0)
    before: Duration | None = None
    event: str | None = None
    rule: str | None = None
    """The rule that should raise it, when the domain and level alone are ambiguous."""


class CitySpec(_Strict):
    districts: Annotated[int, Field(ge=1, le=500)] = 4
    devices: Annotated[int, Field(ge=1, le=200_000)] = 400


class Scenario(_Strict):
    name: str
    title: str
    description: str = ""
    start: datetime
    duration: Duration
    speed: Annotated[float, Field(gt=0)] = 60.0
    seed: int = 0
    timezone: str = "Asia/Shanghai"
    city: CitySpec = CitySpec()
    timeline: list[Step] = []
    expect: list[Expectation] = []
    quiet_above: Literal["blue", "yellow", "orange", "red"] | None = None
    """No alert above this level should fire (a quiet day: `blue`)."""
    path: Path | None = Field(default=None, exclude=True)

    def world(self, districts: list[District]) -> World:
        """The scenario's weather, pollution, power and incidents over these districts."""
        if self.start.tzinfo is None:
            raise ScenarioError(f"{self.path}: start needs a UTC offset, e.g. +08:00")
        names = {d.name for d in districts}
        storms, episodes, cuts, incidents = [], [], [], []
        for step in self.timeline:
            at = self.start + step.at
            if step.storm:
                s = step.storm
                storms.append(
                    StormCell(
                        at,
                        s.duration,
                        s.peak_mm_h,
                        s.radius_km,
                        _point(s.start_at, districts),
                        _point(s.end_at, districts),
                    )
                )
            if step.pollution:
                p = step.pollution
                where = frozenset(_known(d, names, self.path, districts) for d in p.districts)
                episodes.append(
                    PollutionEpisode(at, p.build, p.hold, p.clear, p.peak_factor, where)
                )
            if step.power_cut:
                district = _known(step.power_cut.district, names, self.path, districts)
                cuts.append(PowerCut(district, at, step.power_cut.duration))
            if step.incident:
                i = step.incident
                district = _known(i.district, names, self.path, districts) if i.district else ""
                incidents.append(
                    Incident(
                        i.kind,
                        at,
                        i.duration,
                        district,
                        frozenset(i.devices),
                        tuple(sorted(i.params.items())),
                    )
                )
        return World(
            tuple(districts),
            tuple(storms),
            tuple(episodes),
            tuple(cuts),
            tuple(incidents),
            timezone=self.timezone,
        )

    def faults(self) -> list[tuple[timedelta, FaultEntry]]:
        return [(step.at, f) for step in self.timeline for f in step.faults]


def _known(name: str, names: set[str], path: Path | None, districts: list[District]) -> str:
    """Scenario districts may be names (d02) or 1-based indexes into the city (2)."""
    if name in names:
        return name
    if name.isdigit() and 1 <= int(name) <= len(districts):
        return districts[int(name) - 1].name
    raise ScenarioError(
        f"{path}: district {name!r} is not in the simulated city ({', '.join(sorted(names))})"
    )


def _point(p: Point, districts: list[District]) -> tuple[float, float]:
    if isinstance(p, tuple):
        return p
    lats = [d.lat for d in districts]
    lons = [d.lon for d in districts]
    margin = max(d.radius_km for d in districts) * 2 / EARTH_KM_PER_DEG
    north, south = max(lats) + margin, min(lats) - margin
    east, west = max(lons) + margin, min(lons) - margin
    mid_lat, mid_lon = (north + south) / 2, (east + west) / 2
    return {
        "north": (north, mid_lon),
        "south": (south, mid_lon),
        "east": (mid_lat, east),
        "west": (mid_lat, west),
        "centre": (mid_lat, mid_lon),
        "northwest": (north, west),
        "northeast": (north, east),
        "southwest": (south, west),
        "southeast": (south, east),
    }[p]


def find_scenario(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = SCENARIO_DIR / f"{name_or_path}.yaml"
    if shipped.is_file():
        return shipped
    known = ", ".join(sorted(p.stem for p in SCENARIO_DIR.glob("*.yaml")))
    raise ScenarioError(
        f"no scenario file {name_or_path!r} and no shipped scenario of that name (shipped: {known})"
    )


def load_scenario(name_or_path: str | Path) -> Scenario:
    path = find_scenario(name_or_path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ScenarioError(
            f"{path}: cannot read the scenario (save it as UTF-8 YAML): {exc}"
        ) from None
    if not isinstance(data, dict):
        raise ScenarioError(f"{path}: a scenario is a YAML mapping (name, start, timeline…)")
    data.setdefault("name", path.stem)
    try:
        scenario = Scenario.model_validate({**data, "path": path})
    except ValidationError as exc:
        lines = [f"{path}: invalid scenario"]
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"])
            lines.append(f"  {where}: {err['msg'].removeprefix('Value error, ')}")
        raise ScenarioError("\n".join(lines)) from None
    # Faults are checked now, not when the run reaches them.
    for i, step in enumerate(scenario.timeline):
        for j, entry in enumerate(step.faults):
            try:
                FaultSpec.from_entry(entry, scenario.start + step.at)
            except ValueError as exc:
                field = "kind" if "kind" in str(exc).lower() else "params"
                raise ScenarioError(
                    f"{path}: invalid scenario\n  timeline.{i}.faults.{j}.{field}: {exc}"
                ) from None
    return scenario
