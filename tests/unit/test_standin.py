"""Unit tests of the stand-in service's pure logic (tools/standin/standin.py).

The venv has no aiohttp, asyncpg or redis: these tests cover what works without them
(configuration, redaction, the NATS handshake, migration planning, logs, the CLI). Network
traffic goes only to servers the tests start themselves on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import io
import json
import socket
import ssl
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from file_module import load_file

STANDIN_PATH = Path(__file__).resolve().parents[2] / "tools" / "standin" / "standin.py"
LOCALHOST = "127.0.0.1"


standin = load_file("standin", STANDIN_PATH)


def env(**values: str) -> dict[str, str]:
    return {"SERVICE_NAME": "geolocation", **values}


# --------------------------------------------------------------------------------------------
# Import and configuration
# --------------------------------------------------------------------------------------------


def test_imports_without_runtime_dependencies() -> None:
    for name in ("aiohttp", "asyncpg", "redis"):
        assert name not in sys.modules


def test_config_defaults() -> None:
    cfg = standin.load_config(env())
    assert cfg.service == "geolocation"
    assert cfg.version == "0.0.0"
    assert cfg.colour == ""
    assert cfg.port == 8080
    assert (cfg.health_path, cfg.ready_path) == ("/health", "/ready")
    assert cfg.check_timeout == 2.0
    assert cfg.drain_seconds == 30.0
    assert cfg.database_url is None
    assert cfg.nats_servers == ()
    assert not cfg.start_unhealthy
    assert not cfg.migration_fail


def test_config_version_precedence() -> None:
    assert standin.load_config(env(STANDIN_IMAGE_VERSION="1.1.0")).version == "1.1.0"
    both = env(STANDIN_IMAGE_VERSION="1.1.0", SERVICE_VERSION="2.0.0")
    assert standin.load_config(both).version == "2.0.0"


def test_config_full() -> None:
    cfg = standin.load_config(
        env(
            SERVICE_COLOUR="Green",
            PORT="9000",
            DOMAIN="venta.test",
            HEALTH_PATH="/healthz",
            READY_PATH="/readyz",
            DATABASE_URL="postgresql://u:p@db:5432/app",
            REDIS_URL="redis://:secret@cache:6379/0",
            NATS_URL="nats://a:b@n1:4222, tls://n2",
            PG_SSLMODE="require",
            STANDIN_CHECK_TIMEOUT="0.5",
            STANDIN_DRAIN_SECONDS="0",
            STANDIN_START_UNHEALTHY="yes",
            STANDIN_MIGRATION_FAIL="1",
        )
    )
    assert cfg.colour == "green"
    assert cfg.port == 9000
    assert cfg.identity == {
        "service": "geolocation",
        "version": "0.0.0",
        "colour": "green",
        "domain": "venta.test",
    }
    assert [s.display for s in cfg.nats_servers] == ["nats://n1:4222", "tls://n2:4222"]
    assert cfg.check_timeout == 0.5
    assert cfg.drain_seconds == 0
    assert cfg.start_unhealthy
    assert cfg.migration_fail
    assert set(cfg.secrets) == {"p", "secret", "b"}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"SERVICE_NAME": " "}, "SERVICE_NAME is required"),
        ({"SERVICE_COLOUR": "red"}, "SERVICE_COLOUR"),
        ({"PORT": "http"}, "PORT"),
        ({"PORT": "70000"}, "PORT"),
        ({"HEALTH_PATH": "health"}, "HEALTH_PATH"),
        ({"HEALTH_PATH": "/x", "READY_PATH": "/x"}, "must differ"),
        ({"READY_PATH": "/version"}, "must differ"),
        ({"STANDIN_START_UNHEALTHY": "maybe"}, "STANDIN_START_UNHEALTHY"),
        ({"STANDIN_CHECK_TIMEOUT": "-1"}, "STANDIN_CHECK_TIMEOUT"),
        ({"STANDIN_DRAIN_SECONDS": "nan"}, "STANDIN_DRAIN_SECONDS"),
        ({"PG_SSLMODE": "always"}, "PG_SSLMODE"),
        ({"NATS_URL": "http://n:4222"}, "unsupported scheme"),
        ({"NATS_URL": " , "}, "does not name any server"),
        ({"NATS_URL": "nats://n:port"}, "invalid port"),
    ],
)
def test_config_errors(values: dict[str, str], message: str) -> None:
    with pytest.raises(standin.ConfigError, match=message):
        standin.load_config(env(**values))


def test_config_error_never_echoes_url_secrets() -> None:
    with pytest.raises(standin.ConfigError) as caught:
        standin.load_config(env(DATABASE_URL="mysql://user:hunter2@db/app"))
    assert "hunter2" not in str(caught.value)
    assert "postgresql://" in str(caught.value)


def test_parse_nats_servers() -> None:
    servers = standin.parse_nats_servers(
        "nats://venta:p%40ss@n1:4223,tls://tok3n@n2,n3:4000,nats://[::1]"
    )
    assert servers[0] == standin.NatsServer("n1", 4223, False, "venta", "p@ss", None)
    assert servers[1] == standin.NatsServer("n2", 4222, True, None, None, "tok3n")
    assert servers[2] == standin.NatsServer("n3", 4000, False)
    assert servers[3].display == "nats://[::1]:4222"


# --------------------------------------------------------------------------------------------
# Redaction and error texts
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u:pw@db:5432/app", "postgresql://u:***@db:5432/app"),
        ("redis://:pw@cache:6379/0", "redis://:***@cache:6379/0"),
        ("nats://token@n1:4222", "nats://***@n1:4222"),
        ("https://user@example.invalid/", "https://user@example.invalid/"),
        ("postgresql://u:p@ss/word@db/app", "postgresql://u:***@db/app"),
        ("postgresql://u:p@s@db/app", "postgresql://u:***@db/app"),
        ("postgresql://db/app?user=u&password=pw", "postgresql://db/app?user=u&password=***"),
        ("http://plain.example.invalid:8080/x", "http://plain.example.invalid:8080/x"),
        ("not a url", "not a url"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert standin.redact_url(url) == expected


def test_redact_value_splits_url_lists_only() -> None:
    value = "nats://a:x@n1:4222,nats://n2:4222,tls://b:y@n3"
    assert standin.redact_value(value) == "nats://a:***@n1:4222,nats://n2:4222,tls://b:***@n3"
    assert standin.redact_value("redis://:pa,ss@cache") == "redis://:***@cache"
    assert standin.redact_value("a,b") == "a,b"


def test_config_env_shows_service_config_only_and_redacts() -> None:
    shown = standin.config_env(
        {
            "SERVICE_NAME": "cart",
            "DATABASE_URL": "postgresql://u:pw@db/app",
            "NATS_URL": "nats://a:b@n1,nats://c:d@n2",
            "API_TOKEN": "t",
            "JWT_SIGNING_KEY": "k",
            "DB_PASSWORD": "p",
            "client_secret": "lower-case is not config",
            "PATH": "/usr/bin",
            "HOME": "/nonexistent",
            "HOSTNAME": "abc",
            "LC_CTYPE": "C.UTF-8",
            "container": "docker",
        }
    )
    assert shown == {
        "API_TOKEN": "***",
        "DATABASE_URL": "postgresql://u:***@db/app",
        "DB_PASSWORD": "***",
        "JWT_SIGNING_KEY": "***",
        "NATS_URL": "nats://a:***@n1,nats://c:***@n2",
        "SERVICE_NAME": "cart",
    }


def test_scrub_removes_known_secrets_and_url_passwords() -> None:
    text = 'failed for "hunter2" at postgresql://u:other@db'
    assert standin.scrub(text, ["hunter2", "ab"]) == 'failed for "***" at postgresql://u:***@db'


def test_url_target_and_sslmode() -> None:
    assert standin.url_target("postgresql://u:p@db:5432/app") == "db:5432/app"
    assert standin.url_target("redis://cache") == "cache"
    url = "postgresql://u:p@db/app?sslmode=disable&application_name=x"
    with_mode = standin.dsn_with_sslmode(url, "require")
    assert with_mode == "postgresql://u:p@db/app?application_name=x&sslmode=require"
    assert standin.dsn_with_sslmode(url, None) == url


class InvalidPasswordError(Exception):
    """Same name as asyncpg's exception (classified by name, asyncpg is not imported)."""


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (ConnectionRefusedError(111, "Connect call failed"), "connection refused"),
        (OSError("Error 111 connecting to cache:6379. Connection refused."), "connection refused"),
        (socket.gaierror(-2, "Name or service not known"), "cannot resolve host"),
        (OSError("Error -2 connecting to cache:6379. -2."), "cannot resolve host"),
        (TimeoutError(), "timed out"),
        (InvalidPasswordError('password failed for user "u"'), "authentication failed"),
        (RuntimeError("WRONGPASS invalid username-password pair"), "authentication failed"),
        (ValueError("two\nlines"), "ValueError: two lines"),
        (ConnectionResetError(), "connection closed"),
    ],
)
def test_describe_error(exc: BaseException, expected: str) -> None:
    assert standin.describe_error(exc).startswith(expected)


# --------------------------------------------------------------------------------------------
# JSON logs
# --------------------------------------------------------------------------------------------


def test_format_log_is_one_json_line_with_utc_timestamp() -> None:
    plus_two = dt.timezone(dt.timedelta(hours=2))
    now = dt.datetime(2024, 5, 1, 14, 30, 0, 123456, tzinfo=plus_two)
    line = standin.format_log({"level": "info", "msg": "a\nb"}, now)
    assert "\n" not in line
    assert list(json.loads(line)) == ["ts", "level", "msg"]
    assert json.loads(line)["ts"] == "2024-05-01T12:30:00.123Z"


def test_json_logger_writes_identity_and_fields() -> None:
    stream = io.StringIO()
    log = standin.JsonLogger("cart", "1.1.0", "blue", stream)
    fields = standin.request_log_fields("GET", "/health", 200, 0.0012345, "rid-1", None)
    log.emit("info", "request", **fields)
    record = json.loads(stream.getvalue())
    assert record["ts"].endswith("Z")
    dt.datetime.fromisoformat(record["ts"].replace("Z", "+00:00"))
    del record["ts"]
    assert record == {
        "level": "info",
        "service": "cart",
        "version": "1.1.0",
        "colour": "blue",
        "event": "request",
        "method": "GET",
        "path": "/health",
        "status": 200,
        "duration_ms": 1.234,
        "request_id": "rid-1",
        "remote": "",
    }


def test_request_id_and_level() -> None:
    assert standin.request_id_from(" abc-1 ") == "abc-1"
    assert standin.request_id_from("x\x00y" + "z" * 200) == "xy" + "z" * 126
    generated = standin.request_id_from(None)
    assert len(generated) == 32
    assert generated != standin.request_id_from("")
    assert standin.log_level_for(200) == "info"
    assert standin.log_level_for(503) == "warning"


# --------------------------------------------------------------------------------------------
# Health and readiness logic
# --------------------------------------------------------------------------------------------


def test_unhealthy_reason() -> None:
    cfg = standin.load_config(env())
    assert standin.unhealthy_reason(cfg, exists=lambda path: False) is None
    reason = standin.unhealthy_reason(cfg, exists=lambda path: path == standin.UNHEALTHY_FILE)
    assert "standin-unhealthy" in reason
    forced = standin.load_config(env(STANDIN_START_UNHEALTHY="1"))
    assert "STANDIN_START_UNHEALTHY" in standin.unhealthy_reason(forced, lambda path: False)


def test_readiness_body() -> None:
    good = {"postgres": {"ok": True, "ms": 3.0}}
    assert standin.readiness_body(good, None) == {"status": "ready", "checks": good}
    bad = {**good, "redis": {"ok": False, "ms": 2.0, "error": "cache:6379: connection refused"}}
    body = standin.readiness_body(bad, None)
    assert body["status"] == "not ready"
    assert body["error"] == "redis: cache:6379: connection refused"
    assert standin.readiness_body({}, "shutting down")["error"] == "shutting down"


def test_no_dependencies_means_no_checks() -> None:
    cfg = standin.load_config(env())
    assert standin.configured_checks(cfg) == []
    assert asyncio.run(standin.run_checks(cfg)) == {}


def test_configured_checks_only_for_configured_dependencies() -> None:
    cfg = standin.load_config(env(REDIS_URL="redis://cache", NATS_URL="n1,n2"))
    checks = standin.configured_checks(cfg)
    assert [check.name for check in checks] == ["redis", "nats"]
    assert checks[1].budget == 2 * cfg.check_timeout


# --------------------------------------------------------------------------------------------
# NATS handshake against a fake server on 127.0.0.1
# --------------------------------------------------------------------------------------------


class FakeNats:
    """A NATS server that speaks just enough of the protocol for the handshake."""

    def __init__(
        self,
        user: str | None = "venta",
        password: str | None = "n4ts",
        tls: ssl.SSLContext | None = None,
        silent: bool = False,
        keep_open: bool = False,
    ) -> None:
        self.user = user
        self.password = password
        self.tls = tls
        self.silent = silent
        self.keep_open = keep_open
        self.connects: list[dict[str, Any]] = []
        self.client_pongs = 0
        self.client_pings = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if self.silent:
                await reader.read()
                return
            await self.converse(reader, writer)
        except (ConnectionError, ssl.SSLError, json.JSONDecodeError, IndexError):
            pass
        finally:
            writer.close()

    async def converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        info = {"server_id": "fake", "version": "2.9.11", "proto": 1, "max_payload": 1 << 20}
        info["auth_required"] = self.user is not None
        info["tls_required"] = self.tls is not None
        writer.write(f"INFO {json.dumps(info)}\r\n".encode())
        await writer.drain()
        if self.tls is not None:
            await writer.start_tls(self.tls)
        connect = json.loads((await reader.readline()).split(b" ", 1)[1])
        self.connects.append(connect)
        assert (await reader.readline()).strip() == b"PING"
        if (connect.get("user"), connect.get("pass")) != (self.user, self.password):
            writer.write(b"-ERR 'Authorization Violation'\r\n")
            await writer.drain()
            return
        writer.write(b"+OK\r\nPING\r\n")
        await writer.drain()
        if (await reader.readline()).strip() == b"PONG":
            self.client_pongs += 1
        writer.write(b"PONG\r\n")
        await writer.drain()
        while self.keep_open:
            line = (await reader.readline()).strip()
            if not line:
                return
            if line == b"PING":
                self.client_pings += 1
                writer.write(b"PONG\r\n")
                await writer.drain()


@contextlib.asynccontextmanager
async def fake_nats(server: FakeNats) -> Any:
    listener = await asyncio.start_server(server.handle, LOCALHOST, 0)
    try:
        yield listener.sockets[0].getsockname()[1]
    finally:
        listener.close()
        await listener.wait_closed()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOCALHOST, 0))
        return sock.getsockname()[1]


def test_nats_handshake_with_user_and_password() -> None:
    server = FakeNats()

    async def scenario() -> dict[str, Any]:
        async with fake_nats(server) as port:
            url = f"nats://venta:n4ts@{LOCALHOST}:{port}"
            return await standin.nats_handshake(standin.parse_nats_server(url), name="t")

    info = asyncio.run(scenario())
    assert info["server_id"] == "fake"
    assert server.connects[0]["user"] == "venta"
    assert server.connects[0]["pass"] == "n4ts"
    assert server.connects[0]["name"] == "t"
    assert server.connects[0]["tls_required"] is False
    assert server.client_pongs == 1  # the client answered the server's PING


def test_nats_handshake_reports_authorization_violation() -> None:
    async def scenario() -> None:
        async with fake_nats(FakeNats()) as port:
            url = f"nats://venta:wrong@{LOCALHOST}:{port}"
            await standin.nats_connect_any(standin.parse_nats_servers(url), timeout=2)

    with pytest.raises(standin.NatsError, match="Authorization Violation") as caught:
        asyncio.run(scenario())
    assert "wrong" not in str(caught.value)


def test_nats_tries_each_server_until_one_works() -> None:
    async def scenario() -> tuple[Any, int]:
        async with fake_nats(FakeNats()) as port:
            url = f"nats://venta:n4ts@{LOCALHOST}:{closed_port()},venta:n4ts@{LOCALHOST}:{port}"
            chosen, _info = await standin.nats_connect_any(standin.parse_nats_servers(url), 2)
            return chosen, port

    chosen, port = asyncio.run(scenario())
    assert chosen.port == port


def test_nats_all_servers_failing_lists_each_failure() -> None:
    async def scenario() -> None:
        async with fake_nats(FakeNats(silent=True)) as port:
            url = f"{LOCALHOST}:{closed_port()},{LOCALHOST}:{port}"
            await standin.nats_connect_any(standin.parse_nats_servers(url), timeout=0.3)

    with pytest.raises(standin.NatsError) as caught:
        asyncio.run(scenario())
    first, second = str(caught.value).split("; ")
    assert first.endswith("connection refused")
    assert second.endswith("timed out")


def test_nats_rejects_a_server_that_is_not_nats() -> None:
    async def not_nats(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await writer.drain()
        writer.close()

    async def scenario() -> None:
        listener = await asyncio.start_server(not_nats, LOCALHOST, 0)
        port = listener.sockets[0].getsockname()[1]
        try:
            await standin.nats_handshake(standin.NatsServer(LOCALHOST, port, False))
        finally:
            listener.close()

    with pytest.raises(standin.NatsError, match="expected INFO"):
        asyncio.run(scenario())


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 / localhost."""
    x509 = pytest.importorskip("cryptography.x509")
    import ipaddress

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder = tmp_path_factory.mktemp("tls")
    now = dt.datetime.now(dt.UTC)

    def build(subject: str, issuer: Any, issuer_key: Any, key: Any, ca: bool) -> Any:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(issuer or name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if ca:
            usage = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
            builder = builder.add_extension(usage, critical=True)
            builder = builder.add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
        else:
            alt = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(LOCALHOST))]
            builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                critical=False,
            )
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = build("standin-test-ca", None, ca_key, ca_key, ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = build("localhost", ca_cert.subject, ca_key, key, ca=False)
    pem = serialization.Encoding.PEM
    paths = {"ca": folder / "ca.pem", "cert": folder / "server.pem", "key": folder / "server.key"}
    paths["ca"].write_bytes(ca_cert.public_bytes(pem))
    paths["cert"].write_bytes(cert.public_bytes(pem))
    paths["key"].write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


def server_tls_context(files: dict[str, Path]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(files["cert"], files["key"])
    return context


@pytest.mark.parametrize("scheme", ["nats", "tls"])
def test_nats_upgrades_to_tls_when_required(tls_files: dict[str, Path], scheme: str) -> None:
    server = FakeNats(tls=server_tls_context(tls_files))

    async def scenario() -> None:
        async with fake_nats(server) as port:
            url = f"{scheme}://venta:n4ts@{LOCALHOST}:{port}"
            servers = standin.parse_nats_servers(url)
            await standin.nats_connect_any(servers, 2, ca_file=str(tls_files["ca"]))

    asyncio.run(scenario())
    assert server.connects[0]["tls_required"] is True


def test_nats_tls_without_the_ca_fails_verification(tls_files: dict[str, Path]) -> None:
    async def scenario() -> None:
        async with fake_nats(FakeNats(tls=server_tls_context(tls_files))) as port:
            servers = standin.parse_nats_servers(f"tls://venta:n4ts@{LOCALHOST}:{port}")
            await standin.nats_connect_any(servers, 2)

    with pytest.raises(standin.NatsError, match="certificate verification failed"):
        asyncio.run(scenario())


# --------------------------------------------------------------------------------------------
# Migration planning
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("service", "table"),
    [
        ("geolocation", "geolocation_records"),
        ("Geo-Location", "geo_location_records"),
        ("order.svc v2", "order_svc_v2_records"),
        ("9lives", "s_9lives_records"),
    ],
)
def test_records_table(service: str, table: str) -> None:
    assert standin.records_table(service) == table


def test_records_table_limits() -> None:
    assert len(standin.records_table("x" * 100)) <= 63
    with pytest.raises(standin.MigrationError, match="no usable characters"):
        standin.records_table("---")


@pytest.mark.parametrize(
    ("version", "parsed"),
    [
        ("1.1.0", (1, 1, 0)),
        ("v2", (2, 0, 0)),
        ("1.10.2-rc.1", (1, 10, 2)),
        ("1.2.3.4", (1, 2, 3, 4)),
    ],
)
def test_parse_version(version: str, parsed: tuple[int, ...]) -> None:
    assert standin.parse_version(version) == parsed


@pytest.mark.parametrize("version", ["latest", "", "1.x"])
def test_parse_version_rejects(version: str) -> None:
    with pytest.raises(standin.MigrationError, match="is not a version"):
        standin.parse_version(version)


def test_plan_on_an_empty_database() -> None:
    plan = standin.plan_migration("geolocation", "1.0.0", ledger_exists=False, table_exists=False)
    assert [action.sql for action in plan.actions] == [
        standin.LEDGER_SQL,
        standin.baseline_sql("geolocation_records"),
    ]
    assert plan.record == ("1.0.0",)
    assert plan.changed
    assert "primary key (service, version)" in standin.LEDGER_SQL
    assert "id bigserial primary key" in plan.actions[1].sql
    assert "payload text" in plan.actions[1].sql


def test_plan_fresh_to_1_1_0_adds_note() -> None:
    plan = standin.plan_migration("cart", "1.1.0", ledger_exists=False, table_exists=False)
    assert [a.description for a in plan.actions][-1] == "add column note"
    assert plan.actions[-1].sql == 'alter table "cart_records" add column if not exists note text'
    assert plan.record == ("1.1.0",)


def test_plan_upgrade_from_1_0_0() -> None:
    plan = standin.plan_migration("cart", "1.1.0", applied={"1.0.0"})
    assert [a.version for a in plan.actions] == ["1.1.0"]
    assert plan.record == ("1.1.0",)


def test_plan_is_idempotent() -> None:
    assert not standin.plan_migration("cart", "1.1.0", applied={"1.0.0", "1.1.0"}).changed
    assert not standin.plan_migration("cart", "1.0.0", applied={"1.0.0", "1.1.0"}).changed


def test_plan_records_new_version_without_steps() -> None:
    plan = standin.plan_migration("cart", "1.2.0", applied={"1.0.0", "1.1.0"})
    assert plan.actions == ()
    assert plan.record == ("1.2.0",)


def test_plan_recreates_a_dropped_table() -> None:
    plan = standin.plan_migration("cart", "1.1.0", applied={"1.1.0"}, table_exists=False)
    assert [a.description for a in plan.actions] == ["create table cart_records"]
    assert plan.record == ()


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_missing_service_name_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert standin.main(["serve"], env={}) == 2
    out, err = capsys.readouterr()
    assert json_lines(out)[0]["event"] == "config_error"
    assert "SERVICE_NAME is required" in err


def test_migrate_without_database_url(capsys: pytest.CaptureFixture[str]) -> None:
    assert standin.main(["migrate"], env=env(SERVICE_VERSION="1.1.0")) == 1
    out, err = capsys.readouterr()
    assert json_lines(out)[-1]["event"] == "migration_failed"
    assert err.strip() == "standin migrate: migration failed: DATABASE_URL is not set"


def test_migrate_rejects_a_non_version(capsys: pytest.CaptureFixture[str]) -> None:
    values = env(SERVICE_VERSION="latest", DATABASE_URL="postgresql://u:p@127.0.0.1:1/x")
    assert standin.main(["migrate"], env=values) == 1
    assert "is not a version" in capsys.readouterr().err


def test_check_ready_without_dependencies(capsys: pytest.CaptureFixture[str]) -> None:
    assert standin.main(["check-ready"], env=env()) == 0
    record = json_lines(capsys.readouterr().out)[-1]
    assert (record["status"], record["checks"]) == ("ready", {})


def test_check_ready_with_nats(capsys: pytest.CaptureFixture[str]) -> None:
    server = FakeNats()
    results: list[int] = []

    async def scenario() -> None:
        async with fake_nats(server) as port:
            values = env(NATS_URL=f"nats://venta:n4ts@{LOCALHOST}:{port}")
            bad = env(NATS_URL=f"nats://venta:n0pe-pw@{LOCALHOST}:{port}")
            loop = asyncio.get_running_loop()
            for config in (values, bad):
                results.append(await loop.run_in_executor(None, check_ready, config))

    asyncio.run(scenario())
    assert results == [0, 1]
    good, bad = json_lines(capsys.readouterr().out)
    assert good["checks"]["nats"]["ok"] is True
    assert bad["checks"]["nats"]["ok"] is False
    assert "Authorization Violation" in bad["error"]
    assert "n0pe-pw" not in json.dumps(bad)


def check_ready(values: dict[str, str]) -> int:
    return standin.main(["check-ready"], env=values)


class HealthHandler(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer((LOCALHOST, 0), HealthHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_health_command(
    health_server: ThreadingHTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = str(health_server.server_address[1])
    values = {"PORT": port, "HEALTH_PATH": "/healthz"}
    assert standin.main(["health"], env=values) == 0
    monkeypatch.setattr(HealthHandler, "status", 503)
    assert standin.main(["health"], env=values) == 1
    assert standin.main(["health"], env={"PORT": port}) == 1  # 404 on /health
    assert standin.main(["health"], env={"PORT": str(closed_port())}) == 1


def test_readiness_checks_reuse_a_result_and_share_a_run() -> None:
    calls = []
    now = [100.0]

    async def runner(cfg: object) -> dict[str, dict[str, object]]:
        calls.append(now[0])
        await asyncio.sleep(0.01)
        return {"nats": {"ok": True, "ms": 1.0, "run": len(calls)}}

    async def scenario() -> list[int]:
        cache = standin.ReadinessChecks(
            standin.load_config(env(STANDIN_READY_CACHE_SECONDS="3")), runner, lambda: now[0]
        )
        runs = [r["nats"]["run"] for r in await asyncio.gather(cache.get(), cache.get())]
        now[0] += 2.9
        runs.append((await cache.get())["nats"]["run"])
        now[0] += 0.2
        runs.append((await cache.get())["nats"]["run"])
        return runs

    assert asyncio.run(scenario()) == [1, 1, 1, 2]
    assert len(calls) == 2


def test_readiness_checks_without_cache_run_every_time() -> None:
    async def runner(cfg: object) -> dict[str, dict[str, object]]:
        return {}

    async def scenario() -> int:
        cache = standin.ReadinessChecks(
            standin.load_config(env(STANDIN_READY_CACHE_SECONDS="0")), runner
        )
        count = 0
        original = cache._run

        async def counted() -> dict[str, dict[str, object]]:
            nonlocal count
            count += 1
            return await original()

        cache._run = counted  # type: ignore[method-assign]
        for _attempt in range(3):
            await cache.get()
        return count

    assert asyncio.run(scenario()) == 3


def test_readiness_checks_drop_a_stuck_run() -> None:
    runs = []

    async def runner(cfg: object) -> dict[str, dict[str, object]]:
        runs.append(1)
        if len(runs) == 1:
            await asyncio.sleep(3600)  # stuck
        return {"redis": {"ok": True, "ms": 1.0}}

    async def scenario() -> tuple[dict[str, dict[str, object]], dict[str, dict[str, object]]]:
        cache = standin.ReadinessChecks(
            standin.load_config(env(REDIS_URL="redis://r:6379", STANDIN_CHECK_TIMEOUT="0.05")),
            runner,
        )
        first = await cache.get()
        second = await cache.get()
        return first, second

    first, second = asyncio.run(scenario())
    assert first["redis"]["ok"] is False
    assert "did not finish within" in str(first["redis"]["error"])
    assert second == {"redis": {"ok": True, "ms": 1.0}}
    assert len(runs) == 2


def test_readiness_checks_do_not_reuse_a_failure() -> None:
    results = [{"redis": {"ok": False, "ms": 1.0}}, {"redis": {"ok": True, "ms": 1.0}}]

    async def runner(cfg: object) -> dict[str, dict[str, object]]:
        return results.pop(0)

    async def scenario() -> list[bool]:
        cache = standin.ReadinessChecks(
            standin.load_config(env(REDIS_URL="redis://r:6379")), runner
        )
        return [bool((await cache.get())["redis"]["ok"]) for _attempt in range(3)]

    assert asyncio.run(scenario()) == [False, True, True]


def test_held_nats_connection_is_reused_for_each_check() -> None:
    server = FakeNats(keep_open=True)

    async def scenario() -> None:
        async with fake_nats(server) as port:
            cfg = standin.load_config(env(NATS_URL=f"nats://venta:n4ts@{LOCALHOST}:{port}"))
            held = standin.HeldConnections(cfg)
            for _attempt in range(3):
                await held.nats_ping()
            await held.close()

    asyncio.run(scenario())
    assert len(server.connects) == 1
    assert server.client_pings == 2


def test_held_nats_connection_closed_by_the_server_is_opened_again() -> None:
    server = FakeNats(keep_open=False)

    async def scenario() -> None:
        async with fake_nats(server) as port:
            cfg = standin.load_config(env(NATS_URL=f"nats://venta:n4ts@{LOCALHOST}:{port}"))
            held = standin.HeldConnections(cfg)
            await held.nats_ping()
            await asyncio.sleep(0.05)
            await held.nats_ping()
            await held.close()

    asyncio.run(scenario())
    assert len(server.connects) == 2


def test_held_nats_check_fails_when_the_server_is_gone() -> None:
    cfg = standin.load_config(env(NATS_URL=f"nats://venta:n4ts@{LOCALHOST}:{closed_port()}"))

    async def scenario() -> dict[str, dict[str, Any]]:
        return await standin.run_checks(cfg, standin.HeldConnections(cfg))

    result = asyncio.run(scenario())
    assert result["nats"]["ok"] is False
