"""Bad input to the kubernetes_workload role fails at validation, before anything is applied.

The role runs on localhost against no cluster at all (the kubeconfig names a file that does not
exist): a case that got past validation would fail on the first API call instead, with another
message, so each case proves its check runs first. The failure names the variable to fix.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_role_validation import assert_stopped_without_change

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_PLAYBOOK = str(Path(sys.executable).parent / "ansible-playbook")

PLAYBOOK = """\
- name: Deploy the catalog onto no cluster
  hosts: localhost
  connection: local
  gather_facts: false
  roles:
    - role: venta.deploy.kubernetes_workload
"""

# Every secret the catalog's services need, so that the other checks are reached.
SECRETS = {
    "vault_venta_jwt_secret": "x" * 24,
    "vault_venta_email_password": "x" * 12,
    **{
        f"vault_postgresql_{s}_password": "pw"
        for s in ("file_management", "geolocation", "user_management", "vendor_management")
    },
    **{f"vault_redis_{s}_password": "pw" for s in ("api_gateway", "geolocation", "real_time")},
    **{
        f"vault_nats_{s}_password": "pw"
        for s in (
            "api_gateway",
            "webhooks",
            "geolocation",
            "real_time",
            "user_management",
            "vendor_management",
            "search_discovery",
        )
    },
}

CASES = [
    # (bad variables, text the failure must contain)
    pytest.param(
        {"venta_catalog_overrides": {"user-management": {"scaling": {"min": 1, "max": 5}}}},
        "user-management]: scaling.min (1) replicas is not above the disruption budget's "
        "min_available (1)",
        id="replicas-below-pdb-minimum",
    ),
    pytest.param(
        {"venta_catalog_overrides": {"geolocation": {"scaling": {"max": 2}}}},
        "scaling.max (2) is below scaling.min (3)",
        id="hpa-max-below-min",
    ),
    pytest.param(
        {"venta_domains": ["payments"]},
        "venta_domains: unknown domain(s) ['payments']",
        id="unknown-domain",
    ),
    pytest.param(
        {
            "venta_catalog_services": [
                {"name": "billing", "domain": "payments", "port": 5100, "image": "billing"}
            ]
        },
        "billing].domain 'payments' is not a domain of venta_catalog_domains",
        id="unknown-domain-of-a-service",
    ),
    pytest.param(
        {"venta_catalog_overrides": {"real-time": {"resources": {"cpu_request": "4"}}}},
        "a request is above its limit",
        id="request-above-limit",
    ),
    pytest.param(
        {"vault_nats_webhooks_password": ""},
        "secret vault_nats_webhooks_password (nats password of webhooks) is not set",
        id="missing-secret",
    ),
    pytest.param(
        {"kubernetes_workload_target": "purple"},
        "kubernetes_workload_target",
        id="bad-target",
    ),
    pytest.param(
        {"kubernetes_workload_switch_weights": {"blue": 90, "green": 20}},
        "kubernetes_workload_switch_weights",
        id="weights-not-100",
    ),
    pytest.param(
        {"kubernetes_workload_ingress_tls_cert": "-----BEGIN CERTIFICATE-----"},
        "kubernetes_workload_ingress_tls_cert and kubernetes_workload_ingress_tls_key go together",
        id="cert-without-key",
    ),
]


@pytest.mark.parametrize(("variables", "expected"), CASES)
def test_bad_input_fails_at_validation(variables: dict, expected: str, tmp_path: Path) -> None:
    playbook = tmp_path / "play.yml"
    playbook.write_text(PLAYBOOK)
    extra = tmp_path / "vars.json"
    extra.write_text(json.dumps({**SECRETS, "venta_platform": "kubernetes", **variables}))
    env = dict(os.environ)
    env.update(
        ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
        ANSIBLE_CACHE_PLUGIN="memory",
        ANSIBLE_CALLBACK_RESULT_FORMAT="json",
        ANSIBLE_NOCOLOR="1",
        K8S_AUTH_KUBECONFIG=str(tmp_path / "no-such-kubeconfig"),
    )
    result = subprocess.run(
        [
            ANSIBLE_PLAYBOOK,
            *("-i", "localhost,", str(playbook), "-e", f"@{extra}"),
            *("-e", f"ansible_python_interpreter={sys.executable}"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert_stopped_without_change(result, expected)
