"""The release-wide lock record: take, re-take, refuse, break, release, races."""

from __future__ import annotations

import fcntl
import json
import multiprocessing
import os
import stat
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from ansible_collections.venta.deploy.plugins.module_utils import release_lock
from ansible_collections.venta.deploy.plugins.module_utils.release_lock import (
    LockCorrupt,
    LockHeld,
    ReleaseLockError,
    acquire,
    age_text,
    create_exclusive,
    held_message,
    new_record,
    read,
    release,
)

MINE = new_record("run-mine", "alice@ctl1", "release.yml", version="1.2.0", pid=4242)
THEIRS = new_record(
    "run-theirs", "bob@ctl2", "rollback.yml", started_at="2025-01-01T12:00:00Z", pid=77
)


def write(path: Path, record: dict | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(record if isinstance(record, str) else json.dumps(record))


def on_disk(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture
def lock(tmp_path: Path) -> Path:
    return tmp_path / "var" / "lib" / "venta" / "release.lock"


# ---- the record ---------------------------------------------------------------------------------


def test_a_new_record_names_the_run() -> None:
    assert MINE["holder"] == "alice@ctl1"
    assert MINE["controller"] == "ctl1"
    assert MINE["playbook"] == "release.yml"
    assert MINE["version"] == "1.2.0"
    assert MINE["run_id"] == "run-mine"
    assert MINE["pid"] == 4242
    assert datetime.fromisoformat(MINE["started_at"].replace("Z", "+00:00")).tzinfo is not None
    assert new_record("r", "ci@runner", "deploy.yml")["version"] is None


@pytest.mark.parametrize("missing", ["run_id", "holder", "playbook"])
def test_a_record_needs_a_run_id_holder_and_playbook(missing: str) -> None:
    args = {"run_id": "r", "holder": "a@b", "playbook": "release.yml", missing: " "}
    with pytest.raises(ReleaseLockError, match=missing):
        new_record(**args)


@pytest.mark.parametrize(
    ("started", "expected"),
    [
        ("2025-01-01T11:59:30Z", "30 s ago"),
        ("2025-01-01T11:55:48Z", "4 min 12 s ago"),
        ("2025-01-01T10:56:00+00:00", "1 h 4 min ago"),
        ("2025-01-01T12:00:10Z", "in the future: check the clocks"),
        ("yesterday", "age unknown"),
        (None, "age unknown"),
    ],
)
def test_age(started: str | None, expected: str) -> None:
    assert age_text(started, datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)) == expected


def test_the_refusal_names_the_holder_and_the_fix() -> None:
    text = held_message(
        "/var/lib/venta/release.lock", THEIRS, datetime(2025, 1, 1, 12, 5, tzinfo=UTC)
    )
    assert text == (
        "the release lock /var/lib/venta/release.lock is held by bob@ctl2 (playbook "
        "rollback.yml, version none, since 2025-01-01T12:00:00Z, 5 min 0 s ago, run id "
        "run-theirs, ansible-playbook pid 77 on ctl2): wait for it to finish; if that run is gone "
        "(killed, controller lost), run again with -e venta_release_break_lock=true"
    )


# ---- acquire ------------------------------------------------------------------------------------

# (what is on disk before, break_lock) -> (changed, who holds it after, what was broken)
ACQUIRE = [
    pytest.param(None, False, True, "run-mine", None, id="free"),
    pytest.param(MINE, False, False, "run-mine", None, id="re-entrant"),
    pytest.param(MINE, True, False, "run-mine", None, id="re-entrant-with-break"),
    pytest.param(THEIRS, True, True, "run-mine", "run-theirs", id="break"),
    pytest.param(None, True, True, "run-mine", None, id="break-a-free-lock"),
]


@pytest.mark.parametrize(("before", "break_lock", "changed", "holder", "broken"), ACQUIRE)
@pytest.mark.parametrize("check_mode", [False, True], ids=["run", "check"])
def test_acquire(
    lock: Path,
    before: dict | None,
    break_lock: bool,
    changed: bool,
    holder: str,
    broken: str | None,
    check_mode: bool,
) -> None:
    if before is not None:
        write(lock, before)
    result = acquire(str(lock), MINE, break_lock=break_lock, check_mode=check_mode)
    assert result.changed is changed
    assert result.lock is not None and result.lock["run_id"] == holder
    assert (result.broken or {}).get("run_id") == broken
    if check_mode:
        assert on_disk(lock) == before if before is not None else not lock.exists()
    else:
        assert on_disk(lock)["run_id"] == holder
        if changed:
            assert stat.S_IMODE(lock.stat().st_mode) == 0o600
    assert (result.warning is not None) is (broken is not None)


def test_the_directory_is_created_0755(lock: Path) -> None:
    acquire(str(lock), MINE)
    assert stat.S_IMODE(lock.parent.stat().st_mode) == 0o755
    assert on_disk(lock) == MINE


def test_re_entrant_leaves_the_record_unchanged(lock: Path) -> None:
    first = acquire(str(lock), MINE)
    text = lock.read_text()
    again = acquire(str(lock), {**MINE, "started_at": "2030-01-01T00:00:00Z"})
    assert again.changed is False
    assert again.lock == first.lock
    assert lock.read_text() == text


@pytest.mark.parametrize("check_mode", [False, True], ids=["run", "check"])
def test_another_holder_is_refused_naming_it(lock: Path, check_mode: bool) -> None:
    write(lock, THEIRS)
    with pytest.raises(LockHeld) as caught:
        acquire(str(lock), MINE, check_mode=check_mode)
    message = str(caught.value)
    for part in ("bob@ctl2", "rollback.yml", "2025-01-01T12:00:00Z", "ago", "run-theirs"):
        assert part in message
    assert "wait for it to finish" in message
    assert "-e venta_release_break_lock=true" in message
    assert caught.value.record == THEIRS
    assert on_disk(lock) == THEIRS


@pytest.mark.parametrize("text", ["", "{half", "[1]", '{"holder": "x"}', '{"run_id": ""}'])
def test_a_corrupt_lock_is_refused_unless_broken(lock: Path, text: str) -> None:
    write(lock, text)
    with pytest.raises(LockCorrupt, match=r"cannot be read .*venta_release_break_lock=true"):
        acquire(str(lock), MINE)
    assert lock.read_text() == text
    with pytest.raises(LockCorrupt):
        read(str(lock))

    result = acquire(str(lock), MINE, break_lock=True)
    assert result.changed is True
    assert result.broken is not None and "unreadable" in result.broken
    assert result.broken["text"] == text
    assert on_disk(lock) == MINE


def test_break_replaces_atomically_and_leaves_no_temp_file(lock: Path) -> None:
    write(lock, THEIRS)
    result = acquire(str(lock), MINE, break_lock=True)
    assert result.broken == THEIRS
    assert "broke the release lock" in result.msg and "bob@ctl2" in result.msg
    assert sorted(p.name for p in lock.parent.iterdir()) == ["release.lock", "release.lock.guard"]


# ---- release ------------------------------------------------------------------------------------

# (on disk before) -> (changed, record left in `lock`, still on disk, warns)
RELEASE = [
    pytest.param(MINE, True, None, False, False, id="by-the-holder"),
    pytest.param(THEIRS, False, "run-theirs", True, True, id="by-another-run"),
    pytest.param(None, False, None, False, False, id="absent"),
    pytest.param("{garbage", False, None, True, True, id="corrupt"),
]


@pytest.mark.parametrize(("before", "changed", "left", "kept", "warns"), RELEASE)
@pytest.mark.parametrize("check_mode", [False, True], ids=["run", "check"])
def test_release(
    lock: Path,
    before: dict | str | None,
    changed: bool,
    left: str | None,
    kept: bool,
    warns: bool,
    check_mode: bool,
) -> None:
    if before is not None:
        write(lock, before)
    result = release(str(lock), "run-mine", check_mode=check_mode)
    assert result.changed is changed
    assert (result.lock or {}).get("run_id") == left
    assert result.broken is None
    assert (result.warning is not None) is warns
    assert lock.exists() is (kept or (check_mode and before is not None))


def test_release_then_another_run_takes_it(lock: Path) -> None:
    acquire(str(lock), MINE)
    with pytest.raises(LockHeld):
        acquire(str(lock), THEIRS)
    assert release(str(lock), "run-mine").changed is True
    assert read(str(lock)) is None
    assert acquire(str(lock), THEIRS).lock == THEIRS


# ---- races --------------------------------------------------------------------------------------


def test_threads_racing_for_one_lock_exactly_one_wins(lock: Path) -> None:
    barrier = threading.Barrier(8)
    winners: list[str] = []
    refused: list[str] = []

    def contend(index: int) -> None:
        record = new_record(f"run-{index}", f"user{index}@ctl", "release.yml")
        barrier.wait()
        try:
            acquire(str(lock), record)
            winners.append(record["run_id"])
        except LockHeld as exc:
            refused.append(exc.record["run_id"])

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1
    assert len(refused) == 7
    assert set(refused) == set(winners)
    assert on_disk(lock)["run_id"] == winners[0]


def race_in_a_process(path: str, index: int, start: object, results: object) -> None:
    record = new_record(f"proc-{index}", "ci@ctl", "release.yml")
    start.wait()  # type: ignore[attr-defined]
    try:
        acquire(path, record)
        results.put(("won", record["run_id"]))  # type: ignore[attr-defined]
    except LockHeld as exc:
        results.put(("refused", exc.record["run_id"]))  # type: ignore[attr-defined]


def test_processes_racing_for_one_lock_exactly_one_wins(lock: Path) -> None:
    context = multiprocessing.get_context("fork")
    start = context.Event()
    results = context.Queue()
    processes = [
        context.Process(target=race_in_a_process, args=(str(lock), i, start, results))
        for i in range(4)
    ]
    for process in processes:
        process.start()
    start.set()
    outcomes = [results.get(timeout=10) for _process in processes]
    for process in processes:
        process.join(timeout=10)
    won = [run for kind, run in outcomes if kind == "won"]
    assert len(won) == 1
    assert {run for kind, run in outcomes if kind == "refused"} == set(won)
    assert on_disk(lock)["run_id"] == won[0]


def test_o_excl_alone_lets_exactly_one_creator_win(lock: Path) -> None:
    lock.parent.mkdir(parents=True)
    barrier = threading.Barrier(8)
    created: list[int] = []

    def create(index: int) -> None:
        barrier.wait()
        if create_exclusive(str(lock), new_record(f"run-{index}", "ci@ctl", "release.yml")):
            created.append(index)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(created) == 1
    assert on_disk(lock)["run_id"] == f"run-{created[0]}"


def test_a_lock_held_by_a_slow_guard_is_refused_within_seconds(
    lock: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(release_lock, "GUARD_TIMEOUT", 0.2)
    acquire(str(lock), THEIRS)
    fd = os.open(str(lock) + ".guard", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(ReleaseLockError, match="run again"):
            acquire(str(lock), MINE)
    finally:
        os.close(fd)
