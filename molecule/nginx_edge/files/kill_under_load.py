"""SIGKILL an nginx of the edge under keep-alive load and measure how it heals.

Usage: python3 kill_under_load.py HOST PORT CA_FILE PATH CONTAINER UNIT WHOM [SOCKET_DIR]

Keeps CONNECTIONS keep-alive HTTPS connections busy with GET PATH, then, in CONTAINER (docker
exec), SIGKILLs UNIT's master (WHOM=main: `kill -9 $MAINPID`, its workers stay to systemd) or
every process of UNIT (WHOM=all: `systemctl kill -s KILL UNIT`, the lab's incident), and lists
the unix sockets left in SOCKET_DIR right after the kill. Waits until systemd reports UNIT active
with a new main PID (restart_seconds), keeps the load on for SETTLE seconds more, then opens
fresh connections for a few more requests. Prints JSON: restart_seconds, requests, failed,
error_seconds (distinct seconds after the kill with at least one failed request),
error_span_seconds (first to last failure), failed_in_last_seconds (failures in the last
TAIL seconds of the load: 0 means it healed), after (statuses of the fresh requests), the main
PIDs, the sockets (name and inode) right after the kill and after the restart, a sample of errors.
"""

from __future__ import annotations

import http.client
import json
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

CONNECTIONS = 4
PAUSE = 0.02  # seconds between two requests of a connection
WARMUP = 2.0
SETTLE = 3.0
TAIL = 2.0
RESTART_DEADLINE = 15.0


@dataclass
class Load:
    host: str
    port: int
    context: ssl.SSLContext
    path: str
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    samples: list[tuple[float, bool]] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)

    def record(self, ok: bool, error: str | None = None) -> None:
        with self.lock:
            self.samples.append((time.monotonic(), ok))
            if error:
                self.errors[error] += 1

    def request(self, conn: http.client.HTTPSConnection) -> int:
        conn.request("GET", self.path, headers={"Host": "localhost"})
        response = conn.getresponse()
        response.read()
        return response.status

    def connection(self) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(self.host, self.port, context=self.context, timeout=5)

    def worker(self) -> None:
        conn = self.connection()
        while not self.stop.is_set():
            try:
                status = self.request(conn)
            except (OSError, http.client.HTTPException) as exc:
                self.record(False, type(exc).__name__)
                conn.close()
                conn = self.connection()
                time.sleep(0.05)
                continue
            self.record(status == 200, None if status == 200 else f"HTTP {status}")
            time.sleep(PAUSE)
        conn.close()


def in_container(container: str, script: str) -> str:
    return subprocess.run(
        ["docker", "exec", container, "sh", "-c", script],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def unit_state(container: str, unit: str) -> tuple[str, int]:
    out = in_container(container, f"systemctl show -p ActiveState -p MainPID {unit}")
    values = dict(line.split("=", 1) for line in out.split())
    return values.get("ActiveState", ""), int(values.get("MainPID", "0") or 0)


def sockets(container: str, directory: str) -> list[str]:
    if not directory:
        return []
    out = in_container(container, f"find {directory} -maxdepth 1 -type s -printf '%f %i\\n'")
    return sorted(out.splitlines())


def main() -> int:
    host, port, ca_file, path, container, unit, whom = sys.argv[1:8]
    socket_dir = sys.argv[8] if len(sys.argv) > 8 else ""
    load = Load(host, int(port), ssl.create_default_context(cafile=ca_file), path)
    threads = [threading.Thread(target=load.worker, daemon=True) for _index in range(CONNECTIONS)]
    for thread in threads:
        thread.start()
    time.sleep(WARMUP)

    _state, pid_before = unit_state(container, unit)
    kill = f"kill -9 {pid_before}" if whom == "main" else f"systemctl kill -s KILL {unit}"
    listing = f"; find {socket_dir} -maxdepth 1 -type s -printf '%f %i\\n'" if socket_dir else ""
    killed_at = time.monotonic()
    stale = sorted(in_container(container, kill + listing).splitlines())

    restart_seconds = None
    pid_after = 0
    while time.monotonic() - killed_at < RESTART_DEADLINE:
        state, pid_after = unit_state(container, unit)
        if state == "active" and pid_after not in (0, pid_before):
            restart_seconds = round(time.monotonic() - killed_at, 2)
            break
        time.sleep(0.1)
    time.sleep(SETTLE)
    load.stop.set()
    ended_at = time.monotonic()
    for thread in threads:
        thread.join(10)

    after = []
    for _attempt in range(5):
        conn = load.connection()
        try:
            after.append(load.request(conn))
        except (OSError, http.client.HTTPException) as exc:
            after.append(type(exc).__name__)
        finally:
            conn.close()

    failures = [t - killed_at for t, ok in load.samples if not ok]
    print(
        json.dumps(
            {
                "unit": unit,
                "killed": "master (kill -9 MainPID)" if whom == "main" else "every process",
                "restart_seconds": restart_seconds,
                "requests": len(load.samples),
                "failed": len(failures),
                "failed_before_kill": sum(1 for t in failures if t < 0),
                "error_seconds": len({int(t) for t in failures}),
                "error_span_seconds": round(max(failures) - min(failures), 2) if failures else 0,
                "failed_in_last_seconds": sum(
                    1 for t, ok in load.samples if not ok and t > ended_at - TAIL
                ),
                "after": after,
                "pid_before": pid_before,
                "pid_after": pid_after,
                "sockets_after_kill": stale,
                "sockets_after_restart": sockets(container, socket_dir),
                "errors": dict(load.errors),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
