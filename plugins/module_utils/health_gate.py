# Copyright: venta.deploy developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Health gate: probe an HTTP(S) endpoint until it answers as expected N times in a row.

Standard library only (http.client, ssl), so it runs on any managed host with Python 3.
Everything that waits or talks to the network is passed in (clock, sleep, fetch), so the logic
is tested without sockets or real time.
"""

from __future__ import annotations

import http.client
import json
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

# Bytes of a response body read (enough for a health JSON document) and characters returned.
BODY_READ_LIMIT = 65536
BODY_EXCERPT_CHARS = 300


class HealthGateError(Exception):
    """Invalid input for a health gate (names the option and the fix)."""


def http_argument_spec() -> dict[str, Any]:
    """Options of the HTTP client shared by the modules (doc fragment venta.deploy.http_client)."""
    return {
        "ca_path": {"type": "path"},
        "client_cert": {"type": "path"},
        "client_key": {"type": "path"},
        "validate_certs": {"type": "bool", "default": True},
        "request_timeout": {"type": "float", "default": 5.0},
    }


@dataclass(frozen=True)
class HttpOptions:
    """How to talk to an endpoint: TLS trust, client certificate, per-request timeout."""

    ca_path: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    validate_certs: bool = True
    request_timeout: float = 5.0
    method: str = "GET"
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_params(
        cls,
        params: Mapping[str, Any],
        headers: Mapping[str, Any] | None = None,
        method: str = "GET",
    ) -> HttpOptions:
        timeout = float(params.get("request_timeout") or 5.0)
        if timeout <= 0:
            raise HealthGateError("request_timeout must be a positive number of seconds")
        if params.get("client_key") and not params.get("client_cert"):
            raise HealthGateError("client_key needs client_cert (the client certificate's path)")
        return cls(
            ca_path=params.get("ca_path"),
            client_cert=params.get("client_cert"),
            client_key=params.get("client_key"),
            validate_certs=bool(params.get("validate_certs", True)),
            request_timeout=timeout,
            method=method,
            headers={str(k): str(v) for k, v in (headers or {}).items()},
        )

    def with_headers(self, headers: Mapping[str, str]) -> HttpOptions:
        merged = {**self.headers, **{str(k): str(v) for k, v in headers.items()}}
        return HttpOptions(
            self.ca_path,
            self.client_cert,
            self.client_key,
            self.validate_certs,
            self.request_timeout,
            self.method,
            merged,
        )


@dataclass(frozen=True)
class Expectation:
    """What counts as a healthy answer."""

    status_codes: tuple[int, ...] = (200,)
    body_contains: str | None = None
    json_match: Mapping[str, Any] = field(default_factory=dict)
    header_match: Mapping[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        codes = "/".join(str(code) for code in self.status_codes)
        parts = [f"status {codes}"]
        if self.body_contains:
            parts.append(f"a body containing {self.body_contains!r}")
        parts.extend(f"JSON {key} == {value!r}" for key, value in self.json_match.items())
        parts.extend(f"header {name}: {value}" for name, value in self.header_match.items())
        return ", ".join(parts)


@dataclass(frozen=True)
class Answer:
    """One probe: the status, headers and body, or the error that stopped it."""

    status: int | None
    headers: Mapping[str, str]
    body: str
    ms: float
    error: str | None = None

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        for key, value in self.headers.items():
            if key.lower() == wanted:
                return value
        return None

    def describe(self) -> str:
        if self.error is not None:
            return f"error {self.error}"
        excerpt = self.body[:BODY_EXCERPT_CHARS].strip()
        return f"status {self.status}, body {excerpt!r}" if excerpt else f"status {self.status}"


def ssl_context(options: HttpOptions) -> ssl.SSLContext:
    """A client TLS context: system or given CA, optional client certificate."""
    context = ssl.create_default_context(cafile=options.ca_path)
    if not options.validate_certs:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if options.client_cert:
        context.load_cert_chain(options.client_cert, options.client_key)
    return context


def split_url(url: str) -> tuple[str, str, int | None, str]:
    """(scheme, host, port, path with query) of an http/https URL; raise on anything else."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise HealthGateError(f"{url!r} is not an http:// or https:// URL with a host")
    try:
        port = parts.port
    except ValueError as exc:
        raise HealthGateError(f"{url!r} has an invalid port: {exc}") from None
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return parts.scheme, parts.hostname, port, path


def fetch(url: str, options: HttpOptions, timeout: float | None = None) -> Answer:
    """Send one request (no redirects followed) and return the answer or the error."""
    scheme, host, port, path = split_url(url)
    limit = options.request_timeout if timeout is None else timeout
    started = time.monotonic()
    connection: http.client.HTTPConnection
    try:
        if scheme == "https":
            connection = http.client.HTTPSConnection(
                host, port, timeout=limit, context=ssl_context(options)
            )
        else:
            connection = http.client.HTTPConnection(host, port, timeout=limit)
        try:
            headers = {"User-Agent": "venta.deploy health_gate", **options.headers}
            connection.request(options.method, path, headers=headers)
            response = connection.getresponse()
            body = response.read(BODY_READ_LIMIT)
            return Answer(
                status=response.status,
                headers=dict(response.getheaders()),
                body=body.decode("utf-8", errors="replace"),
                ms=elapsed_ms(started),
            )
        finally:
            connection.close()
    except (OSError, http.client.HTTPException, ssl.SSLError) as exc:
        return Answer(None, {}, "", elapsed_ms(started), error=describe_error(exc))


def elapsed_ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000.0, 1)


def describe_error(exc: BaseException) -> str:
    text = str(exc) or exc.__class__.__name__
    return f"{exc.__class__.__name__}: {text}" if text != exc.__class__.__name__ else text


def json_lookup(document: Any, dotted: str) -> tuple[bool, Any]:
    """Value at a dotted key path (a.b.0.c); (False, None) when the path does not exist."""
    current = document
    for part in dotted.split("."):
        if isinstance(current, Mapping) and part in current:
            current = current[part]
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            return False, None
    return True, current


def values_equal(actual: Any, expected: Any) -> bool:
    """Equal; a non-string JSON value also equals its JSON text (true, 3, null)."""
    if isinstance(expected, str) and not isinstance(actual, str):
        return json.dumps(actual) == expected
    if isinstance(expected, bool) or isinstance(actual, bool):
        return isinstance(expected, bool) and isinstance(actual, bool) and expected == actual
    return bool(actual == expected)


def mismatch(answer: Answer, expectation: Expectation) -> str | None:
    """Why the answer does not meet the expectation, or None when it does."""
    if answer.error is not None:
        return answer.error
    if answer.status not in expectation.status_codes:
        return f"status {answer.status}"
    if expectation.body_contains and expectation.body_contains not in answer.body:
        return f"body does not contain {expectation.body_contains!r}"
    for name, value in expectation.header_match.items():
        got = answer.header(name)
        if got != value:
            return f"header {name} is {got!r}, not {value!r}"
    if expectation.json_match:
        try:
            document = json.loads(answer.body)
        except ValueError:
            return "body is not JSON"
        for key, value in expectation.json_match.items():
            found, got = json_lookup(document, key)
            if not found:
                return f"JSON has no {key}"
            if not values_equal(got, value):
                return f"JSON {key} is {got!r}, not {value!r}"
    return None


@dataclass(frozen=True)
class GateSettings:
    """How long and how often to probe, and how many good answers in a row are needed."""

    successes: int = 3
    interval: float = 1.0
    timeout: float = 60.0

    def __post_init__(self) -> None:
        if self.successes < 1:
            raise HealthGateError("successes must be at least 1")
        if self.interval < 0:
            raise HealthGateError("interval must not be negative")
        if self.timeout <= 0:
            raise HealthGateError("timeout must be a positive number of seconds")


@dataclass
class GateResult:
    """Outcome of one gate: the audit trail a module returns."""

    url: str
    ok: bool
    attempts: int
    consecutive_successes: int
    elapsed_s: float
    timings_ms: list[float]
    last: Answer | None
    last_mismatch: str | None

    def as_dict(self) -> dict[str, Any]:
        last = self.last
        return {
            "url": self.url,
            "ok": self.ok,
            "attempts": self.attempts,
            "consecutive_successes": self.consecutive_successes,
            "elapsed_s": round(self.elapsed_s, 3),
            "timings_ms": list(self.timings_ms),
            "status": None if last is None else last.status,
            "body_excerpt": "" if last is None else last.body[:BODY_EXCERPT_CHARS],
            "error": None if last is None else last.error,
            "last_mismatch": self.last_mismatch,
        }


Fetcher = Callable[[str, HttpOptions, float], Answer]


def wait_until_healthy(
    url: str,
    expectation: Expectation,
    options: HttpOptions,
    settings: GateSettings,
    fetcher: Fetcher = fetch,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> GateResult:
    """Probe until `settings.successes` answers in a row meet the expectation, or time runs out.

    A request never outlives the deadline (its timeout is cut to the time left). The gate
    fails as soon as the next probe could not start before the deadline.
    """
    split_url(url)
    started = clock()
    deadline = started + settings.timeout
    timings: list[float] = []
    consecutive = 0
    last: Answer | None = None
    reason: str | None = None
    while True:
        remaining = max(deadline - clock(), 0.05)
        last = fetcher(url, options, min(options.request_timeout, remaining))
        timings.append(last.ms)
        reason = mismatch(last, expectation)
        consecutive = consecutive + 1 if reason is None else 0
        if consecutive >= settings.successes:
            return GateResult(
                url, True, len(timings), consecutive, clock() - started, timings, last, None
            )
        if clock() + settings.interval >= deadline:
            return GateResult(
                url, False, len(timings), consecutive, clock() - started, timings, last, reason
            )
        sleep(settings.interval)


def failure_message(result: GateResult, expectation: Expectation, settings: GateSettings) -> str:
    """One line naming the URL, the expectation and the last answer."""
    last = result.last.describe() if result.last is not None else "no answer"
    reason = result.last_mismatch or ""
    if reason and not reason.startswith("status") and result.last and result.last.error is None:
        last = f"{last} ({reason})"
    return (
        f"{result.url} did not answer with {expectation.describe()} {settings.successes} time(s) "
        f"in a row within {settings.timeout:g}s ({result.attempts} attempts, "
        f"{result.consecutive_successes} good in a row at the end); last answer: {last}"
    )
