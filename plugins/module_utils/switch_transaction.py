# Copyright: venta.deploy developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The release switch of the Docker platform as one transaction over the services of a batch.

Under the edge's lock (<state_file>.lock), in this order; what a failure at each step leaves:

0. recover: an intent record (an interrupted switch) or an upstream file whose weights are not
   the recorded ones is completed or undone first: the files the recorded state says, `nginx -t`,
   reload, verify through the edge, intent removed. A failure here stops before anything else;
2. plan every service from ONE read of the state; nothing differs -> unchanged;
3. health-gate every backend of each colour that gets weight > 0 -> nothing touched yet;
4. write the intent record (every file before and after);
5. write each new upstream file (temp file in the same directory, fsync, rename);
6. ONE `nginx -t` -> on failure the previous files are written back (nginx never saw them);
7. ONE graceful reload -> on failure the previous files are written back and nginx reloaded;
8. verify every service through the edge: enough good answers in a row AND an answer from each
   colour that has weight -> on failure the previous files are put back and nginx reloaded;
9. ONE atomic write of the state -> on failure the previous files are put back and reloaded;
10. remove the intent record.

A step that puts the previous files back also removes the intent; when even that fails, the
intent stays and the next run (of any switch, or the nginx_edge role) recovers.
Check mode predicts steps 0-3 with read-only probes.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ansible_collections.venta.deploy.plugins.module_utils.health_gate import (
    Answer,
    Expectation,
    Fetcher,
    GateResult,
    HttpOptions,
    failure_message,
    fetch,
    mismatch,
    wait_until_healthy,
)
from ansible_collections.venta.deploy.plugins.module_utils.nginx_upstream import (
    COLOURS,
    parse_weights,
    render_upstream,
)
from ansible_collections.venta.deploy.plugins.module_utils.release_state import (
    ReleaseStateError,
    dump_state,
    entry_matches,
    exclusive_lock,
    load_state,
    merged_versions,
    next_entry,
    normal_backends,
    normal_weights,
    service_entry,
    utc_now,
    weights_text,
    with_entry,
    write_atomic,
)
from ansible_collections.venta.deploy.plugins.module_utils.switch_intent import (
    IntentError,
    clear_intent,
    file_failpoint,
    read_intent,
    write_intent,
)
from ansible_collections.venta.deploy.plugins.module_utils.switch_request import (
    HealthCheck,
    ServiceRequest,
    SharedSettings,
    SwitchBatch,
    SwitchError,
    VerifySettings,
    parse_batch,
)

RunCommand = Callable[[Sequence[str]], tuple[int, str, str]]
Failpoint = Callable[[str], None]

# Most threads probing at once (health gate targets, verifications of a batch).
MAX_PROBE_THREADS = 32
# Verification: enough requests that a colour with weight w (percent) is seen with near
# certainty, about SAMPLE_FACTOR / w requests (10 % -> 50, 1 % -> 500); once the good answers in
# a row are there, the remaining requests are sent without waiting.
SAMPLE_FACTOR = 500
# Files older switch versions left beside the upstreams (hard-linked backups, temp files).
LEFTOVER_PATTERNS: tuple[str, ...] = ("*.conf.switch~", ".*.switch-new")


# ---- the plan ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class GateTarget:
    """One URL the health gate probes, for one colour (and one backend of it, for path checks)."""

    colour: str
    backend: str | None
    check: HealthCheck
    expectation: Expectation
    url: str


@dataclass
class Plan:
    """What the switch will do for one service, computed from read-only inputs."""

    backends: dict[str, list[str]]
    versions: dict[str, str]
    before_weights: dict[str, int] | None
    before_entry: dict[str, Any] | None
    after_entry: dict[str, Any]
    old_text: str | None
    new_text: str

    @property
    def file_changes(self) -> bool:
        return self.old_text != self.new_text

    @property
    def traffic_changes(self) -> bool:
        return self.before_weights != self.after_entry["weights"]

    @property
    def state_changes(self) -> bool:
        if not entry_matches(
            self.before_entry, self.after_entry["weights"], self.backends, self.versions
        ):
            return True
        before = self.before_entry or {}
        return self.after_entry.get("previous") != before.get("previous") or (
            self.after_entry.get("last_action") or {}
        ).get("kind") != (before.get("last_action") or {}).get("kind")

    @property
    def changed(self) -> bool:
        return self.file_changes or self.state_changes

    @property
    def needs_reload(self) -> bool:
        """Traffic moves (or the file changes): write, test, reload and verify, never record only.

        A file that already says the target weights while the state does not may never have
        been loaded by nginx (a crash between the rename and the reload), so it is reloaded too.
        """
        return self.file_changes or self.traffic_changes

    def live_colours(self) -> list[str]:
        return live_colours(self.after_entry["weights"], self.backends)


def live_colours(weights: Mapping[str, int], backends: Mapping[str, Sequence[str]]) -> list[str]:
    return [c for c in COLOURS if int(weights.get(c, 0)) > 0 and backends.get(c)]


@dataclass
class Unit:
    """One service in a switch: its request and its plan."""

    request: ServiceRequest
    plan: Plan

    @property
    def service(self) -> str:
        return self.request.service


def read_text(path: str) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SwitchError(f"cannot read {path}: {exc}") from None


def make_plan(
    request: ServiceRequest, shared: SharedSettings, state: Mapping[str, Any], now: str
) -> Plan:
    """The plan of one service against the recorded state."""
    current = service_entry(state, request.service)
    recorded = normal_backends((current or {}).get("backends") or {})
    given = request.backends
    if all(given[colour] is None for colour in COLOURS) and not any(recorded.values()):
        raise SwitchError(
            f"no backends given and none recorded in {shared.state_file}; "
            "pass backends (host:port per colour, as in nginx_edge_services)"
        )
    backends = {
        colour: list(given[colour]) if given[colour] is not None else recorded[colour]
        for colour in COLOURS
    }
    empty = [c for c in COLOURS if request.weights[c] > 0 and not backends[c]]
    if empty:
        raise SwitchError(
            f"weights give {empty[0]} {request.weights[empty[0]]} but "
            f"backends.{empty[0]} is empty; deploy that slot first or give it weight 0"
        )
    old_text = read_text(request.upstream_file)
    new_text = render_upstream(
        request.service, backends, request.weights, shared.state_file, shared.upstream
    )
    before_weights: dict[str, int] | None = None
    if current is not None and isinstance(current.get("weights"), dict):
        before_weights = normal_weights(current["weights"])
    elif old_text is not None:
        before_weights = parse_weights(old_text)
    versions = merged_versions(current, request.versions)
    action = {"kind": shared.action, "run_id": shared.run_id}
    after = next_entry(
        current, before_weights, request.weights, backends, versions, now, action, request.recorded
    )
    return Plan(backends, versions, before_weights, current, after, old_text, new_text)


# ---- the transaction --------------------------------------------------------------------------


@dataclass
class Outcome:
    """Audit trail of one switch (returned by the module, also on failure)."""

    actions: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    health: list[dict[str, Any]] = field(default_factory=list)
    verify: dict[str, Any] = field(default_factory=dict)
    recovered: dict[str, str] = field(default_factory=dict)


@dataclass
class VerifyCheck:
    """What the verification of one service through the edge saw (nothing restored yet)."""

    ok: bool
    details: dict[str, Any]
    summary: str  # the action when ok, else what went wrong (URL, expectation, seen, last)


@dataclass(frozen=True)
class VerifyItem:
    """One service to verify through the edge: the weights it serves and its live colours."""

    service: str
    weights: Mapping[str, int]
    live: list[str]
    verify: VerifySettings


@dataclass(frozen=True)
class Rewrite:
    """One upstream file to put into a known text (None: the file must not exist)."""

    service: str
    path: str
    text: str | None


class SwitchTransaction:
    """Runs one switch of a batch of services (all or nothing); side effects go through
    run_command, fetcher, the file system and failpoint."""

    def __init__(
        self,
        batch: SwitchBatch,
        run_command: RunCommand,
        check_mode: bool = False,
        fetcher: Fetcher = fetch,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        now: Callable[[], str] = utc_now,
        failpoint: Failpoint = file_failpoint,
    ) -> None:
        self.batch = batch
        self.shared = batch.shared
        self.run_command = run_command
        self.check_mode = check_mode
        self.fetcher = fetcher
        self.clock = clock
        self.sleep = sleep
        self.now = now
        self.failpoint = failpoint
        self.outcome = Outcome()
        self._state: dict[str, Any] = {}  # the state the plan read, the base of the record

    # -- public

    def run(self) -> dict[str, Any]:
        started = self.clock()
        try:
            if self.check_mode:
                return self._run(started)
            try:
                with exclusive_lock(self.shared.lock_file, self.shared.lock_timeout):
                    return self._run(started)
            except ReleaseStateError as exc:
                raise SwitchError(str(exc)) from None
        except SwitchError as exc:
            self.outcome.timings["total_s"] = self._since(started)
            exc.details.update(self._audit())
            raise

    def _run(self, started: float) -> dict[str, Any]:
        recovered = self._recover()
        units = self._plan()
        changed = [unit for unit in units if unit.plan.changed]
        self.outcome.actions.extend(
            f"{unit.service}: unchanged, not touched" for unit in units if not unit.plan.changed
        )
        if changed:
            self._health_gate(changed)
            moving = [unit for unit in changed if unit.plan.needs_reload]
            if self.check_mode:
                self.outcome.actions.append(
                    f"check mode: nothing written, nginx not reloaded ({_names(changed)} "
                    "would change)"
                )
            elif moving:
                self._apply(moving, changed)
            else:
                self._record(changed)
                self.outcome.actions.append(
                    f"{_names(changed)}: traffic already as requested, only the state recorded"
                )
        self.outcome.timings["total_s"] = self._since(started)
        return {
            "changed": bool(changed) or recovered,
            "services": [
                {**self._service_result(unit), "changed": unit.plan.changed} for unit in units
            ],
            "diff": [entry for unit in changed for entry in self._diff(unit)],
            "state": self._state,
            **self._audit(),
        }

    # -- step 0: complete or undo an interrupted switch

    def _recover(self) -> bool:
        """Make the upstream files and nginx match the recorded state; True when it had to."""
        try:
            intent = read_intent(self.shared.intent_file)
            state = load_state(self.shared.state_file)
        except (IntentError, ReleaseStateError) as exc:
            raise SwitchError(str(exc)) from None
        rewrites = self._recovery_rewrites(intent, state)
        leftovers = self._remove_leftovers()
        if intent is None and not rewrites:
            return bool(leftovers)
        if self.check_mode:
            self.outcome.actions.append(
                "check mode: would recover an interrupted switch ("
                + ", ".join(f"{s}: {why}" for s, why in self.outcome.recovered.items())
                + ")"
            )
            return True
        began = self.clock()
        if intent is None:
            # Leave a trace first: a recovery that fails below is retried by the next run even
            # though the files then already say what the state says.
            self._write_intent(
                {r.service: self._recovery_record(r, state) for r in rewrites}, "recovery"
            )
        failures = self._rewrite(rewrites)
        if failures:
            raise SwitchError(
                "recovery of an interrupted switch could not write "
                + "; ".join(failures)
                + f"; the intent {self.shared.intent_file} is kept: fix the files and run again"
            )
        output = self._command(self.shared.test_command, "recover_validate_s")
        if output is not None:
            raise SwitchError(
                f"recovery of an interrupted switch: {' '.join(self.shared.test_command)} rejects "
                f"the recorded upstreams ({output}); nginx was not reloaded and the intent "
                f"{self.shared.intent_file} is kept. Fix the configuration and run again"
            )
        output = self._command(self.shared.reload_command, "recover_reload_s")
        if output is not None:
            raise SwitchError(
                f"recovery of an interrupted switch: {' '.join(self.shared.reload_command)} "
                f"failed ({output}); the intent {self.shared.intent_file} is kept. Start the "
                "switch layer (or converge the edge with the nginx_edge role) and run again"
            )
        checks = self._verify_all([self._recovery_item(rewrite) for rewrite in rewrites])
        failed = [
            (service, check) for service, check in checks if check is not None and not check.ok
        ]
        if failed:
            raise SwitchError(
                "recovery of an interrupted switch: the edge does not serve what is recorded: "
                + "; ".join(f"{service}: {check.summary}" for service, check in failed)
                + f". The intent {self.shared.intent_file} is kept"
            )
        try:
            clear_intent(self.shared.intent_file)
        except IntentError as exc:
            raise SwitchError(str(exc)) from None
        self.outcome.timings["recover_s"] = self._since(began)
        self.outcome.actions.append(
            "recovered an interrupted switch ("
            + ", ".join(f"{s}: {why}" for s, why in self.outcome.recovered.items())
            + "): nginx -t ok, reloaded, verified"
        )
        return True

    def _recovery_rewrites(
        self, intent: Mapping[str, Any] | None, state: Mapping[str, Any]
    ) -> list[Rewrite]:
        """The files recovery puts into place, and why (into outcome.recovered)."""
        rewrites: list[Rewrite] = []
        for service, record in sorted(((intent or {}).get("services") or {}).items()):
            completed = self._was_recorded(service, service_entry(state, service), record)
            text = record.get("after_text") if completed else record.get("before_text")
            path = str(record.get("upstream_file") or self.shared.upstream_file(service))
            rewrites.append(Rewrite(service, path, text))
            self.outcome.recovered[service] = (
                "completed (the state was recorded)"
                if completed
                else f"undone, back to {weights_text(record.get('before_weights'))}"
            )
        upstream_dir = Path(self.shared.upstream_dir)
        if not upstream_dir.is_dir():
            return rewrites
        for service, entry in sorted((state.get("services") or {}).items()):
            if service in self.outcome.recovered or not isinstance(entry, dict):
                continue
            path = self.shared.upstream_file(service)
            text = read_text(path)
            recorded = normal_weights(entry.get("weights") or {})
            if text is None or parse_weights(text) in (None, recorded):
                continue
            backends = normal_backends(entry.get("backends") or {})
            if not live_colours(recorded, backends):
                continue
            rewrites.append(
                Rewrite(
                    service,
                    path,
                    render_upstream(
                        service, backends, recorded, self.shared.state_file, self.shared.upstream
                    ),
                )
            )
            self.outcome.recovered[service] = (
                f"the file said {weights_text(parse_weights(text))}, the state "
                f"{weights_text(recorded)}: back to the state"
            )
        return rewrites

    def _was_recorded(
        self, service: str, entry: Mapping[str, Any] | None, record: Mapping[str, Any]
    ) -> bool:
        """Whether the interrupted switch got as far as recording its state.

        The recorded entry rendered is the file after the switch (recorded) or before it (not);
        when neither (other upstream settings since), its weights decide.
        """
        if not entry:
            return False
        weights = normal_weights(entry.get("weights") or {})
        backends = normal_backends(entry.get("backends") or {})
        text = render_upstream(
            service, backends, weights, self.shared.state_file, self.shared.upstream
        )
        if text == record.get("after_text"):
            return True
        if text == record.get("before_text"):
            return False
        return weights == normal_weights(record.get("after_weights") or {})

    def _remove_leftovers(self) -> list[str]:
        """Remove (in check mode: name) the files older switch versions left; their names."""
        directory = Path(self.shared.upstream_dir)
        if not directory.is_dir():
            return []
        leftovers = sorted(p for pattern in LEFTOVER_PATTERNS for p in directory.glob(pattern))
        if not leftovers:
            return []
        if not self.check_mode:
            for leftover in leftovers:
                leftover.unlink(missing_ok=True)
        self.outcome.actions.append(
            ("check mode: would remove " if self.check_mode else "removed ")
            + ", ".join(str(p) for p in leftovers)
            + " (left by an older version of the switch)"
        )
        return [p.name for p in leftovers]

    def _recovery_item(self, rewrite: Rewrite) -> VerifyItem:
        """What the edge must serve once the file is put right: the weights of that file.

        (Not the recorded ones: an undone first switch has no recorded entry, and a removed file
        serves nothing to verify.)
        """
        weights = parse_weights(rewrite.text or "") or normal_weights({})
        live = [colour for colour in COLOURS if weights[colour] > 0]
        verify = self._recovery_verify(rewrite.service) if live else VerifySettings()
        return VerifyItem(rewrite.service, weights, live, verify)

    def _recovery_verify(self, service: str) -> VerifySettings:
        """The service's own verification when the batch has it, else the top-level one."""
        for request in self.batch.requests:
            if request.service == service and request.verify.url:
                return request.verify
        return replace(self.shared.verify, url=self.shared.verify_url(service))

    def _recovery_record(self, rewrite: Rewrite, state: Mapping[str, Any]) -> dict[str, Any]:
        """The intent record of a file put back to the recorded state (completed if retried)."""
        before = read_text(rewrite.path)
        entry = service_entry(state, rewrite.service) or {}
        return {
            "upstream_file": rewrite.path,
            "before_text": before,
            "after_text": rewrite.text,
            "before_weights": parse_weights(before) if before else None,
            "after_weights": normal_weights(entry.get("weights") or {}),
        }

    # -- step 2: plan

    def _plan(self) -> list[Unit]:
        """Every service's plan from ONE read of the state file."""
        try:
            state = load_state(self.shared.state_file)
        except ReleaseStateError as exc:
            raise SwitchError(str(exc)) from None
        now = self.now()
        units: list[Unit] = []
        for index, request in enumerate(self.batch.requests):
            try:
                units.append(Unit(request, make_plan(request, self.shared, state, now)))
            except SwitchError as exc:
                raise SwitchError(f"services[{index}] ({request.service}): {exc}") from None
        self._state = state
        return units

    # -- step 3: health gate

    def _health_gate(self, units: list[Unit]) -> None:
        """Probe every target of every unit at once; any failure stops before a change."""
        gated = [(unit, self._gate_targets(unit)) for unit in units]
        pairs = [(unit, target) for unit, targets in gated for target in targets]
        began = self.clock()
        with ThreadPoolExecutor(max_workers=max(1, min(MAX_PROBE_THREADS, len(pairs)))) as pool:
            results = list(pool.map(self._gate_one, pairs))
        self.outcome.timings["health_gate_s"] = self._since(began)
        failed: dict[str, tuple[Unit, GateTarget, GateResult]] = {}
        for (unit, target), result in zip(pairs, results, strict=True):
            self.outcome.health.append(
                {
                    "service": unit.service,
                    "colour": target.colour,
                    "backend": target.backend,
                    "expected": target.expectation.describe(),
                    **result.as_dict(),
                }
            )
            if not result.ok:
                failed.setdefault(unit.service, (unit, target, result))
        if failed:
            raise SwitchError(
                f"health gate failed for {', '.join(failed)}, so no upstream was written and the "
                "traffic of every service of this switch stays as it was. "
                + " ".join(self._unhealthy(*item) for item in failed.values())
            )
        self.outcome.actions.append(
            "health gate passed: "
            + ", ".join(
                f"{unit.service} ({self._gate_summary(unit, targets)})" for unit, targets in gated
            )
        )

    def _gate_targets(self, unit: Unit) -> list[GateTarget]:
        plan = unit.plan
        targets: list[GateTarget] = []
        for colour in plan.live_colours():
            for check in unit.request.health_checks:
                expectation = _expectation(check, colour, plan.versions.get(colour))
                if check.url:
                    if check.colour == colour:
                        targets.append(GateTarget(colour, None, check, expectation, check.url))
                    continue
                targets.extend(
                    GateTarget(
                        colour,
                        backend,
                        check,
                        expectation,
                        f"{check.scheme}://{backend}{check.path}",
                    )
                    for backend in plan.backends[colour]
                )
        unchecked = [c for c in plan.live_colours() if not any(t.colour == c for t in targets)]
        if unchecked:
            raise SwitchError(
                f"{unit.service}: no health check applies to {unchecked[0]}, which "
                f"would get weight {plan.after_entry['weights'][unchecked[0]]}; add a path check "
                f"or a url check with colour: {unchecked[0]} to health_checks"
            )
        return targets

    def _gate_one(self, pair: tuple[Unit, GateTarget]) -> GateResult:
        _unit, target = pair
        options = self.shared.http.with_headers(target.check.headers)
        return wait_until_healthy(
            target.url,
            target.expectation,
            options,
            self.shared.gate,
            self.fetcher,
            self.clock,
            self.sleep,
        )

    def _unhealthy(self, unit: Unit, target: GateTarget, result: GateResult) -> str:
        where = (
            f"backend {target.backend} ({target.colour})"
            if target.backend
            else f"{target.colour} check"
        )
        return (
            f"{unit.service}: {where} is not healthy, so nothing was changed and "
            f"traffic stays as it was ({weights_text(unit.plan.before_weights)}). "
            f"Health check: {failure_message(result, target.expectation, self.shared.gate)}. "
            f"Fix or redeploy the {target.colour} slot, then switch again."
        )

    @staticmethod
    def _gate_summary(unit: Unit, targets: list[GateTarget]) -> str:
        return ", ".join(
            f"{colour} {len([t for t in targets if t.colour == colour])} URL(s)"
            for colour in unit.plan.live_colours()
        )

    # -- steps 4-10: intent, write, test, reload, verify, record, intent removed

    def _apply(self, moving: list[Unit], changed: list[Unit]) -> None:
        began = self.clock()
        self._write_intent({unit.service: _intent_record(unit) for unit in moving}, "switch")
        self.failpoint("before-write")
        written: list[Unit] = []
        for unit in moving:
            if not unit.plan.file_changes:
                continue
            try:
                self._write_upstream(unit.request.upstream_file, unit.plan.new_text)
            except SwitchError as exc:
                self.outcome.timings["write_s"] = self._since(began)
                raise SwitchError(f"{exc}; {self._undo(written, reload=False)}") from None
            written.append(unit)
            self.outcome.actions.append(
                f"wrote {unit.request.upstream_file} "
                f"({weights_text(unit.plan.after_entry['weights'])})"
            )
        self.outcome.timings["write_s"] = self._since(began)
        self.failpoint("after-rename")
        output = self._command(self.shared.test_command, "validate_s")
        if output is not None:
            raise SwitchError(
                f"{' '.join(self.shared.test_command)} rejected the new upstreams of "
                f"{_names(moving)} ({output}); {self._undo(written, reload=False)}. Check the "
                "backends (host names must resolve on the edge) and the upstream settings."
            )
        output = self._command(self.shared.reload_command, "reload_s")
        if output is not None:
            raise SwitchError(
                f"{' '.join(self.shared.reload_command)} failed ({output}) after writing the "
                f"upstreams of {_names(moving)}; {self._undo(written, reload=True)}."
            )
        self.failpoint("after-reload")
        try:
            checks = self._verify_all(
                [
                    VerifyItem(
                        unit.service,
                        unit.plan.after_entry["weights"],
                        unit.plan.live_colours(),
                        unit.request.verify,
                    )
                    for unit in moving
                ]
            )
        except Exception as exc:  # whatever failed, the previous files come back
            raise SwitchError(
                f"unexpected error verifying {_names(moving)}: {exc}; "
                f"{self._undo(written, reload=True)}"
            ) from exc
        failed = [
            (service, check) for service, check in checks if check is not None and not check.ok
        ]
        if failed:
            raise SwitchError(
                f"verify through the edge failed for {', '.join(item[0] for item in failed)}: "
                + "; ".join(f"{service}: {check.summary}" for service, check in failed)
                + f". {self._undo(written, reload=True)}"
            )
        self.failpoint("before-record")
        try:
            self._record(changed)
        except SwitchError as exc:
            raise SwitchError(f"{exc}; {self._undo(written, reload=True)}") from None
        try:
            clear_intent(self.shared.intent_file)
        except IntentError as exc:
            raise SwitchError(f"{exc} (the switch itself is done and recorded)") from None
        self.outcome.timings["switch_s"] = round(
            sum(self.outcome.timings.get(k, 0.0) for k in ("write_s", "validate_s", "reload_s")), 4
        )

    def _write_intent(self, records: Mapping[str, Mapping[str, Any]], what: str) -> None:
        intent = {
            "run_id": self.shared.run_id,
            "action": self.shared.action,
            "started_at": self.now(),
            "services": dict(records),
        }
        try:
            write_intent(self.shared.intent_file, intent)
        except IntentError as exc:
            raise SwitchError(f"{exc}; nothing was changed (the {what} did not start)") from None

    def _write_upstream(self, path: str, text: str) -> None:
        directory = Path(path).parent
        if not directory.is_dir():
            raise SwitchError(
                f"{directory} does not exist; converge the edge with the venta.deploy.nginx_edge "
                "role first (or set upstream_dir)"
            )
        try:
            write_atomic(path, text)
        except OSError as exc:
            raise SwitchError(f"cannot write {path}: {exc}") from None

    def _rewrite(self, rewrites: Sequence[Rewrite]) -> list[str]:
        """Put each file into its text (None: remove it); the failures."""
        failures: list[str] = []
        for rewrite in rewrites:
            try:
                if rewrite.text is None:
                    Path(rewrite.path).unlink(missing_ok=True)
                elif read_text(rewrite.path) != rewrite.text:
                    write_atomic(rewrite.path, rewrite.text)
                else:
                    continue
            except (OSError, SwitchError) as exc:
                failures.append(f"{rewrite.path}: {exc}")
                continue
            self.outcome.actions.append(f"put {rewrite.path} back ({rewrite.service})")
        return failures

    def _undo(self, written: list[Unit], reload: bool) -> str:
        """Put the previous upstreams back (reloading nginx if it saw the new ones); what happened.

        The intent is removed once the previous files are back and pass nginx -t (and nginx was
        reloaded, when it had to be); otherwise it stays for the next run to recover.
        """
        failures = self._rewrite(
            [
                Rewrite(u.service, u.request.upstream_file, u.plan.old_text)
                for u in reversed(written)
            ]
        )
        if failures:
            return (
                "putting the previous upstreams back FAILED: "
                + "; ".join(failures)
                + f"; the intent {self.shared.intent_file} is kept, the next run recovers"
            )
        rc, out, err = self.run_command(self.shared.test_command)
        if rc != 0:
            return (
                f"the previous upstreams are back but nginx -t fails on them: "
                f"{(err or out).strip()}; nginx was not reloaded, the intent is kept"
            )
        if reload:
            rc, out, err = self.run_command(self.shared.reload_command)
            if rc != 0:
                return (
                    f"the previous upstreams are back but reloading nginx again failed: "
                    f"{(err or out).strip()}; the intent is kept, the next run recovers"
                )
            self.outcome.actions.append("reloaded nginx with the previous upstreams")
        try:
            clear_intent(self.shared.intent_file)
        except IntentError as exc:
            return f"the previous upstreams are back but {exc}"
        if not reload:
            return "every previous upstream is back (nginx was not reloaded)"
        return (
            "every previous upstream is back and nginx reloaded with them (the traffic of every "
            "service is as it was)"
        )

    def _command(self, argv: Sequence[str], timing: str) -> str | None:
        """Run a command and time it: None when it succeeded, else its output."""
        began = self.clock()
        rc, out, err = self.run_command(argv)
        self.outcome.timings[timing] = self._since(began)
        if rc != 0:
            return (err or out).strip() or f"exit code {rc}"
        self.outcome.actions.append(f"{' '.join(argv)}: ok")
        return None

    # -- verification

    def _verify_all(self, items: Sequence[VerifyItem]) -> list[tuple[str, VerifyCheck | None]]:
        """Verify every item in parallel; a None check where the service has no verify URL."""
        began = self.clock()
        if len(items) <= 1:
            checks = [self._verify_check(item) for item in items]
        else:
            with ThreadPoolExecutor(max_workers=min(MAX_PROBE_THREADS, len(items))) as pool:
                checks = list(pool.map(self._verify_check, items))
        if any(check is not None for check in checks):
            self.outcome.timings["verify_s"] = self._since(began)
        results: list[tuple[str, VerifyCheck | None]] = []
        for item, check in zip(items, checks, strict=True):
            if check is None:
                self.outcome.actions.append(f"{item.service}: no verify URL, not verified")
            else:
                self.outcome.verify[item.service] = check.details
                if check.ok:
                    self.outcome.actions.append(f"{item.service}: {check.summary}")
            results.append((item.service, check))
        return results

    def _verify_check(self, item: VerifyItem) -> VerifyCheck | None:
        """Ask the edge until `successes` good answers in a row AND an answer of every live colour.

        Only live colours may answer (a request answered by another colour resets the count).
        """
        verify, live = item.verify, item.live
        if not verify.url:
            return None
        options: HttpOptions = self.shared.http.with_headers(verify.headers)
        expectation = Expectation(status_codes=verify.status_codes)
        budget = verify_budget(verify.requests, live, item.weights)
        seen: dict[str, int] = {}
        consecutive = 0
        answers = 0
        last: Answer | None = None
        reason = None
        for _attempt in range(budget):
            last = self.fetcher(verify.url, options, options.request_timeout)
            answers += 1
            colour = last.header(verify.colour_header) or ""
            seen[colour or "-"] = seen.get(colour or "-", 0) + 1
            reason = mismatch(last, expectation)
            if reason is None and colour not in live:
                reason = f"{verify.colour_header} is {colour!r}, not {' or '.join(live)}"
            consecutive = consecutive + 1 if reason is None else 0
            enough = consecutive >= verify.successes
            if enough and all(seen.get(c) for c in live):
                break
            if not enough:
                self.sleep(verify.interval)
        details = {
            "url": verify.url,
            "requests": answers,
            "consecutive_successes": consecutive,
            "colours_seen": seen,
            "expected_colours": live,
        }
        missing = [c for c in live if not seen.get(c)]
        if consecutive < verify.successes or missing:
            last_text = last.describe() if last is not None else "no answer"
            why = (
                f"no answer from {' or '.join(missing)} in {answers} requests"
                if consecutive >= verify.successes
                else f"last: {last_text}; {reason}"
            )
            return VerifyCheck(
                False,
                details,
                f"{verify.url} did not answer with status "
                f"{'/'.join(map(str, verify.status_codes))} and {verify.colour_header} "
                f"{' or '.join(live)} {verify.successes} time(s) in a row with an answer from "
                f"each of them within {answers} requests (seen {seen}; {why})",
            )
        return VerifyCheck(
            True,
            details,
            f"verified through {verify.url}: {consecutive} good answers in a row, "
            f"colours seen {seen}",
        )

    # -- step 9: record

    def _record(self, units: list[Unit]) -> None:
        """Every unit's entry in ONE atomic write of the state file (read once, at the plan)."""
        began = self.clock()
        state = self._state
        for unit in units:
            state = with_entry(state, unit.service, unit.plan.after_entry)
        try:
            write_atomic(self.shared.state_file, dump_state(state))
        except OSError as exc:
            raise SwitchError(
                f"{_names(units)}: cannot record {self.shared.state_file}: {exc}"
            ) from exc
        self._state = state
        self.outcome.timings["record_s"] = self._since(began)
        self.outcome.actions.append(
            f"recorded the release state of {_names(units)} in {self.shared.state_file}"
        )

    # -- results

    def _service_result(self, unit: Unit) -> dict[str, Any]:
        plan = unit.plan
        return {
            "service": unit.service,
            "upstream_file": unit.request.upstream_file,
            "state_file": self.shared.state_file,
            "before": {
                "weights": plan.before_weights,
                "active": (plan.before_entry or {}).get("active"),
            },
            "after": {"weights": plan.after_entry["weights"], "active": plan.after_entry["active"]},
            "state": plan.after_entry,
        }

    def _diff(self, unit: Unit) -> list[dict[str, str]]:
        """Before and after of the upstream file and of the state entry, where they change."""
        plan = unit.plan
        entries: list[dict[str, str]] = []
        if plan.file_changes:
            entries.append(
                {
                    "before_header": unit.request.upstream_file,
                    "after_header": unit.request.upstream_file,
                    "before": plan.old_text or "",
                    "after": plan.new_text,
                }
            )
        if plan.state_changes:
            header = f"{self.shared.state_file} services.{unit.service}"
            entries.append(
                {
                    "before_header": header,
                    "after_header": header,
                    "before": _entry_text(plan.before_entry),
                    "after": _entry_text(plan.after_entry),
                }
            )
        return entries

    def _audit(self) -> dict[str, Any]:
        return {
            "actions": list(self.outcome.actions),
            "timings": dict(self.outcome.timings),
            "health": list(self.outcome.health),
            "verify": dict(self.outcome.verify),
            "recovered": dict(self.outcome.recovered),
        }

    def _since(self, began: float) -> float:
        return round(self.clock() - began, 4)


def verify_budget(requests: int, live: Sequence[str], weights: Mapping[str, int]) -> int:
    """Requests the verification may send: `requests`, or more when a live colour has little
    weight (about SAMPLE_FACTOR / weight, so a 10 % canary gets 50)."""
    smallest = min(
        (int(weights.get(c, 0)) for c in live if int(weights.get(c, 0)) > 0), default=100
    )
    return max(int(requests), math.ceil(SAMPLE_FACTOR / smallest))


def _expectation(check: HealthCheck, colour: str, version: str | None) -> Expectation:
    headers = {}
    if check.colour_header:
        headers[check.colour_header] = colour
    if check.version_header and version:
        headers[check.version_header] = version
    base = check.expectation
    return Expectation(base.status_codes, base.body_contains, base.json_match, headers)


def run_switch(
    params: Mapping[str, Any],
    run_command: RunCommand,
    check_mode: bool = False,
    **fakes: Any,
) -> dict[str, Any]:
    """Validate the module parameters and run the switch of `services`.

    `fakes` (fetcher, clock, sleep, now, failpoint) replace the network, time and crashes in tests.
    """
    return SwitchTransaction(parse_batch(params), run_command, check_mode, **fakes).run()


def _intent_record(unit: Unit) -> dict[str, Any]:
    return {
        "upstream_file": unit.request.upstream_file,
        "before_text": unit.plan.old_text,
        "after_text": unit.plan.new_text,
        "before_weights": unit.plan.before_weights,
        "after_weights": unit.plan.after_entry["weights"],
    }


def _names(units: Sequence[Unit]) -> str:
    return ", ".join(unit.service for unit in units)


def _entry_text(entry: Mapping[str, Any] | None) -> str:
    return "" if entry is None else json.dumps(entry, indent=2) + "\n"
