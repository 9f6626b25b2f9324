# Copyright: venta.deploy developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The upstream file of a service, rendered by the release switch's own code.

The nginx_edge role's template is this filter, so the role and venta.deploy.nginx_switch write
the upstream file with one renderer (plugins/module_utils/nginx_upstream.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ansible.errors import AnsibleFilterError
from ansible_collections.venta.deploy.plugins.module_utils.nginx_upstream import (
    COLOURS,
    DEFAULT_MANAGED,
    UpstreamError,
    UpstreamSettings,
    render_upstream,
)

DOCUMENTATION = r"""
name: nginx_upstream
author: venta.deploy developers
version_added: "0.5.0"
short_description: The upstream file of a service, as venta.deploy.nginx_switch writes it
description:
  - Renders the switch layer's upstream of one service (every backend of every colour, a colour
    with weight 0 C(down)) with the same code as the release switch, so a deploy after a switch
    writes the same bytes and changes nothing.
options:
  _input:
    description: The service's name.
    type: str
    required: true
  backends:
    description: "C(host:port) of the backends per colour, C({blue: [...], green: [...]})."
    type: dict
    required: true
  weights:
    description: "Weights per colour, C({blue: N, green: M})."
    type: dict
    required: true
  source:
    description: Where the weights come from (written in the file's comment).
    type: str
    required: true
  max_fails:
    description: C(max_fails) of each live server.
    type: int
    default: 3
  fail_timeout:
    description: C(fail_timeout) of each live server.
    type: str
    default: 10s
  keepalive:
    description: Idle keepalive connections per worker.
    type: int
    default: 32
  managed:
    description: The C(ansible_managed) text at the top of the file.
    type: str
    default: Ansible managed
"""

EXAMPLES = r"""
- name: Write the upstream of a service
  ansible.builtin.copy:
    content: >-
      {{ 'api-gateway' | venta.deploy.nginx_upstream(
           backends={'blue': ['app1:15002'], 'green': ['app1:25002']},
           weights={'blue': 100, 'green': 0}, source='the inventory') }}
    dest: /etc/nginx/venta-switch/upstreams/api-gateway.conf
    mode: "0644"
"""

RETURN = r"""
_value:
  description: The file's text, ending with a newline.
  type: str
"""


def nginx_upstream(
    service: str,
    backends: Mapping[str, Sequence[str] | None],
    weights: Mapping[str, Any],
    source: str,
    max_fails: int = 3,
    fail_timeout: str = "10s",
    keepalive: int = 32,
    managed: str = DEFAULT_MANAGED,
) -> str:
    try:
        settings = UpstreamSettings(
            max_fails=int(max_fails),
            fail_timeout=str(fail_timeout),
            keepalive=int(keepalive),
            managed=str(managed),
        )
        normal = {colour: int((weights or {}).get(colour) or 0) for colour in COLOURS}
    except (UpstreamError, TypeError, ValueError) as exc:
        raise AnsibleFilterError(f"nginx_upstream({service}): {exc}") from None
    lists = {colour: list((backends or {}).get(colour) or []) for colour in COLOURS}
    return render_upstream(str(service), lists, normal, str(source), settings)


class FilterModule:
    """The upstream renderer."""

    def filters(self) -> dict[str, Any]:
        return {"nginx_upstream": nginx_upstream}
