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
