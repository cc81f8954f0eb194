"""The CityVitals dashboards: one function per dashboard, in house style.

Every query is raw SQL on the CityVitals PostgreSQL/TimescaleDB datasource
(`dashboards.sql`), filtered by the template variables (district, domain,
profile, device; "All" filters nothing). Values "now" are read as of the end of
the dashboard's time range, so a past range shows the city as it was then.
Time series come from the raw readings or the 1-minute / 1-hour rollups by
`$__interval` (`dashboards.sql.rollup_series`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

from grafana_foundation_sdk.builders import barchart, bargauge, geomap, stat, statetimeline, table
from grafana_foundation_sdk.builders import common as gc
from grafana_foundation_sdk.builders import dashboard as gd
from grafana_foundation_sdk.builders import timeseries as ts
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as gm

from alerts.model import Level
from dashboards.sql import ALL, rollup_series, var_in
from dashboards.style import (
    DATASOURCE,
    HANDLING_STATES,
    LEVEL_COLOURS,
    LEVEL_NAMES,
    TIMEZONE,
    PanelT,
    aqi_mappings,
    aqi_thresholds,
    colour_override,
    finish,
    fixed_colour,
    level_mappings,
    level_series_colours,
    level_thresholds,
    new_dashboard,
    sql,
    thresholds_colour,
)
from rules.vitals import DOMAINS

DOMAIN_DASHBOARDS = {
    "flood": "cityvitals-flood",
    "drainage": "cityvitals-drainage",
    "air": "cityvitals-air",
    "elevators": "cityvitals-elevators",
    "noise": "cityvitals-noise",
    "device_health": "cityvitals-device-health",
}
"""Vital-sign domain → the uid of the dashboard that shows it in detail."""
DOMAIN_TITLES = {
    "flood": "Flood",
    "drainage": "Drainage",
    "air": "Air",
    "elevators": "Elevators",
    "noise": "Noise",
    "device_health": "Device health",
}
ALERTS_UID = "cityvitals-alerts"
WALL_UID = "cityvitals-wall"

RAIN_24H = """(SELECT sum(x.value) FROM readings x
        WHERE x.device_id = d2.device_id AND x.metric = 'rain_mm'
          AND x.ts > $__timeTo()::timestamptz - INTERVAL '24 hours'
          AND x.ts <= $__timeTo()::timestamptz)"""
"""A rain gauge's total over the 24 hours up to the end of the range (scores `d2`)."""
WATER_LEVEL = ("water_level",)
RAIN_GAUGE = ("rain_gauge",)
DRAINAGE = ("drainage",)
AIR = ("air_quality",)
ELEVATOR = ("elevator", "elevator_frame")
NOISE = ("noise",)

_OPEN_HANDLING = [s for s in HANDLING_STATES if s != "closed"]
_BY_LEVEL = ", ".join(
    f"count({{id}}) FILTER (WHERE a.level = {int(lv)}) AS {LEVEL_NAMES[lv]}" for lv in Level if lv
)
"""One count column per alert level (blue … red); `{id}` is what to count."""
_BY_HANDLING = ", ".join(
    f"count(*) FILTER (WHERE a.handling = '{s}') AS {s}" for s in _OPEN_HANDLING
)


def _in(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def device_filter(alias: str = "d") -> str:
    """The device-level variables on `devices` aliased `alias`."""
    return " AND ".join(
        (
            var_in("district", f"{alias}.district"),
            var_in("profile", f"{alias}.profile"),
            var_in("device", f"{alias}.device_id"),
        )
    )


def alert_filter(alias: str = "a") -> str:
    """The variables on alerts (area alerts have no device; city-wide ones no district)."""
    return " AND ".join(
        (
            var_in("district", f"{alias}.district"),
            var_in("domain", f"cityvitals_vital_domain({alias}.domain)"),
            var_in("device", f"{alias}.device_id"),
        )
    )


def latest_as_of(metric: str, alias: str, device: str = "d.device_id") -> str:
    """A LEFT JOIN of `metric`'s last reading at or before the range's end, per device:
    one probe of the readings' primary key."""
    return f"""LEFT JOIN LATERAL (
    SELECT x.ts, x.value FROM readings x
    WHERE x.device_id = {device} AND x.metric = '{metric}' AND x.ts <= $__timeTo()::timestamptz
    ORDER BY x.ts DESC LIMIT 1
) {alias} ON true"""


TOP = 20
"""Series a domain time-series panel draws when the device variable is "All"."""


def top_devices(profiles: Sequence[str], metric: str, score: str = "l.value", n: int = TOP) -> str:
    """With the device variable on "All": only the `n` devices of `profiles` (and the
    other variables) whose latest `metric` at the range's end scores highest (`score`
    over `l.value` and the device `d2`); with devices selected: those. Hundreds of
    series help no one on a wall, and the panel stays fast over long ranges."""
    return f"""('{ALL}' NOT IN ($device) OR d.device_id IN (
    SELECT d2.device_id FROM devices d2
    {latest_as_of(metric, "l", "d2.device_id")}
    WHERE {_in("d2.profile", profiles)} AND {device_filter("d2")}
    ORDER BY {score} DESC NULLS LAST, d2.device_id
    LIMIT {n}))"""


def _attr(name: str, alias: str = "d") -> str:
    return f"nullif({alias}.attributes ->> '{name}', '')::double precision"


def _ts_panel(title: str, *queries: str, unit: str = "", description: str = "") -> ts.Panel:
    panel = ts.Panel().title(title).datasource(DATASOURCE).line_width(1).fill_opacity(10)
    for i, q in enumerate(queries):
        panel = panel.with_target(sql(q).time_series().ref_id(chr(ord("A") + i)))
    if unit:
        panel = panel.unit(unit)
    if description:
        panel = panel.description(description)
    return panel


def _bars(panel: ts.Panel) -> ts.Panel:
    return (
        panel.draw_style(cm.GraphDrawStyle.BARS)
        .fill_opacity(80)
        .stacking(gc.StackingConfig().mode(cm.StackingMode.NORMAL))
    )


def _table(title: str, query: str, description: str = "") -> table.Panel:
    panel = table.Panel().title(title).datasource(DATASOURCE).with_target(sql(query).table())
    if description:
        panel = panel.description(description)
    return panel


def _level_column(panel: PanelT, *names: str) -> PanelT:
    """Columns holding a level number shown as its name on the level's colour."""
    builder: Any = panel
    for name in names:
        builder = builder.override_by_name(
            name,
            [
                gm.DynamicConfigValue(id_val="mappings", value=level_mappings()),
                gm.DynamicConfigValue(
                    id_val="custom.cellOptions", value={"type": "color-background"}
                ),
                gm.DynamicConfigValue(id_val="color", value={"mode": "thresholds"}),
                gm.DynamicConfigValue(id_val="thresholds", value=level_thresholds().build()),
            ],
        )
    return cast(PanelT, builder)


def _unit_columns(panel: PanelT, unit: str, *names: str) -> PanelT:
    builder: Any = panel
    for name in names:
        builder = builder.override_by_name(name, [gm.DynamicConfigValue(id_val="unit", value=unit)])
    return cast(PanelT, builder)


def _stat(title: str, query: str, *, unit: str = "", description: str = "") -> stat.Panel:
    panel = (
        stat.Panel()
        .title(title)
        .datasource(DATASOURCE)
        .with_target(sql(query).table())
        .reduce_options(gc.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .color_mode(cm.BigValueColorMode.BACKGROUND)
        .graph_mode(cm.BigValueGraphMode.NONE)
    )
    if unit:
        panel = panel.unit(unit)
    if description:
        panel = panel.description(description)
    return panel


def _level_stat(title: str, query: str, description: str = "") -> stat.Panel:
    return (
        _stat(title, query, description=description)
        .mappings(level_mappings())
        .thresholds(level_thresholds())
        .color_scheme(thresholds_colour())
        .no_value("no vital signs yet")
    )


# -- shared queries ---------------------------------------------------------------------------

OPEN_ALERTS_SQL = f"""
SELECT a.level, a.rule, a.summary, a.device_id, a.district,
       cityvitals_vital_domain(a.domain) AS domain, a.condition, a.handling, a.team,
       a.started_at, extract(epoch FROM now() - a.started_at) AS age
FROM alerts a
WHERE a.handling <> 'closed' AND {alert_filter()}
ORDER BY a.level DESC, a.started_at
LIMIT 500
"""

ALERTS_RAISED_SQL = f"""
SELECT $__timeGroupAlias(a.started_at, $__interval),
       {_BY_LEVEL.format(id="*")}
FROM alerts a
WHERE $__timeFilter(a.started_at) AND {alert_filter()}
GROUP BY 1
ORDER BY 1
"""


def _open_alerts_table(title: str = "Open alerts", rules: Sequence[str] = ()) -> table.Panel:
    query = OPEN_ALERTS_SQL
    if rules:
        query = query.replace(
            "WHERE a.handling <> 'closed'",
            f"WHERE a.handling <> 'closed' AND cityvitals_vital_domain(a.domain) IN "
            f"({', '.join(repr(r) for r in rules)})",
        )
    panel = _table(title, query, "Alerts not yet closed, most severe first; age in seconds.")
    panel = _level_column(panel, "level")
    return _unit_columns(panel, "dtdurations", "age")


def _alerts_raised() -> ts.Panel:
    panel = _bars(_ts_panel("Alerts raised", ALERTS_RAISED_SQL, unit="short"))
    return level_series_colours(panel)


# -- City vital signs: the wall screen ----------------------------------------------------------


def city_vital_signs() -> dict[str, Any]:
    """The wall screen: the city's level per domain, districts × domains, open alerts by
    level and handling state, and the map of devices by their worst open alert."""
    domain_columns = ",\n       ".join(
        f"max(v.level) FILTER (WHERE v.domain = '{d}') AS {d}" for d in DOMAINS
    )
    city = (
        _level_stat(
            "City",
            f"""
        SELECT max(v.level) AS city
        FROM vital_signs_latest v
        WHERE v.scope = 'city' AND {var_in("domain", "v.domain")}
        """,
            "The city's level: the highest of its domains (alerts firing now).",
        )
        .height(6)
        .span(4)
    )
    city_domains = (
        _level_stat(
            "City by domain",
            f"""
            SELECT {domain_columns}
            FROM vital_signs_latest v
            WHERE v.scope = 'city' AND {var_in("domain", "v.domain")}
            """,
        )
        .height(6)
        .span(16)
        .text_mode(cm.BigValueTextMode.VALUE_AND_NAME)
    )
    for d in DOMAINS:
        city_domains = city_domains.override_by_name(
            d,
            [
                gm.DynamicConfigValue(id_val="displayName", value=DOMAIN_TITLES[d]),
                gm.DynamicConfigValue(
                    id_val="links",
                    value=[
                        {
                            "title": f"{DOMAIN_TITLES[d]} dashboard",
                            "url": f"/d/{DOMAIN_DASHBOARDS[d]}?${{__url_time_range}}",
                        }
                    ],
                ),
            ],
        )
    online = (
        _stat(
            "Devices online",
            """
            SELECT (v.indicators ->> 'online_share')::double precision AS online_share
            FROM vital_signs_latest v
            WHERE v.scope = 'city' AND v.domain = 'device_health'
            """,
            unit="percentunit",
            description="Devices heard from within 3 reporting intervals (the engine's count).",
        )
        .thresholds(
            gd.ThresholdsConfig()
            .mode(gm.ThresholdsMode.ABSOLUTE)
            .steps(
                [
                    gm.Threshold(value=None, color=LEVEL_COLOURS[Level.RED]),
                    gm.Threshold(value=0.8, color=LEVEL_COLOURS[Level.ORANGE]),
                    gm.Threshold(value=0.9, color=LEVEL_COLOURS[Level.YELLOW]),
                    gm.Threshold(value=0.97, color=LEVEL_COLOURS[Level.NORMAL]),
                ]
            )
        )
        .color_scheme(thresholds_colour())
        .height(6)
        .span(4)
    )
    grid = (
        _table(
            "Districts × domains",
            f"""
        SELECT v.scope AS district,
               {domain_columns}
        FROM vital_signs_latest v
        WHERE (v.scope = 'city' OR {var_in("district", "v.scope")})
          AND {var_in("domain", "v.domain")}
        GROUP BY v.scope
        ORDER BY v.scope <> 'city', length(v.scope), v.scope
        """,
            "Each cell: the domain's level in the district now. Click a cell for its dashboard.",
        )
        .height(10)
        .span(14)
    )
    grid = _level_column(grid, *DOMAINS)
    for d in DOMAINS:
        grid = grid.override_by_name(
            d,
            [
                gm.DynamicConfigValue(id_val="displayName", value=DOMAIN_TITLES[d]),
                gm.DynamicConfigValue(
                    id_val="links",
                    value=[
                        {
                            "title": f"{DOMAIN_TITLES[d]} in ${{__data.fields.district}}",
                            "url": f"/d/{DOMAIN_DASHBOARDS[d]}?var-district="
                            "${__data.fields.district}&${__url_time_range}",
                        }
                    ],
                ),
            ],
        )
    by_handling = (
        barchart.Panel()
        .title("Open alerts by handling state and level")
        .datasource(DATASOURCE)
        .with_target(
            sql(
                f"""
                SELECT h.handling,
                       {_BY_LEVEL.format(id="a.id")}
                FROM unnest(ARRAY[{", ".join(repr(s) for s in _OPEN_HANDLING)}])
                     WITH ORDINALITY AS h (handling, ord)
                LEFT JOIN alerts a ON a.handling = h.handling AND {alert_filter()}
                GROUP BY h.handling, h.ord
                ORDER BY h.ord
                """
            ).table()
        )
        .x_field("handling")
        .stacking(cm.StackingMode.NORMAL)
        .show_value(cm.VisibilityMode.AUTO)
        .links([gd.DashboardLink("Alerts and handling").url(f"/d/{ALERTS_UID}")])
        .height(10)
        .span(10)
    )
    by_handling = level_series_colours(by_handling)
    device_map = (
        geomap.Panel()
        .title("Devices by worst open alert")
        .description("Each device, coloured by the highest level of its alerts not yet closed.")
        .datasource(DATASOURCE)
        .with_target(
            sql(
                f"""
                SELECT d.device_id, d.name, d.profile, d.district, d.lat, d.lon, d.level,
                       d.open_alerts
                FROM device_alert_levels d
                WHERE d.lat IS NOT NULL AND d.lon IS NOT NULL AND {device_filter()}
                ORDER BY d.level, d.device_id
                """
            ).table()
        )
        .view(geomap.MapViewConfig().id("fit").zoom(11))
        .basemap(gc.MapLayerOptions().type("default").name("Basemap"))
        .layers(
            [
                gc.MapLayerOptions()
                .type("markers")
                .name("Devices")
                .location(
                    gc.FrameGeometrySource()
                    .mode(cm.FrameGeometrySourceMode.COORDS)
                    .latitude("lat")
                    .longitude("lon")
                )
                .config(
                    {
                        "showLegend": True,
                        "style": {
                            "color": {"field": "level", "fixed": LEVEL_COLOURS[Level.NORMAL]},
                            "opacity": 0.8,
                            "size": {"fixed": 5, "max": 12, "min": 3},
                            "symbol": {"fixed": "img/icons/marker/circle.svg", "mode": "fixed"},
                        },
                    }
                )
                .tooltip(True)
            ]
        )
        .thresholds(level_thresholds())
        .mappings(level_mappings())
        .color_scheme(thresholds_colour())
        .height(14)
        .span(14)
    )
    open_alerts = _open_alerts_table().height(14).span(10)
    history = (
        statetimeline.Panel()
        .title("City levels over time")
        .datasource(DATASOURCE)
        .with_target(
            sql(
                f"""
                SELECT $__timeFrom()::timestamptz AS time, d.domain AS metric,
                       coalesce(p.level, 0) AS value
                FROM unnest(cityvitals_vital_domains()) AS d (domain)
                LEFT JOIN LATERAL (
                    SELECT v.level FROM vital_signs v
                    WHERE v.scope = 'city' AND v.domain = d.domain
                      AND v.ts <= $__timeFrom()::timestamptz
                    ORDER BY v.ts DESC LIMIT 1
                ) p ON true
                WHERE {var_in("domain", "d.domain")}
                UNION ALL
                SELECT v.ts, v.domain, v.level
                FROM vital_signs v
                WHERE v.scope = 'city' AND $__timeFilter(v.ts) AND {var_in("domain", "v.domain")}
                ORDER BY 1
                """
            ).time_series()
        )
        .mappings(level_mappings())
        .thresholds(level_thresholds())
        .color_scheme(thresholds_colour())
        .merge_values(True)
        .show_value(cm.VisibilityMode.NEVER)
        .height(8)
        .span(24)
    )
    raised = _alerts_raised().height(7).span(24)
    board = new_dashboard(
        WALL_UID,
        "City vital signs",
        "The operations centre's wall screen: the city's state now, where it is worst, and"
        " what is being handled.",
        time_from="now-24h",
        refresh="30s",
        tags=["wall"],
    )
    for d in DOMAINS:
        board = board.link(
            gd.DashboardLink(DOMAIN_TITLES[d])
            .type(gm.DashboardLinkType.LINK)
            .url(f"/d/{DOMAIN_DASHBOARDS[d]}?${{district:queryparam}}")
            .keep_time(True)
        )
    for panel in (city, city_domains, online, grid, by_handling, device_map, open_alerts):
        board = board.with_panel(panel)
    board = board.with_panel(history).with_panel(raised)
    return finish(board)


# -- Flood and rain ---------------------------------------------------------------------------


def flood_and_rain() -> dict[str, Any]:
    """Water levels against each gauge's warning and guaranteed levels, rain totals over
    1/3/6/12/24 h, and the rainstorm signal they amount to."""
    gauges = f"{_in('d.profile', WATER_LEVEL)} AND {device_filter()}"
    rain = f"{_in('d.profile', RAIN_GAUGE)} AND {device_filter()}"
    nearest_warning = top_devices(
        WATER_LEVEL, "level_m", f"l.value / nullif({_attr('warning_level_m', 'd2')}, 0)"
    )
    levels = _ts_panel(
        "Water levels",
        rollup_series(
            "d.device_id AS metric",
            ["level_m"],
            f"{gauges} AND {nearest_warning}",
        ),
        f"""
        SELECT v.t AS time, d.device_id || ' ' || k.kind AS metric,
               nullif(d.attributes ->> k.attr, '')::double precision AS value
        FROM devices d
        CROSS JOIN (VALUES ('warning', 'warning_level_m'), ('guaranteed', 'guaranteed_level_m'))
             AS k (kind, attr)
        CROSS JOIN (VALUES ($__timeFrom()::timestamptz), ($__timeTo()::timestamptz)) AS v (t)
        WHERE d.attributes ->> k.attr IS NOT NULL AND {gauges}
          AND {nearest_warning}
        ORDER BY 1
        """,
        unit="lengthm",
        description=f"Each gauge's level (with all gauges selected: the {TOP} nearest their"
        " warning level at the end of the range); dashed: its warning (yellow) and guaranteed"
        " (orange) levels.",
    )
    for kind, lv in (("warning", Level.YELLOW), ("guaranteed", Level.ORANGE)):
        levels = levels.override_by_regexp(
            f".* {kind}$",
            [
                *colour_override(kind, lv.colour),
                gm.DynamicConfigValue(
                    id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]}
                ),
            ],
        )
    levels = levels.height(10).span(24)
    gauge_table = _table(
        "Gauges now",
        f"""
        SELECT d.device_id, d.name, d.district, d.attributes ->> 'river' AS river,
               l.value AS level_m,
               {_attr("warning_level_m")} AS warning_level_m,
               {_attr("guaranteed_level_m")} AS guaranteed_level_m,
               {_attr("historical_max_m")} AS historical_max_m,
               round((l.value / nullif({_attr("warning_level_m")}, 0))::numeric, 3)
                   AS warning_ratio,
               CASE WHEN l.value IS NULL THEN NULL
                    WHEN l.value >= {_attr("historical_max_m")} THEN 4
                    WHEN l.value >= {_attr("guaranteed_level_m")} THEN 3
                    WHEN l.value >= {_attr("warning_level_m")} THEN 2
                    WHEN l.value >= {_attr("warning_level_m")}
                                    - coalesce({_attr("approach_margin_m")}, 0.3) THEN 1
                    ELSE 0 END AS signal,
               l.ts AS reported_at
        FROM devices d
        {latest_as_of("level_m", "l")}
        WHERE {gauges}
        ORDER BY warning_ratio DESC NULLS LAST, d.device_id
        """,
        "Latest level at the end of the range; signal: blue approaching the warning level,"
        " yellow at it, orange at the guaranteed level, red at the historical maximum.",
    )
    gauge_table = (
        _unit_columns(
            _level_column(gauge_table, "signal"),
            "lengthm",
            "level_m",
            "warning_level_m",
            "guaranteed_level_m",
            "historical_max_m",
        )
        .height(10)
        .span(24)
    )
    windows = (1, 3, 6, 12, 24)
    totals = ",\n               ".join(
        f"coalesce(sum(r.value) FILTER (WHERE r.ts > $__timeTo()::timestamptz"
        f" - INTERVAL '{h} hours'), 0) AS rain_{h}h"
        for h in windows
    )
    signal = (
        "CASE WHEN rain_3h >= 100 THEN 4 WHEN rain_3h >= 50 THEN 3"
        " WHEN rain_6h >= 50 THEN 2 WHEN rain_12h >= 50 THEN 1 ELSE 0 END"
    )
    totals_sql = f"""
        WITH t AS (
            SELECT d.device_id, d.name, d.district,
                   {totals}
            FROM devices d
            LEFT JOIN LATERAL (
                SELECT x.ts, x.value FROM readings x
                WHERE x.device_id = d.device_id AND x.metric = 'rain_mm'
                  AND x.ts > $__timeTo()::timestamptz - INTERVAL '24 hours'
                  AND x.ts <= $__timeTo()::timestamptz
            ) r ON true
            WHERE {rain}
            GROUP BY d.device_id, d.name, d.district
        )
    """
    rain_table = _table(
        "Rain totals",
        totals_sql
        + f"""
        SELECT t.*, {signal} AS rainstorm_signal
        FROM t
        ORDER BY rain_24h DESC, device_id
        """,
        "Rain over the 1/3/6/12/24 hours up to the end of the range (mm). Rainstorm signal"
        " (CMA): blue 12 h ≥ 50, yellow 6 h ≥ 50, orange 3 h ≥ 50, red 3 h ≥ 100 mm.",
    )
    rain_table = (
        _unit_columns(
            _level_column(rain_table, "rainstorm_signal"),
            "lengthmm",
            *(f"rain_{h}h" for h in windows),
        )
        .height(10)
        .span(16)
    )
    rainstorm = (
        _level_stat(
            "Rainstorm signal",
            totals_sql + f"SELECT max({signal}) AS rainstorm_signal FROM t",
            "The highest signal any selected gauge's totals reach at the end of the range.",
        )
        .no_value("no rain gauges")
        .height(10)
        .span(8)
    )
    rain_series = (
        _bars(
            _ts_panel(
                "Rain per interval",
                rollup_series(
                    "d.device_id AS metric",
                    ["rain_mm"],
                    f"{rain} AND {top_devices(RAIN_GAUGE, 'rain_mm', RAIN_24H)}",
                    aggregate="sum",
                ),
                unit="lengthmm",
            )
        )
        .height(9)
        .span(24)
    )
    board = new_dashboard(
        DOMAIN_DASHBOARDS["flood"],
        "Flood and rain",
        "River and channel levels, rain totals and rainstorm signals.",
        profiles=WATER_LEVEL + RAIN_GAUGE,
        domain="flood",
        tags=["flood"],
    )
    for panel in (
        levels,
        gauge_table,
        rain_table,
        rainstorm,
        rain_series,
        _open_alerts_table("Open flood alerts", ["flood"]).height(8).span(24),
    ):
        board = board.with_panel(panel)
    return finish(board)


# -- Drainage ---------------------------------------------------------------------------------


def drainage() -> dict[str, Any]:
    """Pipe fill ratios and surcharges, manhole covers and gas."""
    monitors = f"{_in('d.profile', DRAINAGE)} AND {device_filter()}"
    fill = (
        _ts_panel(
            "Fill ratio",
            rollup_series(
                "d.device_id AS metric",
                ["fill_ratio"],
                f"{monitors} AND {top_devices(DRAINAGE, 'fill_ratio')}",
                aggregate="max",
            ),
            unit="percentunit",
            description=f"Highest fill ratio per interval (with all monitors selected: the {TOP}"
            " fullest pipes at the end of the range); above 1.0 (red line) the pipe is"
            " surcharged.",
        )
        .thresholds(
            gd.ThresholdsConfig()
            .mode(gm.ThresholdsMode.ABSOLUTE)
            .steps(
                [
                    gm.Threshold(value=None, color="transparent"),
                    gm.Threshold(value=1.0, color=LEVEL_COLOURS[Level.RED]),
                ]
            )
        )
        .thresholds_style(gc.GraphThresholdsStyleConfig().mode(cm.GraphThresholdsStyleMode.DASHED))
        .height(10)
        .span(16)
    )
    metrics = (
        "fill_ratio",
        "level_m",
        "road_water_m",
        "cover_open",
        "cover_tilt_deg",
        "ch4_pct_lel",
        "h2s_ppm",
        "battery_v",
    )
    surcharged = (
        _stat(
            "Surcharged pipes",
            f"""
            SELECT count(*) FILTER (WHERE f.value > 1.0) AS surcharged
            FROM devices d
            {latest_as_of("fill_ratio", "f")}
            WHERE {monitors}
            """,
            description="Monitors whose latest fill ratio is above 1.0.",
        )
        .thresholds(
            gd.ThresholdsConfig()
            .mode(gm.ThresholdsMode.ABSOLUTE)
            .steps(
                [
                    gm.Threshold(value=None, color=LEVEL_COLOURS[Level.NORMAL]),
                    gm.Threshold(value=1, color=LEVEL_COLOURS[Level.ORANGE]),
                ]
            )
        )
        .color_scheme(thresholds_colour())
        .height(10)
        .span(8)
    )
    joins = "\n".join(latest_as_of(m, f"m{i}") for i, m in enumerate(metrics))
    columns = ", ".join(f"m{i}.value AS {m}" for i, m in enumerate(metrics))
    monitors_table = (
        _table(
            "Monitors now",
            f"""
        SELECT d.device_id, d.name, d.district, d.attributes ->> 'road' AS road,
               {_attr("design_fill_ratio")} AS design_fill_ratio, {columns}
        FROM devices d
        {joins}
        WHERE {monitors}
        ORDER BY m0.value DESC NULLS LAST, d.device_id
        LIMIT 500
        """,
            "Latest values at the end of the range, fullest pipes first.",
        )
        .height(10)
        .span(24)
    )
    gas = (
        _ts_panel(
            "Gas in manholes",
            rollup_series(
                "d.device_id || ' ' || r.metric AS metric",
                ["ch4_pct_lel", "h2s_ppm"],
                f"{monitors} AND {top_devices(DRAINAGE, 'ch4_pct_lel')}",
                aggregate="max",
            ),
            description=f"Highest CH4 (%LEL) and H2S (ppm) per interval (with all monitors"
            f" selected: the {TOP} with the most methane at the end of the range).",
        )
        .height(9)
        .span(12)
    )
    events = (
        _table(
            "Cover, gas and water events",
            f"""
        SELECT e.ts, e.device_id, d.district, e.type, e.code, e.detail::text AS detail
        FROM events e
        JOIN devices d ON d.device_id = e.device_id
        WHERE $__timeFilter(e.ts) AND {monitors}
          AND e.type IN ('cover_opened', 'cover_tilted', 'gas_alarm', 'water_level_high')
        ORDER BY e.ts DESC
        LIMIT 500
        """,
        )
        .height(9)
        .span(12)
    )
    board = new_dashboard(
        DOMAIN_DASHBOARDS["drainage"],
        "Drainage",
        "Sewer and storm-drain fill ratios, surcharges, manhole covers and gas.",
        profiles=DRAINAGE,
        domain="drainage",
        tags=["drainage"],
    )
    for panel in (
        fill,
        surcharged,
        monitors_table,
        gas,
        events,
        _open_alerts_table("Open drainage alerts", ["drainage"]).height(8).span(24),
    ):
        board = board.with_panel(panel)
    return finish(board)


# -- Air quality ------------------------------------------------------------------------------

_POLLUTANTS = (
    ("pm2_5", "PM2.5"),
    ("pm10", "PM10"),
    ("so2", "SO2"),
    ("no2", "NO2"),
    ("co", "CO"),
    ("o3", "O3"),
)


def air_quality() -> dict[str, Any]:
    """Hourly AQI per station in the official colours, primary pollutants, IAQI per
    pollutant (HJ 633, computed in SQL from the 1-hour rollup: migration 0007)."""
    stations = f"{_in('d.profile', AIR)} AND {device_filter()}"
    # With all stations selected, the time series follow the 20 with the most PM2.5 at
    # the end of the range: scoring a month of hundreds of stations takes seconds.
    top_aqi = f"""air_quality_hourly($__timeFrom()::timestamptz, $__timeTo()::timestamptz,
                ARRAY['air_quality'], (SELECT array_agg(d.device_id) FROM devices d
                                       WHERE {stations} AND {top_devices(AIR, "pm2_5")}))"""
    aqi = (
        _ts_panel(
            "AQI per station",
            f"""
            SELECT q.bucket AS time, q.device_id AS metric, q.aqi AS value
            FROM {top_aqi} q
            JOIN devices d ON d.device_id = q.device_id
            WHERE {stations}
            ORDER BY 1
            """,
            description="Hourly AQI (HJ 633 rules of the hour: 2026 from 2026-03-01); with all"
            f" stations selected, the {TOP} with the most PM2.5 at the end of the range.",
        )
        .thresholds(aqi_thresholds())
        .color_scheme(gd.FieldColor().mode(gm.FieldColorModeId.CONTINUOUS_GR_YL_RD))
        .thresholds_style(gc.GraphThresholdsStyleConfig().mode(cm.GraphThresholdsStyleMode.AREA))
        .height(10)
        .span(16)
    )
    worst = (
        _stat(
            "Highest AQI now",
            f"""
            SELECT max(q.aqi) AS aqi
            FROM air_quality_hourly($__timeTo()::timestamptz - INTERVAL '1 hour',
                                    $__timeTo()::timestamptz) q
            JOIN devices d ON d.device_id = q.device_id
            WHERE {stations}
            """,
        )
        .thresholds(aqi_thresholds())
        .mappings(aqi_mappings())
        .color_scheme(thresholds_colour())
        .no_value("no hourly means yet")
        .height(10)
        .span(8)
    )
    iaqi_columns = ", ".join(f"q.iaqi_{p} AS {p}" for p, _ in _POLLUTANTS)
    latest = _table(
        "Stations now",
        f"""
        SELECT DISTINCT ON (q.device_id)
               q.device_id, d.name, d.district, q.bucket + INTERVAL '1 hour' AS hour_end,
               q.aqi, q.primary_pollutant, {iaqi_columns}
        FROM air_quality_hourly($__timeTo()::timestamptz - INTERVAL '3 hours',
                                $__timeTo()::timestamptz) q
        JOIN devices d ON d.device_id = q.device_id
        WHERE {stations}
        ORDER BY q.device_id, q.bucket DESC
        """,
        "Each station's latest hourly AQI, its primary pollutant (AQI > 50 only) and the"
        " IAQI of each pollutant.",
    )
    for name in ("aqi", *(p for p, _ in _POLLUTANTS)):
        latest = latest.override_by_name(
            name,
            [
                gm.DynamicConfigValue(id_val="thresholds", value=aqi_thresholds().build()),
                gm.DynamicConfigValue(id_val="color", value={"mode": "thresholds"}),
                gm.DynamicConfigValue(
                    id_val="custom.cellOptions", value={"type": "color-background"}
                ),
            ],
        )
    latest = latest.height(9).span(24)
    iaqi = (
        _ts_panel(
            "IAQI per pollutant (highest over the AQI panel's stations)",
            f"""
            SELECT q.bucket AS time,
                   {", ".join(f'max(q.iaqi_{p}) AS "{label}"' for p, label in _POLLUTANTS)}
            FROM {top_aqi} q
            JOIN devices d ON d.device_id = q.device_id
            WHERE {stations}
            GROUP BY 1
            ORDER BY 1
            """,
        )
        .thresholds(aqi_thresholds())
        .thresholds_style(gc.GraphThresholdsStyleConfig().mode(cm.GraphThresholdsStyleMode.DASHED))
        .height(9)
        .span(16)
    )
    primary = (
        barchart.Panel()
        .title("Hours by primary pollutant (the AQI panel's stations)")
        .datasource(DATASOURCE)
        .with_target(
            sql(
                f"""
                SELECT coalesce(q.primary_pollutant, 'none (AQI ≤ 50)') AS primary_pollutant,
                       count(*) AS station_hours
                FROM {top_aqi} q
                JOIN devices d ON d.device_id = q.device_id
                WHERE {stations}
                GROUP BY 1
                ORDER BY 2 DESC
                """
            ).table()
        )
        .x_field("primary_pollutant")
        .orientation(cm.VizOrientation.HORIZONTAL)
        .color_scheme(fixed_colour(AQI_COLOUR_PRIMARY))
        .height(9)
        .span(8)
    )
    board = new_dashboard(
        DOMAIN_DASHBOARDS["air"],
        "Air quality",
        "China AQI (HJ 633) per station, primary pollutants and IAQI per pollutant.",
        profiles=AIR,
        time_from="now-3d",
        refresh="5m",
        domain="air",
        tags=["air"],
    )
    for panel in (
        aqi,
        worst,
        latest,
        iaqi,
        primary,
        _open_alerts_table("Open air alerts", ["air"]).height(8).span(24),
    ):
        board = board.with_panel(panel)
    return finish(board)


AQI_COLOUR_PRIMARY = "#FF7E00"


# -- Elevators --------------------------------------------------------------------------------

_TRAPPED = "h.rule LIKE '%trapped%'"
_HANDLED = "alert_handling_times h JOIN alerts a ON a.id = h.alert_id"


def elevators() -> dict[str, Any]:
    """Faults and events by code, trapped-passenger incidents and how fast they were
    handled, and the elevators out of service."""
    lifts = f"{_in('d.profile', ELEVATOR)} AND {device_filter()}"
    by_code = (
        _table(
            "Faults and events by code",
            f"""
        SELECT e.type, e.code, count(*) AS events, count(DISTINCT e.device_id) AS elevators,
               max(e.ts) AS last_at
        FROM events e
        JOIN devices d ON d.device_id = e.device_id
        WHERE $__timeFilter(e.ts) AND {lifts}
        GROUP BY e.type, e.code
        ORDER BY events DESC, e.type
        """,
        )
        .height(9)
        .span(12)
    )
    over_time = (
        _bars(
            _ts_panel(
                "Events per interval",
                f"""
            SELECT $__timeGroupAlias(e.ts, $__interval), e.type AS metric, count(*) AS value
            FROM events e
            JOIN devices d ON d.device_id = e.device_id
            WHERE $__timeFilter(e.ts) AND {lifts}
            GROUP BY 1, 2
            ORDER BY 1
            """,
            )
        )
        .height(9)
        .span(12)
    )
    trapped_where = (
        f"$__timeFilter(h.started_at) AND {_TRAPPED} AND {alert_filter()}"
        " AND (a.device_id IS NULL OR EXISTS (SELECT 1 FROM devices d"
        f" WHERE d.device_id = a.device_id AND {device_filter()}))"
    )
    incidents = (
        _stat(
            "Trapped-passenger incidents",
            f"SELECT count(*) AS incidents FROM {_HANDLED} WHERE {trapped_where}",
        )
        .color_scheme(fixed_colour(LEVEL_COLOURS[Level.RED]))
        .height(5)
        .span(8)
    )
    to_ack = (
        _stat(
            "Median time to acknowledge (trapped)",
            f"""
            SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY h.ack_seconds) AS ack
            FROM {_HANDLED} WHERE {trapped_where}
            """,
            unit="s",
        )
        .color_scheme(fixed_colour(LEVEL_COLOURS[Level.BLUE]))
        .height(5)
        .span(8)
    )
    to_close = (
        _stat(
            "Median time to close (trapped)",
            f"""
            SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY h.close_seconds) AS close
            FROM {_HANDLED} WHERE {trapped_where}
            """,
            unit="s",
        )
        .color_scheme(fixed_colour(LEVEL_COLOURS[Level.BLUE]))
        .height(5)
        .span(8)
    )
    trapped = _table(
        "Trapped-passenger incidents",
        f"""
        SELECT h.started_at, a.device_id, h.district, h.level, h.condition, h.handling, h.team,
               h.ack_seconds, h.close_seconds, h.acknowledged_at, h.closed_at
        FROM {_HANDLED}
        WHERE {trapped_where}
        ORDER BY h.started_at DESC
        LIMIT 500
        """,
        "Response: seconds from the alert to its acknowledgement and to its closing.",
    )
    trapped = (
        _unit_columns(
            _level_column(trapped, "level"), "dtdurations", "ack_seconds", "close_seconds"
        )
        .height(8)
        .span(24)
    )
    out_of_service = (
        _table(
            "Out of service or in fault now",
            f"""
        SELECT d.device_id, d.name, d.district, d.attributes ->> 'building' AS building,
               CASE sm.value::int WHEN 0 THEN 'normal' WHEN 1 THEN 'inspection'
                    WHEN 2 THEN 'fire return' WHEN 3 THEN 'firefighter'
                    WHEN 4 THEN 'emergency power' WHEN 5 THEN 'earthquake'
                    WHEN 6 THEN 'out of service' END AS service_mode,
               CASE st.value::int WHEN 0 THEN 'idle' WHEN 1 THEN 'running'
                    WHEN 2 THEN 'stopped' WHEN 3 THEN 'fault' END AS state,
               fc.value AS fault_code,
               greatest(sm.ts, st.ts, fc.ts) AS reported_at
        FROM devices d
        {latest_as_of("service_mode", "sm")}
        {latest_as_of("state", "st")}
        {latest_as_of("fault_code", "fc")}
        WHERE {lifts}
          AND (sm.value = 6 OR st.value = 3 OR fc.value > 0)
        ORDER BY d.district, d.device_id
        """,
            "Elevators whose latest service mode is out of service, whose car reports a fault,"
            " or with an active fault code, at the end of the range.",
        )
        .height(8)
        .span(24)
    )
    board = new_dashboard(
        DOMAIN_DASHBOARDS["elevators"],
        "Elevators",
        "Elevator faults and events, trapped passengers and response times, elevators out"
        " of service.",
        profiles=ELEVATOR,
        domain="elevators",
        tags=["elevators"],
    )
    for panel in (
        by_code,
        over_time,
        incidents,
        to_ack,
        to_close,
        trapped,
        out_of_service,
        _open_alerts_table("Open elevator alerts", ["elevators"]).height(8).span(24),
    ):
        board = board.with_panel(panel)
    return finish(board)


# -- Noise ------------------------------------------------------------------------------------


def noise() -> dict[str, Any]:
    """LAeq against each zone's GB 3096 limits, day and night."""
    monitors = f"{_in('d.profile', NOISE)} AND {device_filter()}"
    laeq = _ts_panel(
        "LAeq against zone limits",
        rollup_series(
            "d.device_id AS metric",
            ["laeq_db"],
            f"{monitors} AND "
            + top_devices(
                NOISE, "laeq_db", "l.value - cityvitals_noise_limit(d2.attributes, l.ts, '$tz')"
            ),
        ),
        f"""
        SELECT g.t AS time, 'zone ' || z.zone || ' limit' AS metric,
               cityvitals_noise_limit(jsonb_build_object('zone', z.zone), g.t, '$tz') AS value
        FROM (SELECT DISTINCT d.attributes ->> 'zone' AS zone FROM devices d
              WHERE {monitors} AND d.attributes ->> 'zone' IS NOT NULL) z
        CROSS JOIN generate_series(
            date_trunc('minute', $__timeFrom()::timestamptz), $__timeTo()::timestamptz,
            make_interval(secs => greatest($__interval_ms, 60000) / 1000.0)) AS g (t)
        ORDER BY 1
        """,
        unit="dB",
        description=f"Mean LAeq per interval (with all monitors selected: the {TOP} furthest"
        " above their limit at the end of the range); dashed: the GB 3096-2008 day/night limit"
        " of each"
        " zone present.",
    )
    laeq = (
        laeq.override_by_regexp(
            "zone .* limit",
            [
                *colour_override("limit", LEVEL_COLOURS[Level.RED]),
                gm.DynamicConfigValue(
                    id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]}
                ),
                gm.DynamicConfigValue(id_val="custom.lineInterpolation", value="stepAfter"),
            ],
        )
        .height(10)
        .span(24)
    )
    hourly = """
        LEFT JOIN LATERAL (
            SELECT count(*) FILTER (WHERE p.period = 'day' AND p.v > p.lim) AS day_hours_over,
                   count(*) FILTER (WHERE p.period = 'night' AND p.v > p.lim) AS night_hours_over,
                   count(*) FILTER (WHERE p.period = 'day') AS day_hours,
                   count(*) FILTER (WHERE p.period = 'night') AS night_hours
            FROM (
                SELECT h.sum_value / h.samples AS v,
                       cityvitals_noise_period(d.attributes, h.t, '$tz') AS period,
                       cityvitals_noise_limit(d.attributes, h.t, '$tz') AS lim
                FROM readings_series(d.device_id, ARRAY['laeq_db'], $__timeFrom()::timestamptz,
                                     $__timeTo()::timestamptz, 3600000) h
            ) p
        ) x ON true"""
    table_sql = f"""
        SELECT d.device_id, d.name, d.district, d.attributes ->> 'zone' AS zone,
               round(q.laeq::numeric, 1) AS laeq_15min,
               cityvitals_noise_limit(d.attributes, $__timeTo()::timestamptz, '$tz') AS limit_now,
               cityvitals_noise_period(d.attributes, $__timeTo()::timestamptz, '$tz') AS period,
               q.laeq > cityvitals_noise_limit(d.attributes, $__timeTo()::timestamptz, '$tz')
                   AS over_limit,
               x.day_hours_over, x.day_hours, x.night_hours_over, x.night_hours
        FROM devices d
        LEFT JOIN LATERAL (
            SELECT avg(r.value) AS laeq FROM readings r
            WHERE r.device_id = d.device_id AND r.metric = 'laeq_db'
              AND r.ts > $__timeTo()::timestamptz - INTERVAL '15 minutes'
              AND r.ts <= $__timeTo()::timestamptz
        ) q ON true
        {hourly}
        WHERE {monitors}
        ORDER BY over_limit DESC NULLS LAST, q.laeq DESC NULLS LAST, d.device_id
        """
    monitors_table = (
        _unit_columns(
            _table(
                "Monitors: now and hours over the limit",
                table_sql,
                "LAeq over the last 15 minutes of the range against the limit of the period then;"
                " hourly means above the limit in the range, day and night.",
            ),
            "dB",
            "laeq_15min",
            "limit_now",
        )
        .height(10)
        .span(24)
    )
    board = new_dashboard(
        DOMAIN_DASHBOARDS["noise"],
        "Noise",
        "Environmental noise against the GB 3096-2008 zone limits, day and night.",
        profiles=NOISE,
        domain="noise",
        tags=["noise"],
    )
    board = board.with_variable(_timezone_variable())
    for panel in (
        laeq,
        monitors_table,
        _open_alerts_table("Open noise alerts", ["noise"]).height(8).span(24),
    ):
        board = board.with_panel(panel)
    return finish(board)


def _timezone_variable() -> gd.ConstantVariable:
    """The city's time zone for day and night periods (hidden)."""
    return gd.ConstantVariable("tz").value(TIMEZONE)


# -- Device health ----------------------------------------------------------------------------


def device_health() -> dict[str, Any]:
    """Online share per district and profile, silent devices, batteries, dead letters."""
    devices = device_filter()
    by_district = (
        bargauge.Panel()
        .title("Online share per district (engine)")
        .description(
            "Devices heard from within 3 reporting intervals of their profile, as the rule"
            " engine counts them for the device_health vital sign."
        )
        .datasource(DATASOURCE)
        .with_target(
            sql(
                f"""
                SELECT v.scope AS district, (v.indicators ->> 'online_share')::double precision
                       AS online_share
                FROM vital_signs_latest v
                WHERE v.domain = 'device_health' AND v.scope <> 'city'
                  AND {var_in("district", "v.scope")}
                ORDER BY length(v.scope), v.scope
                """
            ).table()
        )
        .reduce_options(gc.ReduceDataOptions().values(True).calcs([]))
        .unit("percentunit")
        .min(0)
        .max(1)
        .thresholds(_online_thresholds())
        .color_scheme(thresholds_colour())
        .display_mode(cm.BarGaugeDisplayMode.LCD)
        .height(8)
        .span(12)
    )
    recent = "s.last_seen > $__timeTo()::timestamptz - '$silent_after'::interval"
    by_profile = _table(
        "Online per profile",
        f"""
        SELECT d.profile, count(*) AS devices,
               count(*) FILTER (WHERE {recent}) AS online,
               round(count(*) FILTER (WHERE {recent})::numeric / count(*), 3) AS online_share
        FROM devices d
        LEFT JOIN device_status s ON s.device_id = d.device_id
        WHERE {devices}
        GROUP BY d.profile
        ORDER BY online_share, d.profile
        """,
        "Online: heard from within `silent after` before the end of the range.",
    )
    by_profile = (
        by_profile.override_by_name(
            "online_share",
            [
                gm.DynamicConfigValue(id_val="unit", value="percentunit"),
                gm.DynamicConfigValue(id_val="thresholds", value=_online_thresholds().build()),
                gm.DynamicConfigValue(id_val="color", value={"mode": "thresholds"}),
                gm.DynamicConfigValue(id_val="custom.cellOptions", value={"type": "color-text"}),
            ],
        )
        .height(8)
        .span(12)
    )
    silent = _table(
        "Silent devices",
        f"""
        SELECT d.device_id, d.profile, d.district, s.last_seen, s.state, s.online,
               extract(epoch FROM $__timeTo()::timestamptz - s.last_seen) AS silent_for
        FROM devices d
        LEFT JOIN device_status s ON s.device_id = d.device_id
        WHERE {devices} AND (s.last_seen IS NULL OR NOT ({recent}))
        ORDER BY s.last_seen NULLS FIRST, d.device_id
        LIMIT 500
        """,
        "Not heard from within `silent after` before the end of the range (never heard"
        " from: first).",
    )
    silent = _unit_columns(silent, "dtdurations", "silent_for").height(9).span(12)
    battery = _table(
        "Lowest batteries",
        f"""
        SELECT d.device_id, d.profile, d.district, b.value AS battery_v, b.ts AS reported_at
        FROM devices d
        {latest_as_of("battery_v", "b")}
        WHERE {devices} AND b.value IS NOT NULL
        ORDER BY b.value, d.device_id
        LIMIT 200
        """,
        "Latest battery voltage; orange below 3.7 V, red below 3.5 V (common manhole-unit alarms).",
    )
    battery = (
        battery.override_by_name(
            "battery_v",
            [
                gm.DynamicConfigValue(id_val="unit", value="volt"),
                gm.DynamicConfigValue(
                    id_val="thresholds",
                    value=gd.ThresholdsConfig()
                    .mode(gm.ThresholdsMode.ABSOLUTE)
                    .steps(
                        [
                            gm.Threshold(value=None, color=LEVEL_COLOURS[Level.RED]),
                            gm.Threshold(value=3.5, color=LEVEL_COLOURS[Level.ORANGE]),
                            gm.Threshold(value=3.7, color=LEVEL_COLOURS[Level.NORMAL]),
                        ]
                    )
                    .build(),
                ),
                gm.DynamicConfigValue(id_val="color", value={"mode": "thresholds"}),
                gm.DynamicConfigValue(id_val="custom.cellOptions", value={"type": "color-text"}),
            ],
        )
        .height(9)
        .span(12)
    )
    dead = (
        _bars(
            _ts_panel(
                "Dead letters by reason",
                f"""
            SELECT $__timeGroupAlias(l.received_at, $__interval), l.reason AS metric,
                   count(*) AS value
            FROM dead_letters l
            WHERE $__timeFilter(l.received_at) AND {var_in("device", "l.device_id")}
            GROUP BY 1, 2
            ORDER BY 1
            """,
                description="Payloads the ingest could not store, per interval and reason.",
            )
        )
        .height(8)
        .span(12)
    )
    dead_table = (
        _table(
            "Dead letters in the range",
            f"""
        SELECT l.reason, count(*) AS dead_letters, count(DISTINCT l.device_id) AS devices,
               max(l.received_at) AS last_at, (array_agg(l.topic ORDER BY l.received_at DESC))[1]
                   AS last_topic
        FROM dead_letters l
        WHERE $__timeFilter(l.received_at) AND {var_in("device", "l.device_id")}
        GROUP BY l.reason
        ORDER BY dead_letters DESC
        """,
        )
        .height(8)
        .span(12)
    )
    ingest = (
        _table(
            "Ingest processes",
            """
        SELECT i.instance, i.host, i.connected, i.updated_at, i.readings_per_s, i.messages_per_s,
               i.backlog, i.readings, i.duplicates, i.dead_letters, i.last_error
        FROM ingest_stats i
        ORDER BY i.instance
        """,
        )
        .height(6)
        .span(24)
    )
    board = new_dashboard(
        DOMAIN_DASHBOARDS["device_health"],
        "Device health",
        "Which devices report, which are silent, batteries, and what the ingest rejects.",
        domain="device_health",
        tags=["device_health"],
    )
    board = board.with_variable(
        gd.CustomVariable("silent_after")
        .label("Silent after")
        .values("5m,15m,1h,6h,1d")
        .current(gm.VariableOption(selected=True, text="15m", value="15m"))
    )
    for panel in (by_district, by_profile, silent, battery, dead, dead_table, ingest):
        board = board.with_panel(panel)
    return finish(board)


def _online_thresholds() -> gd.ThresholdsConfig:
    return (
        gd.ThresholdsConfig()
        .mode(gm.ThresholdsMode.ABSOLUTE)
        .steps(
            [
                gm.Threshold(value=None, color=LEVEL_COLOURS[Level.RED]),
                gm.Threshold(value=0.8, color=LEVEL_COLOURS[Level.ORANGE]),
                gm.Threshold(value=0.9, color=LEVEL_COLOURS[Level.YELLOW]),
                gm.Threshold(value=0.97, color=LEVEL_COLOURS[Level.NORMAL]),
            ]
        )
    )


# -- Alerts and handling ----------------------------------------------------------------------


def alerts_and_handling() -> dict[str, Any]:
    """Open alerts, the timeline of transitions, and time to acknowledge and to close
    by team (view alert_handling_times)."""
    counts = _stat(
        "Open alerts by handling state",
        f"""
        SELECT {_BY_HANDLING}
        FROM alerts a
        WHERE a.handling <> 'closed' AND {alert_filter()}
        """,
    ).color_scheme(fixed_colour(LEVEL_COLOURS[Level.BLUE]))
    counts = counts.text_mode(cm.BigValueTextMode.VALUE_AND_NAME).height(5).span(24)
    by_team = _table(
        "Time to acknowledge and to close, by team",
        f"""
        SELECT coalesce(h.team, '(no team)') AS team, count(*) AS alerts,
               count(h.acknowledged_at) AS acknowledged, count(h.closed_at) AS closed,
               percentile_cont(0.5) WITHIN GROUP (ORDER BY h.ack_seconds) AS ack_median,
               percentile_cont(0.9) WITHIN GROUP (ORDER BY h.ack_seconds) AS ack_p90,
               percentile_cont(0.5) WITHIN GROUP (ORDER BY h.close_seconds) AS close_median,
               percentile_cont(0.9) WITHIN GROUP (ORDER BY h.close_seconds) AS close_p90
        FROM {_HANDLED}
        WHERE $__timeFilter(h.started_at) AND {alert_filter()}
        GROUP BY 1
        ORDER BY 1
        """,
        "Alerts started in the range; seconds from the start to the acknowledgement and"
        " to the closing (medians and 90th percentiles over the alerts that got there).",
    )
    by_team = (
        _unit_columns(by_team, "dtdurations", "ack_median", "ack_p90", "close_median", "close_p90")
        .height(8)
        .span(24)
    )
    timeline = _table(
        "Timeline",
        f"""
        SELECT e.at, coalesce(e.level, a.level) AS level, a.rule, a.device_id, a.district,
               e.dimension, e.from_state, e.to_state, e.actor, e.note, a.id AS alert_id
        FROM alert_events e
        JOIN alerts a ON a.id = e.alert_id
        WHERE $__timeFilter(e.at) AND {alert_filter()}
        ORDER BY e.at DESC, e.id DESC
        LIMIT 1000
        """,
        "Every transition of an alert (condition and handling), newest first.",
    )
    timeline = _level_column(timeline, "level").height(10).span(24)
    board = new_dashboard(
        ALERTS_UID,
        "Alerts and handling",
        "Open alerts, every transition, and how fast teams acknowledge and close them.",
        tags=["alerts"],
    )
    for panel in (
        counts,
        _open_alerts_table().height(10).span(24),
        _alerts_raised().height(8).span(24),
        by_team,
        timeline,
    ):
        board = board.with_panel(panel)
    return finish(board)


DASHBOARDS: dict[str, Callable[[], dict[str, Any]]] = {
    "city-vital-signs": city_vital_signs,
    "flood-and-rain": flood_and_rain,
    "drainage": drainage,
    "air-quality": air_quality,
    "elevators": elevators,
    "noise": noise,
    "device-health": device_health,
    "alerts-and-handling": alerts_and_handling,
}
"""File name (without .json) → the function that builds the dashboard."""
