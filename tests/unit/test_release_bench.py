"""The helpers of the zero-downtime proof (bench/release): the summary of a playbook run and of
wrk, and the WebSocket client that holds a connection across a switch (against a real local TLS
echo server)."""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import ssl
import struct
import subprocess
import threading
from pathlib import Path

import pytest
from file_module import load_file

BENCH = Path(__file__).resolve().parents[2] / "bench" / "release"
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


summarise = load_file("release_summarise", BENCH / "summarise.py")
ws_hold = load_file("release_ws_hold", BENCH / "ws_hold.py")


def _switch(service: str, changed: bool, switch_s: float, total_s: float) -> dict:
    """What venta.deploy.nginx_switch returns for one service (a batch of one)."""
    return {
        "action": "venta.deploy.nginx_switch",
        "changed": changed,
        "failed": False,
        "services": [
            {
                "service": service,
                "changed": changed,
                "after": {"weights": {"blue": 0, "green": 100}},
            }
        ],
        "recovered": {},
        "timings": {"switch_s": switch_s, "total_s": total_s},
    }


def test_playbook_summary_counts_changed_switches_and_failures() -> None:
    report = {
        "plays": [
            {
                "tasks": [
                    {
                        "task": {"name": "Switch a"},
                        "hosts": {"edge1": _switch("a", True, 0.1, 1.0)},
                    },
                    {
                        "task": {"name": "Switch b"},
                        "hosts": {"edge1": _switch("b", True, 0.3, 2.0)},
                    },
                    {"task": {"name": "Switch c"}, "hosts": {"edge1": _switch("c", False, 0, 0.2)}},
                    {
                        "task": {"name": "Fail the release"},
                        "hosts": {
                            "edge1": {
                                "action": "ansible.builtin.fail",
                                "failed": True,
                                "msg": "Switch of webhooks aborted",
                            }
                        },
                    },
                ]
            }
        ],
        "stats": {"edge1": {"failures": 1, "unreachable": 0}, "app1": {"failures": 0}},
    }
    result = summarise.playbook_summary(report)
    assert result["switches"] == 2
    assert result["calls"] == 2
    assert result["services"] == ["a", "b"]
    assert result["switch_s_median"] == pytest.approx(0.2)
    assert result["switch_s_max"] == pytest.approx(0.3)
    assert result["switch_total_s_sum"] == pytest.approx(3.0)
    assert result["failures"] == [
        {"task": "Fail the release", "host": "edge1", "msg": "Switch of webhooks aborted"}
    ]
    assert result["failed_hosts"] == ["edge1"]


def test_playbook_summary_counts_the_services_of_one_call_switching_several() -> None:
    together = {
        "action": "venta.deploy.nginx_switch",
        "changed": True,
        "failed": False,
        "services": [
            {"service": "a", "changed": True, "after": {"weights": {"blue": 100, "green": 0}}},
            {"service": "b", "changed": False, "after": {"weights": {"blue": 100, "green": 0}}},
            {"service": "c", "changed": True, "after": {"weights": {"blue": 100, "green": 0}}},
        ],
        "timings": {"switch_s": 0.4, "total_s": 1.5},
    }
    report = {"plays": [{"tasks": [{"task": {"name": "Switch"}, "hosts": {"edge1": together}}]}]}
    result = summarise.playbook_summary(report)
    assert result["switches"] == 2
    assert result["calls"] == 1
    assert result["services"] == ["a", "c"]
    assert result["switch_s_median"] == pytest.approx(0.4)
    assert result["switch_total_s_sum"] == pytest.approx(1.5)


def _recovery(changed: bool, recovered: dict | None = None, services: object = ()) -> dict:
    """A recovery-only call (edge_states.yml): no service asked for."""
    result = {
        "action": "venta.deploy.nginx_switch",
        "changed": changed,
        "failed": False,
        "recovered": recovered or {},
        "timings": {"total_s": 0.1},
    }
    if services != ():
        result["services"] = services
    return result


@pytest.mark.parametrize("services", [[], None, ()])
def test_a_recovery_call_without_services_switches_nothing(services: object) -> None:
    undone = {"webhooks": "undone, back to blue 100 / green 0"}
    report = {
        "plays": [
            {
                "tasks": [
                    {
                        "task": {"name": "Switch nothing (recovery only)"},
                        "hosts": {
                            "edge1": _recovery(True, undone, services),
                            "edge2": _recovery(False, None, services),
                        },
                    },
                    {
                        "task": {"name": "Switch webhooks"},
                        "hosts": {
                            "edge1": _switch("webhooks", True, 0.1, 1.0),
                            "edge2": _switch("webhooks", True, 0.2, 1.0),
                        },
                    },
                ]
            }
        ]
    }
    result = summarise.playbook_summary(report)
    assert result["services"] == ["webhooks"]
    assert result["switches"] == 2
    assert result["switches_per_edge"] == {"edge1": 1, "edge2": 1}
    assert result["calls_per_edge"] == {"edge1": 1, "edge2": 1}
    assert result["recoveries"] == [{"host": "edge1", "recovered": undone}]


def test_switch_items_of_each_result_shape() -> None:
    assert summarise.switch_items({"services": []}) == []
    assert summarise.switch_items({"services": None}) == []
    assert summarise.switch_items({"msg": "MODULE FAILURE"}) == []
    assert summarise.switch_items({"service": "a", "changed": True}) == [
        {"service": "a", "changed": True}
    ]


def test_every_edge_needs_each_edge_at_the_value() -> None:
    summary = {"switches_per_edge": {"edge1": 8, "edge2": 8}}
    assert summarise.every_edge(summary, "switches_per_edge", ["edge1", "edge2"], 8)
    assert not summarise.every_edge(summary, "switches_per_edge", ["edge1", "edge2"], 4)
    one = {"switches_per_edge": {"edge1": 8}}
    assert not summarise.every_edge(one, "switches_per_edge", ["edge1", "edge2"], 8)


H2LOAD_ROUND = """starting benchmark...
spawning thread #0: 4 total client(s). 1000 total requests
Application protocol: h2
finished in 10.00s, 100.00 req/s, 45.08KB/s
requests: 1000 total, 1000 started, 1000 done, 998 succeeded, 2 failed, 2 errored, 0 timeout
status codes: 997 2xx, 0 3xx, 0 4xx, 1 5xx
traffic: 450.81KB (461628) total, 318.94KB (326594) headers (space savings 25.43%)
                     min         max         mean         sd        +/- sd
time for request:      850us     31.97ms      3.03ms      3.38ms    92.80%
time for connect:     2.30ms      3.01ms      2.66ms       501us   100.00%
"""


def test_h2load_round_reads_requests_status_codes_and_times() -> None:
    result = summarise.h2load_round(H2LOAD_ROUND, clients=4, rps=25, duration=10)
    assert result["requests"] == 1000
    assert result["failed"] == 2
    assert result["errored"] == 2
    assert result["non2xx"] == 1
    assert result["planned"] == 1000
    assert result["planned_per_connection"] == 250
    assert result["short"] is False
    assert result["max_ms"] == pytest.approx(31.97)
    assert result["mean_ms"] == pytest.approx(3.03)


def test_h2load_round_in_seconds_and_microseconds() -> None:
    text = H2LOAD_ROUND.replace("850us     31.97ms", "850us     1.20s")
    assert summarise.h2load_round(text, 4, 25, 10)["max_ms"] == pytest.approx(1200.0)


def test_h2load_summary_adds_rounds_and_flags_a_stalled_connection() -> None:
    stalled = H2LOAD_ROUND.replace(
        "1000 total, 1000 started, 1000 done", "600 total, 600 started, 600 done"
    )
    text = (
        "# h2load round clients=4 rps=25 duration=10\n"
        + H2LOAD_ROUND
        + "# h2load round clients=4 rps=25 duration=10\n"
        + stalled
        + "# h2load round clients=4 rps=25 duration=10\nstarting benchmark...\n"
    )
    result = summarise.h2load_summary(text)
    assert result["rounds"] == 2
    assert result["rounds_incomplete"] == 1
    assert result["requests"] == 1600
    assert result["errors"] == 8
    assert result["non2xx"] == 2
    assert result["short_rounds"] == 1
    assert result["max_planned_per_connection"] == 250


def test_h2load_summary_without_a_round_fails() -> None:
    with pytest.raises(ValueError, match="no complete h2load round"):
        summarise.h2load_summary("# h2load round clients=1 rps=1 duration=1\nconnect failed\n")


def _report(host_calls: dict[str, list[tuple[list[str], float]]], failures: list[str] = ()) -> str:
    """The json callback's output of a run whose edges made these switch calls."""
    tasks = []
    for index in range(max(len(calls) for calls in host_calls.values())):
        hosts = {}
        for host, calls in host_calls.items():
            if index < len(calls):
                services, switch_s = calls[index]
                hosts[host] = {
                    "action": "venta.deploy.nginx_switch",
                    "changed": True,
                    "services": [{"service": s, "changed": True, "after": {}} for s in services],
                    "timings": {"switch_s": switch_s, "total_s": switch_s * 10},
                }
        tasks.append({"task": {"name": f"Switch {index}"}, "hosts": hosts})
    for msg in failures:
        tasks.append(
            {
                "task": {"name": "Fail the release"},
                "hosts": {"edge1": {"action": "ansible.builtin.fail", "failed": True, "msg": msg}},
            }
        )
    return json.dumps({"plays": [{"tasks": tasks}], "stats": {}})


def test_bench_summary_checks_every_edge_and_both_loads(tmp_path: Path) -> None:
    edges = ["edge1", "edge2"]
    eight = [f"s{i}" for i in range(8)]
    domains = [eight[:2], eight[2:3], eight[3:5], eight[5:]]
    canary = eight[5:]

    def per_edge(calls: list) -> dict:
        return {edge: calls for edge in edges}

    (tmp_path / "release.json").write_text(_report(per_edge([(d, 0.05) for d in domains])))
    (tmp_path / "rollback.json").write_text(_report(per_edge([(eight, 0.05)])))
    (tmp_path / "canary.json").write_text(_report(per_edge([(canary, 0.05), (canary, 0.05)])))
    (tmp_path / "rollback_domain.json").write_text(_report(per_edge([(canary, 0.05)])))
    (tmp_path / "fault.json").write_text(
        _report(
            {"edge1": [], "edge2": []}, ["Release stopped: webhooks: http://a:1/ready answered 503"]
        )
    )
    steps = [("release", 0), ("rollback", 0), ("canary", 0), ("rollback_domain", 0), ("fault", 2)]
    (tmp_path / "steps.jsonl").write_text(
        "".join(json.dumps({"name": n, "rc": rc, "wall_s": 1.5}) + "\n" for n, rc in steps)
    )
    (tmp_path / "wrk.txt").write_text(
        '{"requests": 30000, "non2xx": 0, "socket_errors": {"connect": 0, "read": 0, "write": 0, '
        '"timeout": 0}, "status_errors": 0, "p50_ms": 1, "p99_ms": 2, "max_ms": 3, '
        '"duration_s": 60}\n'
    )
    clean = H2LOAD_ROUND.replace(
        "998 succeeded, 2 failed, 2 errored", "1000 succeeded, 0 failed, 0 errored"
    )
    clean = clean.replace("997 2xx, 0 3xx, 0 4xx, 1 5xx", "1000 2xx, 0 3xx, 0 4xx, 0 5xx")
    (tmp_path / "h2load.txt").write_text(
        "".join("# h2load round clients=4 rps=25 duration=10\n" + clean for _round in range(6))
    )
    (tmp_path / "ws.json").write_text(json.dumps({"status": 101, "echo_after_stop_file": True}))
    colours = {"edge1": "blue", "edge2": "blue", "vip": "blue"}
    facts = {
        "versions": {"old": "1.0.0", "new": "1.1.0"},
        "vip": "https://10.77.0.100",
        "edges": edges,
        "services": eight,
        "domains": ["d1", "d2", "d3", "d4"],
        "canary_domain": "d4",
        "canary_services": canary,
        "canary_steps": [10, 100],
        "min_requests": 20000,
        "min_h2_requests": 5000,
        "fault": {"service": "webhooks", "colours_before": colours, "colours_after": colours},
        "websocket": {"rc": 0, "colour_before": "green", "new_connection_colour": "blue"},
        "final": {"every_edge_on_old": True, "live_versions": "edge1: 8 1.0.0"},
    }
    (tmp_path / "facts.json").write_text(json.dumps(facts))
    summary = summarise.bench_summary(tmp_path)
    assert summary["checks"] == {key: True for key in summary["checks"]}
    assert summary["ok"] is True
    assert summary["release_all"]["calls_per_edge"] == {"edge1": 4, "edge2": 4}
    assert summary["h2load"]["requests"] == 6000

    (tmp_path / "rollback.json").write_text(_report({"edge1": [(eight, 0.05)], "edge2": []}))
    facts["fault"]["colours_after"] = {**colours, "edge2": "green"}
    (tmp_path / "facts.json").write_text(json.dumps(facts))
    summary = summarise.bench_summary(tmp_path)
    assert summary["ok"] is False
    assert not summary["checks"]["rollback_ok"]
    assert not summary["checks"]["fault_traffic_kept"]


def test_wrk_summary_reads_the_json_line_and_totals_socket_errors() -> None:
    text = (
        "Running 30s test @ https://127.0.0.1:8443\n  2 threads and 8 connections\n"
        '{"requests": 25000, "non2xx": 0, "socket_errors": {"connect": 0, "read": 2, "write": 0, '
        '"timeout": 1}, "status_errors": 0, "p50_ms": 3.1, "p99_ms": 20.5, "max_ms": 80.0, '
        '"duration_s": 30.0}\n'
    )
    result = summarise.wrk_summary(text)
    assert result["requests"] == 25000
    assert result["socket_errors_total"] == 3


def test_wrk_summary_without_the_line_fails() -> None:
    with pytest.raises(ValueError, match="no JSON summary"):
        summarise.wrk_summary("Running 30s test\n")


# ---- ws_hold against a real TLS WebSocket echo server ------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def _serve(listener: socket.socket, context: ssl.SSLContext, close_after: int | None) -> None:
    raw, _addr = listener.accept()
    with context.wrap_socket(raw, server_side=True) as sock:
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(4096)
        key = next(
            line.split(":", 1)[1].strip()
            for line in data.decode().split("\r\n")
            if line.lower().startswith("sec-websocket-key")
        )
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        sock.sendall(
            (
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Accept: {accept}\r\nX-Venta-Colour: green\r\n\r\n"
            ).encode()
        )
        buffer = bytearray()
        echoed = 0
        while True:
            try:
                opcode, payload = ws_hold.ws_echo.read_frame(sock, buffer)
            except (ConnectionError, OSError):
                return
            if opcode == 0x8:
                return
            if close_after is not None and echoed >= close_after:
                return  # drop the connection, as a cut at the switch would
            sock.sendall(bytes([0x81, len(payload)]) + payload)
            echoed += 1


def _run(tls_files: tuple[Path, Path], tmp_path: Path, close_after: int | None) -> tuple[int, dict]:
    cert, key = tls_files
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = threading.Thread(target=_serve, args=(listener, context, close_after), daemon=True)
    server.start()
    stop = tmp_path / "stop"
    ready = tmp_path / "ready"
    threading.Timer(0.6, stop.touch).start()
    args = [
        "--port",
        str(port),
        "--ca",
        str(cert),
        "--interval",
        "0.1",
        "--max-seconds",
        "10",
        "--until-file",
        str(stop),
        "--ready-file",
        str(ready),
    ]
    code = ws_hold.main(args)
    listener.close()
    server.join(5)
    return code, {"ready": ready.read_text(encoding="utf-8").strip() if ready.exists() else ""}


def test_ws_hold_echoes_until_the_stop_file(
    tls_files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, extra = _run(tls_files, tmp_path, close_after=None)
    result = json.loads(capsys.readouterr().out)
    assert code == 0
    assert result["status"] == 101
    assert result["colour"] == "green" == extra["ready"]
    assert result["echoes_ok"] >= 3
    assert result["echoes_failed"] == 0
    assert result["echo_after_stop_file"] is True


def test_ws_hold_reports_a_cut_connection(
    tls_files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _extra = _run(tls_files, tmp_path, close_after=2)
    result = json.loads(capsys.readouterr().out)
    assert code == 1
    assert result["echoes_ok"] == 2
    assert result["echoes_failed"] == 1
    assert result["error"]
    assert result["echo_after_stop_file"] is False


def test_frame_helpers_round_trip() -> None:
    framed = ws_hold.ws_echo.frame(0x1, b"abc")
    assert framed[0] == 0x81
    assert struct.unpack("!B", framed[1:2])[0] & 0x7F == 3


def test_json_report_skips_the_other_callbacks_output() -> None:
    text = (
        "Monday 23 November 2026  03:09:40 +0000 (0:00:00.040)  0:00:00.040 ****\n"
        '{\n    "plays": [],\n    "stats": {}\n}\n'
        "ROLES RECAP ****\nservice ---- 9.90s\n"
    )
    assert summarise.json_report(text) == {"plays": [], "stats": {}}
    with pytest.raises(ValueError, match="no JSON report"):
        summarise.json_report("PLAY RECAP\n")
