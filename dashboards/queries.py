"""The SQL inside a built dashboard document: its panels', annotations' and variables'
queries, and its variables' definitions — what the tests and the benchmark run."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from dashboards.macros import Variable

Kind = Literal["panel", "annotation", "variable"]


@dataclass(frozen=True, slots=True)
class Query:
    dashboard: str
    kind: Kind
    title: str
    """The panel's title, the annotation's or the variable's name."""
    ref_id: str
    sql: str
    format: str

    @property
    def label(self) -> str:
        return f"{self.dashboard} / {self.kind} {self.title!r} {self.ref_id}"


def _panels(panels: list[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels") or [])


def queries(document: Mapping[str, Any]) -> list[Query]:
    """Every SQL query of the dashboard, panels first, in document order."""
    uid = str(document["uid"])
    out = []
    for panel in _panels(document.get("panels") or []):
        for target in panel.get("targets") or []:
            out.append(
                Query(
                    uid,
                    "panel",
                    str(panel.get("title", "")),
                    str(target["refId"]),
                    str(target["rawSql"]),
                    str(target["format"]),
                )
            )
    for annotation in (document.get("annotations") or {}).get("list", []):
        target = annotation.get("target") or {}
        if "rawSql" in target:
            out.append(
                Query(
                    uid,
                    "annotation",
                    str(annotation["name"]),
                    str(target["refId"]),
                    str(target["rawSql"]),
                    str(target["format"]),
                )
            )
    for variable in (document.get("templating") or {}).get("list", []):
        if variable.get("type") == "query":
            out.append(
                Query(uid, "variable", str(variable["name"]), "", str(variable["query"]), "table")
            )
    return out


def variables(document: Mapping[str, Any]) -> dict[str, Variable]:
    """The dashboard's template variables as the interpolation sees them."""
    out = {}
    for v in (document.get("templating") or {}).get("list", []):
        out[str(v["name"])] = Variable(
            str(v["name"]),
            multi=bool(v.get("multi", False)),
            include_all=bool(v.get("includeAll", False)),
            all_value=v.get("allValue") or None,
        )
    return out


def fixed_values(document: Mapping[str, Any]) -> dict[str, str]:
    """Constant variables' values and custom variables' selected values."""
    out = {}
    for v in (document.get("templating") or {}).get("list", []):
        if v.get("type") == "constant":
            out[str(v["name"])] = str(v["query"])
        elif v.get("type") == "custom":
            current = (v.get("current") or {}).get("value")
            out[str(v["name"])] = str(current if current else str(v["query"]).split(",")[0])
    return out
