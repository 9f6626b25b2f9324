"""Hold one WebSocket open through the edge and echo on it until told to stop.

Opens wss://<host>:<port><path> (verified against --ca), then sends a numbered text message every
--interval seconds and checks its echo, until the file --until-file exists (then one last echo)
or --max-seconds pass. Used to prove that a connection opened before a release switch keeps
working after it (the old nginx worker and the old colour's container drain it).

Prints one JSON object: handshake status, colour of the backend (X-Venta-Colour of the 101
answer), echoes that came back right, failures, the first error, seconds held, and whether an
echo succeeded after the stop file appeared. Exit 0 when every echo came back.
Frame helpers come from molecule/nginx_edge/files/ws_echo.py.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib.util
import json
import os
import socket
import ssl
import struct
import sys
import time
from pathlib import Path
from typing import Any

_WS_ECHO = Path(__file__).resolve().parents[2] / "molecule" / "nginx_edge" / "files" / "ws_echo.py"


def _load_ws_echo() -> Any:
    spec = importlib.util.spec_from_file_location("ws_echo", _WS_ECHO)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {_WS_ECHO}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ws_echo = _load_ws_echo()


def handshake(
    sock: ssl.SSLSocket, server_name: str, path: str
) -> tuple[int, dict[str, str], bytearray]:
    """Send the upgrade request; return the status, the lower-cased headers and leftover bytes."""
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: {server_name}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    buffer = bytearray()
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed during the handshake")
        buffer.extend(chunk)
    head, _sep, rest = bytes(buffer).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _colon, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    expected = base64.b64encode(hashlib.sha1((key + ws_echo.WS_GUID).encode()).digest()).decode()
    if headers.get("sec-websocket-accept", expected) != expected:
        raise ConnectionError("wrong Sec-WebSocket-Accept")
    return int(lines[0].split()[1]), headers, bytearray(rest)


def echo(sock: ssl.SSLSocket, buffer: bytearray, message: str) -> bool:
    sock.sendall(ws_echo.frame(0x1, message.encode()))
    opcode, payload = ws_echo.read_frame(sock, buffer)
    return opcode == 0x1 and payload.decode() == message


def hold(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {
        "status": None,
        "colour": "",
        "echoes_ok": 0,
        "echoes_failed": 0,
        "error": None,
        "held_s": 0.0,
        "echo_after_stop_file": False,
    }
    context = ssl.create_default_context(cafile=args.ca)
    context.set_alpn_protocols(["http/1.1"])
    started = time.monotonic()
    try:
        with (
            socket.create_connection((args.host, args.port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname=args.server_name) as sock,
        ):
            status, headers, buffer = handshake(sock, args.server_name, args.path)
            result["status"] = status
            result["colour"] = headers.get("x-venta-colour", "")
            if status != 101:
                return result
            if args.ready_file:
                Path(args.ready_file).write_text(result["colour"] + "\n", encoding="utf-8")
            number = 0
            while True:
                stop = bool(args.until_file) and Path(args.until_file).exists()
                number += 1
                if echo(sock, buffer, f"{args.message}-{number}"):
                    result["echoes_ok"] += 1
                    if stop:
                        result["echo_after_stop_file"] = True
                else:
                    result["echoes_failed"] += 1
                if stop or time.monotonic() - started >= args.max_seconds:
                    break
                time.sleep(args.interval)
            sock.sendall(ws_echo.frame(0x8, struct.pack("!H", 1000)))
    except (OSError, ConnectionError, ValueError) as exc:
        result["echoes_failed"] += 1
        result["error"] = f"{type(exc).__name__}: {exc}"
    result["held_s"] = round(time.monotonic() - started, 3)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8443)
    parser.add_argument("--server-name", default="127.0.0.1")
    parser.add_argument("--ca", required=True)
    parser.add_argument("--path", default="/realtime/ws")
    parser.add_argument("--message", default="venta-drain")
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--max-seconds", type=float, default=120.0)
    parser.add_argument("--until-file", default="", help="stop after a last echo once it exists")
    parser.add_argument("--ready-file", default="", help="written with the colour once connected")
    args = parser.parse_args(argv)
    result = hold(args)
    print(json.dumps(result))
    ok = result["status"] == 101 and result["echoes_failed"] == 0 and result["echoes_ok"] > 0
    if args.until_file:
        ok = ok and result["echo_after_stop_file"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
