"""deploy.yml's preflight stops bad input before anything changes, listing every problem.

The inventory below names hosts in every group but reaches them all through the local connection,
so a run that got past preflight would change this machine: each case must stop in the Preflight
play (asserted: no task of any later play started). The registry is a closed port on loopback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_PLAYBOOK = str(Path(sys.executable).parent / "ansible-playbook")

HOSTS = {
    "edge": ["pf-edge1"],
    "docker_hosts": ["pf-app1"],
    "postgres_primary": ["pf-data1"],
    "redis": ["pf-data1"],
    "nats": ["pf-data1"],
}

SECRETS = {
    "vault_postgresql_file_management_password": "pf-secret-pg-files",
    "vault_postgresql_geolocation_password": "pf-secret-pg-geo",
    "vault_postgresql_user_management_password": "pf-secret-pg-users",
    "vault_postgresql_vendor_management_password": "pf-secret-pg-vendors",
    "vault_redis_api_gateway_password": "pf-secret-redis-gw",
    "vault_redis_geolocation_password": "pf-secret-redis-geo",
    "vault_redis_real_time_password": "pf-secret-redis-rt",
    "vault_nats_api_gateway_password": "pf-secret-nats-gw",
    "vault_nats_webhooks_password": "pf-secret-nats-wh",
    "vault_nats_geolocation_password": "pf-secret-nats-geo",
    "vault_nats_real_time_password": "pf-secret-nats-rt",
    "vault_nats_user_management_password": "pf-secret-nats-users",
    "vault_nats_vendor_management_password": "pf-secret-nats-vendors",
    "vault_nats_search_discovery_password": "pf-secret-nats-search",
    "vault_venta_jwt_secret": "pf-secret-jwt",
    "vault_venta_email_password": "pf-secret-email",
}


def write_inventory(tmp_path: Path, secrets: dict[str, str]) -> Path:
    groups = {name: {"hosts": {h: {} for h in hosts}} for name, hosts in HOSTS.items()}
    groups["postgres"] = {"children": {"postgres_primary": {}}}
    inventory = {
        "all": {
            "vars": {
                "ansible_connection": "local",
                "ansible_python_interpreter": sys.executable,
                "venta_registry": "127.0.0.1:9",
                "venta_registry_password": "pf-secret-registry",
                "redis_admin_password": "pf-secret-redis-admin",
                "nats_cluster_password": "pf-secret-nats-cluster",
                **secrets,
            },
            "children": groups,
        }
    }
    path = tmp_path / "hosts.json"
    path.write_text(json.dumps(inventory))
    return path


def run_deploy(tmp_path: Path, secrets: dict[str, str], *extra: str) -> tuple[int, str]:
    env = dict(os.environ)
    env.update(
        {
            "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_CALLBACK_RESULT_FORMAT": "json",
        }
    )
    proc = subprocess.run(
        [
            ANSIBLE_PLAYBOOK,
            "-i",
            str(write_inventory(tmp_path, secrets)),
            str(REPO / "playbooks" / "deploy.yml"),
            *extra,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return proc.returncode, proc.stdout + proc.stderr


def assert_stopped_in_preflight(rc: int, output: str) -> None:
    assert rc != 0, output
    assert "PLAY [Preflight]" in output
    assert "PLAY [Base hosts]" not in output, "a play after preflight started"
    assert "changed=1" not in output and "changed: [" not in output


def test_missing_secret_and_unreachable_registry_are_listed_together(tmp_path):
    secrets = {k: v for k, v in SECRETS.items() if k != "vault_nats_webhooks_password"}
    rc, out = run_deploy(tmp_path, secrets, "-vvv")
    assert_stopped_in_preflight(rc, out)
    assert "Preflight found 2 problem(s); nothing was changed" in out
    assert "secret vault_nats_webhooks_password (nats password of webhooks) is not set" in out
    assert "registry https://127.0.0.1:9/v2/ is not reachable from pf-app1" in out
    leaked = [v for v in secrets.values() if v in out]
    leaked += [v for v in ("pf-secret-registry", "pf-secret-redis-admin") if v in out]
    assert not leaked, f"secrets in the -vvv output: {leaked}"


def test_missing_data_tier_setting(tmp_path):
    rc, out = run_deploy(tmp_path, SECRETS, "-e", "redis_admin_password=")
    assert_stopped_in_preflight(rc, out)
    assert "redis_admin_password (Redis administrator) is not set for pf-data1 (group redis)" in out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["-e", "venta_domains=shipping"],
            "venta_domains: unknown domain(s) ['shipping']; known domains: communication, "
            "infrastructure, location-services, marketplace",
        ),
        (
            ["-e", '{"venta_catalog_overrides": {"webhooks": {"image": ""}}}'],
            "service webhooks has no image: set venta_catalog_overrides.webhooks.image",
        ),
        (
            ["-e", '{"venta_catalog_overrides": {"webhooks": {"resources": {"cpu_limit": ""}}}}'],
            "resources.cpu_limit is not set",
        ),
    ],
)
def test_bad_catalog_input_stops_in_preflight(tmp_path, extra, message):
    rc, out = run_deploy(tmp_path, SECRETS, *extra)
    assert_stopped_in_preflight(rc, out)
    assert message in out
