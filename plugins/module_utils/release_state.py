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

Every switch also records `last_action` ({"kind": "release" | "rollback" | "abort" |
"reconcile" | "switch", "run_id": ..., "at": ...}): a rollback after a rollback (or after an
aborted release) is a no-op, so running rollback.yml twice never toggles back.

The nginx_edge role reads ansible_local.venta_release.services[<name>].weights, so the weights
recorded here win over the inventory's and a deploy never reverts a switch.

Planning (which colour is live, which is idle, where a rollback goes) reads the state of EVERY
edge: `edge_differences` lists where edges disagree, `plan_release` and `plan_rollback` refuse to
plan when they do (the reconcile playbook converges them first).
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
# What a switch records as last_action.kind.
ACTION_KINDS: tuple[str, ...] = ("release", "rollback", "abort", "reconcile", "switch")
# After one of these the old colour is live again: a rollback has nothing left to undo.
UNDONE_KINDS: tuple[str, ...] = ("rollback", "abort")
RECONCILE_COMMAND = (
    "ansible-playbook playbooks/reconcile.yml -i <inventory> -e venta_reconcile_from=<edge>"
)


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
    return parse_state(text, path)


def parse_state(text: str | None, where: str) -> dict[str, Any]:
    """The state in `text` (None or blank: nothing recorded); `where` names it in errors."""
    if text is None or not text.strip():
        return empty_state()
    try:
        state = json.loads(text)
    except ValueError as exc:
        raise ReleaseStateError(
            f"the release state {where} is not valid JSON ({exc}); fix it or restore it from the "
            "edge's backup before switching (the nginx_edge role refuses to run with it too)"
        ) from None
    if not isinstance(state, dict) or not isinstance(state.get("services", {}), dict):
        raise ReleaseStateError(
            f'the release state {where} must be a JSON object {{"services": {{...}}}}; fix it first'
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
    action: Mapping[str, Any] | None = None,
    recorded: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The entry after a switch from `before_weights` to `weights`.

    `previous` is the colour that was active before the active colour last changed, so a
    rollback goes back to what served before (canary steps that leave the active colour as it
    was keep it). `action` ({kind, run_id}) is recorded as last_action when the weights or the
    versions change (an unchanged switch keeps the last one). `recorded` ({previous,
    last_action}), given by a reconcile, is copied from another edge as it is. History keeps the
    last HISTORY_LENGTH weight changes.
    """
    new_weights = normal_weights(weights)
    old_weights = normal_weights(before_weights) if before_weights is not None else None
    old_active = (current or {}).get("active")
    if old_active not in COLOURS:
        old_active = active_colour(old_weights) if old_weights is not None else None
    new_active = active_colour(new_weights, old_active)
    history = [item for item in (current or {}).get("history") or [] if isinstance(item, dict)]
    switched_at = (current or {}).get("switched_at")
    previous = (current or {}).get("previous")
    last_action = (current or {}).get("last_action")
    if old_weights != new_weights:
        history.append({"from": old_weights, "to": new_weights, "at": now})
        switched_at = now
        if old_active is not None and old_active != new_active:
            previous = old_active
    if old_weights != new_weights or dict((current or {}).get("versions") or {}) != dict(versions):
        last_action = {
            "kind": str((action or {}).get("kind") or "switch"),
            "run_id": (action or {}).get("run_id"),
            "at": now,
        }
    if recorded is not None:
        previous = recorded.get("previous")
        last_action = dict(recorded.get("last_action") or {}) or None
    entry = {
        "weights": new_weights,
        "active": new_active,
        "previous": previous,
        "versions": dict(versions),
        "backends": normal_backends(backends),
        "switched_at": switched_at or now,
        "history": history[-HISTORY_LENGTH:],
    }
    if last_action:
        entry["last_action"] = dict(last_action)
    return entry


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


def flock_within(fd: int, operation: int, timeout: float, poll: float = 0.02) -> bool:
    """Take flock `operation` (LOCK_EX or LOCK_SH) on `fd`, trying until `timeout` s; False then."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, operation | fcntl.LOCK_NB)
            return True
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)


@contextlib.contextmanager
def exclusive_lock(path: str, timeout: float) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created if missing); give up after `timeout` s."""
    Path(path).parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if not flock_within(fd, fcntl.LOCK_EX, timeout):
            raise ReleaseStateError(
                f"another switch holds {path} for more than {timeout:g}s; wait for it "
                "to finish (or raise lock_timeout) and run again"
            )
        yield
    finally:
        os.close(fd)


# ---- planning over every edge ------------------------------------------------------------------
#
# The planners take the state of every edge ({edge: state}) and refuse to plan when the edges do
# not agree: a release must never deploy into a slot that some edge still serves. Their results
# are plain dicts ({"ok": bool, "errors": [...], ...}) so the playbooks can print them.


def weights_text(weights: Mapping[str, Any] | None) -> str:
    """'blue 90 / green 10', or 'no weights recorded'."""
    if not weights:
        return "no weights recorded"
    normal = normal_weights(weights)
    return " / ".join(f"{colour} {normal[colour]}" for colour in COLOURS)


def describe_entry(entry: Mapping[str, Any] | None) -> str:
    """What one edge serves, e.g. 'green 100 (1.1.0), blue 0 (1.0.0), after release'."""
    if entry is None:
        return "nothing recorded (the inventory's weights)"
    weights = normal_weights(entry.get("weights") or {})
    versions = entry.get("versions") or {}
    order = sorted(COLOURS, key=lambda colour: -weights[colour])
    parts = [f"{colour} {weights[colour]} ({versions.get(colour) or '?'})" for colour in order]
    kind = (entry.get("last_action") or {}).get("kind")
    return ", ".join(parts) + (f", after {kind}" if kind else "")


def _comparable(entry: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The part of an entry every edge must agree on: what it serves, the versions, whether the
    last switch undid a release and, when it did not, where a rollback would go (not times,
    run ids, backends or history)."""
    if entry is None:
        return None
    undone = (entry.get("last_action") or {}).get("kind") in UNDONE_KINDS
    return {
        "weights": normal_weights(entry.get("weights") or {}),
        "active": entry.get("active"),
        "versions": {k: v for k, v in (entry.get("versions") or {}).items() if k in COLOURS},
        "undone": undone,
        "previous": None if undone else entry.get("previous"),
    }


def edge_differences(states: Mapping[str, Mapping[str, Any]], services: Sequence[str]) -> list[str]:
    """One line per service whose recorded entry is not the same on every edge."""
    lines: list[str] = []
    for service in services:
        seen = {edge: service_entry(states[edge], service) for edge in sorted(states)}
        if len({json.dumps(_comparable(entry), sort_keys=True) for entry in seen.values()}) > 1:
            lines.append(
                f"{service}: "
                + "; ".join(f"{edge} {describe_entry(entry)}" for edge, entry in seen.items())
            )
    return lines


def parse_edge_states(
    texts: Mapping[str, str | None],
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """{edge: state text or None} -> ({edge: state}, errors naming the edge)."""
    states: dict[str, dict[str, Any]] = {}
    errors: list[str] = []
    for edge in sorted(texts):
        try:
            states[edge] = parse_state(texts[edge], f"{STATE_PATH} on {edge}")
        except ReleaseStateError as exc:
            errors.append(str(exc))
    if not texts:
        errors.append(
            "no edge host to read the release state from: the inventory needs an edge group"
        )
    return states, errors


STATE_PATH = "/etc/ansible/facts.d/venta_release.fact"


def _disagreement(differences: Sequence[str]) -> str:
    return (
        "the edges do not agree on what they serve, so nothing was planned or changed: "
        + " | ".join(differences)
        + f". Converge every edge to one edge's state first: {RECONCILE_COMMAND}"
    )


def _common_entries(
    texts: Mapping[str, str | None], names: Sequence[str]
) -> tuple[dict[str, dict[str, Any] | None], list[str]]:
    """Each service's entry that every edge agrees on, or the errors (unreadable, disagreeing)."""
    states, errors = parse_edge_states(texts)
    if errors:
        return {}, errors
    differences = edge_differences(states, names)
    if differences:
        return {}, [_disagreement(differences)]
    first = states[sorted(states)[0]]
    return {name: service_entry(first, name) for name in names}, []


def _live_idle(entry: Mapping[str, Any] | None) -> tuple[dict[str, int], str, str]:
    weights = normal_weights((entry or {}).get("weights") or {"blue": 100})
    live = (entry or {}).get("active")
    if live not in COLOURS:
        live = active_colour(weights)
    return weights, live, other_colour(live)


def other_colour(colour: str) -> str:
    return COLOURS[1] if colour == COLOURS[0] else COLOURS[0]


def plan_release(
    texts: Mapping[str, str | None], services: Sequence[Mapping[str, Any]], version: str
) -> dict[str, Any]:
    """Per service: the live colour, the idle one the version goes into, the versions to record.

    `texts` is the state file of every edge; `services` the catalog entries (name, domain, tag).
    A service whose live colour runs `version` with all the traffic is skipped (a re-run changes
    nothing). A service in the middle of a canary continues only towards the version its new
    colour already runs; otherwise the plan is refused (roll it back first).
    """
    names = [str(svc["name"]) for svc in services]
    entries, errors = _common_entries(texts, names)
    if errors:
        return {"ok": False, "errors": errors, "plan": [], "skipped": []}
    plan: list[dict[str, Any]] = []
    skipped: list[str] = []
    for svc in services:
        name = str(svc["name"])
        entry = entries[name]
        weights, live, idle = _live_idle(entry)
        versions = (entry or {}).get("versions") or {}
        live_version = str(versions.get(live) or svc.get("tag") or "")
        if live_version == version and weights[live] == 100:
            skipped.append(name)
            continue
        if 0 < weights[idle] < 100 and versions.get(live) == version != versions.get(idle):
            # A canary past half way: its new colour already has the most weight (it is the
            # active one), the release still moves away from the other colour.
            live, idle = idle, live
            live_version = str(versions.get(live) or svc.get("tag") or "")
        if 0 < weights[idle] < 100 and versions.get(idle) != version:
            errors.append(
                f"{name} is in the middle of a canary ({weights_text(weights)}, {idle} runs "
                f"{versions.get(idle) or '?'}): releasing {version} would redeploy a slot that "
                f"takes traffic. Finish that release (run it again with venta_release_version="
                f"{versions.get(idle)}) or roll it back (playbooks/rollback.yml) first"
            )
            continue
        plan.append(
            {
                "name": name,
                "domain": svc.get("domain"),
                "live": live,
                "idle": idle,
                "live_version": live_version,
                "versions": {live: live_version, idle: version},
                "weights": weights,
            }
        )
    if errors:
        return {"ok": False, "errors": errors, "plan": [], "skipped": []}
    return {"ok": True, "errors": [], "plan": plan, "skipped": skipped}


def slot_names(service: str, colour: str, replicas: int) -> list[str]:
    """Container names of a slot: venta-<service>-<colour>, then -1, -2 ... for more replicas."""
    base = f"venta-{service}-{colour}"
    return [base if r == 0 else f"{base}-{r}" for r in range(max(1, int(replicas)))]


def _hosts_missing(
    svc: Mapping[str, Any],
    colour: str,
    version: str,
    slots: Mapping[str, Sequence[str]],
    groups: Mapping[str, Sequence[str]],
) -> list[str]:
    """Docker hosts of the service whose `colour` slot does not run `version` (every replica)."""
    hosts = list(groups.get(str(svc.get("hosts_group") or "docker_hosts")) or [])
    wanted = [
        f"{name} {version}"
        for name in slot_names(svc["name"], colour, svc.get("replicas_per_host") or 1)
    ]
    return [host for host in hosts if any(w not in set(slots.get(host) or []) for w in wanted)]


def plan_rollback(
    texts: Mapping[str, str | None],
    services: Sequence[Mapping[str, Any]],
    slots: Mapping[str, Sequence[str]],
    groups: Mapping[str, Sequence[str]],
    rollback_to: str | None = None,
) -> dict[str, Any]:
    """Where each service's rollback goes, from the state of every edge.

    Without `rollback_to`: during a canary back to the colour that had all the traffic before it
    began (history; else the one with the most weight), else to the recorded previous colour;
    nothing when the last switch already was a rollback or an abort (a
    second rollback is a no-op). With `rollback_to` (a version): to the colour that runs it, which
    must be warm (running that version) on every Docker host of the service.
    `slots` is {docker host: ["<container> <version>", ...]}; `groups` the inventory's groups.
    Each plan item names the hosts whose target slot is missing (`missing_on`, re-created first).
    """
    names = [str(svc["name"]) for svc in services]
    entries, errors = _common_entries(texts, names)
    if errors:
        return {"ok": False, "errors": errors, "plan": [], "noop": []}
    plan: list[dict[str, Any]] = []
    noop: list[dict[str, str]] = []
    for svc in services:
        name = str(svc["name"])
        entry = entries[name]
        if entry is None:
            noop.append({"name": name, "reason": "no switch recorded, nothing to roll back"})
            continue
        weights, live, _idle = _live_idle(entry)
        versions = entry.get("versions") or {}
        last = entry.get("last_action") or {}
        if rollback_to is not None:
            holders = [c for c in COLOURS if versions.get(c) == rollback_to]
            if not holders:
                warm = ", ".join(f"{c} {versions.get(c) or '?'}" for c in COLOURS)
                errors.append(
                    f"venta_rollback_to={rollback_to}: no slot of {name} runs {rollback_to} "
                    f"({warm}); give one of those versions"
                )
                continue
            to = holders[0] if live not in holders else live
            if weights[to] == 100:
                noop.append(
                    {
                        "name": name,
                        "reason": f"{to} already serves {rollback_to} with all the traffic",
                    }
                )
                continue
            missing = _hosts_missing(svc, to, rollback_to, slots, groups)
            if missing:
                errors.append(
                    f"venta_rollback_to={rollback_to}: the {to} slot of {name} does not run "
                    f"{rollback_to} on {', '.join(missing)} (not warm), so it cannot take the "
                    "traffic at once; release that version instead"
                )
                continue
            plan.append(_rollback_item(svc, to, rollback_to, []))
            continue
        canary = 0 < weights[COLOURS[0]] < 100
        if canary:
            to = canary_origin(entry) or live
        elif last.get("kind") in UNDONE_KINDS:
            noop.append(
                {
                    "name": name,
                    "reason": (
                        f"already rolled back: {live} serves {versions.get(live) or '?'} since the "
                        f"{last.get('kind')} at {last.get('at') or '?'} (a second rollback changes "
                        "nothing; -e venta_rollback_to=<version> goes to a named version)"
                    ),
                }
            )
            continue
        else:
            to = entry.get("previous")
        if to not in COLOURS or weights[to] == 100:
            noop.append(
                {
                    "name": name,
                    "reason": f"{live} has all the traffic and no earlier colour is recorded",
                }
            )
            continue
        version = str(versions.get(to) or svc.get("tag") or "")
        plan.append(
            _rollback_item(svc, to, version, _hosts_missing(svc, to, version, slots, groups))
        )
    if errors:
        return {"ok": False, "errors": errors, "plan": [], "noop": []}
    return {"ok": True, "errors": [], "plan": plan, "noop": noop}


def canary_origin(entry: Mapping[str, Any]) -> str | None:
    """The colour that had all the traffic before the canary in progress began (from history)."""
    for item in reversed(entry.get("history") or []):
        before = normal_weights((item or {}).get("from") or {}) if isinstance(item, dict) else {}
        full = [colour for colour in COLOURS if before.get(colour) == 100]
        if full:
            return full[0]
    return None


def _rollback_item(
    svc: Mapping[str, Any], to: str, version: str, missing_on: Sequence[str]
) -> dict[str, Any]:
    return {
        "name": str(svc["name"]),
        "domain": svc.get("domain"),
        "to": to,
        "from": other_colour(to),
        "version": version,
        "missing_on": list(missing_on),
    }


def plan_reconcile(
    texts: Mapping[str, str | None], services: Sequence[str], source: str | None
) -> dict[str, Any]:
    """The switches that make every edge serve what `source` (an edge) records.

    Edges that already agree need nothing (ok, no items). When they disagree, `source` is
    required. Items are {service, weights, versions, recorded: {previous, last_action}} for every
    service `source` records (the switch copies `recorded`, so the edges agree afterwards). A
    source that records nothing for a service another edge records cannot be copied: refused.
    """
    states, errors = parse_edge_states(texts)
    if errors:
        return {"ok": False, "errors": errors, "items": [], "differences": []}
    differences = edge_differences(states, services)
    if not differences:
        return {"ok": True, "errors": [], "items": [], "differences": []}
    if source is None or source not in states:
        return {
            "ok": False,
            "errors": [
                "the edges disagree ("
                + " | ".join(differences)
                + "); name the edge whose state every edge should take with "
                f"-e venta_reconcile_from=<{' | '.join(sorted(states))}>"
                + (f" (got {source!r}, not an edge)" if source is not None else "")
            ],
            "items": [],
            "differences": differences,
        }
    items: list[dict[str, Any]] = []
    for service in services:
        entry = service_entry(states[source], service)
        if entry is None:
            others = [edge for edge in sorted(states) if service_entry(states[edge], service)]
            if others:
                return {
                    "ok": False,
                    "errors": [
                        f"venta_reconcile_from={source} records nothing for {service}, which "
                        f"{', '.join(others)} record(s): a switch cannot remove a record, so "
                        "choose an edge that records every service"
                    ],
                    "items": [],
                    "differences": differences,
                }
            continue
        items.append(
            {
                "service": service,
                "weights": normal_weights(entry.get("weights") or {}),
                "versions": dict(entry.get("versions") or {}),
                "recorded": {
                    "previous": entry.get("previous"),
                    "last_action": dict(entry.get("last_action") or {}) or None,
                },
            }
        )
    return {"ok": True, "errors": [], "items": items, "differences": differences}


def describe_switch_results(results: Mapping[str, Mapping[str, Any]]) -> str:
    """What each edge serves after a switch, from each edge's switch result (nginx_switch's
    `services`): 'venta-edge1: api-gateway blue 100 (1.0.0), ...; venta-edge2: ...'."""
    parts: list[str] = []
    for edge in sorted(results):
        result = results[edge] or {}
        items = [
            f"{item.get('service')} {describe_entry(item.get('state'))}"
            for item in result.get("services") or []
            if isinstance(item, Mapping)
        ]
        if not result.get("ok", True) and not items:
            items = ["as before the switch (it failed there and put its files back)"]
        parts.append(f"{edge}: " + (", ".join(items) or "nothing switched"))
    return "; ".join(parts)


def plan_crash_repair(
    texts: Mapping[str, str | None], services: Sequence[str], broken_run: str | None
) -> dict[str, Any]:
    """After a run that was killed (its lock broken), put back what it switched on some edges only.

    A run killed in the middle of a step may have switched a service on some edges (their entry's
    last_action.run_id is `broken_run`) and not on others (each edge's own recovery undid its
    interrupted switch). All or nothing: every edge takes the entry of the edges that did NOT
    apply the killed run's switch (weights, versions, previous and last_action copied), so the
    edges agree again and the next plan starts from what served before that step. Services the
    edges agree on are left alone. Items are as plan_reconcile's, with the source edge named.
    """
    states, errors = parse_edge_states(texts)
    if errors or not broken_run:
        return {"ok": not errors, "errors": errors, "items": []}
    items: list[dict[str, Any]] = []
    for service in services:
        if not edge_differences(states, [service]):
            continue
        entries = {edge: service_entry(states[edge], service) for edge in sorted(states)}
        untouched = [
            edge
            for edge, entry in entries.items()
            if entry is not None and (entry.get("last_action") or {}).get("run_id") != broken_run
        ]
        touched = [edge for edge in entries if edge not in untouched]
        views = {json.dumps(_comparable(entries[edge]), sort_keys=True) for edge in untouched}
        if not untouched or not touched or len(views) != 1:
            continue  # not explained by the killed run alone: reconcile.yml decides
        entry = entries[untouched[0]] or {}
        items.append(
            {
                "service": service,
                "source": untouched[0],
                "edges": touched,
                "weights": normal_weights(entry.get("weights") or {}),
                "versions": dict(entry.get("versions") or {}),
                "recorded": {
                    "previous": entry.get("previous"),
                    "last_action": dict(entry.get("last_action") or {}) or None,
                },
            }
        )
    return {"ok": True, "errors": [], "items": items}
