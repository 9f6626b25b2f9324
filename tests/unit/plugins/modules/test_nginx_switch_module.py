"""venta.deploy.nginx_switch as Ansible runs it: a fake `nginx` in tmp_path, real HTTP on loopback.

The fake nginx answers `-t` by checking the upstream files (exit 1 when one names a backend
marked bad), and `reload` by copying the upstream files to a "loaded" directory, which the fake
edge (an HTTP server) reads to decide which colour answers. That is enough to prove the module's
order of operations, restores and results; tests/unit/plugins/module_utils covers the logic and
molecule/switch the real nginx.
"""

from __future__ import annotations

import http.server
import json
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
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


class Colour(http.server.BaseHTTPRequestHandler):
    """A backend of one colour, or the edge (its colour comes from the loaded upstream file)."""

    colour = "blue"
    loaded: Path | None = None

    def do_GET(self) -> None:
        colour = self.colour
        if self.loaded is not None:
            text = (self.loaded / "api-gateway.conf").read_text()
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
    def __init__(self, tmp_path: Path) -> None:
        self.upstreams = tmp_path / "upstreams"
        self.upstreams.mkdir()
        self.loaded = tmp_path / "loaded"
        self.state_file = tmp_path / "facts.d" / "venta_release.fact"
        self.log = tmp_path / "nginx.log"
        self.nginx = tmp_path / "nginx"
        self.nginx.write_text(
            FAKE_NGINX.format(upstreams=self.upstreams, log=self.log, loaded=self.loaded)
        )
        self.nginx.chmod(0o755)
        self.servers: list[http.server.ThreadingHTTPServer] = []
        self.backends = {"blue": [self.backend("blue")], "green": [self.backend("green")]}
        edge_handler = type("Edge", (Colour,), {"loaded": self.loaded})
        self.edge = start(edge_handler)
        self.servers.append(self.edge)

    def backend(self, colour: str) -> str:
        server = start(type(f"{colour}Backend", (Colour,), {"colour": colour}))
        self.servers.append(server)
        return f"127.0.0.1:{server.server_address[1]}"

    def args(self, **overrides: object) -> dict:
        args: dict = {
            "service": "api-gateway",
            "weights": {"blue": 0, "green": 100},
            "backends": self.backends,
            "versions": {"green": "1.1.0"},
            "health_checks": [{"path": "/health", "json_match": {"status": "ok"}}],
            "health_successes": 2,
            "health_interval": 0.01,
            "upstream_dir": str(self.upstreams),
            "state_file": str(self.state_file),
            "test_command": [str(self.nginx), "-t"],
            "reload_command": [str(self.nginx), "reload"],
            "verify_url": f"http://127.0.0.1:{self.edge.server_address[1]}/_venta/api-gateway/health",
            "verify_interval": 0.01,
        }
        args.update(overrides)
        return args

    def calls(self) -> list[str]:
        return self.log.read_text().split("\n")[:-1] if self.log.exists() else []

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
    # The deploy's file: blue live, "loaded" by nginx.
    edge.upstreams.joinpath("api-gateway.conf").write_text(
        "upstream venta_api_gateway {\n"
        f"    server {edge.backends['blue'][0]} weight=100 max_fails=3 fail_timeout=10s; # blue\n"
        f"    server {edge.backends['green'][0]} down; # green\n"
        "}\n"
    )
    edge.loaded.mkdir()
    edge.loaded.joinpath("api-gateway.conf").write_text(
        edge.upstreams.joinpath("api-gateway.conf").read_text()
    )
    yield edge
    edge.close()


def test_switch_then_an_identical_switch(edge: FakeEdge, module_runner: Callable) -> None:
    result = module_runner(nginx_switch.main, **edge.args())
    assert result.get("failed") is not True, result
    assert result["changed"] is True
    assert edge.calls() == ["-t", "reload"]
    assert result["verify"]["colours_seen"] == {"green": 3}
    assert result["before"]["weights"] == {"blue": 100, "green": 0}
    assert result["after"] == {"weights": {"blue": 0, "green": 100}, "active": "green"}
    assert "diff" not in result
    state = json.loads(edge.state_file.read_text())
    assert state["services"]["api-gateway"]["previous"] == "blue"
    assert result["timings"]["switch_s"] < 1.0

    again = module_runner(nginx_switch.main, **edge.args())
    assert again["changed"] is False
    assert edge.calls() == ["-t", "reload"]


def test_check_mode_with_diff(edge: FakeEdge, module_runner: Callable) -> None:
    before = edge.upstreams.joinpath("api-gateway.conf").read_text()
    result = module_runner(
        nginx_switch.main, **edge.args(), _ansible_check_mode=True, _ansible_diff=True
    )
    assert result["changed"] is True
    assert edge.calls() == []
    assert not edge.state_file.exists()
    assert edge.upstreams.joinpath("api-gateway.conf").read_text() == before
    assert result["diff"][0]["before"] == before
    assert "# green" in result["diff"][0]["after"]
    assert '"active": "green"' in result["diff"][1]["after"]
    assert len(result["health"]) == 1


def test_nginx_t_failure_puts_the_old_file_back(edge: FakeEdge, module_runner: Callable) -> None:
    before = edge.upstreams.joinpath("api-gateway.conf").read_text()
    backends = {"blue": ["bad-backend:1"], "green": edge.backends["green"]}
    result = module_runner(nginx_switch.main, **edge.args(backends=backends))
    assert result["failed"] is True
    assert 'host not found in upstream "bad-backend:1"' in result["msg"]
    assert edge.upstreams.joinpath("api-gateway.conf").read_text() == before
    assert edge.calls() == ["-t", "-t"]  # the new file, then the restored one; never a reload
    assert sorted(p.name for p in edge.upstreams.iterdir()) == ["api-gateway.conf"]


def test_unhealthy_target_fails_before_touching_anything(
    edge: FakeEdge, module_runner: Callable
) -> None:
    result = module_runner(
        nginx_switch.main,
        **edge.args(
            health_checks=[{"path": "/health", "json_match": {"colour": "purple"}}],
            health_timeout=0.3,
        ),
    )
    assert result["failed"] is True
    assert (
        f"api-gateway: backend {edge.backends['green'][0]} (green) is not healthy" in result["msg"]
    )
    assert "JSON colour == 'purple'" in result["msg"]
    assert edge.calls() == []
    assert result["health"][0]["ok"] is False


def test_verify_failure_restores_and_reloads(edge: FakeEdge, module_runner: Callable) -> None:
    before = edge.upstreams.joinpath("api-gateway.conf").read_text()
    result = module_runner(
        nginx_switch.main, **edge.args(verify_colour_header="X-Not-There", verify_requests=4)
    )
    assert result["failed"] is True
    assert "verify through the edge failed" in result["msg"]
    assert edge.upstreams.joinpath("api-gateway.conf").read_text() == before
    assert edge.loaded.joinpath("api-gateway.conf").read_text() == before
    assert edge.calls() == ["-t", "reload", "-t", "reload"]
    assert not edge.state_file.exists()


def test_bad_weights_fail_before_anything(edge: FakeEdge, module_runner: Callable) -> None:
    result = module_runner(nginx_switch.main, **edge.args(weights={"blue": 60, "green": 60}))
    assert result["failed"] is True
    assert "weights must add up to 100" in result["msg"]
    assert edge.calls() == []


# ---- batch mode (`services`): several services, one nginx -t and one reload -------------------


class ServiceEdge(Colour):
    """The edge of several services: /_venta/<service>/... answers with the loaded colour."""

    def do_GET(self) -> None:
        service = self.path.split("/")[2]
        assert self.loaded is not None
        text = (self.loaded / f"{service}.conf").read_text()
        live = re.findall(r"weight=\d+ max_fails=\S+ \S+ # (\w+)", text)
        colour = live[0] if len(set(live)) == 1 else "mixed"
        body = json.dumps({"status": "ok", "service": service, "colour": colour}).encode()
        self.send_response(200)
        self.send_header("X-Venta-Colour", colour)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class FakeStack(FakeEdge):
    """Two services behind one edge, blue live for both."""

    services = ("api-gateway", "geolocation")

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path)
        self.slots = {
            "api-gateway": self.backends,
            "geolocation": {"blue": [self.backend("blue")], "green": [self.backend("green")]},
        }
        self.stack_edge = start(type("StackEdge", (ServiceEdge,), {"loaded": self.loaded}))
        self.servers.append(self.stack_edge)

    def item(self, service: str, **overrides: object) -> dict:
        port = self.stack_edge.server_address[1]
        item: dict = {
            "service": service,
            "weights": {"blue": 0, "green": 100},
            "backends": self.slots[service],
            "versions": {"green": "1.1.0"},
            "verify_url": f"http://127.0.0.1:{port}/_venta/{service}/health",
        }
        item.update(overrides)
        return item

    def batch(self, services: list[dict], **overrides: object) -> dict:
        args = self.args(services=services, **overrides)
        for name in ("service", "weights", "backends", "versions", "verify_url"):
            args.pop(name)
        return args

    def upstream_texts(self, where: Path) -> dict[str, str]:
        return {s: where.joinpath(f"{s}.conf").read_text() for s in self.services}


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[FakeStack]:
    stack = FakeStack(tmp_path)
    stack.loaded.mkdir()
    for service, slots in stack.slots.items():
        text = (
            f"upstream venta_{service.replace('-', '_')} {{\n"
            f"    server {slots['blue'][0]} weight=100 max_fails=3 fail_timeout=10s; # blue\n"
            f"    server {slots['green'][0]} down; # green\n"
            "}\n"
        )
        stack.upstreams.joinpath(f"{service}.conf").write_text(text)
        stack.loaded.joinpath(f"{service}.conf").write_text(text)
    yield stack
    stack.close()


def test_batch_switch_with_one_reload_then_an_identical_batch(
    stack: FakeStack, module_runner: Callable
) -> None:
    services = [stack.item("api-gateway"), stack.item("geolocation")]
    result = module_runner(nginx_switch.main, **stack.batch(services))
    assert result.get("failed") is not True, result
    assert result["changed"] is True
    assert stack.calls() == ["-t", "reload"]
    assert [s["service"] for s in result["services"]] == ["api-gateway", "geolocation"]
    assert all(s["changed"] for s in result["services"])
    assert [s["after"]["active"] for s in result["services"]] == ["green", "green"]
    assert {s: v["colours_seen"] for s, v in result["verify"].items()} == {
        "api-gateway": {"green": 3},
        "geolocation": {"green": 3},
    }
    assert {h["service"] for h in result["health"]} == {"api-gateway", "geolocation"}
    assert {"health_gate_s", "switch_s", "total_s"} <= set(result["timings"])
    assert "diff" not in result
    entries = json.loads(stack.state_file.read_text())["services"]
    assert {s: e["active"] for s, e in entries.items()} == {
        "api-gateway": "green",
        "geolocation": "green",
    }

    again = module_runner(nginx_switch.main, **stack.batch(services))
    assert again["changed"] is False
    assert stack.calls() == ["-t", "reload"]
    assert [s["changed"] for s in again["services"]] == [False, False]


def test_batch_verify_failure_of_one_service_restores_both(
    stack: FakeStack, module_runner: Callable
) -> None:
    before = stack.upstream_texts(stack.upstreams)
    # geolocation's verification asks its blue backend directly: it never answers green.
    blue = stack.slots["geolocation"]["blue"][0]
    services = [
        stack.item("api-gateway"),
        stack.item("geolocation", verify_url=f"http://{blue}/_venta/geolocation/health"),
    ]
    result = module_runner(nginx_switch.main, **stack.batch(services, verify_requests=4))
    assert result["failed"] is True
    assert result["msg"].startswith(
        "nginx_switch: verify through the edge failed for geolocation: "
    )
    assert "(nginx reloaded with them)" in result["msg"]
    assert stack.calls() == ["-t", "reload", "-t", "reload"]
    assert stack.upstream_texts(stack.upstreams) == before
    assert stack.upstream_texts(stack.loaded) == before
    assert not stack.state_file.exists()
    assert result["verify"]["api-gateway"]["colours_seen"] == {"green": 3}


def test_batch_check_mode_with_diff(stack: FakeStack, module_runner: Callable) -> None:
    before = stack.upstream_texts(stack.upstreams)
    services = [stack.item("api-gateway"), stack.item("geolocation")]
    result = module_runner(
        nginx_switch.main, **stack.batch(services), _ansible_check_mode=True, _ansible_diff=True
    )
    assert result["changed"] is True
    assert stack.calls() == []
    assert not stack.state_file.exists()
    assert stack.upstream_texts(stack.upstreams) == before
    assert len(result["diff"]) == 4
    assert result["diff"][2]["before"] == before["geolocation"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"service": "api-gateway"}, "parameters are mutually exclusive: service|services"),
        ({"weights": {"blue": 100}}, "parameters are mutually exclusive: services|weights"),
        ({"services": None}, "one of the following is required: service, services"),
        ({"services": [{"service": "api-gateway"}]}, "missing required arguments: weights"),
    ],
)
def test_service_and_services_are_one_or_the_other(
    stack: FakeStack, module_runner: Callable, args: dict, message: str
) -> None:
    base = stack.batch([stack.item("api-gateway")])
    base.update(args)
    if base["services"] is None:
        base.pop("services")
    result = module_runner(nginx_switch.main, **base)
    assert result["failed"] is True
    assert message in result["msg"]
    assert stack.calls() == []


def test_batch_with_a_duplicate_service_names_it(stack: FakeStack, module_runner: Callable) -> None:
    services = [stack.item("api-gateway"), stack.item("api-gateway")]
    result = module_runner(nginx_switch.main, **stack.batch(services))
    assert result["failed"] is True
    assert "services[1] (api-gateway): service api-gateway is listed twice" in result["msg"]
    assert stack.calls() == []
