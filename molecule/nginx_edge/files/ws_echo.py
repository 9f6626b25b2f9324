"""Open a WebSocket over TLS (standard library only), send one text message, print the echo.

Prints one JSON object: the handshake status, whether Sec-WebSocket-Accept was right, the TLS
version, the colour of the backend (X-Venta-Colour of the 101 answer, if any) and the echo.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import socket
import ssl
import struct
import sys

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def read_exact(sock: ssl.SSLSocket, buffer: bytearray, size: int) -> bytes:
    while len(buffer) < size:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed while reading a frame")
        buffer.extend(chunk)
    data = bytes(buffer[:size])
    del buffer[:size]
    return data


def read_frame(sock: ssl.SSLSocket, buffer: bytearray) -> tuple[int, bytes]:
    first, second = read_exact(sock, buffer, 2)
    length = second & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", read_exact(sock, buffer, 2))
    elif length == 127:
        (length,) = struct.unpack("!Q", read_exact(sock, buffer, 8))
    mask = read_exact(sock, buffer, 4) if second & 0x80 else b""
    payload = read_exact(sock, buffer, length)
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return first & 0x0F, payload


def frame(opcode: int, payload: bytes) -> bytes:
    mask = os.urandom(4)
    header = bytes([0x80 | opcode])
    if len(payload) < 126:
        header += bytes([0x80 | len(payload)])
    elif len(payload) < 65536:
        header += bytes([0x80 | 126]) + struct.pack("!H", len(payload))
    else:
        header += bytes([0x80 | 127]) + struct.pack("!Q", len(payload))
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--server-name", default="127.0.0.1")
    parser.add_argument("--ca", required=True)
    parser.add_argument("--path", default="/ws")
    parser.add_argument("--message", default="hello through the edge")
    args = parser.parse_args()

    context = ssl.create_default_context(cafile=args.ca)
    context.set_alpn_protocols(["http/1.1"])
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET {args.path} HTTP/1.1\r\nHost: {args.server_name}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    with (
        socket.create_connection((args.host, args.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=args.server_name) as sock,
    ):
        sock.sendall(request.encode())
        buffer = bytearray()
        while b"\r\n\r\n" not in buffer:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed during the handshake")
            buffer.extend(chunk)
        head, _sep, rest = bytes(buffer).partition(b"\r\n\r\n")
        buffer = bytearray(rest)
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _colon, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        expected = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        result = {
            "status": int(lines[0].split()[1]),
            "accept_ok": headers.get("sec-websocket-accept") == expected,
            "tls": sock.version(),
            "colour": headers.get("x-venta-colour", ""),
            "request_id": headers.get("x-request-id", ""),
            "echo": None,
        }
        if result["status"] == 101:
            sock.sendall(frame(0x1, args.message.encode()))
            opcode, payload = read_frame(sock, buffer)
            if opcode == 0x1:
                result["echo"] = payload.decode()
            sock.sendall(frame(0x8, struct.pack("!H", 1000)))
    print(json.dumps(result))
    return 0 if result["echo"] == args.message else 1


if __name__ == "__main__":
    sys.exit(main())
