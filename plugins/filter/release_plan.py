# Copyright: venta.deploy developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Release, rollback and reconcile plans from the release state of every edge.

The rules live in plugins/module_utils/release_state.py (one definition of which colour is live,
which is idle and where a rollback goes); these filters only expose them to the playbooks.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from ansible.errors import AnsibleFilterError
from ansible_collections.venta.deploy.plugins.module_utils.release_state import (
    describe_switch_results,
    plan_crash_repair,
    plan_reconcile,
    plan_release,
    plan_rollback,
)

DOCUMENTATION = r"""
name: release_plan
author: venta.deploy developers
version_added: "0.5.0"
short_description: Plan a release from the release state of every edge
description:
  - Per service of the selection, the live colour, the idle colour the version goes into and the
    versions to record; services whose live colour already runs the version with all the traffic
    are skipped.
  - Refuses (C(ok=false), C(errors)) when the edges do not agree on what they serve, naming each
    edge's view and the reconcile command, or when a service is in the middle of a canary
    towards another version.
  - The same plugin file provides C(rollback_plan), C(reconcile_plan), C(crash_repair) (what a
    killed run switched on some edges only, to put back) and C(switch_outcome).
options:
  _input:
    description:
      - "The release state of every edge, C({edge: state}), each the state as a dict
        (C(nginx_edge_release_state)) or the file's text; an empty text is nothing recorded."
      - An edge whose state is null did not answer; the filter raises an error naming it.
    type: dict
    required: true
  services:
    description: The selected catalog entries (name, domain, tag).
    type: list
    elements: dict
    required: true
  version:
    description: The version to release.
    type: str
    required: true
"""

EXAMPLES = r"""
- name: Plan the release
  ansible.builtin.set_fact:
    __plan: "{{ __state_texts | venta.deploy.release_plan(venta_services, venta_release_version) }}"

- name: Plan the rollback (slots are each Docker host's '<container> <version>' lines)
  ansible.builtin.set_fact:
    __plan: >-
      {{ __state_texts | venta.deploy.rollback_plan(venta_services, __slots, groups,
                                                    venta_rollback_to | default(none)) }}
"""

RETURN = r"""
_value:
  description:
    - C({ok, errors, plan, skipped}); C(plan) items are C({name, domain, live, idle,
      live_version, versions, weights}).
  type: dict
"""


def _texts(value: Any) -> dict[str, str]:
    """{edge: state} (a dict, or the file's text; '' is nothing recorded) -> {edge: text}."""
    if not isinstance(value, Mapping):
        raise AnsibleFilterError(
            "the input must be the release state of every edge, {edge: state}, got "
            + type(value).__name__
        )
    texts: dict[str, str] = {}
    for edge, state in value.items():
        if state is None:
            raise AnsibleFilterError(
                f"no release state was read from {edge}: it did not answer, so nothing is "
                "planned; bring it back (or take it out of the edge group) and run again"
            )
        texts[str(edge)] = json.dumps(state) if isinstance(state, Mapping) else str(state)
    return texts


def _services(value: Any) -> list[Mapping[str, Any]]:
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise AnsibleFilterError("services must be the list of catalog entries (venta_services)")
    bad = [item for item in value if not isinstance(item, Mapping) or "name" not in item]
    if bad:
        raise AnsibleFilterError(f"services: every item needs a name, got {bad[:1]}")
    return list(value)


def release_plan(texts: Any, services: Any, version: Any) -> dict[str, Any]:
    return plan_release(_texts(texts), _services(services), str(version))


def rollback_plan(
    texts: Any, services: Any, slots: Any, groups: Any, rollback_to: Any = None
) -> dict[str, Any]:
    if not isinstance(slots, Mapping) or not isinstance(groups, Mapping):
        raise AnsibleFilterError(
            "rollback_plan needs slots ({docker host: ['<container> <version>', ...]}) and groups"
        )
    target = None if rollback_to in (None, "") else str(rollback_to)
    return plan_rollback(
        _texts(texts),
        _services(services),
        {str(k): [str(line) for line in v or []] for k, v in slots.items()},
        {str(k): list(v or []) for k, v in groups.items()},
        target,
    )


def reconcile_plan(texts: Any, services: Any, source: Any = None) -> dict[str, Any]:
    names = [str(item["name"]) for item in _services(services)]
    return plan_reconcile(_texts(texts), names, None if source in (None, "") else str(source))


def crash_repair(texts: Any, services: Any, broken_run: Any = None) -> dict[str, Any]:
    names = [str(item["name"]) for item in _services(services)]
    return plan_crash_repair(_texts(texts), names, None if not broken_run else str(broken_run))


def switch_outcome(results: Any) -> str:
    if not isinstance(results, Mapping):
        raise AnsibleFilterError("switch_outcome needs {edge: nginx_edge_switch_result}")
    return describe_switch_results(results)


class FilterModule:
    """Plans over the release state of every edge."""

    def filters(self) -> dict[str, Any]:
        return {
            "release_plan": release_plan,
            "rollback_plan": rollback_plan,
            "reconcile_plan": reconcile_plan,
            "crash_repair": crash_repair,
            "switch_outcome": switch_outcome,
        }
