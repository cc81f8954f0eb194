"""China AQI (rules.aqi): breakpoints, rounding, the 2026 switch, special cases, levels.

The expected table below is copied from ../shared/domain/REFERENCE.md on its own,
not from rules.aqi, so a slip in either copy fails here.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rules.aqi import (
    AQIError,
    Averaging,
    RuleSet,
    daily_aqi,
    hourly_aqi,
    iaqi,
    level_for,
    parse_pollutant,
    rules_for,
)

CST = timezone(timedelta(hours=8))
BEFORE = datetime(2025, 6, 1, 12, tzinfo=CST)  # HJ 633-2012
AFTER = datetime(2026, 6, 1, 12, tzinfo=CST)  # HJ 633-2026

IAQIS = (0, 50, 100, 150, 200, 300, 400, 500)
# (pollutant, averaging) → breakpoints at IAQI 0, 50, …, 500 (None: "–"), 2012 rules.
TABLE_2012: dict[tuple[str, Averaging], tuple[float | None, ...]] = {
    ("so2", "24h"): (0, 50, 150, 475, 800, 1600, 2100, 2620),
    ("so2", "1h"): (0, 150, 500, 650, 800, None, None, None),
    ("no2", "24h"): (0, 40, 80, 180, 280, 565, 750, 940),
    ("no2", "1h"): (0, 100, 200, 700, 1200, 2340, 3090, 3840),
    ("co", "24h"): (0, 2, 4, 14, 24, 36, 48, 60),
    ("co", "1h"): (0, 5, 10, 35, 60, 90, 120, 150),
    ("o3", "8h"): (0, 100, 160, 215, 265, 800, None, None),
    ("o3", "1h"): (0, 160, 200, 300, 400, 800, 1000, 1200),
    ("pm10", "24h"): (0, 50, 150, 250, 350, 420, 500, 600),
    ("pm2_5", "24h"): (0, 35, 75, 115, 150, 250, 350, 500),
}
TABLE_2026 = {
    **TABLE_2012,
    ("pm10", "24h"): (0, 50, 120, 250, 350, 420, 500, 600),
    ("pm2_5", "24h"): (0, 35, 60, 115, 150, 250, 350, 500),
}
TABLES: dict[RuleSet, dict[tuple[str, Averaging], tuple[float | None, ...]]] = {
    "2012": TABLE_2012,
    "2026": TABLE_2026,
}
BREAKPOINT_CASES = [
    pytest.param(
        rules, pollutant, averaging, bp, index, id=f"{rules}-{pollutant}-{averaging}-{index}"
    )
    for rules, table in TABLES.items()
    for (pollutant, averaging), column in table.items()
    for bp, index in zip(column, IAQIS, strict=True)
    if bp is not None
]
COLUMNS = [(rules, p, a) for rules, table in TABLES.items() for (p, a) in table]


# --- iaqi ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("rules", "pollutant", "averaging", "bp", "expected"), BREAKPOINT_CASES)
def test_iaqi_at_every_breakpoint_is_the_rows_iaqi(
    rules: RuleSet, pollutant: str, averaging: Averaging, bp: float, expected: int
) -> None:
    assert iaqi(pollutant, bp, averaging=averaging, rules=rules) == expected
    assert iaqi(pollutant, float(bp), averaging=averaging, rules=rules) == expected


def test_2026_moves_the_particulate_iaqi_100_breakpoints() -> None:
    assert iaqi("pm2_5", 60, averaging="24h", rules="2026") == 100
    assert iaqi("pm2_5", 60, averaging="24h", rules="2012") == 82  # 50 + 50/40 × 25 = 81.25
    assert iaqi("pm10", 120, averaging="24h", rules="2026") == 100
    assert iaqi("pm10", 120, averaging="24h", rules="2012") == 85


@pytest.mark.parametrize(
    ("pollutant", "concentration", "averaging", "expected"),
    [
        ("pm2_5", 35.1, "24h", 51),  # 50.125 rounds up
        ("pm2_5", 0.01, "24h", 1),
        ("pm2_5", 74.99, "24h", 100),  # 99.9875
        ("pm2_5", 75.01, "24h", 101),
        ("pm10", 150.5, "24h", 101),  # 100.25
        ("so2", 50.5, "24h", 51),
        ("no2", 100.1, "1h", 51),  # 50.05
        ("co", 2.01, "24h", 51),  # 50.25
        ("co", 5.3, "1h", 53),
        ("o3", 170.0, "8h", 110),  # 100 + 50/55 × 10 = 109.09
        ("o3", 161, "1h", 52),  # 50 + 50/40 = 51.25
    ],
)
def test_interpolation_rounds_up_under_2012(
    pollutant: str, concentration: float, averaging: Averaging, expected: int
) -> None:
    assert iaqi(pollutant, concentration, averaging=averaging, rules="2012") == expected


def test_a_float_just_below_a_breakpoint_is_taken_at_its_decimal_value() -> None:
    # 0.1 + 0.2 and friends: the exact decimal spelling is what is scored, so
    # landing on a breakpoint never rounds up past it.
    assert iaqi("co", 0.1 + 3.9, averaging="24h", rules="2012") == 100
    assert iaqi("co", 4.000000000000001, averaging="24h", rules="2012") == 101


@pytest.mark.parametrize(
    ("pollutant", "concentration", "averaging", "expected"),
    [
        ("pm2_5", 60.4, "24h", 100),  # → 60
        ("pm2_5", 60.5, "24h", 101),  # → 61 (half up)
        ("pm2_5", 35.1, "24h", 50),  # → 35
        ("pm2_5", 34.5, "24h", 50),  # → 35 (half even: 34 → 49)
        ("pm10", 120.49, "24h", 100),  # → 120
        ("so2", 0.4, "24h", 0),
        ("no2", 40.5, "24h", 52),  # → 41: 50 + 50/40 = 51.25
        (
            "co",
            4.05,
            "24h",
            101,
        ),  # → 4.1: 100.5 (the float is 4.0499…; its decimal value is rounded)
        ("co", 4.04, "24h", 100),  # → 4.0
        ("co", 2.25, "24h", 58),  # → 2.3 half up (half even: 2.2 → 55): 57.5
    ],
)
def test_2026_rounds_concentrations_before_scoring(
    pollutant: str, concentration: float, averaging: Averaging, expected: int
) -> None:
    assert iaqi(pollutant, concentration, averaging=averaging, rules="2026") == expected


def test_co_is_rounded_to_one_decimal_under_2026() -> None:
    # 4.05 mg/m³ scores as 4.1: the same IAQI as 4.1 itself, not as 4.0 or 4.05.
    as_41 = iaqi("co", 4.1, averaging="24h", rules="2026")
    assert iaqi("co", 4.05, averaging="24h", rules="2026") == as_41 == 101
    assert iaqi("co", 4.05, averaging="1h", rules="2026") == 41
    assert iaqi("co", 4.05, averaging="24h", rules="2012") == 101  # 100.25, unrounded


def test_pm2_5_75_scores_higher_under_2026() -> None:
    under_2012 = iaqi("pm2_5", 75, averaging="24h", rules="2012")
    under_2026 = iaqi("pm2_5", 75, averaging="24h", rules="2026")
    assert under_2012 == 100
    assert under_2026 == 114  # 100 + 50/55 × 15 = 113.6
    assert under_2026 > under_2012


@pytest.mark.parametrize(("rules", "pollutant", "averaging"), COLUMNS)
def test_above_the_top_breakpoint(rules: RuleSet, pollutant: str, averaging: Averaging) -> None:
    top = max(bp for bp in TABLES[rules][(pollutant, averaging)] if bp is not None)
    result = iaqi(pollutant, top * 1.5, averaging=averaging, rules=rules)
    if (pollutant, averaging) == ("so2", "1h"):
        assert result == (None if rules == "2012" else 200)
    elif (pollutant, averaging) == ("o3", "8h"):
        assert result == (None if rules == "2012" else 300)
    else:
        assert result == 500
        assert iaqi(pollutant, top * 100, averaging=averaging, rules=rules) == 500


@pytest.mark.parametrize("rules", ["2012", "2026"])
def test_so2_1h_and_o3_8h_at_800_are_still_scored(rules: RuleSet) -> None:
    assert iaqi("so2", 800, averaging="1h", rules=rules) == 200
    assert iaqi("o3", 800, averaging="8h", rules=rules) == 300


def test_so2_1h_and_o3_8h_above_800() -> None:
    assert iaqi("so2", 800.1, averaging="1h", rules="2012") is None
    assert iaqi("so2", 900, averaging="1h", rules="2012") is None
    assert iaqi("so2", 900, averaging="1h", rules="2026") == 200
    assert iaqi("so2", 800.4, averaging="1h", rules="2026") == 200  # rounds to 800
    assert iaqi("o3", 801, averaging="8h", rules="2012") is None
    assert iaqi("o3", 900, averaging="8h", rules="2026") == 300


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: iaqi("pm2_5", -1, averaging="24h", rules="2012"), r"pm2_5.*-1.*negative"),
        (lambda: iaqi("no2", math.nan, averaging="1h", rules="2012"), r"no2.*nan.*not finite"),
        (lambda: iaqi("co", math.inf, averaging="1h", rules="2026"), r"co.*inf.*not finite"),
        (lambda: iaqi("co", True, averaging="1h", rules="2026"), r"co.*True.*not a number"),
        (lambda: iaqi("pm2_5", 10, averaging="1h", rules="2012"), r"pm2_5.*'1h'.*24h"),
        (lambda: iaqi("o3", 10, averaging="24h", rules="2012"), r"o3.*'24h'.*1h or 8h"),
        (lambda: iaqi("PM2.5", 10, averaging="24h", rules="2012"), r"unknown pollutant 'PM2.5'"),
        (lambda: iaqi("pm10", 10, averaging="24h", rules="2020"), r"rule set '2020'"),  # type: ignore[arg-type]
    ],
)
def test_iaqi_errors_name_the_pollutant_and_value(call: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()  # type: ignore[operator]


@settings(max_examples=300)
@given(
    column=st.sampled_from(COLUMNS),
    a=st.floats(min_value=0, max_value=5000, allow_nan=False),
    b=st.floats(min_value=0, max_value=5000, allow_nan=False),
)
def test_iaqi_is_monotone_and_bounded(
    column: tuple[RuleSet, str, Averaging], a: float, b: float
) -> None:
    rules, pollutant, averaging = column
    if pollutant == "co":  # mg/m³: scale into the column's range
        a, b = a / 25, b / 25
    lo, hi = sorted((a, b))
    i_lo = iaqi(pollutant, lo, averaging=averaging, rules=rules)
    i_hi = iaqi(pollutant, hi, averaging=averaging, rules=rules)
    for value in (i_lo, i_hi):
        assert value is None or 0 <= value <= 500
    if i_lo is not None and i_hi is not None:
        assert i_lo <= i_hi
    # Only the 2012 columns without a breakpoint above 800 are ever unscored, and then
    # everything above is unscored too.
    if i_lo is None:
        assert rules == "2012" and (pollutant, averaging) in {("so2", "1h"), ("o3", "8h")}
        assert lo > 800 and i_hi is None


# --- rule switch ----------------------------------------------------------------------------


def test_rules_switch_at_2026_03_01_china_time() -> None:
    switch = datetime(2026, 3, 1, tzinfo=CST)
    assert rules_for(switch) == "2026"
    assert rules_for(switch - timedelta(seconds=1)) == "2012"
    assert rules_for(switch - timedelta(microseconds=1)) == "2012"
    # 2026-02-28 16:00 UTC is that instant; 2026-03-01 00:00 UTC is eight hours after.
    assert rules_for(datetime(2026, 2, 28, 16, tzinfo=UTC)) == "2026"
    assert rules_for(datetime(2026, 2, 28, 15, 59, 59, tzinfo=UTC)) == "2012"
    assert rules_for(datetime(2026, 3, 1, 0, 30, tzinfo=timezone(timedelta(hours=9)))) == "2012"


def test_rules_for_needs_a_timezone() -> None:
    with pytest.raises(ValueError, match="2026-03-01T00:00:00 has no UTC offset"):
        rules_for(datetime(2026, 3, 1))


def test_hourly_and_daily_pick_rules_by_time() -> None:
    switch = datetime(2026, 3, 1, tzinfo=CST)
    before = hourly_aqi({"pm2_5": 75}, switch - timedelta(seconds=1), pm_24h={"pm2_5": 75})
    after = hourly_aqi({"pm2_5": 75}, switch)
    assert (before.rules, before.aqi) == ("2012", 100)
    assert (after.rules, after.aqi) == ("2026", 114)
    assert daily_aqi({"pm2_5": 75}, switch - timedelta(seconds=1)).aqi == 100
    assert daily_aqi({"pm2_5": 75}, switch).aqi == 114


# --- hourly -----------------------------------------------------------------------------


def test_hourly_2012_uses_1h_breakpoints_and_pm_24h_moving_means() -> None:
    result = hourly_aqi(
        {"pm2_5": 200, "pm10": 300, "so2": 150, "no2": 100, "co": 5, "o3": 160},
        BEFORE,
        pm_24h={"pm2_5": 35, "pm10": 50},
    )
    assert result.kind == "hourly" and result.rules == "2012"
    assert dict(result.iaqi) == {"pm2_5": 50, "pm10": 50, "so2": 50, "no2": 50, "co": 50, "o3": 50}
    assert dict(result.averaging) == {
        "pm2_5": "24h",
        "pm10": "24h",
        "so2": "1h",
        "no2": "1h",
        "co": "1h",
        "o3": "1h",
    }
    assert result.aqi == 50 and result.primary == () and result.level == 1
    assert result.missing == () and result.unscored == () and result.notes == ()


def test_hourly_2012_without_pm_24h_falls_back_to_the_1h_values_with_a_note() -> None:
    result = hourly_aqi({"pm2_5": 75, "pm10": 150}, BEFORE, pm_24h={"pm10": 50})
    assert dict(result.iaqi) == {"pm2_5": 100, "pm10": 50}
    assert len(result.notes) == 1
    assert "PM2.5" in result.notes[0] and "no 24-hour moving mean" in result.notes[0]


def test_hourly_2012_pm_24h_alone_scores_the_pollutant() -> None:
    result = hourly_aqi({"no2": 10}, BEFORE, pm_24h={"pm2_5": 115})
    assert dict(result.iaqi) == {"pm2_5": 150, "no2": 5}
    assert "pm2_5" not in result.missing


def test_hourly_2026_scores_pm_1h_means_against_24h_breakpoints() -> None:
    result = hourly_aqi({"pm2_5": 60, "pm10": 120}, AFTER, pm_24h={"pm2_5": 10})
    assert dict(result.iaqi) == {"pm2_5": 100, "pm10": 100}
    assert dict(result.averaging) == {"pm2_5": "24h", "pm10": "24h"}
    assert result.primary == ("pm2_5", "pm10")
    assert any("moving mean was not used" in note for note in result.notes)


def test_hourly_so2_above_800_under_2012() -> None:
    unscored = hourly_aqi({"so2": 900, "no2": 250}, BEFORE)
    assert dict(unscored.iaqi) == {"no2": 105}  # 1h 200–700: 100 + 50/500 × 50
    assert unscored.unscored == ("so2",) and "so2" not in unscored.missing
    assert any("SO2" in n and "900" in n and "no 24-hour mean" in n for n in unscored.notes)

    substituted = hourly_aqi({"so2": 900, "no2": 250}, BEFORE, so2_24h=475)
    assert dict(substituted.iaqi) == {"so2": 150, "no2": 105}
    assert substituted.averaging["so2"] == "24h"
    assert substituted.unscored == ()
    assert substituted.primary == ("so2",)
    assert any("475" in n and "instead" in n for n in substituted.notes)

    # so2_24h only stands in above 800.
    assert hourly_aqi({"so2": 500}, BEFORE, so2_24h=2000).iaqi["so2"] == 100


def test_hourly_so2_above_800_under_2026_scores_200() -> None:
    result = hourly_aqi({"so2": 900}, AFTER, so2_24h=2620)
    assert dict(result.iaqi) == {"so2": 200}
    assert result.averaging["so2"] == "1h"
    assert result.aqi == 200 and result.notes == ()


def test_only_unscorable_so2_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"no pollutant could be scored: SO2.*900"):
        hourly_aqi({"so2": 900}, BEFORE)


# --- daily ------------------------------------------------------------------------------


def test_daily_uses_24h_means_and_o3_8h() -> None:
    result = daily_aqi({"pm2_5": 35, "pm10": 50, "so2": 50, "no2": 40, "co": 2, "o3": 100}, BEFORE)
    assert result.kind == "daily"
    assert set(result.iaqi.values()) == {50}
    assert dict(result.averaging) == {
        "pm2_5": "24h",
        "pm10": "24h",
        "so2": "24h",
        "no2": "24h",
        "co": "24h",
        "o3": "8h",
    }


def test_daily_o3_8h_above_800() -> None:
    unscored = daily_aqi({"o3": 900, "pm2_5": 10}, BEFORE)
    assert dict(unscored.iaqi) == {"pm2_5": 15}
    assert unscored.unscored == ("o3",)
    assert any("O3" in n and "900" in n for n in unscored.notes)

    substituted = daily_aqi({"o3": 900}, BEFORE, o3_1h_max=1000)
    assert dict(substituted.iaqi) == {"o3": 400}
    assert substituted.averaging["o3"] == "1h"
    assert substituted.level_name_en == "severe"

    assert daily_aqi({"o3": 900}, AFTER, o3_1h_max=1000).iaqi["o3"] == 300
    # o3_1h_max only stands in above 800.
    assert daily_aqi({"o3": 160}, BEFORE, o3_1h_max=1200).iaqi["o3"] == 100


# --- AQI, primary pollutant, missing ----------------------------------------------------


def test_primary_pollutant_only_above_50() -> None:
    at_50 = daily_aqi({"pm2_5": 35, "pm10": 50}, BEFORE)
    assert at_50.aqi == 50 and at_50.primary == ()
    at_51 = daily_aqi({"pm2_5": 35.1, "pm10": 50}, BEFORE)
    assert at_51.aqi == 51 and at_51.primary == ("pm2_5",)


def test_primary_pollutant_ties_list_all() -> None:
    result = daily_aqi({"pm2_5": 115, "no2": 180, "o3": 215, "co": 1}, BEFORE)
    assert result.aqi == 150
    assert result.primary == ("pm2_5", "no2", "o3")


def test_missing_pollutants_are_listed() -> None:
    result = hourly_aqi({"no2": 150, "co": 1}, BEFORE)
    assert result.missing == ("pm2_5", "pm10", "so2", "o3")
    assert result.aqi == 75 and result.primary == ("no2",)


def test_no_pollutants_is_an_error() -> None:
    with pytest.raises(ValueError, match="no concentrations given"):
        hourly_aqi({}, BEFORE)
    with pytest.raises(ValueError, match="no concentrations given"):
        daily_aqi({}, AFTER)


def test_aqi_2026_is_at_least_1() -> None:
    assert daily_aqi({"pm2_5": 0, "co": 0}, AFTER).aqi == 1
    assert daily_aqi({"pm2_5": 0.4}, AFTER).iaqi["pm2_5"] == 0
    assert daily_aqi({"pm2_5": 0, "co": 0}, BEFORE).aqi == 0


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: hourly_aqi({"pm2_5": -3}, BEFORE), r"pm2_5.*-3.*negative"),
        (lambda: hourly_aqi({"o3": math.inf}, BEFORE), r"o3.*inf"),
        (lambda: daily_aqi({"PM2.5": 3}, BEFORE), r"unknown pollutant 'PM2.5'"),
        (lambda: hourly_aqi({"no2": 3}, datetime(2026, 1, 1)), r"no UTC offset"),
        (lambda: hourly_aqi({"no2": 3}, BEFORE, pm_24h={"no2": 3}), r"pm_24h.*'no2'"),
        (lambda: hourly_aqi({"no2": 3}, BEFORE, pm_24h={"pm10": -1}), r"pm10 24h.*-1"),
        (lambda: hourly_aqi({"no2": 3}, BEFORE, so2_24h=math.nan), r"so2 24h.*nan"),
        (lambda: daily_aqi({"no2": 3}, BEFORE, o3_1h_max=-5), r"o3.*-5"),
    ],
)
def test_aqi_errors(call: object, message: str) -> None:
    with pytest.raises(AQIError, match=message):
        call()  # type: ignore[operator]


def test_result_as_dict() -> None:
    result = hourly_aqi({"pm2_5": 80}, AFTER)
    assert result.as_dict() == {
        "aqi": 119,
        "iaqi": {"pm2_5": 119},
        "primary": ["pm2_5"],
        "level": 3,
        "level_name_zh": "轻度污染",
        "level_name_en": "light",
        "colour": "orange",
        "colour_hex": "#FF7E00",
        "rules": "2026",
        "standard": "HJ 633-2026",
        "kind": "hourly",
        "missing": ["pm10", "so2", "no2", "co", "o3"],
        "unscored": [],
        "averaging": {"pm2_5": "24h"},
        "notes": [],
    }


# --- levels -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("aqi", "level", "zh", "en", "colour", "colour_hex"),
    [
        (0, 1, "优", "good", "green", "#00E400"),
        (50, 1, "优", "good", "green", "#00E400"),
        (51, 2, "良", "moderate", "yellow", "#FFFF00"),
        (100, 2, "良", "moderate", "yellow", "#FFFF00"),
        (101, 3, "轻度污染", "light", "orange", "#FF7E00"),
        (150, 3, "轻度污染", "light", "orange", "#FF7E00"),
        (151, 4, "中度污染", "medium", "red", "#FF0000"),
        (200, 4, "中度污染", "medium", "red", "#FF0000"),
        (201, 5, "重度污染", "heavy", "purple", "#99004C"),
        (300, 5, "重度污染", "heavy", "purple", "#99004C"),
        (301, 6, "严重污染", "severe", "maroon", "#7E0023"),
        (500, 6, "严重污染", "severe", "maroon", "#7E0023"),
    ],
)
def test_level_boundaries(
    aqi: int, level: int, zh: str, en: str, colour: str, colour_hex: str
) -> None:
    band = level_for(aqi)
    assert (band.level, band.name_zh, band.name_en, band.colour, band.colour_hex) == (
        level,
        zh,
        en,
        colour,
        colour_hex,
    )


def test_level_of_a_result_follows_its_aqi() -> None:
    result = daily_aqi({"pm2_5": 150.1}, BEFORE)  # 200.1 → 201
    assert result.aqi == 201
    assert (result.level, result.level_name_zh, result.colour, result.colour_hex) == (
        5,
        "重度污染",
        "purple",
        "#99004C",
    )


def test_negative_aqi_has_no_level() -> None:
    with pytest.raises(ValueError, match="-1"):
        level_for(-1)


# --- names ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "metric"),
    [
        ("PM2.5", "pm2_5"),
        ("pm2_5", "pm2_5"),
        ("Pm2.5", "pm2_5"),
        ("PM25", "pm2_5"),
        ("PM10", "pm10"),
        ("so2", "so2"),
        ("NO2", "no2"),
        ("Co", "co"),
        ("O3", "o3"),
    ],
)
def test_parse_pollutant(name: str, metric: str) -> None:
    assert parse_pollutant(name) == metric


def test_parse_pollutant_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match=r"unknown pollutant 'PM1'.*PM2\.5 \(pm2_5\)"):
        parse_pollutant("PM1")


def test_numpy_concentrations() -> None:
    assert iaqi("pm2_5", np.float64(35.1), averaging="24h", rules="2012") == 51
    assert iaqi("co", np.float64(4.05), averaging="24h", rules="2026") == 101
    with pytest.raises(AQIError, match=r"pm10.*not finite"):
        iaqi("pm10", np.float64("nan"), averaging="24h", rules="2012")
