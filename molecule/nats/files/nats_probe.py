"""A tiny NATS client for the Molecule verify: the text protocol over TLS and the JetStream API.

Standard library only (Debian bookworm has no NATS CLI). Every command prints one JSON object on
stdout and exits 0 when the outcome is the expected one, 1 otherwise.

Connection settings come from the environment: NATS_HOST, NATS_PORT (4222), NATS_USER,
NATS_PASSWORD, NATS_CA (CA file that must have signed the server certificate) and NATS_TLS_NAME
(name checked against the certificate; default NATS_HOST).

Commands:
  ping                              TLS + CONNECT + PING; expects PONG
  plain                             CONNECT without TLS; expects the server to refuse it
  bad-auth                          TLS + CONNECT with NATS_PASSWORD; expects an Authorization
                                    Violation
  pub-denied SUBJECT                publish where permissions forbid it; expects a Permissions
                                    Violation
  request SUBJECT PAYLOAD           one request, prints the first reply
  collect SUBJECT SECONDS           one request, prints every reply received within SECONDS
  stream-create NAME SUBJECT REPLICAS   (re)creates a file stream
  stream-info NAME
  js-publish SUBJECT DATA [TIMEOUT] publishes until a PubAck arrives (retries while electing)
  js-get STREAM SEQ                 reads one stored message back
"""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import sys
import time
from typing import Any


class NatsError(Exception):
    """The server answered -ERR or closed the connection."""


class Connection:
    """One NATS client connection (blocking, single subscription at a time)."""

    def __init__(self, host: str, port: int, timeout: float = 5.0) -> None:
        self.sock: socket.socket | ssl.SSLSocket = socket.create_connection((host, port), timeout)
        self.buf = b""
        self.info: dict[str, Any] = {}
        self.sid = 0

    # --- framing -------------------------------------------------------------------------------
    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise NatsError("connection closed by the server")
        self.buf += chunk

    def readline(self) -> str:
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode()

    def read_exact(self, size: int) -> bytes:
        while len(self.buf) < size + 2:
            self._fill()
        data, self.buf = self.buf[:size], self.buf[size + 2 :]
        return data

    def send(self, text: str, payload: bytes | None = None) -> None:
        data = text.encode() + b"\r\n"
        if payload is not None:
            data += payload + b"\r\n"
        self.sock.sendall(data)

    # --- protocol ------------------------------------------------------------------------------
    def read_info(self) -> dict[str, Any]:
        line = self.readline()
        if not line.startswith("INFO "):
            raise NatsError(f"expected INFO, got {line!r}")
        self.info = json.loads(line[5:])
        return self.info

    def upgrade_tls(self, ca_file: str, server_name: str) -> None:
        context = ssl.create_default_context(cafile=ca_file)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.sock = context.wrap_socket(self.sock, server_hostname=server_name)

    def connect(self, user: str, password: str, tls: bool) -> None:
        options = {
            "verbose": False,
            "pedantic": False,
            "tls_required": tls,
            "user": user,
            "pass": password,
            "name": "molecule-nats-probe",
            "lang": "python",
            "version": "0.1",
            "protocol": 1,
            "echo": False,
        }
        self.send("CONNECT " + json.dumps(options))
        self.ping()

    def ping(self) -> None:
        self.send("PING")
        while True:
            line = self.readline()
            if line == "PONG":
                return
            if line.startswith("-ERR"):
                raise NatsError(line)
            # INFO updates (cluster topology) and +OK can arrive at any time.

    def next_msg(self, deadline: float) -> tuple[str, bytes] | None:
        """The next MSG (subject, payload) before the deadline, answering server PINGs."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.sock.settimeout(remaining)
            try:
                line = self.readline()
            except TimeoutError:
                return None
            if line.startswith("MSG "):
                parts = line.split(" ")
                return parts[1], self.read_exact(int(parts[-1]))
            if line == "PING":
                self.send("PONG")
            elif line.startswith("-ERR"):
                raise NatsError(line)

    def subscribe(self, subject: str) -> int:
        self.sid += 1
        self.send(f"SUB {subject} {self.sid}")
        return self.sid

    def unsubscribe(self, sid: int) -> None:
        self.send(f"UNSUB {sid}")

    def requests(
        self, subject: str, payload: bytes, timeout: float, first_only: bool
    ) -> list[bytes]:
        inbox = f"_INBOX.probe{os.getpid()}.{time.monotonic_ns()}"
        sid = self.subscribe(inbox)
        self.send(f"PUB {subject} {inbox} {len(payload)}", payload)
        replies: list[bytes] = []
        deadline = time.monotonic() + timeout
        while True:
            msg = self.next_msg(deadline)
            if msg is None:
                break
            replies.append(msg[1])
            if first_only:
                break
        self.unsubscribe(sid)
        return replies

    def request_json(
        self, subject: str, body: dict[str, Any] | None, timeout: float = 5.0
    ) -> dict[str, Any]:
        payload = json.dumps(body).encode() if body is not None else b""
        replies = self.requests(subject, payload, timeout, first_only=True)
        if not replies:
            raise NatsError(f"no reply to {subject} within {timeout}s")
        return json.loads(replies[0])


# --- helpers --------------------------------------------------------------------------------------
def settings() -> dict[str, Any]:
    host = os.environ.get("NATS_HOST", "127.0.0.1")
    return {
        "host": host,
        "port": int(os.environ.get("NATS_PORT", "4222")),
        "user": os.environ.get("NATS_USER", ""),
        "password": os.environ.get("NATS_PASSWORD", ""),
        "ca": os.environ.get("NATS_CA", "/etc/nats/tls/ca.crt"),
        "tls_name": os.environ.get("NATS_TLS_NAME", host),
    }


def open_tls(cfg: dict[str, Any]) -> Connection:
    conn = Connection(cfg["host"], cfg["port"])
    conn.read_info()
    conn.upgrade_tls(cfg["ca"], cfg["tls_name"])
    conn.connect(cfg["user"], cfg["password"], tls=True)
    return conn


def emit(ok: bool, **fields: Any) -> int:
    print(json.dumps({"ok": ok, **fields}, sort_keys=True))
    return 0 if ok else 1


# --- commands -------------------------------------------------------------------------------------
def cmd_ping(cfg: dict[str, Any], _args: list[str]) -> int:
    conn = open_tls(cfg)
    peer = conn.sock.getpeercert() if isinstance(conn.sock, ssl.SSLSocket) else None
    return emit(
        True,
        server_name=conn.info.get("server_name"),
        tls_version=conn.sock.version() if isinstance(conn.sock, ssl.SSLSocket) else None,
        peer_subject=dict(x[0] for x in peer["subject"]) if peer else None,
        connect_urls=conn.info.get("connect_urls", []),
    )


def cmd_plain(cfg: dict[str, Any], _args: list[str]) -> int:
    conn = Connection(cfg["host"], cfg["port"])
    info = conn.read_info()
    try:
        conn.connect(cfg["user"], cfg["password"], tls=False)
    except (NatsError, OSError) as exc:
        return emit(True, refused=str(exc), tls_required=info.get("tls_required"))
    return emit(
        False, error="a plain-text client was accepted", tls_required=info.get("tls_required")
    )


def cmd_bad_auth(cfg: dict[str, Any], _args: list[str]) -> int:
    try:
        open_tls(cfg)
    except NatsError as exc:
        return emit("Authorization Violation" in str(exc), refused=str(exc))
    return emit(False, error="the server accepted the credentials")


def cmd_pub_denied(cfg: dict[str, Any], args: list[str]) -> int:
    conn = open_tls(cfg)
    conn.send(f"PUB {args[0]} 2", b"no")
    try:
        conn.ping()
    except NatsError as exc:
        return emit("Permissions Violation" in str(exc), refused=str(exc))
    return emit(False, error=f"publishing to {args[0]} was allowed")


def cmd_request(cfg: dict[str, Any], args: list[str]) -> int:
    conn = open_tls(cfg)
    reply = conn.requests(args[0], args[1].encode(), 5.0, first_only=True)
    return emit(bool(reply), reply=reply[0].decode() if reply else None)


def cmd_collect(cfg: dict[str, Any], args: list[str]) -> int:
    conn = open_tls(cfg)
    replies = conn.requests(args[0], b"", float(args[1]), first_only=False)
    return emit(True, count=len(replies), replies=[json.loads(r) for r in replies])


def cmd_stream_create(cfg: dict[str, Any], args: list[str]) -> int:
    name, subject, replicas = args[0], args[1], int(args[2])
    conn = open_tls(cfg)
    conn.request_json(f"$JS.API.STREAM.DELETE.{name}", None)
    config = {
        "name": name,
        "subjects": [subject],
        "retention": "limits",
        "storage": "file",
        "num_replicas": replicas,
        "max_bytes": 8 * 1024 * 1024,
        "discard": "old",
    }
    reply = conn.request_json(f"$JS.API.STREAM.CREATE.{name}", config, timeout=10.0)
    created = reply.get("config", {})
    return emit(
        "error" not in reply and created.get("num_replicas") == replicas,
        reply=reply.get("error") or {"cluster": reply.get("cluster"), "config": created},
    )


def cmd_stream_info(cfg: dict[str, Any], args: list[str]) -> int:
    conn = open_tls(cfg)
    reply = conn.request_json(f"$JS.API.STREAM.INFO.{args[0]}", None)
    return emit("error" not in reply, reply=reply)


def cmd_js_publish(cfg: dict[str, Any], args: list[str]) -> int:
    subject, data = args[0], args[1].encode()
    deadline = time.monotonic() + (float(args[2]) if len(args) > 2 else 30.0)
    attempts: list[str] = []
    while time.monotonic() < deadline:
        try:
            conn = open_tls(cfg)
            replies = conn.requests(subject, data, 3.0, first_only=True)
        except (NatsError, OSError) as exc:
            attempts.append(str(exc))
        else:
            if replies:
                ack = json.loads(replies[0])
                if "error" not in ack:
                    return emit(True, ack=ack, attempts=attempts)
                attempts.append(json.dumps(ack["error"]))
            else:
                attempts.append("no PubAck within 3s")
        time.sleep(1)
    return emit(False, error="no PubAck before the deadline", attempts=attempts)


def cmd_js_get(cfg: dict[str, Any], args: list[str]) -> int:
    conn = open_tls(cfg)
    reply = conn.request_json(f"$JS.API.STREAM.MSG.GET.{args[0]}", {"seq": int(args[1])})
    if "error" in reply:
        return emit(False, reply=reply)
    message = reply["message"]
    return emit(
        True,
        seq=message["seq"],
        subject=message["subject"],
        data=base64.b64decode(message.get("data", "")).decode(),
    )


COMMANDS = {
    "ping": cmd_ping,
    "plain": cmd_plain,
    "bad-auth": cmd_bad_auth,
    "pub-denied": cmd_pub_denied,
    "request": cmd_request,
    "collect": cmd_collect,
    "stream-create": cmd_stream_create,
    "stream-info": cmd_stream_info,
    "js-publish": cmd_js_publish,
    "js-get": cmd_js_get,
}


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[1] not in COMMANDS:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        return COMMANDS[argv[1]](settings(), argv[2:])
    except (NatsError, OSError, ValueError, KeyError) as exc:
        return emit(False, error=f"{type(exc).__name__}: {exc}")


if __name__ == "__main__":
    sys.exit(main(sys.argv))
