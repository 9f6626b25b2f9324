"""Venta stand-in service.

One small HTTP service that plays any of the eight Venta backend services in the lab: liveness
and readiness (readiness really connects to Postgres, Redis and NATS), identity endpoints, a
WebSocket echo, JSON logs, graceful shutdown and a real, idempotent database migration.
It is configured only by environment variables (see README.md beside this file).

Only the standard library is imported at module level. aiohttp, asyncpg and redis are imported
inside the functions that need them, so the pure logic (configuration, URL redaction, the NATS
handshake, migration planning, log formatting) can be imported and tested without them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import math
import os
import re
import signal
import socket
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from aiohttp import web

UNHEALTHY_FILE = "/tmp/standin-unhealthy"
DEFAULT_VERSION = "0.0.0"
COLOURS = frozenset({"blue", "green", ""})
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"", "0", "false", "no", "off"})
REDACTED = "***"
# Routes the service always serves; HEALTH_PATH and READY_PATH must not take them over.
FIXED_ROUTES = frozenset({"/", "/version", "/info", "/ws", "/delay"})
# Process variables that are not service configuration and so are not shown by /info.
OS_ENV_VARS = frozenset(
    {
        "PATH",
        "HOME",
        "HOSTNAME",
        "PWD",
        "OLDPWD",
        "SHLVL",
        "TERM",
        "USER",
        "LOGNAME",
        "SHELL",
        "LANG",
        "LANGUAGE",
        "LC_ALL",
        "TZ",
        "DEBIAN_FRONTEND",
        "PYTHONDONTWRITEBYTECODE",
        "PYTHONUNBUFFERED",
    }
)
SECRET_NAME_PARTS = ("PASSWORD", "PASSWD", "SECRET", "TOKEN", "KEY", "CREDENTIAL")
ENV_NAME_RE = re.compile(r"^[A-Z][A-Z0-9_]*$")
# scheme://user:PASSWORD@ up to the last @ of the token: passwords may hold unencoded @ or /.
URL_USERINFO_RE = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*:)\S*@")
REFUSED_RE = re.compile(rf"Connection refused|(?:Errno|Error) {errno.ECONNREFUSED}\b")
# redis-py reports getaddrinfo failures as "Error -2 connecting to host:port."
RESOLVE_RE = re.compile(r"Error -[235] connecting to ")
QUERY_SECRET_RE = re.compile(r"(?i)(?P<head>[?&](?:password|passwd|pass|token|secret)=)[^&\s]*")
NATS_SCHEMES = ("nats", "tls")
NATS_DEFAULT_PORT = 4222
PG_SCHEMES = ("postgres", "postgresql")
REDIS_SCHEMES = ("redis", "rediss", "unix")
SSLMODES = frozenset({"disable", "allow", "prefer", "require", "verify-ca", "verify-full"})
MAX_LINE = 64 * 1024
MAX_DELAY_MS = 60_000
SHUTDOWN_MESSAGE = b"server shutting down"
WS_GOING_AWAY = 1001  # WebSocket close code for "server going away"
MIGRATION_LOCK_KEY = 0x56454E5441  # "VENTA": serialises concurrent `standin migrate` runs


class ConfigError(ValueError):
    """The environment does not describe a valid service configuration."""


class NatsError(ConnectionError):
    """The NATS server refused the handshake or spoke something other than NATS."""


class MigrationError(RuntimeError):
    """A migration failed; the message is the one-line error shown to the operator."""


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NatsServer:
    """One entry of NATS_URL."""

    host: str
    port: int
    tls: bool
    user: str | None = None
    password: str | None = None
    token: str | None = None

    @property
    def display(self) -> str:
        """The server without credentials, for logs and errors."""
        scheme = "tls" if self.tls else "nats"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"


@dataclass(frozen=True)
class Config:
    """The service configuration, read once from the environment."""

    service: str
    version: str = DEFAULT_VERSION
    colour: str = ""
    port: int = 8080
    domain: str = ""
    health_path: str = "/health"
    ready_path: str = "/ready"
    database_url: str | None = None
    redis_url: str | None = None
    nats_servers: tuple[NatsServer, ...] = ()
    nats_ca_file: str | None = None
    pg_sslmode: str | None = None
    check_timeout: float = 2.0
    ready_cache_seconds: float = 3.0
    drain_seconds: float = 30.0
    migrate_timeout: float = 10.0
    start_unhealthy: bool = False
    migration_fail: bool = False

    @property
    def identity(self) -> dict[str, str]:
        return {
            "service": self.service,
            "version": self.version,
            "colour": self.colour,
            "domain": self.domain,
        }

    @property
    def secrets(self) -> tuple[str, ...]:
        """Passwords and tokens found in the dependency URLs, to scrub from error texts."""
        found = [url_password(self.database_url), url_password(self.redis_url)]
        for server in self.nats_servers:
            found += [server.password, server.token]
        return tuple(sorted({s for s in found if s}, key=len, reverse=True))


def env_value(env: Mapping[str, str], name: str) -> str | None:
    """The stripped value of a variable, or None when it is unset or empty."""
    value = env.get(name, "").strip()
    return value or None


def env_bool(env: Mapping[str, str], name: str) -> bool:
    value = env.get(name, "").strip().lower()
    if value in TRUE_WORDS:
        return True
    if value in FALSE_WORDS:
        return False
    raise ConfigError(f"{name} must be one of 1/0, true/false, yes/no, on/off")


def env_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env_value(env, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if value < 0 or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite, non-negative number")
    return value


def env_port(env: Mapping[str, str]) -> int:
    raw = env_value(env, "PORT") or "8080"
    if not raw.isdigit() or not 1 <= int(raw) <= 65535:
        raise ConfigError(f"PORT must be an integer between 1 and 65535, got {raw!r}")
    return int(raw)


def env_path(env: Mapping[str, str], name: str, default: str) -> str:
    value = env_value(env, name) or default
    if not value.startswith("/") or any(c.isspace() for c in value):
        raise ConfigError(f"{name} must be an absolute URL path like {default}, got {value!r}")
    return value


def check_url_scheme(name: str, url: str | None, schemes: Iterable[str]) -> str | None:
    """Return url when its scheme is one of schemes; never echo the URL (it holds secrets)."""
    if url is None:
        return None
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    allowed = tuple(schemes)
    if scheme not in allowed:
        wanted = ", ".join(f"{s}://" for s in allowed)
        raise ConfigError(f"{name} must start with one of {wanted}")
    return url


def load_config(env: Mapping[str, str]) -> Config:
    """Build the Config from environment variables; raise ConfigError when they are invalid."""
    service = env_value(env, "SERVICE_NAME")
    if service is None:
        raise ConfigError("SERVICE_NAME is required")
    colour = (env_value(env, "SERVICE_COLOUR") or "").lower()
    if colour not in COLOURS:
        raise ConfigError(f"SERVICE_COLOUR must be blue, green or empty, got {colour!r}")
    health_path = env_path(env, "HEALTH_PATH", "/health")
    ready_path = env_path(env, "READY_PATH", "/ready")
    if health_path == ready_path or {health_path, ready_path} & FIXED_ROUTES:
        fixed = ", ".join(sorted(FIXED_ROUTES))
        raise ConfigError(f"HEALTH_PATH and READY_PATH must differ and not be one of {fixed}")
    sslmode = env_value(env, "PG_SSLMODE")
    if sslmode is not None and sslmode not in SSLMODES:
        raise ConfigError(f"PG_SSLMODE must be one of {', '.join(sorted(SSLMODES))}")
    nats_url = env_value(env, "NATS_URL")
    return Config(
        service=service,
        version=env_value(env, "SERVICE_VERSION")
        or env_value(env, "STANDIN_IMAGE_VERSION")
        or DEFAULT_VERSION,
        colour=colour,
        port=env_port(env),
        domain=env_value(env, "DOMAIN") or "",
        health_path=health_path,
        ready_path=ready_path,
        database_url=check_url_scheme("DATABASE_URL", env_value(env, "DATABASE_URL"), PG_SCHEMES),
        redis_url=check_url_scheme("REDIS_URL", env_value(env, "REDIS_URL"), REDIS_SCHEMES),
        nats_servers=parse_nats_servers(nats_url) if nats_url else (),
        nats_ca_file=env_value(env, "NATS_CA_FILE"),
        pg_sslmode=sslmode,
        check_timeout=env_float(env, "STANDIN_CHECK_TIMEOUT", 2.0) or 2.0,
        ready_cache_seconds=env_float(env, "STANDIN_READY_CACHE_SECONDS", 3.0),
        drain_seconds=env_float(env, "STANDIN_DRAIN_SECONDS", 30.0),
        migrate_timeout=env_float(env, "STANDIN_MIGRATE_TIMEOUT", 10.0) or 10.0,
        start_unhealthy=env_bool(env, "STANDIN_START_UNHEALTHY"),
        migration_fail=env_bool(env, "STANDIN_MIGRATION_FAIL"),
    )


# --------------------------------------------------------------------------------------------
# URLs and secrets
# --------------------------------------------------------------------------------------------


def url_password(url: str | None) -> str | None:
    """The decoded password of a URL, if it has one."""
    if not url:
        return None
    try:
        password = urllib.parse.urlsplit(url).password
    except ValueError:
        return None
    return urllib.parse.unquote(password) if password else None


def parse_nats_servers(value: str) -> tuple[NatsServer, ...]:
    """Parse NATS_URL: one server or a comma-separated list; a bare host:port means nats://."""
    servers = [parse_nats_server(item.strip()) for item in value.split(",") if item.strip()]
    if not servers:
        raise ConfigError("NATS_URL does not name any server")
    return tuple(servers)


def parse_nats_server(item: str) -> NatsServer:
    if "://" not in item:
        item = f"nats://{item}"
    parts = urllib.parse.urlsplit(item)
    scheme = parts.scheme.lower()
    if scheme not in NATS_SCHEMES:
        raise ConfigError(f"NATS_URL: unsupported scheme {scheme!r} (use nats:// or tls://)")
    try:
        port = parts.port or NATS_DEFAULT_PORT
    except ValueError:
        raise ConfigError("NATS_URL: invalid port") from None
    if not parts.hostname:
        raise ConfigError("NATS_URL: missing host")
    user = urllib.parse.unquote(parts.username) if parts.username else None
    password = urllib.parse.unquote(parts.password) if parts.password is not None else None
    token = None
    if user is not None and password is None:
        user, token = None, user  # nats://TOKEN@host is token authentication
    return NatsServer(parts.hostname, port, scheme == "tls", user, password, token)


def redact_url(url: str) -> str:
    """Replace the password of one URL (or the token of a nats:// URL) with ***."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        parts = None
    if parts is not None and "@" in parts.netloc:
        userinfo, _at, hostport = parts.netloc.rpartition("@")
        user, colon, _secret = userinfo.partition(":")
        if colon:
            userinfo = f"{user}:{REDACTED}"
        elif parts.scheme.lower() in NATS_SCHEMES:
            userinfo = REDACTED
        url = urllib.parse.urlunsplit(parts._replace(netloc=f"{userinfo}@{hostport}"))
    url = URL_USERINFO_RE.sub(rf"\g<head>{REDACTED}@", url)
    return QUERY_SECRET_RE.sub(rf"\g<head>{REDACTED}", url)


def redact_value(value: str) -> str:
    """Redact the passwords of every URL in a value; a comma-separated URL list is split."""
    pieces = value.split(",")
    if len(pieces) > 1 and all("://" in piece for piece in pieces):
        return ",".join(redact_url(piece) for piece in pieces)
    return redact_url(value)


def is_secret_name(name: str) -> bool:
    upper = name.upper()
    return any(part in upper for part in SECRET_NAME_PARTS)


def config_env(env: Mapping[str, str]) -> dict[str, str]:
    """The UPPER_CASE process variables that configure the service, secrets redacted."""
    shown = {}
    for name in sorted(env):
        if not ENV_NAME_RE.match(name) or name in OS_ENV_VARS or name.startswith("LC_"):
            continue
        shown[name] = REDACTED if is_secret_name(name) else redact_value(env[name])
    return shown


def scrub(text: str, secrets: Iterable[str]) -> str:
    """Remove known secrets and URL passwords from a message (error texts of client libs)."""
    for secret in secrets:
        if len(secret) >= 3:
            text = text.replace(secret, REDACTED)
    return redact_value(text)


def url_target(url: str | None) -> str:
    """host:port/path of a URL without credentials, for messages."""
    if not url:
        return ""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or "localhost"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(unparsable URL)"
    return f"{host}{port}{parts.path}"


def dsn_with_sslmode(url: str, sslmode: str | None) -> str:
    """DATABASE_URL with sslmode=PG_SSLMODE set in its query (replacing one already there)."""
    if not sslmode:
        return url
    parts = urllib.parse.urlsplit(url)
    query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query) if k != "sslmode"]
    query.append(("sslmode", sslmode))
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def describe_error(exc: BaseException) -> str:
    """A short, operator-friendly description of a connection or query failure."""
    name = type(exc).__name__
    text = " ".join(str(exc).split())  # one line, whatever the library put in it
    if isinstance(exc, NatsError):
        return text
    if isinstance(exc, ConnectionRefusedError) or REFUSED_RE.search(text):
        return "connection refused"
    if isinstance(exc, socket.gaierror) or RESOLVE_RE.search(text):
        detail = exc.strerror if isinstance(exc, socket.gaierror) else None
        return f"cannot resolve host ({detail or 'name lookup failed'})"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed: {exc.verify_message or text}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or text}"
    if name in (
        "InvalidPasswordError",
        "AuthenticationError",
        "AuthenticationWrongNumberOfArgsError",
    ):
        return f"authentication failed: {text}"
    if text.startswith(("WRONGPASS", "NOAUTH")):
        return f"authentication failed: {text}"
    if name == "InvalidAuthorizationSpecificationError":
        return f"authorization failed: {text}"
    if name == "InvalidCatalogNameError":
        return f"database does not exist: {text}"
    if isinstance(exc, ConnectionError) and not text:
        return "connection closed"
    return f"{name}: {text}" if text else name


# --------------------------------------------------------------------------------------------
# JSON logs
# --------------------------------------------------------------------------------------------


def utc_timestamp(now: datetime) -> str:
    """ISO 8601 in UTC with milliseconds and a Z suffix."""
    return now.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def format_log(record: Mapping[str, Any], now: datetime) -> str:
    """One JSON log line: ts first, then the record's fields in order."""
    line = {"ts": utc_timestamp(now), **record}
    return json.dumps(line, separators=(",", ":"), default=str, ensure_ascii=False)


@dataclass(frozen=True)
class JsonLogger:
    """Writes JSON log lines carrying the service identity."""

    service: str
    version: str
    colour: str
    stream: TextIO | None = None

    @classmethod
    def for_config(cls, cfg: Config, stream: TextIO | None = None) -> JsonLogger:
        return cls(cfg.service, cfg.version, cfg.colour, stream)

    def emit(self, level: str, event: str, msg: str = "", **fields: Any) -> None:
        record = {
            "level": level,
            "service": self.service,
            "version": self.version,
            "colour": self.colour,
            "event": event,
            **({"msg": msg} if msg else {}),
            **fields,
        }
        stream = self.stream or sys.stdout
        with contextlib.suppress(OSError, ValueError):
            stream.write(format_log(record, datetime.now(UTC)) + "\n")
            stream.flush()


def request_log_fields(
    method: str,
    path: str,
    status: int,
    duration_s: float,
    request_id: str,
    remote: str | None,
) -> dict[str, Any]:
    return {
        "method": method,
        "path": path,
        "status": status,
        "duration_ms": round(duration_s * 1000, 3),
        "request_id": request_id,
        "remote": remote or "",
    }


def request_id_from(header: str | None) -> str:
    """The caller's X-Request-ID when it is sane, else a fresh one."""
    if header:
        value = "".join(ch for ch in header.strip() if ch.isprintable())[:128]
        if value:
            return value
    return uuid.uuid4().hex


def log_level_for(status: int) -> str:
    return "warning" if status >= 500 else "info"


# --------------------------------------------------------------------------------------------
# NATS handshake (text protocol: INFO, optional TLS upgrade, CONNECT, PING -> PONG)
# --------------------------------------------------------------------------------------------


def parse_info(line: str) -> dict[str, Any]:
    """Parse the server's greeting `INFO {...}`."""
    op, _space, payload = line.partition(" ")
    if op.upper() != "INFO":
        raise NatsError(f"expected INFO from server, got {line[:40]!r}")
    try:
        info = json.loads(payload)
    except json.JSONDecodeError:
        raise NatsError("server sent a malformed INFO") from None
    if not isinstance(info, dict):
        raise NatsError("server sent a malformed INFO")
    return info


def wants_tls(server: NatsServer, info: Mapping[str, Any]) -> bool:
    return server.tls or bool(info.get("tls_required"))


def connect_command(server: NatsServer, name: str, tls: bool) -> bytes:
    """The CONNECT line with the credentials of the URL."""
    options: dict[str, Any] = {
        "verbose": False,
        "pedantic": False,
        "tls_required": tls,
        "name": name,
        "lang": "python",
        "version": "standin",
        "protocol": 1,
    }
    if server.user is not None:
        options["user"] = server.user
        options["pass"] = server.password or ""
    if server.token is not None:
        options["auth_token"] = server.token
    return f"CONNECT {json.dumps(options, separators=(',', ':'))}\r\n".encode()


def nats_tls_context(ca_file: str | None) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=ca_file) if ca_file else ssl.create_default_context()


async def read_line(reader: asyncio.StreamReader) -> str:
    line = await reader.readline()
    if not line:
        raise NatsError("connection closed by server")
    if not line.endswith(b"\n"):
        raise NatsError("server line too long or truncated")
    return line.decode("utf-8", "replace").rstrip("\r\n")


async def await_pong(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read until PONG; answer server PINGs, ignore +OK and INFO updates, fail on -ERR."""
    while True:
        line = await read_line(reader)
        op = line.split(" ", 1)[0].upper()
        if op == "PONG":
            return
        if op == "-ERR":
            raise NatsError(f"server error: {line[4:].strip().strip(chr(39))}")
        if op == "PING":
            writer.write(b"PONG\r\n")
            await writer.drain()
        elif op not in ("+OK", "INFO"):
            raise NatsError(f"unexpected reply {line[:40]!r}")


NatsSession = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def nats_open(
    server: NatsServer, ca_file: str | None = None, name: str = "standin"
) -> tuple[NatsSession, dict[str, Any]]:
    """Open a NATS session with server and check it answers PING with PONG; keep it open.

    Returns the session and the server's INFO. Raises NatsError, OSError or ssl.SSLError.
    """
    reader, writer = await asyncio.open_connection(server.host, server.port, limit=MAX_LINE)
    try:
        info = parse_info(await read_line(reader))
        tls = wants_tls(server, info)
        if tls:
            await writer.start_tls(nats_tls_context(ca_file), server_hostname=server.host)
        writer.write(connect_command(server, name, tls) + b"PING\r\n")
        await writer.drain()
        await await_pong(reader, writer)
    except BaseException:
        nats_close((reader, writer))
        raise
    return (reader, writer), info


def nats_close(session: NatsSession) -> None:
    session[1].close()


async def nats_handshake(
    server: NatsServer, ca_file: str | None = None, name: str = "standin"
) -> dict[str, Any]:
    """Open a NATS session with server, check it answers PING with PONG, close it.

    Returns the server's INFO. Raises NatsError, OSError or ssl.SSLError on failure.
    """
    session, info = await nats_open(server, ca_file, name)
    nats_close(session)
    with contextlib.suppress(Exception):
        await session[1].wait_closed()
    return info


async def nats_open_any(
    servers: Iterable[NatsServer],
    timeout: float,
    ca_file: str | None = None,
    name: str = "standin",
) -> tuple[NatsServer, NatsSession]:
    """Open a session with the first server that completes (each within timeout)."""
    failures = []
    for server in servers:
        try:
            session, _info = await asyncio.wait_for(nats_open(server, ca_file, name), timeout)
        except (OSError, NatsError, ssl.SSLError, TimeoutError, ValueError) as exc:
            failures.append(f"{server.display}: {describe_error(exc)}")
        else:
            return server, session
    raise NatsError("; ".join(failures) or "no NATS server configured")


async def nats_connect_any(
    servers: Iterable[NatsServer],
    timeout: float,
    ca_file: str | None = None,
    name: str = "standin",
) -> tuple[NatsServer, dict[str, Any]]:
    """Try each server in turn (each within timeout); return the first that completes."""
    failures = []
    for server in servers:
        try:
            info = await asyncio.wait_for(nats_handshake(server, ca_file, name), timeout)
        except (OSError, NatsError, ssl.SSLError, TimeoutError, ValueError) as exc:
            failures.append(f"{server.display}: {describe_error(exc)}")
        else:
            return server, info
    raise NatsError("; ".join(failures) or "no NATS server configured")


# --------------------------------------------------------------------------------------------
# Readiness checks
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    name: str
    target: str
    probe: Callable[[], Awaitable[None]]
    budget: float


async def quiet_close(closing: Awaitable[Any], timeout: float) -> None:
    """Await a close within timeout, ignoring its failure (the connection is dropped anyway)."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(closing, timeout)


class HeldConnections:
    """The dependency connections /ready checks, held between probes like a real service's.

    A Node service answers /ready from its PostgreSQL pool, Redis client and NATS connection; it
    does not open new connections per probe. The stand-in opens one of each at the first check
    and keeps it: a check is `select 1`, a Redis PING, a NATS PING/PONG on the held connection.
    A held connection whose check fails is dropped and the check runs once more on a fresh one,
    so a connection the server closed while idle (NATS drops a client that missed its pings)
    costs a reconnect, not a failed probe; a dependency that is down still fails the check.
    """

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.pg: Any = None
        self.redis: Any = None
        self.nats: NatsSession | None = None
        self.locks = {name: asyncio.Lock() for name in ("postgres", "redis", "nats")}
        self.closing: set[asyncio.Future[None]] = set()

    @staticmethod
    async def _checked(
        held: bool, check: Callable[[], Awaitable[None]], drop: Callable[[], None]
    ) -> None:
        """Run check; if it fails on a held connection, drop it and check once more afresh."""
        try:
            await check()
        except Exception:
            drop()
            if not held:
                raise
            await check()

    async def postgres(self) -> None:
        timeout = self.cfg.check_timeout

        async def check() -> None:
            if self.pg is None:
                import asyncpg

                dsn = dsn_with_sslmode(self.cfg.database_url or "", self.cfg.pg_sslmode)
                self.pg = await asyncpg.connect(dsn=dsn, timeout=timeout)
            value = await self.pg.fetchval("select 1", timeout=timeout)
            if value != 1:
                raise RuntimeError(f"select 1 returned {value!r}")

        def drop() -> None:
            conn, self.pg = self.pg, None
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.terminate()

        async with self.locks["postgres"]:
            await self._checked(self.pg is not None, check, drop)

    async def redis_ping(self) -> None:
        timeout = self.cfg.check_timeout

        async def check() -> None:
            if self.redis is None:
                from redis import asyncio as aioredis

                self.redis = aioredis.from_url(
                    self.cfg.redis_url,
                    socket_connect_timeout=timeout,
                    socket_timeout=timeout,
                    retry_on_timeout=False,
                )
            if not await self.redis.ping():
                raise RuntimeError("PING did not return PONG")

        def drop() -> None:
            client, self.redis = self.redis, None
            if client is not None:
                task = asyncio.ensure_future(
                    quiet_close(client.connection_pool.disconnect(), timeout)
                )
                self.closing.add(task)
                task.add_done_callback(self.closing.discard)

        async with self.locks["redis"]:
            await self._checked(self.redis is not None, check, drop)

    async def nats_ping(self) -> None:
        async def check() -> None:
            if self.nats is None:
                name = f"standin-{self.cfg.service}-ready"
                _server, self.nats = await nats_open_any(
                    self.cfg.nats_servers, self.cfg.check_timeout, self.cfg.nats_ca_file, name
                )
                return
            reader, writer = self.nats
            writer.write(b"PING\r\n")
            await writer.drain()
            await await_pong(reader, writer)

        def drop() -> None:
            session, self.nats = self.nats, None
            if session is not None:
                nats_close(session)

        async with self.locks["nats"]:
            await self._checked(self.nats is not None, check, drop)

    async def close(self) -> None:
        """Close what is held (the one-shot check-ready command)."""
        if self.pg is not None:
            await quiet_close(self.pg.close(), self.cfg.check_timeout)
            self.pg = None
        if self.redis is not None:
            await quiet_close(self.redis.connection_pool.disconnect(), self.cfg.check_timeout)
            self.redis = None
        if self.nats is not None:
            nats_close(self.nats)
            self.nats = None


def configured_checks(cfg: Config, held: HeldConnections | None = None) -> list[Check]:
    """The readiness checks for the dependencies that are configured, and only those."""
    held = held or HeldConnections(cfg)
    checks = []
    if cfg.database_url:
        checks.append(
            Check("postgres", url_target(cfg.database_url), held.postgres, cfg.check_timeout)
        )
    if cfg.redis_url:
        checks.append(Check("redis", url_target(cfg.redis_url), held.redis_ping, cfg.check_timeout))
    if cfg.nats_servers:
        budget = cfg.check_timeout * len(cfg.nats_servers)
        checks.append(Check("nats", "", held.nats_ping, budget))
    return checks


async def run_check(check: Check, cfg: Config) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        await asyncio.wait_for(check.probe(), check.budget)
    except TimeoutError:
        error = f"timed out after {check.budget:g}s"
    except Exception as exc:  # any failure of a dependency means "not ready"
        error = describe_error(exc)
    else:
        return {"ok": True, "ms": elapsed_ms(started)}
    if check.target:
        error = f"{check.target}: {error}"
    return {"ok": False, "ms": elapsed_ms(started), "error": scrub(error, cfg.secrets)}


def elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)


async def run_checks(cfg: Config, held: HeldConnections | None = None) -> dict[str, dict[str, Any]]:
    """Run every configured check once, on held connections (opened when missing).

    Without `held`, on connections of its own that it closes at the end (check-ready).
    """
    own = held is None
    connections = held or HeldConnections(cfg)
    try:
        checks = configured_checks(cfg, connections)
        results = await asyncio.gather(*(run_check(check, cfg) for check in checks))
    finally:
        if own:
            await connections.close()
    return {check.name: result for check, result in zip(checks, results, strict=True)}


class ReadinessChecks:
    """The dependency checks of /ready, as cheap as a real service's readiness.

    The checks run on held connections (HeldConnections); a passing result is also reused for
    ready_cache_seconds and concurrent requests share one run, so health gates probing many slots
    every fraction of a second cost a PING per dependency every few seconds. (Opening connections
    per probe made every NATS probe pay a bcrypt check on the server and saturated nats-server
    under the gates of a whole-stack rollback.)

    A shared run that does not finish within its deadline (a driver stuck in its cancellation)
    is dropped: that request answers "timed out" and the next one starts a fresh run, so one stuck
    run never blocks readiness for good.
    """

    def __init__(
        self,
        cfg: Config,
        runner: Callable[[Config], Awaitable[dict[str, dict[str, Any]]]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self.held = HeldConnections(cfg)
        self.runner = runner or (lambda config: run_checks(config, self.held))
        self.clock = clock
        self.result: dict[str, dict[str, Any]] | None = None
        self.taken = 0.0
        self.running: asyncio.Future[dict[str, dict[str, Any]]] | None = None
        budgets = [check.budget for check in configured_checks(cfg)]
        self.deadline = max(budgets, default=0.0) + 1.0

    async def get(self) -> dict[str, dict[str, Any]]:
        ttl = self.cfg.ready_cache_seconds
        if self.result is not None and ttl > 0 and self.clock() - self.taken < ttl:
            return self.result
        if self.running is None or self.running.done():
            self.running = asyncio.ensure_future(self._run())
        running = self.running
        done, _pending = await asyncio.wait({running}, timeout=self.deadline)
        if running in done:
            return running.result()
        if self.running is running:
            self.running = None
        running.cancel()
        error = f"readiness checks did not finish within {self.deadline:g}s"
        return {
            check.name: {"ok": False, "ms": self.deadline * 1000, "error": error}
            for check in configured_checks(self.cfg)
        }

    async def _run(self) -> dict[str, dict[str, Any]]:
        result = await self.runner(self.cfg)
        # Only a passing result is reused: a failure is checked again by the next probe.
        if all(check.get("ok") for check in result.values()):
            self.result, self.taken = result, self.clock()
        return result


def readiness_body(checks: Mapping[str, Mapping[str, Any]], blocker: str | None) -> dict[str, Any]:
    """The /ready document; status is "ready" only when nothing blocks and all checks pass."""
    failed = [f"{name}: {r.get('error', 'failed')}" for name, r in checks.items() if not r["ok"]]
    body: dict[str, Any] = {"status": "ready", "checks": dict(checks)}
    if blocker or failed:
        body["status"] = "not ready"
        body["error"] = "; ".join(([blocker] if blocker else []) + failed)
    return body


def unhealthy_reason(cfg: Config, exists: Callable[[str], bool] = os.path.exists) -> str | None:
    if cfg.start_unhealthy:
        return "unhealthy: STANDIN_START_UNHEALTHY is set"
    if exists(UNHEALTHY_FILE):
        return f"unhealthy: {UNHEALTHY_FILE} exists"
    return None


# --------------------------------------------------------------------------------------------
# Migrations
# --------------------------------------------------------------------------------------------

LEDGER_SQL = (
    "create table if not exists schema_migrations ("
    "version text not null, service text not null, "
    "applied_at timestamptz not null default now(), "
    "primary key (service, version))"
)
RECORD_SQL = (
    "insert into schema_migrations (version, service) values ($1, $2) "
    "on conflict (service, version) do nothing"
)
# Versioned steps after the baseline table: (version, description, SQL template on {table}).
MIGRATION_STEPS = (
    (
        "1.1.0",
        "add column note",
        'alter table "{table}" add column if not exists note text',
    ),
)


@dataclass(frozen=True)
class MigrationAction:
    version: str
    description: str
    sql: str


@dataclass(frozen=True)
class MigrationPlan:
    table: str
    target: str
    actions: tuple[MigrationAction, ...] = ()
    record: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.actions or self.record)


def records_table(service: str) -> str:
    """`<service>_records` with the service name reduced to [a-z0-9_] (a valid identifier)."""
    base = re.sub(r"[^a-z0-9_]", "_", service.lower()).strip("_")
    base = re.sub(r"_+", "_", base)
    if not base:
        raise MigrationError(f"migration failed: service name {service!r} has no usable characters")
    if base[0].isdigit():
        base = f"s_{base}"
    return f"{base[:55]}_records"


def parse_version(version: str) -> tuple[int, ...]:
    """Numeric tuple of a version like 1.10.2, v1.2 or 1.1.0-rc.1 (padded to 3 parts).

    Anything else raises MigrationError.
    """
    match = re.match(r"^v?(\d+(?:\.\d+)*)(?:[-+~][0-9A-Za-z.\-+~]*)?$", version.strip())
    if not match:
        raise MigrationError(f"migration failed: SERVICE_VERSION {version!r} is not a version")
    numbers = [int(part) for part in match.group(1).split(".")]
    while len(numbers) < 3:
        numbers.append(0)
    return tuple(numbers)


def baseline_sql(table: str) -> str:
    return (
        f'create table if not exists "{table}" ('
        "id bigserial primary key, created_at timestamptz not null default now(), payload text)"
    )


def plan_migration(
    service: str,
    target: str,
    applied: Iterable[str] = (),
    ledger_exists: bool = True,
    table_exists: bool = True,
) -> MigrationPlan:
    """What must run to bring service's schema to target, given what the database has."""
    table = records_table(service)
    wanted = parse_version(target)
    done = set(applied) if ledger_exists else set()
    actions = []
    if not ledger_exists:
        actions.append(MigrationAction("", "create table schema_migrations", LEDGER_SQL))
    if not table_exists:
        actions.append(MigrationAction("", f"create table {table}", baseline_sql(table)))
    record = []
    for version, description, template in MIGRATION_STEPS:
        if parse_version(version) <= wanted and version not in done:
            actions.append(MigrationAction(version, description, template.format(table=table)))
            record.append(version)
    if target not in done and target not in record:
        record.append(target)
    return MigrationPlan(table, target, tuple(actions), tuple(record))


async def inspect_schema(conn: Any, service: str, table: str) -> tuple[bool, bool, set[str]]:
    ledger = await conn.fetchval("select to_regclass('schema_migrations') is not null")
    table_found = await conn.fetchval("select to_regclass($1::text) is not null", table)
    applied: set[str] = set()
    if ledger:
        rows = await conn.fetch("select version from schema_migrations where service = $1", service)
        applied = {row["version"] for row in rows}
    return bool(ledger), bool(table_found), applied


async def apply_migration(conn: Any, cfg: Config, log: JsonLogger) -> MigrationPlan:
    """Plan and apply in one transaction; STANDIN_MIGRATION_FAIL aborts it before commit."""
    table = records_table(cfg.service)
    async with conn.transaction():
        await conn.execute("select pg_advisory_xact_lock($1::bigint)", MIGRATION_LOCK_KEY)
        ledger, table_found, applied = await inspect_schema(conn, cfg.service, table)
        plan = plan_migration(cfg.service, cfg.version, applied, ledger, table_found)
        for action in plan.actions:
            log.emit(
                "info",
                "migration_step",
                action.description,
                step_version=action.version,
                table=table,
            )
            await conn.execute(action.sql)
        for version in plan.record:
            await conn.execute(RECORD_SQL, version, cfg.service)
        if cfg.migration_fail:
            raise MigrationError("migration failed: forced by STANDIN_MIGRATION_FAIL")
    return plan


async def run_migration(cfg: Config, log: JsonLogger) -> MigrationPlan:
    """Connect to DATABASE_URL and migrate; raise MigrationError with a one-line message."""
    if not cfg.database_url:
        raise MigrationError("migration failed: DATABASE_URL is not set")
    parse_version(cfg.version)
    import asyncpg

    target = url_target(cfg.database_url)
    log.emit(
        "info",
        "migration_start",
        f"migrating {target} to {cfg.version}",
        database=target,
    )
    dsn = dsn_with_sslmode(cfg.database_url, cfg.pg_sslmode)
    try:
        conn = await asyncpg.connect(dsn=dsn, timeout=cfg.migrate_timeout)
    except Exception as exc:  # reported as a one-line error
        reason = scrub(describe_error(exc), cfg.secrets)
        raise MigrationError(f"migration failed: cannot connect to {target}: {reason}") from None
    try:
        return await apply_migration(conn, cfg, log)
    except MigrationError:
        raise
    except Exception as exc:  # reported as a one-line error
        reason = scrub(describe_error(exc), cfg.secrets)
        raise MigrationError(f"migration failed: {reason}") from None
    finally:
        with contextlib.suppress(Exception):
            await conn.close(timeout=cfg.migrate_timeout)


# --------------------------------------------------------------------------------------------
# HTTP service (aiohttp, imported lazily)
# --------------------------------------------------------------------------------------------


def json_dumps(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), default=str)


@dataclass
class ServerState:
    """Per-process state of one running server (owned by its StandinHttp)."""

    started: float = field(default_factory=time.monotonic)
    draining: bool = False
    websockets: set[Any] = field(default_factory=set)


class StandinHttp:
    """The HTTP handlers; holds the config, the logger and the server state."""

    def __init__(self, web_module: Any, cfg: Config, log: JsonLogger) -> None:
        self.web = web_module
        self.cfg = cfg
        self.log = log
        self.state = ServerState()
        self.readiness = ReadinessChecks(cfg)

    def respond(self, body: Mapping[str, Any], status: int = 200) -> web.Response:
        return self.web.json_response(dict(body), status=status, dumps=json_dumps)

    async def health(self, request: web.Request) -> web.Response:
        reason = unhealthy_reason(self.cfg)
        uptime = round(time.monotonic() - self.state.started, 1)
        body = {"status": "ok", **self.cfg.identity, "uptime_s": uptime}
        if reason:
            return self.respond({**body, "status": "unhealthy", "error": reason}, 503)
        return self.respond(body)

    async def ready(self, request: web.Request) -> web.Response:
        blocker = unhealthy_reason(self.cfg)
        if self.state.draining:
            blocker = "shutting down"
        checks = await self.readiness.get()
        body = readiness_body(checks, blocker)
        return self.respond(
            {**body, **self.cfg.identity}, 200 if body["status"] == "ready" else 503
        )

    async def version(self, request: web.Request) -> web.Response:
        return self.respond(self.cfg.identity)

    async def root(self, request: web.Request) -> web.Response:
        return self.respond({**self.cfg.identity, "hostname": socket.gethostname()})

    async def info(self, request: web.Request) -> web.Response:
        body = {
            **self.cfg.identity,
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "python": sys.version.split()[0],
            "env": config_env(os.environ),
        }
        return self.respond(body)

    async def delay(self, request: web.Request) -> web.Response:
        """GET /delay?ms=N answers after N ms (for testing draining and timeouts)."""
        raw = request.query.get("ms", "1000")
        if not raw.isdigit():
            raise self.web.HTTPBadRequest(text="ms must be a non-negative integer")
        ms = min(int(raw), MAX_DELAY_MS)
        await asyncio.sleep(ms / 1000)
        return self.respond({**self.cfg.identity, "delayed_ms": ms})

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        """Echo every text and binary message back unchanged."""
        ws = self.web.WebSocketResponse(heartbeat=30.0)
        await ws.prepare(request)
        self.state.websockets.add(ws)
        try:
            async for msg in ws:
                if msg.type == self.web.WSMsgType.TEXT:
                    await ws.send_str(msg.data)
                elif msg.type == self.web.WSMsgType.BINARY:
                    await ws.send_bytes(msg.data)
            if self.state.draining and not ws.closed:
                # The drain closed the receive loop; say why (otherwise aiohttp sends 1000).
                await ws.close(code=WS_GOING_AWAY, message=SHUTDOWN_MESSAGE)
        finally:
            self.state.websockets.discard(ws)
        return ws

    async def add_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        response.headers["X-Venta-Service"] = self.cfg.service
        response.headers["X-Venta-Version"] = self.cfg.version
        response.headers["X-Venta-Colour"] = self.cfg.colour
        if "request_id" in request:
            response.headers["X-Request-ID"] = request["request_id"]

    async def drain_websockets(self, app: web.Application) -> None:
        """On shutdown: give open WebSockets STANDIN_DRAIN_SECONDS, then close them with 1001."""
        deadline = time.monotonic() + self.cfg.drain_seconds
        if self.state.websockets:
            self.log.emit(
                "info",
                "shutdown_drain",
                f"waiting up to {self.cfg.drain_seconds:g}s for open WebSockets",
                websockets=len(self.state.websockets),
            )
        while self.state.websockets and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        remaining = list(self.state.websockets)
        for ws in remaining:
            await ws.close(code=WS_GOING_AWAY, message=SHUTDOWN_MESSAGE)
        if remaining:
            self.log.emit(
                "info",
                "shutdown_drain",
                "closed WebSockets with 1001",
                websockets=len(remaining),
            )

    def access_log_middleware(self) -> Any:
        web_module = self.web

        @web_module.middleware
        async def access_log(request: web.Request, handler: Any) -> web.StreamResponse:
            started = time.perf_counter()
            request["request_id"] = request_id_from(request.headers.get("X-Request-ID"))
            status = 500
            try:
                response = await handler(request)
                status = response.status
                return response
            except web_module.HTTPException as exc:
                status = exc.status
                raise
            except asyncio.CancelledError:
                status = 499  # the client went away
                raise
            finally:
                self.log_request(request, status, time.perf_counter() - started)

        return access_log

    def log_request(self, request: web.Request, status: int, duration_s: float) -> None:
        fields = request_log_fields(
            request.method,
            request.path,
            status,
            duration_s,
            request["request_id"],
            request.remote,
        )
        self.log.emit(log_level_for(status), "request", **fields)

    def build_app(self) -> web.Application:
        app = self.web.Application(middlewares=[self.access_log_middleware()])
        app.router.add_get(self.cfg.health_path, self.health)
        app.router.add_get(self.cfg.ready_path, self.ready)
        app.router.add_get("/version", self.version)
        app.router.add_get("/info", self.info)
        app.router.add_get("/delay", self.delay)
        app.router.add_get("/ws", self.websocket)
        app.router.add_get("/", self.root)
        app.on_response_prepare.append(self.add_headers)
        app.on_shutdown.append(self.drain_websockets)
        return app


def dependency_summary(cfg: Config) -> dict[str, str]:
    summary = {}
    if cfg.database_url:
        summary["postgres"] = redact_url(cfg.database_url)
    if cfg.redis_url:
        summary["redis"] = redact_url(cfg.redis_url)
    if cfg.nats_servers:
        summary["nats"] = ",".join(server.display for server in cfg.nats_servers)
    return summary


async def serve(cfg: Config, log: JsonLogger) -> int:
    """Run the HTTP server until SIGTERM/SIGINT, then drain and exit 0."""
    from aiohttp import web

    stopped = stop_signal()  # before listening, so an early SIGTERM is not lost
    http = StandinHttp(web, cfg, log)
    runner = web.AppRunner(http.build_app(), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(
        runner,
        "0.0.0.0",
        cfg.port,
        shutdown_timeout=max(cfg.drain_seconds, 1.0),
        backlog=1024,
    )
    await site.start()
    log.emit(
        "info",
        "startup",
        f"listening on 0.0.0.0:{cfg.port}",
        port=cfg.port,
        health_path=cfg.health_path,
        ready_path=cfg.ready_path,
        dependencies=dependency_summary(cfg),
        pid=os.getpid(),
    )
    received = await stopped
    http.state.draining = True
    log.emit(
        "info",
        "shutdown",
        f"{received} received: no new connections, finishing in-flight requests",
        websockets=len(http.state.websockets),
        drain_seconds=cfg.drain_seconds,
    )
    await runner.cleanup()
    log.emit("info", "shutdown_complete", "stopped", exit_code=0)
    return 0


def stop_signal() -> asyncio.Future[str]:
    """A future resolved with the name of the first SIGTERM or SIGINT received."""
    loop = asyncio.get_running_loop()
    received: asyncio.Future[str] = loop.create_future()

    def on_signal(signum: int) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        if not received.done():
            received.set_result(signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    return received


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def health_url(env: Mapping[str, str]) -> str:
    port = env_value(env, "PORT") or "8080"
    path = env_value(env, "HEALTH_PATH") or "/health"
    return f"http://127.0.0.1:{port}{path}"


def http_status(url: str, timeout: float) -> int:
    """GET url without any proxy; the HTTP status (raises OSError when nothing answers)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def cmd_health(env: Mapping[str, str], out: TextIO) -> int:
    url = health_url(env)
    try:
        status = http_status(url, timeout=env_float(env, "STANDIN_CHECK_TIMEOUT", 2.0) or 2.0)
    except (OSError, ValueError, ConfigError) as exc:
        print(f"health: {url}: {exc}", file=out)
        return 1
    print(f"health: {url} -> {status}", file=out)
    return 0 if status == 200 else 1


def cmd_check_ready(cfg: Config, log: JsonLogger) -> int:
    checks = asyncio.run(run_checks(cfg))
    body = readiness_body(checks, None)
    ok = body["status"] == "ready"
    log.emit("info" if ok else "error", "check_ready", body["status"], **body)
    return 0 if ok else 1


def cmd_migrate(cfg: Config, log: JsonLogger) -> int:
    try:
        plan = asyncio.run(run_migration(cfg, log))
    except MigrationError as exc:
        log.emit("error", "migration_failed", str(exc), exit_code=1)
        print(f"standin migrate: {exc}", file=sys.stderr)
        return 1
    if plan.changed:
        msg = f"schema of {cfg.service} migrated to {cfg.version}"
        log.emit(
            "info",
            "migration_complete",
            msg,
            changed=True,
            table=plan.table,
            recorded=list(plan.record),
        )
    else:
        msg = f"schema of {cfg.service} already at {cfg.version}; nothing to do"
        log.emit(
            "info",
            "migration_complete",
            msg,
            changed=False,
            table=plan.table,
            recorded=[],
        )
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="standin",
        description="Venta stand-in service; configured by environment variables (see README).",
    )
    parser.add_argument(
        "command",
        nargs="?",
        default="serve",
        choices=("serve", "migrate", "check-ready", "health"),
        help="serve (default): run the HTTP service; migrate: apply the schema migration; "
        "check-ready: run the readiness checks once; health: GET the local health endpoint",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    args = parse_args(argv)
    env = os.environ if env is None else env
    if args.command == "health":
        return cmd_health(env, sys.stdout)
    try:
        cfg = load_config(env)
    except ConfigError as exc:
        fallback = JsonLogger(env.get("SERVICE_NAME", ""), env.get("SERVICE_VERSION", ""), "")
        fallback.emit("error", "config_error", str(exc), exit_code=2)
        print(f"standin {args.command}: config error: {exc}", file=sys.stderr)
        return 2
    log = JsonLogger.for_config(cfg)
    if args.command == "migrate":
        return cmd_migrate(cfg, log)
    if args.command == "check-ready":
        return cmd_check_ready(cfg, log)
    return asyncio.run(serve(cfg, log))


if __name__ == "__main__":
    sys.exit(main())
