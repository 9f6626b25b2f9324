"""Canary ledger of the DR drill: a heartbeat in PostgreSQL, Redis and NATS JetStream.

`run` writes one heartbeat every `interval` seconds to each store, with its own least-privilege
credentials: a row in PostgreSQL (table heartbeat), the key <prefix>last in Redis and a message
on <subject> in a JetStream stream. Each heartbeat carries the writer's clock (epoch seconds) and
a sequence number. A store that fails is retried on the next beat; the other stores keep going.

`newest` prints, per store, the newest heartbeat found (JSON): what the DR drill compares with the
moment of the simulated loss to measure the RPO. Only the standard library is used; PostgreSQL
is reached through psql.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


class StoreError(Exception):
    """A store refused a heartbeat or could not be reached."""


# --- PostgreSQL (psql) ----------------------------------------------------------------------------
def psql(cfg: dict[str, Any], sql: str, timeout: float = 10.0) -> str:
    env = dict(
        os.environ, PGPASSWORD=cfg["password"], PGCONNECT_TIMEOUT="5", PGAPPNAME="venta-ledger"
    )
    cmd = [
        "psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
        "-h", cfg["host"], "-p", str(cfg.get("port", 5432)),
        "-U", cfg["user"], "-d", cfg["database"], "-c", sql,
    ]  # fmt: skip
    try:
        done = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise StoreError(f"postgresql: no answer within {timeout:.0f}s") from exc
    if done.returncode != 0:
        raise StoreError(f"postgresql: {done.stderr.strip()}")
    return done.stdout.strip()


PG_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS heartbeat (seq bigint NOT NULL, written double precision NOT NULL,"
    " stored timestamptz NOT NULL DEFAULT now());"
    " CREATE INDEX IF NOT EXISTS heartbeat_written ON heartbeat (written)"
)


def pg_write(cfg: dict[str, Any], seq: int, written: float) -> None:
    keep = int(cfg.get("keep_seconds", 86400))
    psql(
        cfg,
        f"INSERT INTO heartbeat (seq, written) VALUES ({seq}, {written:.6f});"
        f" DELETE FROM heartbeat WHERE written < {written - keep:.6f} AND {seq} % 600 = 0",
    )


def pg_newest(cfg: dict[str, Any]) -> dict[str, Any] | None:
    out = psql(cfg, "SELECT seq, written FROM heartbeat ORDER BY written DESC LIMIT 1")
    if not out:
        return None
    seq, written = out.split("|")
    return {"seq": int(seq), "written": float(written)}


# --- Redis (RESP over TCP) ------------------------------------------------------------------------
def resp_command(sock_file: Any, *args: str) -> Any:
    data = f"*{len(args)}\r\n".encode()
    for arg in args:
        raw = arg.encode()
        data += b"$" + str(len(raw)).encode() + b"\r\n" + raw + b"\r\n"
    sock_file.write(data)
    sock_file.flush()
    line = sock_file.readline()
    if not line:
        raise StoreError("redis: connection closed")
    kind, rest = line[:1], line[1:].rstrip(b"\r\n")
    if kind == b"-":
        raise StoreError(f"redis: {rest.decode()}")
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        value = sock_file.read(size + 2)[:-2]
        return value.decode()
    return rest.decode()


def redis_call(cfg: dict[str, Any], *args: str) -> Any:
    try:
        with socket.create_connection((cfg["host"], int(cfg.get("port", 6379))), 5) as sock:
            sock.settimeout(5)
            sock_file = sock.makefile("rwb")
            resp_command(sock_file, "AUTH", cfg["user"], cfg["password"])
            return resp_command(sock_file, *args)
    except OSError as exc:
        raise StoreError(f"redis: {exc}") from exc


def redis_write(cfg: dict[str, Any], seq: int, written: float) -> None:
    redis_call(cfg, "SET", cfg["key"], json.dumps({"seq": seq, "written": written}))


def redis_newest(cfg: dict[str, Any]) -> dict[str, Any] | None:
    value = redis_call(cfg, "GET", cfg["key"])
    return json.loads(value) if value else None


# --- NATS JetStream -------------------------------------------------------------------------------
class Nats:
    """One blocking NATS connection over TLS (enough for publish with ack and API requests)."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        errors = []
        for server in cfg["servers"]:
            try:
                self._connect(cfg, server)
                return
            except (OSError, StoreError, ValueError) as exc:
                errors.append(f"{server}: {exc}")
        raise StoreError("nats: " + "; ".join(errors))

    def _connect(self, cfg: dict[str, Any], server: str) -> None:
        host, _sep, port = server.rpartition(":")
        sock = socket.create_connection((host, int(port)), 5)
        sock.settimeout(5)
        self.buf = b""
        self.sock: socket.socket | ssl.SSLSocket = sock
        info = self._readline()
        if not info.startswith("INFO "):
            raise StoreError(f"unexpected greeting {info[:40]!r}")
        context = ssl.create_default_context(cafile=cfg.get("ca") or None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.sock = context.wrap_socket(sock, server_hostname=host)
        options = {
            "verbose": False, "pedantic": False, "tls_required": True, "user": cfg["user"],
            "pass": cfg["password"], "name": "venta-ledger", "lang": "python", "version": "1.0",
            "protocol": 1, "headers": True, "no_responders": True, "echo": False,
        }  # fmt: skip
        self._send(b"CONNECT " + json.dumps(options).encode() + b"\r\nPING\r\n")
        self._wait_pong()
        self.inbox = f"_INBOX.venta-ledger.{os.getpid()}"
        self._send(f"SUB {self.inbox}.* 1\r\n".encode())

    def _readline(self) -> str:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise StoreError("connection closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode()

    def _read(self, size: int) -> bytes:
        while len(self.buf) < size + 2:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise StoreError("connection closed")
            self.buf += chunk
        data, self.buf = self.buf[:size], self.buf[size + 2 :]
        return data

    def _send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _wait_pong(self) -> None:
        while True:
            line = self._readline()
            if line == "PONG":
                return
            if line.startswith("-ERR"):
                raise StoreError(line)

    def request(self, subject: str, payload: bytes, timeout: float = 5.0) -> dict[str, Any]:
        reply = f"{self.inbox}.{time.monotonic_ns()}"
        self._send(f"PUB {subject} {reply} {len(payload)}\r\n".encode() + payload + b"\r\n")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self._readline()
            if line == "PING":
                self._send(b"PONG\r\n")
            elif line.startswith("-ERR"):
                raise StoreError(line)
            elif line.startswith(("MSG ", "HMSG ")):
                parts = line.split(" ")
                data = self._read(int(parts[-1]))
                if line.startswith("HMSG "):
                    head, data = data[: int(parts[-2])], data[int(parts[-2]) :]
                    if b" 503" in head.split(b"\r\n", 1)[0]:
                        raise StoreError(f"no responders for {subject}")
                if parts[3] != reply and parts[1] != reply:
                    continue
                answer = json.loads(data or b"{}")
                if "error" in answer:
                    raise StoreError(f"{subject}: {answer['error'].get('description')}")
                return answer
        raise StoreError(f"no answer to {subject} within {timeout:.0f}s")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def nats_ensure_stream(conn: Nats, cfg: dict[str, Any]) -> None:
    try:
        conn.request(f"$JS.API.STREAM.INFO.{cfg['stream']}", b"")
    except StoreError as exc:
        if "not found" not in str(exc):
            raise
        config = {
            "name": cfg["stream"], "subjects": [cfg["subject"]], "storage": "file",
            "retention": "limits", "max_age": int(cfg.get("keep_seconds", 86400)) * 10**9,
            "num_replicas": int(cfg.get("replicas", 1)), "discard": "old",
        }  # fmt: skip
        conn.request(f"$JS.API.STREAM.CREATE.{cfg['stream']}", json.dumps(config).encode())


def nats_newest(conn: Nats, cfg: dict[str, Any]) -> dict[str, Any] | None:
    try:
        answer = conn.request(
            f"$JS.API.STREAM.MSG.GET.{cfg['stream']}",
            json.dumps({"last_by_subj": cfg["subject"]}).encode(),
        )
    except StoreError as exc:
        if "not found" in str(exc):
            return None
        raise
    return json.loads(base64.b64decode(answer["message"]["data"]))


# --- commands -------------------------------------------------------------------------------------
def cmd_run(cfg: dict[str, Any]) -> int:
    interval = float(cfg.get("interval", 1.0))
    stores = cfg["stores"]
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    nats: Nats | None = None
    ready = {"postgresql": False, "nats": False}
    failing: dict[str, str] = {}
    seq = int(time.time() * 1000)
    next_beat = time.monotonic()
    while not stop["now"]:
        written = time.time()
        seq += 1
        for store in stores:
            try:
                if store == "postgresql":
                    if not ready["postgresql"]:
                        psql(cfg["postgresql"], PG_SCHEMA)
                        ready["postgresql"] = True
                    pg_write(cfg["postgresql"], seq, written)
                elif store == "redis":
                    redis_write(cfg["redis"], seq, written)
                elif store == "nats":
                    if nats is None:
                        nats = Nats(cfg["nats"])
                        ready["nats"] = False
                    if not ready["nats"]:
                        nats_ensure_stream(nats, cfg["nats"])
                        ready["nats"] = True
                    payload = json.dumps({"seq": seq, "written": written}).encode()
                    nats.request(cfg["nats"]["subject"], payload)
                if store in failing:
                    print(f"{store}: writing again", flush=True)
                    del failing[store]
            except (StoreError, OSError, ValueError, KeyError) as exc:
                if store == "nats" and nats is not None:
                    nats.close()
                    nats = None
                if store == "postgresql":
                    ready["postgresql"] = False
                if failing.get(store) != str(exc):
                    print(f"<4>{store}: heartbeat failed: {exc}", file=sys.stderr, flush=True)
                failing[store] = str(exc)
        next_beat += interval
        delay = next_beat - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            next_beat = time.monotonic()
    return 0


def cmd_newest(cfg: dict[str, Any]) -> int:
    result: dict[str, Any] = {"now": time.time(), "stores": {}}
    for store in cfg["stores"]:
        try:
            if store == "postgresql":
                newest = pg_newest(cfg["postgresql"])
            elif store == "redis":
                newest = redis_newest(cfg["redis"])
            else:
                conn = Nats(cfg["nats"])
                try:
                    newest = nats_newest(conn, cfg["nats"])
                finally:
                    conn.close()
            result["stores"][store] = {"ok": newest is not None, "newest": newest}
        except (StoreError, OSError, ValueError, KeyError) as exc:
            result["stores"][store] = {"ok": False, "error": str(exc)}
    print(json.dumps(result, sort_keys=True))
    return 0 if all(item["ok"] for item in result["stores"].values()) else 1


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="venta-ledger", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--config", default="/etc/venta-ledger/ledger.json")
    parser.add_argument("command", choices=["run", "newest"])
    args = parser.parse_args(argv)
    cfg = json.loads(Path(args.config).read_text(encoding="utf-8"))
    return cmd_run(cfg) if args.command == "run" else cmd_newest(cfg)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
