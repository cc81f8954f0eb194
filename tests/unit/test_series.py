"""`Series.window` against the definition: `window_aggregate` over the points in (lo, now]."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from rules.engine import Series
from rules.expr import window_aggregate

FUNCS = ("sum", "avg", "count", "min", "max", "delta", "rate")
values = st.one_of(
    st.sampled_from([0.0, 0.1, 0.2, 0.3, 1.0, -0.1, 1e16, -1e16, 1e-300]),
    st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False),
)
steps = st.lists(
    st.tuples(
        st.floats(min_value=-30, max_value=60, allow_nan=False),  # time step (negative: late)
        values,
        st.sampled_from([5.0, 30.0, 120.0]),  # window asked for after adding the point
        st.sampled_from(FUNCS),
        st.floats(min_value=0, max_value=40, allow_nan=False),  # evaluated this long before now
    ),
    max_size=300,
)


def _reference(points: list[tuple[float, float]], func: str, lo: float, now: float) -> float | None:
    inside = [(t, v) for t, v in points if lo < t <= now]
    return window_aggregate(func, inside)


@settings(max_examples=300, deadline=None)
@given(steps, st.sampled_from([60.0, 200.0]))
def test_window_equals_the_definition(
    script: list[tuple[float, float, float, str, float]], keep: float
) -> None:
    series = Series()
    points: list[tuple[float, float]] = []
    t = newest = 1_000.0
    for step, value, seconds, func, back in script:
        t = max(0.0, t + step)
        series.add(t, value)
        points.append((t, value))
        points.sort(key=lambda p: p[0])  # stable: equal times keep their order
        newest = max(newest, t)
        series.drop_until(newest - keep)
        points = [p for p in points if p[0] > newest - keep]
        now = newest - back
        assert list(series.values(now - seconds, now)) == [
            v for t, v in points if now - seconds < t <= now
        ]
        got = series.window(func, now - seconds, now)
        want = _reference(points, func, now - seconds, now)
        if want is None or got is None:
            assert got == want
        else:
            assert got == want or (math.isnan(got) and math.isnan(want)), (func, got, want)
    assert list(series) == points


def test_running_sum_is_exact_as_fsum() -> None:
    series = Series()
    for i in range(100):
        series.add(float(i), 0.1 if i % 3 else 0.2)
    for now in range(10, 100):
        window = [0.1 if i % 3 else 0.2 for i in range(now - 9, now + 1)]
        assert series.window("sum", now - 10, now) == math.fsum(window)
        assert series.window("avg", now - 10, now) == math.fsum(window) / 10
