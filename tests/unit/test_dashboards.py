"""Every dashboard builds, deterministically, reads back through the foundation SDK's
models, and is what deploy/grafana/dashboards/ holds (tests/integration/
test_dashboards_sql.py runs their SQL)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import Dashboard
from typer.testing import CliRunner

from cityvitals.cli import app
from dashboards.build import DEFAULT_OUT, Built, build_all, check, write
from dashboards.catalog import ALERTS_UID, DASHBOARDS, DOMAIN_DASHBOARDS, WALL_UID
from dashboards.queries import queries
from dashboards.sql import DATASOURCE_TYPE, PostgresQuery, register
from dashboards.style import DATASOURCE_UID, GENERATED, GENERATED_KEY, render
from rules.vitals import DOMAINS

UIDS = {
    "city-vital-signs": "cityvitals-wall",
    "flood-and-rain": "cityvitals-flood",
    "drainage": "cityvitals-drainage",
    "air-quality": "cityvitals-air",
    "elevators": "cityvitals-elevators",
    "noise": "cityvitals-noise",
    "device-health": "cityvitals-device-health",
    "alerts-and-handling": "cityvitals-alerts",
}
"""Grafana links and bookmarks point at these: changing one breaks them."""


@pytest.fixture(scope="module")
def built() -> list[Built]:
    return build_all()


@pytest.fixture(scope="module")
def by_name(built: list[Built]) -> dict[str, dict[str, Any]]:
    return {b.name: b.document for b in built}


def _panels(document: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in document["panels"]:
        out.append(panel)
        out += panel.get("panels") or []
    return out


def test_every_dashboard_builds_with_its_stable_uid(built: list[Built]) -> None:
    assert {b.name: b.uid for b in built} == UIDS
    assert set(DASHBOARDS) == set(UIDS)
    assert set(DOMAIN_DASHBOARDS.values()) | {WALL_UID, ALERTS_UID} == set(UIDS.values())


def test_builds_are_byte_identical(built: list[Built]) -> None:
    again = build_all()
    assert [b.text for b in again] == [b.text for b in built]


def test_panel_ids_are_numbered_in_order(by_name: dict[str, dict[str, Any]]) -> None:
    for name, document in by_name.items():
        ids = [p["id"] for p in _panels(document)]
        assert ids == list(range(1, len(ids) + 1)), name


def test_files_say_they_are_generated_at_the_top(built: list[Built]) -> None:
    for b in built:
        first = b.text.splitlines()[1].strip()
        assert first.startswith(f'"{GENERATED_KEY}": '), b.name
        assert b.document[GENERATED_KEY] == GENERATED
        assert GENERATED in b.document["description"]
        assert b.document["editable"] is False


def test_text_is_sorted_json(built: list[Built]) -> None:
    for b in built:
        assert render(json.loads(b.text)) == b.text


def test_committed_files_are_a_fresh_build(built: list[Built]) -> None:
    assert check(DEFAULT_OUT, built) == []


def test_json_round_trips_through_the_sdk_models(built: list[Built]) -> None:
    """Everything but two things the SDK cannot model reads back unchanged: the
    top-level generated marker, and SQL annotation targets (its AnnotationTarget
    has only the built-in annotations' fields) — those read back as PostgresQuery."""
    register()
    for b in built:
        document = json.loads(b.text)
        model = Dashboard.from_json(document)
        back = json.loads(json.dumps(model, cls=JSONEncoder))
        expected = {k: v for k, v in document.items() if k != GENERATED_KEY}
        sql_targets = []
        for annotation in expected["annotations"]["list"]:
            if annotation.get("datasource", {}).get("type") == DATASOURCE_TYPE:
                sql_targets.append(annotation.pop("target"))
        for annotation in back["annotations"]["list"]:
            if annotation.get("datasource", {}).get("type") == DATASOURCE_TYPE:
                annotation.pop("target")
        assert back == expected, b.name
        for target in sql_targets:
            decoded = PostgresQuery.from_json(target)
            assert json.loads(json.dumps(decoded, cls=JSONEncoder)) == target
        # Panel targets decode to the typed query, not the SDK's UnknownDataquery.
        for panel in model.panels or []:
            for target in getattr(panel, "targets", None) or []:
                assert isinstance(target, PostgresQuery), (b.name, panel.title)


def test_every_query_uses_the_cityvitals_datasource(by_name: dict[str, dict[str, Any]]) -> None:
    for name, document in by_name.items():
        for panel in _panels(document):
            assert panel["datasource"] == {"type": DATASOURCE_TYPE, "uid": DATASOURCE_UID}, (
                name,
                panel["title"],
            )
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == DATASOURCE_UID
                assert target["rawQuery"] is True and target["editorMode"] == "code"
        assert queries(document), name


def test_every_dashboard_has_the_four_variables_and_alert_annotations(
    by_name: dict[str, dict[str, Any]],
) -> None:
    for name, document in by_name.items():
        variables = {v["name"]: v for v in document["templating"]["list"]}
        for var in ("district", "domain", "profile", "device"):
            v = variables[var]
            assert v["type"] == "query" and v["multi"] and v["includeAll"], (name, var)
            assert v["allValue"] == "'__all'"
        names = [a["name"] for a in document["annotations"]["list"]]
        assert "Alert transitions" in names, name


def test_the_wall_screen_links_to_every_domain_dashboard(
    by_name: dict[str, dict[str, Any]],
) -> None:
    wall = by_name["city-vital-signs"]
    text = json.dumps(wall)
    grid = next(p for p in wall["panels"] if p["title"] == "Districts × domains")
    linked = set()
    for override in grid["fieldConfig"]["overrides"]:
        for prop in override["properties"]:
            if prop["id"] == "links":
                (link,) = prop["value"]
                assert "var-district=${__data.fields.district}" in link["url"]
                linked.add(re.search(r"/d/([\w-]+)", link["url"]).group(1))  # type: ignore[union-attr]
    assert linked == set(DOMAIN_DASHBOARDS.values())
    assert set(DOMAIN_DASHBOARDS) == set(DOMAINS)
    assert f"/d/{ALERTS_UID}" in text
    assert any(p["type"] == "geomap" for p in wall["panels"])


def test_level_colours_come_from_the_alert_model(by_name: dict[str, dict[str, Any]]) -> None:
    from alerts.model import Level

    text = json.dumps(by_name["city-vital-signs"])
    for level in Level:
        assert level.colour in text


def test_cli_build_writes_the_files_and_check_finds_differences(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["dashboards", "build", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{n}.json" for n in UIDS)
    assert runner.invoke(app, ["dashboards", "check", "--out", str(tmp_path)]).exit_code == 0
    (tmp_path / "noise.json").write_text("{}\n")
    (tmp_path / "stale.json").write_text("{}\n")
    result = runner.invoke(app, ["dashboards", "check", "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert "noise.json" in result.output and "stale.json" in result.output
    write(tmp_path)
    assert not (tmp_path / "stale.json").exists()
    assert check(tmp_path) == []
