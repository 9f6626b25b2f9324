"""Health gate logic: expectations, consecutive successes, timeouts, and the real HTTP client."""

from __future__ import annotations

import datetime
import http.server
import ipaddress
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from ansible_collections.venta.deploy.plugins.module_utils.health_gate import (
    Answer,
    Expectation,
    GateSettings,
    HealthGateError,
    HttpOptions,
    failure_message,
    fetch,
    json_lookup,
    mismatch,
    split_url,
    wait_until_healthy,
)
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def answer(
    status: int | None = 200, body: str = "", error: str | None = None, **headers: str
) -> Answer:
    return Answer(status, {k.replace("_", "-"): v for k, v in headers.items()}, body, 1.5, error)


@pytest.mark.parametrize(
    ("got", "expectation", "reason"),
    [
        (answer(200), Expectation(), None),
        (answer(503, '{"status":"unhealthy"}'), Expectation(), "status 503"),
        (answer(301), Expectation(status_codes=(200, 301)), None),
        (
            answer(None, error="ConnectionRefusedError: refused"),
            Expectation(),
            "ConnectionRefusedError: refused",
        ),
        (answer(200, "all good"), Expectation(body_contains="good"), None),
        (answer(200, "all bad"), Expectation(body_contains="good"), "body does not contain 'good'"),
        (answer(200, '{"colour":"green"}'), Expectation(json_match={"colour": "green"}), None),
        (
            answer(200, '{"colour":"blue"}'),
            Expectation(json_match={"colour": "green"}),
            "JSON colour is 'blue', not 'green'",
        ),
        (answer(200, "<html>"), Expectation(json_match={"colour": "green"}), "body is not JSON"),
        (answer(200, '{"a":{"ok":true}}'), Expectation(json_match={"a.ok": True}), None),
        (answer(200, '{"a":{"ok":true}}'), Expectation(json_match={"a.ok": "true"}), None),
        (
            answer(200, '{"a":{"ok":1}}'),
            Expectation(json_match={"a.ok": True}),
            "JSON a.ok is 1, not True",
        ),
        (answer(200, '{"a":{}}'), Expectation(json_match={"a.ok": True}), "JSON has no a.ok"),
        (
            answer(200, X_Venta_Colour="green"),
            Expectation(header_match={"x-venta-colour": "green"}),
            None,
        ),
        (
            answer(200, X_Venta_Colour="blue"),
            Expectation(header_match={"X-Venta-Colour": "green"}),
            "header X-Venta-Colour is 'blue', not 'green'",
        ),
    ],
)
def test_mismatch(got: Answer, expectation: Expectation, reason: str | None) -> None:
    assert mismatch(got, expectation) == reason


def test_json_lookup_walks_lists() -> None:
    assert json_lookup({"a": [{"b": 2}]}, "a.0.b") == (True, 2)
    assert json_lookup({"a": []}, "a.0") == (False, None)


@pytest.mark.parametrize("url", ["ftp://x/", "http:///path", "localhost:80", "http://h:99999/"])
def test_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(HealthGateError):
        split_url(url)


def test_split_url_keeps_the_query() -> None:
    assert split_url("https://127.0.0.1:9443/a?b=1") == ("https", "127.0.0.1", 9443, "/a?b=1")


class FakeTime:
    """A clock that only moves when the gate sleeps or a request takes time."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def scripted(answers: list[Answer], time: FakeTime, took: float = 0.01):
    calls: list[tuple[str, float]] = []

    def fetcher(url: str, options: HttpOptions, timeout: float) -> Answer:
        calls.append((url, timeout))
        time.now += took
        return answers[min(len(calls) - 1, len(answers) - 1)]

    return fetcher, calls


@pytest.mark.parametrize(
    ("statuses", "successes", "ok", "attempts"),
    [
        ([200, 200, 200], 3, True, 3),
        ([503, 200, 200, 200], 3, True, 4),
        ([200, 503, 200, 200, 200], 3, True, 5),
        ([200], 1, True, 1),
        ([503], 1, False, 10),
        ([200, 200, 503], 3, False, 10),
    ],
)
def test_consecutive_successes(
    statuses: list[int], successes: int, ok: bool, attempts: int
) -> None:
    time = FakeTime()
    fetcher, calls = scripted([answer(s) for s in statuses], time, took=0.0)
    settings = GateSettings(successes=successes, interval=1.0, timeout=10.0)
    result = wait_until_healthy(
        "http://b:1/health", Expectation(), HttpOptions(), settings, fetcher, time.clock, time.sleep
    )
    assert result.ok is ok
    assert result.attempts == attempts == len(calls)
    assert len(result.timings_ms) == attempts
    if ok:
        assert result.consecutive_successes == successes
        assert result.last_mismatch is None


def test_a_request_never_outlives_the_deadline() -> None:
    time = FakeTime()
    fetcher, calls = scripted([answer(503)], time, took=0.0)
    settings = GateSettings(successes=1, interval=3.0, timeout=7.0)
    options = HttpOptions(request_timeout=5.0)
    result = wait_until_healthy(
        "http://b:1/", Expectation(), options, settings, fetcher, time.clock, time.sleep
    )
    assert not result.ok
    assert [round(t, 2) for _url, t in calls] == [5.0, 4.0, 1.0]
    assert result.elapsed_s == pytest.approx(6.0)


def test_failure_message_names_url_expectation_and_last_answer() -> None:
    time = FakeTime()
    fetcher, _calls = scripted([answer(503, '{"status":"unhealthy","error":"x"}')], time)
    expectation = Expectation(json_match={"colour": "green"})
    settings = GateSettings(successes=3, interval=1.0, timeout=3.0)
    result = wait_until_healthy(
        "http://app:25002/health",
        expectation,
        HttpOptions(),
        settings,
        fetcher,
        time.clock,
        time.sleep,
    )
    message = failure_message(result, expectation, settings)
    assert "http://app:25002/health" in message
    assert "status 200, JSON colour == 'green'" in message
    assert "3 time(s) in a row within 3s" in message
    assert 'last answer: status 503, body \'{"status":"unhealthy","error":"x"}\'' in message


def test_failure_message_explains_a_json_mismatch() -> None:
    time = FakeTime()
    fetcher, _calls = scripted([answer(200, '{"colour":"blue"}')], time)
    expectation = Expectation(json_match={"colour": "green"})
    settings = GateSettings(successes=1, interval=1.0, timeout=1.0)
    result = wait_until_healthy(
        "http://a:1/", expectation, HttpOptions(), settings, fetcher, time.clock, time.sleep
    )
    assert "(JSON colour is 'blue', not 'green')" in failure_message(result, expectation, settings)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"successes": 0}, "successes"), ({"interval": -1}, "interval"), ({"timeout": 0}, "timeout")],
)
def test_bad_settings(kwargs: dict, match: str) -> None:
    with pytest.raises(HealthGateError, match=match):
        GateSettings(**kwargs)


def test_client_key_needs_client_cert() -> None:
    with pytest.raises(HealthGateError, match="client_key needs client_cert"):
        HttpOptions.from_params({"client_key": "/k.pem"})


# ---- the real client against a server on loopback ----------------------------------------------


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status = 503 if self.path.startswith("/sick") else 200
        if self.path.startswith("/redirect"):
            status = 301
        host = self.headers.get("Host")
        body = f'{{"path":"{self.path}","host":"{host}","colour":"green"}}'.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Venta-Colour", "green")
        if status == 301:
            self.send_header("Location", "/elsewhere")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # quiet
        return


def serve(server: http.server.HTTPServer) -> Iterator[str]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def plain_server() -> Iterator[str]:
    yield from serve(http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler))


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1 (cryptography is an ansible dependency)."""
    directory = tmp_path_factory.mktemp("tls")
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(2)
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = {
        "ca": directory / "ca.crt",
        "cert": directory / "server.crt",
        "key": directory / "server.key",
    }
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files["key"].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


@pytest.fixture
def tls_server(tls_files: dict[str, Path]) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls_files["cert"], tls_files["key"])
    server.socket = context.wrap_socket(server.socket, server_side=True)
    yield from serve(server)


def test_fetch_plain_http_with_a_host_header(plain_server: str) -> None:
    got = fetch(f"http://{plain_server}/health?x=1", HttpOptions(headers={"Host": "api.example"}))
    assert got.status == 200
    assert got.header("x-venta-colour") == "green"
    assert '"host":"api.example"' in got.body
    assert '"path":"/health?x=1"' in got.body
    assert got.ms > 0


def test_fetch_does_not_follow_redirects(plain_server: str) -> None:
    assert fetch(f"http://{plain_server}/redirect", HttpOptions()).status == 301


def test_fetch_reports_a_refused_connection() -> None:
    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    port = server.server_address[1]
    server.server_close()
    got = fetch(f"http://127.0.0.1:{port}/", HttpOptions(request_timeout=2))
    assert got.status is None
    assert got.error is not None
    assert "ConnectionRefusedError" in got.error


def test_fetch_https_trusts_the_given_ca(tls_server: str, tls_files: dict[str, Path]) -> None:
    got = fetch(f"https://{tls_server}/health", HttpOptions(ca_path=str(tls_files["ca"])))
    assert (got.status, got.error) == (200, None)


def test_fetch_https_refuses_an_unknown_ca(tls_server: str) -> None:
    got = fetch(f"https://{tls_server}/health", HttpOptions())
    assert got.status is None
    assert got.error is not None
    assert "CERTIFICATE_VERIFY_FAILED" in got.error


def test_fetch_https_without_validation(tls_server: str) -> None:
    assert fetch(f"https://{tls_server}/health", HttpOptions(validate_certs=False)).status == 200


def test_gate_against_a_real_server(plain_server: str) -> None:
    settings = GateSettings(successes=3, interval=0.01, timeout=5)
    ok = wait_until_healthy(
        f"http://{plain_server}/health",
        Expectation(json_match={"colour": "green"}),
        HttpOptions(),
        settings,
    )
    assert (ok.ok, ok.attempts) == (True, 3)
    sick = wait_until_healthy(
        f"http://{plain_server}/sick", Expectation(), HttpOptions(), GateSettings(1, 0.05, 0.3)
    )
    assert not sick.ok
    assert sick.as_dict()["status"] == 503
    assert sick.attempts >= 2
