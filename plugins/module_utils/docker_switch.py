# Copyright: venta.deploy developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The release switch of the Docker platform: one service's nginx upstream on an edge host.

Order of a switch, and what a failure at each step leaves behind:

1. read the recorded state and the current upstream file; nothing differs -> unchanged;
2. health-gate every backend of each colour that gets weight > 0 -> nothing touched yet;
3. write the new upstream to a temp file beside the old one, keep the old as a hard-linked
   backup, rename the new over it;
4. `nginx -t` -> on failure the backup is renamed back (nginx was never reloaded);
5. graceful reload -> on failure the backup is put back and nginx reloaded again;
6. verify through the edge -> on failure the backup is put back and nginx reloaded again;
7. record the state (atomic write) -> on failure the backup is put back and nginx reloaded.

Check mode runs steps 1 and 2 (read-only probes) and reports what would change.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ansible_collections.venta.deploy.plugins.module_utils.health_gate import (
    Answer,
    Expectation,
    Fetcher,
    GateResult,
    GateSettings,
    HealthGateError,
    HttpOptions,
    failure_message,
    fetch,
    mismatch,
    split_url,
    wait_until_healthy,
)
from ansible_collections.venta.deploy.plugins.module_utils.nginx_upstream import (
    BACKEND_PATTERN,
    COLOURS,
    SERVICE_PATTERN,
    UpstreamError,
    UpstreamSettings,
    parse_weights,
    render_upstream,
)
from ansible_collections.venta.deploy.plugins.module_utils.release_state import (
    ReleaseStateError,
    dump_state,
    entry_matches,
    exclusive_lock,
    fsync_directory,
    load_state,
    merged_versions,
    next_entry,
    normal_backends,
    normal_weights,
    service_entry,
    utc_now,
    with_entry,
    write_atomic,
)

RunCommand = Callable[[Sequence[str]], tuple[int, str, str]]


class SwitchError(Exception):
    """A switch that cannot be done or failed; `details` goes into the module's result."""

    def __init__(self, message: str, details: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.details = dict(details or {})


# ---- the request ------------------------------------------------------------------------------


@dataclass(frozen=True)
class HealthCheck:
    """One check: a path on every backend of a live colour, or one URL for one colour."""

    expectation: Expectation
    path: str | None = None
    url: str | None = None
    colour: str | None = None
    scheme: str = "http"
    headers: Mapping[str, str] = field(default_factory=dict)
    colour_header: str | None = None
    version_header: str | None = None


@dataclass(frozen=True)
class GateTarget:
    """One URL the health gate probes, for one colour (and one backend of it, for path checks)."""

    colour: str
    backend: str | None
    check: HealthCheck
    expectation: Expectation
    url: str


@dataclass(frozen=True)
class VerifySettings:
    """How the switch proves, through the edge, that traffic goes where it should."""

    url: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    status_codes: tuple[int, ...] = (200,)
    colour_header: str = "X-Venta-Colour"
    requests: int = 20
    successes: int = 3
    interval: float = 0.2


@dataclass(frozen=True)
class SwitchRequest:
    service: str
    weights: dict[str, int]
    backends: dict[str, list[str] | None]
    versions: dict[str, str | None]
    health_checks: tuple[HealthCheck, ...]
    gate: GateSettings
    http: HttpOptions
    verify: VerifySettings
    upstream: UpstreamSettings
    upstream_dir: str
    state_file: str
    test_command: tuple[str, ...]
    reload_command: tuple[str, ...]
    lock_timeout: float = 60.0

    @property
    def upstream_file(self) -> str:
        return str(Path(self.upstream_dir) / f"{self.service}.conf")

    @property
    def lock_file(self) -> str:
        return f"{self.state_file}.lock"


def _weights(raw: Mapping[str, Any] | None) -> dict[str, int]:
    raw = raw or {}
    unknown = sorted(set(raw) - set(COLOURS))
    if unknown:
        raise SwitchError(f"weights: unknown colour(s) {unknown}; use blue and green")
    weights: dict[str, int] = {}
    for colour in COLOURS:
        value = raw.get(colour)
        try:
            weights[colour] = int(value or 0)
        except (TypeError, ValueError):
            raise SwitchError(
                f"weights.{colour} must be a whole number 0..100, got {value!r}"
            ) from None
        if not 0 <= weights[colour] <= 100:
            raise SwitchError(f"weights.{colour} must be between 0 and 100, got {weights[colour]}")
    if sum(weights.values()) != 100:
        raise SwitchError(
            f"weights must add up to 100 (100/0 is blue-green, 90/10 a canary), got "
            f"blue {weights['blue']} + green {weights['green']} = {sum(weights.values())}"
        )
    return weights


def _backends(raw: Mapping[str, Any] | None) -> dict[str, list[str] | None]:
    """Given backends per colour; None for a colour not given (the recorded ones are kept)."""
    backends: dict[str, list[str] | None] = {}
    for colour in COLOURS:
        items = (raw or {}).get(colour)
        if items is None:
            backends[colour] = None
            continue
        items = [str(item) for item in items]
        bad = [item for item in items if not BACKEND_PATTERN.match(item)]
        if bad:
            raise SwitchError(f"backends.{colour}: {bad} are not host:port entries")
        if len(set(items)) != len(items):
            raise SwitchError(f"backends.{colour} lists a backend twice: {items}")
        backends[colour] = items
    both = set(backends["blue"] or []) & set(backends["green"] or [])
    if both:
        raise SwitchError(f"backends: {sorted(both)} are in both colours; each slot needs its own")
    return backends


def _health_check(raw: Mapping[str, Any], index: int) -> HealthCheck:
    where = f"health_checks[{index}]"
    url, path = raw.get("url"), raw.get("path")
    if bool(url) == bool(path):
        raise SwitchError(f"{where}: give either url (with colour) or path, not both or neither")
    if url:
        try:
            split_url(url)
        except HealthGateError as exc:
            raise SwitchError(f"{where}.url: {exc}") from None
        if raw.get("colour") not in COLOURS:
            raise SwitchError(f"{where}: a url check needs colour (blue or green) it belongs to")
    if path and not str(path).startswith("/"):
        raise SwitchError(f"{where}.path must start with /, got {path!r}")
    codes = tuple(int(code) for code in raw.get("status_code") or [200])
    return HealthCheck(
        expectation=Expectation(
            status_codes=codes,
            body_contains=raw.get("body_contains") or None,
            json_match=dict(raw.get("json_match") or {}),
        ),
        path=path,
        url=url,
        colour=raw.get("colour"),
        scheme=raw.get("scheme") or "http",
        headers={str(k): str(v) for k, v in (raw.get("headers") or {}).items()},
        colour_header=raw.get("colour_header") or None,
        version_header=raw.get("version_header") or None,
    )


def build_request(params: Mapping[str, Any]) -> SwitchRequest:
    """Validate the module parameters; every error names the option and the fix."""
    service = params["service"]
    if not SERVICE_PATTERN.match(service or ""):
        raise SwitchError(
            f"service {service!r} is not a service name (lowercase letters, digits, dashes)"
        )
    raw_checks = params.get("health_checks")
    if raw_checks is None:
        raw_checks = [{"path": "/health"}]
    if not raw_checks:
        raise SwitchError(
            "health_checks is empty: the switch never sends traffic to unchecked backends; "
            "leave it unset for a /health check of every backend"
        )
    verify_url = params.get("verify_url")
    if verify_url:
        try:
            split_url(verify_url)
        except HealthGateError as exc:
            raise SwitchError(f"verify_url: {exc}") from None
    for name in ("verify_requests", "verify_successes"):
        if int(params.get(name) or 0) < 1:
            raise SwitchError(f"{name} must be at least 1")
    if int(params["verify_successes"]) > int(params["verify_requests"]):
        raise SwitchError("verify_successes cannot exceed verify_requests")
    if not params.get("test_command") or not params.get("reload_command"):
        raise SwitchError("test_command and reload_command must not be empty")
    try:
        gate = GateSettings(
            successes=int(params["health_successes"]),
            interval=float(params["health_interval"]),
            timeout=float(params["health_timeout"]),
        )
        http = HttpOptions.from_params(params)
        upstream = UpstreamSettings(
            max_fails=int(params["max_fails"]),
            fail_timeout=str(params["fail_timeout"]),
            keepalive=int(params["keepalive"]),
            managed=str(params.get("ansible_managed") or "Ansible managed"),
        )
    except (HealthGateError, UpstreamError) as exc:
        raise SwitchError(str(exc)) from None
    return SwitchRequest(
        service=service,
        weights=_weights(params.get("weights")),
        backends=_backends(params.get("backends")),
        versions=dict(params.get("versions") or {}),
        health_checks=tuple(_health_check(raw, i) for i, raw in enumerate(raw_checks)),
        gate=gate,
        http=http,
        verify=VerifySettings(
            url=verify_url or None,
            headers={str(k): str(v) for k, v in (params.get("verify_headers") or {}).items()},
            status_codes=tuple(int(c) for c in params.get("verify_status_code") or [200]),
            colour_header=params.get("verify_colour_header") or "X-Venta-Colour",
            requests=int(params["verify_requests"]),
            successes=int(params["verify_successes"]),
            interval=float(params["verify_interval"]),
        ),
        upstream=upstream,
        upstream_dir=params["upstream_dir"],
        state_file=params["state_file"],
        test_command=tuple(params["test_command"]),
        reload_command=tuple(params["reload_command"]),
        lock_timeout=float(params.get("lock_timeout") or 60.0),
    )


# ---- the plan ---------------------------------------------------------------------------------


@dataclass
class Plan:
    """What the switch will do, computed from read-only inputs."""

    backends: dict[str, list[str]]
    versions: dict[str, str]
    before_weights: dict[str, int] | None
    before_entry: dict[str, Any] | None
    after_entry: dict[str, Any]
    old_text: str | None
    new_text: str
    state: dict[str, Any]

    @property
    def file_changes(self) -> bool:
        return self.old_text != self.new_text

    @property
    def state_changes(self) -> bool:
        return not entry_matches(
            self.before_entry, self.after_entry["weights"], self.backends, self.versions
        )

    @property
    def changed(self) -> bool:
        return self.file_changes or self.state_changes

    def live_colours(self) -> list[str]:
        return [colour for colour in COLOURS if self.after_entry["weights"][colour] > 0]


def read_text(path: str) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SwitchError(f"cannot read {path}: {exc}") from None


def make_plan(request: SwitchRequest, now: str) -> Plan:
    try:
        state = load_state(request.state_file)
    except ReleaseStateError as exc:
        raise SwitchError(f"{request.service}: {exc}") from None
    current = service_entry(state, request.service)
    recorded = normal_backends((current or {}).get("backends") or {})
    given = request.backends
    if all(given[colour] is None for colour in COLOURS) and not any(recorded.values()):
        raise SwitchError(
            f"{request.service}: no backends given and none recorded in {request.state_file}; "
            "pass backends (host:port per colour, as in nginx_edge_services)"
        )
    backends = {
        colour: list(given[colour]) if given[colour] is not None else recorded[colour]
        for colour in COLOURS
    }
    empty = [c for c in COLOURS if request.weights[c] > 0 and not backends[c]]
    if empty:
        raise SwitchError(
            f"{request.service}: weights give {empty[0]} {request.weights[empty[0]]} but "
            f"backends.{empty[0]} is empty; deploy that slot first or give it weight 0"
        )
    old_text = read_text(request.upstream_file)
    new_text = render_upstream(
        request.service, backends, request.weights, request.state_file, request.upstream
    )
    before_weights: dict[str, int] | None = None
    if current is not None and isinstance(current.get("weights"), dict):
        before_weights = normal_weights(current["weights"])
    elif old_text is not None:
        before_weights = parse_weights(old_text)
    versions = merged_versions(current, request.versions)
    after = next_entry(current, before_weights, request.weights, backends, versions, now)
    return Plan(backends, versions, before_weights, current, after, old_text, new_text, state)


# ---- the switch -------------------------------------------------------------------------------


@dataclass
class Outcome:
    """Audit trail of one switch (returned by the module, also on failure)."""

    actions: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    health: list[dict[str, Any]] = field(default_factory=list)
    verify: dict[str, Any] = field(default_factory=dict)


class Switcher:
    """Runs one switch. All side effects go through run_command, fetcher and the file system."""

    def __init__(
        self,
        request: SwitchRequest,
        run_command: RunCommand,
        check_mode: bool = False,
        fetcher: Fetcher = fetch,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        now: Callable[[], str] = utc_now,
    ) -> None:
        self.request = request
        self.run_command = run_command
        self.check_mode = check_mode
        self.fetcher = fetcher
        self.clock = clock
        self.sleep = sleep
        self.now = now
        self.outcome = Outcome()

    # -- public

    def run(self) -> dict[str, Any]:
        started = self.clock()
        try:
            if self.check_mode:
                return self._switch(started)
            try:
                with exclusive_lock(self.request.lock_file, self.request.lock_timeout):
                    return self._switch(started)
            except ReleaseStateError as exc:
                raise SwitchError(f"{self.request.service}: {exc}") from None
        except SwitchError as exc:
            self.outcome.timings["total_s"] = self._since(started)
            exc.details.update(self._audit())
            raise

    # -- steps

    def _switch(self, started: float) -> dict[str, Any]:
        request = self.request
        plan = make_plan(request, self.now())
        result = self._result(plan)
        if not plan.changed:
            self.outcome.timings["total_s"] = self._since(started)
            return {**result, "changed": False, **self._audit()}

        self._health_gate(plan)
        if self.check_mode:
            self.outcome.actions.append("check mode: nothing written, nginx not reloaded")
        elif plan.file_changes:
            self._apply(plan)
        else:
            self._record(plan)
        self.outcome.timings["total_s"] = self._since(started)
        return {**result, "changed": True, **self._audit()}

    def _health_gate(self, plan: Plan) -> None:
        targets = self._gate_targets(plan)
        began = self.clock()
        with ThreadPoolExecutor(max_workers=max(1, min(16, len(targets)))) as pool:
            results = list(pool.map(self._gate_one, targets))
        self.outcome.timings["health_gate_s"] = self._since(began)
        failed: tuple[GateTarget, GateResult] | None = None
        for target, result in zip(targets, results, strict=True):
            self.outcome.health.append(
                {
                    "colour": target.colour,
                    "backend": target.backend,
                    "expected": target.expectation.describe(),
                    **result.as_dict(),
                }
            )
            if not result.ok and failed is None:
                failed = (target, result)
        if failed is not None:
            target, result = failed
            where = (
                f"backend {target.backend} ({target.colour})"
                if target.backend
                else f"{target.colour} check"
            )
            raise SwitchError(
                f"{self.request.service}: {where} is not healthy, so nothing was changed and "
                f"traffic stays as it was ({self._weights_text(plan.before_weights)}). "
                f"Health check: {failure_message(result, target.expectation, self.request.gate)}. "
                f"Fix or redeploy the {target.colour} slot, then switch again."
            )
        checked = ", ".join(
            f"{colour} {len([t for t in targets if t.colour == colour])} URL(s)"
            for colour in plan.live_colours()
        )
        self.outcome.actions.append(f"health gate passed ({checked})")

    def _gate_targets(self, plan: Plan) -> list[GateTarget]:
        targets: list[GateTarget] = []
        for colour in plan.live_colours():
            for check in self.request.health_checks:
                expectation = self._expectation(check, colour, plan.versions.get(colour))
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
                f"{self.request.service}: no health check applies to {unchecked[0]}, which "
                f"would get weight {plan.after_entry['weights'][unchecked[0]]}; add a path check "
                f"or a url check with colour: {unchecked[0]} to health_checks"
            )
        return targets

    @staticmethod
    def _expectation(check: HealthCheck, colour: str, version: str | None) -> Expectation:
        headers = {}
        if check.colour_header:
            headers[check.colour_header] = colour
        if check.version_header and version:
            headers[check.version_header] = version
        base = check.expectation
        return Expectation(base.status_codes, base.body_contains, base.json_match, headers)

    def _gate_one(self, target: GateTarget) -> GateResult:
        options = self.request.http.with_headers(target.check.headers)
        return wait_until_healthy(
            target.url,
            target.expectation,
            options,
            self.request.gate,
            self.fetcher,
            self.clock,
            self.sleep,
        )

    def _apply(self, plan: Plan) -> None:
        path = self.request.upstream_file
        began = self.clock()
        backup = self._write_upstream(plan)
        self.outcome.timings["write_s"] = self._since(began)
        self.outcome.actions.append(
            f"wrote {path} ({self._weights_text(plan.after_entry['weights'])})"
        )
        try:
            self._validate(backup)
            self._reload(backup)
            self._verify(plan, backup)
        except SwitchError:
            raise  # each step put the previous file back before raising
        except Exception as exc:  # whatever else failed, the previous file comes back
            restored = self._restore(backup, reload=True)
            raise SwitchError(
                f"{self.request.service}: unexpected error after writing {path}: {exc}; "
                f"the previous upstream is back ({restored})"
            ) from exc
        try:
            self._record(plan)
        except SwitchError as exc:
            restored = self._restore(backup, reload=True)
            raise SwitchError(f"{exc}; the previous upstream is back ({restored})") from None
        self._discard(backup)
        self.outcome.timings["switch_s"] = round(
            sum(self.outcome.timings.get(k, 0.0) for k in ("write_s", "validate_s", "reload_s")), 4
        )

    def _write_upstream(self, plan: Plan) -> Path | None:
        """Temp file beside the old one, hard-linked backup of the old, atomic rename."""
        path = Path(self.request.upstream_file)
        directory = path.parent
        if not directory.is_dir():
            raise SwitchError(
                f"{self.request.service}: {directory} does not exist; converge the edge with the "
                "venta.deploy.nginx_edge role first (or set upstream_dir)"
            )
        handle, name = tempfile.mkstemp(
            dir=directory, prefix=f".{self.request.service}.", suffix=".switch-new"
        )
        temp = Path(name)
        backup = path.with_name(f"{path.name}.switch~") if plan.old_text is not None else None
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                out.write(plan.new_text)
                out.flush()
                os.fsync(out.fileno())
            temp.chmod(0o644)
            if backup is not None:
                backup.unlink(missing_ok=True)
                os.link(path, backup)
            temp.replace(path)
        except OSError as exc:
            temp.unlink(missing_ok=True)
            if backup is not None:
                backup.unlink(missing_ok=True)
            raise SwitchError(
                f"{self.request.service}: cannot write {path}: {exc}; nothing changed"
            ) from None
        fsync_directory(str(directory))
        return backup

    def _validate(self, backup: Path | None) -> None:
        began = self.clock()
        rc, out, err = self.run_command(self.request.test_command)
        self.outcome.timings["validate_s"] = self._since(began)
        if rc != 0:
            restored = self._restore(backup, reload=False)
            raise SwitchError(
                f"{self.request.service}: {' '.join(self.request.test_command)} rejected the new "
                f"upstream ({(err or out).strip()}); the previous file is back ({restored}) and "
                "traffic is as it was. Check the backends (host names must resolve on the edge) "
                "and the upstream settings."
            )
        self.outcome.actions.append(f"{' '.join(self.request.test_command)}: ok")

    def _reload(self, backup: Path | None) -> None:
        began = self.clock()
        rc, out, err = self.run_command(self.request.reload_command)
        self.outcome.timings["reload_s"] = self._since(began)
        if rc != 0:
            restored = self._restore(backup, reload=True)
            raise SwitchError(
                f"{self.request.service}: {' '.join(self.request.reload_command)} failed "
                f"({(err or out).strip()}); the previous upstream is back ({restored})."
            )
        self.outcome.actions.append(f"{' '.join(self.request.reload_command)}: ok")

    def _verify(self, plan: Plan, backup: Path | None) -> None:
        verify = self.request.verify
        if not verify.url:
            self.outcome.actions.append("no verify_url: traffic not verified through the edge")
            return
        live = plan.live_colours()
        began = self.clock()
        options = self.request.http.with_headers(verify.headers)
        expectation = Expectation(status_codes=verify.status_codes)
        seen: dict[str, int] = {}
        consecutive = 0
        answers = 0
        last: Answer | None = None
        reason = None
        for _attempt in range(verify.requests):
            last = self.fetcher(verify.url, options, options.request_timeout)
            answers += 1
            colour = last.header(verify.colour_header) or ""
            seen[colour or "-"] = seen.get(colour or "-", 0) + 1
            reason = mismatch(last, expectation)
            if reason is None and colour not in live:
                reason = f"{verify.colour_header} is {colour!r}, not {' or '.join(live)}"
            consecutive = consecutive + 1 if reason is None else 0
            if consecutive >= verify.successes:
                break
            self.sleep(verify.interval)
        self.outcome.timings["verify_s"] = self._since(began)
        self.outcome.verify = {
            "url": verify.url,
            "requests": answers,
            "consecutive_successes": consecutive,
            "colours_seen": seen,
            "expected_colours": live,
        }
        if consecutive < verify.successes:
            restored = self._restore(backup, reload=True)
            last_text = last.describe() if last is not None else "no answer"
            raise SwitchError(
                f"{self.request.service}: verify through the edge failed: {verify.url} did not "
                f"answer with status {'/'.join(map(str, verify.status_codes))} and "
                f"{verify.colour_header} {' or '.join(live)} {verify.successes} time(s) in a row "
                f"within {verify.requests} requests (seen {seen}; last: {last_text}; {reason}). "
                f"The previous upstream is back ({restored}); traffic is as it was."
            )
        self.outcome.actions.append(
            f"verified through {verify.url}: {consecutive} good answers in a row, "
            f"colours seen {seen}"
        )

    def _record(self, plan: Plan) -> None:
        began = self.clock()
        state = with_entry(plan.state, self.request.service, plan.after_entry)
        try:
            write_atomic(self.request.state_file, dump_state(state))
        except OSError as exc:
            raise SwitchError(
                f"{self.request.service}: cannot record {self.request.state_file}: {exc}"
            ) from exc
        self.outcome.timings["record_s"] = self._since(began)
        self.outcome.actions.append(f"recorded the release state in {self.request.state_file}")

    def _restore(self, backup: Path | None, reload: bool) -> str:
        """Put the previous upstream back (reloading nginx if it already saw the new one)."""
        path = Path(self.request.upstream_file)
        try:
            if backup is not None:
                backup.replace(path)
            else:
                path.unlink()
            fsync_directory(self.request.upstream_dir)
        except OSError as exc:
            self.outcome.actions.append(f"restore of {path} FAILED: {exc}")
            return f"restoring {path} FAILED: {exc}; fix it by hand and run nginx -t"
        self.outcome.actions.append(f"restored the previous {path}")
        rc, out, err = self.run_command(self.request.test_command)
        if rc != 0:
            return f"but nginx -t fails on it: {(err or out).strip()}; nginx was not reloaded"
        if not reload:
            return "it passes nginx -t; nginx was not reloaded"
        rc, out, err = self.run_command(self.request.reload_command)
        if rc != 0:
            return f"but reloading nginx again failed: {(err or out).strip()}"
        self.outcome.actions.append("reloaded nginx with the previous upstream")
        return "nginx reloaded with it"

    @staticmethod
    def _discard(backup: Path | None) -> None:
        if backup is not None:
            backup.unlink(missing_ok=True)

    # -- results

    def _result(self, plan: Plan) -> dict[str, Any]:
        state_file = self.request.state_file
        return {
            "service": self.request.service,
            "upstream_file": self.request.upstream_file,
            "state_file": state_file,
            "before": {
                "weights": plan.before_weights,
                "active": (plan.before_entry or {}).get("active"),
            },
            "after": {"weights": plan.after_entry["weights"], "active": plan.after_entry["active"]},
            "state": plan.after_entry,
            "diff": [
                {
                    "before_header": self.request.upstream_file,
                    "after_header": self.request.upstream_file,
                    "before": plan.old_text or "",
                    "after": plan.new_text,
                },
                {
                    "before_header": f"{state_file} services.{self.request.service}",
                    "after_header": f"{state_file} services.{self.request.service}",
                    "before": _entry_text(plan.before_entry),
                    "after": _entry_text(plan.after_entry),
                },
            ],
        }

    def _audit(self) -> dict[str, Any]:
        return {
            "actions": list(self.outcome.actions),
            "timings": dict(self.outcome.timings),
            "health": list(self.outcome.health),
            "verify": dict(self.outcome.verify),
        }

    def _since(self, began: float) -> float:
        return round(self.clock() - began, 4)

    @staticmethod
    def _weights_text(weights: Mapping[str, int] | None) -> str:
        if weights is None:
            return "no weights known before"
        return " / ".join(f"{colour} {weights.get(colour, 0)}" for colour in COLOURS)


def _entry_text(entry: Mapping[str, Any] | None) -> str:
    return "" if entry is None else json.dumps(entry, indent=2) + "\n"
