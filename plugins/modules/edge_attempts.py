#!/usr/bin/python
# Copyright: venta.deploy developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Count every upstream attempt in the edge's JSON access log, per service and colour."""

from __future__ import annotations

DOCUMENTATION = r"""
module: edge_attempts
author: venta.deploy developers (@venta-deploy)
version_added: "0.4.0"
short_description: Count every upstream attempt in the edge's access log, per service and colour
description:
  - The evidence of a canary step on the Docker platform. Runs on an edge host converged by the
    C(venta.deploy.nginx_edge) role and reads its JSON access log (O(path)), where each request
    has C(backend), the switch layer's C($upstream_addr) (C(10.213.7.21:25000,
    10.213.7.22:15000)), C(backend_status), its C($upstream_status) for the same hops
    (C(502, 200)), and C(status), the status the client got.
  - "Every hop counts, not only the last: the switch layer retries connect errors, timeouts, 502
    and 504 on another server, so a canary that fails every first attempt still answers 200
    through the stable colour. nginx separates the attempts with C(, ) and the upstream groups
    of an internal redirect with C( : ); both are hops."
  - "A hop belongs to the service and colour whose backend has its port (ports are unique per
    service and colour; the log has addresses, O(services) host names, so only the port is
    compared). It is an error when its status is 500 or more, C(-), missing or not a number. A
    request is a client error of the colour of its last hop when the client got 500 or more (or
    the line has no numeric C(status))."
  - "Without O(mark) the module only returns the current RV(mark): call it before the canary
    step, then with that O(mark) after it. When logrotate has moved the marked file
    (another inode), C(<path>.1) is read from the mark's offset, then the new file from 0; a file
    shorter than the offset (same inode) was truncated and is read from 0. A last line without a
    newline is still being written and is left for the next count."
  - Lines that are not JSON objects are skipped and counted in RV(lines_skipped). Judge the counts
    of every edge with the C(venta.deploy.canary_verdict) filter.
attributes:
  check_mode:
    support: full
    description: The module only reads, so it runs the same in check mode.
  diff_mode:
    support: none
    description: Nothing is changed.
  idempotent:
    support: full
    description: Read-only, C(changed=false) always.
options:
  path:
    description:
      - The client-facing nginx's JSON access log (C(nginx_edge_access_log)).
    type: path
    default: /var/log/nginx/venta_access.json
  mark:
    description:
      - Where to count from, a RV(mark) returned by an earlier call. Omitted, nothing is counted
        and only the current RV(mark) is returned.
    type: dict
    suboptions:
      offset:
        description: Byte offset in the file that had O(mark.inode).
        type: int
        required: true
      inode:
        description: Inode of the file when the mark was taken; null when the log did not exist.
        type: int
  services:
    description:
      - "The services to count, each C({name, backends: {blue: [host:port], green:
        [host:port]}}); other keys are ignored, so C(nginx_edge_services) can be given as it is."
      - Required with O(mark). A port may belong to one service and colour only.
    type: list
    elements: dict
seealso:
  - module: venta.deploy.nginx_switch
"""

EXAMPLES = r"""
- name: Mark the access log before the canary step
  venta.deploy.edge_attempts:
  register: __canary_mark

- name: Send traffic to the canary
  venta.deploy.nginx_switch:
    service: api-gateway
    weights: {blue: 90, green: 10}

- name: Wait for traffic
  ansible.builtin.pause:
    seconds: 60

- name: Count every attempt since the mark
  venta.deploy.edge_attempts:
    mark: "{{ __canary_mark.mark }}"
    services: "{{ nginx_edge_services }}"
  register: __canary_attempts

- name: Judge the canary on every edge's counts
  ansible.builtin.assert:
    that: __verdict.ok
    fail_msg: "{{ __verdict.message }}"
    quiet: true
  vars:
    __verdict: >-
      {{ dict(groups['edge'] | zip(groups['edge'] | map('extract', hostvars,
         ['__canary_attempts', 'counts'])))
         | venta.deploy.canary_verdict({'api-gateway': 'green'}) }}
  run_once: true
"""

RETURN = r"""
mark:
  description:
    - "Where this count stopped, C({offset, inode}): the current file's inode and the offset
      after its last complete line (without O(mark): the file's size). Pass it as O(mark) to
      count from here. C(inode) is null when the file does not exist."
  returned: always
  type: dict
  sample: {"offset": 1048576, "inode": 393219}
counts:
  description:
    - "Per service of O(services) and colour: C(attempts) (hops), C(errors) (hops with 5xx or no
      status), C(answers) (requests whose last hop was this colour) and C(client_errors) (those
      of them the client got 500 or more for, or no numeric status)."
  returned: with mark
  type: dict
  sample:
    api-gateway:
      blue: {"attempts": 180, "errors": 0, "answers": 180, "client_errors": 0}
      green: {"attempts": 20, "errors": 20, "answers": 0, "client_errors": 0}
lines_read:
  description: Lines read since the mark (empty lines are not counted).
  returned: with mark
  type: int
  sample: 180
lines_skipped:
  description: Lines that are not a JSON object (not counted).
  returned: with mark
  type: int
  sample: 0
lines_unmatched:
  description: Requests without a hop of O(services) (other routes, or no backend logged).
  returned: with mark
  type: int
  sample: 12
unmatched_client_errors:
  description:
    - Of RV(lines_unmatched), those the client got 500 or more (or no status) for; they cannot
      be told apart by colour (e.g. the switch layer did not answer at all).
  returned: with mark
  type: int
  sample: 0
sources:
  description: The parts of files read, C({path, inode, from, to}) (byte offsets).
  returned: with mark
  type: list
  elements: dict
  sample:
    - {"path": "/var/log/nginx/venta_access.json.1", "inode": 393217, "from": 1048576,
       "to": 1050000}
    - {"path": "/var/log/nginx/venta_access.json", "inode": 393219, "from": 0, "to": 2048}
notes:
  description: Rotation, truncation or a missing file, in words.
  returned: with mark
  type: list
  elements: str
  sample: ["/var/log/nginx/venta_access.json was rotated: read /var/log/nginx/venta_access.json.1
           from byte 1048576"]
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.venta.deploy.plugins.module_utils.edge_attempts import (
    EdgeAttemptsError,
    count_attempts,
    current_mark,
)


def argument_spec() -> dict:
    return {
        "path": {"type": "path", "default": "/var/log/nginx/venta_access.json"},
        "mark": {
            "type": "dict",
            "options": {
                "offset": {"type": "int", "required": True},
                "inode": {"type": "int"},
            },
        },
        "services": {"type": "list", "elements": "dict"},
    }


def main() -> None:
    module = AnsibleModule(
        argument_spec=argument_spec(),
        required_by={"mark": "services"},
        supports_check_mode=True,
    )
    params = module.params
    if params["mark"] is None:
        module.exit_json(changed=False, mark=current_mark(params["path"]))
    try:
        result = count_attempts(params["path"], params["mark"], params["services"])
    except (EdgeAttemptsError, OSError) as exc:
        module.fail_json(msg=f"edge_attempts: {exc}")
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
