"""Fakes of an nginx edge for the tests of the release switch (venta.deploy.nginx_switch).

`Edge` keeps the upstream files on disk and models what nginx has LOADED: only a reload whose
configuration passes the test changes it (to the weights of the files on disk at that moment),
so a crash between the rename and the reload leaves new files and old traffic, as on a real edge.
It answers the switch's commands (failures scripted with `fail`, or a file naming a rejected
backend), the backends' health checks and the edge's verify URL. The edge answers with the
colours of the loaded weights, deterministically: with green at w %, every (100 / w)-th answer
is green (10 % -> the 10th, 20th, ...); `routes` overrides that (a broken route, old workers).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ansible_collections.venta.deploy.plugins.module_utils.health_gate import Answer, HttpOptions
from ansible_collections.venta.deploy.plugins.module_utils.nginx_upstream import (
    UpstreamSettings,
    parse_weights,
    render_upstream,
)
from ansible_collections.venta.deploy.plugins.module_utils.switch_transaction import run_switch

# Service -> its port (blue slot: port + 10000, green: + 20000), as in the catalog.
PORTS = {"api-gateway": 5002, "geolocation": 5001, "search": 5003}
ALL = list(PORTS)
TEST = ["/usr/sbin/nginx", "-t"]
RELOAD = ["systemctl", "reload", "nginx"]
BLUE = {"blue": 100, "green": 0}
GREEN = {"blue": 0, "green": 100}
CANARY = {"blue": 90, "green": 10}
NOW = "2025-01-01T12:00:00Z"
PATTERN = "https://127.0.0.1/_venta/{service}/health"
INVENTORY = "the inventory (nginx_edge_services)"
VERSIONS = {"blue": "1.0.0", "green": "1.1.0"}  # what each slot's backends answer


def backends(service: str) -> dict[str, list[str]]:
    port = PORTS[service]
    return {
        "blue": [f"app1:{port + 10000}", f"app2:{port + 10000}"],
        "green": [f"app1:{port + 20000}", f"app2:{port + 20000}"],
    }


def verify_url(service: str) -> str:
    return PATTERN.replace("{service}", service)


def role_text(service: str, weights: Mapping[str, int], source: str = INVENTORY) -> str:
    """The upstream file the nginx_edge role writes (the switch: with the state file as source)."""
    return render_upstream(service, backends(service), weights, source, UpstreamSettings())


def served_colour(weights: Mapping[str, int] | None, request: int) -> str | None:
    """The colour that answers the edge's `request`-th request (1, 2, ...) for these weights."""
    if not weights:
        return None
    green = int(weights.get("green", 0))
    return "green" if request * green // 100 > (request - 1) * green // 100 else "blue"


class Crash(BaseException):
    """What a failpoint raises: the process died there (like SIGKILL, nothing may catch it)."""


class Failpoints:
    """The switch's failpoint: records the phases passed, dies at `crash`."""

    def __init__(self, crash: str | None = None) -> None:
        self.crash = crash
        self.passed: list[str] = []

    def __call__(self, phase: str) -> None:
        self.passed.append(phase)
        if phase == self.crash:
            raise Crash(phase)


class Edge:
    """A fake edge with several services: files, what nginx loaded, commands and HTTP answers."""

    def __init__(self, tmp_path: Path) -> None:
        self.upstreams = tmp_path / "upstreams"
        self.upstreams.mkdir()
        self.state_file = tmp_path / "facts.d" / "venta_release.fact"
        self.intent_file = Path(f"{self.state_file}.intent")
        self.commands: list[list[str]] = []
        self.failures: dict[str, list[Any]] = {}  # kind -> [message, times left or None]
        self.rejected: set[str] = set()  # backends nginx -t cannot resolve
        self.unhealthy: set[str] = set()
        self.routes: dict[str, Callable[[int], str | None]] = {}
        self.loaded: dict[str, dict[str, int]] = {}  # service -> weights nginx serves
        self.requests: dict[str, int] = {}  # service -> requests the edge answered
        self.headers_seen: dict[str, dict[str, str]] = {}
        self.fetches: list[str] = []

    # -- nginx

    def fail(self, kind: str, message: str, times: int | None = None) -> None:
        """Make the next `times` (None: every) "test" or "reload" command fail with `message`."""
        self.failures[kind] = [message, times]

    def heal(self) -> None:
        self.failures.clear()
        self.rejected.clear()
        self.routes.clear()
        self.unhealthy.clear()

    def run(self, argv: Sequence[str]) -> tuple[int, str, str]:
        self.commands.append(list(argv))
        kind = {tuple(TEST): "test", tuple(RELOAD): "reload"}[tuple(argv)]
        message = self._scripted(kind)
        if message is None and kind == "test":
            message = self._rejection()
        if message is not None:
            return 1, "", message
        if kind == "reload" and self._rejection() is None:  # else the master keeps the old
            self.loaded = self.on_disk()
        return 0, "", ""

    def _scripted(self, kind: str) -> str | None:
        failure = self.failures.get(kind)
        if failure is None or failure[1] == 0:
            return None
        if failure[1] is not None:
            failure[1] -= 1
        return str(failure[0])

    def _rejection(self) -> str | None:
        for text in self.files().values():
            for backend in sorted(self.rejected):
                if f"server {backend} " in text:
                    return f'nginx: [emerg] host not found in upstream "{backend}"'
        return None

    def on_disk(self) -> dict[str, dict[str, int]]:
        """The weights of every upstream file (what a reload now would load)."""
        weights = {service: parse_weights(text) for service, text in self.files().items()}
        return {service: w for service, w in weights.items() if w is not None}

    def deploy(self, weights: Mapping[str, int], services: Sequence[str] = tuple(ALL)) -> None:
        """What the nginx_edge role does from the inventory: write the files, load them."""
        for service in services:
            self.upstream(service).write_text(role_text(service, weights))
        self.loaded = self.on_disk()

    # -- HTTP

    def fetch(self, url: str, options: HttpOptions, timeout: float) -> Answer:
        self.fetches.append(url)
        for service in PORTS:
            if url.startswith(verify_url(service).rsplit("/", 1)[0] + "/"):
                return self._edge_answer(service, options)
        backend = url.split("/")[2]
        if backend in self.unhealthy:
            return Answer(503, {}, '{"status":"unhealthy"}', 1.0)
        colour = "green" if backend.split(":")[1].startswith("2") else "blue"
        headers = {"X-Venta-Colour": colour, "X-Venta-Version": VERSIONS[colour]}
        return Answer(200, headers, '{"status":"ok"}', 1.0)

    def _edge_answer(self, service: str, options: HttpOptions) -> Answer:
        count = self.requests[service] = self.requests.get(service, 0) + 1
        self.headers_seen[service] = dict(options.headers)
        route = self.routes.get(service)
        colour = route(count) if route else served_colour(self.loaded.get(service), count)
        if colour is None:
            return Answer(502, {}, "no upstream", 1.0)
        return Answer(200, {"X-Venta-Colour": colour}, "{}", 2.0)

    # -- what is on the edge

    def upstream(self, service: str) -> Path:
        return self.upstreams / f"{service}.conf"

    def files(self) -> dict[str, str]:
        """Service -> text of its upstream file."""
        return {p.stem: p.read_text() for p in sorted(self.upstreams.glob("*.conf"))}

    def switched(
        self, weights: Mapping[str, int], services: Sequence[str] = tuple(ALL)
    ) -> dict[str, str]:
        """The files the switch writes for these weights."""
        return {s: role_text(s, weights, str(self.state_file)) for s in services}

    def leftovers(self) -> list[str]:
        return sorted(p.name for p in self.upstreams.iterdir() if p.suffix != ".conf")

    def state(self) -> dict[str, Any] | None:
        return json.loads(self.state_file.read_text()) if self.state_file.exists() else None

    def entry(self, service: str) -> dict[str, Any]:
        return (self.state() or {})["services"][service]

    def recorded(self) -> dict[str, dict[str, int]]:
        """Service -> recorded weights."""
        return {s: e["weights"] for s, e in ((self.state() or {}).get("services") or {}).items()}

    def intent(self) -> dict[str, Any] | None:
        return json.loads(self.intent_file.read_text()) if self.intent_file.exists() else None


class Clock:
    """A clock that moves 1 ms per reading and by the time slept."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 0.001
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def item(service: str, weights: Mapping[str, int] | None = None, **overrides: Any) -> dict:
    """An item of `services` as Ansible passes it (every suboption); green 100 by default."""
    raw: dict[str, Any] = {
        "service": service,
        "weights": dict(weights or GREEN),
        "backends": backends(service),
        "versions": None,
        "health_checks": None,
        "verify_url": None,
        "verify_headers": None,
        "recorded": None,
    }
    raw.update(overrides)
    return raw


def params(edge: Edge, services: list[dict] | None, **overrides: Any) -> dict[str, Any]:
    """The module's parameters as Ansible passes them (defaults filled in) for this edge."""
    base: dict[str, Any] = {
        "services": services,
        "health_checks": None,
        "health_successes": 2,
        "health_interval": 0.0,
        "health_timeout": 1.0,
        "upstream_dir": str(edge.upstreams),
        "state_file": str(edge.state_file),
        "test_command": TEST,
        "reload_command": RELOAD,
        "verify_url_pattern": PATTERN,
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
        "action": "switch",
        "run_id": None,
        "ca_path": None,
        "client_cert": None,
        "client_key": None,
        "validate_certs": True,
        "request_timeout": 1.0,
    }
    base.update(overrides)
    return base


def switch(
    edge: Edge,
    services: list[dict],
    check_mode: bool = False,
    failpoint: Callable[[str], None] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Run the switch of `services` on the fake edge (no failpoint unless one is given)."""
    clock = Clock()
    return run_switch(
        params(edge, services, **overrides),
        edge.run,
        check_mode,
        fetcher=edge.fetch,
        clock=clock,
        sleep=clock.sleep,
        now=lambda: NOW,
        failpoint=failpoint or Failpoints(),
    )
