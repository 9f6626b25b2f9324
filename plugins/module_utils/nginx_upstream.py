# Copyright: venta.deploy developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The upstream file of one service, byte for byte what the nginx_edge role renders.

roles/nginx_edge/templates/etc/nginx/venta-switch/upstreams/service.conf.j2 is the other writer
of this file. Both must produce the same text for the same service, backends and weights, so that a
deploy after a switch changes nothing; tests/unit/plugins/module_utils/test_nginx_upstream.py
renders the real template and compares.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# Colours in the order the role renders them (__nginx_edge_colours).
COLOURS: tuple[str, ...] = ("blue", "green")
# ansible-core's default `ansible_managed` string.
DEFAULT_MANAGED = "Ansible managed"

SERVICE_PATTERN = re.compile(r"^[a-z][a-z0-9-]*$")
BACKEND_PATTERN = re.compile(r"^([A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5}$")
TIME_PATTERN = re.compile(r"^[0-9]+(ms|s|m|h|d)?$")
_SERVER_LINE = re.compile(
    r"^\s*server\s+(?P<backend>\S+)\s+(?:weight=(?P<weight>[0-9]+)[^;]*|down);\s*#\s*(?P<colour>\w+)\s*$"
)


class UpstreamError(ValueError):
    """Invalid upstream settings (names the option and the fix)."""


@dataclass(frozen=True)
class UpstreamSettings:
    """Per-server and keepalive settings (nginx_edge_upstream_* in the role)."""

    max_fails: int = 3
    fail_timeout: str = "10s"
    keepalive: int = 32
    managed: str = DEFAULT_MANAGED

    def __post_init__(self) -> None:
        if self.max_fails < 0:
            raise UpstreamError("max_fails must not be negative (nginx_edge_upstream_max_fails)")
        if not TIME_PATTERN.match(str(self.fail_timeout)):
            raise UpstreamError(
                f"fail_timeout {self.fail_timeout!r} is not an nginx time such as 10s "
                "(nginx_edge_upstream_fail_timeout)"
            )
        if self.keepalive < 1:
            raise UpstreamError("keepalive must be at least 1 (nginx_edge_upstream_keepalive)")


def upstream_name(service: str) -> str:
    """nginx upstream name of a service: venta_ + the name with dashes as underscores."""
    return "venta_" + service.replace("-", "_")


def comment(text: str) -> str:
    """ansible.builtin.comment with the default 'plain' style."""
    body = ("# " + text.replace("\n", "\n# ")).replace("# \n", "#\n")
    return f"#\n{body}\n#"


def weights_comment(weights: Mapping[str, int]) -> str:
    return " ".join(f"{colour}={int(weights.get(colour, 0) or 0)}" for colour in COLOURS)


def render_upstream(
    service: str,
    backends: Mapping[str, Sequence[str]],
    weights: Mapping[str, int],
    source: str,
    settings: UpstreamSettings,
) -> str:
    """The upstream file text for the service (same bytes as the role's template)."""
    name = upstream_name(service)
    lines = [
        comment(settings.managed),
        f"# Upstream of {service}: every backend of every colour. A colour with weight 0 is `down`",
        "# (nginx rejects weight=0). "
        "Each colour gets its share in proportion to weight x backends.",
        f"# Weights {weights_comment(weights)} from {source}.",
        "# The release switch (venta.deploy.nginx_switch) "
        "writes this same text for the same weights:",
        "# temp file, rename, nginx -t, reload; on any failure the previous file is put back.",
        f"upstream {name} {{",
        f"    zone upstream_{name} 64k;",
    ]
    for colour in COLOURS:
        weight = int(weights.get(colour, 0) or 0)
        for backend in backends.get(colour) or []:
            if weight > 0:
                lines.append(
                    f"    server {backend} weight={weight} max_fails={settings.max_fails} "
                    f"fail_timeout={settings.fail_timeout}; # {colour}"
                )
            else:
                lines.append(f"    server {backend} down; # {colour}")
    lines += [
        f"    keepalive {settings.keepalive};",
        "    keepalive_timeout 60s;",
        "    keepalive_requests 1000;",
        "}",
    ]
    return "\n".join(lines) + "\n"


def parse_weights(text: str) -> dict[str, int] | None:
    """Weights of an upstream file this collection wrote (None when it names no colours).

    Used when no release state is recorded yet, to report what traffic looked like before.
    """
    weights: dict[str, int] = {}
    for line in text.splitlines():
        match = _SERVER_LINE.match(line)
        if match and match.group("colour") in COLOURS:
            weight = int(match.group("weight") or 0)
            weights[match.group("colour")] = max(weights.get(match.group("colour"), 0), weight)
    if not weights:
        return None
    return {colour: weights.get(colour, 0) for colour in COLOURS}
