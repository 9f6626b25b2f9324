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
    C(venta.deploy.nginx_edge) role and rewrites one service's upstream file,
    C(<upstream_dir>/<service>.conf), with the requested O(weights) (C(100/0) for blue-green,
    e.g. C(90/10) for a canary).
  - "Order: read the recorded release state and the upstream file (nothing differs:
    C(changed=false), nothing touched); health-gate every backend of each colour that gets
    weight > 0 (failure: nothing touched); write the new file to a temp file in the same
    directory, keep a hard-linked backup of the old one and rename atomically; C(nginx -t);
    reload gracefully; verify through the edge (O(verify_url)); record the state in
    O(state_file). A failure after the rename puts the previous file back (and reloads again
    when nginx had already loaded the new one), so traffic is left as it was."
  - "With O(services) instead of O(service) it switches several services at once, all or nothing,
    with one lock, one health gate over every target of every changed service, one C(nginx -t),
    ONE reload, a verification of every changed service through the edge (in parallel) and one
    write of the state file. Any failure puts every upstream file written so far back (and
    reloads once more when nginx had already loaded them), so the traffic of every service is
    left as it was. Services whose plan is unchanged are reported unchanged and not touched."
  - The file text is byte for byte what the role's template renders for the same weights, so a
    later deploy (which reads the recorded weights from C(ansible_local.venta_release)) changes
    nothing.
  - "The state file is JSON: C(services.<service>) holds C(weights), C(active), C(previous),
    C(versions), C(backends), C(switched_at) and the last ten C(history) items; other services'
    entries are kept as they are. Switches on one edge are serialised with a lock file
    (O(state_file) + C(.lock))."
  - A reload is graceful, old nginx workers finish their requests and keep WebSockets open for at
    most C(nginx_edge_worker_shutdown_timeout).
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
  service:
    description:
      - The service's name, as in C(nginx_edge_services); its upstream is
        C(venta_<name with underscores>).
      - Exactly one of O(service) and O(services) is required.
    type: str
  services:
    description:
      - "Batch mode: the services to switch together, all or nothing, with one C(nginx -t) and
        one reload (e.g. the rollback of a whole stack). Mutually exclusive with O(service),
        O(weights), O(backends) and O(versions), which go into each item."
      - Each item takes the per-service options; O(health_checks), O(verify_url) and
        O(verify_headers) given at the top level are the defaults of the items that do not set
        them, every other option (health gate timing, HTTP client, verification counts,
        O(upstream_dir), O(state_file), the commands, the upstream settings) is shared.
      - A service may appear once.
    type: list
    elements: dict
    suboptions:
      service:
        description: The service's name, as O(service).
        type: str
        required: true
      weights:
        description: Traffic share of each colour, as O(weights).
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
        description: The version each slot runs, as O(versions).
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
          - C(host:port) of every backend of each colour, as O(backends); unset, the recorded
            ones are used.
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
          - This service's edge URL, as O(verify_url); unset, the top-level O(verify_url).
        type: str
      verify_headers:
        description:
          - Request headers of this service's verification, as O(verify_headers); unset, the
            top-level O(verify_headers).
        type: dict
  weights:
    description:
      - Traffic share of each colour, 0 to 100, adding up to 100. A colour left out gets 0.
      - With equal backend counts per colour the weights are traffic percentages.
      - Required with O(service); with O(services) each item has its own.
    type: dict
    suboptions:
      blue:
        description: Weight of the blue slot.
        type: int
        default: 0
      green:
        description: Weight of the green slot.
        type: int
        default: 0
  backends:
    description:
      - C(host:port) of every backend of each colour, as in C(nginx_edge_services[].backends).
      - When unset, the backends recorded by the last switch are used (a rollback needs only
        O(weights)).
      - Only with O(service); with O(services) each item has its own.
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
  versions:
    description:
      - The version each slot runs, recorded in the state. A colour left out keeps its recorded
        version.
      - Only with O(service); with O(services) each item has its own.
    type: dict
    default: {}
    suboptions:
      blue:
        description: Version of the blue slot.
        type: str
      green:
        description: Version of the green slot.
        type: str
  health_checks:
    description:
      - Checks run before anything changes, for every colour that gets weight > 0, with the
        logic of M(venta.deploy.health_gate).
      - An item with O(health_checks[].path) is probed on every backend of the colour
        (C(<scheme>://<backend><path>)); an item with O(health_checks[].url) is probed once for
        its O(health_checks[].colour).
      - When unset, C(/health) of every backend must answer 200.
      - With O(services), the default of the items that do not set their own.
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
          - A response header that must equal the colour's version from O(versions) (or the
            recorded one), e.g. C(X-Venta-Version).
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
  verify_url:
    description:
      - An edge URL that reaches the service's upstream, e.g.
        C(https://127.0.0.1/_venta/<service>/health). After the reload, up to O(verify_requests)
        requests are sent until O(verify_successes) in a row answer with O(verify_status_code) and
        a O(verify_colour_header) naming a colour with weight > 0 (the colour with weight 100
        when there is one). Otherwise the previous file is put back and nginx reloaded.
      - When unset the switch is not verified through the edge (not recommended).
      - With O(services), the default of the items that do not set their own (it rarely fits
        more than one service, so set O(services[].verify_url) on each item).
    type: str
  verify_headers:
    description:
      - Request headers of the verification, e.g. C(Host).
      - With O(services), the default of the items that do not set their own.
    type: dict
    default: {}
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
    description: Most requests the verification sends.
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
- name: Switch api-gateway to green (blue-green)
  venta.deploy.nginx_switch:
    service: api-gateway
    weights: {blue: 0, green: 100}
    backends:
      blue: [venta-app1:15002, venta-app2:15002]
      green: [venta-app1:25002, venta-app2:25002]
    versions: {green: "1.1.0"}
    health_checks:
      - path: /ready
        colour_header: X-Venta-Colour
        version_header: X-Venta-Version
    verify_url: https://127.0.0.1/_venta/api-gateway/health
    ca_path: /usr/local/share/ca-certificates/venta-lab-ca.crt
  register: __switch

- name: Canary, 10 % to green (backends as recorded by the last switch)
  venta.deploy.nginx_switch:
    service: api-gateway
    weights: {blue: 90, green: 10}
    verify_url: https://127.0.0.1/_venta/api-gateway/health
    ca_path: /usr/local/share/ca-certificates/venta-lab-ca.crt

- name: Roll back to the previous colour
  venta.deploy.nginx_switch:
    service: api-gateway
    weights: "{{ {ansible_local.venta_release.services['api-gateway'].previous: 100} }}"
    health_successes: 1

- name: Roll back several services with one reload (all or nothing)
  venta.deploy.nginx_switch:
    services:
      - service: api-gateway
        weights: "{{ {ansible_local.venta_release.services['api-gateway'].previous: 100} }}"
        verify_url: https://127.0.0.1/_venta/api-gateway/health
      - service: geolocation
        weights: "{{ {ansible_local.venta_release.services['geolocation'].previous: 100} }}"
        verify_url: https://127.0.0.1/_venta/geolocation/health
        health_checks:
          - path: /ready
    health_successes: 1
    ca_path: /usr/local/share/ca-certificates/venta-lab-ca.crt
  register: __rollback
"""

RETURN = r"""
service:
  description: The service switched.
  returned: always, with service
  type: str
  sample: api-gateway
upstream_file:
  description: The upstream file.
  returned: always, with service
  type: str
  sample: /etc/nginx/venta-switch/upstreams/api-gateway.conf
state_file:
  description: The release state file.
  returned: always, with service
  type: str
  sample: /etc/ansible/facts.d/venta_release.fact
before:
  description:
    - Weights and active colour before the switch (weights from the recorded state, else read from
      the upstream file).
  returned: success, with service
  type: dict
  sample: {"weights": {"blue": 100, "green": 0}, "active": "blue"}
after:
  description: Weights and active colour after the switch.
  returned: success, with service
  type: dict
  sample: {"weights": {"blue": 0, "green": 100}, "active": "green"}
services:
  description:
    - With O(services), one result per requested service, in the order of O(services), with the
      keys a single switch returns (C(service), C(upstream_file), C(state_file), C(before),
      C(after), C(state)) and C(changed) (whether that service changed, or would in check mode).
  returned: success, with services
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
state:
  description: The service's state entry as recorded (or as it would be, in check mode).
  returned: success, with service
  type: dict
  sample:
    weights: {"blue": 0, "green": 100}
    active: green
    previous: blue
    versions: {"blue": "1.0.0", "green": "1.1.0"}
    backends: {"blue": ["venta-app1:15002"], "green": ["venta-app1:25002"]}
    switched_at: "2025-01-01T12:00:00Z"
    history:
      - {"from": {"blue": 100, "green": 0}, "to": {"blue": 0, "green": 100},
         "at": "2025-01-01T12:00:00Z"}
actions:
  description:
    - What the switch did, in order (also on failure, including the restore).
    - "With O(services), each action names its service or upstream file; an unchanged service
      gets C(<service>: unchanged, not touched)."
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
    - With O(services) each step is timed once for the whole batch (the health gate and the
      verification run in parallel over all services).
  returned: always
  type: dict
  sample: {"health_gate_s": 1.012, "write_s": 0.0011, "validate_s": 0.061, "reload_s": 0.052,
           "verify_s": 0.43, "record_s": 0.002, "switch_s": 0.1141, "total_s": 1.61}
health:
  description:
    - One result per health-gated URL (colour, backend, URL, attempts, timings, last status).
    - With O(services) each item also has C(service).
  returned: always
  type: list
  elements: dict
  sample:
    - {"colour": "green", "backend": "venta-app1:25002", "url": "http://venta-app1:25002/health",
       "ok": true, "attempts": 3, "consecutive_successes": 3, "elapsed_s": 1.01,
       "timings_ms": [3.2, 2.1, 2.0], "status": 200}
verify:
  description:
    - The verification through the edge (requests sent, colours seen).
    - With O(services), a dict of such results by service name (services verified only).
  returned: always
  type: dict
  sample: {"url": "https://127.0.0.1/_venta/api-gateway/health", "requests": 3,
           "consecutive_successes": 3, "colours_seen": {"green": 3}, "expected_colours": ["green"]}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.venta.deploy.plugins.module_utils.docker_switch import (
    SwitchError,
    run_switch,
)
from ansible_collections.venta.deploy.plugins.module_utils.health_gate import http_argument_spec

# Per-service options that only go with `service`: a batch has them in each item.
MUTUALLY_EXCLUSIVE = [
    ("service", "services"),
    ("services", "weights"),
    ("services", "backends"),
    ("services", "versions"),
]


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
    # An item of `services`: unset values fall back to the top-level options (see ITEM_DEFAULTS).
    item = {
        "service": {"type": "str", "required": True},
        "weights": {"type": "dict", "required": True, "options": colour_ints},
        "versions": {"type": "dict", "options": colour_strs},
        "backends": {"type": "dict", "options": colour_lists},
        "health_checks": {"type": "list", "elements": "dict", "options": check},
        "verify_url": {"type": "str"},
        "verify_headers": {"type": "dict"},
    }
    spec = {
        "service": {"type": "str"},
        "services": {"type": "list", "elements": "dict", "options": item},
        "weights": {"type": "dict", "options": colour_ints},
        "backends": {"type": "dict", "options": colour_lists},
        "versions": {"type": "dict", "default": {}, "options": colour_strs},
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
        "verify_url": {"type": "str"},
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
    }
    spec.update(http_argument_spec())
    return spec


def main() -> None:
    module = AnsibleModule(
        argument_spec=argument_spec(),
        mutually_exclusive=MUTUALLY_EXCLUSIVE,
        required_one_of=[("service", "services")],
        required_by={"service": "weights"},
        supports_check_mode=True,
    )

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
