"""The switch as one transaction over a batch of services.

Plan, health gate, intent, write, ONE nginx -t, ONE reload, verification, ONE record; the undo at
each failing step; the recovery of an interrupted switch; and a crash at every failpoint, after
which the next run converges (the proof of the crash-safety claim, against a fake edge whose
"loaded" traffic only a reload changes).
"""

from __future__ import annotations

import json
import re
import signal
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from ansible_collections.venta.deploy.plugins.module_utils import switch_intent, switch_transaction
from ansible_collections.venta.deploy.plugins.module_utils.release_state import ACTION_KINDS
from ansible_collections.venta.deploy.plugins.module_utils.switch_intent import (
    PHASES,
    IntentError,
    clear_intent,
    file_failpoint,
    read_intent,
    write_intent,
)
from ansible_collections.venta.deploy.plugins.module_utils.switch_request import (
    SwitchError,
    parse_batch,
)
from ansible_collections.venta.deploy.plugins.module_utils.switch_transaction import (
    make_plan,
    verify_budget,
)
from switch_fakes import (
    ALL,
    BLUE,
    CANARY,
    GREEN,
    NOW,
    RELOAD,
    TEST,
    Crash,
    Edge,
    Failpoints,
    backends,
    item,
    params,
    role_text,
    switch,
    verify_url,
)

NO_SPACE = "[Errno 28] No space left on device"


class Disk:
    """switch_transaction's write_atomic, refusing the writes of chosen files (a full disk)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.real = switch_transaction.write_atomic
        self.allowed: dict[str, int] = {}
        monkeypatch.setattr(switch_transaction, "write_atomic", self.write)

    def refuse(self, path: Path, after: int = 0) -> None:
        """Refuse every write of `path` once the next `after` writes of it are done."""
        self.allowed[str(path)] = after

    def heal(self) -> None:
        self.allowed.clear()

    def write(self, path: str, text: str, mode: int = 0o644) -> None:
        left = self.allowed.get(str(path))
        if left is not None:
            if left <= 0:
                raise OSError(28, "No space left on device")
            self.allowed[str(path)] = left - 1
        self.real(path, text, mode)


@pytest.fixture
def edge(tmp_path: Path) -> Edge:
    edge = Edge(tmp_path)
    edge.deploy(BLUE)  # what the nginx_edge role wrote from the inventory: blue, loaded
    return edge


@pytest.fixture
def disk(monkeypatch: pytest.MonkeyPatch) -> Disk:
    return Disk(monkeypatch)


def items(
    weights: dict[str, int] = GREEN, services: list[str] = ALL, **overrides: Any
) -> list[dict]:
    return [item(service, weights, **overrides) for service in services]


def everywhere(weights: dict[str, int], services: list[str] = ALL) -> dict[str, dict[str, int]]:
    return dict.fromkeys(services, weights)


# ---- the switch --------------------------------------------------------------------------------


@pytest.mark.parametrize("services", [["api-gateway"], ALL], ids=["one", "three"])
def test_a_switch_tests_and_reloads_once_verifies_and_records_every_service(
    edge: Edge, services: list[str]
) -> None:
    versions = {"blue": None, "green": "1.1.0"}
    result = switch(
        edge, items(services=services, versions=versions), action="release", run_id="r-1"
    )
    assert result["changed"] is True
    assert edge.commands == [TEST, RELOAD]
    assert edge.files() == {s: role_text(s, BLUE) for s in ALL} | edge.switched(GREEN, services)
    assert edge.loaded == everywhere(BLUE) | everywhere(GREEN, services)
    assert edge.intent() is None
    assert edge.leftovers() == []
    assert sorted(edge.recorded()) == sorted(services)
    for service in services:
        assert edge.entry(service) == {
            "weights": GREEN,
            "active": "green",
            "previous": "blue",
            "versions": {"green": "1.1.0"},
            "backends": backends(service),
            "switched_at": NOW,
            "history": [{"from": BLUE, "to": GREEN, "at": NOW}],
            "last_action": {"kind": "release", "run_id": "r-1", "at": NOW},
        }
    assert [s["service"] for s in result["services"]] == services
    assert result["services"][0] == {
        "service": services[0],
        "upstream_file": str(edge.upstream(services[0])),
        "state_file": str(edge.state_file),
        "before": {"weights": BLUE, "active": None},
        "after": {"weights": GREEN, "active": "green"},
        "state": edge.entry(services[0]),
        "changed": True,
    }
    assert set(result["timings"]) == {
        "health_gate_s",
        "write_s",
        "validate_s",
        "reload_s",
        "verify_s",
        "record_s",
        "switch_s",
        "total_s",
    }
    # One gate over all targets (only the colour that gets weight), each tagged with its service.
    assert [(h["service"], h["backend"]) for h in result["health"]] == [
        (s, backend) for s in services for backend in backends(s)["green"]
    ]
    assert {s: v["colours_seen"] for s, v in result["verify"].items()} == {
        s: {"green": 3} for s in services
    }
    assert result["actions"].count("/usr/sbin/nginx -t: ok") == 1
    assert result["recovered"] == {}
    assert result["state"] == edge.state()  # the edge's whole state after the switch
    assert len(result["diff"]) == 2 * len(services)


def test_the_audit_trail_of_a_switch_of_one_service(edge: Edge) -> None:
    result = switch(edge, [item("search")])
    assert result["actions"] == [
        "health gate passed: search (green 2 URL(s))",
        f"wrote {edge.upstream('search')} (blue 0 / green 100)",
        "/usr/sbin/nginx -t: ok",
        "systemctl reload nginx: ok",
        f"search: verified through {verify_url('search')}: 3 good answers in a row, colours "
        "seen {'green': 3}",
        f"recorded the release state of search in {edge.state_file}",
    ]


@pytest.mark.parametrize("services", [["api-gateway"], ALL], ids=["one", "three"])
def test_a_second_identical_switch_touches_nothing(edge: Edge, services: list[str]) -> None:
    switch(edge, items(services=services))
    edge.commands.clear()
    edge.fetches.clear()
    before = edge.files(), edge.state_file.stat().st_mtime_ns
    result = switch(edge, items(services=services))
    assert result["changed"] is False
    assert edge.commands == []
    assert edge.fetches == []
    assert (edge.files(), edge.state_file.stat().st_mtime_ns) == before
    assert result["actions"] == [f"{s}: unchanged, not touched" for s in services]
    assert (result["diff"], result["health"], result["verify"]) == ([], [], {})


# (from weights, to weights): blue-green, canary, promotion, rollback, canary back.
STEPS = [
    (BLUE, GREEN),
    (BLUE, CANARY),
    (CANARY, GREEN),
    (GREEN, BLUE),
    (GREEN, {"blue": 10, "green": 90}),
]


@pytest.mark.parametrize(("start", "target"), STEPS)
def test_transitions_gate_only_the_colours_that_get_weight(
    edge: Edge, start: dict, target: dict
) -> None:
    switch(edge, [item("api-gateway", start)])
    result = switch(edge, [item("api-gateway", target)])
    assert result["changed"] is True
    assert {h["colour"] for h in result["health"]} == {c for c, w in target.items() if w > 0}
    entry = edge.entry("api-gateway")
    assert entry["weights"] == target
    assert entry["history"][-1]["from"] == start
    assert edge.files()["api-gateway"] == edge.switched(target)["api-gateway"]
    assert edge.loaded["api-gateway"] == target


def test_unchanged_services_are_reported_and_not_touched(edge: Edge) -> None:
    switch(edge, [item("api-gateway")])
    edge.commands.clear()
    edge.fetches.clear()
    untouched = edge.upstream("api-gateway").stat().st_mtime_ns
    result = switch(edge, [item("api-gateway"), item("geolocation")])
    assert result["changed"] is True
    assert [s["changed"] for s in result["services"]] == [False, True]
    assert edge.upstream("api-gateway").stat().st_mtime_ns == untouched
    assert edge.commands == [TEST, RELOAD]
    assert {h["service"] for h in result["health"]} == {"geolocation"}
    assert not any("api-gateway" in url for url in edge.fetches)
    assert list(result["verify"]) == ["geolocation"]
    assert "api-gateway: unchanged, not touched" in result["actions"]
    assert [d["before_header"] for d in result["diff"]] == [
        str(edge.upstream("geolocation")),
        f"{edge.state_file} services.geolocation",
    ]
    assert sorted(edge.recorded()) == ["api-gateway", "geolocation"]


def test_check_mode_probes_but_writes_nothing_and_shows_the_diff(edge: Edge) -> None:
    before = edge.files()
    result = switch(edge, items(services=["api-gateway", "search"]), check_mode=True)
    assert result["changed"] is True
    assert edge.files() == before
    assert edge.loaded == everywhere(BLUE)
    assert edge.commands == []
    assert not edge.state_file.parent.exists()  # no state, no intent, no lock file
    assert {h["service"] for h in result["health"]} == {"api-gateway", "search"}  # read-only
    assert result["verify"] == {}
    assert [d["before_header"] for d in result["diff"]] == [
        str(edge.upstream("api-gateway")),
        f"{edge.state_file} services.api-gateway",
        str(edge.upstream("search")),
        f"{edge.state_file} services.search",
    ]
    assert result["diff"][0]["before"] == before["api-gateway"]
    assert result["diff"][0]["after"] == edge.switched(GREEN)["api-gateway"]
    assert result["diff"][1]["before"] == ""
    assert json.loads(result["diff"][3]["after"])["active"] == "green"
    assert result["actions"][-1] == (
        "check mode: nothing written, nginx not reloaded (api-gateway, search would change)"
    )


def test_check_mode_predicts_an_unhealthy_target(edge: Edge) -> None:
    edge.unhealthy.add("app2:25002")
    with pytest.raises(SwitchError, match="app2:25002"):
        switch(edge, [item("api-gateway")], check_mode=True)


def test_one_unhealthy_service_stops_the_whole_batch_before_any_write(edge: Edge) -> None:
    before = edge.files()
    edge.unhealthy.add("app2:25001")
    with pytest.raises(SwitchError) as failure:
        switch(edge, items())
    message = str(failure.value)
    assert message.startswith("health gate failed for geolocation, so no upstream was written")
    assert "geolocation: backend app2:25001 (green) is not healthy" in message
    assert "http://app2:25001/health" in message
    assert "last answer: status 503" in message
    assert "traffic stays as it was (blue 100 / green 0)" in message
    assert edge.files() == before
    assert edge.commands == []
    assert edge.state() is None
    assert edge.intent() is None
    details = failure.value.details
    assert {h["service"] for h in details["health"]} == set(ALL)
    assert [h["backend"] for h in details["health"] if not h["ok"]] == ["app2:25001"]
    assert "health_gate_s" in details["timings"]


def test_a_rollback_of_several_services_needs_only_weights(edge: Edge) -> None:
    switch(edge, items(versions={"green": "1.1.0", "blue": None}))
    edge.commands.clear()
    result = switch(edge, items(BLUE, backends=None), action="rollback")
    assert edge.commands == [TEST, RELOAD]
    for service in ALL:
        entry = edge.entry(service)
        assert (entry["active"], entry["previous"]) == ("blue", "green")
        assert entry["backends"] == backends(service)
        assert entry["versions"] == {"green": "1.1.0"}
        assert entry["last_action"]["kind"] == "rollback"
    assert [s["before"]["active"] for s in result["services"]] == ["green"] * 3
    assert edge.loaded == everywhere(BLUE)


def test_new_versions_alone_are_recorded_without_a_reload(edge: Edge) -> None:
    switch(edge, [item("api-gateway"), item("geolocation")])
    edge.commands.clear()
    result = switch(
        edge,
        [item("api-gateway", versions={"blue": "1.2.0", "green": None}), item("geolocation")],
    )
    assert result["changed"] is True
    assert [s["changed"] for s in result["services"]] == [True, False]
    assert edge.commands == []
    entry = edge.entry("api-gateway")
    assert entry["versions"] == {"blue": "1.2.0"}
    assert len(entry["history"]) == 1
    assert result["actions"][-2:] == [
        f"recorded the release state of api-gateway in {edge.state_file}",
        "api-gateway: traffic already as requested, only the state recorded",
    ]


@pytest.mark.parametrize("action", ACTION_KINDS)
def test_last_action_is_recorded_when_the_weights_change_and_kept_otherwise(
    edge: Edge, action: str
) -> None:
    switch(edge, [item("search")], action=action, run_id="r-1")
    recorded = {"kind": action, "run_id": "r-1", "at": NOW}
    assert edge.entry("search")["last_action"] == recorded
    switch(edge, [item("search")], action="release", run_id="r-2")
    assert edge.entry("search")["last_action"] == recorded
    switch(edge, [item("search", versions={"green": "1.2.0"})], action="release", run_id="r-3")
    assert edge.entry("search")["versions"] == {"green": "1.2.0"}
    assert edge.entry("search")["last_action"] == {"kind": "release", "run_id": "r-3", "at": NOW}


def test_a_reconcile_item_records_the_copied_previous_and_last_action(edge: Edge) -> None:
    switch(edge, [item("search")], action="release", run_id="r-1")
    copied = {"previous": "green", "last_action": {"kind": "rollback", "run_id": "r-0", "at": "t"}}
    result = switch(edge, [item("search", recorded=copied)], action="reconcile", run_id="r-2")
    assert result["changed"]
    assert edge.entry("search")["previous"] == "green"
    assert edge.entry("search")["last_action"] == copied["last_action"]
    assert not switch(edge, [item("search", recorded=copied)], action="reconcile")["changed"]


def test_other_services_and_keys_of_the_state_are_kept(edge: Edge) -> None:
    edge.state_file.parent.mkdir()
    other = {"weights": GREEN, "custom": {"kept": [1, 2]}}
    edge.state_file.write_text(json.dumps({"services": {"webhooks": other}, "note": "x"}))
    switch(edge, [item("search")])
    state = edge.state()
    assert state is not None
    assert state["services"]["webhooks"] == other
    assert state["note"] == "x"


def test_colour_and_version_headers_are_checked(edge: Edge) -> None:
    checks = [
        {"path": "/health", "colour_header": "X-Venta-Colour", "version_header": "X-Venta-Version"}
    ]
    versions = {"blue": None, "green": "1.1.0"}
    assert switch(edge, [item("search", health_checks=checks, versions=versions)])["changed"]
    with pytest.raises(
        SwitchError, match=re.escape("header X-Venta-Version is '1.1.0', not '9.9.9'")
    ):
        switch(
            edge,
            [
                item(
                    "search",
                    {"blue": 10, "green": 90},
                    health_checks=checks,
                    versions={"green": "9.9.9"},
                )
            ],
        )


def test_items_override_the_top_level_checks_and_verification(edge: Edge) -> None:
    services = [
        item("api-gateway"),  # the top-level checks and headers, its own verify URL
        item(
            "geolocation",
            health_checks=[{"url": "http://app1:25001/ready", "colour": "green"}],
            verify_url="https://127.0.0.1/_venta/geolocation/ready",
            verify_headers={"Host": "geo.example"},
        ),
        item("search"),
    ]
    result = switch(
        edge,
        services,
        health_checks=[{"path": "/ready"}],
        verify_headers={"Host": "edge.example"},
        verify_url_pattern=None,
    )
    urls = {(h["service"], h["url"]) for h in result["health"]}
    assert ("geolocation", "http://app1:25001/ready") in urls  # once, for its colour
    assert ("api-gateway", "http://app2:25002/ready") in urls
    assert ("search", "http://app1:25003/ready") in urls
    assert len(urls) == 5
    assert list(result["verify"]) == ["geolocation"]
    assert result["verify"]["geolocation"]["url"] == "https://127.0.0.1/_venta/geolocation/ready"
    assert edge.headers_seen == {"geolocation": {"Host": "geo.example"}}
    assert "search: no verify URL, not verified" in result["actions"]
    assert "api-gateway: no verify URL, not verified" in result["actions"]


def test_the_verify_url_pattern_names_each_service_and_sends_the_headers(edge: Edge) -> None:
    result = switch(
        edge, items(services=["search", "geolocation"]), verify_headers={"Host": "e.example"}
    )
    assert {s: v["url"] for s, v in result["verify"].items()} == {
        s: verify_url(s) for s in ("search", "geolocation")
    }
    assert edge.headers_seen == {s: {"Host": "e.example"} for s in ("search", "geolocation")}


def test_a_url_check_runs_once_for_its_colour(edge: Edge) -> None:
    checks = [{"url": "http://app1:25002/ready", "colour": "green"}]
    result = switch(edge, [item("api-gateway", health_checks=checks)])
    assert [h["url"] for h in result["health"]] == ["http://app1:25002/ready"]


@pytest.mark.parametrize(
    ("services", "message"),
    [
        (
            [
                item(
                    "api-gateway", CANARY, health_checks=[{"url": "http://a:1/", "colour": "green"}]
                )
            ],
            r"^api-gateway: no health check applies to blue, which would get weight 90; add a path "
            "check or a url check with colour: blue",
        ),
        (
            [item("search"), item("api-gateway", backends={"blue": None, "green": []})],
            r"^services\[1\] \(api-gateway\): weights give green 100 but backends.green is empty",
        ),
        (
            [item("api-gateway"), item("search", backends=None)],
            r"^services\[1\] \(search\): no backends given and none recorded in .*venta_release",
        ),
    ],
    ids=["no-check", "empty-colour", "no-backends"],
)
def test_plan_errors_name_the_item_and_change_nothing(
    edge: Edge, services: list[dict], message: str
) -> None:
    before = edge.files()
    with pytest.raises(SwitchError, match=message):
        switch(edge, services)
    assert edge.commands == []
    assert edge.files() == before
    assert edge.state() is None


def test_a_missing_upstream_directory_is_explained(edge: Edge, tmp_path: Path) -> None:
    with pytest.raises(SwitchError, match="nginx_edge role first") as failure:
        switch(edge, [item("search")], upstream_dir=str(tmp_path / "nope"))
    assert "every previous upstream is back" in str(failure.value)
    assert edge.intent() is None


def test_a_broken_state_file_is_refused_before_any_change(edge: Edge) -> None:
    edge.state_file.parent.mkdir()
    edge.state_file.write_text("{broken")
    before = edge.files()
    with pytest.raises(SwitchError, match=f"{re.escape(str(edge.state_file))} is not valid JSON"):
        switch(edge, [item("search")])
    assert edge.files() == before
    assert (edge.fetches, edge.commands) == ([], [])


def test_a_batch_takes_the_lock_of_the_edge_once(
    edge: Edge, monkeypatch: pytest.MonkeyPatch
) -> None:
    used: list[str] = []
    real = switch_transaction.exclusive_lock

    def spy(path: str, timeout: float) -> Any:
        used.append(path)
        return real(path, timeout)

    monkeypatch.setattr(switch_transaction, "exclusive_lock", spy)
    switch(edge, [item("search"), item("geolocation")])
    assert used == [f"{edge.state_file}.lock"]


# ---- verification: enough good answers in a row AND an answer from each live colour ------------


@pytest.mark.parametrize(
    ("requests", "live", "weights", "budget"),
    [
        (10, ["green"], GREEN, 10),
        (3, ["green"], GREEN, 5),  # 500 / 100
        (10, ["blue", "green"], CANARY, 50),  # a 10 % canary: 500 / 10
        (100, ["blue", "green"], CANARY, 100),
        (20, ["blue", "green"], {"blue": 99, "green": 1}, 500),
        (20, ["blue", "green"], {"blue": 50, "green": 50}, 20),
        (20, ["blue", "green"], {"blue": 97, "green": 3}, 167),  # rounded up
        (20, [], {}, 20),
    ],
)
def test_verify_budget(requests: int, live: list[str], weights: dict, budget: int) -> None:
    assert verify_budget(requests, live, weights) == budget


@pytest.mark.parametrize(
    ("weights", "requests", "seen"),
    [
        (GREEN, 3, {"green": 3}),
        ({"blue": 50, "green": 50}, 3, {"blue": 2, "green": 1}),
        (CANARY, 10, {"blue": 9, "green": 1}),  # green answers 1 in 10: seen at the 10th
        ({"blue": 99, "green": 1}, 100, {"blue": 99, "green": 1}),  # within 500
    ],
)
def test_every_colour_with_weight_answers_within_the_budget(
    edge: Edge, weights: dict, requests: int, seen: dict
) -> None:
    result = switch(edge, [item("api-gateway", weights)])
    verify = result["verify"]["api-gateway"]
    assert (verify["requests"], verify["colours_seen"]) == (requests, seen)
    assert edge.entry("api-gateway")["weights"] == weights


def test_a_canary_the_edge_never_answers_green_for_fails_and_puts_the_files_back(
    edge: Edge,
) -> None:
    before = edge.files()
    edge.routes["api-gateway"] = lambda _n: "blue"  # the route ignores the new upstream
    with pytest.raises(SwitchError) as failure:
        switch(edge, [item("api-gateway", CANARY)])
    message = str(failure.value)
    assert "no answer from green in 50 requests" in message
    assert "every previous upstream is back and nginx reloaded with them" in message
    assert failure.value.details["verify"]["api-gateway"] == {
        "url": verify_url("api-gateway"),
        "requests": 50,
        "consecutive_successes": 50,
        "colours_seen": {"blue": 50},
        "expected_colours": ["blue", "green"],
    }
    assert edge.files() == before
    assert edge.loaded == everywhere(BLUE)
    assert edge.commands == [TEST, RELOAD, TEST, RELOAD]
    assert (edge.state(), edge.intent()) == (None, None)


def test_verification_waits_for_the_new_workers(edge: Edge) -> None:
    edge.routes["api-gateway"] = lambda n: "blue" if n <= 2 else "green"  # old workers first
    result = switch(edge, [item("api-gateway")])
    assert result["verify"]["api-gateway"]["colours_seen"] == {"blue": 2, "green": 3}
    assert result["verify"]["api-gateway"]["requests"] == 5


def test_one_failed_verification_puts_every_service_back_with_one_more_reload(edge: Edge) -> None:
    before = edge.files()
    edge.routes["geolocation"] = lambda _n: "blue"  # its route still answers from blue
    with pytest.raises(SwitchError) as failure:
        switch(edge, items())
    message = str(failure.value)
    assert message.startswith("verify through the edge failed for geolocation: geolocation: ")
    assert verify_url("geolocation") in message
    assert (
        "X-Venta-Colour green 3 time(s) in a row with an answer from each of them within 10 "
        "requests (seen {'blue': 10}" in message
    )
    assert "api-gateway:" not in message
    assert edge.files() == before
    assert edge.loaded == everywhere(BLUE)
    assert (edge.state(), edge.intent()) == (None, None)
    verify = failure.value.details["verify"]
    assert sorted(verify) == ALL  # every service was verified (in parallel)
    assert verify["geolocation"]["consecutive_successes"] == 0
    assert verify["search"]["colours_seen"] == {"green": 3}


# ---- the undo at each failing step -------------------------------------------------------------

Fault = Callable[[Edge, Disk], None]


def _write(edge: Edge, disk: Disk) -> None:
    disk.refuse(edge.upstream("geolocation"))  # after api-gateway's file was written


def _write_and_undo(edge: Edge, disk: Disk) -> None:
    _write(edge, disk)
    disk.refuse(edge.upstream("api-gateway"), after=1)  # its old text cannot be put back


def _test(edge: Edge, disk: Disk) -> None:
    edge.rejected.add("app3:25003")  # search's new green host: nginx cannot resolve it


def _test_always(edge: Edge, disk: Disk) -> None:
    edge.fail("test", 'nginx: [emerg] open() "/etc/nginx/mime.types" failed')


def _reload(edge: Edge, disk: Disk) -> None:
    edge.fail("reload", "Job for nginx.service failed", times=1)


def _reload_always(edge: Edge, disk: Disk) -> None:
    edge.fail("reload", "Job for nginx.service failed")


def _verify(edge: Edge, disk: Disk) -> None:
    edge.routes["geolocation"] = lambda _n: "blue"


def _verify_and_undo(edge: Edge, disk: Disk) -> None:
    _verify(edge, disk)
    disk.refuse(edge.upstream("search"), after=1)


def _record(edge: Edge, disk: Disk) -> None:
    disk.refuse(edge.state_file)


def _record_and_undo(edge: Edge, disk: Disk) -> None:
    _record(edge, disk)
    disk.refuse(edge.upstream("api-gateway"), after=1)


BACK = "every previous upstream is back"
BACK_RELOADED = f"{BACK} and nginx reloaded with them (the traffic of every service is as it was)"
NOT_BACK = "putting the previous upstreams back FAILED"
KEPT = "the intent is kept"
T, R = TEST, RELOAD

# (fault, what the message says, commands, the files are back, nginx serves the old traffic,
# the intent is kept for the next run).
UNDO_CASES = [
    pytest.param(
        _write,
        [f"geolocation.conf: {NO_SPACE}", f"{BACK} (nginx was not reloaded)"],
        [T],
        True,
        True,
        False,
        id="write",
    ),
    pytest.param(
        _write_and_undo,
        [f"geolocation.conf: {NO_SPACE}", f"{NOT_BACK}: {{}}/api-gateway.conf: {NO_SPACE}"],
        [],
        False,
        True,
        True,
        id="write-undo-fails",
    ),
    pytest.param(
        _test,
        [
            "/usr/sbin/nginx -t rejected the new upstreams of api-gateway, geolocation, search "
            '(nginx: [emerg] host not found in upstream "app3:25003")',
            f"{BACK} (nginx was not reloaded)",
        ],
        [T, T],
        True,
        True,
        False,
        id="nginx-t",
    ),
    pytest.param(
        _test_always,
        ["the previous upstreams are back but nginx -t fails on them", "the intent is kept"],
        [T, T],
        True,
        True,
        True,
        id="nginx-t-undo-fails",
    ),
    pytest.param(
        _reload,
        [
            "systemctl reload nginx failed (Job for nginx.service failed) after writing the "
            "upstreams of api-gateway, geolocation, search",
            BACK_RELOADED,
        ],
        [T, R, T, R],
        True,
        True,
        False,
        id="reload",
    ),
    pytest.param(
        _reload_always,
        ["the previous upstreams are back but reloading nginx again failed", KEPT],
        [T, R, T, R],
        True,
        True,
        True,
        id="reload-undo-fails",
    ),
    pytest.param(
        _verify,
        ["verify through the edge failed for geolocation", BACK_RELOADED],
        [T, R, T, R],
        True,
        True,
        False,
        id="verify",
    ),
    pytest.param(
        _verify_and_undo,
        ["verify through the edge failed for geolocation", f"{NOT_BACK}: {{}}/search.conf"],
        [T, R],
        False,
        False,
        True,
        id="verify-undo-fails",
    ),
    pytest.param(
        _record,
        [f"api-gateway, geolocation, search: cannot record {{state}}: {NO_SPACE}", BACK_RELOADED],
        [T, R, T, R],
        True,
        True,
        False,
        id="record",
    ),
    pytest.param(
        _record_and_undo,
        ["cannot record", f"{NOT_BACK}: {{}}/api-gateway.conf"],
        [T, R],
        False,
        False,
        True,
        id="record-undo-fails",
    ),
]


@pytest.mark.parametrize(("fault", "says", "commands", "back", "served", "kept"), UNDO_CASES)
def test_a_failing_step_puts_the_files_back_and_removes_the_intent_only_when_they_are(
    edge: Edge,
    disk: Disk,
    fault: Fault,
    says: list[str],
    commands: list[list[str]],
    back: bool,
    served: bool,
    kept: bool,
) -> None:
    before = edge.files()
    fault(edge, disk)
    # search's green slot was redeployed on new hosts
    search = item("search", backends={"blue": None, "green": ["app3:25003", "app4:25003"]})
    with pytest.raises(SwitchError) as failure:
        switch(edge, [*items(services=ALL[:2]), search])
    message = str(failure.value)
    for text in says:
        assert text.format(edge.upstreams, state=edge.state_file) in message
    assert edge.commands == commands
    assert (edge.files() == before) is back
    assert edge.loaded == (everywhere(BLUE) if served else everywhere(GREEN))
    assert edge.state() is None  # never recorded
    assert (edge.intent() is not None) is kept
    assert edge.leftovers() == []
    assert failure.value.details["actions"]  # the audit trail, also on failure

    # The next run (the faults gone) leaves the edge as it was before the switch.
    edge.heal()
    disk.heal()
    edge.commands.clear()
    result = switch(edge, [])
    assert result["changed"] is kept
    assert sorted(result["recovered"]) == (ALL if kept else [])
    assert edge.commands == ([T, R] if kept else [])
    assert edge.files() == before
    assert edge.loaded == everywhere(BLUE)
    assert edge.intent() is None


# ---- crashes: the failpoints ------------------------------------------------------------------


def test_a_switch_passes_the_failpoints_in_order(edge: Edge) -> None:
    failpoints = Failpoints()
    switch(edge, [item("search")], failpoint=failpoints)
    assert failpoints.passed == list(PHASES)


def _history(edge: Edge, history: str) -> dict[str, int]:
    """Prepare the edge; the weights the switch under test goes to."""
    if history == "first switch":
        return GREEN  # nothing recorded yet: the role's blue files
    switch(edge, items(services=["api-gateway", "geolocation"]), action="release")
    edge.commands.clear()
    return BLUE


@pytest.mark.parametrize("next_run", ["the same switch", "recovery only"])
@pytest.mark.parametrize("history", ["first switch", "after a release"])
@pytest.mark.parametrize("phase", PHASES)
def test_a_switch_killed_at_any_phase_leaves_what_a_crash_leaves_and_the_next_run_converges(
    edge: Edge, phase: str, history: str, next_run: str
) -> None:
    target = _history(edge, history)
    services = ["api-gateway", "geolocation"]
    request = [item(service, target, backends=None) for service in services]
    if history == "first switch":
        request = [item(service, target) for service in services]
    files, state, served = edge.files(), edge.state(), dict(edge.loaded)
    switched_files = files | edge.switched(target, services)

    failpoints = Failpoints(crash=phase)
    run = {"action": "release", "run_id": "r-2"}
    with pytest.raises(Crash):
        switch(edge, request, failpoint=failpoints, **run)

    # What the crash leaves: the intent of both services, the state never recorded, the files
    # renamed from after-rename on, nginx serving them only from after-reload on.
    assert failpoints.passed == list(PHASES[: PHASES.index(phase) + 1])
    intent = edge.intent()
    assert intent is not None
    assert sorted(intent["services"]) == services
    assert edge.state() == state
    renamed = PHASES.index(phase) >= PHASES.index("after-rename")
    reloaded = PHASES.index(phase) >= PHASES.index("after-reload")
    assert edge.files() == (switched_files if renamed else files)
    assert edge.loaded == (served | everywhere(target, services) if reloaded else served)
    assert edge.leftovers() == []

    # The next run (no failpoint) undoes it (the state was not recorded), then switches.
    edge.commands.clear()
    result = switch(edge, request if next_run == "the same switch" else [], **run)
    assert result["changed"] is True
    assert result["recovered"] == dict.fromkeys(
        services,
        f"undone, back to {'blue 100 / green 0' if target == GREEN else 'blue 0 / green 100'}",
    )
    assert edge.intent() is None
    if next_run == "recovery only":
        assert edge.commands == [T, R]
        assert edge.files() == files
        assert edge.loaded == served
        assert edge.state() == state
        return
    assert edge.commands == [T, R, T, R]
    assert edge.files() == switched_files
    assert edge.loaded == served | everywhere(target, services)
    assert {s: edge.recorded()[s] for s in services} == everywhere(target, services)
    assert edge.entry("api-gateway")["last_action"] == {
        "kind": "release",
        "run_id": "r-2",
        "at": NOW,
    }
    assert switch(edge, request, **run)["changed"] is False


def test_the_intent_holds_every_file_before_and_after(edge: Edge) -> None:
    with pytest.raises(Crash):
        switch(
            edge,
            [item("search"), item("geolocation")],
            failpoint=Failpoints(crash="before-write"),
            action="release",
            run_id="r-7",
        )
    assert edge.intent() == {
        "run_id": "r-7",
        "action": "release",
        "started_at": NOW,
        "services": {
            service: {
                "upstream_file": str(edge.upstream(service)),
                "before_text": role_text(service, BLUE),
                "after_text": edge.switched(GREEN)[service],
                "before_weights": BLUE,
                "after_weights": GREEN,
            }
            for service in ("search", "geolocation")
        },
    }
    assert oct(edge.intent_file.stat().st_mode & 0o777) == "0o600"


# ---- recovery (step 0) -------------------------------------------------------------------------


def _crash(
    edge: Edge, phase: str = "after-reload", services: tuple[str, ...] = ("search",)
) -> None:
    """A switch of `services` to green that died at `phase`."""
    with pytest.raises(Crash):
        switch(edge, [item(s) for s in services], failpoint=Failpoints(crash=phase))
    edge.commands.clear()
    edge.fetches.clear()


def _file_differs(edge: Edge) -> None:
    """search is recorded green, but its file says blue and nginx serves blue (no intent)."""
    switch(edge, [item("search")])
    edge.deploy(BLUE, ["search"])
    edge.commands.clear()
    edge.fetches.clear()


def test_recovery_undoes_a_switch_whose_state_was_not_recorded(edge: Edge) -> None:
    _crash(edge)
    result = switch(edge, [], verify_headers={"Host": "edge.example"})
    assert result["changed"] is True
    assert result["services"] == []
    assert result["recovered"] == {"search": "undone, back to blue 100 / green 0"}
    assert edge.files()["search"] == role_text("search", BLUE)
    assert edge.loaded["search"] == BLUE
    assert edge.commands == [TEST, RELOAD]
    assert edge.intent() is None
    assert result["verify"]["search"]["colours_seen"] == {"blue": 3}
    assert edge.headers_seen["search"] == {"Host": "edge.example"}
    assert result["actions"][-1] == (
        "recovered an interrupted switch (search: undone, back to blue 100 / green 0): "
        "nginx -t ok, reloaded, verified"
    )
    assert "recover_s" in result["timings"]


def test_recovery_of_a_service_in_the_batch_verifies_it_as_the_batch_says(edge: Edge) -> None:
    _crash(edge)
    own = "https://127.0.0.1/_venta/search/ready"
    switch(edge, [item("search", verify_url=own, verify_headers={"Host": "s.example"})])
    assert edge.fetches[0] == own
    assert edge.headers_seen["search"] == {"Host": "s.example"}


def test_recovery_removes_a_file_that_did_not_exist_before_the_switch(edge: Edge) -> None:
    edge.upstream("search").unlink()
    edge.loaded = edge.on_disk()
    _crash(edge)
    result = switch(edge, [])
    assert result["recovered"] == {"search": "undone, back to no weights recorded"}
    assert "search" not in edge.files()
    assert "search: no verify URL, not verified" in result["actions"]
    assert edge.intent() is None


class _IntentStays:
    """clear_intent of the transaction, failing (a read-only state directory) until healed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.failing = True
        monkeypatch.setattr(switch_transaction, "clear_intent", self)

    def __call__(self, path: str) -> None:
        if self.failing:
            raise IntentError(f"cannot remove the switch intent {path}: read-only file system")
        clear_intent(path)


@pytest.mark.parametrize("file", ["as the switch left it", "put back by hand and reloaded"])
def test_recovery_completes_a_switch_whose_state_was_recorded(
    edge: Edge, monkeypatch: pytest.MonkeyPatch, file: str
) -> None:
    stays = _IntentStays(monkeypatch)
    with pytest.raises(SwitchError, match=r"\(the switch itself is done and recorded\)"):
        switch(edge, [item("search")])
    stays.failing = False
    assert edge.recorded() == {"search": GREEN}
    assert edge.intent() is not None
    if file != "as the switch left it":
        edge.deploy(BLUE, ["search"])
    edge.commands.clear()
    result = switch(edge, [])
    assert result["changed"] is True
    assert result["recovered"] == {"search": "completed (the state was recorded)"}
    assert edge.files()["search"] == edge.switched(GREEN)["search"]
    assert edge.loaded["search"] == GREEN
    assert edge.commands == [TEST, RELOAD]
    assert result["verify"]["search"]["colours_seen"] == {"green": 3}
    assert edge.intent() is None


def test_recovery_rewrites_a_file_that_differs_from_the_recorded_state(edge: Edge) -> None:
    _file_differs(edge)
    result = switch(edge, [])
    assert result["changed"] is True
    assert result["recovered"] == {
        "search": "the file said blue 100 / green 0, the state blue 0 / green 100: back to the "
        "state"
    }
    assert edge.files()["search"] == edge.switched(GREEN)["search"]
    assert edge.files()["api-gateway"] == role_text("api-gateway", BLUE)  # nothing recorded
    assert edge.loaded["search"] == GREEN
    assert edge.commands == [TEST, RELOAD]
    assert edge.intent() is None
    assert switch(edge, [])["changed"] is False


def _recovery_write(edge: Edge, disk: Disk) -> None:
    disk.refuse(edge.upstream("search"))


def _recovery_test(edge: Edge, disk: Disk) -> None:
    edge.fail("test", "nginx: [emerg] unknown directive")


def _recovery_reload(edge: Edge, disk: Disk) -> None:
    edge.fail("reload", "Unit venta-edge-switch.service is not active")


def _recovery_verify(edge: Edge, disk: Disk) -> None:
    edge.routes["search"] = lambda _n: None  # the edge answers 502


@pytest.mark.parametrize("setup", [_crash, _file_differs], ids=["intent", "file-differs"])
@pytest.mark.parametrize(
    ("fault", "message"),
    [
        (_recovery_write, f"could not write {{}}/search.conf: {NO_SPACE}"),
        (_recovery_test, "/usr/sbin/nginx -t rejects the recorded upstreams (nginx: [emerg]"),
        (_recovery_reload, "systemctl reload nginx failed (Unit venta-edge-switch.service is"),
        (_recovery_verify, "the edge does not serve what is recorded: search: "),
    ],
    ids=["write", "nginx-t", "reload", "verify"],
)
def test_a_failed_recovery_stops_the_run_and_keeps_the_intent_for_the_next(
    edge: Edge,
    disk: Disk,
    setup: Callable[[Edge], None],
    fault: Fault,
    message: str,
) -> None:
    setup(edge)
    fault(edge, disk)
    gateway = edge.files()["api-gateway"]
    with pytest.raises(SwitchError) as failure:
        switch(edge, [item("api-gateway")])
    assert str(failure.value).startswith("recovery of an interrupted switch")
    assert message.format(edge.upstreams) in str(failure.value)
    assert f"{edge.intent_file} is kept" in str(failure.value)
    assert edge.intent() is not None
    assert edge.files()["api-gateway"] == gateway  # the switch itself never started
    assert "api-gateway" not in edge.recorded()

    edge.heal()
    disk.heal()
    result = switch(edge, [item("api-gateway")])
    assert list(result["recovered"]) == ["search"]
    assert edge.intent() is None
    assert edge.loaded["search"] == (edge.recorded().get("search") or BLUE)
    assert edge.loaded["api-gateway"] == GREEN


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        "[]",
        '{"services": []}',
        '{"services": {"search": "green"}}',
        '{"services": {"search": {"after_weights": {"blue": 0, "green": 100}}}}',
        '{"services": {"search": {"after_text": "x", "before_text": 1, "after_weights": {}}}}',
    ],
)
def test_a_damaged_intent_is_refused_naming_the_file(edge: Edge, text: str) -> None:
    edge.state_file.parent.mkdir()
    edge.intent_file.write_text(text)
    before = edge.files()
    with pytest.raises(SwitchError) as failure:
        switch(edge, [item("search")])
    assert f"the switch intent {edge.intent_file} is damaged" in str(failure.value)
    assert "then remove the file" in str(failure.value)
    assert edge.files() == before
    assert (edge.commands, edge.fetches) == ([], [])
    assert edge.intent_file.read_text() == text


def test_check_mode_predicts_the_recovery_without_writing(edge: Edge) -> None:
    _crash(edge, "after-rename")
    files, intent, served = edge.files(), edge.intent(), dict(edge.loaded)
    result = switch(edge, [], check_mode=True)
    assert result["changed"] is True
    assert result["recovered"] == {"search": "undone, back to blue 100 / green 0"}
    assert result["actions"] == [
        "check mode: would recover an interrupted switch (search: undone, back to blue 100 / "
        "green 0)"
    ]
    assert (edge.files(), edge.intent(), edge.loaded) == (files, intent, served)
    assert (edge.commands, edge.fetches) == ([], [])


@pytest.mark.parametrize("check_mode", [False, True])
def test_recovery_only_on_a_clean_edge_changes_nothing(edge: Edge, check_mode: bool) -> None:
    switch(edge, [item("search")])
    edge.commands.clear()
    edge.fetches.clear()
    result = switch(edge, [], check_mode=check_mode)
    assert result["changed"] is False
    assert (result["services"], result["actions"], result["recovered"]) == ([], [], {})
    assert result["state"] == edge.state()
    assert (edge.commands, edge.fetches) == ([], [])


@pytest.mark.parametrize("check_mode", [False, True])
def test_the_leftovers_of_older_switches_are_removed(edge: Edge, check_mode: bool) -> None:
    leftovers = ["search.conf.switch~", ".search.k2c9.switch-new"]
    for name in leftovers:
        (edge.upstreams / name).write_text("old\n")
    result = switch(edge, [], check_mode=check_mode)
    assert result["changed"] is True
    assert edge.leftovers() == (sorted(leftovers) if check_mode else [])
    assert result["actions"][0].startswith(
        "check mode: would remove " if check_mode else "removed "
    )
    assert edge.commands == []
    assert switch(edge, [])["changed"] is check_mode  # what check mode left, a real run removes


# ---- needs_reload: a file already at the target whose weights were never recorded -------------


@pytest.mark.parametrize(
    ("file", "recorded", "versions", "expected"),
    [
        # the file: the role's (from the inventory, blue or green) or the switch's (green);
        # expected: (file_changes, traffic_changes, state_changes, needs_reload)
        pytest.param(BLUE, None, None, (True, True, True, True), id="role-blue"),
        pytest.param(GREEN, None, None, (True, False, True, True), id="role-green"),
        pytest.param(None, None, None, (False, False, True, False), id="nothing-recorded"),
        pytest.param(None, BLUE, None, (False, True, True, True), id="crash-before-reload"),
        pytest.param(None, GREEN, "1.2.0", (False, False, True, False), id="versions"),
        pytest.param(None, GREEN, None, (False, False, False, False), id="nothing"),
    ],
)
def test_needs_reload_when_the_file_or_the_traffic_changes(
    edge: Edge,
    file: dict | None,
    recorded: dict | None,
    versions: str | None,
    expected: tuple[bool, ...],
) -> None:
    if file is None:
        edge.upstream("search").write_text(edge.switched(GREEN)["search"])
    else:
        edge.upstream("search").write_text(role_text("search", file))
    state: dict[str, Any] = {"services": {}}
    if recorded is not None:
        state["services"]["search"] = {"weights": recorded, "backends": backends("search")}
    batch = parse_batch(params(edge, [item("search", versions={"green": versions})]))
    plan = make_plan(batch.requests[0], batch.shared, state, NOW)
    assert (
        plan.file_changes,
        plan.traffic_changes,
        plan.state_changes,
        plan.needs_reload,
    ) == expected


def test_a_file_at_the_target_whose_weights_were_not_recorded_is_tested_reloaded_verified(
    edge: Edge,
) -> None:
    # The state records blue without backends (so recovery cannot render it); the file already
    # says green, but nginx still serves blue: it was renamed, never reloaded.
    edge.state_file.parent.mkdir()
    edge.state_file.write_text(json.dumps({"services": {"search": {"weights": BLUE}}}))
    edge.upstream("search").write_text(edge.switched(GREEN)["search"])
    result = switch(edge, [item("search")])
    assert edge.commands == [TEST, RELOAD]
    assert not any(action.startswith("wrote") for action in result["actions"])
    assert edge.loaded["search"] == GREEN
    assert result["verify"]["search"]["colours_seen"] == {"green": 3}
    assert edge.recorded()["search"] == GREEN


# ---- the intent file and the failpoint file (switch_intent) ------------------------------------


def test_the_intent_is_written_read_and_cleared(tmp_path: Path) -> None:
    path = str(tmp_path / "state.fact.intent")
    assert read_intent(path) is None
    intent = {
        "run_id": None,
        "services": {"search": {"before_text": None, "after_text": "x\n", "after_weights": GREEN}},
    }
    write_intent(path, intent)
    assert read_intent(path) == intent
    clear_intent(path)
    clear_intent(path)  # gone already: fine
    assert read_intent(path) is None


def test_an_intent_that_cannot_be_written_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    path = str(tmp_path / "file" / "state.fact.intent")
    with pytest.raises(IntentError, match=f"cannot write the switch intent {re.escape(path)}"):
        write_intent(path, {"services": {}})


@pytest.mark.parametrize(
    ("named", "killed"), [(None, False), ("after-reload", False), ("after-rename", True)]
)
def test_the_failpoint_file_kills_the_switch_at_the_phase_it_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, named: str | None, killed: bool
) -> None:
    failpoint, hit = tmp_path / "nginx_switch", tmp_path / "nginx_switch.hit"
    if named is not None:
        failpoint.write_text(named + "\n")
    monkeypatch.setattr(switch_intent, "FAILPOINT_FILE", str(failpoint))
    monkeypatch.setattr(switch_intent, "FAILPOINT_HIT", str(hit))
    signals: list[int] = []
    fake_os = types.SimpleNamespace(getpid=lambda: 4242, kill=lambda _pid, sig: signals.append(sig))
    monkeypatch.setattr(switch_intent, "os", fake_os)
    file_failpoint("after-rename")
    assert signals == ([signal.SIGKILL] if killed else [])
    assert hit.exists() is killed
    if killed:
        assert hit.read_text() == "after-rename\n"
