# Copyright: venta.deploy developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""List the Deployments whose rollout is not complete."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ansible_collections.venta.deploy.plugins.module_utils.k8s_switch import deployment_available

DOCUMENTATION = r"""
name: k8s_rollout_pending
author: venta.deploy developers
version_added: "0.3.0"
short_description: The Deployments whose rollout is not complete, with the reason
description:
  - A Deployment is rolled out when its controller has seen its latest spec, every replica is
    updated, ready and available, no old replica is left and its C(Available) condition is true.
options:
  _input:
    description: Deployments as C(kubernetes.core.k8s_info) returns them.
    type: list
    elements: dict
    required: true
"""

EXAMPLES = r"""
- name: Fail on a Deployment that is not rolled out
  ansible.builtin.assert:
    that: __deployments.resources | venta.deploy.k8s_rollout_pending | length == 0
"""

RETURN = r"""
_value:
  description:
    - "C(namespace/name: reason) per Deployment that is not rolled out; empty when all are."
  type: list
  elements: str
"""


def k8s_rollout_pending(deployments: Sequence[Mapping[str, Any]]) -> list[str]:
    pending = []
    for dep in deployments or []:
        ok, why = deployment_available(dep)
        if not ok:
            meta = dep.get("metadata", {})
            pending.append(f"{meta.get('namespace')}/{meta.get('name')}: {why}")
    return pending


class FilterModule:
    """The rollout filter."""

    def filters(self) -> dict[str, Any]:
        return {"k8s_rollout_pending": k8s_rollout_pending}
