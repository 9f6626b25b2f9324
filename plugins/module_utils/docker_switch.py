# Copyright: venta.deploy developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The release switch of the Docker platform: nginx upstreams of services on an edge host.

Order of a switch of one service (`Switcher`), and what a failure at each step leaves behind:

1. read the recorded state and the current upstream file; nothing differs -> unchanged;
2. health-gate every backend of each colour that gets weight > 0 -> nothing touched yet;
3. write the new upstream to a temp file beside the old one, keep the old as a hard-linked
   backup, rename the new over it;
4. `nginx -t` -> on failure the backup is renamed back (nginx was never reloaded);
5. graceful reload -> on failure the backup is put back and nginx reloaded again;
6. verify through the edge -> on failure the backup is put back and nginx reloaded again;
7. record the state (atomic write) -> on failure the backup is put back and nginx reloaded.

A batch (`BatchSwitcher`, the module's `services`) runs the same steps for many services,
all or nothing, under the same lock: one read of the state, one health gate over every target
of every changed service, every upstream written, ONE `nginx -t`, ONE reload, every service
verified in parallel, ONE atomic write of the state. A failure at any step puts every upstream
written so far back (and reloads once when nginx had already seen them).

Check mode runs steps 1 and 2 (read-only probes) and reports what would change.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
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

# Most threads probing at once (health gate targets, verifications of a batch).
MAX_PROBE_THREADS = 32
# The options an item of `services` takes; the others are the batch's, shared by every item.
ITEM_OPTIONS: tuple[str, ...] = (
    "service",
    "weights",
    "versions",
    "backends",
    "health_checks",
    "verify_url",
    "verify_headers",
)
# Top-level options an item inherits when it does not set them.
ITEM_DEFAULTS: tuple[str, ...] = ("health_checks", "verify_url", "verify_headers")


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
class SharedSettings:
    """The options every service of a switch shares (the batch's top-level options)."""

    gate: GateSettings
    http: HttpOptions
    verify: VerifySettings  # without url and headers, which each service sets
    upstream: UpstreamSettings
    upstream_dir: str
    state_file: str
    test_command: tuple[str, ...]
    reload_command: tuple[str, ...]
    lock_timeout: float = 60.0


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


@dataclass(frozen=True)
class BatchRequest:
    """Switches of several services done together: one lock, one nginx -t, one reload."""

    requests: tuple[SwitchRequest, ...]
    shared: SharedSettings

    @property
    def state_file(self) -> str:
        return self.shared.state_file

    @property
    def test_command(self) -> tuple[str, ...]:
        return self.shared.test_command

    @property
    def reload_command(self) -> tuple[str, ...]:
        return self.shared.reload_command

    @property
    def lock_timeout(self) -> float:
        return self.shared.lock_timeout

    @property
    def lock_file(self) -> str:
        return f"{self.shared.state_file}.lock"


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


def _health_checks(raw_checks: Sequence[Mapping[str, Any]] | None) -> tuple[HealthCheck, ...]:
    if raw_checks is None:
        raw_checks = [{"path": "/health"}]
    if not raw_checks:
        raise SwitchError(
            "health_checks is empty: the switch never sends traffic to unchecked backends; "
            "leave it unset for a /health check of every backend"
        )
    return tuple(_health_check(raw, i) for i, raw in enumerate(raw_checks))


def _verify_url(value: str | None) -> str | None:
    if value:
        try:
            split_url(value)
        except HealthGateError as exc:
            raise SwitchError(f"verify_url: {exc}") from None
    return value or None


def _headers(raw: Mapping[str, Any] | None) -> dict[str, str]:
    return {str(k): str(v) for k, v in (raw or {}).items()}


def _shared_settings(params: Mapping[str, Any]) -> SharedSettings:
    """Validate the options every service of a switch shares."""
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
    return SharedSettings(
        gate=gate,
        http=http,
        verify=VerifySettings(
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


def _service_request(params: Mapping[str, Any], shared: SharedSettings) -> SwitchRequest:
    """One service's switch: its own options (ITEM_OPTIONS) on top of the shared settings."""
    service = params.get("service")
    if not isinstance(service, str) or not SERVICE_PATTERN.match(service):
        raise SwitchError(
            f"service {service!r} is not a service name (lowercase letters, digits, dashes)"
        )
    checks = _health_checks(params.get("health_checks"))
    verify_url = _verify_url(params.get("verify_url"))
    if params.get("weights") is None:
        raise SwitchError(
            "weights is required: the traffic share of each colour, e.g. {blue: 0, green: 100}"
        )
    return SwitchRequest(
        service=service,
        weights=_weights(params.get("weights")),
        backends=_backends(params.get("backends")),
        versions=dict(params.get("versions") or {}),
        health_checks=checks,
        gate=shared.gate,
        http=shared.http,
        verify=replace(
            shared.verify, url=verify_url, headers=_headers(params.get("verify_headers"))
        ),
        upstream=shared.upstream,
        upstream_dir=shared.upstream_dir,
        state_file=shared.state_file,
        test_command=shared.test_command,
        reload_command=shared.reload_command,
        lock_timeout=shared.lock_timeout,
    )


def is_batch(params: Mapping[str, Any]) -> bool:
    """True for a batch (`services`), False for one service; refuses both and neither."""
    single = params.get("service") is not None
    batch = params.get("services") is not None
    if single and batch:
        raise SwitchError(
            "service and services are mutually exclusive: give service (with weights) to switch "
            "one service, or services (a list of {service, weights, ...}) to switch several "
            "with one reload"
        )
    if not single and not batch:
        raise SwitchError(
            "give service (with weights) to switch one service, or services (a list of "
            "{service, weights, ...}) to switch several with one reload"
        )
    return batch


def build_request(params: Mapping[str, Any]) -> SwitchRequest:
    """Validate the module parameters of one service; every error names the option and the fix."""
    if is_batch(params):
        raise SwitchError("services is a batch: validate it with build_batch")
    return _service_request(params, _shared_settings(params))


def build_batch(params: Mapping[str, Any]) -> BatchRequest:
    """Validate the module parameters of a batch (`services`); errors name the item."""
    if not is_batch(params):
        raise SwitchError("service is one switch: validate it with build_request")
    items = params["services"]
    if not items:
        raise SwitchError(
            "services is empty: list at least one {service, weights} item (or use service)"
        )
    for name in ("weights", "backends", "versions"):
        # Ansible turns an unset dict option with a default into {"blue": None, "green": None}.
        value = params.get(name)
        if isinstance(value, Mapping):
            value = {k: v for k, v in value.items() if v is not None} or None
        if value is not None:
            raise SwitchError(
                f"{name} belongs in each item of services (services[].{name}); the top-level "
                f"{name} only goes with service"
            )
    shared = _shared_settings(params)
    # The defaults the items inherit are checked once, so their errors name the top-level option.
    if params.get("health_checks") is not None:
        _health_checks(params["health_checks"])
    _verify_url(params.get("verify_url"))
    requests: list[SwitchRequest] = []
    positions: dict[str, int] = {}
    for index, raw in enumerate(items):
        if not isinstance(raw, Mapping):
            raise SwitchError(
                f"services[{index}] must be a dict with service and weights, got {raw!r}"
            )
        where = f"services[{index}] ({raw.get('service')})"
        unknown = sorted(set(raw) - set(ITEM_OPTIONS))
        if unknown:
            raise SwitchError(
                f"{where}: unknown option(s) {unknown}; an item takes {', '.join(ITEM_OPTIONS)} "
                "(the other options are the batch's, set them once at the top level)"
            )
        merged = {name: params.get(name) for name in ITEM_DEFAULTS}
        merged.update({name: value for name, value in raw.items() if value is not None})
        try:
            request = _service_request(merged, shared)
        except SwitchError as exc:
            raise SwitchError(f"{where}: {exc}") from None
        if request.service in positions:
            raise SwitchError(
                f"{where}: service {request.service} is listed twice (also "
                f"services[{positions[request.service]}]); a batch switches each service once, "
                "merge the two items"
            )
        positions[request.service] = index
        requests.append(request)
    return BatchRequest(tuple(requests), shared)


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


def make_plan(request: SwitchRequest, now: str, state: dict[str, Any] | None = None) -> Plan:
    """The plan of one service; `state` is the recorded state when already read (a batch)."""
    if state is None:
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


@dataclass
class Unit:
    """One service in a switch: its request, its plan and, once written, its old file's backup."""

    request: SwitchRequest
    plan: Plan
    backup: Path | None = None

    @property
    def service(self) -> str:
        return self.request.service


@dataclass
class VerifyCheck:
    """What the verification of one service through the edge saw (nothing restored yet)."""

    ok: bool
    details: dict[str, Any]
    summary: str  # the action when ok, else what went wrong (URL, expectation, seen, last)


class _Engine:
    """The steps single and batch switches share; subclasses word the messages and results.

    All side effects go through run_command, fetcher and the file system.
    """

    batch = False

    def __init__(
        self,
        scope: SwitchRequest | BatchRequest,
        run_command: RunCommand,
        check_mode: bool = False,
        fetcher: Fetcher = fetch,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        now: Callable[[], str] = utc_now,
    ) -> None:
        self.scope = scope
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
                with exclusive_lock(self.scope.lock_file, self.scope.lock_timeout):
                    return self._switch(started)
            except ReleaseStateError as exc:
                raise SwitchError(f"{self._label()}{exc}") from None
        except SwitchError as exc:
            self.outcome.timings["total_s"] = self._since(started)
            exc.details.update(self._audit())
            raise

    # -- what subclasses provide

    def _switch(self, started: float) -> dict[str, Any]:
        raise NotImplementedError

    def _label(self) -> str:
        """Prefix of an error that is not about one step (the lock)."""
        return ""

    def _gate_failed(self, failed: list[tuple[Unit, GateTarget, GateResult]]) -> str:
        raise NotImplementedError

    def _gate_passed(self, gated: list[tuple[Unit, list[GateTarget]]]) -> str:
        raise NotImplementedError

    def _rejected(self, written: list[Unit], output: str, restored: str) -> str:
        raise NotImplementedError

    def _reload_failed(self, written: list[Unit], output: str, restored: str) -> str:
        raise NotImplementedError

    def _verify_failed(
        self, failed: list[tuple[Unit, VerifyCheck]], written: list[Unit], restored: str
    ) -> str:
        raise NotImplementedError

    def _verify_action(self, unit: Unit, check: VerifyCheck | None) -> str:
        raise NotImplementedError

    def _store_verify(self, unit: Unit, details: dict[str, Any]) -> None:
        raise NotImplementedError

    def _unexpected(self, written: list[Unit], exc: Exception, restored: str) -> str:
        raise NotImplementedError

    # -- health gate

    def _health_gate(self, units: list[Unit]) -> None:
        """Probe every target of every unit at once; any failure stops before a change."""
        gated = [(unit, self._gate_targets(unit)) for unit in units]
        pairs = [(unit, target) for unit, targets in gated for target in targets]
        began = self.clock()
        with ThreadPoolExecutor(max_workers=max(1, min(MAX_PROBE_THREADS, len(pairs)))) as pool:
            results = list(pool.map(self._gate_one, pairs))
        self.outcome.timings["health_gate_s"] = self._since(began)
        failed: list[tuple[Unit, GateTarget, GateResult]] = []
        for (unit, target), result in zip(pairs, results, strict=True):
            item = {
                "colour": target.colour,
                "backend": target.backend,
                "expected": target.expectation.describe(),
                **result.as_dict(),
            }
            self.outcome.health.append({"service": unit.service, **item} if self.batch else item)
            if not result.ok:
                failed.append((unit, target, result))
        if failed:
            raise SwitchError(self._gate_failed(failed))
        self.outcome.actions.append(self._gate_passed(gated))

    def _gate_targets(self, unit: Unit) -> list[GateTarget]:
        plan = unit.plan
        targets: list[GateTarget] = []
        for colour in plan.live_colours():
            for check in unit.request.health_checks:
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
                f"{unit.service}: no health check applies to {unchecked[0]}, which "
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

    def _gate_one(self, pair: tuple[Unit, GateTarget]) -> GateResult:
        unit, target = pair
        options = unit.request.http.with_headers(target.check.headers)
        return wait_until_healthy(
            target.url,
            target.expectation,
            options,
            unit.request.gate,
            self.fetcher,
            self.clock,
            self.sleep,
        )

    def _unhealthy(self, unit: Unit, target: GateTarget, result: GateResult) -> str:
        """The message of one failed gate target: service, backend or colour, and the check."""
        where = (
            f"backend {target.backend} ({target.colour})"
            if target.backend
            else f"{target.colour} check"
        )
        return (
            f"{unit.service}: {where} is not healthy, so nothing was changed and "
            f"traffic stays as it was ({self._weights_text(unit.plan.before_weights)}). "
            f"Health check: {failure_message(result, target.expectation, unit.request.gate)}. "
            f"Fix or redeploy the {target.colour} slot, then switch again."
        )

    @staticmethod
    def _gate_summary(unit: Unit, targets: list[GateTarget]) -> str:
        return ", ".join(
            f"{colour} {len([t for t in targets if t.colour == colour])} URL(s)"
            for colour in unit.plan.live_colours()
        )

    # -- write, test, reload, verify, record

    def _apply(self, files: list[Unit], changed: list[Unit]) -> None:
        """Write the upstreams of `files`, test, reload, verify, record every `changed` entry."""
        began = self.clock()
        written: list[Unit] = []
        try:
            for unit in files:
                unit.backup = self._write_upstream(unit)
                written.append(unit)
                self.outcome.actions.append(
                    f"wrote {unit.request.upstream_file} "
                    f"({self._weights_text(unit.plan.after_entry['weights'])})"
                )
        except SwitchError as exc:
            self.outcome.timings["write_s"] = self._since(began)
            if not written:
                raise
            failures = self._restore_files(written)
            back = (
                "not all back: " + "; ".join(failures) + "; fix it by hand and run nginx -t"
                if failures
                else "put back before nginx saw them"
            )
            raise SwitchError(
                f"{exc}; the upstream(s) written before it ({_names(written)}) are {back}"
            ) from None
        self.outcome.timings["write_s"] = self._since(began)
        try:
            self._validate(written)
            self._reload(written)
            self._verify(written)
        except SwitchError:
            raise  # each step put the previous files back before raising
        except Exception as exc:  # whatever else failed, the previous files come back
            restored = self._restore(written, reload=True)
            raise SwitchError(self._unexpected(written, exc, restored)) from exc
        try:
            self._record(changed)
        except SwitchError as exc:
            restored = self._restore(written, reload=True)
            raise SwitchError(f"{exc}; {self._back()} ({restored})") from None
        for unit in written:
            self._discard(unit.backup)
        self.outcome.timings["switch_s"] = round(
            sum(self.outcome.timings.get(k, 0.0) for k in ("write_s", "validate_s", "reload_s")), 4
        )

    def _write_upstream(self, unit: Unit) -> Path | None:
        """Temp file beside the old one, hard-linked backup of the old, atomic rename."""
        request, plan = unit.request, unit.plan
        path = Path(request.upstream_file)
        directory = path.parent
        if not directory.is_dir():
            raise SwitchError(
                f"{request.service}: {directory} does not exist; converge the edge with the "
                "venta.deploy.nginx_edge role first (or set upstream_dir)"
            )
        handle, name = tempfile.mkstemp(
            dir=directory, prefix=f".{request.service}.", suffix=".switch-new"
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
            for leftover in (temp, backup):  # the cleanup must not hide the cause
                if leftover is not None:
                    with contextlib.suppress(OSError):
                        leftover.unlink(missing_ok=True)
            raise SwitchError(
                f"{request.service}: cannot write {path}: {exc}; nothing changed"
            ) from None
        fsync_directory(str(directory))
        return backup

    def _command(self, argv: Sequence[str], timing: str) -> str | None:
        """Run a command and time it: None when it succeeded, else its output."""
        began = self.clock()
        rc, out, err = self.run_command(argv)
        self.outcome.timings[timing] = self._since(began)
        if rc != 0:
            return (err or out).strip()
        self.outcome.actions.append(f"{' '.join(argv)}: ok")
        return None

    def _validate(self, written: list[Unit]) -> None:
        output = self._command(self.scope.test_command, "validate_s")
        if output is not None:
            restored = self._restore(written, reload=False)
            raise SwitchError(self._rejected(written, output, restored))

    def _reload(self, written: list[Unit]) -> None:
        output = self._command(self.scope.reload_command, "reload_s")
        if output is not None:
            restored = self._restore(written, reload=True)
            raise SwitchError(self._reload_failed(written, output, restored))

    def _verify(self, written: list[Unit]) -> None:
        began = self.clock()
        if len(written) == 1:
            checks = [self._verify_check(written[0])]
        else:
            with ThreadPoolExecutor(max_workers=min(MAX_PROBE_THREADS, len(written))) as pool:
                checks = list(pool.map(self._verify_check, written))
        if any(check is not None for check in checks):
            self.outcome.timings["verify_s"] = self._since(began)
        failed: list[tuple[Unit, VerifyCheck]] = []
        for unit, check in zip(written, checks, strict=True):
            if check is None:
                continue
            self._store_verify(unit, check.details)
            if not check.ok:
                failed.append((unit, check))
        if failed:
            restored = self._restore(written, reload=True)
            raise SwitchError(self._verify_failed(failed, written, restored))
        for unit, check in zip(written, checks, strict=True):
            self.outcome.actions.append(self._verify_action(unit, check))

    def _verify_check(self, unit: Unit) -> VerifyCheck | None:
        """Ask the edge until `successes` good answers in a row name a live colour (no restore).

        None when the service has no verify_url.
        """
        verify = unit.request.verify
        if not verify.url:
            return None
        live = unit.plan.live_colours()
        options = unit.request.http.with_headers(verify.headers)
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
        details = {
            "url": verify.url,
            "requests": answers,
            "consecutive_successes": consecutive,
            "colours_seen": seen,
            "expected_colours": live,
        }
        if consecutive < verify.successes:
            last_text = last.describe() if last is not None else "no answer"
            return VerifyCheck(
                False,
                details,
                f"{verify.url} did not answer with status "
                f"{'/'.join(map(str, verify.status_codes))} and {verify.colour_header} "
                f"{' or '.join(live)} {verify.successes} time(s) in a row within "
                f"{verify.requests} requests (seen {seen}; last: {last_text}; {reason})",
            )
        return VerifyCheck(
            True,
            details,
            f"verified through {verify.url}: {consecutive} good answers in a row, "
            f"colours seen {seen}",
        )

    def _record(self, units: list[Unit]) -> None:
        """Every unit's entry in ONE atomic write of the state file (read once, at the plan)."""
        began = self.clock()
        state_file = self.scope.state_file
        state = units[0].plan.state
        for unit in units:
            state = with_entry(state, unit.service, unit.plan.after_entry)
        try:
            write_atomic(state_file, dump_state(state))
        except OSError as exc:
            raise SwitchError(f"{_names(units)}: cannot record {state_file}: {exc}") from exc
        self.outcome.timings["record_s"] = self._since(began)
        whose = f" of {_names(units)}" if self.batch else ""
        self.outcome.actions.append(f"recorded the release state{whose} in {state_file}")

    # -- restore

    def _restore_files(self, units: list[Unit]) -> list[str]:
        """Put the previous upstream files back (last written first); the failures."""
        failures: list[str] = []
        for unit in reversed(units):
            path = Path(unit.request.upstream_file)
            try:
                if unit.backup is not None:
                    unit.backup.replace(path)
                else:
                    path.unlink()
                fsync_directory(unit.request.upstream_dir)
            except OSError as exc:
                self.outcome.actions.append(f"restore of {path} FAILED: {exc}")
                failures.append(f"restoring {path} FAILED: {exc}")
                continue
            self.outcome.actions.append(f"restored the previous {path}")
        return failures

    def _restore(self, units: list[Unit], reload: bool) -> str:
        """Put the previous upstreams back (reloading nginx if it already saw the new ones)."""
        failures = self._restore_files(units)
        if failures:
            return "; ".join(failures) + "; fix it by hand and run nginx -t"
        one = len(units) == 1
        it = "it" if one else "them"
        rc, out, err = self.run_command(self.scope.test_command)
        if rc != 0:
            return f"but nginx -t fails on {it}: {(err or out).strip()}; nginx was not reloaded"
        if not reload:
            return f"{'it passes' if one else 'they pass'} nginx -t; nginx was not reloaded"
        rc, out, err = self.run_command(self.scope.reload_command)
        if rc != 0:
            return f"but reloading nginx again failed: {(err or out).strip()}"
        self.outcome.actions.append(
            "reloaded nginx with the previous upstream" + ("" if one else "s")
        )
        return f"nginx reloaded with {it}"

    def _back(self) -> str:
        return "every previous upstream is back" if self.batch else "the previous upstream is back"

    @staticmethod
    def _discard(backup: Path | None) -> None:
        if backup is not None:
            backup.unlink(missing_ok=True)

    # -- results

    def _service_result(self, unit: Unit) -> dict[str, Any]:
        request, plan = unit.request, unit.plan
        return {
            "service": request.service,
            "upstream_file": request.upstream_file,
            "state_file": request.state_file,
            "before": {
                "weights": plan.before_weights,
                "active": (plan.before_entry or {}).get("active"),
            },
            "after": {"weights": plan.after_entry["weights"], "active": plan.after_entry["active"]},
            "state": plan.after_entry,
        }

    @staticmethod
    def _diff(unit: Unit, only_changes: bool = False) -> list[dict[str, str]]:
        """Before and after of the upstream file and of the state entry."""
        request, plan = unit.request, unit.plan
        entries: list[dict[str, str]] = []
        if plan.file_changes or not only_changes:
            entries.append(
                {
                    "before_header": request.upstream_file,
                    "after_header": request.upstream_file,
                    "before": plan.old_text or "",
                    "after": plan.new_text,
                }
            )
        if plan.state_changes or not only_changes:
            header = f"{request.state_file} services.{request.service}"
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
        }

    def _since(self, began: float) -> float:
        return round(self.clock() - began, 4)

    @staticmethod
    def _weights_text(weights: Mapping[str, int] | None) -> str:
        if weights is None:
            return "no weights known before"
        return " / ".join(f"{colour} {weights.get(colour, 0)}" for colour in COLOURS)


class Switcher(_Engine):
    """Runs the switch of one service (the module's `service`)."""

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
        super().__init__(request, run_command, check_mode, fetcher, clock, sleep, now)
        self.request = request

    def _switch(self, started: float) -> dict[str, Any]:
        unit = Unit(self.request, make_plan(self.request, self.now()))
        result = {**self._service_result(unit), "diff": self._diff(unit)}
        if not unit.plan.changed:
            self.outcome.timings["total_s"] = self._since(started)
            return {**result, "changed": False, **self._audit()}

        self._health_gate([unit])
        if self.check_mode:
            self.outcome.actions.append("check mode: nothing written, nginx not reloaded")
        elif unit.plan.file_changes:
            self._apply([unit], [unit])
        else:
            self._record([unit])
        self.outcome.timings["total_s"] = self._since(started)
        return {**result, "changed": True, **self._audit()}

    def _label(self) -> str:
        return f"{self.request.service}: "

    def _gate_failed(self, failed: list[tuple[Unit, GateTarget, GateResult]]) -> str:
        return self._unhealthy(*failed[0])

    def _gate_passed(self, gated: list[tuple[Unit, list[GateTarget]]]) -> str:
        unit, targets = gated[0]
        return f"health gate passed ({self._gate_summary(unit, targets)})"

    def _rejected(self, written: list[Unit], output: str, restored: str) -> str:
        return (
            f"{self.request.service}: {' '.join(self.request.test_command)} rejected the new "
            f"upstream ({output}); the previous file is back ({restored}) and "
            "traffic is as it was. Check the backends (host names must resolve on the edge) "
            "and the upstream settings."
        )

    def _reload_failed(self, written: list[Unit], output: str, restored: str) -> str:
        return (
            f"{self.request.service}: {' '.join(self.request.reload_command)} failed "
            f"({output}); the previous upstream is back ({restored})."
        )

    def _verify_failed(
        self, failed: list[tuple[Unit, VerifyCheck]], written: list[Unit], restored: str
    ) -> str:
        return (
            f"{self.request.service}: verify through the edge failed: {failed[0][1].summary}. "
            f"The previous upstream is back ({restored}); traffic is as it was."
        )

    def _verify_action(self, unit: Unit, check: VerifyCheck | None) -> str:
        if check is None:
            return "no verify_url: traffic not verified through the edge"
        return check.summary

    def _store_verify(self, unit: Unit, details: dict[str, Any]) -> None:
        self.outcome.verify = details

    def _unexpected(self, written: list[Unit], exc: Exception, restored: str) -> str:
        return (
            f"{self.request.service}: unexpected error after writing "
            f"{self.request.upstream_file}: {exc}; the previous upstream is back ({restored})"
        )


class BatchSwitcher(_Engine):
    """Runs the switches of several services at once (the module's `services`), all or nothing."""

    batch = True

    def __init__(
        self,
        batch: BatchRequest,
        run_command: RunCommand,
        check_mode: bool = False,
        fetcher: Fetcher = fetch,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        now: Callable[[], str] = utc_now,
    ) -> None:
        super().__init__(batch, run_command, check_mode, fetcher, clock, sleep, now)
        self.request = batch

    def _switch(self, started: float) -> dict[str, Any]:
        units = self._plan()
        changed = [unit for unit in units if unit.plan.changed]
        self.outcome.actions.extend(
            f"{unit.service}: unchanged, not touched" for unit in units if not unit.plan.changed
        )
        if changed:
            self._health_gate(changed)
            files = [unit for unit in changed if unit.plan.file_changes]
            if self.check_mode:
                self.outcome.actions.append(
                    f"check mode: nothing written, nginx not reloaded ({_names(changed)} "
                    "would change)"
                )
            elif files:
                self._apply(files, changed)
            else:
                self._record(changed)
        self.outcome.timings["total_s"] = self._since(started)
        return {
            "changed": bool(changed),
            "services": [
                {**self._service_result(unit), "changed": unit.plan.changed} for unit in units
            ],
            "diff": [entry for unit in changed for entry in self._diff(unit, only_changes=True)],
            **self._audit(),
        }

    def _plan(self) -> list[Unit]:
        """Every service's plan from ONE read of the state file."""
        try:
            state = load_state(self.request.state_file)
        except ReleaseStateError as exc:
            raise SwitchError(str(exc)) from None
        now = self.now()
        units: list[Unit] = []
        for index, request in enumerate(self.request.requests):
            try:
                units.append(Unit(request, make_plan(request, now, state)))
            except SwitchError as exc:
                message = str(exc).removeprefix(f"{request.service}: ")
                raise SwitchError(f"services[{index}] ({request.service}): {message}") from None
        return units

    def _gate_failed(self, failed: list[tuple[Unit, GateTarget, GateResult]]) -> str:
        first: dict[str, tuple[Unit, GateTarget, GateResult]] = {}
        for item in failed:
            first.setdefault(item[0].service, item)
        return (
            f"health gate failed for {', '.join(first)}, so no upstream was written and the "
            f"traffic of every service in the batch stays as it was. "
            + " ".join(self._unhealthy(*item) for item in first.values())
        )

    def _gate_passed(self, gated: list[tuple[Unit, list[GateTarget]]]) -> str:
        return "health gate passed: " + ", ".join(
            f"{unit.service} ({self._gate_summary(unit, targets)})" for unit, targets in gated
        )

    def _rejected(self, written: list[Unit], output: str, restored: str) -> str:
        return (
            f"{' '.join(self.request.test_command)} rejected the new upstreams of "
            f"{_names(written)} ({output}); every previous file is back ({restored}) and "
            "traffic is as it was. Check the backends (host names must resolve on the edge) "
            "and the upstream settings."
        )

    def _reload_failed(self, written: list[Unit], output: str, restored: str) -> str:
        return (
            f"{' '.join(self.request.reload_command)} failed ({output}) after writing the "
            f"upstreams of {_names(written)}; every previous upstream is back ({restored})."
        )

    def _verify_failed(
        self, failed: list[tuple[Unit, VerifyCheck]], written: list[Unit], restored: str
    ) -> str:
        seen = "; ".join(f"{unit.service}: {check.summary}" for unit, check in failed)
        return (
            f"verify through the edge failed for {_names([item[0] for item in failed])}: {seen}. "
            f"Every upstream of the batch ({_names(written)}) is back ({restored}); traffic of "
            "every service is as it was."
        )

    def _verify_action(self, unit: Unit, check: VerifyCheck | None) -> str:
        if check is None:
            return f"{unit.service}: no verify_url: traffic not verified through the edge"
        return f"{unit.service}: {check.summary}"

    def _store_verify(self, unit: Unit, details: dict[str, Any]) -> None:
        self.outcome.verify[unit.service] = details

    def _unexpected(self, written: list[Unit], exc: Exception, restored: str) -> str:
        return (
            f"unexpected error after writing the upstreams of {_names(written)}: {exc}; "
            f"every previous upstream is back ({restored})"
        )


def run_switch(
    params: Mapping[str, Any],
    run_command: RunCommand,
    check_mode: bool = False,
    **fakes: Any,
) -> dict[str, Any]:
    """Validate the module parameters and run the switch of `service` or the batch `services`.

    `fakes` (fetcher, clock, sleep, now) replace the real network and time in tests.
    """
    if is_batch(params):
        return BatchSwitcher(build_batch(params), run_command, check_mode, **fakes).run()
    return Switcher(build_request(params), run_command, check_mode, **fakes).run()


def _names(units: Sequence[Unit]) -> str:
    return ", ".join(unit.service for unit in units)


def _entry_text(entry: Mapping[str, Any] | None) -> str:
    return "" if entry is None else json.dumps(entry, indent=2) + "\n"
