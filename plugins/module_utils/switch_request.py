# Copyright: venta.deploy developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The request of a release switch (venta.deploy.nginx_switch): module parameters -> SwitchBatch.

A switch is always a batch: one service is a batch of one. Every error names the option (and
the item of `services`) and the fix; nothing here touches the host.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ansible_collections.venta.deploy.plugins.module_utils.health_gate import (
    Expectation,
    GateSettings,
    HealthGateError,
    HttpOptions,
    split_url,
)
from ansible_collections.venta.deploy.plugins.module_utils.nginx_upstream import (
    BACKEND_PATTERN,
    COLOURS,
    SERVICE_PATTERN,
    UpstreamError,
    UpstreamSettings,
)
from ansible_collections.venta.deploy.plugins.module_utils.release_state import ACTION_KINDS

# The options an item of `services` takes; the others are the batch's, shared by every item.
ITEM_OPTIONS: tuple[str, ...] = (
    "service",
    "weights",
    "versions",
    "backends",
    "health_checks",
    "verify_url",
    "verify_headers",
    "recorded",
)
# Top-level options an item inherits when it does not set them.
ITEM_DEFAULTS: tuple[str, ...] = ("health_checks", "verify_headers")
# The placeholder of verify_url_pattern.
SERVICE_PLACEHOLDER = "{service}"


class SwitchError(Exception):
    """A switch that cannot be done or failed; `details` goes into the module's result."""

    def __init__(self, message: str, details: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.details = dict(details or {})


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
    """The options every service of a switch shares (the top-level options)."""

    gate: GateSettings
    http: HttpOptions
    # Without url (each service has its own); headers are the top-level verify_headers, the
    # default of the items and what the recovery of a service not in the batch sends.
    verify: VerifySettings
    upstream: UpstreamSettings
    upstream_dir: str
    state_file: str
    test_command: tuple[str, ...]
    reload_command: tuple[str, ...]
    lock_timeout: float = 60.0
    verify_url_pattern: str | None = None
    action: str = "switch"
    run_id: str | None = None

    @property
    def lock_file(self) -> str:
        return f"{self.state_file}.lock"

    @property
    def intent_file(self) -> str:
        return f"{self.state_file}.intent"

    def upstream_file(self, service: str) -> str:
        return str(Path(self.upstream_dir) / f"{service}.conf")

    def verify_url(self, service: str) -> str | None:
        """The edge URL of a service from verify_url_pattern (None without a pattern)."""
        if not self.verify_url_pattern:
            return None
        return self.verify_url_pattern.replace(SERVICE_PLACEHOLDER, service)


@dataclass(frozen=True)
class ServiceRequest:
    """One service of a switch: what it should become and how it is checked."""

    service: str
    weights: dict[str, int]
    backends: dict[str, list[str] | None]
    versions: dict[str, str | None]
    health_checks: tuple[HealthCheck, ...]
    verify: VerifySettings
    upstream_file: str
    # A reconcile copies another edge's previous and last_action as they are.
    recorded: dict[str, Any] | None = None


@dataclass(frozen=True)
class SwitchBatch:
    """Switches of the services done together: one lock, one nginx -t, one reload."""

    requests: tuple[ServiceRequest, ...]
    shared: SharedSettings


def parse_weights(raw: Mapping[str, Any] | None) -> dict[str, int]:
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


def parse_backends(raw: Mapping[str, Any] | None) -> dict[str, list[str] | None]:
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


def parse_health_check(raw: Mapping[str, Any], index: int) -> HealthCheck:
    where = f"health_checks[{index}]"
    url, path = raw.get("url"), raw.get("path")
    if bool(url) == bool(path):
        raise SwitchError(f"{where}: give either url (with colour) or path, not both or neither")
    if url:
        _check_url(url, f"{where}.url")
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
        headers=_headers(raw.get("headers")),
        colour_header=raw.get("colour_header") or None,
        version_header=raw.get("version_header") or None,
    )


def parse_health_checks(raw_checks: Sequence[Mapping[str, Any]] | None) -> tuple[HealthCheck, ...]:
    if raw_checks is None:
        raw_checks = [{"path": "/health"}]
    if not raw_checks:
        raise SwitchError(
            "health_checks is empty: the switch never sends traffic to unchecked backends; "
            "leave it unset for a /health check of every backend"
        )
    return tuple(parse_health_check(raw, i) for i, raw in enumerate(raw_checks))


def _check_url(value: str, option: str) -> None:
    try:
        split_url(value)
    except HealthGateError as exc:
        raise SwitchError(f"{option}: {exc}") from None


def _headers(raw: Mapping[str, Any] | None) -> dict[str, str]:
    return {str(k): str(v) for k, v in (raw or {}).items()}


def parse_shared(params: Mapping[str, Any]) -> SharedSettings:
    """Validate the options every service of a switch shares."""
    for name in ("verify_requests", "verify_successes"):
        if int(params.get(name) or 0) < 1:
            raise SwitchError(f"{name} must be at least 1")
    if int(params["verify_successes"]) > int(params["verify_requests"]):
        raise SwitchError("verify_successes cannot exceed verify_requests")
    if not params.get("test_command") or not params.get("reload_command"):
        raise SwitchError("test_command and reload_command must not be empty")
    if int(params["health_successes"]) < 1:
        raise SwitchError("health_successes must be at least 1")
    for name in ("health_interval", "verify_interval"):
        if float(params[name]) < 0:
            raise SwitchError(f"{name} must not be negative, got {params[name]}")
    if float(params["health_timeout"]) <= 0:
        raise SwitchError("health_timeout must be a positive number of seconds")
    pattern = params.get("verify_url_pattern") or None
    if pattern is not None:
        if SERVICE_PLACEHOLDER not in pattern:
            raise SwitchError(
                f"verify_url_pattern {pattern!r} must contain {SERVICE_PLACEHOLDER}, e.g. "
                "https://127.0.0.1/_venta/{service}/health"
            )
        _check_url(pattern.replace(SERVICE_PLACEHOLDER, "service"), "verify_url_pattern")
    action = str(params.get("action") or "switch")
    if action not in ACTION_KINDS:
        raise SwitchError(f"action must be one of {', '.join(ACTION_KINDS)}, got {action!r}")
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
            headers=_headers(params.get("verify_headers")),
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
        verify_url_pattern=pattern,
        action=action,
        run_id=params.get("run_id") or None,
    )


def parse_service(raw: Mapping[str, Any], shared: SharedSettings) -> ServiceRequest:
    """One item of `services` (with the inherited top-level defaults already merged in)."""
    service = raw.get("service")
    if not isinstance(service, str) or not SERVICE_PATTERN.match(service):
        raise SwitchError(
            f"service {service!r} is not a service name (lowercase letters, digits, dashes)"
        )
    if raw.get("weights") is None:
        raise SwitchError(
            "weights is required: the traffic share of each colour, e.g. {blue: 0, green: 100}"
        )
    verify_url = raw.get("verify_url") or shared.verify_url(service)
    if verify_url:
        _check_url(verify_url, "verify_url")
    return ServiceRequest(
        service=service,
        weights=parse_weights(raw.get("weights")),
        backends=parse_backends(raw.get("backends")),
        versions=dict(raw.get("versions") or {}),
        health_checks=parse_health_checks(raw.get("health_checks")),
        verify=replace(
            shared.verify, url=verify_url or None, headers=_headers(raw.get("verify_headers"))
        ),
        upstream_file=shared.upstream_file(service),
        recorded=parse_recorded(raw.get("recorded")),
    )


def parse_recorded(raw: Any) -> dict[str, Any] | None:
    """`recorded` of an item: {previous: blue|green|null, last_action: {kind, ...}|null}."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping) or set(raw) - {"previous", "last_action"}:
        raise SwitchError(
            "recorded must be {previous, last_action} copied from another edge's entry, got "
            f"{raw!r}"
        )
    previous = raw.get("previous")
    if previous not in (None, *COLOURS):
        raise SwitchError(f"recorded.previous must be blue, green or null, got {previous!r}")
    last = raw.get("last_action")
    if last is not None and (not isinstance(last, Mapping) or last.get("kind") not in ACTION_KINDS):
        raise SwitchError(
            f"recorded.last_action must be {{kind: {'|'.join(ACTION_KINDS)}, ...}} or null, got "
            f"{last!r}"
        )
    return {"previous": previous, "last_action": dict(last) if last else None}


def parse_batch(params: Mapping[str, Any]) -> SwitchBatch:
    """Validate the module parameters; errors name the item of `services` and the option.

    An empty `services` is valid: the run only completes or undoes an interrupted switch.
    """
    items = params.get("services")
    if items is None:
        raise SwitchError(
            "services is required: a list of {service, weights, ...} items (one item switches "
            "one service; an empty list only recovers an interrupted switch)"
        )
    shared = parse_shared(params)
    # The defaults the items inherit are checked once, so their errors name the top-level option.
    if params.get("health_checks") is not None:
        parse_health_checks(params["health_checks"])
    requests: list[ServiceRequest] = []
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
                "(the other options are shared, set them once at the top level)"
            )
        merged = {name: params.get(name) for name in ITEM_DEFAULTS}
        merged.update({name: value for name, value in raw.items() if value is not None})
        try:
            request = parse_service(merged, shared)
        except SwitchError as exc:
            raise SwitchError(f"{where}: {exc}") from None
        if request.service in positions:
            raise SwitchError(
                f"{where}: service {request.service} is listed twice (also "
                f"services[{positions[request.service]}]); a switch moves each service once, "
                "merge the two items"
            )
        positions[request.service] = index
        requests.append(request)
    return SwitchBatch(tuple(requests), shared)
