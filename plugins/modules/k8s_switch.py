#!/usr/bin/python
# Copyright: venta.deploy developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Switch one service's traffic between its blue and green Deployments on Kubernetes."""

from __future__ import annotations

DOCUMENTATION = r"""
module: k8s_switch
author: venta.deploy developers (@venta-deploy)
version_added: "0.3.0"
short_description: Switch a service's traffic between blue and green (or split it) on Kubernetes
description:
  - The release switch of the Kubernetes platform, for services deployed by the
    M(venta.deploy.kubernetes_workload) role (Deployments C(<service>-blue) and
    C(<service>-green), an HPA of the same name per colour, the Service C(<service>)).
  - "Order: read the Service, both Deployments, their HPAs and the recorded state; fail, touching
    nothing, unless every colour that gets weight is Available with all replicas updated; set the
    replica counts the weights need (the canary colour pinned through its HPA, min = max; a
    colour taking over all traffic scaled to at least the replicas of the colour it replaces)
    and wait for them; patch the Service selector; record the state."
  - "Weights C(100/0): the Service selects C(app.kubernetes.io/name=<service>) and
    C(venta.io/colour=<colour>). Split weights (canary): it selects both colours and the colour
    with less weight runs C(max(1, round(replicas_major * weight_minor / weight_major)))
    replicas, so its share of the EndpointSlices is about its weight (see RV(effective_weights);
    with few replicas the steps are coarse)."
  - The state is one JSON entry per service under C(data.<service>) of the ConfigMap
    O(configmap) in the namespace, with C(weights), C(active), C(previous), C(versions) (the
    C(app.kubernetes.io/version) label of each colour's Deployment), C(replicas) (pinned canary
    replicas), C(switched_at) and the last ten C(history) items. The role reads it, so a later
    deploy never reverts a switch.
  - Patches are sent with the field manager C(venta.deploy.k8s_switch).
requirements:
  - kubernetes (the Python client) >= 24.2.0
attributes:
  check_mode:
    support: full
    description: Reads everything and reports the actions it would take; changes nothing.
  diff_mode:
    support: full
    description: Before and after of the Service selector and the service's state entry.
  idempotent:
    support: full
    description: A second identical switch reports C(changed=false) and touches nothing.
options:
  namespace:
    description: Namespace of the service.
    type: str
    required: true
  service:
    description: The service's name (its Service; Deployments and HPAs add C(-blue)/C(-green)).
    type: str
    required: true
  weights:
    description:
      - Traffic share of each colour, 0 to 100, adding up to 100; a colour left out gets 0.
      - "C({green: 100}) switches to green; C({blue: 90, green: 10}) is a canary."
      - Mutually exclusive with O(rollback).
    type: dict
  rollback:
    description:
      - Send all traffic back to the colour recorded as C(previous); during a canary, to the
        colour that had the most weight.
    type: bool
    default: false
  wait_timeout:
    description: Seconds to wait for replicas this switch adds to become Available.
    type: int
    default: 120
  match_capacity:
    description:
      - Before a colour takes over all traffic, scale it to at least the replicas of the colour
        that served it (within its HPA maximum).
    type: bool
    default: true
  configmap:
    description: Name of the ConfigMap in O(namespace) that records the release state.
    type: str
    default: venta-release
  kubeconfig:
    description:
      - Path of the kubeconfig; default C(K8S_AUTH_KUBECONFIG), C(KUBECONFIG), then
        C(~/.kube/config).
    type: path
  context:
    description: Context of the kubeconfig to use; default its current context.
    type: str
notes:
  - Not available on a colour is a failure before any change; a timeout while waiting for added
    replicas leaves the Service selector as it was (the added replicas stay; they serve nothing).
seealso:
  - module: venta.deploy.nginx_switch
"""

EXAMPLES = r"""
- name: Switch api-gateway to green
  venta.deploy.k8s_switch:
    namespace: venta-infrastructure
    service: api-gateway
    weights: {green: 100}

- name: Canary 90/10
  venta.deploy.k8s_switch:
    namespace: venta-marketplace
    service: user-management
    weights: {blue: 90, green: 10}

- name: Roll back to the previous colour
  venta.deploy.k8s_switch:
    namespace: venta-marketplace
    service: user-management
    rollback: true
"""

RETURN = r"""
actions:
  description: What changed (or would change in check mode), in order, from what to what.
  returned: always
  type: list
  elements: dict
  sample:
    - {object: Service/venta-infrastructure/api-gateway, field: spec.selector,
       from: {app.kubernetes.io/name: api-gateway, venta.io/colour: blue},
       to: {app.kubernetes.io/name: api-gateway, venta.io/colour: green}}
state:
  description: The service's recorded release state after the switch.
  returned: always
  type: dict
  sample:
    weights: {blue: 0, green: 100}
    active: green
    previous: blue
    versions: {blue: 1.0.0, green: 1.1.0}
    replicas: {}
    switched_at: "2025-01-01T12:00:00Z"
    history: []
effective_weights:
  description: Share of the Service's endpoints per colour that the replica counts give.
  returned: always
  type: dict
  sample: {blue: 75, green: 25}
gate_seconds:
  description: Seconds spent waiting for added replicas to become Available.
  returned: always
  type: float
  sample: 4.1
"""

import os
import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

try:
    import kubernetes  # noqa: F401  pylint: disable=unused-import
except ImportError:
    HAS_KUBERNETES = False
    KUBERNETES_ERROR = traceback.format_exc()
else:
    HAS_KUBERNETES = True
    KUBERNETES_ERROR = None

from ansible_collections.venta.deploy.plugins.module_utils.k8s_switch import (
    ClientApi,
    Request,
    Switch,
    SwitchError,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "namespace": {"type": "str", "required": True},
            "service": {"type": "str", "required": True},
            "weights": {"type": "dict"},
            "rollback": {"type": "bool", "default": False},
            "wait_timeout": {"type": "int", "default": 120},
            "match_capacity": {"type": "bool", "default": True},
            "configmap": {"type": "str", "default": "venta-release"},
            "kubeconfig": {"type": "path"},
            "context": {"type": "str"},
        },
        mutually_exclusive=[("weights", "rollback")],
        required_one_of=[("weights", "rollback")],
        supports_check_mode=True,
    )
    if not HAS_KUBERNETES:
        module.fail_json(msg=missing_required_lib("kubernetes"), exception=KUBERNETES_ERROR)
    params = module.params
    if params["rollback"] is False and not params["weights"]:
        module.fail_json(msg="give weights (e.g. {green: 100}) or rollback: true")
    kubeconfig = (
        params["kubeconfig"]
        or os.environ.get("K8S_AUTH_KUBECONFIG")
        or os.environ.get("KUBECONFIG")
        or None
    )
    request = Request(
        namespace=params["namespace"],
        service=params["service"],
        weights=params["weights"] if not params["rollback"] else None,
        rollback=params["rollback"],
        wait_timeout=params["wait_timeout"],
        match_capacity=params["match_capacity"],
        configmap=params["configmap"],
    )
    try:
        api = ClientApi(kubeconfig, params["context"])
        outcome = Switch(api, request, check_mode=module.check_mode).run()
    except SwitchError as exc:
        module.fail_json(msg=str(exc))
    except Exception as exc:  # API errors: name the object and what to check
        module.fail_json(
            msg=f"k8s_switch {params['namespace']}/{params['service']}: {exc}; check the "
            "kubeconfig and that the service was deployed by the kubernetes_workload role",
            exception=traceback.format_exc(),
        )
    result = outcome.result()
    if not module._diff:
        result.pop("diff")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
