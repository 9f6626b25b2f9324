"""venta.deploy.health_gate as Ansible runs it, against servers on loopback."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable, Iterator
from typing import ClassVar

import pytest
from ansible_collections.venta.deploy.plugins.modules import health_gate


class Backend(http.server.BaseHTTPRequestHandler):
    answers: ClassVar[list[int]] = []

    def do_GET(self) -> None:
        status = self.answers.pop(0) if self.answers else 200
        body = b'{"status":"ok","colour":"green"}' if status == 200 else b'{"status":"unhealthy"}'
        self.send_response(status)
        self.send_header("X-Venta-Colour", "green")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def backend() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Backend)
    Backend.answers = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_passes_after_n_good_answers_in_a_row(backend: str, module_runner: Callable) -> None:
    Backend.answers = [503, 200, 503]
    result = module_runner(
        health_gate.main,
        url=f"{backend}/health",
        json_match={"colour": "green"},
        header_match={"x-venta-colour": "green"},
        successes=3,
        interval=0.01,
        timeout=10,
    )
    assert result.get("failed") is not True, result
    assert result["changed"] is False
    assert result["attempts"] == 6
    assert result["consecutive_successes"] == 3
    assert len(result["timings_ms"]) == 6
    assert result["status"] == 200
    assert '"colour":"green"' in result["body_excerpt"]


def test_fails_naming_url_expectation_and_last_answer(
    backend: str, module_runner: Callable
) -> None:
    Backend.answers = [503] * 100
    result = module_runner(
        health_gate.main, url=f"{backend}/ready", successes=2, interval=0.05, timeout=0.3
    )
    assert result["failed"] is True
    assert f"{backend}/ready did not answer with status 200 2 time(s) in a row" in result["msg"]
    assert "last answer: status 503" in result["msg"]
    assert result["status"] == 503


def test_runs_in_check_mode(backend: str, module_runner: Callable) -> None:
    result = module_runner(
        health_gate.main, url=f"{backend}/health", successes=1, _ansible_check_mode=True
    )
    assert result["changed"] is False
    assert result["attempts"] == 1


def test_bad_url_is_refused(module_runner: Callable) -> None:
    result = module_runner(health_gate.main, url="ftp://example/")
    assert result["failed"] is True
    assert "is not an http:// or https:// URL" in result["msg"]
