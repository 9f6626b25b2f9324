"""Batch switches (`services`): one lock, one gate, one nginx -t, one reload, all or nothing."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from ansible_collections.venta.deploy.plugins.module_utils import docker_switch
from ansible_collections.venta.deploy.plugins.module_utils.docker_switch import (
    BatchSwitcher,
    SwitchError,
    build_batch,
    build_request,
    is_batch,
    run_switch,
)
from ansible_collections.venta.deploy.plugins.module_utils.health_gate import Answer, HttpOptions
from ansible_collections.venta.deploy.plugins.module_utils.nginx_upstream import (
    UpstreamSettings,
    parse_weights,
    render_upstream,
)

# Service -> its port (blue slot: port + 10000, green: + 20000), as in the catalog.
PORTS = {"api-gateway": 5002, "geolocation": 5001, "search": 5003}
TEST = ["/usr/sbin/nginx", "-t"]
RELOAD = ["systemctl", "reload", "nginx"]
GREEN = {"blue": 0, "green": 100}
BLUE = {"blue": 100, "green": 0}


def backends(service: str) -> dict[str, list[str]]:
    port = PORTS[service]
    return {
        "blue": [f"app1:{port + 10000}", f"app2:{port + 10000}"],
        "green": [f"app1:{port + 20000}", f"app2:{port + 20000}"],
    }


def verify_url(service: str) -> str:
    return f"https://127.0.0.1/_venta/{service}/health"


class Edge:
    """A fake edge with several services: commands, HTTP answers and what nginx has loaded."""

    def __init__(self, tmp_path: Path) -> None:
        self.upstreams = tmp_path / "upstreams"
        self.upstreams.mkdir()
        self.state_file = tmp_path / "facts.d" / "venta_release.fact"
        self.commands: list[list[str]] = []
        self.fail: dict[str, tuple[int, str]] = {}
        self.unhealthy: set[str] = set()
        # service -> colour the edge answers with, whatever nginx loaded (a broken route)
        self.edge_colour: dict[str, Callable[[int], str]] = {}
        self.loaded: dict[str, str] = {}  # service -> colour nginx serves
        self.verify_calls: dict[str, int] = {}
        self.fetches: list[str] = []
        self.headers_seen: dict[str, dict[str, str]] = {}

    def run(self, argv: Sequence[str]) -> tuple[int, str, str]:
        self.commands.append(list(argv))
        kind = "test" if argv[-1] == "-t" else "reload"
        rc, err = self.fail.get(kind, (0, ""))
        if kind == "reload" and rc == 0:
            self.loaded = {service: self.colour_of_file(service) for service in PORTS}
        return rc, "", err

    def colour_of_file(self, service: str) -> str:
        path = self.upstream(service)
        weights = parse_weights(path.read_text()) if path.exists() else None
        return "green" if weights and weights["green"] > weights["blue"] else "blue"

    def fetch(self, url: str, options: HttpOptions, timeout: float) -> Answer:
        self.fetches.append(url)
        for service in PORTS:
            if url.startswith(f"https://127.0.0.1/_venta/{service}/"):
                count = self.verify_calls[service] = self.verify_calls.get(service, 0) + 1
                self.headers_seen[service] = dict(options.headers)
                broken = self.edge_colour.get(service)
                colour = broken(count) if broken else self.loaded.get(service, "blue")
                return Answer(200, {"X-Venta-Colour": colour}, "{}", 2.0)
        backend = url.split("/")[2]
        if backend in self.unhealthy:
            return Answer(503, {}, '{"status":"unhealthy"}', 1.0)
        colour = "green" if backend.split(":")[1].startswith("2") else "blue"
        return Answer(200, {"X-Venta-Colour": colour}, '{"status":"ok"}', 1.0)

    def upstream(self, service: str) -> Path:
        return self.upstreams / f"{service}.conf"

    def texts(self) -> dict[str, str]:
        return {p.name: p.read_text() for p in sorted(self.upstreams.iterdir()) if p.is_file()}

    def state(self) -> dict[str, Any]:
        return json.loads(self.state_file.read_text())

    def leftovers(self) -> list[str]:
        return sorted(p.name for p in self.upstreams.iterdir() if not p.name.endswith(".conf"))


def item(service: str, weights: dict[str, int] | None = None, **overrides: Any) -> dict[str, Any]:
    """An item of `services`: green gets 100 unless `weights` says otherwise."""
    raw: dict[str, Any] = {
        "service": service,
        "weights": dict(weights or GREEN),
        "backends": backends(service),
        "versions": None,
        "health_checks": None,
        "verify_url": verify_url(service),
        "verify_headers": None,
    }
    raw.update(overrides)
    return raw


def params(edge: Edge, services: list[dict[str, Any]] | None, **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "service": None,
        "services": services,
        "weights": None,
        "backends": None,
        "versions": {},
        "health_checks": None,
        "health_successes": 2,
        "health_interval": 0.0,
        "health_timeout": 1.0,
        "upstream_dir": str(edge.upstreams),
        "state_file": str(edge.state_file),
        "test_command": TEST,
        "reload_command": RELOAD,
        "verify_url": None,
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


def switch(
    edge: Edge, services: list[dict[str, Any]], check_mode: bool = False, **overrides: Any
) -> dict[str, Any]:
    clock = Clock()
    switcher = BatchSwitcher(
        build_batch(params(edge, services, **overrides)),
        edge.run,
        check_mode=check_mode,
        fetcher=edge.fetch,
        clock=clock,
        sleep=clock.sleep,
        now=lambda: "2025-01-01T12:00:00Z",
    )
    return switcher.run()


def role_text(service: str, weights: dict[str, int], source: str) -> str:
    return render_upstream(service, backends(service), weights, source, UpstreamSettings())


@pytest.fixture
def edge(tmp_path: Path) -> Edge:
    edge = Edge(tmp_path)
    # What the nginx_edge role wrote from the inventory before any switch: blue everywhere.
    for service in PORTS:
        edge.upstream(service).write_text(role_text(service, BLUE, "the inventory (...)"))
    edge.loaded = dict.fromkeys(PORTS, "blue")
    return edge


ALL = ["api-gateway", "geolocation", "search"]


def test_a_batch_tests_and_reloads_once_and_records_every_service(edge: Edge) -> None:
    result = switch(edge, [item(service) for service in ALL])
    assert result["changed"] is True
    assert edge.commands == [TEST, RELOAD]
    for service in ALL:
        assert edge.upstream(service).read_text() == role_text(service, GREEN, str(edge.state_file))
    entries = edge.state()["services"]
    assert sorted(entries) == ALL
    for service in ALL:
        assert entries[service]["weights"] == GREEN
        assert (entries[service]["active"], entries[service]["previous"]) == ("green", "blue")
        assert entries[service]["backends"] == backends(service)
    assert edge.loaded == dict.fromkeys(ALL, "green")
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
    assert [s["service"] for s in result["services"]] == ALL
    first = result["services"][0]
    assert set(first) == {
        "service",
        "upstream_file",
        "state_file",
        "before",
        "after",
        "state",
        "changed",
    }
    assert first["before"] == {"weights": BLUE, "active": None}
    assert first["after"] == {"weights": GREEN, "active": "green"}
    assert first["upstream_file"] == str(edge.upstream("api-gateway"))
    assert all(s["changed"] for s in result["services"])
    # One gate over all targets, each result tagged with its service.
    assert [(h["service"], h["backend"]) for h in result["health"]] == [
        (service, backend) for service in ALL for backend in backends(service)["green"]
    ]
    assert sorted(result["verify"]) == ALL
    assert result["verify"]["search"]["colours_seen"] == {"green": 3}
    actions = " | ".join(result["actions"])
    for service in ALL:
        assert service in actions
    assert result["actions"].count(" ".join(TEST) + ": ok") == 1
    assert edge.leftovers() == []
    assert len(result["diff"]) == 2 * len(ALL)


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
    assert sorted(edge.state()["services"]) == ["api-gateway", "geolocation"]


def test_a_second_identical_batch_touches_nothing(edge: Edge) -> None:
    services = [item(service) for service in ALL]
    switch(edge, services)
    edge.commands.clear()
    edge.fetches.clear()
    before = edge.texts(), edge.state_file.stat().st_mtime_ns
    result = switch(edge, services)
    assert result["changed"] is False
    assert edge.commands == []
    assert edge.fetches == []
    assert (edge.texts(), edge.state_file.stat().st_mtime_ns) == before
    assert result["actions"] == [f"{service}: unchanged, not touched" for service in ALL]
    assert result["diff"] == []
    assert result["health"] == []


def test_one_unhealthy_service_stops_the_whole_batch_before_any_write(edge: Edge) -> None:
    before = edge.texts()
    edge.unhealthy.add("app2:25001")
    with pytest.raises(SwitchError) as failure:
        switch(edge, [item(service) for service in ALL])
    message = str(failure.value)
    assert message.startswith("health gate failed for geolocation, so no upstream was written")
    assert "geolocation: backend app2:25001 (green) is not healthy" in message
    assert "http://app2:25001/health" in message
    assert "last answer: status 503" in message
    assert "traffic stays as it was (blue 100 / green 0)" in message
    assert edge.texts() == before
    assert edge.commands == []
    assert not edge.state_file.exists()
    details = failure.value.details
    assert {h["service"] for h in details["health"]} == set(ALL)
    assert [h["backend"] for h in details["health"] if not h["ok"]] == ["app2:25001"]
    assert "health_gate_s" in details["timings"]


def test_nginx_t_failure_restores_every_file_and_never_reloads(edge: Edge) -> None:
    before = edge.texts()
    edge.fail["test"] = (1, 'nginx: [emerg] host not found in upstream "app9:25002"')
    with pytest.raises(SwitchError) as failure:
        switch(edge, [item(service) for service in ALL])
    message = str(failure.value)
    assert message.startswith(
        "/usr/sbin/nginx -t rejected the new upstreams of api-gateway, geolocation, search"
    )
    assert "host not found" in message
    assert "every previous file is back (but nginx -t fails on them" in message
    assert edge.texts() == before
    assert RELOAD not in edge.commands
    assert edge.commands == [TEST, TEST]
    assert not edge.state_file.exists()
    restored = [a for a in failure.value.details["actions"] if a.startswith("restored")]
    assert len(restored) == len(ALL)


def test_a_failed_reload_restores_every_file_and_reloads_again(edge: Edge) -> None:
    before = edge.texts()
    edge.fail["reload"] = (1, "Job for nginx.service failed")
    with pytest.raises(
        SwitchError, match=re.escape("failed (Job for nginx.service failed) after writing")
    ) as failure:
        switch(edge, [item(service) for service in ALL])
    assert "every previous upstream is back" in str(failure.value)
    assert edge.texts() == before
    assert edge.commands == [TEST, RELOAD, TEST, RELOAD]
    assert not edge.state_file.exists()
    assert edge.leftovers() == []


def test_one_failed_verification_restores_every_service_with_one_more_reload(edge: Edge) -> None:
    before = edge.texts()
    edge.edge_colour["geolocation"] = lambda _n: "blue"  # its route still answers from blue
    with pytest.raises(SwitchError) as failure:
        switch(edge, [item(service) for service in ALL])
    message = str(failure.value)
    assert message.startswith("verify through the edge failed for geolocation: geolocation: ")
    assert verify_url("geolocation") in message
    assert "X-Venta-Colour green 3 time(s) in a row within 10 requests" in message
    assert "{'blue': 10}" in message
    assert "api-gateway:" not in message.split(". Every upstream", maxsplit=1)[0]
    assert (
        "Every upstream of the batch (api-gateway, geolocation, search) is back "
        "(nginx reloaded with them)" in message
    )
    assert edge.texts() == before
    assert edge.commands == [TEST, RELOAD, TEST, RELOAD]
    assert edge.loaded == dict.fromkeys(ALL, "blue")
    assert not edge.state_file.exists()
    assert edge.leftovers() == []
    verify = failure.value.details["verify"]
    assert sorted(verify) == ALL  # every service was verified (in parallel)
    assert verify["geolocation"]["consecutive_successes"] == 0
    assert verify["search"]["colours_seen"] == {"green": 3}


def test_a_failed_state_write_restores_every_service(
    edge: Edge, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(path: str, text: str, mode: int = 0o644) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(docker_switch, "write_atomic", refuse)
    before = edge.texts()
    with pytest.raises(SwitchError) as failure:
        switch(edge, [item(service) for service in ALL])
    message = str(failure.value)
    assert "api-gateway, geolocation, search: cannot record" in message
    assert "No space left on device" in message
    assert "every previous upstream is back (nginx reloaded with them)" in message
    assert edge.texts() == before
    assert edge.loaded == dict.fromkeys(ALL, "blue")
    assert edge.commands == [TEST, RELOAD, TEST, RELOAD]
    assert edge.leftovers() == []


def test_a_failed_write_puts_back_the_files_written_before_it(edge: Edge) -> None:
    before = edge.texts()
    # The backup of geolocation's file cannot be made (a directory is in the way).
    (edge.upstreams / "geolocation.conf.switch~").mkdir()
    with pytest.raises(SwitchError) as failure:
        switch(edge, [item("api-gateway"), item("geolocation")])
    message = str(failure.value)
    assert "geolocation: cannot write" in message
    assert "the upstream(s) written before it (api-gateway) are put back" in message
    assert edge.texts() == before
    assert edge.commands == []
    assert not edge.state_file.exists()


def test_check_mode_probes_but_writes_nothing(edge: Edge) -> None:
    before = edge.texts()
    result = switch(edge, [item("api-gateway"), item("search")], check_mode=True)
    assert result["changed"] is True
    assert edge.texts() == before
    assert edge.commands == []
    assert not edge.state_file.exists()
    assert {h["service"] for h in result["health"]} == {"api-gateway", "search"}
    assert result["verify"] == {}
    assert [d["before_header"] for d in result["diff"]] == [
        str(edge.upstream("api-gateway")),
        f"{edge.state_file} services.api-gateway",
        str(edge.upstream("search")),
        f"{edge.state_file} services.search",
    ]
    assert "# green" in result["diff"][0]["after"]
    assert json.loads(result["diff"][3]["after"])["active"] == "green"
    assert result["actions"][-1] == (
        "check mode: nothing written, nginx not reloaded (api-gateway, search would change)"
    )


def test_new_versions_alone_are_recorded_without_a_reload(edge: Edge) -> None:
    switch(edge, [item("api-gateway"), item("geolocation")])
    edge.commands.clear()
    result = switch(
        edge,
        [
            item("api-gateway", versions={"blue": "1.2.0", "green": None}),
            item("geolocation"),
        ],
    )
    assert result["changed"] is True
    assert [s["changed"] for s in result["services"]] == [True, False]
    assert edge.commands == []
    assert edge.state()["services"]["api-gateway"]["versions"] == {"blue": "1.2.0"}
    assert result["actions"][-1] == (
        f"recorded the release state of api-gateway in {edge.state_file}"
    )


def test_a_rollback_of_several_services_needs_only_weights(edge: Edge) -> None:
    switch(edge, [item(service) for service in ALL])
    edge.commands.clear()
    result = switch(edge, [item(service, BLUE, backends=None) for service in ALL])
    assert edge.commands == [TEST, RELOAD]
    for service in ALL:
        entry = edge.state()["services"][service]
        assert (entry["active"], entry["previous"]) == ("blue", "green")
        assert entry["backends"] == backends(service)
    assert [s["before"]["active"] for s in result["services"]] == ["green"] * 3


def test_items_override_the_top_level_checks_and_verification(edge: Edge) -> None:
    services = [
        # inherits the top-level health_checks, verify_url is its own, headers inherited
        item("api-gateway", verify_url=verify_url("api-gateway")),
        # its own url check, verify URL and headers
        item(
            "geolocation",
            health_checks=[{"url": "http://app1:25001/ready", "colour": "green"}],
            verify_url="https://127.0.0.1/_venta/geolocation/ready",
            verify_headers={"Host": "geo.example"},
        ),
        item("search", verify_url=None),  # inherits the top-level verify_url: none
    ]
    result = switch(
        edge,
        services,
        health_checks=[{"path": "/ready"}],
        verify_headers={"Host": "edge.example"},
    )
    urls = {(h["service"], h["url"]) for h in result["health"]}
    assert ("geolocation", "http://app1:25001/ready") in urls
    assert ("api-gateway", "http://app2:25002/ready") in urls
    assert ("search", "http://app1:25003/ready") in urls
    assert len(urls) == 5
    assert result["verify"]["geolocation"]["url"] == "https://127.0.0.1/_venta/geolocation/ready"
    assert edge.headers_seen["geolocation"] == {"Host": "geo.example"}
    assert edge.headers_seen["api-gateway"] == {"Host": "edge.example"}
    assert "search" not in result["verify"]
    assert "search: no verify_url: traffic not verified through the edge" in result["actions"]


def test_a_top_level_verify_url_is_the_default_of_every_item(edge: Edge) -> None:
    edge_url = "https://127.0.0.1/_venta/search/health"
    result = switch(edge, [item("search", verify_url=None)], verify_url=edge_url)
    assert result["verify"]["search"]["url"] == edge_url


def test_duplicate_services_are_refused(edge: Edge) -> None:
    with pytest.raises(SwitchError) as failure:
        build_batch(params(edge, [item("api-gateway"), item("search"), item("api-gateway")]))
    message = str(failure.value)
    assert message.startswith("services[2] (api-gateway): service api-gateway is listed twice")
    assert "also services[0]" in message


@pytest.mark.parametrize(
    ("services", "overrides", "message"),
    [
        (
            [item("api-gateway"), item("geolocation", {"blue": 50, "green": 60})],
            {},
            r"services\[1\] \(geolocation\): weights must add up to 100",
        ),
        (
            [item("api-gateway"), {**item("geolocation"), "weights": None}],
            {},
            r"services\[1\] \(geolocation\): weights is required",
        ),
        (
            [{**item("search"), "service": "API"}],
            {},
            r"services\[0\] \(API\): service 'API' is not a service name",
        ),
        (
            [item("search", health_checks=[{"path": "ready"}])],
            {},
            r"services\[0\] \(search\): health_checks\[0\].path must start with /",
        ),
        (
            [item("search", verify_url="ftp://x/")],
            {},
            r"services\[0\] \(search\): verify_url",
        ),
        ([item("search", health_checks=[])], {}, r"services\[0\] \(search\): health_checks is"),
        ([item("search", colour="blue")], {}, r"services\[0\] \(search\): unknown option"),
        ([item("search")], {"health_checks": [{"path": "ready"}]}, r"^health_checks\[0\]"),
        ([], {}, "services is empty"),
        ([item("search")], {"weights": GREEN}, r"weights belongs in each item of services"),
        ([item("search")], {"versions": {"green": "1"}}, r"versions belongs in each item"),
        ([item("search")], {"verify_successes": 30}, "^verify_successes cannot exceed"),
    ],
)
def test_bad_batches_name_the_option_and_the_item(
    edge: Edge, services: list, overrides: dict, message: str
) -> None:
    with pytest.raises(SwitchError, match=message):
        build_batch(params(edge, services, **overrides))


def test_plan_errors_name_the_item(edge: Edge) -> None:
    edge.upstream("search").unlink()
    with pytest.raises(SwitchError, match=r"^services\[1\] \(search\): no backends given"):
        switch(edge, [item("api-gateway"), item("search", backends=None)])
    assert edge.commands == []


def test_service_and_services_together_or_neither_are_refused(edge: Edge) -> None:
    both = params(edge, [item("search")], service="search", weights=GREEN)
    neither = params(edge, None)
    for bad in (both, neither):
        with pytest.raises(
            SwitchError, match=r"give service \(with weights\) to switch one service"
        ):
            is_batch(bad)
        with pytest.raises(SwitchError, match="service"):
            run_switch(bad, edge.run)
        with pytest.raises(SwitchError):
            build_batch(bad)
        with pytest.raises(SwitchError):
            build_request(bad)
    with pytest.raises(SwitchError, match="mutually exclusive"):
        is_batch(both)
    assert edge.commands == []


def test_run_switch_runs_a_batch_or_one_service(edge: Edge) -> None:
    clock = Clock()
    fakes = {"fetcher": edge.fetch, "clock": clock, "sleep": clock.sleep}
    batch = run_switch(params(edge, [item("search")]), edge.run, **fakes)
    assert [s["service"] for s in batch["services"]] == ["search"]
    single = params(
        edge,
        None,
        service="geolocation",
        weights=GREEN,
        backends=backends("geolocation"),
        verify_url=verify_url("geolocation"),
    )
    result = run_switch(single, edge.run, **fakes)
    assert result["service"] == "geolocation"
    assert "services" not in result
    assert sorted(edge.state()["services"]) == ["geolocation", "search"]


def test_a_batch_takes_the_lock_of_the_single_mode_once(
    edge: Edge, monkeypatch: pytest.MonkeyPatch
) -> None:
    used: list[str] = []
    real = docker_switch.exclusive_lock

    def spy(path: str, timeout: float) -> Any:
        used.append(path)
        return real(path, timeout)

    monkeypatch.setattr(docker_switch, "exclusive_lock", spy)
    switch(edge, [item("search"), item("geolocation")])
    assert used == [f"{edge.state_file}.lock"]  # one lock, the one the single mode takes
