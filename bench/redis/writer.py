"""Heartbeat writer of bench/redis/run, run inside the Redis host (python3 stdlib only).

Writes SET <key> "<seq> <unix ns>" as fast as acknowledgements come back (or every PACE_MS), on a
plain connection to 127.0.0.1. Every acknowledged write is reported on stdout as "ack <seq> <ns>"
(buffered, flushed every 50 writes and when the connection breaks), then "broken <ns>" when the
server goes away, and the process exits. Environment: REDIS_USER, REDIS_PASSWORD, KEY, PORT,
PACE_MS (0), SECONDS (the longest run, 120).
"""

import os
import socket
import sys
import time


def command(*args):
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def reply(stream):
    line = stream.readline()
    if not line:
        raise ConnectionError("closed")
    if line[:1] == b"-":
        raise RuntimeError(line.decode().strip())
    return line


def main():
    key = os.environ.get("KEY", "venta-ledger:aof-bench")
    pace = float(os.environ.get("PACE_MS", "0")) / 1000.0
    deadline = time.monotonic() + float(os.environ.get("SECONDS", "120"))
    sock = socket.create_connection(("127.0.0.1", int(os.environ.get("PORT", "6379"))), timeout=5)
    stream = sock.makefile("rb")
    sock.sendall(command("AUTH", os.environ["REDIS_USER"], os.environ["REDIS_PASSWORD"]))
    reply(stream)
    seq = 0
    buffered = []
    try:
        while time.monotonic() < deadline:
            seq += 1
            now = time.time_ns()
            sock.sendall(command("SET", key, f"{seq} {now}"))
            reply(stream)
            buffered.append(f"ack {seq} {now}")
            if len(buffered) >= 50:
                print("\n".join(buffered), flush=True)
                buffered.clear()
            if pace:
                time.sleep(pace)
    except (OSError, ConnectionError):
        pass
    if buffered:
        print("\n".join(buffered), flush=True)
    print(f"broken {time.time_ns()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
