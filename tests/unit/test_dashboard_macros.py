"""The expander of Grafana's PostgreSQL macros and template variables (dashboards/macros.py),
against what Grafana 11 produces (pkg/tsdb/grafana-postgresql-datasource/macros.go and
the SQL datasources' interpolateVariable)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from dashboards.macros import (
    ALL,
    MacroError,
    TimeRange,
    Variable,
    expand_macros,
    format_interval,
    interpolate,
    interval_ms,
    parse_interval,
    render,
    round_interval,
)
from dashboards.sql import rollup_series, var_in

RANGE = TimeRange(
    datetime(2017, 4, 21, 5, 1, 17, tzinfo=UTC), datetime(2017, 4, 21, 5, 6, 17, tzinfo=UTC)
)
VARS = {
    "district": Variable("district", multi=True, include_all=True, all_value="'__all'"),
    "tz": Variable("tz", multi=False, include_all=False),
    "zone": Variable("zone", multi=True, include_all=True),
}


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("$__time(t)", 't AS "time"'),
        ("$__timeEpoch(t)", 'extract(epoch from t) as "time"'),
        ("$__timeFilter(ts)", "ts BETWEEN '2017-04-21T05:01:17Z' AND '2017-04-21T05:06:17Z'"),
        ("$__timeFrom()", "'2017-04-21T05:01:17Z'"),
        ("$__timeTo()", "'2017-04-21T05:06:17Z'"),
        ("$__timeGroup(ts, '5m')", "floor(extract(epoch from ts)/300)*300"),
        ("$__timeGroup(ts, 1h)", "floor(extract(epoch from ts)/3600)*3600"),
        ("$__timeGroupAlias(ts, 500ms)", 'floor(extract(epoch from ts)/0.5)*0.5 AS "time"'),
        ("$__unixEpochFilter(e)", "e >= 1492750877 AND e <= 1492751177"),
        ("$__unixEpochFrom() $__unixEpochTo()", "1492750877 1492751177"),
    ],
)
def test_macros_expand_as_grafana_does(sql: str, expected: str) -> None:
    assert expand_macros(sql, RANGE) == expected


def test_time_bounds_are_utc_whatever_the_offset() -> None:
    china = timezone(timedelta(hours=8))
    tr = TimeRange(datetime(2026, 7, 20, 20, tzinfo=china), datetime(2026, 7, 21, 2, tzinfo=china))
    assert expand_macros("$__timeFrom()", tr) == "'2026-07-20T12:00:00Z'"
    frac = TimeRange(datetime(2026, 1, 1, 0, 0, 0, 250000, UTC), datetime(2026, 1, 2, tzinfo=UTC))
    assert expand_macros("$__timeFrom()", frac) == "'2026-01-01T00:00:00.25Z'"


def test_unknown_macros_and_missing_arguments_are_errors() -> None:
    with pytest.raises(MacroError, match="unknown macro"):
        expand_macros("$__nope(x)", RANGE)
    with pytest.raises(MacroError, match="needs 2"):
        expand_macros("$__timeGroup(x)", RANGE)
    with pytest.raises(MacroError, match="not an interval"):
        expand_macros("$__timeGroup(x, soon)", RANGE)


@pytest.mark.parametrize(
    ("ms", "nice", "text"),
    [
        (14, 10, "10ms"),
        (800, 1_000, "1s"),
        (40_000, 30_000, "30s"),
        (86_400, 60_000, "1m"),
        (864_000, 900_000, "15m"),
        (2_592_000, 1_800_000, "30m"),
        (5_000_000, 3_600_000, "1h"),
        (30_000_000, 43_200_000, "12h"),
        (100_000_000, 86_400_000, "1d"),
        (1_000_000_000, 604_800_000, "7d"),
        (40_000_000_000, 31_536_000_000, "1y"),
    ],
)
def test_intervals_round_and_print_like_grafana(ms: float, nice: int, text: str) -> None:
    assert round_interval(ms) == nice
    assert format_interval(nice) == text
    assert parse_interval(text) * 1000 == pytest.approx(nice)


def test_interval_of_a_range_over_the_panel_width() -> None:
    end = datetime(2026, 1, 31, tzinfo=UTC)
    assert interval_ms(TimeRange.last(timedelta(hours=24), end), 1000) == 60_000
    assert interval_ms(TimeRange.last(timedelta(days=30), end), 1000) == 1_800_000
    assert interval_ms(TimeRange.last(timedelta(hours=1), end), 1000) == 5_000


def test_variables_are_quoted_the_way_sql_datasources_do() -> None:
    def go(sql: str, values: dict[str, object]) -> str:
        return interpolate(sql, VARS, values, 60_000, RANGE, {"zone": ["1", "4a"]})

    assert go("IN ($district)", {"district": "2"}) == "IN ('2')"
    assert go("IN (${district})", {"district": ["1", "o'k"]}) == "IN ('1','o''k')"
    assert go("IN ([[district]])", {"district": ALL}) == "IN ('__all')"
    # include-All without a custom all value: every option, quoted.
    assert go("IN ($zone)", {"zone": ALL}) == "IN ('1','4a')"
    # Neither multi nor include-All: the raw value, quotes escaped.
    assert go("'$tz'", {"tz": "Asia/Shanghai"}) == "'Asia/Shanghai'"
    assert go("$__interval $__interval_ms", {}) == "1m 60000"
    assert go("$__from $__to", {}) == "1492750877000 1492751177000"
    assert go("$__timeFilter(x)", {}) == "$__timeFilter(x)"
    with pytest.raises(MacroError, match="not a variable"):
        go("$nope", {})
    with pytest.raises(MacroError, match="has no value"):
        go("$district", {})


def test_all_filters_nothing_and_values_filter() -> None:
    fragment = var_in("district", "d.district")
    assert render(fragment, RANGE, VARS, {"district": ALL}) == (
        "('__all' IN ('__all') OR d.district IN ('__all'))"
    )
    assert render(fragment, RANGE, VARS, {"district": ["1", "2"]}) == (
        "('__all' IN ('1','2') OR d.district IN ('1','2'))"
    )


def test_rollup_series_reads_at_the_panels_interval() -> None:
    sql = rollup_series("d.device_id AS metric", ["level_m"], "d.profile = 'water_level'")
    day = render(sql, TimeRange.last(timedelta(days=1), RANGE.end), VARS, {})
    assert "readings_series(d.device_id, ARRAY['level_m']" in day
    assert "'2017-04-20T05:06:17Z'::timestamptz" in day
    assert ", 60000) r" in day  # the interval the function picks its source by
    assert 'floor(extract(epoch from r.t)/60)*60 AS "time"' in day
    with pytest.raises(ValueError, match="aggregate"):
        rollup_series("x", ["m"], "true", aggregate="median")
