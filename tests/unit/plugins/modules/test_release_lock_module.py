"""venta.deploy.release_lock as Ansible runs it: check, take, re-take, refuse, break, release."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from ansible.module_utils.basic import AnsibleModule
from ansible_collections.venta.deploy.plugins.modules import release_lock


@pytest.fixture
def warnings(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What the module warns (how warnings reach the output differs with the controller's setup)."""
    seen: list[str] = []
    monkeypatch.setattr(AnsibleModule, "warn", lambda self, text: seen.append(text))
    return seen


@pytest.fixture
def take(tmp_path: Path, module_runner: Callable) -> Callable[..., dict]:
    def run(**overrides: object) -> dict:
        args: dict = {
            "path": str(tmp_path / "venta" / "release.lock"),
            "run_id": "run-a",
            "holder": "alice@ctl1",
            "playbook": "release.yml",
            "version": "1.2.0",
            "pid": 4242,
        }
        args.update(overrides)
        return module_runner(release_lock.main, **args)

    return run


def test_check_take_retake_and_release(tmp_path: Path, take: Callable) -> None:
    path = tmp_path / "venta" / "release.lock"
    predicted = take(_ansible_check_mode=True)
    assert predicted["changed"] is True
    assert predicted["lock"]["run_id"] == "run-a"
    assert not path.exists()

    taken = take()
    assert taken.get("failed") is not True, taken
    assert taken["changed"] is True
    assert taken["broken"] is None
    assert taken["lock"] == json.loads(path.read_text())
    assert taken["lock"]["controller"] == "ctl1"
    assert taken["lock"]["pid"] == 4242

    again = take()
    assert again["changed"] is False
    assert again["lock"] == taken["lock"]

    check_release = take(state="absent", _ansible_check_mode=True)
    assert check_release["changed"] is True
    assert path.exists()
    released = take(state="absent")
    assert released["changed"] is True
    assert released["lock"] is None
    assert not path.exists()
    assert take(state="absent")["changed"] is False


def test_another_run_is_refused_then_broken(take: Callable, warnings: list[str]) -> None:
    take(run_id="run-b", holder="bob@ctl2", playbook="rollback.yml", version=None)
    refused = take()
    assert refused["failed"] is True
    assert refused["msg"].startswith("the release lock ")
    assert "held by bob@ctl2 (playbook rollback.yml, version none, since " in refused["msg"]
    assert "run id run-b" in refused["msg"]
    assert refused["msg"].endswith(
        "wait for it to finish; if that run is gone (killed, controller lost), run again with "
        "-e venta_release_break_lock=true"
    )
    assert refused["lock"]["run_id"] == "run-b"

    broken = take(break_lock=True)
    assert broken["changed"] is True
    assert broken["broken"]["run_id"] == "run-b"
    assert broken["lock"]["run_id"] == "run-a"
    assert warnings == [broken["msg"]]
    assert "broke the release lock" in broken["msg"]


def test_release_leaves_another_runs_lock_and_warns(
    tmp_path: Path, take: Callable, warnings: list[str]
) -> None:
    take(run_id="run-b")
    result = take(state="absent")
    assert result.get("failed") is not True
    assert result["changed"] is False
    assert result["lock"]["run_id"] == "run-b"
    assert warnings == [result["msg"]]
    assert "held by another run" in result["msg"]
    assert (tmp_path / "venta" / "release.lock").exists()


def test_a_corrupt_lock_fails_the_take(tmp_path: Path, take: Callable) -> None:
    path = tmp_path / "venta" / "release.lock"
    path.parent.mkdir()
    path.write_text("{oops")
    result = take()
    assert result["failed"] is True
    assert "cannot be read" in result["msg"]
    assert take(break_lock=True)["broken"]["text"] == "{oops"


def test_present_needs_holder_and_playbook(module_runner: Callable, tmp_path: Path) -> None:
    result = module_runner(release_lock.main, path=str(tmp_path / "l"), run_id="r")
    assert result["failed"] is True
    assert "holder" in result["msg"] and "playbook" in result["msg"]
