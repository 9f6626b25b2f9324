# Copyright: venta.deploy developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Judge a canary step on the upstream attempts every edge counted."""

from __future__ import annotations

from typing import Any

from ansible.errors import AnsibleFilterError
from ansible_collections.venta.deploy.plugins.module_utils.canary_analysis import (
    CanaryArgumentError,
)
from ansible_collections.venta.deploy.plugins.module_utils.canary_analysis import (
    canary_verdict as judge_canary,
)

DOCUMENTATION = r"""
name: canary_verdict
author: venta.deploy developers
version_added: "0.4.0"
short_description: Judge a canary step on the upstream attempts counted on every edge
description:
  - Sums the counts of C(venta.deploy.edge_attempts) over every edge (clients may reach only one
    edge through a VIP), then judges each service of O(canary) on its canary colour's attempts.
  - "C(fail) when the canary colour had fewer than O(min_attempts) attempts: no evidence is not
    success. C(fail) when its error attempts (5xx or no status, retried ones included) exceed
    O(max_error_ratio) of its attempts. Else C(pass). Both limits are inclusive: exactly
    O(min_attempts) attempts and exactly O(max_error_ratio) pass."
  - The stable colour's numbers and the attempts per edge come with each service, so a report
    can compare the colours and show where the traffic went.
  - Counts that are not what C(venta.deploy.edge_attempts) returns never raise; the result has
    C(ok=false) and a message saying what is wrong. Bad arguments raise an error naming the
    argument.
options:
  _input:
    description:
      - "The counts of every edge, C({edge: counts}), each C(counts) the
        RV(venta.deploy.edge_attempts#module:counts) of that edge: C({service: {blue: {attempts,
        errors, client_errors, answers}, green: {...}}}). A service or colour an edge does not
        list counts 0 there."
    type: dict
    required: true
  canary:
    description: "The canary colour of each service to judge, C({service: blue|green})."
    type: dict
    required: true
  min_attempts:
    description:
      - Fewest attempts on the canary colour, summed over the edges, for a verdict
        (C(venta_release_canary_min_requests)). At least 1.
    type: int
    default: 50
  max_error_ratio:
    description:
      - Largest share of the canary colour's attempts that may be errors, in [0, 1)
        (C(venta_release_canary_max_error_ratio)).
    type: float
    default: 0.01
"""

EXAMPLES = r"""
- name: Judge the green canary of api-gateway on both edges
  ansible.builtin.set_fact:
    __release_verdict: >-
      {{ {'edge1': hostvars['edge1'].__attempts.counts,
          'edge2': hostvars['edge2'].__attempts.counts}
         | venta.deploy.canary_verdict({'api-gateway': 'green'},
                                       min_attempts=venta_release_canary_min_requests,
                                       max_error_ratio=venta_release_canary_max_error_ratio) }}

- name: Fail the step (and roll back) without enough good evidence
  ansible.builtin.fail:
    msg: "{{ __release_verdict.message }}"
  when: not __release_verdict.ok
"""

RETURN = r"""
_value:
  description:
    - "C(ok): every service passed. C(message): the verdict in words, naming each failing
      service, its numbers and the variable to change."
    - "C(services.<service>): the canary C(colour) and its summed C(attempts), C(errors),
      C(client_errors), C(answers), C(ratio) (null without attempts); C(verdict) (C(pass) or
      C(fail)) and C(reason); C(stable), the same numbers of the other colour; C(edges),
      C({edge: {blue: {attempts, errors}, green: {...}}}); C(min_attempts) and
      C(max_error_ratio)."
  type: dict
  sample:
    ok: false
    message: "canary failed (counted on edge1, edge2): api-gateway (green): too few requests: 2
      attempt(s) on the canary, at least 50 needed; ..."
    services:
      api-gateway:
        colour: green
        attempts: 2
        errors: 2
        client_errors: 0
        answers: 0
        ratio: 1.0
        verdict: fail
        reason: "api-gateway (green): too few requests: ..."
        stable: {"colour": "blue", "attempts": 300, "errors": 0, "client_errors": 0,
                 "answers": 300, "ratio": 0.0}
        edges:
          edge1: {"blue": {"attempts": 200, "errors": 0}, "green": {"attempts": 2, "errors": 2}}
          edge2: {"blue": {"attempts": 100, "errors": 0}, "green": {"attempts": 0, "errors": 0}}
        min_attempts: 50
        max_error_ratio: 0.01
"""


def canary_verdict(
    counts_by_edge: Any, canary: Any, min_attempts: Any = 50, max_error_ratio: Any = 0.01
) -> dict[str, Any]:
    try:
        return judge_canary(counts_by_edge, canary, min_attempts, max_error_ratio)
    except CanaryArgumentError as exc:
        raise AnsibleFilterError(f"canary_verdict: {exc}") from None


class FilterModule:
    """The canary verdict filter."""

    def filters(self) -> dict[str, Any]:
        return {"canary_verdict": canary_verdict}
