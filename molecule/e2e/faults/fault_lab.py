"""The lab as the fault cases see it: the edges (through `docker exec`, the test's own hand, and
through each edge's loopback port), the VIP, the release state and lock files, the failpoints of
the switch module, and ansible-playbook runs (killable as a process group)."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import importlib
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[3]
STATE_FILE = "/etc/ansible/facts.d/venta_release.fact"
INTENT_FILE = STATE_FILE + ".intent"
LOCK_FILE = "/var/lib/venta/release.lock"
FAILPOINT_DIR = "/run/venta-failpoints"
FAILPOINT_FILE = FAILPOINT_DIR + "/nginx_switch"
FAILPOINT_HIT = FAILPOINT_FILE + ".hit"
UPSTREAM_DIR = "/etc/nginx/venta-switch/upstreams"
SERVICES = (
    "api-gateway",
    "file-management",
    "webhooks",
    "geolocation",
    "real-time",
    "user-management",
    "vendor-management",
    "search-discovery",
)


@dataclass(frozen=True)
class Lab:
    """Where things are: the checkout, the VIP, each edge's loopback port, the Docker hosts."""

    root: Path
    vip: str = "10.77.0.100"
    edges: dict[str, int] = field(
        default_factory=lambda: {"venta-edge1": 8443, "venta-edge2": 8444}
    )
    docker_hosts: tuple[str, ...] = ("venta-app1", "venta-app2", "venta-app3")

    @property
    def ca(self) -> str:
        return str(self.root / ".lab" / "pki" / "ca.crt")


# ---- docker exec ---------------------------------------------------------------------------


def docker_exec(
    container: str, argv: list[str], timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", "exec", container, *argv],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )


def docker(argv: list[str], timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *argv], capture_output=True, text=True, check=False, timeout=timeout
    )


def holds_vip(edge: str, vip: str) -> bool:
    result = docker_exec(edge, ["ip", "-4", "-o", "addr", "show", "to", f"{vip}/32"], 10)
    return result.returncode == 0 and bool(result.stdout.strip())


def vip_holders(lab: Lab) -> list[str]:
    return [edge for edge in lab.edges if holds_vip(edge, lab.vip)]


def exists(container: str, path: str) -> bool:
    return docker_exec(container, ["test", "-e", path], 10).returncode == 0


def read_file(container: str, path: str) -> str | None:
    result = docker_exec(container, ["cat", path], 10)
    return result.stdout if result.returncode == 0 else None


def write_file(container: str, path: str, text: str) -> None:
    subprocess.run(
        ["docker", "exec", "-i", container, "sh", "-c", 'cat > "$1"', "sh", path],
        input=text,
        text=True,
        check=True,
        capture_output=True,
        timeout=10,
    )


def remove(container: str, *paths: str) -> None:
    docker_exec(container, ["rm", "-f", *paths], 10)


# ---- the failpoints of venta.deploy.nginx_switch (plugins/module_utils/switch_intent.py) ------


def arm_failpoint(edge: str, phase: str) -> None:
    docker_exec(edge, ["mkdir", "-p", FAILPOINT_DIR], 10)
    remove(edge, FAILPOINT_HIT)
    write_file(edge, FAILPOINT_FILE, phase + "\n")


def clear_failpoint(edge: str) -> None:
    remove(edge, FAILPOINT_FILE, FAILPOINT_HIT)


@dataclass
class Waiter:
    """A `docker exec` that ends as soon as a file exists in the container (see wait_for_file).
    Killing the local `docker exec` would leave its loop running in the container, to fire in a
    later case: cancel() stops it there (a cancel file it watches), and it gives up by itself
    after its timeout."""

    container: str
    process: subprocess.Popen[str]
    cancel_file: str

    def done(self) -> bool:
        return self.process.poll() is not None

    def finish(self) -> str:
        """Stop waiting (if it still does) and return what it printed."""
        if not self.done():
            docker_exec(self.container, ["touch", self.cancel_file], 10)
        try:
            out = self.process.communicate(timeout=15)[0]
        except subprocess.TimeoutExpired:
            self.process.kill()
            out = self.process.communicate()[0]
        remove(self.container, self.cancel_file)
        return out or ""


def wait_for_file(container: str, path: str, then: str = "", timeout: int = 300) -> Waiter:
    """Wait in the container (polling every 20 ms inside it, so the wait costs one exec, not one
    per poll) until `path` exists, print it and run the shell command `then` right after (e.g. a
    kill that must come at that moment). Gives up after `timeout` s or when cancelled."""
    cancel = f"/run/venta-fault-cancel-{uuid.uuid4().hex}"
    script = (
        f"end=$(($(date +%s) + {int(timeout)})); "
        'while [ ! -e "$1" ]; do '
        'if [ -e "$2" ] || [ "$(date +%s)" -ge "$end" ]; then exit 3; fi; sleep 0.02; done; '
        f'cat "$1"; {then}'
    )
    process = subprocess.Popen(
        ["docker", "exec", container, "sh", "-c", script, "sh", path, cancel],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return Waiter(container, process, cancel)


# ---- a Docker host after a crash ----------------------------------------------------------------


def proxy_ports(ps_args: str) -> set[int]:
    """The host ports docker-proxy processes hold, from `ps -eo args` inside a Docker host."""
    return {
        int(found.group(1))
        for line in ps_args.splitlines()
        if "docker-proxy" in line and (found := re.search(r"-host-port (\d+)", line))
    }


def published_ports(docker_ps_ports: str) -> set[int]:
    """The host ports running containers publish, from `docker ps --format {{.Ports}}`
    ("10.77.0.23:25000->5000/tcp, ...")."""
    return {int(port) for port in re.findall(r":(\d+)->", docker_ps_ports)}


def stale_proxy_ports(host: str) -> list[int]:
    """Ports a docker-proxy holds for no running container: what a Docker engine keeps after it
    was killed while creating a container (the next create of it fails, "port is already
    allocated", until dockerd restarts)."""
    ps_args = docker_exec(host, ["ps", "-eo", "args"], 20).stdout
    ports = docker_exec(host, ["docker", "ps", "--format", "{{.Ports}}"], 20).stdout
    return sorted(proxy_ports(ps_args) - published_ports(ports))


# ---- what an edge records and what it answers ----------------------------------------------


def edge_state(edge: str) -> tuple[str | None, dict[str, Any] | None]:
    """The release state file's text and its parsed content (None, None when unreadable)."""
    text = read_file(edge, STATE_FILE)
    if text is None:
        return None, None
    try:
        return text, json.loads(text)
    except ValueError:
        return text, None


def digest(text: str | None) -> str | None:
    return None if text is None else hashlib.sha256(text.encode()).hexdigest()


def answer(host: str, port: int, ca: str, service: str, timeout: float = 12.0) -> dict[str, Any]:
    """One new HTTPS request to /_venta/<service>/health: status, colour and version headers."""
    context = ssl.create_default_context(cafile=ca)
    conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
    try:
        conn.request("GET", f"/_venta/{service}/health")
        response = conn.getresponse()
        response.read()
        return {
            "status": response.status,
            "colour": response.getheader("X-Venta-Colour", ""),
            "version": response.getheader("X-Venta-Version", ""),
        }
    except (OSError, http.client.HTTPException) as exc:
        return {"status": None, "colour": "", "version": "", "error": type(exc).__name__}
    finally:
        conn.close()


def edge_answers(lab: Lab, edge: str, repeat: int = 2) -> dict[str, list[dict[str, Any]]]:
    port = lab.edges[edge]
    return {
        service: [answer("127.0.0.1", port, lab.ca, service) for _try in range(repeat)]
        for service in SERVICES
    }


def mismatches(state: dict[str, Any] | None, answers: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Where an edge's answers differ from what it records: every answer of a service must be a
    200 from a colour the state gives weight, with the version the state records for it."""
    if not state or not isinstance(state.get("services"), dict):
        return ["no readable release state"]
    out = []
    for service, got in sorted(answers.items()):
        entry = state["services"].get(service)
        if not entry:
            out.append(f"{service}: not in the release state")
            continue
        live = {c for c, w in (entry.get("weights") or {}).items() if w > 0}
        versions = entry.get("versions") or {}
        for one in got:
            colour = one.get("colour")
            if one.get("status") != 200:
                out.append(f"{service}: answered {one.get('status')} {one.get('error', '')}")
            elif colour not in live:
                out.append(
                    f"{service}: answered from {colour}, recorded weights {entry['weights']}"
                )
            elif versions.get(colour) != one.get("version"):
                out.append(
                    f"{service}: {colour} answered {one.get('version')}, "
                    f"recorded {versions.get(colour)}"
                )
    return out


def disagreements(states: dict[str, dict[str, Any] | None]) -> list[str]:
    """Services whose entries differ between the edges, by the engine's own rule
    (release_state.edge_differences: what they serve, the versions, and where a rollback would
    go), so "the edges agree" here means the next release, rollback or reconcile can plan. An
    unreadable state disagrees with everything."""
    if any(not isinstance(state, dict) for state in states.values()):
        return [f"unreadable release state on {e}" for e, s in states.items() if s is None]
    services = sorted({s for state in states.values() for s in state.get("services") or {}})
    return release_state().edge_differences(states, services)


def release_state() -> ModuleType:
    """The collection's plugins/module_utils/release_state.py (through collections/, the
    checkout's own ansible_collections tree, as the unit tests import it)."""
    collections = str(ROOT / "collections")
    if collections not in sys.path:
        sys.path.insert(0, collections)
    return importlib.import_module(
        "ansible_collections.venta.deploy.plugins.module_utils.release_state"
    )


def consistency(lab: Lab) -> dict[str, Any]:
    """Every edge answers what it records, the edges record the same, and no switch intent or
    release lock is left behind. `ok` when all of that holds."""
    states = {}
    texts = {}
    per_edge = {}
    for edge in lab.edges:
        text, state = edge_state(edge)
        states[edge], texts[edge] = state, text
        per_edge[edge] = {
            "mismatches": mismatches(state, edge_answers(lab, edge)),
            "intent_left": exists(edge, INTENT_FILE),
            "lock_left": exists(edge, LOCK_FILE),
        }
    differ = disagreements(states)
    ok = not differ and all(
        not e["mismatches"] and not e["intent_left"] and not e["lock_left"]
        for e in per_edge.values()
    )
    return {
        "ok": ok,
        "edges": per_edge,
        "disagreements": differ,
        "digests": {edge: digest(text) for edge, text in texts.items()},
        "live": {edge: live_view(state) for edge, state in states.items()},
    }


def live_view(state: dict[str, Any] | None) -> dict[str, str]:
    """{service: "<active colour> <its version>"} of one edge's state."""
    out = {}
    for service, entry in ((state or {}).get("services") or {}).items():
        active = entry.get("active")
        out[service] = f"{active} {(entry.get('versions') or {}).get(active)}"
    return dict(sorted(out.items()))


# ---- ansible-playbook ----------------------------------------------------------------------


@dataclass
class Play:
    """One ansible-playbook run: its name, command, rc (None while it runs or when killed before
    it said anything), wall time and the file its output (json callback) went to."""

    name: str
    argv: list[str]
    out: Path
    started: float = 0.0
    wall_s: float | None = None
    rc: int | None = None
    killed: bool = False
    process: subprocess.Popen[bytes] | None = None
    ended: threading.Event = field(default_factory=threading.Event)

    def _watch(self) -> None:
        """Wait for the process in a thread: the wall time is its own, whoever waits first."""
        assert self.process is not None
        self.rc = self.process.wait()
        self.wall_s = round(time.monotonic() - self.started, 3)
        self.ended.set()

    def text(self) -> str:
        try:
            return self.out.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""


def playbook_argv(lab: Lab, playbook: str, extra: list[str]) -> list[str]:
    return [
        str(lab.root / ".venv" / "bin" / "ansible-playbook"),
        "-i",
        str(lab.root / "inventories" / "local"),
        str(lab.root / "playbooks" / playbook),
        *extra,
    ]


def start_play(lab: Lab, out_dir: Path, name: str, playbook: str, extra: list[str]) -> Play:
    """Start ansible-playbook in its own process group (so a kill -9 takes all of it), the json
    callback's output into <out_dir>/<name>.json."""
    play = Play(name, playbook_argv(lab, playbook, extra), out_dir / f"{name}.json")
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(lab.root / "ansible.cfg"),
        "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.json",
        "ANSIBLE_NOCOLOR": "1",
    }
    with play.out.open("wb") as out, (out_dir / f"{name}.stderr").open("wb") as err:
        play.process = subprocess.Popen(
            play.argv, cwd=lab.root, env=env, stdout=out, stderr=err, start_new_session=True
        )
    play.started = time.monotonic()
    threading.Thread(target=play._watch, daemon=True).start()
    return play


def wait_play(play: Play, timeout: float = 900.0) -> Play:
    if not play.ended.wait(timeout):
        kill_play(play)
    return play


def kill_play(play: Play) -> None:
    """SIGKILL the playbook's whole process group (ansible-playbook, its workers, its ssh)."""
    assert play.process is not None
    with contextlib.suppress(ProcessLookupError):
        os.killpg(play.process.pid, signal.SIGKILL)
    play.killed = True
    play.ended.wait(60)


def run_play(lab: Lab, out_dir: Path, name: str, playbook: str, extra: list[str]) -> Play:
    return wait_play(start_play(lab, out_dir, name, playbook, extra))
