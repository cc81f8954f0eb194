"""Rule files: YAML, validated by pydantic, conditions compiled once at load.

A rule file holds a list of rules (or `rules: [...]`); a profile's `rules:`
section holds the same. Every error names the file, the line of the rule and
the problem. See `rules/README.md` for the format.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from alerts.model import Level
from devices.durations import parse_duration
from devices.profile import NAME_PATTERN, DeviceProfile
from rules.derived import DERIVED_METRICS
from rules.expr import ExprError, Expression, compile_expression

BUILTIN_RULE_DIR = Path(__file__).parent / "library"


class RuleError(ValueError):
    """A rule file or rule is invalid; the message names file, line and problem."""


def _duration(value: Any) -> timedelta:
    return value if isinstance(value, timedelta) else parse_duration(value)


Duration = Annotated[timedelta, BeforeValidator(_duration)]
LevelField = Annotated[Level, BeforeValidator(Level.parse)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Rung(_Strict):
    level: LevelField
    when: str
    clear: str | None = None
    """Leaving this rung downwards needs `clear` (default: `when` no longer holds)."""


class Scope(_Strict):
    profiles: list[str] = []
    domains: list[str] = []
    devices: list[str] = []
    districts: list[str] = []
    attributes: dict[str, Any] = {}
    """Devices whose registry attributes equal these values."""


class Schedule(_Strict):
    between: tuple[str, str]
    """Local times [from, to); a window may wrap midnight (22:00 → 06:00)."""


class RuleSpec(_Strict):
    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    domain: Annotated[str, Field(pattern=NAME_PATTERN)]
    title: str = ""
    description: str = ""
    scope: Scope = Scope()
    when: str | None = None
    level: LevelField | None = None
    ladder: list[Rung] = []
    clear: str | None = None
    for_: Annotated[Duration, Field(alias="for")] = timedelta(0)
    clear_for: Duration = timedelta(0)
    event: list[str] | str | None = None
    resolve_on: list[str] = []
    resolve_after: Duration | None = None
    no_data: Annotated[float, Field(gt=0)] | None = None
    """Silent for this many reporting intervals of the device's profile."""
    area: Literal["district", "city"] | None = None
    member: str | None = None
    count: Annotated[int, Field(ge=1)] | None = None
    share: Annotated[float, Field(gt=0, le=1)] | None = None
    within: Duration | None = None
    active: Schedule | None = None
    summary: str = ""
    labels: dict[str, str] = {}

    @model_validator(mode="after")
    def _one_kind(self) -> RuleSpec:
        kinds = [
            k
            for k, present in (
                ("condition", self.when is not None or bool(self.ladder)),
                ("event", self.event is not None),
                ("no_data", self.no_data is not None),
                ("area", self.area is not None),
            )
            if present
        ]
        if len(kinds) != 1:
            raise ValueError(
                "a rule is exactly one of: a condition (when/ladder), an event, no_data or an "
                f"area rule; this one is {', '.join(kinds) or 'none of them'}"
            )
        if self.when is not None and self.ladder:
            raise ValueError("give either `when` with `level`, or a `ladder`, not both")
        if (
            self.when is not None
            or self.event is not None
            or self.no_data is not None
            or self.area is not None
        ) and self.level is None:
            raise ValueError("`level` is required (blue, yellow, orange or red)")
        if self.level is Level.NORMAL:
            raise ValueError("an alert's level is blue, yellow, orange or red, not normal")
        levels = [r.level for r in self.ladder]
        if levels != sorted(set(levels)):
            raise ValueError("ladder rungs go from the lowest level up, each level once")
        if self.area is not None:
            if not self.member:
                raise ValueError("an area rule names its `member` rule")
            if (self.count is None) == (self.share is None):
                raise ValueError("an area rule needs exactly one of `count` or `share`")
        return self

    @property
    def kind(self) -> str:
        if self.event is not None:
            return "event"
        if self.no_data is not None:
            return "no_data"
        if self.area is not None:
            return "area"
        return "condition"

    @property
    def events(self) -> list[str]:
        if self.event is None:
            return []
        return [self.event] if isinstance(self.event, str) else list(self.event)


@dataclass(frozen=True)
class CompiledRung:
    level: Level
    when: Expression
    clear: Expression | None


@dataclass(frozen=True)
class Rule:
    spec: RuleSpec
    source: str
    """`file:line` where the rule is defined."""
    rungs: tuple[CompiledRung, ...] = ()
    clear: Expression | None = None
    metrics: frozenset[str] = frozenset()
    profiles: frozenset[str] = frozenset()
    """Profiles the rule applies to (empty: every profile)."""
    window_seconds: dict[str, float] = field(default_factory=dict)
    """Longest window kept per metric for this rule."""
    name: str = field(init=False)
    """`spec.name` (read for every evaluation: an attribute, not a property)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", self.spec.name)

    def applies_to(
        self, profile: DeviceProfile, district: str, device_id: str, attributes: Mapping[str, Any]
    ) -> bool:
        s = self.spec.scope
        if self.profiles and profile.name not in self.profiles:
            return False
        if s.domains and profile.domain not in s.domains:
            return False
        if s.devices and device_id not in s.devices:
            return False
        if s.districts and district not in s.districts:
            return False
        return all(attributes.get(k) == v for k, v in s.attributes.items())


class _LineLoader(yaml.SafeLoader):
    """Records the line of every mapping under the key `__line__`."""


def _mapping_with_line(loader: _LineLoader, node: yaml.MappingNode) -> dict[str, Any]:
    mapping = {str(k): v for k, v in loader.construct_mapping(node, deep=True).items()}
    mapping["__line__"] = node.start_mark.line + 1
    return mapping


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_with_line)


def _strip_lines(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_lines(v) for k, v in value.items() if k != "__line__"}
    if isinstance(value, list):
        return [_strip_lines(v) for v in value]
    return value


def compile_rule(
    raw: Mapping[str, Any], source: str, profiles: Mapping[str, DeviceProfile]
) -> Rule:
    """Validate one rule and compile its expressions; RuleError names `source` and the problem."""
    data = _strip_lines(dict(raw))
    name = data.get("name", "?")
    try:
        spec = RuleSpec.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'rule'}: "
            f"{e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        )
        raise RuleError(f"{source}: rule {name!r}: {problems}") from None
    in_scope = [
        p
        for p in profiles.values()
        if (not spec.scope.profiles or p.name in spec.scope.profiles)
        and (not spec.scope.domains or p.domain in spec.scope.domains)
    ]
    unknown = [p for p in spec.scope.profiles if p not in profiles]
    if unknown:
        raise RuleError(
            f"{source}: rule {name!r}: scope names unknown profile(s) {', '.join(unknown)}"
        )
    metrics = sorted({m for p in in_scope for m in (*p.metrics, *DERIVED_METRICS.get(p.name, ()))})

    def expr(text: str, what: str) -> Expression:
        try:
            return compile_expression(text, metrics)
        except ExprError as exc:
            raise RuleError(f"{source}: rule {name!r}, {what}: {exc}") from None

    rungs: list[CompiledRung] = []
    if spec.when is not None:
        assert spec.level is not None
        rungs.append(CompiledRung(spec.level, expr(spec.when, "when"), None))
    for i, rung in enumerate(spec.ladder):
        rungs.append(
            CompiledRung(
                rung.level,
                expr(rung.when, f"ladder[{i}].when"),
                expr(rung.clear, f"ladder[{i}].clear") if rung.clear else None,
            )
        )
    clear = expr(spec.clear, "clear") if spec.clear else None
    used = [
        *(r.when for r in rungs),
        *(r.clear for r in rungs if r.clear),
        *([clear] if clear else []),
    ]
    windows: dict[str, float] = {}
    for e in used:
        for w in e.windows:
            windows[w.metric] = max(windows.get(w.metric, 0.0), w.seconds)
    return Rule(
        spec=spec,
        source=source,
        rungs=tuple(rungs),
        clear=clear,
        metrics=frozenset(m for e in used for m in e.metrics),
        profiles=frozenset(p.name for p in in_scope)
        if spec.scope.profiles or spec.scope.domains
        else frozenset(),
        window_seconds=windows,
    )


def _rule_items(data: Any, path: Path) -> list[dict[str, Any]]:
    if isinstance(data, dict) and "rules" in data:
        data = data["rules"]
    if data is None:
        return []
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise RuleError(f"{path}: a rule file is a list of rules (or `rules:` with a list)")
    return data


def load_rule_file(path: Path, profiles: Mapping[str, DeviceProfile]) -> list[Rule]:
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_LineLoader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise RuleError(f"{path}: cannot read the rule file: {exc}") from None
    return [
        compile_rule(item, f"{path}:{item.get('__line__', '?')}", profiles)
        for item in _rule_items(data, path)
    ]


def profile_rules(profiles: Mapping[str, DeviceProfile]) -> list[Rule]:
    """Default rules shipped inside the profiles (their `rules:` sections)."""
    rules: list[Rule] = []
    for profile in profiles.values():
        for i, raw in enumerate(profile.rules):
            scoped = {"scope": {"profiles": [profile.name]}, **raw}
            rules.append(compile_rule(scoped, f"{profile.path}:rules[{i}]", profiles))
    return rules


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...]

    def by_name(self) -> dict[str, Rule]:
        return {r.name: r for r in self.rules}


def load_rules(
    profiles: Mapping[str, DeviceProfile], directories: Iterable[Path] = (), builtin: bool = True
) -> RuleSet:
    """Built-in library + profile defaults + a deployment's directories (same name overrides)."""
    rules: dict[str, Rule] = {}
    dirs = [BUILTIN_RULE_DIR] if builtin and BUILTIN_RULE_DIR.is_dir() else []
    ordered: list[Rule] = profile_rules(profiles)
    for directory in [*dirs, *directories]:
        if not Path(directory).is_dir():
            raise RuleError(f"{directory}: rule directory does not exist")
        for path in sorted(Path(directory).glob("*.y*ml")):
            ordered += load_rule_file(path, profiles)
    for rule in ordered:
        rules[rule.name] = rule
    for rule in rules.values():
        member = rule.spec.member
        if member is not None and (member not in rules or rules[member].spec.kind == "area"):
            raise RuleError(
                f"{rule.source}: rule {rule.name!r}: member {member!r} is not a device rule"
            )
    return RuleSet(tuple(rules.values()))
