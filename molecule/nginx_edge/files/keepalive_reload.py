"""Keep one HTTPS keep-alive connection open through the edge across a switch-layer reload.

Usage: python3 keepalive_reload.py HOST PORT CA_FILE PATH CONTAINER SWITCH_UNIT

Sends three requests on one connection, reloads the switch layer in CONTAINER (docker exec
systemctl reload SWITCH_UNIT), waits until its old workers have gone, sends three more on the
same connection. Prints JSON: statuses, whether the connection was reused throughout, the
client-facing nginx's worker PIDs before and after (unchanged: it was not reloaded) and the
switch layer's (changed: it was).
"""

import http.client
import json
import ssl
import subprocess
import sys
import time


def workers(container: str, pid_command: str) -> list[str]:
    """PIDs of the worker processes of the nginx master whose PID pid_command prints."""
    out = subprocess.run(
        ["docker", "exec", container, "sh", "-c", f"ps -o pid= --ppid $({pid_command})"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return sorted(out.split())


def main() -> int:
    host, port, ca_file, path, container, unit = sys.argv[1:7]
    front_pid = "cat /run/nginx.pid"
    switch_pid = f"systemctl show -p MainPID --value {unit}"
    context = ssl.create_default_context(cafile=ca_file)
    conn = http.client.HTTPSConnection(host, int(port), context=context, timeout=10)
    statuses: list[int] = []
    sockets: set[int] = set()
    errors: list[str] = []

    def request() -> None:
        try:
            conn.request("GET", path, headers={"Host": "localhost"})
            response = conn.getresponse()
            response.read()
            statuses.append(response.status)
            sockets.add(id(conn.sock))
        except (OSError, http.client.HTTPException) as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            conn.close()

    before = {"front": workers(container, front_pid), "switch": workers(container, switch_pid)}
    for _attempt in range(3):
        request()
    subprocess.run(["docker", "exec", container, "systemctl", "reload", unit], check=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        time.sleep(0.5)
        if not set(workers(container, switch_pid)) & set(before["switch"]):
            break
    for _attempt in range(3):
        request()
    after = {"front": workers(container, front_pid), "switch": workers(container, switch_pid)}
    print(
        json.dumps(
            {
                "statuses": statuses,
                "errors": errors,
                "one_connection": len(sockets) == 1 and not errors,
                "workers_before": before,
                "workers_after": after,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
