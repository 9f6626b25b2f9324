# Copyright: venta.deploy developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The release state recorded on an edge host (/etc/ansible/facts.d/venta_release.fact).

Format (JSON, one entry per service; other services' entries are never touched):

    {"services": {"api-gateway": {
        "weights": {"blue": 0, "green": 100},   # what the upstream file sends where
        "active": "green",                      # colour with the most weight
        "previous": "blue",                     # active colour before the last switch
        "versions": {"blue": "1.0.0", "green": "1.1.0"},
        "backends": {"blue": ["app1:15002"], "green": ["app1:25002"]},
        "switched_at": "2025-01-01T12:00:00Z",
        "history": [{"from": {"blue": 100, "green": 0}, "to": {"blue": 0, "green": 100},
                     "at": "2025-01-01T12:00:00Z"}]}}}

The nginx_edge role reads ansible_local.venta_release.services[<name>].weights, so the weights
recorded here win over the inventory's and a deploy never reverts a switch.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ansible_collections.venta.deploy.plugins.module_utils.nginx_upstream import COLOURS

HISTORY_LENGTH = 10


class ReleaseStateError(Exception):
    """The state file cannot be read or written (names the file and what to do)."""


def empty_state() -> dict[str, Any]:
    return {"services": {}}


def load_state(path: str) -> dict[str, Any]:
    """The recorded state; an empty one when the file does not exist yet."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return empty_state()
    except OSError as exc:
        raise ReleaseStateError(f"cannot read the release state {path}: {exc}") from None
    if not text.strip():
        return empty_state()
    try:
        state = json.loads(text)
    except ValueError as exc:
        raise ReleaseStateError(
            f"the release state {path} is not valid JSON ({exc}); fix it or restore it from the "
            "edge's backup before switching (the nginx_edge role refuses to run with it too)"
        ) from None
    if not isinstance(state, dict) or not isinstance(state.get("services", {}), dict):
        raise ReleaseStateError(
            f'the release state {path} must be a JSON object {{"services": {{...}}}}; fix it first'
        )
    state.setdefault("services", {})
    return state


def service_entry(state: Mapping[str, Any], service: str) -> dict[str, Any] | None:
    entry = state.get("services", {}).get(service)
    return entry if isinstance(entry, dict) else None


def normal_weights(weights: Mapping[str, Any]) -> dict[str, int]:
    """Weights of both colours, as integers, in the fixed colour order."""
    return {colour: int(weights.get(colour) or 0) for colour in COLOURS}


def normal_backends(backends: Mapping[str, Sequence[str] | None]) -> dict[str, list[str]]:
    return {colour: list(backends.get(colour) or []) for colour in COLOURS}


def active_colour(weights: Mapping[str, int], tie_break: str | None = None) -> str:
    """The colour with the most weight; a tie keeps `tie_break` (the active one), else blue."""
    top = max(int(weights.get(colour, 0)) for colour in COLOURS)
    leaders = [colour for colour in COLOURS if int(weights.get(colour, 0)) == top]
    if tie_break in leaders:
        return str(tie_break)
    return leaders[0]


def utc_now() -> str:
    """The current time as ISO 8601 UTC, e.g. 2025-01-01T12:00:00Z."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def merged_versions(
    current: Mapping[str, Any] | None, versions: Mapping[str, str | None] | None
) -> dict[str, str]:
    """Recorded versions updated with the given ones (a colour not given keeps its version)."""
    result = {
        colour: str(value)
        for colour, value in ((current or {}).get("versions") or {}).items()
        if colour in COLOURS and value is not None
    }
    for colour, value in (versions or {}).items():
        if value is not None and colour in COLOURS:
            result[colour] = str(value)
    return {colour: result[colour] for colour in COLOURS if colour in result}


def entry_matches(
    current: Mapping[str, Any] | None,
    weights: Mapping[str, int],
    backends: Mapping[str, Sequence[str]],
    versions: Mapping[str, str],
) -> bool:
    """True when the recorded entry already says exactly this (nothing to record)."""
    if current is None:
        return False
    return (
        normal_weights(current.get("weights") or {}) == normal_weights(weights)
        and normal_backends(current.get("backends") or {}) == normal_backends(backends)
        and dict(current.get("versions") or {}) == dict(versions)
    )


def next_entry(
    current: Mapping[str, Any] | None,
    before_weights: Mapping[str, int] | None,
    weights: Mapping[str, int],
    backends: Mapping[str, Sequence[str]],
    versions: Mapping[str, str],
    now: str,
) -> dict[str, Any]:
    """The entry after a switch from `before_weights` to `weights`.

    `previous` is the active colour before this switch, so a rollback goes back to what served
    before; history keeps the last HISTORY_LENGTH weight changes.
    """
    new_weights = normal_weights(weights)
    old_weights = normal_weights(before_weights) if before_weights is not None else None
    old_active = (current or {}).get("active")
    if old_active not in COLOURS:
        old_active = active_colour(old_weights) if old_weights is not None else None
    history = [item for item in (current or {}).get("history") or [] if isinstance(item, dict)]
    switched_at = (current or {}).get("switched_at")
    previous = (current or {}).get("previous")
    if old_weights != new_weights:
        history.append({"from": old_weights, "to": new_weights, "at": now})
        switched_at = now
        previous = old_active
    return {
        "weights": new_weights,
        "active": active_colour(new_weights, old_active),
        "previous": previous,
        "versions": dict(versions),
        "backends": normal_backends(backends),
        "switched_at": switched_at or now,
        "history": history[-HISTORY_LENGTH:],
    }


def with_entry(state: Mapping[str, Any], service: str, entry: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the state with this service's entry replaced, every other entry untouched."""
    result = copy.deepcopy(dict(state))
    services = dict(result.get("services") or {})
    services[service] = copy.deepcopy(dict(entry))
    result["services"] = services
    return result


def dump_state(state: Mapping[str, Any]) -> str:
    return json.dumps(state, indent=2) + "\n"


def write_atomic(path: str, text: str, mode: int = 0o644) -> None:
    """Write a file whole: temp file in the same directory, fsync, rename over the old one."""
    directory = Path(path).parent
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=directory, prefix=".venta-", suffix=".tmp")
    temp = Path(name)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        temp.chmod(mode)
        temp.replace(path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_directory(str(directory))


def fsync_directory(directory: str) -> None:
    """Make a rename durable (best effort: some file systems refuse fsync on directories)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def exclusive_lock(path: str, timeout: float) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created if missing); give up after `timeout` s."""
    Path(path).parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    raise ReleaseStateError(
                        f"another switch holds {path} for more than {timeout:g}s; wait for it "
                        "to finish (or raise lock_timeout) and run again"
                    ) from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)
