"""Device profiles: one YAML file per device type, validated when loaded.

A profile tells the platform everything it needs about a kind of device
without Python: its domain, how often it reports, each metric with unit and
physical range, the per-device attributes rules need, its event types, how to
decode its payloads, default rules and a simulator model. See
`devices/profiles/README.md` for the format.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import timedelta
from functools import cached_property
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

from devices.durations import parse_duration
from devices.errors import ProfileError

BUILTIN_PROFILE_DIR = Path(__file__).parent / "profiles"

NAME_PATTERN = r"^[a-z][a-z0-9_]*$"
_NAME = re.compile(NAME_PATTERN)

Decoder = Callable[[bytes, str], Any]
"""`decode(payload, channel)` turns a vendor payload of a channel (`telemetry`,
`event`, `status`) into the canonical JSON shape, or raises DecodeError."""


def _duration(value: Any) -> timedelta:
    if isinstance(value, timedelta):
        return value
    return parse_duration(value)


Duration = Annotated[timedelta, BeforeValidator(_duration)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MetricSpec(_Strict):
    """One measured quantity. Values are stored as numbers in `readings.value`."""

    unit: str = ""
    description: str = ""
    type: Literal["float", "int", "bool", "enum"] = "float"
    range: tuple[float, float] | None = None
    """Physical range [min, max]; values outside are stored and flagged, not rejected."""
    values: dict[str, int] | None = None
    """For `enum` metrics: the words a device sends and the number stored for each."""

    @model_validator(mode="after")
    def _check(self) -> MetricSpec:
        if self.type == "enum" and not self.values:
            raise ValueError("an enum metric needs `values: {word: number, ...}`")
        if self.type != "enum" and self.values is not None:
            raise ValueError(f"`values` is only for enum metrics, this one is {self.type}")
        if self.range is not None:
            if not all(math.isfinite(v) for v in self.range):
                raise ValueError("range bounds must be finite numbers")
            if self.range[0] > self.range[1]:
                raise ValueError(f"range minimum {self.range[0]} exceeds maximum {self.range[1]}")
            if self.type in ("bool", "enum"):
                raise ValueError(f"a {self.type} metric takes no range")
        if self.values is not None and len(set(self.values.values())) != len(self.values):
            raise ValueError("two enum words share a number; give each word its own")
        return self

    @cached_property
    def code_to_word(self) -> dict[int, str]:
        return {v: k for k, v in (self.values or {}).items()}


class AttributeSpec(_Strict):
    """A per-device setting kept in the registry, e.g. a gauge's warning level."""

    type: Literal["float", "int", "str", "bool", "enum"] = "float"
    unit: str = ""
    description: str = ""
    required: bool = False
    default: float | int | str | bool | None = None
    values: list[str] | None = None
    """For `enum` attributes: the accepted words."""

    @model_validator(mode="after")
    def _check(self) -> AttributeSpec:
        if self.type == "enum" and not self.values:
            raise ValueError("an enum attribute needs `values: [word, ...]`")
        if self.required and self.default is not None:
            raise ValueError("an attribute is either required or has a default, not both")
        if self.default is not None:
            self.convert(self.default)
        return self

    def convert(self, raw: Any) -> float | int | str | bool:
        """Convert a registry cell to this attribute's type, or raise ValueError."""
        text = str(raw).strip()
        match self.type:
            case "float":
                value = float(text)
                if value != value or value in (float("inf"), float("-inf")):
                    raise ValueError(f"{text!r} is not a finite number")
                return value
            case "int":
                return int(text)
            case "bool":
                low = text.lower()
                if low in ("1", "true", "yes", "y"):
                    return True
                if low in ("0", "false", "no", "n"):
                    return False
                raise ValueError(f"{text!r} is not a boolean; use true or false")
            case "enum":
                assert self.values is not None
                if text not in self.values:
                    raise ValueError(f"{text!r} is not one of {', '.join(self.values)}")
                return text
            case _:
                return text


class EventSpec(_Strict):
    """An event type a device can send on its `event` channel."""

    code: int | None = None
    description: str = ""
    level: Literal["blue", "yellow", "orange", "red"] | None = None
    """The default alert level the rules give this event, when it raises one."""


class SimulatorSpec(BaseModel):
    """Which simulator model stands in for this device type; checked by `simulators`."""

    model_config = ConfigDict(extra="allow", frozen=True)
    model: str


class DeviceProfile(_Strict):
    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    domain: Annotated[str, Field(pattern=NAME_PATTERN)]
    title: str
    description: str = ""
    reporting_interval: Duration
    metrics: dict[str, MetricSpec]
    attributes: dict[str, AttributeSpec] = {}
    events: dict[str, EventSpec] = {}
    decoder: str = "json"
    """`json` (the canonical payload) or `package.module:function` for a vendor format."""
    rules: list[dict[str, Any]] = []
    """Default rules, in the rule engine's YAML format (checked by `rules`)."""
    simulator: SimulatorSpec | None = None
    path: Path | None = Field(default=None, exclude=True)

    @field_validator("metrics", "attributes", "events")
    @classmethod
    def _names(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            if not _NAME.match(key):
                raise ValueError(
                    f"name {key!r} must be lower-case letters, digits and _ and start with a letter"
                )
        return value

    @field_validator("metrics")
    @classmethod
    def _some_metrics(cls, value: dict[str, MetricSpec]) -> dict[str, MetricSpec]:
        if not value:
            raise ValueError("a profile needs at least one metric")
        return value

    @field_validator("reporting_interval")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be longer than zero, e.g. 5m")
        return value

    @field_validator("decoder")
    @classmethod
    def _decoder_ref(cls, value: str) -> str:
        if value != "json":
            _import_decoder(value)
        return value

    @field_validator("events")
    @classmethod
    def _event_codes_unique(cls, value: dict[str, EventSpec]) -> dict[str, EventSpec]:
        seen: dict[int, str] = {}
        for name, spec in value.items():
            if spec.code is None:
                continue
            if spec.code in seen:
                raise ValueError(f"events {seen[spec.code]} and {name} share code {spec.code}")
            seen[spec.code] = name
        return value

    @cached_property
    def decode(self) -> Decoder | None:
        """The vendor decoder, or None for canonical JSON."""
        return None if self.decoder == "json" else _import_decoder(self.decoder)

    @cached_property
    def event_by_code(self) -> dict[int, str]:
        return {spec.code: name for name, spec in self.events.items() if spec.code is not None}

    def device_attributes(self, raw: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """Convert a device's raw attributes; returns (attributes, problems).

        Unknown keys are kept as text so a deployment can carry its own labels.
        Declared attributes are converted, defaults filled in, required ones checked.
        """
        out: dict[str, Any] = {}
        problems: list[str] = []
        failed: set[str] = set()
        for key, value in raw.items():
            if value is None or (isinstance(value, str) and not value.strip()):
                continue
            spec = self.attributes.get(key)
            if spec is None:
                out[key] = value
                continue
            try:
                out[key] = spec.convert(value)
            except ValueError as exc:
                problems.append(f"attribute {key}: {exc}")
                failed.add(key)
        for key, spec in self.attributes.items():
            if key in out or key in failed:
                continue
            if spec.default is not None:
                out[key] = spec.convert(spec.default)
            elif spec.required:
                problems.append(
                    f"attribute {key} is required by profile {self.name} ({spec.description})"
                )
        return out, problems


def _import_decoder(ref: str) -> Decoder:
    module_name, sep, func_name = ref.partition(":")
    if not sep or not module_name or not func_name:
        raise ValueError(f"{ref!r} is neither 'json' nor 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import decoder module {module_name!r}: {exc}") from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise ValueError(f"module {module_name!r} has no function {func_name!r}")
    return func  # type: ignore[no-any-return]


def _field_path(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item in ("function-after", "function-before") or str(item).startswith(
            ("function-", "tuple[")
        ):
            continue
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts)


def _merge(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """`child` over `base`; the named tables (metrics, attributes, events) merge per key."""
    merged = {**base, **child}
    for table in ("metrics", "attributes", "events"):
        if isinstance(base.get(table), dict) and isinstance(child.get(table), dict):
            merged[table] = {**base[table], **child[table]}
    merged.pop("extends", None)
    return merged


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(path, [("", f"cannot read the file: {exc}")]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else ""
        raise ProfileError(path, [(where, f"not valid YAML: {exc}")]) from None
    if not isinstance(data, dict):
        raise ProfileError(path, [("", "a profile is a YAML mapping with name, domain, metrics…")])
    return data


def load_profile(path: Path | str, search: Iterable[Path] = ()) -> DeviceProfile:
    """Load and validate one profile file; raises ProfileError naming file and fields.

    A profile may start from another with `extends: NAME`: the base is looked up
    beside the file, then in `search`, then among the built-in profiles.
    """
    path = Path(path)
    data = _read_yaml(path)
    seen = [path.stem]
    while "extends" in data:
        base_name = data["extends"]
        if not isinstance(base_name, str) or base_name in seen:
            raise ProfileError(path, [("extends", f"{base_name!r} is not a usable base profile")])
        seen.append(base_name)
        candidates = [d / f"{base_name}.yaml" for d in (path.parent, *search, BUILTIN_PROFILE_DIR)]
        base_path = next((c for c in candidates if c.is_file()), None)
        if base_path is None:
            raise ProfileError(
                path, [("extends", f"no profile {base_name!r} beside the file or built in")]
            )
        base = _read_yaml(base_path)
        base.pop("name", None)
        grand_base = base.get("extends")
        data = _merge(base, data)
        if grand_base is not None:
            data["extends"] = grand_base
    data.setdefault("name", path.stem)
    problems: list[tuple[str, str]] = []
    if data["name"] != path.stem:
        problems.append(("name", f"{data['name']!r} must match the file name {path.stem!r}"))
    try:
        profile = DeviceProfile.model_validate({**data, "path": path})
    except ValidationError as exc:
        problems += [
            (_field_path(err["loc"]), err["msg"].removeprefix("Value error, "))
            for err in exc.errors()
        ]
        raise ProfileError(path, problems) from None
    if problems:
        raise ProfileError(path, problems)
    return profile


class ProfileSet(Mapping[str, DeviceProfile]):
    """Profiles by name; later directories override earlier ones of the same name."""

    def __init__(self, profiles: Iterable[DeviceProfile] = ()) -> None:
        self._by_name: dict[str, DeviceProfile] = {p.name: p for p in profiles}

    def __getitem__(self, name: str) -> DeviceProfile:
        return self._by_name[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)


def profile_files(directories: Iterable[Path | str]) -> list[Path]:
    files: list[Path] = []
    for directory in directories:
        d = Path(directory)
        if not d.is_dir():
            raise ProfileError(d, [("", "profile directory does not exist")])
        files += sorted(p for p in d.iterdir() if p.suffix in (".yaml", ".yml"))
    return files


def load_profiles(extra_dirs: Iterable[Path | str] = ()) -> ProfileSet:
    """The built-in profiles plus those of a deployment's extra directories.

    Raises ProfileError for the first invalid file; `cityvitals devices validate`
    reports every file.
    """
    dirs = [Path(d) for d in extra_dirs]
    return ProfileSet(load_profile(p, dirs) for p in profile_files([BUILTIN_PROFILE_DIR, *dirs]))
