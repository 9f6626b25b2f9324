"""release.yml, rollback.yml and reconcile.yml refuse bad input before anything changes.

The inventory's hosts cannot be reached (a closed port on loopback), so a run that got past the
input check would fail connecting: each case must fail at the input check, naming the variable,
with no task that talks to a host started (no lock taken, nothing read or switched).
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

UNREACHABLE = {"ansible_connection": "ssh", "ansible_host": "127.0.0.1", "ansible_port": 9}


def write_inventory(tmp_path: Path) -> Path:
    inventory = {
        "all": {
            "vars": {"ansible_python_interpreter": sys.executable},
            "children": {
                "edge": {"hosts": {"ri-edge1": UNREACHABLE, "ri-edge2": UNREACHABLE}},
                "docker_hosts": {"hosts": {"ri-app1": UNREACHABLE}},
            },
        }
    }
    path = tmp_path / "hosts.yml"
    path.write_text(json.dumps(inventory))
    return path


def run(tmp_path: Path, playbook: str, extra: dict) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_STRATEGY": "linear",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_LOCALHOST_WARNING": "false",
    }
    return subprocess.run(
        [
            ANSIBLE_PLAYBOOK,
            "-i",
            str(write_inventory(tmp_path)),
            str(REPO / "playbooks" / playbook),
            "-e",
            json.dumps(extra),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=180,
    )


CASES = [
    ("release.yml", {}, "venta_release_version"),
    ("release.yml", {"venta_release_version": "1.2.3; rm -rf /"}, "venta_release_version"),
    (
        "release.yml",
        {"venta_release_version": "1.2.3", "venta_release_canary_steps": [50, 10, 100]},
        "venta_release_canary_steps",
    ),
    (
        "release.yml",
        {"venta_release_version": "1.2.3", "venta_release_canary_min_requests": 0},
        "venta_release_canary_min_requests",
    ),
    ("rollback.yml", {"venta_rollback_to": "not a version!"}, "venta_rollback_to"),
    ("reconcile.yml", {"venta_reconcile_from": "ri-app1"}, "venta_reconcile_from"),
    ("maintenance.yml", {"venta_maintenance": "sometimes"}, "venta_maintenance"),
]


@pytest.mark.parametrize(("playbook", "extra", "message"), CASES)
def test_bad_input_is_refused_before_any_host_is_contacted(
    tmp_path: Path, playbook: str, extra: dict, message: str
) -> None:
    result = run(tmp_path, playbook, extra)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert message in output, output
    assert "Nothing was changed" in output, output
    assert "UNREACHABLE" not in output, output
    assert "release_lock" not in output, output
