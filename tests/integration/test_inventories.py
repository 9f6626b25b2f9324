"""Every inventory parses with every group, every playbook passes syntax-check, every inventory
reaches its hosts over SSH with become and host keys checked, and the lab has the production
shape (two edges and a VIP, three Docker hosts, fixed addresses)."""

from __future__ import annotations

import ipaddress
import json
import os
import re
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


# --- The lab in the production shape (issue 14) and how every inventory reaches its hosts ---------


def _hostvars(environment: str) -> dict[str, dict]:
    result = _ansible("ansible-inventory", environment, "--list")
    assert result.returncode == 0, result.stderr
    inventory = json.loads(result.stdout)
    return {
        "groups": {g: inventory[g].get("hosts", []) for g in inventory if g != "_meta"},
        "hostvars": inventory["_meta"]["hostvars"],
    }


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_hosts_are_reached_over_ssh_with_become_and_host_keys_checked(environment: str) -> None:
    hostvars = _hostvars(environment)["hostvars"]
    assert hostvars, environment
    for host, hv in hostvars.items():
        assert hv.get("ansible_connection") == "ssh", host
        assert hv.get("ansible_user"), host
        assert hv.get("ansible_become") is True, host
        assert hv.get("ansible_host_key_checking") is True, host
        args = hv.get("ansible_ssh_common_args", "")
        assert "StrictHostKeyChecking=yes" in args, (host, args)
        assert "UserKnownHostsFile=" in args, (host, args)


def test_no_inventory_turns_host_key_checking_off() -> None:
    for path in (REPO / "inventories").rglob("*.yml"):
        lines = [
            line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")
        ]
        text = "\n".join(lines).lower()
        assert "stricthostkeychecking=no" not in text, path
        assert "host_key_checking: false" not in text, path


def test_local_inventory_has_the_production_shape() -> None:
    inventory = _hostvars("local")
    groups, hostvars = inventory["groups"], inventory["hostvars"]
    edges = _group_hosts(inventory, "edge")
    assert edges == ["venta-edge1", "venta-edge2"]
    assert _group_hosts(inventory, "docker_hosts") == ["venta-app1", "venta-app2", "venta-app3"]
    assert set(groups) >= GROUPS

    anyhost = hostvars[edges[0]]
    subnet = ipaddress.ip_network(anyhost["venta_lab_subnet"])
    docker_range = ipaddress.ip_network(anyhost["venta_lab_ip_range"])
    gateway = ipaddress.ip_address(anyhost["venta_lab_gateway"])
    assert docker_range.subnet_of(subnet)
    addresses = {host: ipaddress.ip_address(hv["ansible_host"]) for host, hv in hostvars.items()}
    assert len(set(addresses.values())) == len(addresses), addresses
    for host, address in addresses.items():
        assert address in subnet and address not in docker_range and address != gateway, host
    vip = ipaddress.ip_address(anyhost["venta_edge_vip"])
    assert vip in subnet and vip not in docker_range and vip != gateway
    assert vip not in addresses.values()
    assert vip not in (subnet.network_address, subnet.broadcast_address)

    ports = [p for e in edges for p in hostvars[e]["venta_lab_published_ports"]]
    assert ports == [
        "127.0.0.1:8443:443",
        "127.0.0.1:8080:80",
        "127.0.0.1:8444:443",
        "127.0.0.1:8081:80",
    ]


def _group_hosts(inventory: dict, group: str) -> list[str]:
    """The hosts of a group and of its children, sorted."""
    result = _ansible("ansible-inventory", "local", "--graph", group)
    assert result.returncode == 0, result.stderr
    return sorted(line.split("--")[-1] for line in result.stdout.splitlines() if "--" in line)


def test_local_edge_certificate_and_public_url_name_the_vip() -> None:
    playbook = (
        "- hosts: localhost\n"
        "  gather_facts: false\n"
        "  tasks:\n"
        "    - ansible.builtin.debug:\n"
        "        msg: \"{{ {'vip': hostvars['venta-edge1'].keepalived_vip,"
        " 'names': hostvars['venta-edge2'].nginx_edge_server_names,"
        " 'url': venta_public_url} | to_json }}\"\n"
    )
    result = _ansible_playbook_text("local", playbook)
    assert result.returncode == 0, result.stdout + result.stderr
    values = json.loads(
        json.loads(result.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]["msg"]
    )
    assert values["vip"] == "10.77.0.100"
    assert values["vip"] in values["names"] and "venta-edge2" in values["names"]
    assert values["url"] == f"https://{values['vip']}"


def _ansible_playbook_text(environment: str, text: str) -> subprocess.CompletedProcess[str]:
    inventory = REPO / "inventories" / environment
    env = dict(
        os.environ,
        ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_STDOUT_CALLBACK="ansible.posix.json",
        ANSIBLE_CALLBACKS_ENABLED="ansible.posix.json",
    )
    return subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(inventory), "/dev/stdin"],
        input=text,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# The keepalived role refuses a VIP it cannot serve before changing anything (bad input only: a
# valid VIP would configure keepalived on the machine running the test). Run on localhost, whose
# gathered default interface stands in for an edge's; 198.51.100.0/24 (TEST-NET-2) is no
# machine's network.
KEEPALIVED_CASES = [
    ({"keepalived_vip": "10.0.0.300"}, "keepalived_vip=10.0.0.300 is not an IPv4 address"),
    (
        {"keepalived_vip": "198.51.100.77", "keepalived_peers": ["localhost"]},
        "needs at least 2 edges",
    ),
    (
        {"keepalived_vip": "198.51.100.77", "keepalived_peers": ["localhost", "localhost"]},
        "is not a host address of",
    ),
    (
        {
            "keepalived_vip": "198.51.100.77",
            "keepalived_peers": ["localhost", "venta-peer"],
            "keepalived_virtual_router_id": 300,
        },
        "keepalived_virtual_router_id",
    ),
]


@pytest.mark.parametrize(("variables", "expected"), KEEPALIVED_CASES)
def test_keepalived_refuses_a_bad_vip_before_any_change(
    variables: dict, expected: str, tmp_path: Path
) -> None:
    playbook = tmp_path / "play.yml"
    playbook.write_text(
        "- hosts: localhost\n"
        "  connection: local\n"
        "  gather_facts: true\n"
        "  tasks:\n"
        "    - ansible.builtin.include_role:\n"
        "        name: venta.deploy.keepalived\n"
    )
    extra = tmp_path / "vars.json"
    extra.write_text(json.dumps(variables))
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    result = subprocess.run(
        [
            *(str(BIN / "ansible-playbook"), "-i", "localhost,venta-peer,", str(playbook)),
            *("-e", f"@{extra}", "-e", f"ansible_python_interpreter={sys.executable}"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert expected in output, output
    assert re.search(r"localhost\s*:\s*ok=\d+\s+changed=0\s", output), output
