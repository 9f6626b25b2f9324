#!/usr/bin/python
# Copyright: venta.deploy developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Switch services' traffic between their blue and green slots on an nginx edge."""

from __future__ import annotations

DOCUMENTATION = r"""
module: nginx_switch
author: venta.deploy developers (@venta-deploy)
version_added: "0.2.0"
short_description: Switch services' traffic between blue and green (or split it) on an nginx edge
description:
  - The release switch of the Docker platform. Runs on an edge host converged by the
    C(venta.deploy.nginx_edge) role and rewrites the upstream file of each service in
    O(services), C(<upstream_dir>/<service>.conf), with the requested weights (C(100/0) for
    blue-green, e.g. C(90/10) for a canary). One service is a list of one.
  - "Order, under the edge's lock: complete or undo an interrupted switch (see below); read the
    recorded state once and plan every service (nothing differs: C(changed=false), nothing
    touched); health-gate every backend of each colour that gets weight > 0, for every service
    at once (failure: nothing touched); write the intent record; write each new file (temp file,
    rename); ONE C(nginx -t); ONE graceful reload; verify every service through the edge; ONE
    write of the state; remove the intent. Any failure after the first write puts every previous
    file back (and reloads once more when nginx had already loaded them), so the traffic of
    every service is left as it was."
  - "Crash safety: the intent record (O(state_file) + C(.intent)) holds every file's text before
    and after. A run that finds it, or finds an upstream file whose weights are not the recorded
    ones, first completes the interrupted switch (when the state was already recorded) or undoes
    it (otherwise): files put right, C(nginx -t), reload, verification through the edge, intent
    removed. With an empty O(services) the module does only that (the nginx_edge role calls it
    so before a deploy writes anything)."
  - "Verification: after the reload each service's edge URL is asked until
    O(verify_successes) answers in a row come from colours with weight AND every colour with
    weight has answered at least once (a 10 % canary gets up to about 50 requests)."
  - The file text is byte for byte what the role's template renders for the same weights (the
    template renders it with this module's own code, the C(venta.deploy.nginx_upstream) filter),
    so a later deploy changes nothing.
  - "The state file is JSON: C(services.<service>) holds C(weights), C(active), C(previous),
    C(versions), C(backends), C(switched_at), C(last_action) (O(action), O(run_id), time) and the
    last ten C(history) items; other services' entries are kept as they are. Switches on one
    edge are serialised with a lock file (O(state_file) + C(.lock))."
  - A reload is graceful, old nginx workers finish their requests and keep WebSockets open for at
    most C(nginx_edge_worker_shutdown_timeout).
  - "Crash tests: when C(/run/venta-failpoints/nginx_switch) names a phase (C(before-write),
    C(after-rename), C(after-reload), C(before-record)), the module kills itself with SIGKILL
    there. Nothing else reads that file."
extends_documentation_fragment:
  - venta.deploy.http_client
attributes:
  check_mode:
    support: full
    description:
      - Reads the state, runs the health gate (read-only probes) and reports what would change;
        writes nothing and does not reload.
  diff_mode:
    support: full
    description:
      - Before and after of the upstream file and of the service's state entry.
      - With O(services), one entry per changed upstream file and per changed state entry.
  idempotent:
    support: full
    description: A second identical switch reports C(changed=false) and touches nothing.
options:
  services:
    description:
      - The services to switch together, all or nothing, with one C(nginx -t) and one reload (a
        domain's step of a release, the rollback of a whole stack, or one service).
      - Each item takes the per-service options; O(health_checks) and O(verify_headers) given at
        the top level are the defaults of the items that do not set them, every other option
        (health gate timing, HTTP client, verification, O(upstream_dir), O(state_file), the
        commands, the upstream settings) is shared.
      - A service may appear once. An empty list only completes or undoes an interrupted switch.
    required: true
    type: list
    elements: dict
    suboptions:
      service:
        description:
          - The service's name, as in C(nginx_edge_services); its upstream is
            C(venta_<name with underscores>).
        type: str
        required: true
      weights:
        description:
          - Traffic share of each colour, 0 to 100, adding up to 100. A colour left out gets 0.
          - With equal backend counts per colour the weights are traffic percentages.
        type: dict
        required: true
        suboptions:
          blue:
            description: Weight of the blue slot.
            type: int
            default: 0
          green:
            description: Weight of the green slot.
            type: int
            default: 0
      versions:
        description:
          - The version each slot runs, recorded in the state. A colour left out keeps its
            recorded version.
        type: dict
        suboptions:
          blue:
            description: Version of the blue slot.
            type: str
          green:
            description: Version of the green slot.
            type: str
      backends:
        description:
          - C(host:port) of every backend of each colour, as in C(nginx_edge_services[].backends).
          - When unset, the backends recorded by the last switch are used.
        type: dict
        suboptions:
          blue:
            description: Backends of the blue slot.
            type: list
            elements: str
          green:
            description: Backends of the green slot.
            type: list
            elements: str
      health_checks:
        description:
          - This service's checks, as O(health_checks); unset, the top-level O(health_checks)
            (or C(/health) of every backend).
        type: list
        elements: dict
        suboptions:
          path:
            description: Path probed on every backend of the colour, e.g. C(/ready).
            type: str
          url:
            description: A full URL, probed once for O(services[].health_checks[].colour).
            type: str
          colour:
            description: The colour a O(services[].health_checks[].url) check belongs to.
            type: str
            choices: [blue, green]
          scheme:
            description: Scheme of the backends for O(services[].health_checks[].path) checks.
            type: str
            choices: [http, https]
            default: http
          status_code:
            description: Status codes that count as healthy.
            type: list
            elements: int
            default: [200]
          body_contains:
            description: Text the body must contain.
            type: str
          json_match:
            description: JSON values the body must have (dotted keys).
            type: dict
          headers:
            description: Request headers.
            type: dict
          colour_header:
            description: A response header that must name the backend's colour.
            type: str
          version_header:
            description: A response header that must equal the colour's version.
            type: str
      verify_url:
        description:
          - This service's edge URL; unset, O(verify_url_pattern) with the service's name.
        type: str
      verify_headers:
        description:
          - Request headers of this service's verification, as O(verify_headers); unset, the
            top-level O(verify_headers).
        type: dict
      recorded:
        description:
          - Recorded as they are instead of computed, copied from another edge's entry by
            C(playbooks/reconcile.yml) so that the edges agree afterwards.
        type: dict
        suboptions:
          previous:
            description: The colour a rollback goes to.
            type: str
            choices: [blue, green]
          last_action:
            description: The last action, C({kind, run_id, at}).
            type: dict
  health_checks:
    description:
      - Checks run before anything changes, for every colour that gets weight > 0, with the
        logic of M(venta.deploy.health_gate).
      - An item with O(health_checks[].path) is probed on every backend of the colour
        (C(<scheme>://<backend><path>)); an item with O(health_checks[].url) is probed once for
        its O(health_checks[].colour).
      - When unset, C(/health) of every backend must answer 200.
      - The default of the items that do not set their own.
    type: list
    elements: dict
    suboptions:
      path:
        description: Path probed on every backend of the colour, e.g. C(/ready).
        type: str
      url:
        description: A full URL, probed once for O(health_checks[].colour).
        type: str
      colour:
        description: The colour a O(health_checks[].url) check belongs to.
        type: str
        choices: [blue, green]
      scheme:
        description: Scheme of the backends for O(health_checks[].path) checks.
        type: str
        choices: [http, https]
        default: http
      status_code:
        description: Status codes that count as healthy.
        type: list
        elements: int
        default: [200]
      body_contains:
        description: Text the body must contain.
        type: str
      json_match:
        description: JSON values the body must have (dotted keys), see M(venta.deploy.health_gate).
        type: dict
      headers:
        description: Request headers.
        type: dict
      colour_header:
        description: A response header that must name the backend's colour, e.g. C(X-Venta-Colour).
        type: str
      version_header:
        description:
          - A response header that must equal the colour's version from
            O(services[].versions) (or the recorded one), e.g. C(X-Venta-Version).
        type: str
  health_successes:
    description: Good answers in a row each health check needs.
    type: int
    default: 3
  health_interval:
    description: Seconds between two probes of one health check.
    type: float
    default: 0.5
  health_timeout:
    description: Seconds after which an unhealthy backend fails the switch.
    type: float
    default: 60.0
  upstream_dir:
    description: Directory of the upstream files (the nginx_edge role's switch layer).
    type: path
    default: /etc/nginx/venta-switch/upstreams
  state_file:
    description:
      - The release state file. The default is where the nginx_edge role reads it
        (C(ansible_local.venta_release)); another path is not seen by the role.
    type: path
    default: /etc/ansible/facts.d/venta_release.fact
  test_command:
    description:
      - Command that tests the whole configuration of the nginx that includes O(upstream_dir).
      - The default tests the nginx_edge role's switch layer.
    type: list
    elements: str
    default: [/usr/sbin/nginx, -t, -q, -c, /etc/nginx/venta-switch/nginx.conf]
  reload_command:
    description:
      - Command that reloads that nginx gracefully (never a restart).
      - The default reloads the nginx_edge role's switch layer, never the client-facing nginx.
    type: list
    elements: str
    default: [systemctl, reload, venta-edge-switch]
  verify_url_pattern:
    description:
      - The edge URL that reaches a service's upstream, with C({service}) for its name, e.g.
        C(https://127.0.0.1/_venta/{service}/health). After the reload, each service is asked
        until O(verify_successes) answers in a row come from colours with weight and each of
        those colours answered (up to O(verify_requests), more for a small canary weight).
        Otherwise every previous file is put back and nginx reloaded.
      - It also verifies the services an interrupted switch is completed or undone for.
      - Unset (and no O(services[].verify_url)), the switch is not verified through the edge (not
        recommended).
    type: str
  verify_headers:
    description:
      - Request headers of the verification, e.g. C(Host); the default of the items that do not
        set their own.
    type: dict
    default: {}
  action:
    description:
      - What this switch is, recorded as C(last_action.kind) when a service's weights change. A
        rollback after a C(rollback) or an C(abort) has nothing left to undo.
    type: str
    choices: [release, rollback, abort, reconcile, switch]
    default: switch
  run_id:
    description: The id of the run (the release lock's), recorded with O(action) and the intent.
    type: str
  verify_status_code:
    description: Status codes of a good verification answer.
    type: list
    elements: int
    default: [200]
  verify_colour_header:
    description: Response header naming the colour that answered.
    type: str
    default: X-Venta-Colour
  verify_requests:
    description:
      - Most requests the verification sends (at least about 500 / the smallest live weight, so
        a 10 % canary is seen).
    type: int
    default: 20
  verify_successes:
    description: Good verification answers needed in a row.
    type: int
    default: 3
  verify_interval:
    description: Seconds between two verification requests.
    type: float
    default: 0.2
  max_fails:
    description: C(max_fails) of each live server (C(nginx_edge_upstream_max_fails)).
    type: int
    default: 3
  fail_timeout:
    description: C(fail_timeout) of each live server (C(nginx_edge_upstream_fail_timeout)).
    type: str
    default: 10s
  keepalive:
    description: Idle keepalive connections per worker (C(nginx_edge_upstream_keepalive)).
    type: int
    default: 32
  ansible_managed:
    description:
      - The C(ansible_managed) text the role's template puts at the top of the file (change it
        only if C(ansible.cfg) sets another one).
    type: str
    default: Ansible managed
  lock_timeout:
    description: Seconds to wait for another switch on this edge to finish.
    type: float
    default: 60.0
notes:
  - Backend host names must resolve on the edge (C(nginx -t) resolves every server, also those of
    a colour with weight 0).
  - The upstream must list the same backends as C(nginx_edge_services) for a deploy to keep the
    file unchanged.
seealso:
  - module: venta.deploy.health_gate
"""

EXAMPLES = r"""
- name: Switch api-gateway to green (blue-green; one service is a list of one)
  venta.deploy.nginx_switch:
    services:
      - service: api-gateway
        weights: {blue: 0, green: 100}
        backends:
          blue: [venta-app1:15002, venta-app2:15002]
          green: [venta-app1:25002, venta-app2:25002]
        versions: {green: "1.1.0"}
    health_checks:
      - path: /ready
        colour_header: X-Venta-Colour
        version_header: X-Venta-Version
    verify_url_pattern: https://127.0.0.1/_venta/{service}/health
    ca_path: /usr/local/share/ca-certificates/venta-lab-ca.crt
    action: release
  register: __switch

- name: Canary, 10 % to green (backends as recorded by the last switch)
  venta.deploy.nginx_switch:
    services:
      - service: api-gateway
        weights: {blue: 90, green: 10}
    verify_url_pattern: https://127.0.0.1/_venta/{service}/health
    ca_path: /usr/local/share/ca-certificates/venta-lab-ca.crt

- name: Roll back several services with one reload (all or nothing)
  venta.deploy.nginx_switch:
    services:
      - service: api-gateway
        weights: "{{ {ansible_local.venta_release.services['api-gateway'].previous: 100} }}"
      - service: geolocation
        weights: "{{ {ansible_local.venta_release.services['geolocation'].previous: 100} }}"
        health_checks:
          - path: /ready
    health_successes: 1
    verify_url_pattern: https://127.0.0.1/_venta/{service}/health
    ca_path: /usr/local/share/ca-certificates/venta-lab-ca.crt
    action: rollback
  register: __rollback

- name: Complete or undo an interrupted switch, nothing else
  venta.deploy.nginx_switch:
    services: []
    verify_url_pattern: https://127.0.0.1/_venta/{service}/health
    ca_path: /usr/local/share/ca-certificates/venta-lab-ca.crt
"""

RETURN = r"""
services:
  description:
    - One result per requested service, in the order of O(services), with C(service),
      C(upstream_file), C(state_file), C(before) (weights and active colour before, from the
      recorded state, else read from the upstream file), C(after), C(state) (the entry as
      recorded, or as it would be in check mode) and C(changed).
  returned: success
  type: list
  elements: dict
  sample:
    - service: api-gateway
      upstream_file: /etc/nginx/venta-switch/upstreams/api-gateway.conf
      state_file: /etc/ansible/facts.d/venta_release.fact
      before: {"weights": {"blue": 0, "green": 100}, "active": "green"}
      after: {"weights": {"blue": 100, "green": 0}, "active": "blue"}
      state: {"weights": {"blue": 100, "green": 0}, "active": "blue", "previous": "green"}
      changed: true
actions:
  description:
    - What the switch did, in order (also on failure, including the restore).
    - "Each action names its service or upstream file; an unchanged service gets
      C(<service>: unchanged, not touched)."
  returned: always
  type: list
  elements: str
  sample:
    - "health gate passed (green 2 URL(s))"
    - "wrote /etc/nginx/venta-switch/upstreams/api-gateway.conf (blue 0 / green 100)"
    - "/usr/sbin/nginx -t: ok"
    - "systemctl reload nginx: ok"
    - "verified through https://127.0.0.1/_venta/api-gateway/health: 3 good answers in a row,
       colours seen {'green': 3}"
    - "recorded the release state in /etc/ansible/facts.d/venta_release.fact"
timings:
  description:
    - Seconds per step, C(health_gate_s), C(write_s), C(validate_s), C(reload_s), C(verify_s),
      C(record_s), C(total_s), and C(switch_s) = write + validate + reload.
    - Each step is timed once for the whole switch (the health gate and the verification run in
      parallel over all services); C(recover_s) when an interrupted switch was recovered.
  returned: always
  type: dict
  sample: {"health_gate_s": 1.012, "write_s": 0.0011, "validate_s": 0.061, "reload_s": 0.052,
           "verify_s": 0.43, "record_s": 0.002, "switch_s": 0.1141, "total_s": 1.61}
health:
  description:
    - One result per health-gated URL (colour, backend, URL, attempts, timings, last status).
  returned: always
  type: list
  elements: dict
  sample:
    - {"service": "api-gateway", "colour": "green", "backend": "venta-app1:25002", "url": "http://venta-app1:25002/health",
       "ok": true, "attempts": 3, "consecutive_successes": 3, "elapsed_s": 1.01,
       "timings_ms": [3.2, 2.1, 2.0], "status": 200}
verify:
  description:
    - The verification through the edge by service name (requests sent, colours seen).
  returned: always
  type: dict
  sample: {"api-gateway": {"url": "https://127.0.0.1/_venta/api-gateway/health", "requests": 3,
           "consecutive_successes": 3, "colours_seen": {"green": 3},
           "expected_colours": ["green"]}}
state:
  description:
    - The whole release state of this edge after the switch (as recorded; in check mode as
      read), every service's entry. With an empty O(services), what the edge records now.
  returned: success
  type: dict
  sample: {"services": {"api-gateway": {"weights": {"blue": 0, "green": 100}, "active": "green"}}}
recovered:
  description:
    - The services an interrupted switch was completed or undone for, and how.
  returned: always
  type: dict
  sample: {"api-gateway": "undone, back to blue 100 / green 0"}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.venta.deploy.plugins.module_utils.health_gate import http_argument_spec
from ansible_collections.venta.deploy.plugins.module_utils.release_state import ACTION_KINDS
from ansible_collections.venta.deploy.plugins.module_utils.switch_request import SwitchError
from ansible_collections.venta.deploy.plugins.module_utils.switch_transaction import run_switch


def argument_spec() -> dict:
    colour_ints = {"blue": {"type": "int", "default": 0}, "green": {"type": "int", "default": 0}}
    colour_lists = {
        "blue": {"type": "list", "elements": "str"},
        "green": {"type": "list", "elements": "str"},
    }
    colour_strs = {"blue": {"type": "str"}, "green": {"type": "str"}}
    check = {
        "path": {"type": "str"},
        "url": {"type": "str"},
        "colour": {"type": "str", "choices": ["blue", "green"]},
        "scheme": {"type": "str", "choices": ["http", "https"], "default": "http"},
        "status_code": {"type": "list", "elements": "int", "default": [200]},
        "body_contains": {"type": "str"},
        "json_match": {"type": "dict"},
        "headers": {"type": "dict"},
        "colour_header": {"type": "str"},
        "version_header": {"type": "str"},
    }
    # An item of `services`: unset values fall back to the top-level options (ITEM_DEFAULTS).
    item = {
        "service": {"type": "str", "required": True},
        "weights": {"type": "dict", "required": True, "options": colour_ints},
        "versions": {"type": "dict", "options": colour_strs},
        "backends": {"type": "dict", "options": colour_lists},
        "health_checks": {"type": "list", "elements": "dict", "options": check},
        "verify_url": {"type": "str"},
        "verify_headers": {"type": "dict"},
        "recorded": {
            "type": "dict",
            "options": {
                "previous": {"type": "str", "choices": ["blue", "green"]},
                "last_action": {"type": "dict"},
            },
        },
    }
    spec = {
        "services": {"type": "list", "elements": "dict", "options": item, "required": True},
        "health_checks": {"type": "list", "elements": "dict", "options": check},
        "health_successes": {"type": "int", "default": 3},
        "health_interval": {"type": "float", "default": 0.5},
        "health_timeout": {"type": "float", "default": 60.0},
        "upstream_dir": {"type": "path", "default": "/etc/nginx/venta-switch/upstreams"},
        "state_file": {"type": "path", "default": "/etc/ansible/facts.d/venta_release.fact"},
        "test_command": {
            "type": "list",
            "elements": "str",
            "default": ["/usr/sbin/nginx", "-t", "-q", "-c", "/etc/nginx/venta-switch/nginx.conf"],
        },
        "reload_command": {
            "type": "list",
            "elements": "str",
            "default": ["systemctl", "reload", "venta-edge-switch"],
        },
        "verify_url_pattern": {"type": "str"},
        "verify_headers": {"type": "dict", "default": {}},
        "verify_status_code": {"type": "list", "elements": "int", "default": [200]},
        "verify_colour_header": {"type": "str", "default": "X-Venta-Colour"},
        "verify_requests": {"type": "int", "default": 20},
        "verify_successes": {"type": "int", "default": 3},
        "verify_interval": {"type": "float", "default": 0.2},
        "max_fails": {"type": "int", "default": 3},
        "fail_timeout": {"type": "str", "default": "10s"},
        "keepalive": {"type": "int", "default": 32},
        "ansible_managed": {"type": "str", "default": "Ansible managed"},
        "lock_timeout": {"type": "float", "default": 60.0},
        "action": {"type": "str", "choices": list(ACTION_KINDS), "default": "switch"},
        "run_id": {"type": "str"},
    }
    spec.update(http_argument_spec())
    return spec


def main() -> None:
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)

    def run_command(argv: list[str]) -> tuple[int, str, str]:
        return module.run_command(list(argv))

    try:
        result = run_switch(module.params, run_command, check_mode=module.check_mode)
    except SwitchError as exc:
        module.fail_json(msg=f"nginx_switch: {exc}", **exc.details)
    diff = result.pop("diff")
    if module._diff:
        result["diff"] = diff
    module.exit_json(**result)


if __name__ == "__main__":
    main()
