"""State transitions of the recorded release state."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from ansible_collections.venta.deploy.plugins.module_utils.release_state import (
    HISTORY_LENGTH,
    STATE_PATH,
    ReleaseStateError,
    active_colour,
    canary_origin,
    describe_entry,
    dump_state,
    edge_differences,
    entry_matches,
    exclusive_lock,
    load_state,
    merged_versions,
    next_entry,
    parse_edge_states,
    parse_state,
    plan_crash_repair,
    plan_reconcile,
    plan_release,
    plan_rollback,
    slot_names,
    weights_text,
    with_entry,
    write_atomic,
)

BACKENDS = {"blue": ["app1:15002"], "green": ["app1:25002"]}
NOW = "2025-01-01T12:00:00Z"
LATER = "2025-01-01T12:05:00Z"
BLUE = {"blue": 100, "green": 0}
GREEN = {"blue": 0, "green": 100}
V1, V2, V3 = "1.0.0", "1.1.0", "1.2.0"
HOSTS = {"docker_hosts": ["app1", "app2"], "edge": ["edge1", "edge2"]}


def test_missing_or_empty_file_is_an_empty_state(tmp_path: Path) -> None:
    assert load_state(str(tmp_path / "none.fact")) == {"services": {}}
    (tmp_path / "empty.fact").write_text("\n")
    assert load_state(str(tmp_path / "empty.fact")) == {"services": {}}


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"services": []}'])
def test_a_broken_file_is_refused_naming_it(tmp_path: Path, text: str) -> None:
    path = tmp_path / "venta_release.fact"
    path.write_text(text)
    with pytest.raises(ReleaseStateError, match=str(path)):
        load_state(str(path))


@pytest.mark.parametrize(
    ("weights", "tie_break", "expected"),
    [
        ({"blue": 100, "green": 0}, None, "blue"),
        ({"blue": 0, "green": 100}, "blue", "green"),
        ({"blue": 90, "green": 10}, "green", "blue"),
        ({"blue": 10, "green": 90}, "blue", "green"),
        ({"blue": 50, "green": 50}, "green", "green"),
        ({"blue": 50, "green": 50}, None, "blue"),
    ],
)
def test_active_colour(weights: dict, tie_break: str | None, expected: str) -> None:
    assert active_colour(weights, tie_break) == expected


# A release and its rollback, step by step: (before, after, expected active, expected previous).
# `previous` changes only when the active colour does: a canary step that leaves the active
# colour as it was keeps what a rollback would go to (nothing recorded yet here).
TRANSITIONS = [
    pytest.param(
        {"blue": 100, "green": 0}, {"blue": 0, "green": 100}, "green", "blue", id="blue-green"
    ),
    pytest.param({"blue": 100, "green": 0}, {"blue": 90, "green": 10}, "blue", None, id="canary"),
    pytest.param(
        {"blue": 90, "green": 10}, {"blue": 0, "green": 100}, "green", "blue", id="promote"
    ),
    pytest.param(
        {"blue": 0, "green": 100}, {"blue": 100, "green": 0}, "blue", "green", id="rollback"
    ),
    pytest.param(
        {"blue": 0, "green": 100}, {"blue": 10, "green": 90}, "green", None, id="canary-back"
    ),
]


@pytest.mark.parametrize(("before", "after", "active", "previous"), TRANSITIONS)
def test_transition(before: dict, after: dict, active: str, previous: str) -> None:
    current = next_entry(None, None, before, BACKENDS, {}, NOW)
    entry = next_entry(current, before, after, BACKENDS, {"green": "1.1.0"}, LATER)
    assert entry["weights"] == after
    assert entry["active"] == active
    assert entry["previous"] == previous
    assert entry["switched_at"] == LATER
    assert entry["history"][-1] == {"from": before, "to": after, "at": LATER}
    assert entry["versions"] == {"green": "1.1.0"}
    assert entry["backends"] == BACKENDS


def test_first_switch_without_anything_known_before() -> None:
    entry = next_entry(None, None, {"blue": 100, "green": 0}, BACKENDS, {}, NOW)
    assert entry["active"] == "blue"
    assert entry["previous"] is None
    assert entry["history"] == [{"from": None, "to": {"blue": 100, "green": 0}, "at": NOW}]


def test_first_switch_learns_the_previous_colour_from_the_file_weights() -> None:
    entry = next_entry(
        None, {"blue": 100, "green": 0}, {"blue": 0, "green": 100}, BACKENDS, {}, NOW
    )
    assert entry["previous"] == "blue"


def test_same_weights_keep_time_previous_and_history() -> None:
    first = next_entry(
        None, {"blue": 100, "green": 0}, {"blue": 0, "green": 100}, BACKENDS, {}, NOW
    )
    again = next_entry(
        first, first["weights"], first["weights"], BACKENDS, {"green": "1.2.0"}, LATER
    )
    assert again["switched_at"] == NOW
    assert again["previous"] == "blue"
    assert again["history"] == first["history"]
    assert again["versions"] == {"green": "1.2.0"}


def test_history_keeps_the_last_ten() -> None:
    entry = None
    weights = {"blue": 100, "green": 0}
    for step in range(HISTORY_LENGTH + 5):
        new = {"blue": 0, "green": 100} if step % 2 == 0 else {"blue": 100, "green": 0}
        entry = next_entry(entry, weights, new, BACKENDS, {}, f"t{step}")
        weights = new
    assert entry is not None
    assert len(entry["history"]) == HISTORY_LENGTH
    assert entry["history"][-1]["at"] == f"t{HISTORY_LENGTH + 4}"


def test_versions_merge_keeps_the_other_colour() -> None:
    current = {"versions": {"blue": "1.0.0", "green": "1.0.0"}}
    assert merged_versions(current, {"green": "1.1.0", "blue": None}) == {
        "blue": "1.0.0",
        "green": "1.1.0",
    }
    assert merged_versions(None, {}) == {}


def test_entry_matches_only_the_same_weights_backends_versions() -> None:
    entry = next_entry(None, None, {"blue": 0, "green": 100}, BACKENDS, {"green": "1"}, NOW)
    assert entry_matches(entry, {"blue": 0, "green": 100}, BACKENDS, {"green": "1"})
    assert not entry_matches(entry, {"blue": 10, "green": 90}, BACKENDS, {"green": "1"})
    assert not entry_matches(
        entry, {"blue": 0, "green": 100}, {"blue": [], "green": []}, {"green": "1"}
    )
    assert not entry_matches(entry, {"blue": 0, "green": 100}, BACKENDS, {"green": "2"})
    assert not entry_matches(None, {"blue": 0, "green": 100}, BACKENDS, {})


def test_with_entry_leaves_other_services_untouched() -> None:
    state = {"services": {"webhooks": {"weights": {"blue": 100, "green": 0}, "x": [1]}}, "k": 1}
    new = with_entry(state, "api-gateway", {"weights": {"blue": 0, "green": 100}})
    assert new["services"]["webhooks"] == state["services"]["webhooks"]
    assert new["k"] == 1
    assert "api-gateway" not in state["services"]


def test_write_atomic_replaces_the_file_whole(tmp_path: Path) -> None:
    path = tmp_path / "facts.d" / "venta_release.fact"
    state = with_entry({"services": {}}, "api-gateway", {"weights": {"blue": 1, "green": 99}})
    write_atomic(str(path), dump_state(state))
    assert json.loads(path.read_text()) == state
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in path.parent.iterdir()] == ["venta_release.fact"]


def test_the_lock_serialises_switches(tmp_path: Path) -> None:
    lock = str(tmp_path / "state.fact.lock")
    with exclusive_lock(lock, timeout=1.0):
        errors: list[Exception] = []

        def other() -> None:
            try:
                with exclusive_lock(lock, timeout=0.2):
                    pass
            except ReleaseStateError as exc:
                errors.append(exc)

        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
    assert errors
    assert "another switch holds" in str(errors[0])
    with exclusive_lock(lock, timeout=0.2):
        pass


def test_parse_state_of_nothing_recorded_and_its_errors_name_where() -> None:
    assert parse_state(None, "edge1") == {"services": {}}
    assert parse_state("  \n", "edge1") == {"services": {}}
    with pytest.raises(ReleaseStateError, match="the release state x on edge1 is not valid JSON"):
        parse_state("{", "x on edge1")


@pytest.mark.parametrize(
    ("action", "recorded"),
    [
        ({"kind": "release", "run_id": "r-1"}, {"kind": "release", "run_id": "r-1", "at": LATER}),
        ({"kind": "abort"}, {"kind": "abort", "run_id": None, "at": LATER}),
        (None, {"kind": "switch", "run_id": None, "at": LATER}),
    ],
)
def test_last_action_is_recorded_when_the_weights_change(
    action: dict | None, recorded: dict
) -> None:
    first = next_entry(None, None, BLUE, BACKENDS, {}, NOW, {"kind": "release", "run_id": "r-0"})
    entry = next_entry(first, BLUE, GREEN, BACKENDS, {}, LATER, action)
    assert entry["last_action"] == recorded
    same = next_entry(entry, GREEN, GREEN, BACKENDS, {}, "later", {"kind": "release"})
    assert same["last_action"] == recorded


def test_last_action_is_recorded_when_only_the_versions_change() -> None:
    """An abort on an edge whose switch had failed still records the abort (and the versions)."""
    first = next_entry(None, None, BLUE, BACKENDS, {"blue": "1"}, NOW, {"kind": "release"})
    aborted = next_entry(
        first, BLUE, BLUE, BACKENDS, {"blue": "1", "green": "2"}, LATER, {"kind": "abort"}
    )
    assert aborted["last_action"] == {"kind": "abort", "run_id": None, "at": LATER}
    assert aborted["history"] == first["history"]


def test_previous_changes_only_with_the_active_colour() -> None:
    blue = next_entry(None, None, BLUE, BACKENDS, {}, NOW)
    green = next_entry(blue, BLUE, GREEN, BACKENDS, {}, NOW)
    assert green["previous"] == "blue"
    canary = next_entry(green, GREEN, {"blue": 10, "green": 90}, BACKENDS, {}, NOW)
    assert canary["previous"] == "blue"
    back = next_entry(canary, {"blue": 10, "green": 90}, GREEN, BACKENDS, {}, NOW)
    assert back["previous"] == "blue"


def test_a_reconcile_copies_previous_and_last_action() -> None:
    current = next_entry(None, None, BLUE, BACKENDS, {}, NOW, {"kind": "release"})
    copied = {"previous": "green", "last_action": {"kind": "rollback", "run_id": "x", "at": NOW}}
    entry = next_entry(current, BLUE, BLUE, BACKENDS, {}, LATER, {"kind": "reconcile"}, copied)
    assert entry["previous"] == "green"
    assert entry["last_action"] == copied["last_action"]


# ---- planning over every edge ------------------------------------------------------------------


def recorded(
    weights: dict[str, int],
    versions: dict[str, str],
    previous: str | None = None,
    kind: str | None = "release",
    **extra: object,
) -> dict:
    """An entry as a switch records it (active from the weights, previous as given)."""
    entry: dict = {
        "weights": weights,
        "active": active_colour(weights, previous),
        "previous": previous,
        "versions": versions,
        "backends": BACKENDS,
        "switched_at": NOW,
        "history": [],
    }
    if kind is not None:
        entry["last_action"] = {"kind": kind, "run_id": "r-1", "at": NOW}
    entry.update(extra)
    return entry


def texts(*per_edge: dict[str, dict] | str | None) -> dict[str, str | None]:
    """{edge1: text, edge2: text, ...} from each edge's {service: entry} (or a raw text)."""
    return {
        f"edge{i}": entries
        if entries is None or isinstance(entries, str)
        else json.dumps({"services": entries})
        for i, entries in enumerate(per_edge, start=1)
    }


def both(**entries: dict) -> dict[str, str | None]:
    """The same entries on both edges."""
    return texts(entries, entries)


def svc(name: str = "api-gateway", **extra: object) -> dict:
    return {"name": name, "domain": "marketplace", "tag": V1, **extra}


LIVE_GREEN = recorded(GREEN, {"blue": V1, "green": V2}, previous="blue")


@pytest.mark.parametrize(
    ("other", "differs"),
    [
        pytest.param(LIVE_GREEN, False, id="same"),
        pytest.param(
            {**LIVE_GREEN, "switched_at": LATER, "history": [1], "backends": {}},
            False,
            id="times-backends-history-are-not-compared",
        ),
        pytest.param(
            {**LIVE_GREEN, "last_action": {"kind": "release", "run_id": "r-9", "at": LATER}},
            False,
            id="another-run-of-the-same-kind",
        ),
        pytest.param(recorded(BLUE, {"blue": V1, "green": V2}, "blue"), True, id="weights"),
        pytest.param(recorded(GREEN, {"blue": V1, "green": V3}, "blue"), True, id="versions"),
        pytest.param(recorded(GREEN, {"blue": V1, "green": V2}, "green"), True, id="previous"),
        pytest.param(
            recorded(GREEN, {"blue": V1, "green": V2}, "blue", kind="reconcile"),
            False,
            id="another-kind-that-undid-nothing",
        ),
        pytest.param(
            recorded(GREEN, {"blue": V1, "green": V2}, "blue", kind="rollback"),
            True,
            id="undone-on-one-edge-only",
        ),
        pytest.param(None, True, id="missing-on-one-edge"),
    ],
)
def test_edge_differences(other: dict | None, differs: bool) -> None:
    second = {} if other is None else {"api-gateway": other}
    states, errors = parse_edge_states(texts({"api-gateway": LIVE_GREEN}, second))
    assert errors == []
    lines = edge_differences(states, ["api-gateway", "search"])
    assert bool(lines) is differs
    if differs:
        assert lines[0].startswith(
            "api-gateway: edge1 green 100 (1.1.0), blue 0 (1.0.0), after release; edge2 "
        )
    if other is None:
        assert lines == [
            "api-gateway: edge1 green 100 (1.1.0), blue 0 (1.0.0), after release; "
            "edge2 nothing recorded (the inventory's weights)"
        ]


def test_unreadable_state_on_one_edge_names_the_edge() -> None:
    states, errors = parse_edge_states(texts({"api-gateway": LIVE_GREEN}, "{broken", None))
    assert sorted(states) == ["edge1", "edge3"]
    assert states["edge3"] == {"services": {}}
    assert len(errors) == 1
    assert errors[0].startswith(f"the release state {STATE_PATH} on edge2 is not valid JSON")
    for plan in (
        plan_release(texts({}, "{broken"), [svc()], V2),
        plan_rollback(texts({}, "[]"), [svc()], {}, HOSTS),
        plan_reconcile(texts({}, "{broken"), ["api-gateway"], "edge1"),
    ):
        assert plan["ok"] is False
        assert f"{STATE_PATH} on edge2" in plan["errors"][0]


def test_no_edge_to_read_from_is_an_error() -> None:
    assert parse_edge_states({}) == (
        {},
        ["no edge host to read the release state from: the inventory needs an edge group"],
    )


@pytest.mark.parametrize(
    ("weights", "text"),
    [
        (GREEN, "blue 0 / green 100"),
        ({"green": "10", "blue": 90}, "blue 90 / green 10"),
        (None, "no weights recorded"),
        ({}, "no weights recorded"),
    ],
)
def test_weights_text(weights: dict | None, text: str) -> None:
    assert weights_text(weights) == text


@pytest.mark.parametrize(
    ("entry", "text"),
    [
        (LIVE_GREEN, "green 100 (1.1.0), blue 0 (1.0.0), after release"),
        (
            recorded({"blue": 90, "green": 10}, {"blue": V1}, kind=None),
            "blue 90 (1.0.0), green 10 (?)",
        ),
        (None, "nothing recorded (the inventory's weights)"),
    ],
)
def test_describe_entry(entry: dict | None, text: str) -> None:
    assert describe_entry(entry) == text


@pytest.mark.parametrize(
    ("replicas", "names"),
    [
        (1, ["venta-search-green"]),
        (0, ["venta-search-green"]),
        (3, ["venta-search-green", "venta-search-green-1", "venta-search-green-2"]),
    ],
)
def test_slot_names(replicas: int, names: list[str]) -> None:
    assert slot_names("search", "green", replicas) == names


# -- plan_release


def test_a_first_release_goes_into_green_with_blue_at_the_catalog_tag() -> None:
    plan = plan_release(texts({}, None), [svc()], V2)
    assert plan == {
        "ok": True,
        "errors": [],
        "skipped": [],
        "plan": [
            {
                "name": "api-gateway",
                "domain": "marketplace",
                "live": "blue",
                "idle": "green",
                "live_version": V1,
                "versions": {"blue": V1, "green": V2},
                "weights": BLUE,
            }
        ],
    }


@pytest.mark.parametrize(
    ("entry", "version", "live", "idle"),
    [
        pytest.param(LIVE_GREEN, V3, "green", "blue", id="into-the-idle-colour"),
        pytest.param(
            recorded({"blue": 90, "green": 10}, {"blue": V1, "green": V2}, "blue"),
            V2,
            "blue",
            "green",
            id="mid-canary-same-version",
        ),
        pytest.param(
            recorded({"blue": 40, "green": 60}, {"blue": V1, "green": V2}, "blue"),
            V2,
            "blue",
            "green",
            id="canary-past-half-same-version",
        ),
    ],
)
def test_plan_release(entry: dict, version: str, live: str, idle: str) -> None:
    plan = plan_release(both(**{"api-gateway": entry}), [svc()], version)
    assert plan["ok"] is True, plan["errors"]
    (item,) = plan["plan"]
    assert (item["live"], item["idle"]) == (live, idle)
    assert item["versions"] == {live: entry["versions"][live], idle: version}
    assert item["weights"] == entry["weights"]


def test_a_release_the_live_colour_already_runs_with_all_the_traffic_is_skipped() -> None:
    entries = {"api-gateway": LIVE_GREEN, "search": LIVE_GREEN}
    plan = plan_release(both(**entries), [svc(), svc("search"), svc("geolocation")], V2)
    assert plan["skipped"] == ["api-gateway", "search"]
    assert [item["name"] for item in plan["plan"]] == ["geolocation"]


@pytest.mark.parametrize(
    "weights", [{"blue": 90, "green": 10}, {"blue": 40, "green": 60}], ids=["10", "60"]
)
def test_a_release_of_another_version_mid_canary_is_refused(weights: dict) -> None:
    entry = recorded(weights, {"blue": V1, "green": V2}, "blue")
    plan = plan_release(
        both(**{"api-gateway": entry}, search=LIVE_GREEN), [svc(), svc("search")], V3
    )
    assert (plan["ok"], plan["plan"], plan["skipped"]) == (False, [], [])
    (error,) = plan["errors"]
    assert error.startswith(f"api-gateway is in the middle of a canary ({weights_text(weights)}, ")
    assert f"releasing {V3} would redeploy a slot that takes traffic" in error
    assert "playbooks/rollback.yml" in error


def test_a_release_is_refused_when_the_edges_disagree() -> None:
    other = recorded(BLUE, {"blue": V1, "green": V2}, "green")
    plan = plan_release(texts({"api-gateway": LIVE_GREEN}, {"api-gateway": other}), [svc()], V3)
    assert plan["ok"] is False
    (error,) = plan["errors"]
    assert error.startswith("the edges do not agree on what they serve, so nothing was planned")
    assert "api-gateway: edge1 green 100 (1.1.0)" in error
    assert "edge2 blue 100 (1.0.0)" in error
    assert "playbooks/reconcile.yml" in error


# -- plan_rollback


def _slots(colour: str, version: str, hosts: tuple[str, ...] = ("app1", "app2")) -> dict:
    return {
        host: [f"venta-api-gateway-{colour} {version}", "venta-search-blue 9"] for host in hosts
    }


@pytest.mark.parametrize(
    ("entry", "to", "version"),
    [
        pytest.param(LIVE_GREEN, "blue", V1, id="after-a-release-to-previous"),
        pytest.param(
            recorded({"blue": 90, "green": 10}, {"blue": V1, "green": V2}, "blue"),
            "blue",
            V1,
            id="canary-to-most-weight",
        ),
        pytest.param(
            recorded({"blue": 10, "green": 90}, {"blue": V1, "green": V2}, "blue"),
            "green",
            V2,
            id="canary-past-half-to-most-weight",
        ),
        pytest.param(
            recorded(BLUE, {"blue": V2, "green": V1}, "green", kind="reconcile"),
            "green",
            V1,
            id="after-a-reconcile",
        ),
    ],
)
def test_plan_rollback(entry: dict, to: str, version: str) -> None:
    plan = plan_rollback(both(**{"api-gateway": entry}), [svc()], _slots(to, version), HOSTS)
    assert plan == {
        "ok": True,
        "errors": [],
        "noop": [],
        "plan": [
            {
                "name": "api-gateway",
                "domain": "marketplace",
                "to": to,
                "from": "green" if to == "blue" else "blue",
                "version": version,
                "missing_on": [],
            }
        ],
    }


def test_a_default_rollback_names_the_hosts_whose_target_slot_is_missing() -> None:
    slots = {"app1": ["venta-api-gateway-blue 1.0.0"], "app2": ["venta-api-gateway-blue 0.9.0"]}
    groups = {**HOSTS, "gateway_hosts": ["app1", "app2", "app3"]}
    service = svc(hosts_group="gateway_hosts", replicas_per_host=1)
    plan = plan_rollback(both(**{"api-gateway": LIVE_GREEN}), [service], slots, groups)
    assert plan["plan"][0]["missing_on"] == ["app2", "app3"]
    two = plan_rollback(
        both(**{"api-gateway": LIVE_GREEN}), [svc(replicas_per_host=2)], _slots("blue", V1), HOSTS
    )
    assert two["plan"][0]["missing_on"] == ["app1", "app2"]  # venta-api-gateway-blue-1 missing


@pytest.mark.parametrize("kind", ["rollback", "abort"])
def test_a_second_rollback_is_a_noop_with_its_reason(kind: str) -> None:
    entry = recorded(BLUE, {"blue": V1, "green": V2}, "green", kind=kind)
    plan = plan_rollback(both(**{"api-gateway": entry}), [svc()], _slots("green", V2), HOSTS)
    assert (plan["ok"], plan["plan"]) == (True, [])
    assert plan["noop"] == [
        {
            "name": "api-gateway",
            "reason": f"already rolled back: blue serves 1.0.0 since the {kind} at {NOW} (a second "
            "rollback changes nothing; -e venta_rollback_to=<version> goes to a named version)",
        }
    ]


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        (None, "no switch recorded, nothing to roll back"),
        (
            recorded(BLUE, {"blue": V1}, previous=None, kind=None),
            "blue has all the traffic and no earlier colour is recorded",
        ),
    ],
)
def test_nothing_to_roll_back_is_a_noop(entry: dict | None, reason: str) -> None:
    entries = {} if entry is None else {"api-gateway": entry}
    plan = plan_rollback(texts(entries, entries), [svc()], {}, HOSTS)
    assert plan == {
        "ok": True,
        "errors": [],
        "plan": [],
        "noop": [{"name": "api-gateway", "reason": reason}],
    }


@pytest.mark.parametrize(
    "kind", ["release", "rollback"], ids=["after-a-release", "even-after-a-rollback"]
)
def test_rollback_to_a_version_goes_to_the_colour_that_runs_it(kind: str) -> None:
    entry = recorded(GREEN, {"blue": V1, "green": V2}, "blue", kind=kind)
    plan = plan_rollback(both(**{"api-gateway": entry}), [svc()], _slots("blue", V1), HOSTS, V1)
    assert plan["ok"] is True
    assert [(i["to"], i["version"], i["missing_on"]) for i in plan["plan"]] == [("blue", V1, [])]


def test_rollback_to_a_version_not_warm_everywhere_is_refused_naming_the_hosts() -> None:
    slots = _slots("blue", V1, hosts=("app1",))
    plan = plan_rollback(both(**{"api-gateway": LIVE_GREEN}), [svc()], slots, HOSTS, V1)
    assert (plan["ok"], plan["plan"]) == (False, [])
    assert plan["errors"] == [
        f"venta_rollback_to={V1}: the blue slot of api-gateway does not run {V1} on app2 (not "
        "warm), so it cannot take the traffic at once; release that version instead"
    ]


def test_rollback_to_a_version_no_colour_runs_names_the_known_versions() -> None:
    plan = plan_rollback(both(**{"api-gateway": LIVE_GREEN}), [svc()], {}, HOSTS, "0.9.0")
    assert plan["errors"] == [
        "venta_rollback_to=0.9.0: no slot of api-gateway runs 0.9.0 (blue 1.0.0, green 1.1.0); "
        "give one of those versions"
    ]


def test_rollback_to_the_live_version_is_a_noop() -> None:
    plan = plan_rollback(both(**{"api-gateway": LIVE_GREEN}), [svc()], {}, HOSTS, V2)
    assert plan["noop"] == [
        {"name": "api-gateway", "reason": f"green already serves {V2} with all the traffic"}
    ]


def test_a_rollback_is_refused_when_the_edges_disagree() -> None:
    other = recorded(BLUE, {"blue": V1, "green": V2}, "green", kind="rollback")
    plan = plan_rollback(
        texts({"api-gateway": LIVE_GREEN}, {"api-gateway": other}), [svc()], {}, HOSTS
    )
    assert (plan["ok"], plan["plan"], plan["noop"]) == (False, [], [])
    assert "edge2 blue 100 (1.0.0), green 0 (1.1.0), after rollback" in plan["errors"][0]


# -- plan_reconcile


def test_edges_that_agree_need_no_reconcile() -> None:
    plan = plan_reconcile(both(**{"api-gateway": LIVE_GREEN}), ["api-gateway", "search"], None)
    assert plan == {"ok": True, "errors": [], "items": [], "differences": []}


@pytest.mark.parametrize(("source", "got"), [(None, ""), ("edge9", " (got 'edge9', not an edge)")])
def test_disagreeing_edges_need_a_source_edge(source: str | None, got: str) -> None:
    other = recorded(BLUE, {"blue": V1, "green": V2}, "green")
    plan = plan_reconcile(
        texts({"api-gateway": LIVE_GREEN}, {"api-gateway": other}), ["api-gateway"], source
    )
    assert (plan["ok"], plan["items"]) == (False, [])
    assert len(plan["differences"]) == 1
    (error,) = plan["errors"]
    assert error.startswith("the edges disagree (api-gateway: edge1 green 100")
    assert error.endswith(f"-e venta_reconcile_from=<edge1 | edge2>{got}")


def test_a_reconcile_takes_the_source_edge_s_weights_and_versions() -> None:
    other = recorded(BLUE, {"blue": V1, "green": V2}, "green")
    edges = texts({"api-gateway": LIVE_GREEN, "search": LIVE_GREEN}, {"api-gateway": other})
    plan = plan_reconcile(edges, ["api-gateway", "search", "geolocation"], "edge2")
    assert [line.split(":")[0] for line in plan["differences"]] == ["api-gateway", "search"]
    # edge2 records nothing for search, which edge1 does: it cannot be the source
    assert plan == {
        "ok": False,
        "errors": [
            "venta_reconcile_from=edge2 records nothing for search, which edge1 record(s): a "
            "switch cannot remove a record, so choose an edge that records every service"
        ],
        "items": [],
        "differences": plan["differences"],
    }
    plan = plan_reconcile(edges, ["api-gateway", "geolocation"], "edge2")
    assert plan["items"] == [
        {
            "service": "api-gateway",
            "weights": BLUE,
            "versions": {"blue": V1, "green": V2},
            "recorded": {"previous": "green", "last_action": other["last_action"]},
        }
    ]


# ---- a killed run's half-done switch -------------------------------------------------------------


def killed(run_id: str, **entry: object) -> dict:
    """LIVE_GREEN as the killed run `run_id` switched it (its last_action)."""
    return {
        **LIVE_GREEN,
        **entry,
        "last_action": {"kind": "release", "run_id": run_id, "at": LATER},
    }


def test_crash_repair_puts_back_the_edges_the_killed_run_switched() -> None:
    before = recorded(BLUE, {"blue": V1, "green": V2}, "green", kind="rollback")
    edges = texts(
        {"api-gateway": before, "search": LIVE_GREEN},
        {"api-gateway": killed("k-1"), "search": LIVE_GREEN},
    )
    plan = plan_crash_repair(edges, ["api-gateway", "search"], "k-1")
    assert plan == {
        "ok": True,
        "errors": [],
        "items": [
            {
                "service": "api-gateway",
                "source": "edge1",
                "edges": ["edge2"],
                "weights": BLUE,
                "versions": {"blue": V1, "green": V2},
                "recorded": {"previous": "green", "last_action": before["last_action"]},
            }
        ],
    }


@pytest.mark.parametrize(
    ("edge1", "edge2", "run"),
    [
        pytest.param(LIVE_GREEN, LIVE_GREEN, "k-1", id="edges-agree"),
        pytest.param(killed("k-1"), killed("k-1"), "k-1", id="every-edge-switched"),
        pytest.param(recorded(BLUE, {"blue": V1}, "green"), killed("k-2"), "k-1", id="another-run"),
        pytest.param(
            recorded(BLUE, {"blue": V1}, "green"), killed("k-1"), None, id="no-broken-run"
        ),
    ],
)
def test_crash_repair_leaves_what_the_killed_run_does_not_explain(
    edge1: dict, edge2: dict, run: str | None
) -> None:
    plan = plan_crash_repair(
        texts({"api-gateway": edge1}, {"api-gateway": edge2}), ["api-gateway"], run
    )
    assert plan["ok"] is True
    assert plan["items"] == []


def test_crash_repair_names_an_unreadable_edge() -> None:
    plan = plan_crash_repair(texts({}, "{broken"), ["api-gateway"], "k-1")
    assert plan["ok"] is False
    assert "edge2" in plan["errors"][0]


@pytest.mark.parametrize(
    ("history", "origin"),
    [
        pytest.param([{"from": BLUE, "to": {"blue": 90, "green": 10}}], "blue", id="first-step"),
        pytest.param(
            [
                {"from": GREEN, "to": {"blue": 10, "green": 90}},
                {"from": {"blue": 10, "green": 90}, "to": {"blue": 60, "green": 40}},
            ],
            "green",
            id="past-half",
        ),
        pytest.param([], None, id="no-history"),
    ],
)
def test_canary_origin_is_the_colour_that_had_all_the_traffic(
    history: list, origin: str | None
) -> None:
    assert canary_origin({"history": history}) == origin


def test_a_rollback_past_half_of_a_canary_goes_to_the_old_colour() -> None:
    entry = recorded(
        {"blue": 40, "green": 60},
        {"blue": V1, "green": V2},
        "blue",
        history=[{"from": BLUE, "to": {"blue": 40, "green": 60}, "at": NOW}],
    )
    slots = {"app1": [f"venta-api-gateway-blue {V1}"]}
    plan = plan_rollback(both(**{"api-gateway": entry}), [svc()], slots, {"docker_hosts": ["app1"]})
    assert [(item["to"], item["version"]) for item in plan["plan"]] == [("blue", V1)]
