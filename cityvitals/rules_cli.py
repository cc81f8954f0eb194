"""`cityvitals rules`: lint rule files, run rule unit tests, backtest rules on stored history."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from zoneinfo import ZoneInfo

import pandas as pd
import psycopg
import typer
import yaml
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from devices.durations import format_duration
from devices.errors import ProfileError
from devices.model import DeviceEvent, Reading
from devices.profile import DeviceProfile, load_profiles
from rules.backtest import BacktestResult, backtest, warm_seconds
from rules.config import (
    BUILTIN_RULE_DIR,
    Rule,
    RuleError,
    RuleSet,
    compile_rule,
    load_rules,
    profile_rules,
)
from rules.engine import DeviceInfo
from rules.testing import (
    LIBRARY_TEST_DIR,
    LINE_KEY,
    RuleTestResult,
    describe_yaml_error,
    load_yaml_with_lines,
    rule_set_from,
    rule_test_files,
    run_rule_tests,
)

if TYPE_CHECKING:
    from cityvitals.settings import Settings

rules_app = typer.Typer(
    help="Rule files: check them, unit-test them, backtest them on stored history.",
    no_args_is_help=True,
)
console = Console()
err = Console(stderr=True)


def _settings() -> Settings:
    from cityvitals.cli import _settings as settings

    return settings()


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[red]error:[/red] {escape(message)}")
    return typer.Exit(code)


def _profiles(settings: Settings) -> Mapping[str, DeviceProfile]:
    try:
        return load_profiles(settings.profile_dirs)
    except ProfileError as exc:
        raise _fail(str(exc)) from None


# --- check ------------------------------------------------------------------------------------


@dataclass
class CheckReport:
    """Every rule that loaded (in load order, overrides included), and what is wrong."""

    rules: list[Rule] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    files: int = 0

    def effective(self) -> dict[str, Rule]:
        return {r.name: r for r in self.rules}


def _check_file(path: Path, profiles: Mapping[str, DeviceProfile], report: CheckReport) -> None:
    report.files += 1
    try:
        data = load_yaml_with_lines(path)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        report.errors.append(describe_yaml_error(path, exc, "rule file"))
        return
    if isinstance(data, dict) and "rules" in data:
        data = data["rules"]
    if data is None:
        return
    if not isinstance(data, list):
        report.errors.append(f"{path}: a rule file is a list of rules (or `rules:` with a list)")
        return
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            report.errors.append(f"{path}: rules[{i}] is not a mapping of rule fields")
            continue
        try:
            report.rules.append(compile_rule(item, f"{path}:{item.get(LINE_KEY, '?')}", profiles))
        except RuleError as exc:
            report.errors.append(str(exc))


def _rule_files(paths: Sequence[Path], report: CheckReport) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(path.glob("*.y*ml"))
        elif path.is_file():
            files.append(path)
        else:
            report.errors.append(f"{path}: no such rule file or directory")
    return files


def check_rules(
    profiles: Mapping[str, DeviceProfile], paths: Sequence[Path], *, builtin: bool = True
) -> CheckReport:
    """Load the built-in library, the profiles' rules and `paths` (files or directories),
    collecting every error instead of stopping at the first."""
    report = CheckReport()
    try:
        report.rules += profile_rules(profiles)
    except RuleError as exc:
        report.errors.append(str(exc))
    sources = [BUILTIN_RULE_DIR] if builtin else []
    for file in _rule_files([*sources, *paths], report):
        _check_file(file, profiles, report)
    seen: dict[str, Rule] = {}
    for rule in report.rules:
        if rule.name in seen:
            report.notes.append(
                f"{rule.source}: rule {rule.name!r} overrides the one at {seen[rule.name].source}"
            )
        seen[rule.name] = rule
    effective = report.effective()
    for rule in effective.values():
        member = rule.spec.member
        if member is not None and (
            member not in effective or effective[member].spec.kind == "area"
        ):
            report.errors.append(
                f"{rule.source}: rule {rule.name!r}: member {member!r} is not a device rule"
            )
        errors, warnings = _lint(rule, profiles)
        report.errors += errors
        report.warnings += warnings
    return report


def _lint(rule: Rule, profiles: Mapping[str, DeviceProfile]) -> tuple[list[str], list[str]]:
    """Mistakes the compiler cannot see, as (errors, warnings): events no profile in scope
    sends (the rule could never fire), attributes the profiles do not declare (a registry
    may still carry them)."""
    if rule.spec.kind == "area":
        return [], []
    in_scope = [p for p in profiles.values() if not rule.profiles or p.name in rule.profiles]
    out: list[str] = []
    errors: list[str] = []
    expressions = [
        *(r.when for r in rule.rungs),
        *(r.clear for r in rule.rungs if r.clear),
        *([rule.clear] if rule.clear else []),
    ]
    attributes = sorted({a for e in expressions for a in e.attributes})
    for name in attributes:
        lacking = [p.name for p in in_scope if name not in p.attributes]
        if lacking and (rule.profiles or len(lacking) == len(in_scope)):
            out.append(
                f"{rule.source}: rule {rule.name!r}: attr.{name} is not an attribute of "
                f"profile(s) {', '.join(lacking)}; devices without it make the rule fail"
            )
    for event in [*rule.spec.events, *rule.spec.resolve_on]:
        if not any(event in p.events for p in in_scope):
            errors.append(
                f"{rule.source}: rule {rule.name!r}: no profile in its scope sends the event "
                f"{event!r}"
            )
    return errors, out


def _short(source: str) -> str:
    """`file:line` with the file relative to the working directory when it is below it."""
    path, sep, line = source.rpartition(":")
    try:
        return f"{Path(path).resolve().relative_to(Path.cwd().resolve())}{sep}{line}"
    except ValueError:
        return source


def _levels(rule: Rule) -> str:
    if rule.spec.ladder:
        return " → ".join(r.level.label for r in rule.spec.ladder)
    return rule.spec.level.label if rule.spec.level is not None else ""


def _scope(rule: Rule) -> str:
    s = rule.spec
    if s.area is not None:
        need = f"{s.count} or more" if s.count is not None else f"{(s.share or 0) * 100:g}%"
        within = f" within {format_duration(s.within)}" if s.within is not None else ""
        return f"each {s.area}: {need} {s.member}{within}"
    parts = []
    if s.scope.profiles:
        parts.append("profiles " + ", ".join(s.scope.profiles))
    if s.scope.domains:
        parts.append("domains " + ", ".join(s.scope.domains))
    if s.scope.devices:
        parts.append("devices " + ", ".join(s.scope.devices))
    if s.scope.districts:
        parts.append("districts " + ", ".join(s.scope.districts))
    if s.scope.attributes:
        parts.append(", ".join(f"{k}={v}" for k, v in s.scope.attributes.items()))
    text = "; ".join(parts) or "every device"
    if s.active is not None:
        text += f"; {s.active.between[0]}–{s.active.between[1]}"
    return text


def _kind(rule: Rule) -> str:
    s = rule.spec
    if s.kind == "event":
        return f"event ({len(s.events)} type{'s' if len(s.events) != 1 else ''})"
    if s.kind == "no_data":
        return f"no_data ({s.no_data:g} intervals)"
    if s.kind == "condition" and s.for_:
        return f"condition (for {format_duration(s.for_)})"
    return s.kind


@rules_app.command("check")
def check(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(help="Rule files or directories, besides the built-in library."),
    ] = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="Treat warnings as errors (exit 1).")
    ] = False,
) -> None:
    """Lint every rule: the built-in library, the profiles' rules, CITYVITALS_RULE_DIRS and
    the given files; each problem names the file, line and rule."""
    settings = _settings()
    profiles = _profiles(settings)
    report = check_rules(profiles, [*settings.rule_dirs, *(paths or [])])
    effective = report.effective()
    table = Table("rule", "domain", "kind", "levels", "scope", "source", title="rules")
    for rule in effective.values():
        table.add_row(
            *map(
                escape,
                (
                    rule.name,
                    rule.spec.domain,
                    _kind(rule),
                    _levels(rule),
                    _scope(rule),
                    _short(rule.source),
                ),
            )
        )
    if effective:
        console.print(table)
    for note in report.notes:
        console.print(f"[dim]note:[/dim] {escape(note)}")
    for warning in report.warnings:
        err.print(f"[yellow]warning:[/yellow] {escape(warning)}")
    for error in report.errors:
        err.print(f"[red]✗[/red] {escape(error)}")
    problems = len(report.errors) + (len(report.warnings) if strict else 0)
    summary = (
        f"{len(effective)} rule(s) from {report.files} file(s) and {len(profiles)} profile(s): "
        f"{len(report.errors)} error(s), {len(report.warnings)} warning(s)"
    )
    if problems:
        err.print(f"[red]{escape(summary)}[/red]")
        raise typer.Exit(1)
    console.print(f"[green]✓[/green] {escape(summary)}")


# --- test -------------------------------------------------------------------------------------


def _print_result(result: RuleTestResult, verbose: bool) -> None:
    where = result.id
    if result.passed:
        console.print(f"[green]PASS[/green] {escape(where)}")
        if verbose:
            for t in result.transitions:
                console.print(
                    f"     {escape(t.at.isoformat())} {escape(t.rule)} "
                    f"{escape(t.device_id or t.district or 'city')} {t.state.value} {t.level.label}"
                )
        return
    label = "[red]ERROR[/red]" if result.error else "[red]FAIL[/red]"
    console.print(f"{label} {escape(where)}")
    for problem in result.problems:
        for line in problem.splitlines():
            console.print(f"     {escape(line)}", highlight=False, soft_wrap=True)


@rules_app.command("test")
def test(
    files: Annotated[
        list[Path] | None,
        typer.Argument(help="Rule test files or directories (default: the library's tests)."),
    ] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show the transitions of passing tests too.")
    ] = False,
) -> None:
    """Run rule unit tests (YAML, in the manner of `promtool test rules`); exit 1 on failure."""
    settings = _settings()
    paths = files or [LIBRARY_TEST_DIR]
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise _fail(f"{', '.join(map(str, missing))}: no such file or directory")
    if not rule_test_files(paths):
        raise _fail(f"no rule test files in {', '.join(map(str, paths))}")
    results = run_rule_tests(paths, settings.profile_dirs)
    for result in results:
        _print_result(result, verbose)
    passed = sum(r.passed for r in results)
    errors = sum(r.error for r in results)
    failed = len(results) - passed - errors
    summary = f"{passed} passed, {failed} failed, {errors} error(s)"
    if passed != len(results):
        console.print(f"[red]{summary}[/red]")
        raise typer.Exit(1)
    console.print(f"[green]{summary}[/green]")


# --- backtest ---------------------------------------------------------------------------------


def _when(text: str, tz: ZoneInfo, option: str) -> datetime:
    """ISO 8601 time; a time without offset, or a bare date, is local (settings.timezone)."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        try:
            value = datetime.combine(date.fromisoformat(text.strip()), datetime.min.time())
        except ValueError:
            raise _fail(
                f"{option}: {text!r} is not an ISO 8601 time such as 2026-07-20T08:00+08:00",
                2,
            ) from None
    return value if value.tzinfo is not None else value.replace(tzinfo=tz)


def _devices(
    conn: psycopg.Connection[tuple[Any, ...]],
    profiles: Mapping[str, DeviceProfile],
    only: Sequence[str],
) -> list[DeviceInfo]:
    rows = conn.execute(
        """SELECT device_id, profile, district, name, attributes FROM devices
           WHERE %(only)s::text[] IS NULL OR device_id = ANY(%(only)s::text[])
           ORDER BY device_id""",
        {"only": list(only) or None},
    ).fetchall()
    out: list[DeviceInfo] = []
    for device_id, profile_name, district, name, raw in rows:
        profile = profiles.get(str(profile_name))
        if profile is None:
            err.print(
                f"[yellow]warning:[/yellow] device {escape(str(device_id))}: unknown profile "
                f"{escape(str(profile_name))}; skipped"
            )
            continue
        # Profile defaults fill what the registry row lacks (as a CSV import stores them).
        attributes, problems = profile.device_attributes(dict(raw or {}))
        for problem in problems:
            err.print(f"[yellow]warning:[/yellow] device {escape(str(device_id))}: {problem}")
        out.append(DeviceInfo(str(device_id), profile, str(district), str(name or ""), attributes))
    return out


_READINGS = """SELECT ts, device_id, metric, value, quality FROM readings
               WHERE ts >= %(start)s AND ts < %(end)s
                 AND device_id = ANY(%(devices)s::text[])
               ORDER BY ts"""
_EVENTS = """SELECT ts, device_id, type, code, detail FROM events
             WHERE ts >= %(start)s AND ts < %(end)s
               AND device_id = ANY(%(devices)s::text[])
             ORDER BY ts"""


def _stream(
    conn: psycopg.Connection[tuple[Any, ...]], name: str, sql: str, params: dict[str, Any]
) -> Iterator[tuple[Any, ...]]:
    with conn.cursor(name=name) as cur:
        cur.itersize = 20_000
        cur.execute(sql, params)
        yield from cur


def _readings(
    conn: psycopg.Connection[tuple[Any, ...]], name: str, params: dict[str, Any]
) -> Iterator[Reading]:
    for ts, device_id, metric, value, quality in _stream(conn, name, _READINGS, params):
        yield Reading(ts, device_id, metric, float(value), int(quality))


def _events(
    conn: psycopg.Connection[tuple[Any, ...]], params: dict[str, Any]
) -> Iterator[DeviceEvent]:
    for ts, device_id, kind, code, detail in _stream(conn, "backtest_events", _EVENTS, params):
        yield DeviceEvent(ts, device_id, kind, code, dict(detail or {}))


def _backtest_rules(
    args: Sequence[str], library: bool, settings: Settings, profiles: Mapping[str, DeviceProfile]
) -> tuple[RuleSet, list[str]]:
    """The rule set to replay and the rule names to report (empty: all)."""
    paths = [Path(a) for a in args if Path(a).exists()]
    names = [a for a in args if not Path(a).exists()]
    try:
        if paths:
            rules = rule_set_from(
                [*([BUILTIN_RULE_DIR, *settings.rule_dirs] if library else []), *paths],
                profiles,
            )
            if library:
                rules = RuleSet((*profile_rules(profiles), *rules.rules))
        else:
            rules = load_rules(profiles, settings.rule_dirs)
    except RuleError as exc:
        raise _fail(str(exc)) from None
    known = rules.by_name()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise _fail(
            f"{', '.join(unknown)}: neither a rule file nor a rule; "
            f"the rules are: {', '.join(sorted(known))}"
        )
    return rules, names


def _local(value: Any, tz: ZoneInfo) -> str:
    if value is None or pd.isna(value):
        return ""
    return pd.Timestamp(value).to_pydatetime().astimezone(tz).strftime("%Y-%m-%d %H:%M")


def _print_summary(result: BacktestResult, names: Sequence[str], tz: ZoneInfo) -> None:
    summary = result.summary()
    if names:
        summary = summary[summary["rule"].isin(names)]
    table = Table(
        title=(
            f"backtest {result.start.astimezone(tz):%Y-%m-%d %H:%M} → "
            f"{result.end.astimezone(tz):%Y-%m-%d %H:%M} ({tz.key})"
        ),
    )
    table.add_column("rule", no_wrap=True)
    table.add_column("kind")
    for numeric in ("alerts", "escalations", "dropped", "devices/areas"):
        table.add_column(numeric, justify="right")
    table.add_column("max level")
    table.add_column("first", no_wrap=True)
    table.add_column("last", no_wrap=True)
    table.add_column("time firing", justify="right")
    table.add_column("open at end", justify="right")
    table.add_column("errors", justify="right")
    for row in summary.to_dict(orient="records"):
        alerts = int(row["alerts"])
        errors = int(row["errors"])
        firing = pd.Timedelta(row["firing"]).to_pytimedelta()
        table.add_row(
            escape(str(row["rule"])),
            escape(str(row["kind"])),
            str(alerts),
            str(int(row["escalations"])),
            str(int(row["dropped"])),
            str(int(row["subjects"])),
            "" if pd.isna(row["max_level"]) else str(row["max_level"]),
            _local(row["first"], tz),
            _local(row["last"], tz),
            format_duration(firing) if alerts else "",
            str(int(row["still_firing"])),
            f"[red]{errors}[/red]" if errors else "0",
            style="" if alerts or errors else "dim",
        )
    console.print(table)
    for name in summary["rule"]:
        last_error = result.health[str(name)].last_error
        if last_error:
            err.print(f"[red]rule {escape(str(name))} failed:[/red] {escape(last_error)}")


@rules_app.command("backtest")
def backtest_command(
    rules: Annotated[
        list[str] | None,
        typer.Argument(
            help="Rule files or directories to replay (default: the library and "
            "CITYVITALS_RULE_DIRS), and/or names of rules to report."
        ),
    ] = None,
    start_text: Annotated[
        str, typer.Option("--from", help="Start of the range (ISO 8601; local if no offset).")
    ] = "",
    end_text: Annotated[str, typer.Option("--to", help="End of the range, exclusive.")] = "",
    device: Annotated[
        list[str] | None, typer.Option("--device", help="Only this device (repeatable).")
    ] = None,
    library: Annotated[
        bool,
        typer.Option("--library", help="Replay the built-in library too when files are given."),
    ] = False,
    tick: Annotated[
        int, typer.Option(help="Seconds of data time between engine ticks.", min=1)
    ] = 60,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Replay stored readings and events through rules: per rule, how many alerts they would
    have raised, how often they escalated, when, and for how long they fired."""
    from cityvitals.cli import _database

    settings = _settings()
    if not start_text or not end_text:
        raise _fail("give the range with --from and --to", 2)
    tz = ZoneInfo(settings.timezone)
    start = _when(start_text, tz, "--from")
    end = _when(end_text, tz, "--to")
    if end <= start:
        raise _fail(f"--to ({end.isoformat()}) must be after --from ({start.isoformat()})", 2)
    profiles = _profiles(settings)
    rule_set, names = _backtest_rules(rules or [], library, settings, profiles)
    try:
        with _database(settings) as url, psycopg.connect(url) as conn:
            devices = _devices(conn, profiles, device or [])
            if device:
                missing = sorted(set(device) - {d.device_id for d in devices})
                if missing:
                    raise _fail(f"no such device(s) in the registry: {', '.join(missing)}")
            ids = [d.device_id for d in devices]
            warm = timedelta(seconds=warm_seconds(rule_set, devices))
            history = _readings(
                conn, "backtest_history", {"start": start - warm, "end": start, "devices": ids}
            )
            params = {"start": start, "end": end, "devices": ids}
            with Progress(
                TextColumn("replaying"),
                BarColumn(),
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
                console=err,
                transient=True,
                disable=as_json,
            ) as bar:
                task = bar.add_task("", total=(end - start).total_seconds())

                def progress(now: datetime) -> None:
                    bar.update(
                        task,
                        completed=(now - start).total_seconds(),
                        description=f"{now.astimezone(tz):%Y-%m-%d %H:%M}",
                    )

                result = backtest(
                    rule_set,
                    devices,
                    _readings(conn, "backtest_readings", params),
                    _events(conn, params),
                    start,
                    end,
                    history=history,
                    tick=timedelta(seconds=tick),
                    timezone=settings.timezone,
                    progress=progress,
                )
    except psycopg.Error as exc:
        raise _fail(f"cannot read the history: {exc}") from None
    if as_json:
        records = [r for r in result.records() if not names or r["rule"] in names]
        alerts = [
            {
                "rule": e.rule,
                "subject": e.subject,
                "started": e.started.isoformat(),
                "ended": None if e.ended is None else e.ended.isoformat(),
                "max_level": e.max_level.label,
                "escalations": e.escalations,
            }
            for e in result.episodes()
            if e.fired and (not names or e.rule in names)
        ]
        document = {
            "from": start.isoformat(),
            "to": end.isoformat(),
            "devices": result.devices,
            "readings": result.readings,
            "events": result.events,
            "rules": records,
            "alerts": alerts,
        }
        typer.echo(json.dumps(document, indent=2, ensure_ascii=False))
        return
    console.print(
        f"replayed {result.readings} reading(s) and {result.events} event(s) of "
        f"{result.devices} device(s) through {len(rule_set.rules)} rule(s)"
    )
    _print_summary(result, names, tz)
