"""The condition language of rules: a small, safe subset of Python expressions.

A condition is parsed with `ast.parse(mode="eval")`, checked node by node against a
whitelist and compiled once, at load time, into a tree of closures. Evaluation never reaches
Python's compiler, `eval`, imports, or any builtin, attribute or object the author's text
names: every closure calls only the fixed helpers below and the `EvalContext` methods, with
names checked at load time. Anything the compiler has no case for is a load error (a
whitelist, not a blacklist). Arithmetic takes real numbers only (no string repetition or
`%` formatting), exponents are at most 10, integers at most 4096 bits, source at most 4000
characters and 100 levels deep, so no condition can exhaust memory or time.

Grammar (Python precedence and syntax):

- literals: int, float, str, `True`, `False`, `None`; durations only as strings inside window
  calls (`'10m'`, `'3h'`, `'1h30m'`);
- names: the device's metric names (`level_m`); `attr.<name>` (device attributes; names not
  starting with `_`), `device.<id|district|profile|name|lat|lon>`,
  `event.<type|code|detail>`;
- operators: `+ - * / // % **` on numbers (the exponent at most 10 in size), unary `- + not`,
  `and`, `or`, comparisons including chained ones (`a < b <= c`), `in` / `not in` a literal
  tuple, list or set of constants, `x is None` / `x is not None`, and `x if c else y`;
- functions: `abs(x)`, `min(a, b, …)`, `max(a, b, …)`, `round(x[, digits])`,
  `clamp(x, lo, hi)`, `coalesce(a, b, …)`, `has(metric)` / `has(attr.name)`, `hour()`,
  `minute()`, `weekday()` (Monday is 0) in the device's local time,
  `between_times('22:00', '06:00')` (start inclusive, end exclusive, may wrap midnight),
  `detail('key'[, default])` (a field of the event's detail);
- windows over a metric: `sum|avg|min|max|count|delta|rate(metric, 'duration')`, `last(metric)`
  and `age(metric)`. The first argument is a bare metric name, the second a duration literal.
  A window covers the readings in `(now - duration, now]`; `delta` is last minus first,
  `rate` is that change per hour over the time between the first and last reading.

A missing value (a metric never seen, an empty window, a `None` attribute) flows as `None`
through `coalesce`, `has` and `is None`; any other use of it raises `MissingValueError`
naming what is missing, e.g. "no value for level_m yet".
"""

from __future__ import annotations

import ast
import difflib
import math
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from numbers import Real
from typing import Any, Final, NamedTuple, Protocol
from zoneinfo import ZoneInfo

from devices.durations import parse_duration

MAX_SOURCE_CHARS: Final = 4000
MAX_DEPTH: Final = 100
MAX_EXPONENT: Final = 10
MAX_INT_BITS: Final = 4096
"""Integers beyond this many bits are an overflow: they cannot be a sensible quantity."""
MAX_ROUND_DIGITS: Final = 15
MAX_WINDOW_SECONDS: Final = 7 * 86400
"""The longest window: the engine keeps that much history per metric and device."""

SPECIALS: Final = frozenset({"attr", "device", "event"})
DEVICE_FIELDS: Final = frozenset({"id", "district", "profile", "name", "lat", "lon"})
EVENT_FIELDS: Final = frozenset({"type", "code", "detail"})
WINDOW_FUNCS: Final = frozenset({"sum", "avg", "min", "max", "count", "delta", "rate"})
FUNCTIONS: Final = frozenset(
    WINDOW_FUNCS
    | {"abs", "round", "clamp", "coalesce", "has", "hour", "minute", "weekday"}
    | {"between_times", "detail", "last", "age"}
)


class ExprError(ValueError):
    """A condition cannot be loaded; `str()` is "line:col: problem".

    `line` counts from the `line` passed to `compile_expression`; `col` is 1-based, in
    characters, within that line of the expression text. Callers prefix file and rule.
    """

    def __init__(self, line: int, col: int, problem: str) -> None:
        self.line = line
        self.col = col
        self.problem = problem
        super().__init__(f"{line}:{col}: {problem}")


class EvalError(RuntimeError):
    """Evaluating a condition failed; the only exception type `Expression.evaluate` raises."""


class MissingValueError(EvalError):
    """A value the condition needs is not there (yet): a metric never seen, an empty window."""


@dataclass(frozen=True, slots=True)
class WindowRef:
    """A window function a condition needs; the engine keeps that much history of `metric`."""

    metric: str
    func: str
    seconds: float


class EvalContext(Protocol):
    """What the engine provides to evaluate a condition for one device at one instant."""

    def value(self, metric: str) -> float | None:
        """The latest value of `metric`; None if it was never seen."""

    def window(self, metric: str, func: str, seconds: float) -> float | None:
        """`func` (one of `WINDOW_FUNCS`) over the readings of the last `seconds`.

        None when the window holds no reading (`count` gives 0); see `window_aggregate`.
        """

    def attribute(self, name: str) -> Any:
        """The device's attribute `name`; raises EvalError naming it when the device lacks it."""

    def device_field(self, name: str) -> Any:
        """One of `DEVICE_FIELDS` of the device."""

    def event_field(self, name: str) -> Any:
        """One of `EVENT_FIELDS` of the event being evaluated."""

    def local_time(self) -> datetime:
        """The evaluation instant in the device's time zone."""

    def age(self, metric: str) -> float | None:
        """Seconds since the latest reading of `metric`; None if it was never seen."""


_Run = Callable[[EvalContext], Any]


@dataclass(frozen=True, slots=True, eq=False)
class Expression:
    """A compiled condition. `evaluate` raises only EvalError (and its MissingValueError)."""

    source: str
    metrics: frozenset[str]
    """Metric names it reads, directly or through windows."""
    windows: frozenset[WindowRef]
    """Window functions it needs, so the engine keeps just enough history."""
    attributes: frozenset[str]
    """`attr.<name>` it reads."""
    event_fields: frozenset[str]
    """`event.<name>` it reads (`detail()` reads `detail`); empty for a pure metric condition."""
    uses_time: bool
    """It calls hour(), minute(), weekday() or between_times(): its value can change with
    the clock alone, so the engine must re-evaluate it on a timer, not only on readings."""
    _run: _Run = field(repr=False)

    def evaluate(self, ctx: EvalContext) -> Any:
        """The condition's value for `ctx`; any failure, even inside `ctx`, is an EvalError."""
        try:
            return self._run(ctx)
        except EvalError:
            raise
        except Exception as exc:
            raise EvalError(f"{self.source}: {type(exc).__name__}: {exc}") from exc


# --- windows -------------------------------------------------------------------------------


def window_aggregate(func: str, points: Sequence[tuple[float, float]]) -> float | None:
    """`func` over `(epoch_seconds, value)` points in time order, as `EvalContext.window` means it.

    Empty → None, except `count` → 0. `delta` is last − first; `rate` is that change per hour
    between the first and the last point, None with fewer than two points at distinct times.
    """
    if func == "count":
        return len(points)
    if not points:
        return None
    if func == "sum":
        return math.fsum(v for _, v in points)
    if func == "avg":
        return math.fsum(v for _, v in points) / len(points)
    if func == "min":
        return min(v for _, v in points)
    if func == "max":
        return max(v for _, v in points)
    if func == "delta":
        return points[-1][1] - points[0][1]
    if func == "rate":
        elapsed = points[-1][0] - points[0][0]
        if elapsed <= 0:
            return None
        return (points[-1][1] - points[0][1]) / elapsed * 3600.0
    raise ValueError(
        f"unknown window function {func!r}; use one of {', '.join(sorted(WINDOW_FUNCS))}"
    )


class DictContext:
    """An `EvalContext` over plain data, for tests and rule unit tests.

    `values` are readings taken at `now` (age 0); `series` holds `(ts, value)` readings per
    metric for windows, `value` and `age` (readings after `now` are ignored). `tz` is the
    device's time zone (a name or tzinfo); by default that of `now`, which must be aware.
    `event=None` means the evaluation has no event.
    """

    def __init__(
        self,
        now: datetime,
        *,
        values: Mapping[str, float | None] | None = None,
        series: Mapping[str, Iterable[tuple[datetime, float]]] | None = None,
        attributes: Mapping[str, Any] | None = None,
        device: Mapping[str, Any] | None = None,
        event: Mapping[str, Any] | None = None,
        tz: tzinfo | str | None = None,
    ) -> None:
        if now.tzinfo is None or now.utcoffset() is None:
            raise ValueError(f"now must be timezone-aware, got {now!r}")
        self.now = now
        self.tz: tzinfo = ZoneInfo(tz) if isinstance(tz, str) else (tz or now.tzinfo or UTC)
        end = now.timestamp()
        self._series: dict[str, list[tuple[float, float]]] = {}
        for metric, readings in (series or {}).items():
            points = sorted((ts.timestamp(), v) for ts, v in readings)
            self._series[metric] = [(t, v) for t, v in points if t <= end]
        self._values: dict[str, float | None] = {}
        for metric, value in (values or {}).items():
            self._values[metric] = value
            if value is not None and metric not in self._series:
                self._series[metric] = [(end, value)]
        self.attributes = dict(attributes or {})
        self.device = dict(device or {})
        self.event = None if event is None else dict(event)

    def value(self, metric: str) -> float | None:
        if metric in self._values:
            return self._values[metric]
        points = self._series.get(metric)
        return points[-1][1] if points else None

    def window(self, metric: str, func: str, seconds: float) -> float | None:
        start = self.now.timestamp() - seconds
        points = [p for p in self._series.get(metric, ()) if p[0] > start]
        return window_aggregate(func, points)

    def attribute(self, name: str) -> Any:
        try:
            return self.attributes[name]
        except KeyError:
            raise EvalError(f"device has no attribute {name!r}") from None

    def device_field(self, name: str) -> Any:
        try:
            return self.device[name]
        except KeyError:
            raise EvalError(f"device has no field {name!r}") from None

    def event_field(self, name: str) -> Any:
        if self.event is None:
            raise EvalError(f"event.{name}: there is no event in this evaluation")
        if name == "detail":
            return self.event.get("detail") or {}
        try:
            return self.event[name]
        except KeyError:
            raise EvalError(f"event has no field {name!r}") from None

    def local_time(self) -> datetime:
        return self.now.astimezone(self.tz)

    def age(self, metric: str) -> float | None:
        points = self._series.get(metric)
        return self.now.timestamp() - points[-1][0] if points else None


# --- run-time helpers: everything a compiled closure may call --------------------------------

_FAST_NUMBERS: Final = frozenset({int, float})


def _number(v: Any, missing: str, label: str) -> Any:
    """`v` if it is a real number; the slow path behind the `type(v) in _FAST_NUMBERS` check."""
    if v is None:
        raise MissingValueError(missing)
    if isinstance(v, Real):
        return v
    raise EvalError(f"{label} is {type(v).__name__} {_short(v)}, not a number")


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _checked(r: Any, label: str) -> Any:
    """Turn an out-of-range arithmetic result into EvalError."""
    if isinstance(r, float):
        if not math.isfinite(r):
            raise EvalError(f"{label}: overflow (result is {r})")
    elif isinstance(r, int):
        if r.bit_length() > MAX_INT_BITS:
            raise EvalError(f"{label}: overflow (result has more than {MAX_INT_BITS} bits)")
    elif isinstance(r, complex):
        raise EvalError(f"{label}: result is not a real number")
    return r


def _arithmetic_problem(exc: Exception) -> str:
    if isinstance(exc, OverflowError):
        return "overflow (result out of range)"
    return str(exc)


def _pow(a: Any, b: Any) -> Any:
    if abs(b) > MAX_EXPONENT:
        raise ArithmeticError(f"exponent {b} exceeds the limit of {MAX_EXPONENT}")
    if isinstance(a, int) and isinstance(b, int) and b > 0 and a.bit_length() * b > MAX_INT_BITS:
        raise OverflowError(f"result has more than {MAX_INT_BITS} bits")
    return a**b


_BINOPS: Final[dict[type[ast.operator], tuple[str, Callable[[Any, Any], Any]]]] = {
    ast.Add: ("+", operator.add),
    ast.Sub: ("-", operator.sub),
    ast.Mult: ("*", operator.mul),
    ast.Div: ("/", operator.truediv),
    ast.FloorDiv: ("//", operator.floordiv),
    ast.Mod: ("%", operator.mod),
    ast.Pow: ("**", _pow),
}


def _in(a: Any, b: Any) -> bool:
    return a in b


def _not_in(a: Any, b: Any) -> bool:
    return a not in b


_CMPOPS: Final[dict[type[ast.cmpop], Callable[[Any, Any], Any]]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: _in,
    ast.NotIn: _not_in,
    ast.Is: operator.is_,
    ast.IsNot: operator.is_not,
}

_FORBIDDEN: Final[dict[type[ast.AST], str]] = {
    ast.Lambda: "lambdas are not allowed",
    ast.ListComp: "comprehensions are not allowed",
    ast.SetComp: "comprehensions are not allowed",
    ast.DictComp: "comprehensions are not allowed",
    ast.GeneratorExp: "comprehensions are not allowed",
    ast.Subscript: "subscripts are not allowed; use detail('key') for event details",
    ast.Slice: "subscripts are not allowed; use detail('key') for event details",
    ast.NamedExpr: "assignment expressions (:=) are not allowed",
    ast.Starred: "starred expressions are not allowed",
    ast.JoinedStr: "f-strings are not allowed",
    ast.FormattedValue: "f-strings are not allowed",
    ast.Dict: "dict literals are not allowed",
    ast.Await: "await is not allowed",
    ast.Yield: "yield is not allowed",
    ast.YieldFrom: "yield is not allowed",
    ast.Tuple: "tuples, lists and sets are allowed only after in / not in",
    ast.List: "tuples, lists and sets are allowed only after in / not in",
    ast.Set: "tuples, lists and sets are allowed only after in / not in",
}


class _Node(NamedTuple):
    run: _Run
    missing: str
    """The message of the MissingValueError a consumer raises when `run` gives None."""
    label: str
    """The node's source text, for error messages."""


def _const_run(value: Any) -> _Run:
    def run(ctx: EvalContext) -> Any:
        return value

    return run


# --- the compiler ---------------------------------------------------------------------------


class _Compiler:
    def __init__(self, text: str, metrics: frozenset[str], line: int) -> None:
        text = text.rstrip()
        self.text = text
        self.lines = text.split("\n")
        self.allowed = metrics
        self.line = line
        # Parsed as "(\n" + text + "\n)": AST line 2 is line 1 of the text, columns unchanged.
        self.wrapped = "(\n" + text + "\n)"
        self.metrics: set[str] = set()
        self.windows: set[WindowRef] = set()
        self.attributes: set[str] = set()
        self.event_fields: set[str] = set()
        self.uses_time = False

    def error(self, node: ast.expr, problem: str) -> ExprError:
        return self._at(node.lineno - 1, node.col_offset, problem, byte_col=True)

    def _at(self, text_line: int, col: int, problem: str, *, byte_col: bool) -> ExprError:
        if text_line < 1:
            text_line, col = 1, 0
        elif text_line > len(self.lines):
            text_line = len(self.lines)
            col = len(self.lines[-1].encode()) if byte_col else len(self.lines[-1])
        if byte_col:
            source = self.lines[text_line - 1].encode()
            col = len(source[:col].decode(errors="replace"))
        return ExprError(self.line + text_line - 1, col + 1, problem)

    def label(self, node: ast.AST) -> str:
        segment = ast.get_source_segment(self.wrapped, node)
        return " ".join((segment or type(node).__name__).split())

    def parse(self) -> ast.expr:
        if not self.text.strip():
            raise ExprError(self.line, 1, "empty expression")
        if len(self.text) > MAX_SOURCE_CHARS:
            raise ExprError(
                self.line, 1, f"expression is longer than {MAX_SOURCE_CHARS} characters"
            )
        # Wrapping in brackets lets a condition span lines (YAML block scalars) as Python
        # code in brackets does, without shifting the columns of its first line.
        try:
            tree = ast.parse(self.wrapped, mode="eval")
        except SyntaxError as exc:
            raise self.syntax_error(exc) from None
        except (RecursionError, MemoryError, ValueError) as exc:
            problem = (
                "expression is nested too deeply" if not isinstance(exc, ValueError) else str(exc)
            )
            raise ExprError(self.line, 1, problem) from None
        body = tree.body
        if isinstance(body, ast.Tuple) and not body.elts:  # only a comment
            raise ExprError(self.line, 1, "empty expression")
        # The body starts on the wrapper's line only if it is a bracketed tuple or generator,
        # or if a ')' in the text closed the wrapper's '(' (as in "a) or (b").
        if body.lineno == 1 and not isinstance(body, ast.Tuple | ast.GeneratorExp):
            raise self.stray_bracket() or ExprError(self.line, 1, "unmatched ')'")
        return body

    def syntax_error(self, exc: SyntaxError) -> ExprError:
        if (exc.msg or "").startswith("unmatched"):
            stray = self.stray_bracket()
            if stray is not None:
                return stray
        offset = (exc.offset or 1) - 1
        return self._at((exc.lineno or 2) - 1, offset, exc.msg or "invalid syntax", byte_col=False)

    def stray_bracket(self) -> ExprError | None:
        """Where the text on its own has an unmatched bracket (which the wrapper may hide)."""
        try:
            ast.parse(self.text, mode="eval")
        except SyntaxError as exc:
            if (exc.msg or "").startswith("unmatched") and exc.lineno is not None:
                return self._at(exc.lineno, (exc.offset or 1) - 1, exc.msg, byte_col=False)
        except (RecursionError, MemoryError, ValueError):
            pass
        return None

    def compile(self, node: ast.expr, depth: int = 0) -> _Node:
        if depth > MAX_DEPTH:
            raise self.error(node, f"expression is nested more than {MAX_DEPTH} levels deep")
        d = depth + 1
        if isinstance(node, ast.Constant):
            return self.constant(node)
        if isinstance(node, ast.Name):
            return self.name(node)
        if isinstance(node, ast.Attribute):
            return self.attribute(node)
        if isinstance(node, ast.BinOp):
            return self.binop(node, d)
        if isinstance(node, ast.UnaryOp):
            return self.unaryop(node, d)
        if isinstance(node, ast.BoolOp):
            return self.boolop(node, d)
        if isinstance(node, ast.Compare):
            return self.compare(node, d)
        if isinstance(node, ast.IfExp):
            return self.ifexp(node, d)
        if isinstance(node, ast.Call):
            return self.call(node, d)
        problem = _FORBIDDEN.get(type(node), f"{type(node).__name__} is not allowed")
        raise self.error(node, problem)

    def constant(self, node: ast.Constant) -> _Node:
        value = node.value
        if isinstance(value, bytes):
            raise self.error(node, "bytes literals are not allowed")
        if isinstance(value, complex):
            raise self.error(node, "complex numbers are not allowed")
        if value is Ellipsis:
            raise self.error(node, "... is not allowed")
        if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
            raise self.error(node, "number is too large")
        label = self.label(node)
        return _Node(_const_run(value), f"{label} has no value", label)

    def name(self, node: ast.Name) -> _Node:
        name = node.id
        if name in SPECIALS:
            raise self.error(
                node, f"{name} must be followed by .<name>, as in {name}.{_EXAMPLE[name]}"
            )
        if name not in self.allowed:
            if name in FUNCTIONS:
                raise self.error(
                    node, f"{name} is a function; call it, as in {_CALL_EXAMPLE[name]}"
                )
            raise self.error(node, f"unknown name {name!r}{self.suggest(name)}")
        self.metrics.add(name)

        def run(ctx: EvalContext) -> Any:
            return ctx.value(name)

        return _Node(run, f"no value for {name} yet", name)

    def suggest(self, name: str) -> str:
        close = difflib.get_close_matches(name, sorted(self.allowed), n=1)
        if close:
            return f" (did you mean {close[0]}?)"
        if self.allowed:
            return f"; the metrics are: {', '.join(sorted(self.allowed))}"
        return ""

    def attribute(self, node: ast.Attribute) -> _Node:
        base = node.value
        if not isinstance(base, ast.Name) or base.id not in SPECIALS:
            raise self.error(node, "attribute access is allowed only on attr, device and event")
        name = node.attr
        if name.startswith("_"):
            raise self.error(node, f"names starting with '_' are not allowed: {name}")
        label = f"{base.id}.{name}"
        if base.id == "attr":
            self.attributes.add(name)

            def run_attr(ctx: EvalContext) -> Any:
                return ctx.attribute(name)

            return _Node(run_attr, f"attribute {name} has no value", label)
        if base.id == "device":
            if name not in DEVICE_FIELDS:
                raise self.error(
                    node, f"device has no field {name!r}; use one of: {_list(DEVICE_FIELDS)}"
                )

            def run_device(ctx: EvalContext) -> Any:
                return ctx.device_field(name)

            return _Node(run_device, f"{label} has no value", label)
        if name not in EVENT_FIELDS:
            raise self.error(
                node, f"event has no field {name!r}; use one of: {_list(EVENT_FIELDS)}"
            )
        self.event_fields.add(name)

        def run_event(ctx: EvalContext) -> Any:
            return ctx.event_field(name)

        return _Node(run_event, f"{label} has no value", label)

    def binop(self, node: ast.BinOp, d: int) -> _Node:
        entry = _BINOPS.get(type(node.op))
        if entry is None:
            raise self.error(node, f"operator {_OP_SYMBOLS.get(type(node.op), '?')} is not allowed")
        symbol, op = entry
        if isinstance(node.op, ast.Pow):
            exponent = _literal(node.right)
            if isinstance(exponent, int | float) and abs(exponent) > MAX_EXPONENT:
                raise self.error(
                    node.right, f"exponent {exponent} exceeds the limit of {MAX_EXPONENT}"
                )
        for side in (node.left, node.right):
            self.require_number_literal(side, symbol)
        left = self.compile(node.left, d)
        right = self.compile(node.right, d)
        label = self.label(node)
        lrun, lmiss, llabel = left
        rrun, rmiss, rlabel = right
        numbers = _FAST_NUMBERS
        if isinstance(node.op, ast.Pow) and isinstance(_literal(node.right), int | float):
            op = operator.pow  # the literal exponent was checked above

        constant = _literal(node.right)
        if constant is not _NOT_LITERAL:
            # `x * 0.9`, `x ** 2`: the common shape, one closure call fewer.
            def run_const(ctx: EvalContext) -> Any:
                a = lrun(ctx)
                if type(a) not in numbers:
                    a = _number(a, lmiss, llabel)
                try:
                    r = op(a, constant)
                except (ArithmeticError, ValueError, TypeError) as exc:
                    raise EvalError(f"{label}: {_arithmetic_problem(exc)}") from None
                if type(r) is float and r - r == 0.0:  # finite: the common case, checked cheaply
                    return r
                return _checked(r, label)

            return _Node(run_const, f"{label} has no value", label)

        def run(ctx: EvalContext) -> Any:
            a = lrun(ctx)
            if type(a) not in numbers:
                a = _number(a, lmiss, llabel)
            b = rrun(ctx)
            if type(b) not in numbers:
                b = _number(b, rmiss, rlabel)
            try:
                r = op(a, b)
            except (ArithmeticError, ValueError, TypeError) as exc:
                raise EvalError(f"{label}: {_arithmetic_problem(exc)}") from None
            if type(r) is float and r - r == 0.0:
                return r
            return _checked(r, label)

        return _Node(run, f"{label} has no value", label)

    def require_number_literal(self, node: ast.expr, symbol: str) -> None:
        value = _literal(node)
        if isinstance(value, str) or (value is None and isinstance(node, ast.Constant)):
            raise self.error(node, f"{symbol} needs numbers, not {_short(value)}")

    def unaryop(self, node: ast.UnaryOp, d: int) -> _Node:
        if isinstance(node.op, ast.Invert):
            raise self.error(node, "operator ~ is not allowed")
        operand = self.compile(node.operand, d)
        orun, omiss, olabel = operand
        label = self.label(node)
        if isinstance(node.op, ast.Not):

            def run_not(ctx: EvalContext) -> Any:
                v = orun(ctx)
                if v is None:
                    raise MissingValueError(omiss)
                return not v

            return _Node(run_not, f"{label} has no value", label)
        self.require_number_literal(
            node.operand, "unary -" if isinstance(node.op, ast.USub) else "unary +"
        )
        op = operator.neg if isinstance(node.op, ast.USub) else operator.pos
        numbers = _FAST_NUMBERS

        def run(ctx: EvalContext) -> Any:
            v = orun(ctx)
            if type(v) not in numbers:
                v = _number(v, omiss, olabel)
            return op(v)

        return _Node(run, f"{label} has no value", label)

    def boolop(self, node: ast.BoolOp, d: int) -> _Node:
        parts = [(n.run, n.missing) for n in (self.compile(v, d) for v in node.values)]
        label = self.label(node)
        if isinstance(node.op, ast.And):

            def run_and(ctx: EvalContext) -> Any:
                v: Any = True
                for part, missing in parts:
                    v = part(ctx)
                    if v is None:
                        raise MissingValueError(missing)
                    if not v:
                        return v
                return v

            return _Node(run_and, f"{label} has no value", label)

        def run_or(ctx: EvalContext) -> Any:
            v: Any = False
            for part, missing in parts:
                v = part(ctx)
                if v is None:
                    raise MissingValueError(missing)
                if v:
                    return v
            return v

        return _Node(run_or, f"{label} has no value", label)

    def compare(self, node: ast.Compare, d: int) -> _Node:
        label = self.label(node)
        left = self.compile(node.left, d)
        steps: list[tuple[Callable[[Any, Any], Any], _Run, str, str, bool]] = []
        constant: Any = _NOT_LITERAL  # the right side of the first comparison, if literal
        prev_missing = left.missing
        for op_node, comparator in zip(node.ops, node.comparators, strict=True):
            identity = isinstance(op_node, ast.Is | ast.IsNot)
            value: Any = _NOT_LITERAL
            if identity:
                if not (isinstance(comparator, ast.Constant) and comparator.value is None):
                    raise self.error(comparator, "is / is not may only compare with None")
                right = _Node(_const_run(None), "None", "None")
            elif isinstance(op_node, ast.In | ast.NotIn):
                value = self.container(comparator)
                right = _Node(_const_run(value), "", self.label(comparator))
            else:
                for side in (node.left if not steps else None, comparator):
                    if isinstance(side, ast.Constant) and side.value is None:
                        raise self.error(
                            side, "test for a missing value with `is None` or `is not None`"
                        )
                value = _literal(comparator)
                right = self.compile(comparator, d)
            if not steps:
                constant = value
            steps.append((_CMPOPS[type(op_node)], right.run, prev_missing, right.missing, identity))
            prev_missing = right.missing
        lrun = left.run
        if len(steps) == 1 and not steps[0][4]:
            op, rrun, lmiss, rmiss, _ = steps[0]
            if constant is not _NOT_LITERAL:
                # `x > 3`, `code in (1, 2)`: the common shape, one closure call fewer.
                def run_const(ctx: EvalContext) -> Any:
                    a = lrun(ctx)
                    if a is None:
                        raise MissingValueError(lmiss)
                    try:
                        return op(a, constant)
                    except TypeError:
                        raise EvalError(
                            f"{label}: cannot compare {_kind(a)} with {_kind(constant)}"
                        ) from None

                return _Node(run_const, f"{label} has no value", label)

            def run_one(ctx: EvalContext) -> Any:
                a = lrun(ctx)
                if a is None:
                    raise MissingValueError(lmiss)
                b = rrun(ctx)
                if b is None:
                    raise MissingValueError(rmiss)
                try:
                    return op(a, b)
                except TypeError:
                    raise EvalError(f"{label}: cannot compare {_kind(a)} with {_kind(b)}") from None

            return _Node(run_one, f"{label} has no value", label)

        def run(ctx: EvalContext) -> Any:
            a = lrun(ctx)
            result: Any = True
            for op, rrun, lmiss, rmiss, identity in steps:
                b = rrun(ctx)
                if not identity:
                    if a is None:
                        raise MissingValueError(lmiss)
                    if b is None:
                        raise MissingValueError(rmiss)
                try:
                    result = op(a, b)
                except TypeError:
                    raise EvalError(f"{label}: cannot compare {_kind(a)} with {_kind(b)}") from None
                if not result:
                    return result
                a = b
            return result

        return _Node(run, f"{label} has no value", label)

    def container(self, node: ast.expr) -> frozenset[Any]:
        if not isinstance(node, ast.Tuple | ast.List | ast.Set):
            raise self.error(
                node, "in / not in needs a literal tuple or list of constants, as in x in (1, 2)"
            )
        items = []
        for element in node.elts:
            value = _literal(element)
            if value is _NOT_LITERAL:
                raise self.error(element, "in / not in needs a literal tuple or list of constants")
            if isinstance(value, bytes | complex) or value is Ellipsis:
                raise self.error(element, f"{type(value).__name__} constants are not allowed")
            items.append(value)
        return frozenset(items)

    def ifexp(self, node: ast.IfExp, d: int) -> _Node:
        test = self.compile(node.test, d)
        body = self.compile(node.body, d)
        orelse = self.compile(node.orelse, d)
        trun, tmiss, brun, orun = test.run, test.missing, body.run, orelse.run
        label = self.label(node)

        def run(ctx: EvalContext) -> Any:
            c = trun(ctx)
            if c is None:
                raise MissingValueError(tmiss)
            return brun(ctx) if c else orun(ctx)

        return _Node(run, f"{label} has no value", label)

    # --- calls ---------------------------------------------------------------------------

    def call(self, node: ast.Call, d: int) -> _Node:
        func = node.func
        if not isinstance(func, ast.Name):
            raise self.error(node, f"calls are allowed only to: {_list(FUNCTIONS)}")
        name = func.id
        if name not in FUNCTIONS:
            close = difflib.get_close_matches(name, sorted(FUNCTIONS), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise self.error(
                node,
                f"unknown function {name!r}{hint}; calls are allowed only to: {_list(FUNCTIONS)}",
            )
        if node.keywords:
            raise self.error(node, f"{name}() takes no keyword arguments")
        for arg in node.args:
            if isinstance(arg, ast.Starred):
                raise self.error(arg, "starred arguments are not allowed")
        args = node.args
        label = self.label(node)
        if name in ("min", "max") and len(args) == 2 and isinstance(_literal(args[1]), str):
            return self.window(node, name, label)
        if name in WINDOW_FUNCS and name not in ("min", "max"):
            return self.window(node, name, label)
        if name in ("last", "age"):
            return self.last_or_age(node, name, label)
        if name in ("min", "max"):
            return self.min_max(node, name, label, d)
        if name == "abs":
            return self.abs_(node, label, d)
        if name == "round":
            return self.round_(node, label, d)
        if name == "clamp":
            return self.clamp(node, label, d)
        if name == "coalesce":
            return self.coalesce(node, label, d)
        if name == "has":
            return self.has(node, label)
        if name in ("hour", "minute", "weekday"):
            return self.clock(node, name, label)
        if name == "between_times":
            return self.between_times(node, label)
        return self.detail(node, label, d)

    def arity(self, node: ast.Call, low: int, high: int | None, usage: str) -> None:
        n = len(node.args)
        if n < low or (high is not None and n > high):
            raise self.error(node, f"wrong number of arguments; write {usage}")

    def metric_arg(self, node: ast.Call, usage: str) -> str:
        arg = node.args[0] if node.args else None
        if not isinstance(arg, ast.Name):
            raise self.error(
                arg or node, f"the first argument must be a metric name; write {usage}"
            )
        if arg.id not in self.allowed:
            raise self.error(arg, f"unknown metric {arg.id!r}{self.suggest(arg.id)}")
        self.metrics.add(arg.id)
        return arg.id

    def window(self, node: ast.Call, func: str, label: str) -> _Node:
        usage = f"{func}(metric, '10m')"
        self.arity(node, 2, 2, usage)
        metric = self.metric_arg(node, usage)
        duration = node.args[1]
        text = _literal(duration)
        if not isinstance(text, str):
            raise self.error(
                duration,
                f"the duration must be a string literal such as '10m' or '3h'; write {usage}",
            )
        try:
            seconds = parse_duration(text).total_seconds()
        except ValueError as exc:
            raise self.error(duration, f"bad duration: {exc}") from None
        if seconds <= 0:
            raise self.error(duration, f"the duration {text!r} must be longer than zero")
        if seconds > MAX_WINDOW_SECONDS:
            raise self.error(duration, f"the duration {text!r} is longer than the limit of 7d")
        self.windows.add(WindowRef(metric, func, seconds))
        if func == "rate":
            missing = f"too few readings of {metric} in the last {text} for a rate"
        else:
            missing = f"no readings of {metric} in the last {text}"

        def run(ctx: EvalContext) -> Any:
            return ctx.window(metric, func, seconds)

        return _Node(run, missing, label)

    def last_or_age(self, node: ast.Call, func: str, label: str) -> _Node:
        usage = f"{func}(metric)"
        self.arity(node, 1, 1, usage)
        metric = self.metric_arg(node, usage)
        missing = f"no value for {metric} yet"
        if func == "last":

            def run_last(ctx: EvalContext) -> Any:
                return ctx.value(metric)

            return _Node(run_last, missing, label)

        def run_age(ctx: EvalContext) -> Any:
            return ctx.age(metric)

        return _Node(run_age, missing, label)

    def numbers(self, node: ast.Call, d: int) -> list[_Node]:
        compiled = []
        for arg in node.args:
            self.require_number_literal(arg, f"{_callee(node)}()")
            compiled.append(self.compile(arg, d))
        return compiled

    def min_max(self, node: ast.Call, func: str, label: str, d: int) -> _Node:
        self.arity(node, 2, None, f"{func}(a, b, …) or {func}(metric, '10m')")
        args = self.numbers(node, d)
        pick = min if func == "min" else max

        def run(ctx: EvalContext) -> Any:
            values = []
            for arg, missing, arg_label in args:
                v = arg(ctx)
                if type(v) not in _FAST_NUMBERS:
                    v = _number(v, missing, arg_label)
                values.append(v)
            return pick(values)

        return _Node(run, f"{label} has no value", label)

    def abs_(self, node: ast.Call, label: str, d: int) -> _Node:
        self.arity(node, 1, 1, "abs(x)")
        ((arg, missing, arg_label),) = self.numbers(node, d)

        def run(ctx: EvalContext) -> Any:
            v = arg(ctx)
            if type(v) not in _FAST_NUMBERS:
                v = _number(v, missing, arg_label)
            return abs(v)

        return _Node(run, f"{label} has no value", label)

    def round_(self, node: ast.Call, label: str, d: int) -> _Node:
        self.arity(node, 1, 2, "round(x) or round(x, 2)")
        digits: int | None = None
        if len(node.args) == 2:
            value = _literal(node.args[1])
            if type(value) is not int or abs(value) > MAX_ROUND_DIGITS:
                raise self.error(
                    node.args[1],
                    f"the digits of round() must be an integer literal from -{MAX_ROUND_DIGITS} "
                    f"to {MAX_ROUND_DIGITS}",
                )
            digits = value
        self.require_number_literal(node.args[0], "round()")
        arg, missing, arg_label = self.compile(node.args[0], d)

        def run(ctx: EvalContext) -> Any:
            v = arg(ctx)
            if type(v) not in _FAST_NUMBERS:
                v = _number(v, missing, arg_label)
            try:
                return round(v) if digits is None else round(v, digits)
            except (ArithmeticError, ValueError) as exc:
                raise EvalError(f"{label}: {_arithmetic_problem(exc)}") from None

        return _Node(run, f"{label} has no value", label)

    def clamp(self, node: ast.Call, label: str, d: int) -> _Node:
        self.arity(node, 3, 3, "clamp(x, lo, hi)")
        (x, xm, xl), (lo, lom, lol), (hi, him, hil) = self.numbers(node, d)

        def run(ctx: EvalContext) -> Any:
            v, low, high = x(ctx), lo(ctx), hi(ctx)
            if type(v) not in _FAST_NUMBERS:
                v = _number(v, xm, xl)
            if type(low) not in _FAST_NUMBERS:
                low = _number(low, lom, lol)
            if type(high) not in _FAST_NUMBERS:
                high = _number(high, him, hil)
            if low > high:
                raise EvalError(f"{label}: lower bound {low} is above upper bound {high}")
            return min(max(v, low), high)

        return _Node(run, f"{label} has no value", label)

    def coalesce(self, node: ast.Call, label: str, d: int) -> _Node:
        self.arity(node, 1, None, "coalesce(a, b, …)")
        runs = [self.compile(arg, d).run for arg in node.args]

        def run(ctx: EvalContext) -> Any:
            for arg in runs:
                v = arg(ctx)
                if v is not None:
                    return v
            return None

        return _Node(run, f"{label}: every argument is missing", label)

    def has(self, node: ast.Call, label: str) -> _Node:
        usage = "has(metric) or has(attr.name)"
        self.arity(node, 1, 1, usage)
        arg = node.args[0]
        if (
            isinstance(arg, ast.Attribute)
            and isinstance(arg.value, ast.Name)
            and arg.value.id == "attr"
        ):
            self.attribute(arg)
            name = arg.attr

            def run_attr(ctx: EvalContext) -> Any:
                try:
                    return ctx.attribute(name) is not None
                except EvalError:
                    return False

            return _Node(run_attr, "", label)
        if isinstance(arg, ast.Name):
            metric = self.metric_arg(node, usage)

            def run_metric(ctx: EvalContext) -> Any:
                return ctx.value(metric) is not None

            return _Node(run_metric, "", label)
        raise self.error(arg, f"has() takes a metric name or attr.<name>; write {usage}")

    def clock(self, node: ast.Call, func: str, label: str) -> _Node:
        self.arity(node, 0, 0, f"{func}()")
        self.uses_time = True
        if func == "hour":

            def run_hour(ctx: EvalContext) -> Any:
                return ctx.local_time().hour

            return _Node(run_hour, "", label)
        if func == "minute":

            def run_minute(ctx: EvalContext) -> Any:
                return ctx.local_time().minute

            return _Node(run_minute, "", label)

        def run_weekday(ctx: EvalContext) -> Any:
            return ctx.local_time().weekday()

        return _Node(run_weekday, "", label)

    def between_times(self, node: ast.Call, label: str) -> _Node:
        self.arity(node, 2, 2, "between_times('22:00', '06:00')")
        start, end = (self.time_of_day(arg, allow_24=i == 1) for i, arg in enumerate(node.args))
        if start == end:
            raise self.error(node, "between_times() needs different start and end times")
        self.uses_time = True
        wraps = start > end

        def run(ctx: EvalContext) -> Any:
            t = ctx.local_time()
            s = t.hour * 3600 + t.minute * 60 + t.second
            return (s >= start or s < end) if wraps else start <= s < end

        return _Node(run, "", label)

    def time_of_day(self, node: ast.expr, *, allow_24: bool) -> int:
        text = _literal(node)
        problem = "a time of day must be a string literal 'HH:MM' or 'HH:MM:SS' (00:00 to 23:59)"
        if not isinstance(text, str):
            raise self.error(node, problem)
        parts = text.strip().split(":")
        if len(parts) not in (2, 3) or not all(
            len(p) == 2 and p.isascii() and p.isdigit() for p in parts
        ):
            raise self.error(node, f"{problem}, not {text!r}")
        h, m, s = (int(p) for p in [*parts, "00"][:3])
        seconds = h * 3600 + m * 60 + s
        if (h > 23 or m > 59 or s > 59) and not (allow_24 and seconds == 24 * 3600):
            raise self.error(node, f"{problem}, not {text!r}")
        return seconds

    def detail(self, node: ast.Call, label: str, d: int) -> _Node:
        self.arity(node, 1, 2, "detail('key') or detail('key', default)")
        key = _literal(node.args[0])
        if not isinstance(key, str):
            raise self.error(node.args[0], "the key of detail() must be a string literal")
        self.event_fields.add("detail")
        has_default = len(node.args) == 2
        default = self.compile(node.args[1], d).run if has_default else None

        def run(ctx: EvalContext) -> Any:
            detail = ctx.event_field("detail")
            if not isinstance(detail, Mapping):
                raise EvalError(f"{label}: event.detail is {_kind(detail)}, not a mapping")
            if key in detail:
                return detail[key]
            if default is not None:
                return default(ctx)
            raise EvalError(f"{label}: event detail has no key {key!r}")

        return _Node(run, f"{label} has no value", label)


_NOT_LITERAL: Final = object()


def _literal(node: ast.expr) -> Any:
    """The value of a constant, or of a negated / unary-plus numeric constant; else _NOT_LITERAL."""
    if isinstance(node, ast.Constant):
        return node.value
    if (
        isinstance(node, ast.UnaryOp)
        and isinstance(node.op, ast.USub | ast.UAdd)
        and isinstance(node.operand, ast.Constant)
        and isinstance(node.operand.value, int | float)
        and not isinstance(node.operand.value, bool)
    ):
        value = node.operand.value
        return -value if isinstance(node.op, ast.USub) else value
    return _NOT_LITERAL


def _kind(v: Any) -> str:
    return f"{type(v).__name__} {_short(v)}"


def _list(names: Iterable[str]) -> str:
    return ", ".join(sorted(names))


def _callee(node: ast.Call) -> str:
    return node.func.id if isinstance(node.func, ast.Name) else "call"


_EXAMPLE: Final = {"attr": "warning_level_m", "device": "district", "event": "code"}
_CALL_EXAMPLE: Final = {
    **{f: f"{f}(metric, '10m')" for f in WINDOW_FUNCS},
    "last": "last(metric)",
    "age": "age(metric)",
    "abs": "abs(x)",
    "round": "round(x, 1)",
    "clamp": "clamp(x, 0, 1)",
    "coalesce": "coalesce(a, b)",
    "has": "has(metric)",
    "hour": "hour()",
    "minute": "minute()",
    "weekday": "weekday()",
    "between_times": "between_times('22:00', '06:00')",
    "detail": "detail('key')",
}
_OP_SYMBOLS: Final[dict[type[ast.operator], str]] = {
    ast.BitAnd: "&",
    ast.BitOr: "|",
    ast.BitXor: "^",
    ast.LShift: "<<",
    ast.RShift: ">>",
    ast.MatMult: "@",
}


def compile_expression(text: str, metrics: Iterable[str], *, line: int = 1) -> Expression:
    """Check `text` against the language and compile it once into an `Expression`.

    `metrics` are the metric names the condition may read; `line` is the line `text` starts
    on in its file, so errors ("line:col: problem") point into the file. Raises ExprError.
    """
    compiler = _Compiler(text, frozenset(metrics), line)
    body = compiler.parse()
    root = compiler.compile(body)
    return Expression(
        source=text.strip(),
        metrics=frozenset(compiler.metrics),
        windows=frozenset(compiler.windows),
        attributes=frozenset(compiler.attributes),
        event_fields=frozenset(compiler.event_fields),
        uses_time=compiler.uses_time,
        _run=root.run,
    )
