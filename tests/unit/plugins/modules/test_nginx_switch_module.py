"""venta.deploy.nginx_switch as Ansible runs it: a fake `nginx` in tmp_path, real HTTP on loopback.

The fake nginx answers `-t` by checking the upstream files (exit 1 when one names a backend
marked bad), and `reload` by copying the upstream files to a "loaded" directory, which the fake
edge (an HTTP server) reads to decide which colour answers /_venta/<service>/health. That is
enough to prove the module's order of operations, undo, recovery and results;
tests/unit/plugins/module_utils covers the logic and molecule/switch the real nginx.
"""

from __future__ import annotations

import http.server
import json
import re
import threading
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from ansible.module_utils.testing import patch_module_args
from ansible_collections.venta.deploy.plugins.module_utils import switch_intent
from ansible_collections.venta.deploy.plugins.modules import nginx_switch

FAKE_NGINX = """#!/bin/sh
# fake nginx for unit tests: -t checks the upstream files, reload "loads" them
set -eu
dir="{upstreams}"
log="{log}"
echo "$*" >>"$log"
if [ "$1" = "-t" ]; then
  if grep -l "bad-backend" "$dir"/*.conf >/dev/null 2>&1; then
    echo 'nginx: [emerg] host not found in upstream "bad-backend:1"' >&2
    exit 1
  fi
  echo "nginx: configuration file /etc/nginx/nginx.conf test is successful" >&2
  exit 0
fi
if [ "$1" = "reload" ]; then
  mkdir -p "{loaded}"
  cp "$dir"/*.conf "{loaded}"/
  exit 0
fi
exit 2
"""
SERVICES = ("api-gateway", "geolocation")
BLUE = {"blue": 100, "green": 0}
GREEN = {"blue": 0, "green": 100}


class Colour(http.server.BaseHTTPRequestHandler):
    """A backend of one colour, or (with `loaded`) the edge: /_venta/<service>/... answers with
    the colour of the service's loaded upstream file."""

    colour = "blue"
    loaded: Path | None = None

    def do_GET(self) -> None:
        colour = self.colour
        if self.loaded is not None:
            text = (self.loaded / f"{self.path.split('/')[2]}.conf").read_text()
            live = re.findall(r"weight=\d+ max_fails=\S+ \S+ # (\w+)", text)
            colour = live[0] if len(set(live)) == 1 else "mixed"
        body = json.dumps({"status": "ok", "colour": colour}).encode()
        self.send_response(200)
        self.send_header("X-Venta-Colour", colour)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return


def start(handler: type[http.server.BaseHTTPRequestHandler]) -> http.server.ThreadingHTTPServer:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class FakeEdge:
    """An edge with two services, blue live for both (written by the role, loaded by nginx)."""

    def __init__(self, tmp_path: Path) -> None:
        self.upstreams = tmp_path / "upstreams"
        self.upstreams.mkdir()
        self.loaded = tmp_path / "loaded"
        self.loaded.mkdir()
        self.state_file = tmp_path / "facts.d" / "venta_release.fact"
        self.intent_file = Path(f"{self.state_file}.intent")
        self.log = tmp_path / "nginx.log"
        self.nginx = tmp_path / "nginx"
        self.nginx.write_text(
            FAKE_NGINX.format(upstreams=self.upstreams, log=self.log, loaded=self.loaded)
        )
        self.nginx.chmod(0o755)
        self.servers: list[http.server.ThreadingHTTPServer] = []
        self.slots = {
            service: {"blue": [self.backend("blue")], "green": [self.backend("green")]}
            for service in SERVICES
        }
        self.edge = start(type("Edge", (Colour,), {"loaded": self.loaded}))
        self.servers.append(self.edge)
        for service, slots in self.slots.items():
            text = (
                f"upstream venta_{service.replace('-', '_')} {{\n"
                f"    server {slots['blue'][0]} weight=100 max_fails=3 fail_timeout=10s; # blue\n"
                f"    server {slots['green'][0]} down; # green\n"
                "}\n"
            )
            self.upstreams.joinpath(f"{service}.conf").write_text(text)
            self.loaded.joinpath(f"{service}.conf").write_text(text)

    def backend(self, colour: str) -> str:
        server = start(type(f"{colour}Backend", (Colour,), {"colour": colour}))
        self.servers.append(server)
        return f"127.0.0.1:{server.server_address[1]}"

    def item(self, service: str, **overrides: object) -> dict:
        item: dict = {
            "service": service,
            "weights": GREEN,
            "backends": self.slots[service],
            "versions": {"green": "1.1.0"},
        }
        item.update(overrides)
        return item

    def args(self, services: list[dict], **overrides: object) -> dict:
        port = self.edge.server_address[1]
        args: dict = {
            "services": services,
            "health_checks": [{"path": "/health", "json_match": {"status": "ok"}}],
            "health_successes": 2,
            "health_interval": 0.01,
            "upstream_dir": str(self.upstreams),
            "state_file": str(self.state_file),
            "test_command": [str(self.nginx), "-t"],
            "reload_command": [str(self.nginx), "reload"],
            "verify_url_pattern": f"http://127.0.0.1:{port}/_venta/{{service}}/health",
            "verify_interval": 0.01,
        }
        args.update(overrides)
        return args

    def texts(self, where: Path) -> dict[str, str]:
        return {s: where.joinpath(f"{s}.conf").read_text() for s in SERVICES}

    def calls(self) -> list[str]:
        return self.log.read_text().split("\n")[:-1] if self.log.exists() else []

    def state(self) -> dict:
        return json.loads(self.state_file.read_text())

    def close(self) -> None:
        # In parallel: each shutdown waits for its server's poll interval (0.5 s).
        stopping = [threading.Thread(target=server.shutdown) for server in self.servers]
        for thread in stopping:
            thread.start()
        for thread in stopping:
            thread.join()
        for server in self.servers:
            server.server_close()


@pytest.fixture
def edge(tmp_path: Path) -> Iterator[FakeEdge]:
    edge = FakeEdge(tmp_path)
    yield edge
    edge.close()


def test_switch_then_an_identical_switch(edge: FakeEdge, module_runner: Callable) -> None:
    args = edge.args([edge.item("api-gateway")], action="release", run_id="r-1")
    result = module_runner(nginx_switch.main, **args)
    assert result.get("failed") is not True, result
    assert result["changed"] is True
    assert edge.calls() == ["-t", "reload"]
    assert result["verify"]["api-gateway"]["colours_seen"] == {"green": 3}
    (service,) = result["services"]
    assert service["before"]["weights"] == BLUE
    assert service["after"] == {"weights": GREEN, "active": "green"}
    assert "diff" not in result
    assert result["recovered"] == {}
    entry = edge.state()["services"]["api-gateway"]
    assert entry["previous"] == "blue"
    assert (entry["last_action"]["kind"], entry["last_action"]["run_id"]) == ("release", "r-1")
    assert edge.texts(edge.loaded)["api-gateway"] == edge.texts(edge.upstreams)["api-gateway"]
    assert not edge.intent_file.exists()
    assert result["timings"]["switch_s"] < 1.0

    again = module_runner(nginx_switch.main, **args)
    assert again["changed"] is False
    assert edge.calls() == ["-t", "reload"]


def test_check_mode_with_diff(edge: FakeEdge, module_runner: Callable) -> None:
    before = edge.texts(edge.upstreams)
    result = module_runner(
        nginx_switch.main,
        **edge.args([edge.item("api-gateway")]),
        _ansible_check_mode=True,
        _ansible_diff=True,
    )
    assert result["changed"] is True
    assert edge.calls() == []
    assert not edge.state_file.parent.exists()
    assert edge.texts(edge.upstreams) == before
    assert result["diff"][0]["before"] == before["api-gateway"]
    assert "# green" in result["diff"][0]["after"]
    assert '"active": "green"' in result["diff"][1]["after"]
    assert len(result["health"]) == 1


def test_nginx_t_failure_puts_the_old_file_back(edge: FakeEdge, module_runner: Callable) -> None:
    before = edge.texts(edge.upstreams)
    backends = {"blue": ["bad-backend:1"], "green": edge.slots["api-gateway"]["green"]}
    result = module_runner(
        nginx_switch.main, **edge.args([edge.item("api-gateway", backends=backends)])
    )
    assert result["failed"] is True
    assert 'host not found in upstream "bad-backend:1"' in result["msg"]
    assert "every previous upstream is back (nginx was not reloaded)" in result["msg"]
    assert edge.texts(edge.upstreams) == before
    assert edge.calls() == ["-t", "-t"]  # the new file, then the restored one; never a reload
    assert sorted(p.name for p in edge.upstreams.iterdir()) == [f"{s}.conf" for s in SERVICES]
    assert not edge.intent_file.exists()


def test_unhealthy_target_fails_before_touching_anything(
    edge: FakeEdge, module_runner: Callable
) -> None:
    result = module_runner(
        nginx_switch.main,
        **edge.args(
            [edge.item("api-gateway")],
            health_checks=[{"path": "/health", "json_match": {"colour": "purple"}}],
            health_timeout=0.3,
        ),
    )
    assert result["failed"] is True
    green = edge.slots["api-gateway"]["green"][0]
    assert f"api-gateway: backend {green} (green) is not healthy" in result["msg"]
    assert "JSON colour == 'purple'" in result["msg"]
    assert edge.calls() == []
    assert result["health"][0]["ok"] is False
    assert not edge.intent_file.exists()


def test_verify_failure_restores_and_reloads(edge: FakeEdge, module_runner: Callable) -> None:
    before = edge.texts(edge.upstreams)
    result = module_runner(
        nginx_switch.main,
        **edge.args(
            [edge.item("api-gateway")], verify_colour_header="X-Not-There", verify_requests=4
        ),
    )
    assert result["failed"] is True
    assert "verify through the edge failed" in result["msg"]
    assert edge.texts(edge.upstreams) == before
    assert edge.texts(edge.loaded) == before
    assert edge.calls() == ["-t", "reload", "-t", "reload"]
    assert not edge.state_file.exists()
    assert not edge.intent_file.exists()


def test_batch_switch_with_one_reload_then_an_identical_batch(
    edge: FakeEdge, module_runner: Callable
) -> None:
    services = [edge.item(service) for service in SERVICES]
    result = module_runner(nginx_switch.main, **edge.args(services))
    assert result.get("failed") is not True, result
    assert result["changed"] is True
    assert edge.calls() == ["-t", "reload"]
    assert [s["service"] for s in result["services"]] == list(SERVICES)
    assert all(s["changed"] for s in result["services"])
    assert [s["after"]["active"] for s in result["services"]] == ["green", "green"]
    assert {s: v["colours_seen"] for s, v in result["verify"].items()} == {
        s: {"green": 3} for s in SERVICES
    }
    assert {h["service"] for h in result["health"]} == set(SERVICES)
    assert {"health_gate_s", "switch_s", "total_s"} <= set(result["timings"])
    entries = edge.state()["services"]
    assert {s: e["active"] for s, e in entries.items()} == dict.fromkeys(SERVICES, "green")

    again = module_runner(nginx_switch.main, **edge.args(services))
    assert again["changed"] is False
    assert edge.calls() == ["-t", "reload"]
    assert [s["changed"] for s in again["services"]] == [False, False]


def test_batch_verify_failure_of_one_service_restores_both(
    edge: FakeEdge, module_runner: Callable
) -> None:
    before = edge.texts(edge.upstreams)
    # geolocation's verification asks its blue backend directly: it never answers green.
    blue = edge.slots["geolocation"]["blue"][0]
    services = [
        edge.item("api-gateway"),
        edge.item("geolocation", verify_url=f"http://{blue}/_venta/geolocation/health"),
    ]
    result = module_runner(nginx_switch.main, **edge.args(services, verify_requests=4))
    assert result["failed"] is True
    assert result["msg"].startswith(
        "nginx_switch: verify through the edge failed for geolocation: "
    )
    assert "nginx reloaded with them" in result["msg"]
    assert edge.calls() == ["-t", "reload", "-t", "reload"]
    assert edge.texts(edge.upstreams) == before
    assert edge.texts(edge.loaded) == before
    assert not edge.state_file.exists()
    assert result["verify"]["api-gateway"]["colours_seen"] == {"green": 3}


def test_batch_check_mode_with_diff(edge: FakeEdge, module_runner: Callable) -> None:
    before = edge.texts(edge.upstreams)
    services = [edge.item(service) for service in SERVICES]
    result = module_runner(
        nginx_switch.main, **edge.args(services), _ansible_check_mode=True, _ansible_diff=True
    )
    assert result["changed"] is True
    assert edge.calls() == []
    assert not edge.state_file.exists()
    assert edge.texts(edge.upstreams) == before
    assert len(result["diff"]) == 4
    assert result["diff"][2]["before"] == before["geolocation"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"no_services": True}, "missing required arguments: services"),
        ({"service": "api-gateway"}, "Unsupported parameters for (basic.py) module: service"),
        ({"verify_url": "http://127.0.0.1/"}, "Unsupported parameters"),
        ({"item": {"weights": None}}, "missing required arguments: weights found in services"),
        ({"item": {"colour": "blue"}}, "Unsupported parameters for (basic.py) module: services"),
        ({"action": "deploy"}, "value of action must be one of: release, rollback, abort"),
        (
            {"item": {"weights": {"blue": 60, "green": 60}}},
            "nginx_switch: services[0] (api-gateway): weights must add up to 100",
        ),
        (
            {"verify_url_pattern": "http://127.0.0.1/health"},
            "verify_url_pattern 'http://127.0.0.1/health' must contain {service}",
        ),
    ],
)
def test_bad_arguments_fail_before_anything(
    edge: FakeEdge, module_runner: Callable, change: dict, message: str
) -> None:
    item = edge.item("api-gateway", **change.pop("item", {}))
    if item["weights"] is None:
        item.pop("weights")
    no_services = change.pop("no_services", False)
    args = edge.args([item], **change)
    if no_services:
        args.pop("services")
    result = module_runner(nginx_switch.main, **args)
    assert result["failed"] is True
    assert message in result["msg"]
    assert edge.calls() == []


def test_batch_with_a_duplicate_service_names_it(edge: FakeEdge, module_runner: Callable) -> None:
    services = [edge.item("api-gateway"), edge.item("api-gateway")]
    result = module_runner(nginx_switch.main, **edge.args(services))
    assert result["failed"] is True
    assert "services[1] (api-gateway): service api-gateway is listed twice" in result["msg"]
    assert edge.calls() == []


def test_no_services_on_a_clean_edge_changes_nothing(
    edge: FakeEdge, module_runner: Callable
) -> None:
    result = module_runner(nginx_switch.main, **edge.args([]))
    assert result.get("failed") is not True, result
    assert result["changed"] is False
    assert (result["services"], result["recovered"], result["actions"]) == ([], {}, [])
    assert edge.calls() == []


class Killed(BaseException):
    """SIGKILL, as the failpoint sends it (the test process survives it)."""


def test_a_switch_killed_after_the_reload_is_recovered_by_the_next_run(
    edge: FakeEdge,
    module_runner: Callable,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    before = edge.texts(edge.upstreams)
    failpoints = tmp_path / "venta-failpoints"
    failpoints.mkdir()
    failpoints.joinpath("nginx_switch").write_text("after-reload\n")
    monkeypatch.setattr(switch_intent, "FAILPOINT_FILE", str(failpoints / "nginx_switch"))
    monkeypatch.setattr(switch_intent, "FAILPOINT_HIT", str(failpoints / "nginx_switch.hit"))

    def kill(_pid: int, _signal: int) -> None:
        raise Killed

    monkeypatch.setattr(switch_intent, "os", types.SimpleNamespace(getpid=lambda: 1, kill=kill))
    args = edge.args([edge.item("api-gateway")])
    with patch_module_args(args), pytest.raises(Killed):
        nginx_switch.main()
    capsys.readouterr()
    assert failpoints.joinpath("nginx_switch.hit").read_text() == "after-reload\n"
    assert edge.calls() == ["-t", "reload"]
    assert "# green" in edge.texts(edge.loaded)["api-gateway"]  # nginx serves green ...
    assert edge.intent_file.exists()  # ... which nothing recorded
    assert not edge.state_file.exists()
    failpoints.joinpath("nginx_switch").unlink()

    recovered = module_runner(nginx_switch.main, **edge.args([]))
    assert recovered.get("failed") is not True, recovered
    assert recovered["changed"] is True
    assert recovered["recovered"] == {"api-gateway": "undone, back to blue 100 / green 0"}
    assert recovered["verify"]["api-gateway"]["colours_seen"] == {"blue": 3}
    assert edge.calls() == ["-t", "reload", "-t", "reload"]
    assert edge.texts(edge.upstreams) == before
    assert edge.texts(edge.loaded) == before
    assert not edge.intent_file.exists()

    switched = module_runner(nginx_switch.main, **args)
    assert switched["changed"] is True
    assert switched["recovered"] == {}
    assert edge.state()["services"]["api-gateway"]["weights"] == GREEN
    assert "# green" in edge.texts(edge.loaded)["api-gateway"]
