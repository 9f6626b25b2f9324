#!/usr/bin/python
# Copyright: venta.deploy developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Wait until an HTTP(S) endpoint answers as expected N times in a row."""

from __future__ import annotations

DOCUMENTATION = r"""
module: health_gate
author: venta.deploy developers (@venta-deploy)
version_added: "0.2.0"
short_description: Wait until an HTTP(S) endpoint answers as expected N times in a row
description:
  - Sends C(GET) (or C(HEAD)) requests to O(url) every O(interval) seconds until the answer meets
    every expectation (status in O(status_code), and optionally O(body_contains), O(json_match)
    and O(header_match)) O(successes) times in a row, or fails once O(timeout) seconds have
    passed.
  - Returns every attempt's time, so a release can show how long its gate took.
  - The failure message names the URL, the expectation and the last answer (status and body
    excerpt, or the connection error).
  - Redirects are not followed; a 301 is a status like any other.
  - Uses only the Python standard library on the target.
extends_documentation_fragment:
  - venta.deploy.http_client
attributes:
  check_mode:
    support: full
    description: The probes are read-only, so the gate runs in check mode too.
  diff_mode:
    support: none
    description: Nothing is changed, so there is nothing to diff.
options:
  url:
    description:
      - The C(http://) or C(https://) URL to probe, e.g. C(http://app1:15002/health).
    type: str
    required: true
  method:
    description:
      - HTTP method of the probe.
    type: str
    choices: [GET, HEAD]
    default: GET
  headers:
    description:
      - Request headers, e.g. C(Host) to reach a name-based virtual host through an address.
    type: dict
    default: {}
  status_code:
    description:
      - Status codes that count as healthy.
    type: list
    elements: int
    default: [200]
  body_contains:
    description:
      - Text the response body must contain.
    type: str
  json_match:
    description:
      - The body must be JSON with these values; keys are dotted paths
        (C(checks.postgres.ok)), values are compared as JSON values (C(true), C(3)) or, when the
        expected value is a string and the JSON value is not, with the JSON text of the value.
    type: dict
    default: {}
  header_match:
    description:
      - Response headers that must have exactly these values (names are case-insensitive),
        e.g. C(X-Venta-Colour=green).
    type: dict
    default: {}
  successes:
    description:
      - How many good answers in a row are needed.
    type: int
    default: 3
  interval:
    description:
      - Seconds between two attempts.
    type: float
    default: 1.0
  timeout:
    description:
      - Seconds after which the gate gives up and fails.
    type: float
    default: 60.0
seealso:
  - module: venta.deploy.nginx_switch
"""

EXAMPLES = r"""
- name: Wait for the green api-gateway to be healthy (3 good answers in a row)
  venta.deploy.health_gate:
    url: http://venta-app1:25002/health
    json_match:
      status: ok
      colour: green
    timeout: 120

- name: Through the edge, with the lab CA and a Host header
  venta.deploy.health_gate:
    url: https://127.0.0.1/_venta/api-gateway/ready
    ca_path: /usr/local/share/ca-certificates/venta-lab-ca.crt
    headers:
      Host: api.venta.example
    validate_certs: true
    header_match:
      X-Venta-Colour: green
  register: __gate

- name: Show how long the gate took
  ansible.builtin.debug:
    msg: "{{ __gate.attempts }} attempts in {{ __gate.elapsed_s }} s: {{ __gate.timings_ms }}"
"""

RETURN = r"""
url:
  description: The URL probed.
  returned: always
  type: str
  sample: http://venta-app1:25002/health
expected:
  description: The expectation, in words.
  returned: always
  type: str
  sample: "status 200, JSON colour == 'green'"
attempts:
  description: Number of requests sent.
  returned: always
  type: int
  sample: 3
consecutive_successes:
  description: Good answers in a row at the end.
  returned: always
  type: int
  sample: 3
elapsed_s:
  description: Seconds the gate took.
  returned: always
  type: float
  sample: 2.013
timings_ms:
  description: Duration of each attempt in milliseconds, in order.
  returned: always
  type: list
  elements: float
  sample: [4.1, 2.3, 2.2]
status:
  description: Status code of the last answer (null when the last attempt got no answer).
  returned: always
  type: int
  sample: 200
body_excerpt:
  description: The first 300 characters of the last answer's body.
  returned: always
  type: str
  sample: '{"status":"ok","service":"api-gateway","colour":"green"}'
error:
  description: Connection or TLS error of the last attempt, if any.
  returned: always
  type: str
  sample: "ConnectionRefusedError: [Errno 111] Connection refused"
last_mismatch:
  description: Why the last answer did not count as good (null when it did).
  returned: always
  type: str
  sample: status 503
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.venta.deploy.plugins.module_utils.health_gate import (
    Expectation,
    GateSettings,
    HealthGateError,
    HttpOptions,
    failure_message,
    http_argument_spec,
    wait_until_healthy,
)


def argument_spec() -> dict:
    spec = {
        "url": {"type": "str", "required": True},
        "method": {"type": "str", "choices": ["GET", "HEAD"], "default": "GET"},
        "headers": {"type": "dict", "default": {}},
        "status_code": {"type": "list", "elements": "int", "default": [200]},
        "body_contains": {"type": "str"},
        "json_match": {"type": "dict", "default": {}},
        "header_match": {"type": "dict", "default": {}},
        "successes": {"type": "int", "default": 3},
        "interval": {"type": "float", "default": 1.0},
        "timeout": {"type": "float", "default": 60.0},
    }
    spec.update(http_argument_spec())
    return spec


def main() -> None:
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    params = module.params
    try:
        options = HttpOptions.from_params(params, params["headers"], params["method"])
        expectation = Expectation(
            status_codes=tuple(params["status_code"]),
            body_contains=params["body_contains"],
            json_match=params["json_match"],
            header_match={str(k): str(v) for k, v in params["header_match"].items()},
        )
        settings = GateSettings(params["successes"], params["interval"], params["timeout"])
        result = wait_until_healthy(params["url"], expectation, options, settings)
    except HealthGateError as exc:
        module.fail_json(msg=f"health_gate: {exc}")
    returned = {"changed": False, "expected": expectation.describe(), **result.as_dict()}
    returned.pop("ok")
    if not result.ok:
        module.fail_json(
            msg=f"health_gate: {failure_message(result, expectation, settings)}", **returned
        )
    module.exit_json(**returned)


if __name__ == "__main__":
    main()
