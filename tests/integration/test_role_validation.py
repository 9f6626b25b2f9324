"""Bad input fails before any change, with a message that names the variable.

Each case includes one role on localhost with wrong variables (as extra vars, the way an operator
overrides) and expects the run to stop at the role's argument validation or its first validation
task: the play fails, the output names the variable, and nothing was changed.

Only bad input belongs here: a case with valid input would configure the machine running the test.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_PLAYBOOK = str(Path(sys.executable).parent / "ansible-playbook")

# The inventory also names venta-peer (never contacted: the play runs on localhost only), so a
# role can be given a second inventory host, e.g. a NATS cluster of two.
PLAYBOOK = """\
- name: Include one role with bad input
  hosts: localhost
  connection: local
  gather_facts: true
  tasks:
    - name: Include the role under test
      ansible.builtin.include_role:
        name: venta.deploy.{role}
"""

# What the nats role requires, so that its other checks are reached.
NATS_REQUIRED = {
    "nats_cluster_password": "a-cluster-password-of-length",
    "nats_accounts": [
        {"name": "app", "jetstream": True, "users": [{"name": "u", "password": "a-user-password"}]}
    ],
}

CASES = [
    # (role, bad variables, text the failure must contain)
    ("common", {"common_ssh_permit_root_login": "yes"}, "common_ssh_permit_root_login"),
    ("common", {"common_firewall_allowed_tcp_ports": ["ssh"]}, "common_firewall_allowed_tcp_ports"),
    ("common", {"common_users": [{"sudo": True}]}, "common_users"),
    ("docker_host", {"docker_host_nofile_limit": "lots"}, "docker_host_nofile_limit"),
    (
        "docker_host",
        {"docker_host_registry_username": "deploy", "docker_host_registry_password": "x"},
        "docker_host_registry",
    ),
    ("docker_host", {"docker_host_nofile_limit": 99999999}, "docker_host_nofile_limit"),
    (
        "registry",
        {"registry_tls_mode": "selfsigned", "registry_users": [{"username": "a", "password": "b"}]},
        "registry_tls_mode",
    ),
    (
        "registry",
        {"registry_tls_mode": "provided", "registry_users": [{"username": "a", "password": "b"}]},
        "registry_tls_cert",
    ),
    ("registry", {"registry_users": [{"username": "a"}]}, "registry_users"),
    ("pki", {"pki_certificates": [{"name": "web"}]}, "pki_certificates"),
    ("pki", {"pki_cert_valid_days": "a year"}, "pki_cert_valid_days"),
    ("pki", {"pki_cert_valid_days": 397}, "pki_cert_valid_days"),
    (
        "release_lock",
        {"release_lock_group": "no_such_group", "release_lock_playbook": "release.yml"},
        "release_lock_group",
    ),
    ("postgresql", {"postgresql_role": "replica"}, "postgresql_primary_host"),
    ("postgresql", {"postgresql_role": "standby"}, "postgresql_role"),
    (
        "postgresql",
        {"postgresql_role": "primary", "postgresql_archive_mode": "on"},
        "postgresql_archive_command",
    ),
    (
        "postgresql",
        {"postgresql_role": "primary", "postgresql_archive_command": "/bin/true"},
        "postgresql_archive_command",
    ),
    (
        "postgresql",
        {"postgresql_role": "primary", "postgresql_memory_mb": 100},
        "postgresql_memory_mb",
    ),
    (
        "postgresql",
        {
            "postgresql_role": "primary",
            "postgresql_databases": [{"name": "orders", "owner": "orders", "password": ""}],
        },
        "postgresql_databases",
    ),
    ("redis", {}, "redis_admin_password"),
    (
        "redis",
        {"redis_admin_password": "a-long-enough-admin-pw", "redis_bind_addresses": ["0.0.0.0"]},
        "redis_bind_addresses",
    ),
    (
        "redis",
        {"redis_admin_password": "a-long-enough-admin-pw", "redis_appendfsync": "sometimes"},
        "redis_appendfsync",
    ),
    (
        "redis",
        {
            "redis_admin_password": "a-long-enough-admin-pw",
            "redis_users": [{"name": "geolocation", "keys": ["~geolocation:*"]}],
        },
        "redis_users",
    ),
    ("nginx_edge", {"nginx_edge_tls_mode": "selfsigned"}, "nginx_edge_tls_mode"),
    ("nginx_edge", {"nginx_edge_tls_mode": "provided"}, "nginx_edge_tls_cert"),
    (
        "nginx_edge",
        {"nginx_edge_tls_mode": "provided", "nginx_edge_tls_cert": "-----BEGIN CERTIFICATE-----"},
        "nginx_edge_tls_key",
    ),
    ("nginx_edge", {"nginx_edge_server_names": ["bad name!"]}, "nginx_edge_server_names"),
    (
        "nginx_edge",
        {
            "nginx_edge_services": [
                {
                    "name": "api-gateway",
                    "locations": ["/api/"],
                    "backends": {"purple": ["app1:15002"]},
                }
            ]
        },
        "nginx_edge_services",
    ),
    ("nats", {**NATS_REQUIRED, "nats_cluster_hosts": ["localhost"]}, "nats_cluster_hosts"),
    (
        "nats",
        {**NATS_REQUIRED, "nats_cluster_hosts": ["localhost", "venta-peer"]},
        "nats_cluster_hosts has 2 member(s)",
    ),
    ("nats", {**NATS_REQUIRED, "nats_tls_mode": "bogus"}, "nats_tls_mode"),
    ("nats", {"nats_cluster_password": "x" * 20}, "nats_accounts"),
]


def _failure_message(output: str) -> str:
    """The msg of the failed task: what the operator reads (not the spec dump around it)."""
    match = re.search(r"^fatal: \[localhost\]: FAILED! => (\{.*\})$", output, re.MULTILINE)
    assert match is not None, output
    return json.loads(match.group(1))["msg"]


def assert_stopped_without_change(result: subprocess.CompletedProcess[str], expected: str) -> None:
    """The run failed, its failure message names `expected`, and localhost reports changed=0."""
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    message = _failure_message(output)
    assert expected in message, message
    recap = re.search(r"localhost\s*:\s*ok=\d+\s+changed=(\d+)", output)
    assert recap is not None, output
    assert recap.group(1) == "0", output


def _run_role(role: str, variables: dict, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    playbook = tmp_path / "play.yml"
    playbook.write_text(PLAYBOOK.format(role=role))
    extra = tmp_path / "vars.json"
    extra.write_text(json.dumps(variables))
    env = dict(os.environ)
    env.update(
        ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
        ANSIBLE_CACHE_PLUGIN="memory",
        ANSIBLE_CALLBACK_RESULT_FORMAT="json",
        ANSIBLE_NOCOLOR="1",
    )
    return subprocess.run(
        [
            ANSIBLE_PLAYBOOK,
            *("-i", "localhost,venta-peer,", str(playbook), "-e", f"@{extra}"),
            *("-e", f"ansible_python_interpreter={sys.executable}"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("role", "variables", "expected"),
    CASES,
    ids=[f"{c[0]}-{c[2]}-{i}" for i, c in enumerate(CASES)],
)
def test_bad_input_stops_before_any_change(
    role: str, variables: dict, expected: str, tmp_path: Path
) -> None:
    assert_stopped_without_change(_run_role(role, variables, tmp_path), expected)
