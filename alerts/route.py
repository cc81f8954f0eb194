"""The routing tree: which teams an alert goes to, and how its notifications are grouped.

In the spirit of Alertmanager's `route`: the root matches every alert; a node
that matches hands the alert to its children, and the first child that matches
takes it (a child with `continue: true` lets its later siblings match too);
when no child matches, the node itself is the match. Children inherit
`group_by` and the group timers from their parent unless they set their own.

Routing files are YAML, validated by pydantic with errors naming the file, the
field and the problem (`load_routing`). Matching is a pure function of an
alert's attributes (`alerts.silence.alert_attributes`): no I/O, no clock.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from alerts.model import Level
from devices.durations import format_duration, parse_duration

DEFAULT_ROUTING_FILE = Path(__file__).parent / "routing.yaml"
LANGUAGES = ("zh", "en")


class RoutingError(ValueError):
    """A routing file is not valid; the message names the file, the field and the problem."""


def _duration(value: Any) -> timedelta:
    if isinstance(value, timedelta):
        return value
    return parse_duration(value)


Duration = Annotated[timedelta, BeforeValidator(_duration)]
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


def _level(value: Any) -> Level:
    if isinstance(value, int) and not isinstance(value, bool):
        return Level(value)
    return Level.parse(str(value))


LevelName = Annotated[Level, BeforeValidator(_level)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# --- channels ------------------------------------------------------------------------


class _Channel(_Strict):
    name: str | None = Field(default=None, pattern=_NAME)
    """Names the channel in the outbox; defaults to its type (and position if repeated)."""
    language: Literal["zh", "en"] | None = None
    """Overrides the team's language for this channel."""


class WebhookChannel(_Channel):
    type: Literal["webhook"]
    url: str = Field(pattern=r"^https?://")
    secret: str | None = None
    """HMAC-SHA256 key for the X-CityVitals-Signature header."""
    secret_env: str | None = None
    """…or the name of an environment variable holding it (keeps secrets out of the file)."""
    timeout: Duration = timedelta(seconds=10)

    @model_validator(mode="after")
    def _one_secret(self) -> WebhookChannel:
        if self.secret is None and self.secret_env is None:
            raise ValueError("a webhook needs `secret` or `secret_env` (its HMAC key)")
        if self.secret is not None and self.secret_env is not None:
            raise ValueError("give `secret` or `secret_env`, not both")
        return self

    def key(self) -> bytes:
        if self.secret is not None:
            return self.secret.encode("utf-8")
        value = os.environ.get(str(self.secret_env))
        if not value:
            raise RoutingError(f"webhook {self.url}: environment variable {self.secret_env} unset")
        return value.encode("utf-8")

    @property
    def target(self) -> str:
        return self.url.split("?")[0]


class EmailChannel(_Channel):
    type: Literal["email"]
    to: list[Annotated[str, Field(pattern=r"^[^@\s]+@[^@\s]+$")]] = Field(min_length=1)

    @property
    def target(self) -> str:
        return ", ".join(self.to)


class MqttChannel(_Channel):
    type: Literal["mqtt"]
    topic: str = Field(pattern=r"^[^#+\s]+$")
    retain: bool = False

    @property
    def target(self) -> str:
        return self.topic


class AppriseChannel(_Channel):
    type: Literal["apprise"]
    url: str | None = Field(default=None, pattern=r"^[a-z][a-z0-9+.-]*://")
    url_env: str | None = None

    @model_validator(mode="after")
    def _one_url(self) -> AppriseChannel:
        if (self.url is None) == (self.url_env is None):
            raise ValueError("an apprise channel needs exactly one of `url` or `url_env`")
        return self

    def resolved_url(self) -> str:
        if self.url is not None:
            return self.url
        value = os.environ.get(str(self.url_env))
        if not value:
            raise RoutingError(f"apprise channel: environment variable {self.url_env} unset")
        return value

    @property
    def target(self) -> str:
        # Apprise URLs carry tokens: show the scheme only.
        return (self.url or f"${self.url_env}").split("://")[0] + "://…"


Channel = Annotated[
    WebhookChannel | EmailChannel | MqttChannel | AppriseChannel, Field(discriminator="type")
]


class Team(_Strict):
    members: list[str] = []
    """User names (the API's users) who act for the team."""
    language: Literal["zh", "en"] = "zh"
    channels: list[Channel] = []

    def named_channels(self) -> list[tuple[str, Channel]]:
        """(name, channel) pairs; unnamed channels are named by type, numbered if repeated."""
        counts: dict[str, int] = {}
        for c in self.channels:
            if c.name is None:
                counts[c.type] = counts.get(c.type, 0) + 1
        seen: dict[str, int] = {}
        out = []
        for c in self.channels:
            if c.name is None:
                seen[c.type] = seen.get(c.type, 0) + 1
            name = c.name or (c.type if counts[c.type] == 1 else f"{c.type}-{seen[c.type]}")
            out.append((name, c))
        return out


# --- the tree ------------------------------------------------------------------------

MATCH_FIELDS = ("rule", "domain", "device_id", "district")


class RouteSpec(_Strict):
    name: str | None = Field(default=None, pattern=_NAME)
    receiver: str | None = None
    match: dict[str, str] = {}
    """Exact matches on rule, domain, device_id, district or a label."""
    match_re: dict[str, str] = {}
    """Regular expressions (whole value) on the same names."""
    level: LevelName | None = None
    """Matches alerts at this level or above."""
    continue_: bool = Field(default=False, alias="continue")
    group_by: list[str] | None = None
    group_wait: Duration | None = None
    group_interval: Duration | None = None
    repeat_interval: Duration | None = None
    routes: list[RouteSpec] = []

    @field_validator("match_re")
    @classmethod
    def _regexes(cls, value: dict[str, str]) -> dict[str, str]:
        for name, pattern in value.items():
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{name}: {pattern!r} is not a valid regex ({exc})") from None
        return value

    @field_validator("match")
    @classmethod
    def _no_level(cls, value: dict[str, str]) -> dict[str, str]:
        if "level" in value:
            raise ValueError("match on level with `level: orange` (this level or above)")
        return value


class EscalationStage(_Strict):
    after: Duration
    """Time since the alert was first notified."""
    unless: Literal["acknowledged", "handled"]
    """The stage is skipped once the alert reached this handling state (or a later one)."""
    notify: str
    """The team to notify."""


class RoutingSpec(_Strict):
    route: RouteSpec
    teams: dict[Annotated[str, Field(pattern=_NAME)], Team]
    escalation: dict[LevelName, list[EscalationStage]] = {}

    @model_validator(mode="after")
    def _references(self) -> RoutingSpec:
        if self.route.receiver is None:
            raise ValueError("route.receiver: the root route needs a receiver (the default team)")
        if self.route.match or self.route.match_re or self.route.level is not None:
            raise ValueError("route: the root route matches every alert; move matchers to routes")

        def walk(spec: RouteSpec, where: str) -> None:
            if spec.receiver is not None and spec.receiver not in self.teams:
                raise ValueError(f"{where}.receiver: team {spec.receiver!r} is not in teams")
            for i, child in enumerate(spec.routes):
                walk(child, f"{where}.routes[{i}]")

        walk(self.route, "route")
        for level, stages in self.escalation.items():
            previous = timedelta(0)
            for i, stage in enumerate(stages):
                where = f"escalation.{level.label}[{i}]"
                if stage.notify not in self.teams:
                    raise ValueError(f"{where}.notify: team {stage.notify!r} is not in teams")
                if stage.after < previous:
                    raise ValueError(f"{where}.after: stages must be in order of time")
                previous = stage.after
        return self


# --- compiled, pure ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Route:
    id: str
    """Stable identity in the tree: its name, or its path like `root.2.0`."""
    receiver: str
    match: tuple[tuple[str, str], ...]
    match_re: tuple[tuple[str, re.Pattern[str]], ...]
    min_level: Level | None
    continue_: bool
    group_by: tuple[str, ...]
    group_wait: timedelta
    group_interval: timedelta
    repeat_interval: timedelta
    routes: tuple[Route, ...] = ()

    def matches(self, attributes: Mapping[str, str]) -> bool:
        if self.min_level is not None:
            try:
                if Level.parse(attributes.get("level", "normal")) < self.min_level:
                    return False
            except ValueError:
                return False
        if any(attributes.get(k, "") != v for k, v in self.match):
            return False
        return all(p.fullmatch(attributes.get(k, "")) for k, p in self.match_re)

    def group_labels(self, attributes: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
        return tuple((k, attributes.get(k, "")) for k in self.group_by)

    def describe(self) -> str:
        parts = [f"{k}={v}" for k, v in self.match]
        parts += [f"{k}=~{p.pattern}" for k, p in self.match_re]
        if self.min_level is not None:
            parts.append(f"level>={self.min_level.label}")
        return "{" + ", ".join(parts) + "}"


def match_routes(route: Route, attributes: Mapping[str, str]) -> list[Route]:
    """The routes (leaves of the walk) that take an alert with `attributes`, in tree order."""
    if not route.matches(attributes):
        return []
    found: list[Route] = []
    for child in route.routes:
        hits = match_routes(child, attributes)
        found += hits
        if hits and not child.continue_:
            break
    return found or [route]


@dataclass(frozen=True, slots=True)
class Routing:
    root: Route
    teams: Mapping[str, Team]
    escalation: Mapping[Level, tuple[EscalationStage, ...]] = field(default_factory=dict)
    source: str = "<routing>"

    def match(self, attributes: Mapping[str, str]) -> list[Route]:
        return match_routes(self.root, attributes)

    def teams_for(self, attributes: Mapping[str, str]) -> list[str]:
        """Receivers of the matched routes, first match first, without repeats."""
        return list(dict.fromkeys(r.receiver for r in self.match(attributes)))

    def owner(self, attributes: Mapping[str, str]) -> str | None:
        """The team that owns an alert (alerts.team): the receiver of the first matched route
        that does not `continue` — routes that continue are copies for onlookers, such as the
        duty officer seeing every red alert — else the first matched receiver."""
        matched = self.match(attributes)
        owners = [r.receiver for r in matched if not r.continue_] or [r.receiver for r in matched]
        return owners[0] if owners else None

    def routes(self) -> list[Route]:
        out: list[Route] = []

        def walk(r: Route) -> None:
            out.append(r)
            for c in r.routes:
                walk(c)

        walk(self.root)
        return out


_DEFAULT_TIMERS = {
    "group_wait": timedelta(seconds=30),
    "group_interval": timedelta(minutes=5),
    "repeat_interval": timedelta(hours=4),
}


def _compile(spec: RouteSpec, parent: Route | None, path: str) -> Route:
    def inherit(name: str) -> Any:
        own = getattr(spec, name)
        if own is not None:
            return own
        return getattr(parent, name) if parent is not None else _DEFAULT_TIMERS.get(name)

    group_by = spec.group_by if spec.group_by is not None else (parent.group_by if parent else ())
    node = Route(
        id=spec.name or path,
        receiver=spec.receiver or (parent.receiver if parent else ""),
        match=tuple(sorted(spec.match.items())),
        match_re=tuple((k, re.compile(v)) for k, v in sorted(spec.match_re.items())),
        min_level=spec.level,
        continue_=spec.continue_,
        group_by=tuple(group_by),
        group_wait=inherit("group_wait"),
        group_interval=inherit("group_interval"),
        repeat_interval=inherit("repeat_interval"),
    )
    children = tuple(_compile(c, node, f"{path}.{i}") for i, c in enumerate(spec.routes))
    return dataclasses.replace(node, routes=children)


def build_routing(spec: RoutingSpec, source: str = "<routing>") -> Routing:
    root = _compile(spec.route, None, "root")
    ids = [r.id for r in Routing(root, {}).routes()]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise RoutingError(f"{source}: route names must be unique; repeated: {', '.join(dupes)}")
    return Routing(
        root,
        dict(spec.teams),
        {level: tuple(stages) for level, stages in spec.escalation.items()},
        source,
    )


def _where(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("webhook", "email", "mqtt", "apprise") and out.endswith("]"):
            continue  # the discriminator's own level in pydantic's path
        else:
            out += f".{part}" if out else str(part)
    return out


def parse_routing(data: object, source: str = "<routing>") -> Routing:
    """Validate parsed YAML; RoutingError names `source`, the field and the problem."""
    if not isinstance(data, dict):
        raise RoutingError(f"{source}: a routing file is a mapping with `route` and `teams`")
    try:
        spec = RoutingSpec.model_validate(data)
    except ValidationError as exc:
        problems = [
            f"{source}: {_where(e['loc']) or '(top)'}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        ]
        raise RoutingError("\n".join(problems)) from None
    return build_routing(spec, source)


def load_routing(path: Path | str | None = None) -> Routing:
    """Read and validate a routing file (default: the shipped `alerts/routing.yaml`)."""
    file = Path(path) if path is not None else DEFAULT_ROUTING_FILE
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RoutingError(f"{file}: cannot read the routing file ({exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RoutingError(f"{file}: not valid YAML ({exc})") from None
    return parse_routing(data, str(file))


def describe_timers(route: Route) -> str:
    return (
        f"group_by [{', '.join(route.group_by)}], wait {format_duration(route.group_wait)}, "
        f"interval {format_duration(route.group_interval)}, "
        f"repeat {format_duration(route.repeat_interval)}"
    )
