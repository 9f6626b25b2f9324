# Copyright: venta.deploy developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The intent record of a switch: written before the first upstream file changes, removed last.

Format (JSON, beside the state file as <state_file>.intent):

    {"run_id": "k2c9...", "action": "release", "started_at": "2025-01-01T12:00:00Z",
     "services": {"api-gateway": {
         "upstream_file": "/etc/nginx/venta-switch/upstreams/api-gateway.conf",
         "before_text": "<the file before, or null when there was none>",
         "after_text": "<the file the switch writes>",
         "before_weights": {"blue": 100, "green": 0},
         "after_weights": {"blue": 0, "green": 100}}}}

A run that finds it knows a switch was interrupted (the module or the machine died between the
write and the record): the recorded state says whether the switch got as far as recording
(then the switch is completed) or not (then it is undone), see switch_transaction.recover.

Failpoints, for the crash tests: when the file FAILPOINT_FILE holds the name of a phase, the
switch kills itself with SIGKILL at that phase, after writing the phase into FAILPOINT_HIT
(`echo after-rename > /run/venta-failpoints/nginx_switch`). /run is a tmpfs: a reboot clears it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ansible_collections.venta.deploy.plugins.module_utils.release_state import (
    ReleaseStateError,
    write_atomic,
)

FAILPOINT_FILE = "/run/venta-failpoints/nginx_switch"
FAILPOINT_HIT = "/run/venta-failpoints/nginx_switch.hit"
# The phases a crash test can stop a switch at, in the order the switch passes them.
PHASES: tuple[str, ...] = ("before-write", "after-rename", "after-reload", "before-record")


class IntentError(Exception):
    """The intent record cannot be read or written (names the file and the fix)."""


def read_intent(path: str) -> dict[str, Any] | None:
    """The intent record, or None when no switch is in progress."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise IntentError(f"cannot read the switch intent {path}: {exc}") from None
    try:
        intent = json.loads(text)
    except ValueError:
        intent = None
    if not isinstance(intent, dict) or not _valid_records(intent.get("services")):
        raise IntentError(
            f"the switch intent {path} is damaged, so the interrupted switch cannot be completed "
            "or undone automatically: compare the upstream files with the release state, run "
            "`nginx -t -c /etc/nginx/venta-switch/nginx.conf`, then remove the file"
        )
    return intent


def _valid_records(services: Any) -> bool:
    """Every service's record has the text to complete (after_text) and to undo (before_text,
    null when there was no file): recovery never guesses, nor deletes a file for a missing text."""
    return isinstance(services, dict) and all(
        isinstance(record, dict)
        and isinstance(record.get("after_text"), str)
        and isinstance(record.get("before_text"), (str, type(None)))
        and isinstance(record.get("after_weights"), dict)
        for record in services.values()
    )


def write_intent(path: str, intent: Mapping[str, Any]) -> None:
    try:
        write_atomic(path, json.dumps(intent, indent=2) + "\n", mode=0o600)
    except (OSError, ReleaseStateError) as exc:
        raise IntentError(f"cannot write the switch intent {path}: {exc}") from None


def clear_intent(path: str) -> None:
    try:
        Path(path).unlink(missing_ok=True)
    except OSError as exc:
        raise IntentError(f"cannot remove the switch intent {path}: {exc}") from None


def file_failpoint(phase: str) -> None:
    """Kill this process with SIGKILL when FAILPOINT_FILE names `phase` (crash tests only)."""
    try:
        wanted = Path(FAILPOINT_FILE).read_text(encoding="utf-8").strip()
    except OSError:
        return
    if wanted != phase:
        return
    with contextlib.suppress(OSError):
        Path(FAILPOINT_HIT).write_text(phase + "\n", encoding="utf-8")
    os.kill(os.getpid(), signal.SIGKILL)
