# Copyright: venta.deploy developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters for certificates issued by the collection's internal CA."""

from __future__ import annotations

import ipaddress
import re

from ansible.errors import AnsibleFilterError

DOCUMENTATION = r"""
name: subject_alt_names
author: venta.deploy developers
version_added: "0.1.0"
short_description: Turn host names and addresses into certificate subject alternative names
description:
  - Maps each entry to C(DNS:name) or C(IP:address), keeps already prefixed entries, removes
    duplicates while keeping order, and rejects entries that are neither a DNS name nor an address.
options:
  _input:
    description: Host names, IPv4/IPv6 addresses, or entries already prefixed with C(DNS:)/C(IP:).
    type: list
    elements: str
    required: true
"""

EXAMPLES = r"""
- name: SANs for a registry reached by name and on loopback
  ansible.builtin.debug:
    msg: "{{ ['venta-registry1', 'localhost', '127.0.0.1'] | venta.deploy.subject_alt_names }}"
  # -> ['DNS:venta-registry1', 'DNS:localhost', 'IP:127.0.0.1']
"""

RETURN = r"""
_value:
  description: The subject alternative names in OpenSSL form.
  type: list
  elements: str
"""

_DNS_LABEL = re.compile(r"^(\*|[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)$", re.IGNORECASE)


def _is_dns_name(value: str) -> bool:
    if not value or len(value) > 253:
        return False
    labels = value.rstrip(".").split(".")
    return all(_DNS_LABEL.match(label) for label in labels) and "*" not in labels[1:]


def _one_san(entry: object) -> str:
    if not isinstance(entry, str) or not entry.strip():
        raise AnsibleFilterError(f"subject_alt_names: {entry!r} is not a host name or an address")
    value = entry.strip()
    kind, _sep, rest = value.partition(":")
    if kind in ("DNS", "IP") and rest:
        value = rest
    try:
        return f"IP:{ipaddress.ip_address(value)}"
    except ValueError:
        if kind == "IP" and rest:
            raise AnsibleFilterError(
                f"subject_alt_names: {entry!r} is not a valid IP address"
            ) from None
    if not _is_dns_name(value):
        raise AnsibleFilterError(
            f"subject_alt_names: {entry!r} is neither a DNS name nor an IP address"
        )
    return f"DNS:{value.lower()}"


def subject_alt_names(entries: list[str]) -> list[str]:
    """Return the entries as de-duplicated C(DNS:)/C(IP:) subject alternative names."""
    if not isinstance(entries, (list, tuple)):
        raise AnsibleFilterError("subject_alt_names: expects a list of host names or addresses")
    result: list[str] = []
    for entry in entries:
        san = _one_san(entry)
        if san not in result:
            result.append(san)
    return result


class FilterModule:
    """venta.deploy PKI filters."""

    def filters(self) -> dict:
        return {"subject_alt_names": subject_alt_names}
