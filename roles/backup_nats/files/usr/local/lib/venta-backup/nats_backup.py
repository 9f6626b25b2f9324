"""Back up and restore NATS JetStream streams through the JetStream API (standard library only).

Installed by venta.deploy.backup_nats. Debian bookworm ships no NATS CLI, so this speaks the NATS
text protocol over TLS itself and uses the same API as `nats stream backup/restore`:

- `$JS.API.STREAM.SNAPSHOT.<stream>` streams a consistent snapshot (the stream leader's store,
  messages and consumers, as an s2-compressed tar) in chunks to an inbox; every chunk is
  acknowledged to its reply subject (the server's flow control).
- `$JS.API.STREAM.RESTORE.<stream>` with the stream's configuration and state answers with a
  subject that takes the chunks back, each acknowledged, then an empty message; the last reply is
  the restored stream's info (or the error).

A backup is one uncompressed tar ("bundle"): `manifest.json` plus `<stream>.json` (configuration
and state at snapshot time) and `<stream>.snap` (the server's snapshot) per stream.

Usage (settings from a JSON file, default /etc/venta-backup/nats.json, mode 0600, with host, port,
user, password, ca, tls_name, monitor_url):

  nats_backup.py [--config FILE] is-meta-leader          exit 0 if this server leads the meta group
  nats_backup.py [--config FILE] snapshot --out BUNDLE [--stream NAME ...]
  nats_backup.py [--config FILE] restore --bundle BUNDLE [--stream NAME ...] [--replace]
  nats_backup.py [--config FILE] list                     stream names and message counts (JSON)
  nats_backup.py inspect --bundle BUNDLE                  the bundle's manifest (JSON)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import socket
import ssl
import sys
import tarfile
import time
import urllib.request
from typing import Any

S2_MAGIC = b"\xff\x06\x00\x00S2sTwO"
CHUNK_SIZE = 128 * 1024
BUNDLE_FORMAT = 1


class NatsError(Exception):
    """The server answered -ERR, an API error, or the connection failed."""


class Connection:
    """One blocking NATS client connection over TLS."""

    def __init__(self, cfg: dict[str, Any], timeout: float = 10.0) -> None:
        self.sock: socket.socket | ssl.SSLSocket = socket.create_connection(
            (cfg["host"], int(cfg.get("port", 4222))), timeout
        )
        self.buf = b""
        self.sid = 0
        # Messages read while waiting for another subject (a snapshot's first chunks can arrive
        # before the API's reply), handed out by next_msg in arrival order.
        self.pending: list[tuple[str, str, dict[str, str], bytes]] = []
        self.inbox_prefix = f"_INBOX.venta-backup.{os.getpid()}.{time.monotonic_ns()}"
        self.info = json.loads(self._readline()[5:])
        context = ssl.create_default_context(cafile=cfg.get("ca") or None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.sock = context.wrap_socket(
            self.sock, server_hostname=cfg.get("tls_name") or cfg["host"]
        )
        options = {
            "verbose": False,
            "pedantic": False,
            "tls_required": True,
            "user": cfg["user"],
            "pass": cfg["password"],
            "name": "venta-nats-backup",
            "lang": "python",
            "version": "1.0",
            "protocol": 1,
            "headers": True,
            "no_responders": True,
            "echo": False,
        }
        self._send(b"CONNECT " + json.dumps(options).encode())
        self.flush()

    # --- framing ------------------------------------------------------------------------------
    def _fill(self) -> None:
        chunk = self.sock.recv(262144)
        if not chunk:
            raise NatsError("connection closed by the server")
        self.buf += chunk

    def _readline(self) -> str:
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode()

    def _read_exact(self, size: int) -> bytes:
        while len(self.buf) < size + 2:
            self._fill()
        data, self.buf = self.buf[:size], self.buf[size + 2 :]
        return data

    def _send(self, line: bytes, payload: bytes | None = None) -> None:
        data = line + b"\r\n"
        if payload is not None:
            data += payload + b"\r\n"
        self.sock.sendall(data)

    # --- protocol -----------------------------------------------------------------------------
    def flush(self) -> None:
        """PING and wait for PONG: the server has processed everything sent so far."""
        self._send(b"PING")
        while True:
            line = self._readline()
            if line == "PONG":
                return
            if line.startswith("-ERR"):
                raise NatsError(line)

    def publish(self, subject: str, payload: bytes, reply: str = "") -> None:
        head = f"PUB {subject} {reply} {len(payload)}" if reply else f"PUB {subject} {len(payload)}"
        self._send(head.encode(), payload)

    def subscribe(self, subject: str) -> int:
        self.sid += 1
        self._send(f"SUB {subject} {self.sid}".encode())
        return self.sid

    def unsubscribe(self, sid: int) -> None:
        self._send(f"UNSUB {sid}".encode())

    def new_inbox(self) -> str:
        self.sid += 1
        return f"{self.inbox_prefix}.{self.sid}"

    def next_msg(
        self, timeout: float, subject: str | None = None
    ) -> tuple[str, str, dict[str, str], bytes]:
        """The next message (on `subject` when given): (subject, reply, headers, payload).

        Messages on other subjects met on the way are kept for later calls. Answers server PINGs.
        """
        for index, message in enumerate(self.pending):
            if subject is None or message[0] == subject:
                return self.pending.pop(index)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise NatsError(f"no message within {timeout:.0f}s")
            self.sock.settimeout(remaining)
            try:
                line = self._readline()
            except TimeoutError as exc:
                raise NatsError(f"no message within {timeout:.0f}s") from exc
            message = None
            if line.startswith("MSG "):
                parts = line.split(" ")
                reply = parts[3] if len(parts) == 5 else ""
                message = (parts[1], reply, {}, self._read_exact(int(parts[-1])))
            elif line.startswith("HMSG "):
                parts = line.split(" ")
                reply = parts[3] if len(parts) == 6 else ""
                header_len, total_len = int(parts[-2]), int(parts[-1])
                data = self._read_exact(total_len)
                message = (parts[1], reply, parse_headers(data[:header_len]), data[header_len:])
            elif line == "PING":
                self._send(b"PONG")
            elif line.startswith("-ERR"):
                raise NatsError(line)
            if message is None:
                continue
            if subject is None or message[0] == subject:
                return message
            self.pending.append(message)

    def request(self, subject: str, payload: bytes, timeout: float = 10.0) -> bytes:
        inbox = self.new_inbox()
        sid = self.subscribe(inbox)
        self.publish(subject, payload, inbox)
        try:
            _subject, _reply, headers, data = self.next_msg(timeout, inbox)
        finally:
            self.unsubscribe(sid)
        if headers.get(":status") == "503":
            raise NatsError(f"no responders for {subject} (is JetStream enabled for this user?)")
        return data

    def api(
        self, subject: str, body: dict[str, Any] | None = None, timeout: float = 10.0
    ) -> dict[str, Any]:
        payload = json.dumps(body).encode() if body is not None else b""
        reply = json.loads(self.request(subject, payload, timeout) or b"{}")
        if "error" in reply:
            error = reply["error"]
            raise NatsError(
                f"{subject}: {error.get('description', error)} (code {error.get('code')})"
            )
        return reply

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def parse_headers(raw: bytes) -> dict[str, str]:
    """NATS/1.0 headers; the status line's code lands under ':status'."""
    lines = raw.decode(errors="replace").split("\r\n")
    headers: dict[str, str] = {}
    first = lines[0].split(" ", 2) if lines else []
    if len(first) >= 2 and first[1].isdigit():
        headers[":status"] = first[1]
        if len(first) == 3:
            headers[":description"] = first[2]
    for line in lines[1:]:
        if ":" in line:
            key, value = line.split(":", 1)
            headers[key.strip()] = value.strip()
    return headers


# --- operations -----------------------------------------------------------------------------------
def stream_names(conn: Connection) -> list[str]:
    names: list[str] = []
    while True:
        reply = conn.api("$JS.API.STREAM.NAMES", {"offset": len(names)})
        page = reply.get("streams") or []
        names.extend(page)
        if not page or len(names) >= int(reply.get("total", 0)):
            return sorted(names)


def snapshot_stream(conn: Connection, name: str, timeout: float) -> tuple[dict[str, Any], bytes]:
    """(configuration and state, snapshot bytes) of one stream."""
    inbox = conn.new_inbox()
    sid = conn.subscribe(inbox)
    request = {
        "deliver_subject": inbox,
        "no_consumers": False,
        "chunk_size": CHUNK_SIZE,
        "jsck": True,
    }
    reply = conn.api(f"$JS.API.STREAM.SNAPSHOT.{name}", request, timeout=timeout)
    data = io.BytesIO()
    while True:
        _subject, ack, headers, chunk = conn.next_msg(timeout, inbox)
        if headers.get(":status") not in (None, "200"):
            raise NatsError(
                f"snapshot of {name} failed: {headers.get(':status')} {headers.get(':description', '')}"
            )
        if not chunk:
            break
        data.write(chunk)
        if ack:
            conn.publish(ack, b"")
    conn.unsubscribe(sid)
    snap = data.getvalue()
    if not snap.startswith(S2_MAGIC):
        raise NatsError(f"snapshot of {name} is not an s2 stream ({len(snap)} bytes)")
    return {"config": reply.get("config"), "state": reply.get("state")}, snap


def restore_stream(
    conn: Connection, meta: dict[str, Any], snap: bytes, replace: bool, timeout: float
) -> dict[str, Any]:
    name = meta["config"]["name"]
    if name in stream_names(conn):
        if not replace:
            raise NatsError(
                f"stream {name} exists; restore with --replace to delete and restore it"
            )
        conn.api(f"$JS.API.STREAM.DELETE.{name}", None, timeout=timeout)
    reply = conn.api(
        f"$JS.API.STREAM.RESTORE.{name}",
        {"config": meta["config"], "state": meta["state"]},
        timeout,
    )
    deliver = reply["deliver_subject"]
    for offset in range(0, len(snap), CHUNK_SIZE):
        ack = conn.request(deliver, snap[offset : offset + CHUNK_SIZE], timeout)
        if ack:
            raise NatsError(f"restore of {name} refused a chunk: {ack.decode(errors='replace')}")
    done = json.loads(conn.request(deliver, b"", timeout=max(timeout, 60.0)) or b"{}")
    if "error" in done:
        raise NatsError(
            f"restore of {name} failed: {done['error'].get('description', done['error'])}"
        )
    return done


def monitor_json(url: str, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(url.rstrip("/") + path, timeout=5) as response:
        return json.load(response)


def is_meta_leader(cfg: dict[str, Any]) -> bool:
    url = cfg.get("monitor_url", "http://127.0.0.1:8222")
    varz = monitor_json(url, "/varz")
    jsz = monitor_json(url, "/jsz")
    leader = (jsz.get("meta_cluster") or {}).get("leader")
    # A server outside a cluster (no meta group) is its own leader.
    return leader in (None, "", varz.get("server_name"))


# --- bundle ---------------------------------------------------------------------------------------
def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(time.time())
    info.mode = 0o600
    tar.addfile(info, io.BytesIO(data))


def read_bundle(path: str) -> tuple[dict[str, Any], tarfile.TarFile]:
    tar = tarfile.open(path, "r:")  # noqa: SIM115 (closed by the caller)
    try:
        member = tar.extractfile("manifest.json")
    except KeyError:
        member = None
    if member is None:
        tar.close()
        raise NatsError(f"{path} has no manifest.json: not a NATS backup bundle")
    manifest = json.load(member)
    if manifest.get("format") != BUNDLE_FORMAT:
        raise NatsError(f"{path}: unknown bundle format {manifest.get('format')}")
    return manifest, tar


def cmd_snapshot(cfg: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    conn = Connection(cfg)
    try:
        names = args.stream or stream_names(conn)
        streams = []
        tmp = args.out + ".partial"
        with tarfile.open(tmp, "w:") as tar:
            for name in names:
                started = time.monotonic()
                meta, snap = snapshot_stream(conn, name, args.timeout)
                add_bytes(tar, f"{name}.json", json.dumps(meta, sort_keys=True).encode())
                add_bytes(tar, f"{name}.snap", snap)
                state = meta.get("state") or {}
                streams.append(
                    {
                        "name": name,
                        "messages": state.get("messages", 0),
                        "bytes": state.get("bytes", 0),
                        "last_seq": state.get("last_seq", 0),
                        "snapshot_bytes": len(snap),
                        "seconds": round(time.monotonic() - started, 3),
                    }
                )
            manifest = {
                "format": BUNDLE_FORMAT,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "server": conn.info.get("server_name"),
                "cluster": conn.info.get("cluster"),
                "streams": streams,
            }
            add_bytes(tar, "manifest.json", json.dumps(manifest, sort_keys=True).encode())
        os.replace(tmp, args.out)
        return manifest
    finally:
        conn.close()


def cmd_restore(cfg: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    manifest, tar = read_bundle(args.bundle)
    wanted = args.stream or [s["name"] for s in manifest["streams"]]
    missing = sorted(set(wanted) - {s["name"] for s in manifest["streams"]})
    if missing:
        raise NatsError(f"streams not in the bundle: {', '.join(missing)}")
    conn = Connection(cfg)
    restored = []
    try:
        for name in wanted:
            meta_file, snap_file = tar.extractfile(f"{name}.json"), tar.extractfile(f"{name}.snap")
            if meta_file is None or snap_file is None:
                raise NatsError(f"bundle entry for {name} is missing")
            meta = json.load(meta_file)
            if args.replicas:
                # Onto a smaller cluster or a standalone server (a DR site): fewer replicas.
                meta["config"]["num_replicas"] = args.replicas
            done = restore_stream(conn, meta, snap_file.read(), args.replace, args.timeout)
            state = done.get("state") or {}
            restored.append(
                {
                    "name": name,
                    "messages": state.get("messages", 0),
                    "last_seq": state.get("last_seq", 0),
                }
            )
    finally:
        conn.close()
        tar.close()
    return {"restored": restored}


def cmd_list(cfg: dict[str, Any], _args: argparse.Namespace) -> dict[str, Any]:
    conn = Connection(cfg)
    try:
        streams = []
        for name in stream_names(conn):
            state = conn.api(f"$JS.API.STREAM.INFO.{name}").get("state") or {}
            streams.append(
                {
                    "name": name,
                    "messages": state.get("messages", 0),
                    "last_seq": state.get("last_seq", 0),
                }
            )
        return {"streams": streams}
    finally:
        conn.close()


def cmd_inspect(_cfg: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    manifest, tar = read_bundle(args.bundle)
    tar.close()
    return manifest


def cmd_is_meta_leader(cfg: dict[str, Any], _args: argparse.Namespace) -> dict[str, Any]:
    leader = is_meta_leader(cfg)
    return {"meta_leader": leader, "exit": 0 if leader else 3}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="venta-nats-backup", description=__doc__.split("\n", 1)[0]
    )
    parser.add_argument("--config", default="/etc/venta-backup/nats.json")
    parser.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for each server reply"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("is-meta-leader")
    sub.add_parser("list")
    snap = sub.add_parser("snapshot")
    snap.add_argument("--out", required=True)
    snap.add_argument("--stream", action="append")
    restore = sub.add_parser("restore")
    restore.add_argument("--bundle", required=True)
    restore.add_argument("--stream", action="append")
    restore.add_argument(
        "--replace", action="store_true", help="delete an existing stream of the same name first"
    )
    restore.add_argument(
        "--replicas", type=int, default=0, help="replicas of the restored streams (0: as backed up)"
    )
    inspect = sub.add_parser("inspect")
    inspect.add_argument("--bundle", required=True)
    return parser.parse_args(argv)


COMMANDS = {
    "is-meta-leader": cmd_is_meta_leader,
    "list": cmd_list,
    "snapshot": cmd_snapshot,
    "restore": cmd_restore,
    "inspect": cmd_inspect,
}


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    cfg: dict[str, Any] = {}
    if args.command != "inspect":
        with open(args.config, encoding="utf-8") as handle:
            cfg = json.load(handle)
    try:
        result = COMMANDS[args.command](cfg, args)
    except (NatsError, OSError, ValueError, KeyError, tarfile.TarError) as exc:
        print(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"}), file=sys.stderr)
        return 1
    code = int(result.pop("exit", 0))
    print(json.dumps({"ok": code == 0, **result}, sort_keys=True))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
