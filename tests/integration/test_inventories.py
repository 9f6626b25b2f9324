"""Every inventory parses with every group, and every playbook passes syntax-check."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ENVIRONMENTS = ["local", "staging", "production"]
GROUPS = {
    "edge",
    "docker_hosts",
    "postgres",
    "postgres_primary",
    "postgres_replica",
    "redis",
    "nats",
    "backup",
    "registry",
    "dr",
}
PLAYBOOKS = sorted(str(p.relative_to(REPO)) for p in (REPO / "playbooks").glob("*.yml"))


def _ansible(tool: str, environment: str, *args: str) -> subprocess.CompletedProcess[str]:
    inventory = REPO / "inventories" / environment
    command = [str(BIN / tool), "-i", str(inventory), *args]
    vault_password = inventory / "vault-password.example"
    if vault_password.exists():
        command += ["--vault-password-file", str(vault_password)]
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    return subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_inventory_has_every_group(environment: str) -> None:
    result = _ansible("ansible-inventory", environment, "--list")
    assert result.returncode == 0, result.stderr
    inventory = json.loads(result.stdout)
    missing = GROUPS - set(inventory)
    assert not missing, f"{environment} lacks groups {sorted(missing)}"
    assert "WARNING" not in result.stderr, result.stderr


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_playbooks_pass_syntax_check(environment: str) -> None:
    result = _ansible("ansible-playbook", environment, "--syntax-check", *PLAYBOOKS)
    assert result.returncode == 0, result.stdout + result.stderr
