"""The routing tree: matches, continue, regex, level ≥, inheritance, and file errors."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from alerts.model import Level
from alerts.route import RoutingError, load_routing, parse_routing
from alerts.silence import alert_attributes

TEAMS = {
    name: {"channels": [{"type": "mqtt", "topic": f"t/{name}"}]}
    for name in ("duty", "flood", "drain", "drain-futian", "lift", "env", "sup")
}

TREE: dict[str, Any] = {
    "route": {
        "receiver": "duty",
        "group_by": ["domain", "district"],
        "group_wait": "30s",
        "group_interval": "5m",
        "repeat_interval": "4h",
        "routes": [
            {
                "name": "red",
                "level": "red",
                "receiver": "duty",
                "continue": True,
                "group_by": ["district"],
            },
            {"name": "flood", "match_re": {"domain": "hydrology|meteorology"}, "receiver": "flood"},
            {
                "name": "drainage",
                "match": {"domain": "drainage"},
                "receiver": "drain",
                "group_by": ["district"],
                "group_wait": "1m",
                "routes": [
                    {"name": "futian", "match": {"district": "futian"}, "receiver": "drain-futian"},
                    {
                        "name": "big",
                        "level": "orange",
                        "receiver": "sup",
                        "match": {"pump_station": "ps-3"},
                    },
                ],
            },
            {"name": "lift", "match": {"domain": "elevator"}, "receiver": "lift"},
        ],
    },
    "teams": TEAMS,
    "escalation": {
        "red": [
            {"after": "5m", "unless": "acknowledged", "notify": "duty"},
            {"after": "30m", "unless": "handled", "notify": "sup"},
        ]
    },
}


def attrs(
    domain: str, district: str = "luohu", level: Level = Level.BLUE, **labels: str
) -> dict[str, str]:
    return alert_attributes(
        rule="r", domain=domain, device_id="dev-1", district=district, level=level, labels=labels
    )


@pytest.fixture
def routing() -> Any:
    return parse_routing(TREE, "tree.yaml")


def test_first_matching_child_takes_the_alert(routing: Any) -> None:
    assert routing.teams_for(attrs("hydrology")) == ["flood"]
    assert routing.teams_for(attrs("meteorology")) == ["flood"]
    assert routing.teams_for(attrs("elevator")) == ["lift"]


def test_regex_matches_the_whole_value(routing: Any) -> None:
    # "hydrology|meteorology" must not match "hydrology_extra".
    assert routing.teams_for(attrs("hydrology_extra")) == ["duty"]


def test_no_child_matches_so_the_root_takes_it(routing: Any) -> None:
    assert [r.id for r in routing.match(attrs("air"))] == ["root"]


def test_level_is_this_level_or_above_and_continue_lets_siblings_match(routing: Any) -> None:
    assert routing.teams_for(attrs("elevator", level=Level.ORANGE)) == ["lift"]
    assert routing.teams_for(attrs("elevator", level=Level.RED)) == ["duty", "lift"]


def test_nested_routes_and_fallback_to_the_parent(routing: Any) -> None:
    assert routing.teams_for(attrs("drainage", "futian")) == ["drain-futian"]
    assert routing.teams_for(attrs("drainage", "luohu")) == ["drain"]
    # A label and a level together.
    assert routing.teams_for(attrs("drainage", "luohu", Level.YELLOW, pump_station="ps-3")) == [
        "drain"
    ]
    assert routing.teams_for(attrs("drainage", "luohu", Level.ORANGE, pump_station="ps-3")) == [
        "sup"
    ]


def test_children_inherit_grouping_and_timers(routing: Any) -> None:
    by_id = {r.id: r for r in routing.routes()}
    futian = by_id["futian"]
    assert futian.group_by == ("district",)
    assert futian.group_wait == timedelta(minutes=1)
    assert futian.group_interval == timedelta(minutes=5)
    assert futian.repeat_interval == timedelta(hours=4)
    assert by_id["flood"].group_by == ("domain", "district")
    assert by_id["flood"].group_wait == timedelta(seconds=30)
    assert by_id["lift"].receiver == "lift"


def test_escalation_is_parsed_per_level(routing: Any) -> None:
    stages = routing.escalation[Level.RED]
    assert [(s.after, s.unless, s.notify) for s in stages] == [
        (timedelta(minutes=5), "acknowledged", "duty"),
        (timedelta(minutes=30), "handled", "sup"),
    ]


def bad(**changes: Any) -> str:
    tree = yaml.safe_load(yaml.safe_dump(TREE))
    for path, value in changes.items():
        node = tree
        keys = path.split("__")
        for k in keys[:-1]:
            node = node[int(k)] if k.isdigit() else node[k]
        node[keys[-1]] = value
    with pytest.raises(RoutingError) as info:
        parse_routing(tree, "city.yaml")
    return str(info.value)


def test_errors_name_the_file_the_field_and_the_problem() -> None:
    msg = bad(route__routes__1__receiver="nobody")
    assert "city.yaml" in msg and "route.routes[1].receiver" in msg and "nobody" in msg
    msg = bad(route__routes__1__match_re={"domain": "(unclosed"})
    assert "city.yaml" in msg and "match_re" in msg and "regex" in msg
    msg = bad(route__group_wait="soon")
    assert "route.group_wait" in msg and "duration" in msg
    msg = bad(route__routes__0__level="purple")
    assert "level" in msg and "purple" in msg
    msg = bad(teams__duty={"channels": [{"type": "webhook", "url": "https://x"}]})
    assert "teams.duty.channels[0]" in msg and "secret" in msg
    msg = bad(teams__duty={"channels": [{"type": "pager"}]})
    assert "teams.duty.channels[0]" in msg
    msg = bad(escalation={"red": [{"after": "5m", "unless": "acknowledged", "notify": "x"}]})
    assert "escalation.red[0].notify" in msg
    msg = bad(route__routes__0__colour="red")
    assert "colour" in msg
    msg = bad(route__receiver=None)
    assert "root route needs a receiver" in msg


def test_repeated_route_names_are_refused() -> None:
    tree = yaml.safe_load(yaml.safe_dump(TREE))
    tree["route"]["routes"][1]["name"] = "lift"
    with pytest.raises(RoutingError, match="unique"):
        parse_routing(tree, "x.yaml")


def test_the_shipped_routing_file_is_valid_and_covers_every_domain() -> None:
    routing = load_routing()
    expected = {
        "drainage": "drainage",
        "hydrology": "flood-control",
        "meteorology": "flood-control",
        "air": "environment",
        "noise": "environment",
        "elevator": "elevator-maintenance",
        "device_health": "device-maintenance",
    }
    for domain, team in expected.items():
        assert routing.teams_for(attrs(domain, "d01")) == [team], domain
    assert routing.teams_for(attrs("drainage", "d01", Level.RED)) == ["duty-officer", "drainage"]


def test_unreadable_or_invalid_yaml_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(RoutingError, match=r"missing\.yaml"):
        load_routing(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("route: [unclosed")
    with pytest.raises(RoutingError, match=r"broken\.yaml: not valid YAML"):
        load_routing(broken)


def test_the_owner_is_the_first_match_that_does_not_continue(routing: Any) -> None:
    assert routing.owner(attrs("elevator", level=Level.RED)) == "lift"
    assert routing.owner(attrs("air", level=Level.RED)) == "duty"
    assert routing.owner(attrs("drainage", "futian")) == "drain-futian"
