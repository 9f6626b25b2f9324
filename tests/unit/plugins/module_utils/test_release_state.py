"""State transitions of the recorded release state."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from ansible_collections.venta.deploy.plugins.module_utils.release_state import (
    HISTORY_LENGTH,
    ReleaseStateError,
    active_colour,
    dump_state,
    entry_matches,
    exclusive_lock,
    load_state,
    merged_versions,
    next_entry,
    with_entry,
    write_atomic,
)

BACKENDS = {"blue": ["app1:15002"], "green": ["app1:25002"]}
NOW = "2025-01-01T12:00:00Z"
LATER = "2025-01-01T12:05:00Z"


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
TRANSITIONS = [
    pytest.param(
        {"blue": 100, "green": 0}, {"blue": 0, "green": 100}, "green", "blue", id="blue-green"
    ),
    pytest.param({"blue": 100, "green": 0}, {"blue": 90, "green": 10}, "blue", "blue", id="canary"),
    pytest.param(
        {"blue": 90, "green": 10}, {"blue": 0, "green": 100}, "green", "blue", id="promote"
    ),
    pytest.param(
        {"blue": 0, "green": 100}, {"blue": 100, "green": 0}, "blue", "green", id="rollback"
    ),
    pytest.param(
        {"blue": 0, "green": 100}, {"blue": 10, "green": 90}, "green", "green", id="canary-back"
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
