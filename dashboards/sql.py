"""Queries for Grafana's PostgreSQL datasource, typed: the foundation SDK has none.

`PostgresQuery` is the target a panel, variable or annotation sends to the
`grafana-postgresql-datasource` plugin (raw SQL in code mode); `Sql` is its SDK
builder. `register()` teaches the SDK's JSON decoder the type, so dashboards
round-trip through the SDK's models with their queries intact.

The helpers below write the SQL fragments every dashboard repeats: template
variable filters that treat "All" as no filter, and time series read at the
grain of Grafana's `$__interval` (raw readings or the 1-minute / 1-hour
rollups, see `rollup_series`).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Any, Self

from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import plugins as cogplugins
from grafana_foundation_sdk.cog import runtime as cogruntime
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.models.dashboard import DataSourceRef

DATASOURCE_TYPE = "grafana-postgresql-datasource"
ALL = "__all"
"""What a variable's "All" stands for in SQL (its `allValue` is `'__all'`, quoted)."""


class Format(enum.StrEnum):
    TIME_SERIES = "time_series"
    TABLE = "table"


class PostgresQuery(cogvariants.Dataquery):
    """One raw-SQL query of the PostgreSQL datasource, as Grafana 11 stores it."""

    def __init__(
        self,
        ref_id: str = "A",
        raw_sql: str = "",
        format: Format = Format.TABLE,
        datasource: DataSourceRef | None = None,
        hide: bool | None = None,
    ) -> None:
        self.ref_id = ref_id
        self.raw_sql = raw_sql
        self.format = format
        self.datasource = datasource
        self.hide = hide

    def to_json(self) -> dict[str, object]:
        payload: dict[str, object] = {
            "refId": self.ref_id,
            "rawSql": self.raw_sql,
            "format": str(self.format),
            "rawQuery": True,
            "editorMode": "code",
        }
        if self.datasource is not None:
            payload["datasource"] = self.datasource
        if self.hide is not None:
            payload["hide"] = self.hide
        return payload

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        unknown = set(data) - {"refId", "rawSql", "format", "rawQuery", "editorMode"}
        unknown -= {"datasource", "hide"}
        if unknown:
            raise ValueError(f"PostgresQuery: unexpected fields {sorted(unknown)}")
        if data.get("rawQuery") is not True or data.get("editorMode") != "code":
            raise ValueError("PostgresQuery: only raw SQL in code mode is supported")
        ds = data.get("datasource")
        return cls(
            ref_id=data["refId"],
            raw_sql=data["rawSql"],
            format=Format(data["format"]),
            datasource=DataSourceRef.from_json(ds) if ds is not None else None,
            hide=data.get("hide"),
        )


class Sql(cogbuilder.Builder[PostgresQuery]):
    """Builder of a `PostgresQuery`: `Sql("SELECT …").time_series().ref_id("B")`."""

    def __init__(self, raw_sql: str, datasource: DataSourceRef | None = None) -> None:
        self._internal = PostgresQuery(raw_sql=dedent_sql(raw_sql), datasource=datasource)

    def build(self) -> PostgresQuery:
        return self._internal

    def ref_id(self, ref_id: str) -> Self:
        self._internal.ref_id = ref_id
        return self

    def time_series(self) -> Self:
        self._internal.format = Format.TIME_SERIES
        return self

    def table(self) -> Self:
        self._internal.format = Format.TABLE
        return self

    def datasource(self, datasource: DataSourceRef) -> Self:
        self._internal.datasource = datasource
        return self


def register() -> None:
    """Register the SDK's plugins and this datasource's query type (idempotent)."""
    cogplugins.register_default_plugins()
    cogruntime.register_dataquery_variant(
        cogruntime.DataqueryConfig(
            identifier=DATASOURCE_TYPE, from_json_hook=PostgresQuery.from_json
        )
    )


def dedent_sql(sql: str) -> str:
    """The query without its common indentation and surrounding blank lines."""
    lines = sql.strip("\n").splitlines()
    indents = [len(x) - len(x.lstrip()) for x in lines if x.strip()]
    cut = min(indents, default=0)
    return "\n".join(x[cut:].rstrip() for x in lines).strip()


# -- fragments ------------------------------------------------------------------------------


def var_in(variable: str, column: str) -> str:
    """`column` is one of the values of the template variable, or it is "All".

    Variables here are multi-value with `allValue` `'__all'`: the SQL datasource
    quotes and comma-joins the selected values, so `IN (...)` takes one or many,
    and "All" costs nothing (no list of every device in the query).
    """
    return f"('{ALL}' IN (${variable}) OR {column} IN (${variable}))"


MEASURES = {
    "avg": "sum(r.sum_value) / sum(r.samples)",
    "sum": "sum(r.sum_value)",
    "max": "max(r.max_value)",
    "min": "min(r.min_value)",
    "count": "sum(r.samples)",
}
"""How a panel's point combines the rows of `readings_series` it covers."""


def rollup_series(
    select: str,
    metrics: Sequence[str],
    where: str,
    *,
    aggregate: str = "avg",
    group: str = "2",
) -> str:
    """A time series of `metrics` per point of the panel, from the source that fits
    Grafana's `$__interval`.

    Reads `readings_series(device, metrics, from, to, $__interval_ms)` (migration
    0007) LATERAL per device of `devices d`: with TimescaleDB it takes the 1-hour
    continuous aggregate for intervals of an hour or more, the 1-minute one for a
    minute or more, else the raw readings; on plain PostgreSQL it aggregates the
    raw readings through their primary key (the plain rollup views cannot be
    filtered by device or time without scanning every reading). `select` goes
    beside the time bucket (e.g. `d.device_id AS metric`) and is grouped by
    `group`; `where` filters the devices (`d.`) and the rows (`r.`).
    """
    if aggregate not in MEASURES:
        raise ValueError(f"aggregate {aggregate!r}: use one of {', '.join(MEASURES)}")
    names = ", ".join(f"'{m}'" for m in metrics)
    return f"""SELECT $__timeGroupAlias(r.t, $__interval), {select}, {MEASURES[aggregate]} AS value
FROM devices d
CROSS JOIN LATERAL readings_series(d.device_id, ARRAY[{names}], $__timeFrom()::timestamptz,
                                   $__timeTo()::timestamptz, $__interval_ms) r
WHERE {where}
GROUP BY 1, {group}
ORDER BY 1"""
