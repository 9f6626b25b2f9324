# Copyright: venta.deploy developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Options of the HTTP client shared by venta.deploy.health_gate and venta.deploy.nginx_switch."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  ca_path:
    description:
      - PEM file of the CA that signed the server's certificate (HTTPS only).
      - When unset, the system's trusted CAs are used.
    type: path
  client_cert:
    description:
      - PEM client certificate for servers that require one (HTTPS only).
      - May contain the private key too; otherwise set O(client_key).
    type: path
  client_key:
    description:
      - PEM private key of O(client_cert), when it is a separate file.
    type: path
  validate_certs:
    description:
      - Verify the server's certificate and host name. Turn off only for a throwaway test.
    type: bool
    default: true
  request_timeout:
    description:
      - Seconds one request may take (connect and answer) before it counts as a failed attempt.
    type: float
    default: 5.0
"""
