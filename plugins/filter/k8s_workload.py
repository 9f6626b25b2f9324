# Copyright: venta.deploy developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Plan the Kubernetes objects of the catalog's services from the live release state."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from ansible.errors import AnsibleFilterError

DOCUMENTATION = r"""
name: k8s_workload_plan
author: venta.deploy developers
version_added: "0.3.0"
short_description: Per service, what each colour of the Kubernetes platform runs
description:
  - For each resolved catalog service, decides its namespace, which colour gets the catalog's
    tag (O(target)), the tag the other colour keeps, the replica count and HPA bounds of each
    colour and the Service selector, from the recorded release state (ConfigMap
    C(venta-release), written by M(venta.deploy.k8s_switch)) and the live Deployments, so that a
    deploy never reverts a switch, a canary or the autoscaler's replica count.
options:
  _input:
    description: The resolved services (C(venta_services)).
    type: list
    elements: dict
    required: true
  releases:
    description: The C(venta-release) ConfigMaps of the namespaces (C(kubernetes.core.k8s_info)
      resources); missing means nothing recorded yet.
    type: list
    elements: dict
    default: []
  deployments:
    description: The live Deployments of the namespaces (C(kubernetes.core.k8s_info) resources).
    type: list
    elements: dict
    default: []
  target:
    description: Colour that gets the catalog's tag; C(active) (the recorded one, blue at first),
      C(idle) (the other), C(blue) or C(green).
    type: str
    default: active
  namespace_prefix:
    description: Namespace of a domain is this prefix plus the domain.
    type: str
    default: venta-
"""

EXAMPLES = r"""
- name: Plan the services
  ansible.builtin.set_fact:
    __plan: >-
      {{ venta_services | venta.deploy.k8s_workload_plan(releases=__cms, deployments=__deps,
           target='idle', namespace_prefix='venta-') }}
"""

RETURN = r"""
_value:
  description: One item per service with C(name), C(namespace), C(active), C(target_colour),
    C(weights), C(selector) (the Service's selector), C(canary) (true during a split),
    C(colours.<colour>) with C(tag), C(replicas), C(hpa_min), C(hpa_max), C(pinned), and
    C(recorded) (the recorded state already names these versions, so nothing is to record).
  type: list
  elements: dict
"""

COLOURS = ("blue", "green")
TARGETS = ("active", "idle", *COLOURS)
LABEL_APP = "app.kubernetes.io/name"
LABEL_COLOUR = "venta.io/colour"
LABEL_VERSION = "app.kubernetes.io/version"


def _fail(msg: str) -> None:
    raise AnsibleFilterError(f"k8s_workload_plan: {msg}")


def _entries(releases: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for cm in releases or []:
        namespace = cm.get("metadata", {}).get("namespace", "")
        for service, text in (cm.get("data") or {}).items():
            try:
                entry = json.loads(text)
            except ValueError:
                _fail(
                    f"ConfigMap {namespace}/venta-release key {service} is not JSON; fix or delete "
                    "the key (the next deploy records it again)"
                )
            if isinstance(entry, dict):
                out[(namespace, service)] = entry
    return out


def _weights(entry: Mapping[str, Any] | None) -> dict[str, int] | None:
    weights = (entry or {}).get("weights")
    if not isinstance(weights, Mapping):
        return None
    return {c: int(weights.get(c) or 0) for c in COLOURS}


def k8s_workload_plan(
    services: Sequence[Mapping[str, Any]],
    releases: Sequence[Mapping[str, Any]] | None = None,
    deployments: Sequence[Mapping[str, Any]] | None = None,
    target: str = "active",
    namespace_prefix: str = "venta-",
) -> list[dict[str, Any]]:
    if target not in TARGETS:
        _fail(f"kubernetes_workload_target must be one of {list(TARGETS)}, got {target!r}")
    recorded = _entries(releases or [])
    live = {
        (d.get("metadata", {}).get("namespace"), d.get("metadata", {}).get("name")): d
        for d in deployments or []
    }
    plan = []
    for svc in services:
        name, namespace = svc["name"], f"{namespace_prefix}{svc['domain']}"
        entry = recorded.get((namespace, name))
        weights = _weights(entry)
        active = (entry or {}).get("active") if weights else None
        if active not in COLOURS:
            active = "blue"
        if weights is None:
            weights = {c: 100 if c == active else 0 for c in COLOURS}
        idle = COLOURS[1] if active == COLOURS[0] else COLOURS[0]
        target_colour = {"active": active, "idle": idle}.get(target, target)
        versions = (entry or {}).get("versions") or {}
        pins = (entry or {}).get("replicas") or {}
        scaling = svc["scaling"]
        colours = {}
        for colour in COLOURS:
            dep = live.get((namespace, f"{name}-{colour}"))
            labels = (dep or {}).get("metadata", {}).get("labels") or {}
            if colour == target_colour:
                # A converge (target active) keeps the version a release put there.
                recorded_tag = versions.get(colour) if target == "active" else None
                tag = str(recorded_tag or svc["tag"])
            else:
                tag = str(labels.get(LABEL_VERSION) or versions.get(colour) or svc["tag"])
            pinned = pins.get(colour)
            low, high = (int(pinned), int(pinned)) if pinned else (scaling["min"], scaling["max"])
            current = (dep or {}).get("spec", {}).get("replicas")
            replicas = low if current is None else min(max(int(current), low), high)
            colours[colour] = {
                "tag": tag,
                "replicas": replicas,
                "hpa_min": low,
                "hpa_max": high,
                "pinned": bool(pinned),
            }
        tags = {colour: colours[colour]["tag"] for colour in COLOURS}
        up_to_date = entry is not None and dict(entry.get("versions") or {}) == tags
        serving = [c for c in COLOURS if weights[c] > 0]
        selector = {LABEL_APP: name}
        if len(serving) == 1:
            selector[LABEL_COLOUR] = serving[0]
        plan.append(
            {
                "name": name,
                "namespace": namespace,
                "active": active,
                "target_colour": target_colour,
                "weights": weights,
                "canary": len(serving) > 1,
                "selector": selector,
                "colours": colours,
                "recorded": up_to_date,
            }
        )
    return plan


class FilterModule:
    """The Kubernetes workload plan filter."""

    def filters(self) -> dict[str, Any]:
        return {"k8s_workload_plan": k8s_workload_plan}
