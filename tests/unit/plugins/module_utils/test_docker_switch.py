"""The Docker platform switch: state transitions, check mode, health gate and failure restore."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from ansible_collections.venta.deploy.plugins.module_utils.docker_switch import (
    Switcher,
    SwitchError,
    build_request,
)
from ansible_collections.venta.deploy.plugins.module_utils.health_gate import Answer, HttpOptions
from ansible_collections.venta.deploy.plugins.module_utils.nginx_upstream import (
    UpstreamSettings,
    render_upstream,
)

BACKENDS = {"blue": ["app1:15002", "app2:15002"], "green": ["app1:25002", "app2:25002"]}
VERIFY = "https://127.0.0.1/_venta/api-gateway/health"


class Edge:
    """A fake edge: commands and HTTP answers, with a record of what was called."""

    def __init__(self, tmp_path: Path) -> None:
        self.upstreams = tmp_path / "upstreams"
        self.upstreams.mkdir()
        self.state_file = tmp_path / "facts.d" / "venta_release.fact"
        self.commands: list[list[str]] = []
        self.fail: dict[str, tuple[int, str]] = {}
        self.unhealthy: set[str] = set()
        self.edge_colour: Callable[[int], str] | None = None  # colour the edge answers with
        self.live = "blue"
        self.verify_calls = 0
        self.fetches: list[str] = []

    # commands: "test" (nginx -t) and "reload"
    def run(self, argv: Sequence[str]) -> tuple[int, str, str]:
        self.commands.append(list(argv))
        kind = "test" if argv[-1] == "-t" else "reload"
        rc, err = self.fail.get(kind, (0, ""))
        if kind == "reload" and rc == 0:
            self.live = self.colour_of_file()
        return rc, "", err

    def colour_of_file(self) -> str:
        path = self.upstreams / "api-gateway.conf"
        text = path.read_text() if path.exists() else ""
        return "green" if "weight=100 max_fails=3 fail_timeout=10s; # green" in text else "blue"

    def fetch(self, url: str, options: HttpOptions, timeout: float) -> Answer:
        self.fetches.append(url)
        if url == VERIFY:
            self.verify_calls += 1
            colour = self.edge_colour(self.verify_calls) if self.edge_colour else self.live
            return Answer(200, {"X-Venta-Colour": colour}, "{}", 2.0)
        backend = url.split("/")[2]
        if backend in self.unhealthy:
            return Answer(503, {}, '{"status":"unhealthy"}', 1.0)
        colour = "green" if backend.endswith(":25002") else "blue"
        return Answer(
            200, {"X-Venta-Colour": colour, "X-Venta-Version": "1.1.0"}, '{"status":"ok"}', 1.0
        )

    @property
    def upstream(self) -> Path:
        return self.upstreams / "api-gateway.conf"

    def state(self) -> dict[str, Any]:
        return json.loads(self.state_file.read_text())

    def leftovers(self) -> list[str]:
        return sorted(p.name for p in self.upstreams.iterdir() if p.name != "api-gateway.conf")


def params(edge: Edge, **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "service": "api-gateway",
        "weights": {"blue": 0, "green": 100},
        "backends": dict(BACKENDS),
        "versions": {"blue": None, "green": "1.1.0"},
        "health_checks": None,
        "health_successes": 2,
        "health_interval": 0.0,
        "health_timeout": 1.0,
        "upstream_dir": str(edge.upstreams),
        "state_file": str(edge.state_file),
        "test_command": ["/usr/sbin/nginx", "-t"],
        "reload_command": ["systemctl", "reload", "nginx"],
        "verify_url": VERIFY,
        "verify_headers": {},
        "verify_status_code": [200],
        "verify_colour_header": "X-Venta-Colour",
        "verify_requests": 10,
        "verify_successes": 3,
        "verify_interval": 0.0,
        "max_fails": 3,
        "fail_timeout": "10s",
        "keepalive": 32,
        "ansible_managed": "Ansible managed",
        "lock_timeout": 5.0,
        "ca_path": None,
        "client_cert": None,
        "client_key": None,
        "validate_certs": True,
        "request_timeout": 1.0,
    }
    base.update(overrides)
    return base


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 0.001
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def switch(edge: Edge, check_mode: bool = False, **overrides: Any) -> dict[str, Any]:
    clock = Clock()
    request = build_request(params(edge, **overrides))
    switcher = Switcher(
        request,
        edge.run,
        check_mode=check_mode,
        fetcher=edge.fetch,
        clock=clock,
        sleep=clock.sleep,
        now=lambda: "2025-01-01T12:00:00Z",
    )
    return switcher.run()


def role_text(weights: dict[str, int], source: str) -> str:
    return render_upstream("api-gateway", BACKENDS, weights, source, UpstreamSettings())


@pytest.fixture
def edge(tmp_path: Path) -> Edge:
    edge = Edge(tmp_path)
    # What the nginx_edge role wrote from the inventory before any switch.
    edge.upstream.write_text(role_text({"blue": 100, "green": 0}, "the inventory (...)"))
    return edge


def test_first_switch_writes_tests_reloads_verifies_and_records(edge: Edge) -> None:
    result = switch(edge)
    assert result["changed"] is True
    assert edge.upstream.read_text() == role_text({"blue": 0, "green": 100}, str(edge.state_file))
    assert edge.commands == [["/usr/sbin/nginx", "-t"], ["systemctl", "reload", "nginx"]]
    entry = edge.state()["services"]["api-gateway"]
    assert entry["weights"] == {"blue": 0, "green": 100}
    assert (entry["active"], entry["previous"]) == ("green", "blue")
    assert entry["versions"] == {"green": "1.1.0"}
    assert entry["backends"] == BACKENDS
    assert entry["history"] == [
        {
            "from": {"blue": 100, "green": 0},
            "to": {"blue": 0, "green": 100},
            "at": "2025-01-01T12:00:00Z",
        }
    ]
    assert result["before"] == {"weights": {"blue": 100, "green": 0}, "active": None}
    assert result["after"] == {"weights": {"blue": 0, "green": 100}, "active": "green"}
    assert set(result["timings"]) >= {
        "health_gate_s",
        "write_s",
        "validate_s",
        "reload_s",
        "verify_s",
        "switch_s",
        "total_s",
    }
    assert [h["backend"] for h in result["health"]] == BACKENDS["green"]
    assert result["verify"]["colours_seen"] == {"green": 3}
    assert edge.leftovers() == []
    assert len(result["actions"]) == 6


def test_a_second_identical_switch_touches_nothing(edge: Edge) -> None:
    switch(edge)
    edge.commands.clear()
    edge.fetches.clear()
    before = (edge.upstream.stat().st_mtime_ns, edge.state_file.stat().st_mtime_ns)
    result = switch(edge)
    assert result["changed"] is False
    assert edge.commands == []
    assert edge.fetches == []
    assert (edge.upstream.stat().st_mtime_ns, edge.state_file.stat().st_mtime_ns) == before
    assert result["actions"] == []


# (from weights, to weights): blue-green, canary, promotion, rollback.
STEPS = [
    ({"blue": 100, "green": 0}, {"blue": 0, "green": 100}),
    ({"blue": 100, "green": 0}, {"blue": 90, "green": 10}),
    ({"blue": 90, "green": 10}, {"blue": 0, "green": 100}),
    ({"blue": 0, "green": 100}, {"blue": 100, "green": 0}),
]


@pytest.mark.parametrize(("start", "target"), STEPS)
def test_transitions_gate_only_live_colours(edge: Edge, start: dict, target: dict) -> None:
    switch(edge, weights=start)
    edge.fetches.clear()
    result = switch(edge, weights=target)
    assert result["changed"] is True
    gated = {h["colour"] for h in result["health"]}
    assert gated == {c for c, w in target.items() if w > 0}
    entry = edge.state()["services"]["api-gateway"]
    assert entry["weights"] == target
    assert entry["history"][-1]["from"] == start
    assert edge.upstream.read_text() == role_text(target, str(edge.state_file))


def test_check_mode_probes_but_changes_nothing_and_shows_the_diff(edge: Edge) -> None:
    old = edge.upstream.read_text()
    result = switch(edge, check_mode=True)
    assert result["changed"] is True
    assert edge.upstream.read_text() == old
    assert not edge.state_file.exists()
    assert edge.commands == []
    assert result["health"]  # read-only probes ran
    file_diff, state_diff = result["diff"]
    assert file_diff["before"] == old
    assert "weight=100 max_fails=3 fail_timeout=10s; # green" in file_diff["after"]
    assert state_diff["before"] == ""
    assert json.loads(state_diff["after"])["active"] == "green"
    assert not edge.state_file.parent.exists() or not any(edge.state_file.parent.iterdir())


def test_check_mode_predicts_an_unhealthy_target(edge: Edge) -> None:
    edge.unhealthy.add("app2:25002")
    with pytest.raises(SwitchError, match="app2:25002"):
        switch(edge, check_mode=True)


def test_an_unhealthy_backend_stops_the_switch_before_any_change(edge: Edge) -> None:
    old = edge.upstream.read_text()
    edge.unhealthy.add("app2:25002")
    with pytest.raises(SwitchError) as failure:
        switch(edge)
    message = str(failure.value)
    assert "api-gateway: backend app2:25002 (green) is not healthy" in message
    assert "http://app2:25002/health" in message
    assert "last answer: status 503" in message
    assert "traffic stays as it was (blue 100 / green 0)" in message
    assert edge.upstream.read_text() == old
    assert edge.commands == []
    assert not edge.state_file.exists()
    details = failure.value.details
    assert [h["ok"] for h in details["health"]] == [True, False]
    assert "health_gate_s" in details["timings"]


def test_nginx_t_failure_restores_the_file_and_never_reloads(edge: Edge) -> None:
    old = edge.upstream.read_text()
    edge.fail["test"] = (1, 'nginx: [emerg] host not found in upstream "app9:25002"')
    with pytest.raises(SwitchError) as failure:
        switch(edge)
    assert "rejected the new upstream" in str(failure.value)
    assert "host not found" in str(failure.value)
    assert edge.upstream.read_text() == old
    assert ["systemctl", "reload", "nginx"] not in edge.commands
    assert edge.leftovers() == []
    assert not edge.state_file.exists()
    assert "restored the previous" in " ".join(failure.value.details["actions"])


def test_a_failed_reload_restores_and_reloads_the_old_file(edge: Edge) -> None:
    old = edge.upstream.read_text()
    edge.fail["reload"] = (1, "Job for nginx.service failed")
    with pytest.raises(SwitchError, match=re.escape("failed (Job for nginx.service failed)")):
        switch(edge)
    assert edge.upstream.read_text() == old
    assert edge.commands.count(["systemctl", "reload", "nginx"]) == 2
    assert not edge.state_file.exists()
    assert edge.leftovers() == []


def test_a_failed_verification_restores_reloads_and_fails(edge: Edge) -> None:
    old = edge.upstream.read_text()
    edge.edge_colour = lambda _n: "blue"  # the edge keeps answering from blue
    with pytest.raises(SwitchError) as failure:
        switch(edge)
    message = str(failure.value)
    assert "verify through the edge failed" in message
    assert "X-Venta-Colour green 3 time(s) in a row within 10 requests" in message
    assert "{'blue': 10}" in message
    assert edge.upstream.read_text() == old
    assert edge.commands.count(["systemctl", "reload", "nginx"]) == 2
    assert edge.live == "blue"
    assert not edge.state_file.exists()


def test_verification_waits_for_the_new_workers(edge: Edge) -> None:
    edge.edge_colour = lambda n: "blue" if n <= 2 else "green"  # old workers answer first
    result = switch(edge)
    assert result["verify"]["colours_seen"] == {"blue": 2, "green": 3}
    assert result["verify"]["requests"] == 5


def test_a_canary_accepts_both_colours(edge: Edge) -> None:
    edge.edge_colour = lambda n: "green" if n % 2 else "blue"
    result = switch(edge, weights={"blue": 90, "green": 10})
    assert result["verify"]["expected_colours"] == ["blue", "green"]


def test_other_services_in_the_state_are_untouched(edge: Edge) -> None:
    edge.state_file.parent.mkdir()
    other = {"weights": {"blue": 0, "green": 100}, "custom": {"kept": [1, 2]}}
    edge.state_file.write_text(json.dumps({"services": {"webhooks": other}, "note": "x"}))
    switch(edge)
    state = edge.state()
    assert state["services"]["webhooks"] == other
    assert state["note"] == "x"


def test_a_rollback_needs_only_weights(edge: Edge) -> None:
    switch(edge)
    result = switch(edge, weights={"blue": 100}, backends=None, versions={})
    entry = edge.state()["services"]["api-gateway"]
    assert entry["backends"] == BACKENDS
    assert (entry["active"], entry["previous"]) == ("blue", "green")
    assert entry["versions"] == {"green": "1.1.0"}
    assert result["before"]["active"] == "green"


def test_new_versions_alone_are_recorded_without_a_reload(edge: Edge) -> None:
    switch(edge)
    edge.commands.clear()
    result = switch(edge, versions={"blue": "1.2.0", "green": None})
    assert result["changed"] is True
    assert edge.commands == []
    entry = edge.state()["services"]["api-gateway"]
    assert entry["versions"] == {"blue": "1.2.0", "green": "1.1.0"}
    assert len(entry["history"]) == 1


def test_colour_and_version_headers_are_checked(edge: Edge) -> None:
    checks = [
        {"path": "/health", "colour_header": "X-Venta-Colour", "version_header": "X-Venta-Version"}
    ]
    assert switch(edge, health_checks=checks)["changed"] is True
    with pytest.raises(
        SwitchError, match=re.escape("header X-Venta-Version is '1.1.0', not '9.9.9'")
    ):
        switch(
            edge,
            weights={"blue": 10, "green": 90},
            health_checks=checks,
            versions={"green": "9.9.9"},
        )


def test_a_url_check_runs_once_for_its_colour(edge: Edge) -> None:
    checks = [{"url": "http://app1:25002/ready", "colour": "green"}]
    result = switch(edge, health_checks=checks)
    assert [h["url"] for h in result["health"]] == ["http://app1:25002/ready"]


def test_a_live_colour_without_any_check_is_refused(edge: Edge) -> None:
    checks = [{"url": "http://app1:25002/ready", "colour": "green"}]
    with pytest.raises(SwitchError, match="no health check applies to blue"):
        switch(edge, weights={"blue": 90, "green": 10}, health_checks=checks)
    assert edge.commands == []


def test_a_missing_upstream_directory_is_explained(edge: Edge, tmp_path: Path) -> None:
    with pytest.raises(SwitchError, match="nginx_edge role first"):
        switch(edge, upstream_dir=str(tmp_path / "nope"))


def test_a_broken_state_file_is_refused_before_any_change(edge: Edge) -> None:
    edge.state_file.parent.mkdir()
    edge.state_file.write_text("{broken")
    old = edge.upstream.read_text()
    with pytest.raises(SwitchError, match="is not valid JSON"):
        switch(edge)
    assert edge.upstream.read_text() == old
    assert edge.fetches == []


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"weights": {"blue": 50, "green": 60}}, "weights must add up to 100"),
        ({"weights": {"blue": -10, "green": 110}}, "weights.blue must be between 0 and 100"),
        ({"weights": {"red": 100}}, "unknown colour"),
        ({"service": "API"}, "service 'API' is not a service name"),
        (
            {"backends": {"blue": ["app1"], "green": None}},
            "backends.blue: \\['app1'\\] are not host:port",
        ),
        ({"backends": {"blue": ["a:1"], "green": ["a:1"]}}, "in both colours"),
        ({"backends": {"blue": ["a:1", "a:1"], "green": None}}, "twice"),
        ({"health_checks": []}, "health_checks is empty"),
        ({"health_checks": [{"path": "/h", "url": "http://a:1/"}]}, "either url"),
        ({"health_checks": [{"url": "http://a:1/"}]}, "needs colour"),
        ({"health_checks": [{"path": "health"}]}, "must start with /"),
        ({"verify_url": "ftp://x/"}, "verify_url"),
        ({"verify_successes": 30}, "verify_successes cannot exceed verify_requests"),
        ({"fail_timeout": "soon"}, "nginx_edge_upstream_fail_timeout"),
        ({"health_successes": 0}, "successes must be at least 1"),
    ],
)
def test_bad_input_names_the_option(edge: Edge, overrides: dict, message: str) -> None:
    with pytest.raises(SwitchError, match=message):
        build_request(params(edge, **overrides))


def test_a_live_colour_without_backends_is_refused(edge: Edge) -> None:
    with pytest.raises(SwitchError, match=re.escape("backends.green is empty")):
        switch(edge, backends={"blue": BACKENDS["blue"], "green": []})
    assert edge.commands == []


def test_no_backends_anywhere_is_refused(edge: Edge) -> None:
    with pytest.raises(SwitchError, match="no backends given and none recorded"):
        switch(edge, backends=None)


def test_a_failed_state_write_restores_the_traffic(
    edge: Edge, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ansible_collections.venta.deploy.plugins.module_utils import docker_switch

    def refuse(path: str, text: str, mode: int = 0o644) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(docker_switch, "write_atomic", refuse)
    old = edge.upstream.read_text()
    with pytest.raises(SwitchError, match="No space left on device") as failure:
        switch(edge)
    assert "the previous upstream is back (nginx reloaded with it)" in str(failure.value)
    assert edge.upstream.read_text() == old
    assert edge.live == "blue"
    assert edge.leftovers() == []
