"""roles/release_lock as a playbook runs it: three edges on the local connection, in tmp_path.

The edges are inventory names only: every edge is this machine, and the lock file of edge X is
<tmp>/X/release.lock (the play sets release_lock_path from the role's loop variable, `item`, the
edge being delegated to; the first edge's task has no loop). That is enough to prove the order
(first edge first), the refusal, the give-back on a partial failure, the break and the release.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[4]
ANSIBLE_PLAYBOOK = str(Path(sys.executable).parent / "ansible-playbook")
EDGES = ["edge-b", "edge-a", "edge-c"]  # sorted: edge-a is the first

PLAYBOOK = """\
- name: Take the lock, do the work, give it back
  hosts: edge
  gather_facts: false
  vars:
    release_lock_path: "{tmp}/{{{{ item | default('edge-a') }}}}/release.lock"
  tasks:
    - name: Take the release lock
      ansible.builtin.include_role:
        name: venta.deploy.release_lock
      vars:
        release_lock_playbook: release.yml
        release_lock_version: "1.2.0"
      when: take | default(true) | bool

    - name: Record the run id every host sees
      ansible.builtin.copy:
        content: "{{{{ release_lock_run_id }}}}"
        dest: "{tmp}/run_id.{{{{ inventory_hostname }}}}"
        mode: "0644"
      when: take | default(true) | bool

    - name: Give the release lock back
      ansible.builtin.include_role:
        name: venta.deploy.release_lock
        tasks_from: release
      when: give_back | default(true) | bool
"""

THEIRS = {
    "holder": "bob@ctl2",
    "controller": "ctl2",
    "playbook": "rollback.yml",
    "version": None,
    "started_at": "2025-01-01T12:00:00Z",
    "run_id": "theirrun00000000",
    "pid": 77,
}


def lock_of(tmp_path: Path, edge: str) -> Path:
    return tmp_path / edge / "release.lock"


def hold(tmp_path: Path, edge: str, record: dict) -> None:
    path = lock_of(tmp_path, edge)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))


def run(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    playbook = tmp_path / "play.yml"
    playbook.write_text(PLAYBOOK.format(tmp=tmp_path))
    inventory = tmp_path / "hosts.json"
    inventory.write_text(
        json.dumps(
            {
                "all": {
                    "children": {"edge": {"hosts": {edge: {} for edge in EDGES}}},
                    "vars": {
                        "ansible_connection": "local",
                        "ansible_python_interpreter": sys.executable,
                    },
                }
            }
        )
    )
    env = dict(os.environ)
    env.update(
        ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_DEPRECATION_WARNINGS="0",
        USER="alice",
    )
    return subprocess.run(
        [ANSIBLE_PLAYBOOK, "-i", str(inventory), str(playbook), *extra],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(autouse=True)
def _ansible_playbook() -> None:
    if not Path(ANSIBLE_PLAYBOOK).exists():
        pytest.skip("ansible-playbook is not in this virtualenv")


def test_takes_every_edge_shares_the_run_id_and_gives_it_back(tmp_path: Path) -> None:
    result = run(tmp_path, "-e", "give_back=false")
    assert result.returncode == 0, result.stdout + result.stderr
    run_ids = {(tmp_path / f"run_id.{edge}").read_text() for edge in EDGES}
    assert len(run_ids) == 1
    run_id = run_ids.pop()
    assert len(run_id) == 16
    for edge in EDGES:
        record = json.loads(lock_of(tmp_path, edge).read_text())
        assert record["run_id"] == run_id
        assert record["holder"] == f"alice@{record['controller']}"
        assert (record["playbook"], record["version"]) == ("release.yml", "1.2.0")

    released = run(tmp_path, "-e", f"release_lock_run_id={run_id}")  # the same run again
    assert released.returncode == 0, released.stdout + released.stderr
    assert not any(lock_of(tmp_path, edge).exists() for edge in EDGES)


def test_a_second_run_is_refused_on_the_first_edge_fast(tmp_path: Path) -> None:
    hold(tmp_path, "edge-a", THEIRS)
    started = time.monotonic()
    result = run(tmp_path)
    elapsed = time.monotonic() - started
    assert result.returncode != 0
    assert elapsed < 10
    out = result.stdout
    assert "release lock: refused on edge-a: the release lock" in out
    assert "held by bob@ctl2 (playbook rollback.yml, version none" in out
    assert "run again with -e venta_release_break_lock=true" in out
    assert not lock_of(tmp_path, "edge-b").exists()
    assert not lock_of(tmp_path, "edge-c").exists()
    assert json.loads(lock_of(tmp_path, "edge-a").read_text()) == THEIRS
    assert not list(tmp_path.glob("run_id.*"))


def test_a_refusal_on_a_later_edge_gives_back_the_locks_taken(tmp_path: Path) -> None:
    hold(tmp_path, "edge-c", THEIRS)
    result = run(tmp_path)
    assert result.returncode != 0
    assert "release lock: refused on edge-c: the release lock" in result.stdout
    assert "bob@ctl2" in result.stdout
    assert "were released" in result.stdout
    assert not lock_of(tmp_path, "edge-a").exists()
    assert not lock_of(tmp_path, "edge-b").exists()
    assert json.loads(lock_of(tmp_path, "edge-c").read_text()) == THEIRS


def test_break_takes_a_dead_runs_lock(tmp_path: Path) -> None:
    hold(tmp_path, "edge-a", THEIRS)
    result = run(tmp_path, "-e", "venta_release_break_lock=true", "-e", "give_back=false")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "broke the release lock" in result.stdout + result.stderr
    run_id = (tmp_path / "run_id.edge-a").read_text()
    assert {json.loads(lock_of(tmp_path, e).read_text())["run_id"] for e in EDGES} == {run_id}


def test_release_leaves_another_runs_lock_and_does_not_fail(tmp_path: Path) -> None:
    taken = run(tmp_path, "-e", "give_back=false")
    assert taken.returncode == 0, taken.stdout + taken.stderr
    run_id = (tmp_path / "run_id.edge-a").read_text()
    hold(tmp_path, "edge-b", THEIRS)  # broken and taken by another run meanwhile
    released = run(tmp_path, "-e", "take=false", "-e", f"release_lock_run_id={run_id}")
    assert released.returncode == 0, released.stdout + released.stderr
    assert "held by another run" in released.stdout + released.stderr
    assert not lock_of(tmp_path, "edge-a").exists()
    assert not lock_of(tmp_path, "edge-c").exists()
    assert json.loads(lock_of(tmp_path, "edge-b").read_text()) == THEIRS


def test_release_without_a_run_id_releases_nothing(tmp_path: Path) -> None:
    hold(tmp_path, "edge-a", THEIRS)
    result = run(tmp_path, "-e", "take=false")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "nothing to release" in result.stdout
    assert json.loads(lock_of(tmp_path, "edge-a").read_text()) == THEIRS
