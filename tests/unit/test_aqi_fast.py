"""`hourly_aqi_value`, the rule engine's fast hourly AQI, is `hourly_aqi(...).aqi` exactly."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rules.aqi import BREAKPOINTS, POLLUTANTS, AQIError, hourly_aqi, hourly_aqi_value

BEFORE = datetime(2026, 2, 28, 12, tzinfo=UTC)
AFTER = datetime(2026, 3, 1, 12, tzinfo=UTC)

_edges = sorted(
    {float(bp) for table in BREAKPOINTS.values() for column in table.values() for bp, _ in column}
)
concentration = st.one_of(
    st.sampled_from(_edges),
    st.sampled_from(_edges).map(lambda e: e + 0.5),  # HJ 633-2026 rounding ties
    st.sampled_from(_edges).map(lambda e: e + 0.05),  # CO's ties at 0.1
    st.sampled_from(_edges).flatmap(
        lambda e: st.floats(min_value=max(0.0, e - 0.01), max_value=e + 0.01)
    ),
    st.floats(min_value=0, max_value=3000, allow_nan=False),
    st.integers(0, 30000).map(lambda n: n / 10),
    st.integers(0, 300000).map(lambda n: n / 100),
)
pollutants = st.dictionaries(st.sampled_from(POLLUTANTS), concentration, max_size=6)
moving = st.dictionaries(st.sampled_from(("pm2_5", "pm10")), concentration, max_size=2)


@settings(max_examples=3000, deadline=None)
@given(pollutants, moving, st.sampled_from([BEFORE, AFTER]))
def test_same_as_the_exact_hourly_aqi(
    values: dict[str, float], pm_24h: dict[str, float], at: datetime
) -> None:
    try:
        want: int | str = hourly_aqi(values, at, pm_24h=pm_24h or None).aqi
    except AQIError as exc:
        want = f"raises {exc}"
    try:
        got: int | str = hourly_aqi_value(values, at, pm_24h=pm_24h or None)
    except AQIError as exc:
        got = f"raises {exc}"
    assert got == want


@pytest.mark.parametrize(
    "values",
    [{"pm2_5": -1.0}, {"pm2_5": float("nan")}, {"co": float("inf")}, {"pm2.5": 3.0}, {}],
)
def test_raises_as_the_exact_hourly_aqi(values: dict[str, float]) -> None:
    with pytest.raises(AQIError):
        hourly_aqi_value(values, AFTER)
