"""venta.deploy.edge_attempts as Ansible runs it: mark, count, check mode, bad input."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from ansible_collections.venta.deploy.plugins.modules import edge_attempts

SERVICES = [
    {
        "name": "api-gateway",
        "backends": {"blue": ["venta-app1:15002"], "green": ["venta-app1:25002"]},
        "locations": ["/api/"],
        "websocket": False,
    }
]


def entry(backend: str, backend_status: str, status: int = 200) -> str:
    return json.dumps({"status": status, "backend": backend, "backend_status": backend_status})


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "venta_access.json"
    path.write_text(entry("10.0.0.1:15002", "200") + "\n")
    return path


@pytest.mark.parametrize("check_mode", [False, True], ids=["run", "check"])
def test_mark_then_count(log: Path, module_runner: Callable, check_mode: bool) -> None:
    marked = module_runner(edge_attempts.main, path=str(log), _ansible_check_mode=check_mode)
    assert marked.get("failed") is not True, marked
    assert marked["changed"] is False
    assert marked["mark"] == {"offset": log.stat().st_size, "inode": log.stat().st_ino}
    assert "counts" not in marked

    with log.open("a") as out:
        out.write(entry("10.0.0.1:25002, 10.0.0.2:15002", "502, 200") + "\n")
        out.write("garbage\n")
    counted = module_runner(
        edge_attempts.main,
        path=str(log),
        mark=marked["mark"],
        services=SERVICES,
        _ansible_check_mode=check_mode,
    )
    assert counted.get("failed") is not True, counted
    assert counted["changed"] is False
    assert counted["counts"] == {
        "api-gateway": {
            "blue": {"attempts": 1, "errors": 0, "client_errors": 0, "answers": 1},
            "green": {"attempts": 1, "errors": 1, "client_errors": 0, "answers": 0},
        }
    }
    assert counted["lines_read"] == 2
    assert counted["lines_skipped"] == 1
    assert counted["mark"]["offset"] == log.stat().st_size


def test_a_mark_needs_services(log: Path, module_runner: Callable) -> None:
    result = module_runner(edge_attempts.main, path=str(log), mark={"offset": 0, "inode": None})
    assert result["failed"] is True
    assert "services" in result["msg"]


def test_clashing_ports_fail_naming_them(log: Path, module_runner: Callable) -> None:
    services = [*SERVICES, {"name": "other", "backends": {"green": ["venta-app2:15002"]}}]
    result = module_runner(
        edge_attempts.main, path=str(log), mark={"offset": 0, "inode": None}, services=services
    )
    assert result["failed"] is True
    assert result["msg"].startswith("edge_attempts: port 15002 belongs to api-gateway blue")
