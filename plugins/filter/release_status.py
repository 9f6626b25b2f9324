# Copyright: venta.deploy developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The release status of every service as the edges record it, for playbooks/status.yml."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from ansible.errors import AnsibleFilterError
from ansible_collections.venta.deploy.plugins.module_utils.nginx_upstream import COLOURS
from ansible_collections.venta.deploy.plugins.module_utils.release_state import (
    STATE_PATH,
    ReleaseStateError,
    active_colour,
    describe_entry,
    edge_differences,
    normal_weights,
    other_colour,
    parse_state,
    service_entry,
    weights_text,
)

DOCUMENTATION = r"""
name: release_status
author: venta.deploy developers
version_added: "0.5.0"
short_description: Which colour of each service is live on every edge, with weights and versions
description:
  - For each service, reads the release state every edge recorded
    (C(/etc/ansible/facts.d/venta_release.fact)) and the services' containers on the Docker
    hosts, and says which colour is live (the recorded active colour, else the one with the most
    weight), its weight and version, the other colour's weight, version and whether its
    containers are C(warm) (running), C(stopped) or C(absent), the Docker health of the live
    colour and the readiness through each edge. The rules (parsing, comparing and describing
    the edges' states) are those of C(module_utils/release_state.py), which release and rollback
    plan with.
  - An edge without a release state (a fresh deploy), or whose state does not name the service,
    serves the inventory's weights (O(edge_services)), else O(default_weights), as the nginx_edge
    role renders them.
  - Compares the edges as the release planner does (weights, active and previous colour,
    versions, last action). A row whose edges disagree, or that an edge could not tell (not
    reached, state not readable), is marked, and the table lists what each edge says.
  - C(release_status_table) formats the rows as a text table followed by those details.
options:
  _input:
    description: The services (C(venta_services_all)), with C(name) and C(domain) of each.
    type: list
    elements: dict
    required: true
  edges:
    description:
      - Edge host (in inventory order) to what was read there, or C(none) when it was not reached.
      - "C(release_state): the text of the state file, C(none) when the file is missing."
      - "C(ready): the results of the readiness requests (C(item.name), C(status))."
    type: dict
    required: true
  containers:
    description:
      - Docker host to its containers as C(community.docker.docker_host_info) lists them (labels
        C(org.venta.service), C(org.venta.colour), C(org.venta.version)), C(none) when not reached.
    type: dict
    default: {}
  edge_services:
    description: The edge's services (C(venta_catalog_edge_services)); their C(weights) apply where
      no release state is recorded.
    type: list
    elements: dict
    default: []
  default_weights:
    description: Weights of a service that gives none.
    type: dict
    default: {blue: 100, green: 0}
"""

EXAMPLES = r"""
- name: Show the services
  ansible.builtin.debug:
    msg: >-
      {{ venta_services_all
         | venta.deploy.release_status(edges=__edges, containers=__containers,
                                       edge_services=venta_catalog_edge_services)
         | venta.deploy.release_status_table }}
"""

RETURN = r"""
_value:
  description:
    - "One row per service: C(service), C(domain), C(live) and C(other) (C(colour), C(weight),
      C(version), C(presence), C(hosts)), C(health), C(ready) (edge to status), C(source),
      C(edges) (edge to what it says, or why it could not tell), C(agree), C(unread),
      C(docker_unread) (Docker hosts not reached)."
  type: list
  elements: dict
"""

INVENTORY = "inventory weights, no release state"
RECORDED = "release state"
_HEALTH = re.compile(r"\((.*)\)")


def _weights_or_default(weights: Any, default: Mapping[str, Any]) -> dict[str, int]:
    return normal_weights(weights if isinstance(weights, Mapping) and weights else default)


def read_edges(edges: Mapping[str, Any]) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """({edge: state} of the edges that could be read, {edge: why not} of the others)."""
    states: dict[str, dict[str, Any]] = {}
    unread: dict[str, str] = {}
    for edge, data in edges.items():
        if not isinstance(data, Mapping):
            unread[edge] = "not reached (no release state read)"
            continue
        try:
            states[edge] = parse_state(data.get("release_state"), f"{STATE_PATH} on {edge}")
        except ReleaseStateError as exc:
            unread[edge] = str(exc)
    return states, unread


def edge_view(
    state: Mapping[str, Any], service: str, inventory_weights: Mapping[str, int]
) -> dict[str, Any]:
    """What one edge serves for one service: weights, live colour, versions, where from.

    The recorded entry when there is one (the live colour is its `active` one, else the colour
    with the most weight), else the inventory's weights, as the nginx_edge role renders them.
    """
    entry = service_entry(state, service)
    if entry is not None and isinstance(entry.get("weights"), Mapping):
        weights = normal_weights(entry["weights"])
        live = entry.get("active") if entry.get("active") in COLOURS else active_colour(weights)
        versions = entry.get("versions") if isinstance(entry.get("versions"), Mapping) else {}
        source = RECORDED
    else:
        weights, versions, source = dict(inventory_weights), {}, INVENTORY
        live = active_colour(weights)
    return {
        "weights": weights,
        "live": live,
        "versions": {c: str(versions[c]) for c in COLOURS if versions.get(c) is not None},
        "source": source,
        "said": describe_entry(entry)
        if source == RECORDED
        else f"nothing recorded, the inventory's weights {weights_text(weights)}",
    }


def _colour_containers(
    containers: Mapping[str, Any], service: str, colour: str
) -> tuple[list[str], int, int, list[str], list[str]]:
    """(hosts running it, running, total, versions of the running ones, health of those)."""
    hosts: list[str] = []
    running = total = 0
    versions: list[str] = []
    health: list[str] = []
    for host, listed in containers.items():
        for item in listed or []:
            labels = item.get("Labels") or {}
            if (labels.get("org.venta.service"), labels.get("org.venta.colour")) != (
                service,
                colour,
            ):
                continue
            total += 1
            if item.get("State") != "running":
                continue
            running += 1
            if host not in hosts:
                hosts.append(host)
            version = labels.get("org.venta.version")
            if version and version not in versions:
                versions.append(version)
            found = _HEALTH.search(str(item.get("Status", "")))
            state = found.group(1) if found else "running"
            if state not in health:
                health.append(state)
    return hosts, running, total, versions, health


def _colour(
    colour: str, view: Mapping[str, Any], containers: Mapping[str, Any], service: str
) -> dict[str, Any]:
    hosts, running, total, versions, health = _colour_containers(containers, service, colour)
    presence = "warm" if running else ("stopped" if total else "absent")
    return {
        "colour": colour,
        "weight": view["weights"][colour],
        "version": view["versions"].get(colour) or ",".join(versions) or "",
        "presence": presence,
        "running": running,
        "hosts": hosts,
        "health": health,
    }


def _ready(edges: Mapping[str, Any], service: str) -> dict[str, str]:
    """Edge to the status of the service's readiness route through it ("no answer", "-")."""
    ready: dict[str, str] = {}
    for edge, data in edges.items():
        status = "-"
        for result in (data or {}).get("ready") or []:
            if (result.get("item") or {}).get("name") == service:
                code = int(result.get("status") or -1)
                status = str(code) if code > 0 else "no answer"
        ready[edge] = status
    return ready


def release_status(
    services: Sequence[Mapping[str, Any]],
    edges: Mapping[str, Any],
    containers: Mapping[str, Any] | None = None,
    edge_services: Sequence[Mapping[str, Any]] | None = None,
    default_weights: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """One row per service; see DOCUMENTATION."""
    if not isinstance(edges, Mapping) or not isinstance(services, Sequence):
        raise AnsibleFilterError(
            "release_status: expects the services (a list) and edges={edge: what was read there}"
        )
    default = default_weights or {"blue": 100, "green": 0}
    containers = containers or {}
    inventory = {
        item.get("name"): _weights_or_default(item.get("weights"), default)
        for item in edge_services or []
    }
    states, unread = read_edges(edges)
    docker_unread = [host for host, listed in containers.items() if listed is None]
    rows = []
    for svc in services:
        name = str(svc["name"])
        weights = inventory.get(name) or _weights_or_default(None, default)
        views = {edge: edge_view(state, name, weights) for edge, state in states.items()}
        view = next(iter(views.values()), None) or edge_view({}, name, weights)
        said = {edge: unread[edge] if edge in unread else views[edge]["said"] for edge in edges}
        rows.append(
            {
                "service": name,
                "domain": str(svc.get("domain") or ""),
                "live": _colour(view["live"], view, containers, name),
                "other": _colour(other_colour(view["live"]), view, containers, name),
                "source": view["source"],
                "ready": _ready(edges, name),
                "edges": said,
                "agree": not edge_differences(states, [name]),
                "unread": [edge for edge in edges if edge in unread],
                "docker_unread": docker_unread,
            }
        )
    return rows


def _cell_live(colour: Mapping[str, Any]) -> str:
    return " ".join(
        str(p) for p in (colour["colour"], colour["weight"], colour["version"]) if p != ""
    )


def _cell_other(colour: Mapping[str, Any]) -> str:
    return f"{_cell_live(colour)} {colour['presence']}"


def _cell_ready(ready: Mapping[str, str]) -> str:
    values = set(ready.values())
    if len(values) <= 1:
        return next(iter(values), "-")
    return ", ".join(f"{edge} {status}" for edge, status in ready.items())


def _cell_edges(row: Mapping[str, Any]) -> str:
    if not row["agree"]:
        return "DISAGREE"
    if row["unread"]:
        return "UNREAD " + ",".join(row["unread"])
    return f"agree ({len(row['edges'])})"


def release_status_table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The rows as an aligned text table, then what each edge says where they differ."""
    head = [
        "service",
        "domain",
        "live: colour weight version",
        "other: colour weight version containers",
        "live on host(s)",
        "docker health",
        "ready via edge",
        "edges",
    ]
    cells = [
        [
            row["service"],
            row["domain"],
            _cell_live(row["live"]),
            _cell_other(row["other"]),
            ",".join(row["live"]["hosts"]) or "NONE RUNNING",
            ",".join(row["live"]["health"]) or "-",
            _cell_ready(row["ready"]),
            _cell_edges(row),
        ]
        for row in rows
    ]
    widths = [max(len(line[i]) for line in [head, *cells]) for i in range(len(head))]
    lines = [
        " | ".join(value.ljust(width) for value, width in zip(line, widths, strict=True)).rstrip()
        for line in [head, *cells]
    ]
    for row in rows:
        if row["agree"]:
            continue
        lines.append("")
        lines.append(f"Edges DISAGREE on {row['service']}:")
        lines.extend(f"  {edge}: {said}" for edge, said in row["edges"].items())
    unread = {edge: row["edges"][edge] for row in rows for edge in row["unread"]}
    if unread:
        lines.append("")
        lines.append("Edge(s) whose release state was not read (rows marked UNREAD):")
        lines.extend(f"  {edge}: {why}" for edge, why in unread.items())
    docker_unread = next((row["docker_unread"] for row in rows if row["docker_unread"]), [])
    if docker_unread:
        lines.append("")
        lines.append(
            "Docker host(s) not reached, their containers are not counted: "
            + ", ".join(docker_unread)
        )
    return lines


class FilterModule:
    """Release status filters."""

    def filters(self) -> dict[str, Any]:
        return {"release_status": release_status, "release_status_table": release_status_table}
