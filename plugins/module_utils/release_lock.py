# Copyright: venta.deploy developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The release-wide lock: a record on each edge host naming the run that holds it.

Release, rollback, maintenance, reconcile and the edge writes of deploy.yml take it, so a second
run is refused at once, naming the holder. Runs are separate ansible-playbook processes (often on
different controllers), so the lock is a file that outlives the process that wrote it, not a
flock. Format (JSON, mode 0600, /var/lib/venta/release.lock by default):

    {"holder": "alice@ctl1", "controller": "ctl1", "playbook": "release.yml",
     "version": "1.2.0", "started_at": "2025-01-01T12:00:00Z", "run_id": "k3j9q0x7m2p4a8w1",
     "pid": 4242}

The file is created with O_CREAT|O_EXCL, so of two runs only one creates it. Reading, breaking
and removing it happen under a short flock on `<path>.guard` (held for milliseconds, never for
the run), so a release never removes a record another run has just written and a reader never
sees a half-written one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ansible_collections.venta.deploy.plugins.module_utils.release_state import flock_within

DEFAULT_PATH = "/var/lib/venta/release.lock"
BREAK_VARIABLE = "venta_release_break_lock"
WAIT_OR_BREAK = (
    "wait for it to finish; if that run is gone (killed, controller lost), run again with "
    f"-e {BREAK_VARIABLE}=true"
)
GUARD_SUFFIX = ".guard"
GUARD_TIMEOUT = 5.0
RECORD_KEYS = ("holder", "controller", "playbook", "version", "started_at", "run_id", "pid")


class ReleaseLockError(Exception):
    """The lock cannot be taken, read or written; the message is complete by itself."""


class LockHeld(ReleaseLockError):
    """Another run holds the lock; `record` is its record."""

    def __init__(self, message: str, record: Mapping[str, Any]) -> None:
        super().__init__(message)
        self.record = dict(record)


class LockCorrupt(ReleaseLockError):
    """The lock file exists but is not a readable record; `reason` says why."""

    def __init__(self, message: str, reason: str, text: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.text = text


@dataclass(frozen=True)
class LockResult:
    """What acquire or release did (or would do, in check mode)."""

    changed: bool
    lock: dict[str, Any] | None
    broken: dict[str, Any] | None
    msg: str
    warning: str | None = None  # a broken lock, or a release that left another run's lock

    def as_dict(self) -> dict[str, Any]:
        return {"changed": self.changed, "lock": self.lock, "broken": self.broken, "msg": self.msg}


# ---- records ------------------------------------------------------------------------------------


def utc_now() -> str:
    """The current time as ISO 8601 UTC, e.g. 2025-01-01T12:00:00Z."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def new_record(
    run_id: str,
    holder: str,
    playbook: str,
    controller: str | None = None,
    version: str | None = None,
    pid: int | None = None,
    started_at: str | None = None,
) -> dict[str, Any]:
    """The record a run writes; `controller` defaults to the host part of `holder`."""
    for name, value in (("run_id", run_id), ("holder", holder), ("playbook", playbook)):
        if not isinstance(value, str) or not value.strip():
            raise ReleaseLockError(f"release lock: {name} must be a non-empty string")
    if controller is None and "@" in holder:
        controller = holder.rsplit("@", 1)[1]
    return {
        "holder": holder,
        "controller": controller,
        "playbook": playbook,
        "version": None if version in (None, "") else str(version),
        "started_at": started_at or utc_now(),
        "run_id": run_id,
        "pid": None if pid is None else int(pid),
    }


def parse_record(text: str, path: str) -> dict[str, Any]:
    """The record in `text`; LockCorrupt when it is not a JSON object with a run_id."""
    try:
        record = json.loads(text)
    except ValueError as exc:
        raise corrupt(path, f"not JSON ({exc})", text) from None
    if not isinstance(record, dict):
        raise corrupt(path, "not a JSON object", text)
    if not isinstance(record.get("run_id"), str) or not record["run_id"]:
        raise corrupt(path, "no run_id", text)
    return record


def corrupt(path: str, reason: str, text: str) -> LockCorrupt:
    return LockCorrupt(
        f"the release lock {path} cannot be read ({reason}), so it is not known which run holds "
        f"it; if no run holds it, run again with -e {BREAK_VARIABLE}=true",
        reason,
        text,
    )


def unreadable_record(error: LockCorrupt) -> dict[str, Any]:
    """What a broken corrupt lock is reported as."""
    return {"unreadable": error.reason, "text": error.text[:200]}


def age_text(started_at: Any, now: datetime) -> str:
    """How long ago `started_at` was, e.g. '1 h 4 min ago'; 'age unknown' when unparseable."""
    try:
        started = datetime.fromisoformat(str(started_at).replace("Z", "+00:00"))
    except ValueError:
        return "age unknown"
    if started.tzinfo is None:
        started = started.replace(tzinfo=UTC)
    seconds = int((now - started).total_seconds())
    if seconds < 0:
        return "in the future: check the clocks"
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min ago"
    if minutes:
        return f"{minutes} min {seconds} s ago"
    return f"{seconds} s ago"


def describe(record: Mapping[str, Any], now: datetime | None = None) -> str:
    """The holder, playbook, version, since when and run id of a record, in words."""
    now = now or datetime.now(UTC)
    started = record.get("started_at") or "an unknown time"
    text = (
        f"{record.get('holder') or 'an unknown holder'} (playbook "
        f"{record.get('playbook') or 'unknown'}, version {record.get('version') or 'none'}, "
        f"since {started}, {age_text(record.get('started_at'), now)}, run id {record['run_id']}"
    )
    if record.get("pid") is not None:
        text += f", ansible-playbook pid {record['pid']} on {record.get('controller') or 'unknown'}"
    return text + ")"


def held_message(path: str, record: Mapping[str, Any], now: datetime | None = None) -> str:
    return f"the release lock {path} is held by {describe(record, now)}: {WAIT_OR_BREAK}"


# ---- files --------------------------------------------------------------------------------------


def ensure_directory(path: str) -> None:
    """Create the lock's directory (0755) when it is missing."""
    directory = Path(path).parent
    if directory.is_dir():
        return
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    directory.chmod(0o755)


@contextlib.contextmanager
def guard(path: str, exclusive: bool) -> Iterator[None]:
    """A short flock on `<path>.guard` around one read-decide-write (not held during the run).

    A shared guard (readers) on a directory that was never written needs no guard file.
    """
    guard_path = path + GUARD_SUFFIX
    if not exclusive and not Path(guard_path).exists():
        yield
        return
    flags = os.O_RDWR | os.O_CREAT if exclusive else os.O_RDONLY
    fd = os.open(guard_path, flags, 0o600)
    try:
        wait_for_flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH, path)
        yield
    finally:
        os.close(fd)


def wait_for_flock(fd: int, operation: int, path: str) -> None:
    if not flock_within(fd, operation, GUARD_TIMEOUT):
        raise ReleaseLockError(
            f"another run has been taking or releasing the release lock {path} for more "
            f"than {GUARD_TIMEOUT:g} s ({path}{GUARD_SUFFIX} is locked); run again"
        )


def read_text(path: str) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ReleaseLockError(f"cannot read the release lock {path}: {exc}") from None


def read_unguarded(path: str) -> dict[str, Any] | None:
    text = read_text(path)
    return None if text is None else parse_record(text, path)


def read(path: str) -> dict[str, Any] | None:
    """The record that holds the lock, None when it is free; LockCorrupt when unreadable."""
    with guard(path, exclusive=False):
        return read_unguarded(path)


def dump(record: Mapping[str, Any]) -> bytes:
    return (json.dumps(dict(record), indent=2, sort_keys=True) + "\n").encode("utf-8")


def create_exclusive(path: str, record: Mapping[str, Any]) -> bool:
    """Create the lock file with the record; False when it exists already."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, dump(record))
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        Path(path).unlink(missing_ok=True)
        raise
    os.close(fd)
    return True


def replace_atomically(path: str, record: Mapping[str, Any]) -> None:
    """Put the record in place of the current lock file in one rename."""
    fd, temp = tempfile.mkstemp(dir=str(Path(path).parent), prefix=".release-lock-")
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, dump(record))
        os.fsync(fd)
        os.close(fd)
        fd = -1
        Path(temp).replace(path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        Path(temp).unlink(missing_ok=True)
        raise


def io_error(path: str, action: str, exc: OSError) -> ReleaseLockError:
    return ReleaseLockError(f"cannot {action} the release lock {path}: {exc}")


# ---- decisions ----------------------------------------------------------------------------------


def current_record(path: str, break_lock: bool) -> tuple[dict[str, Any] | None, dict | None]:
    """(the current record or None, what a break would replace): raises unless breakable."""
    try:
        return read_unguarded(path), None
    except LockCorrupt as exc:
        if not break_lock:
            raise
        return None, unreadable_record(exc)


def acquire(
    path: str, record: Mapping[str, Any], break_lock: bool = False, check_mode: bool = False
) -> LockResult:
    """Take the lock for `record` (see new_record).

    Free: created (changed). Held by the same run_id: unchanged (re-entrant). Held by another
    run: LockHeld, unless `break_lock`, which replaces it atomically and returns it as `broken`.
    An unreadable lock file: LockCorrupt, unless `break_lock`. Check mode only reads.
    """
    record = dict(record)
    try:
        if check_mode:
            with guard(path, exclusive=False):
                return decide_acquire(path, record, break_lock, write=False)
        ensure_directory(path)
        with guard(path, exclusive=True):
            return decide_acquire(path, record, break_lock, write=True)
    except OSError as exc:
        raise io_error(path, "take", exc) from None


def decide_acquire(path: str, record: dict[str, Any], break_lock: bool, write: bool) -> LockResult:
    if write and create_exclusive(path, record):
        return LockResult(True, record, None, f"took the release lock {path}")
    current, unreadable = current_record(path, break_lock)
    if current is None and unreadable is None:  # removed between the two looks
        if write and not create_exclusive(path, record):
            raise ReleaseLockError(
                f"the release lock {path} was removed and created again while this run took it "
                "(by something that does not use this module); run again"
            )
        return LockResult(True, record, None, f"took the release lock {path}")
    if current is not None and current["run_id"] == record["run_id"]:
        return LockResult(False, current, None, f"this run already holds the release lock {path}")
    if current is not None and not break_lock:
        raise LockHeld(held_message(path, current), current)
    broken = current if current is not None else unreadable
    if write:
        replace_atomically(path, record)
    what = describe(current) if current is not None else f"unreadable: {broken['unreadable']}"
    msg = f"broke the release lock {path} of {what}; took it"
    return LockResult(True, record, broken, msg, warning=msg)


def release(path: str, run_id: str, check_mode: bool = False) -> LockResult:
    """Remove the lock if `run_id` holds it.

    Absent: unchanged. Another run's (or an unreadable) lock: not touched, reported in `msg` and,
    for another run, in `lock`. Check mode only reads.
    """
    try:
        with guard(path, exclusive=not check_mode and Path(path).exists()):
            return decide_release(path, run_id, write=not check_mode)
    except OSError as exc:
        raise io_error(path, "release", exc) from None


def decide_release(path: str, run_id: str, write: bool) -> LockResult:
    try:
        current = read_unguarded(path)
    except LockCorrupt as exc:
        msg = (
            f"left the release lock {path} in place: it cannot be read ({exc.reason}); remove "
            "it by hand once no run holds it"
        )
        return LockResult(False, None, None, msg, warning=msg)
    if current is None:
        return LockResult(False, None, None, f"the release lock {path} is not held")
    if current["run_id"] != run_id:
        msg = (
            f"left the release lock {path} in place: it is held by another run, {describe(current)}"
        )
        return LockResult(False, current, None, msg, warning=msg)
    if write:
        Path(path).unlink()
    return LockResult(True, None, None, f"released the release lock {path} (run id {run_id})")
