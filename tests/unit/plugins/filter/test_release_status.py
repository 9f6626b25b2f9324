"""Unit tests of the release_status filters (playbooks/status.yml)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.venta.deploy.plugins.filter.release_status import (
    FilterModule,
    release_status,
    release_status_table,
)

SERVICES = [
    {"name": "api-gateway", "domain": "infrastructure"},
    {"name": "real-time", "domain": "communication"},
]
EDGE_SERVICES = [
    {"name": "api-gateway", "weights": {"blue": 100, "green": 0}},
    {"name": "real-time"},
]


def entry(active: str, blue_weight: int, green_weight: int, **versions: str) -> dict[str, Any]:
    return {
        "weights": {"blue": blue_weight, "green": green_weight},
        "active": active,
        "previous": "blue" if active == "green" else "green",
        "versions": versions,
    }


def state(**services: dict[str, Any]) -> str:
    return json.dumps({"services": {name.replace("_", "-"): e for name, e in services.items()}})


def edge(text: str | None, ready: dict[str, int] | None = None) -> dict[str, Any]:
    results = [{"item": {"name": name}, "status": code} for name, code in (ready or {}).items()]
    return {"release_state": text, "ready": results}


def container(service: str, colour: str, version: str, state_: str = "running") -> dict:
    status = "Up 5 minutes (healthy)" if state_ == "running" else "Exited (0) 1 minute ago"
    return {
        "Labels": {
            "org.venta.service": service,
            "org.venta.colour": colour,
            "org.venta.version": version,
        },
        "State": state_,
        "Status": status,
    }


def rows_by_name(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {row["service"]: row for row in rows}


def test_fresh_deploy_without_release_state_uses_the_inventory_weights() -> None:
    containers = {"app1": [container("api-gateway", "blue", "1.0.0")], "app2": []}
    rows = rows_by_name(
        release_status(
            SERVICES,
            {"edge1": edge(None, {"api-gateway": 200, "real-time": 200})},
            containers,
            EDGE_SERVICES,
        )
    )
    api = rows["api-gateway"]
    assert api["live"] | {"hosts": api["live"]["hosts"]} == {
        "colour": "blue",
        "weight": 100,
        "version": "1.0.0",  # from the containers: nothing recorded
        "presence": "warm",
        "running": 1,
        "hosts": ["app1"],
        "health": ["healthy"],
    }
    assert (api["other"]["colour"], api["other"]["weight"], api["other"]["presence"]) == (
        "green",
        0,
        "absent",
    )
    assert api["source"] == "inventory weights, no release state"
    assert api["agree"] and api["unread"] == []
    assert api["ready"] == {"edge1": "200"}
    # A service without weights in the inventory gets the default ones (blue 100).
    assert rows["real-time"]["live"]["colour"] == "blue"
    assert rows["real-time"]["live"]["weight"] == 100


@pytest.mark.parametrize(
    ("recorded", "live", "other"),
    [
        # After a release: green live, blue warm for a rollback.
        (entry("green", 0, 100, blue="1.0.0", green="1.1.0"), ("green", 100, "1.1.0"), ("blue", 0)),
        # A canary step: blue still has the most weight.
        (entry("blue", 90, 10, blue="1.0.0", green="1.1.0"), ("blue", 90, "1.0.0"), ("green", 10)),
        # Past half way the new colour is the active one.
        (entry("green", 40, 60, blue="1.0.0", green="1.1.0"), ("green", 60, "1.1.0"), ("blue", 40)),
        # A tie keeps the recorded active colour.
        (entry("green", 50, 50, blue="1.0.0", green="1.1.0"), ("green", 50, "1.1.0"), ("blue", 50)),
    ],
)
def test_live_colour_weight_and_version_come_from_the_release_state(
    recorded: dict[str, Any], live: tuple, other: tuple
) -> None:
    containers = {
        "app1": [
            container("api-gateway", "blue", "1.0.0"),
            container("api-gateway", "green", "1.1.0"),
        ]
    }
    row = release_status(
        SERVICES[:1], {"edge1": edge(state(api_gateway=recorded))}, containers, EDGE_SERVICES
    )[0]
    assert (row["live"]["colour"], row["live"]["weight"], row["live"]["version"]) == live
    assert (row["other"]["colour"], row["other"]["weight"]) == other
    assert row["other"]["presence"] == "warm"
    assert row["source"] == "release state"


@pytest.mark.parametrize(
    ("containers", "presence"),
    [
        ({"app1": [container("api-gateway", "blue", "1.0.0")]}, "warm"),
        ({"app1": [container("api-gateway", "blue", "1.0.0", "exited")]}, "stopped"),
        ({"app1": []}, "absent"),
        ({"app1": [container("real-time", "blue", "1.0.0")]}, "absent"),
    ],
)
def test_the_other_colour_is_warm_stopped_or_absent(
    containers: dict[str, Any], presence: str
) -> None:
    recorded = state(api_gateway=entry("green", 0, 100, blue="1.0.0", green="1.1.0"))
    row = release_status(SERVICES[:1], {"edge1": edge(recorded)}, containers)[0]
    assert row["other"]["colour"] == "blue"
    assert row["other"]["presence"] == presence
    # The recorded version stays known when the containers are gone.
    assert row["other"]["version"] == "1.0.0"


def test_edges_that_disagree_are_marked_with_what_each_says() -> None:
    edges = {
        "edge1": edge(state(api_gateway=entry("green", 0, 100, blue="1.0.0", green="1.1.0"))),
        "edge2": edge(state(api_gateway=entry("blue", 100, 0, blue="1.0.0", green="1.1.0"))),
    }
    row = release_status(SERVICES[:1], edges, {}, EDGE_SERVICES)[0]
    assert not row["agree"]
    # The row shows the first edge's view.
    assert row["live"]["colour"] == "green"
    assert "green 100 (1.1.0)" in row["edges"]["edge1"]
    assert "blue 100 (1.0.0)" in row["edges"]["edge2"]
    lines = release_status_table([row])
    assert "DISAGREE" in lines[1]
    details = "\n".join(lines)
    assert "Edges DISAGREE on api-gateway:" in details
    assert "  edge1: green 100 (1.1.0), blue 0 (1.0.0)" in details
    assert "  edge2: blue 100 (1.0.0), green 0 (1.1.0)" in details


def test_an_edge_without_release_state_disagrees_with_one_that_has_it() -> None:
    edges = {
        "edge1": edge(state(api_gateway=entry("green", 0, 100, green="1.1.0"))),
        "edge2": edge(None),
    }
    row = release_status(SERVICES[:1], edges, {}, EDGE_SERVICES)[0]
    assert not row["agree"]
    assert row["edges"]["edge2"] == "nothing recorded, the inventory's weights blue 100 / green 0"


def test_edges_that_agree() -> None:
    text = state(api_gateway=entry("green", 0, 100, blue="1.0.0", green="1.1.0"))
    rows = release_status(SERVICES, {"edge1": edge(text), "edge2": edge(text)}, {}, EDGE_SERVICES)
    assert all(row["agree"] for row in rows)
    lines = release_status_table(rows)
    assert len(lines) == 3  # header and two rows, no details
    assert lines[1].endswith("agree (2)")


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (None, "not reached"),
        (edge("{not json"), "is not valid JSON"),
        (edge('["services"]'), 'must be a JSON object {"services": {...}}'),
    ],
)
def test_an_edge_that_cannot_be_read_is_named(data: Any, why: str) -> None:
    text = state(api_gateway=entry("green", 0, 100, blue="1.0.0", green="1.1.0"))
    row = release_status(SERVICES[:1], {"edge1": edge(text), "edge2": data}, {}, EDGE_SERVICES)[0]
    assert row["unread"] == ["edge2"]
    assert why in row["edges"]["edge2"]
    assert row["live"]["colour"] == "green"  # from the edge that was read
    lines = release_status_table([row])
    assert "UNREAD edge2" in lines[1]
    assert lines[-2:] == [
        "Edge(s) whose release state was not read (rows marked UNREAD):",
        f"  edge2: {row['edges']['edge2']}",
    ]


def test_readiness_per_edge_and_no_answer() -> None:
    edges = {
        "edge1": edge(None, {"api-gateway": 200}),
        "edge2": edge(None, {"api-gateway": -1}),
    }
    row = release_status(SERVICES[:1], edges, {}, EDGE_SERVICES)[0]
    assert row["ready"] == {"edge1": "200", "edge2": "no answer"}
    assert "edge1 200, edge2 no answer" in release_status_table([row])[1]


def test_live_colour_without_running_containers_and_unreached_docker_host() -> None:
    containers = {"app1": [container("api-gateway", "green", "1.1.0")], "app2": None}
    row = release_status(SERVICES[:1], {"edge1": edge(None)}, containers, EDGE_SERVICES)[0]
    lines = release_status_table([row])
    assert "NONE RUNNING" in lines[1]
    assert "green 0 1.1.0 warm" in lines[1]
    assert lines[-1] == "Docker host(s) not reached, their containers are not counted: app2"


def test_table_columns_are_aligned() -> None:
    text = state(api_gateway=entry("green", 0, 100, blue="1.0.0", green="1.1.0"))
    containers = {"app1": [container("api-gateway", "green", "1.1.0")]}
    lines = release_status_table(
        release_status(
            SERVICES,
            {"edge1": edge(text, {"api-gateway": 200, "real-time": 503})},
            containers,
            EDGE_SERVICES,
        )
    )
    assert lines[0].startswith("service     | domain         | live: colour weight version")
    assert lines[1].split(" | ")[:4] == [
        "api-gateway",
        "infrastructure",
        "green 100 1.1.0            ",
        "blue 0 1.0.0 absent                    ",
    ]
    assert [line.index("|") for line in lines] == [lines[0].index("|")] * 3


def test_bad_input_is_refused() -> None:
    with pytest.raises(AnsibleFilterError, match="release_status"):
        release_status(SERVICES, ["edge1"])  # type: ignore[arg-type]


def test_filters_are_registered() -> None:
    assert set(FilterModule().filters()) == {"release_status", "release_status_table"}
