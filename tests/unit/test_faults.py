"""The fault-test harness (molecule/e2e/faults): the prober's outage arithmetic (and the prober
against a real local TLS server), the comparison of what an edge answers with what it records,
the load's evidence checks, and what the cases read from playbook output and from the edges."""

from __future__ import annotations

import json
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from file_module import load_file

FAULTS = Path(__file__).resolve().parents[2] / "molecule" / "e2e" / "faults"

# Registered under the names the harness imports each other by.
fault_probe = load_file("fault_probe", FAULTS / "fault_probe.py")
fault_lab = load_file("fault_lab", FAULTS / "fault_lab.py")
fault_load = load_file("fault_load", FAULTS / "fault_load.py")
fault_cases = load_file("fault_cases", FAULTS / "fault_cases.py")
fault_run = load_file("fault_run", FAULTS / "run.py")

Sample = fault_probe.Sample


def _samples(pattern: str, step: float = 0.02, start: float = 100.0) -> list:
    """'.' a good request, 'x' a failed one, one every `step` seconds."""
    return [
        Sample(start + i * step, char == ".", 1.0, "200" if char == "." else "ConnectionResetError")
        for i, char in enumerate(pattern)
    ]


# ---- the prober's arithmetic ------------------------------------------------------------------


def test_no_failure_no_outage() -> None:
    result = fault_probe.probe_summary(_samples("....."), origin=100.0)
    assert result["requests"] == 5
    assert result["failed"] == 0
    assert result["outages"] == []
    assert result["seconds_with_errors"] == 0
    assert result["max_outage_s"] == 0.0


def test_an_outage_runs_from_the_last_good_to_the_next_good_request() -> None:
    # good at 100.00 and 100.02, failures at 100.04..100.08, good again at 100.10
    result = fault_probe.probe_summary(_samples("..xxx.."), origin=100.0)
    assert result["failed"] == 3
    assert result["outages"] == [
        {"at": 0.04, "failed": 3, "errors": ["ConnectionResetError"], "outage_s": 0.08}
    ]
    assert result["seconds_with_errors"] == pytest.approx(0.08)
    assert result["error_seconds"] == 1


def test_two_outages_add_up_and_the_longest_is_kept() -> None:
    result = fault_probe.probe_summary(_samples(".x...xxxx.", step=0.5), origin=100.0)
    assert [o["failed"] for o in result["outages"]] == [1, 4]
    assert [o["outage_s"] for o in result["outages"]] == [1.0, 2.5]
    assert result["seconds_with_errors"] == pytest.approx(3.5)
    assert result["max_outage_s"] == pytest.approx(2.5)
    assert result["error_seconds"] == 4  # whole seconds 0, 2, 3 and 4 since the origin


def test_an_outage_that_never_ends_counts_to_the_last_sample() -> None:
    result = fault_probe.probe_summary(_samples("..xxx"), origin=100.0)
    (outage,) = result["outages"]
    assert outage["unrecovered"] is True
    assert outage["outage_s"] == pytest.approx(0.04)


def test_failures_from_the_first_request_start_the_outage_there() -> None:
    (outage,) = fault_probe.outages(_samples("xx."))
    assert outage["outage_s"] == pytest.approx(0.04)


# ---- the prober against a real TLS server -------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"),
            *("-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1"),
            *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    failing = threading.Event()
    connections: ClassVar[set[tuple[str, int]]] = set()

    def do_GET(self) -> None:
        type(self).connections.add(self.client_address)
        if type(self).failing.is_set():
            self.send_response(503)
        else:
            self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *_args: object) -> None:
        return


def test_the_prober_keeps_one_connection_and_records_error_answers(
    tls_files: tuple[Path, Path],
) -> None:
    cert, key = tls_files
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    prober = fault_probe.Prober(
        "127.0.0.1", server.server_address[1], str(cert), ["/a", "/b"], interval=0.01
    )
    thread = threading.Thread(target=prober.run, daemon=True)
    thread.start()
    time.sleep(0.5)
    _Handler.failing.set()
    time.sleep(0.3)
    _Handler.failing.clear()
    time.sleep(0.5)
    prober.stop.set()
    thread.join(5)
    server.shutdown()
    result = fault_probe.probe_summary(prober.samples, prober.samples[0].start)
    assert result["requests"] > 15
    assert result["failed"] > 0
    assert len(result["outages"]) == 1
    assert result["outages"][0]["errors"] == ["503"]
    assert 0.2 < result["outages"][0]["outage_s"] < 1.0
    assert len(_Handler.connections) == 1  # keep-alive: one connection throughout


# ---- what an edge records against what it answers ----------------------------------------------


def _state(**services: tuple[str, dict, dict]) -> dict:
    return {
        "services": {
            name: {"active": active, "weights": weights, "versions": versions}
            for name, (active, weights, versions) in services.items()
        }
    }


BLUE = ("blue", {"blue": 100, "green": 0}, {"blue": "1.0.0", "green": "1.1.0"})


def test_answers_matching_the_state_have_no_mismatch() -> None:
    answers = {"webhooks": [{"status": 200, "colour": "blue", "version": "1.0.0"}] * 2}
    assert fault_lab.mismatches(_state(webhooks=BLUE), answers) == []


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ({"status": 200, "colour": "green", "version": "1.1.0"}, "answered from green"),
        ({"status": 200, "colour": "blue", "version": "1.1.0"}, "blue answered 1.1.0, recorded"),
        ({"status": 502, "colour": "", "version": ""}, "answered 502"),
        ({"status": None, "colour": "", "version": "", "error": "TimeoutError"}, "TimeoutError"),
    ],
)
def test_an_answer_the_state_does_not_explain_is_a_mismatch(answer: dict, expected: str) -> None:
    (mismatch,) = fault_lab.mismatches(_state(webhooks=BLUE), {"webhooks": [answer]})
    assert mismatch.startswith("webhooks: ")
    assert expected in mismatch


def test_no_state_or_a_missing_service_is_a_mismatch() -> None:
    answers = {"webhooks": [{"status": 200, "colour": "blue", "version": "1.0.0"}]}
    assert fault_lab.mismatches(None, answers) == ["no readable release state"]
    assert fault_lab.mismatches(_state(), answers) == ["webhooks: not in the release state"]


def test_a_canary_answers_from_either_weighted_colour() -> None:
    canary = ("blue", {"blue": 90, "green": 10}, {"blue": "1.0.0", "green": "1.1.0"})
    answers = {
        "webhooks": [
            {"status": 200, "colour": "blue", "version": "1.0.0"},
            {"status": 200, "colour": "green", "version": "1.1.0"},
        ]
    }
    assert fault_lab.mismatches(_state(webhooks=canary), answers) == []


def test_edges_that_record_different_weights_disagree() -> None:
    green = ("green", {"blue": 0, "green": 100}, {"blue": "1.0.0", "green": "1.1.0"})
    same = {
        "e1": _state(webhooks=BLUE, geolocation=BLUE),
        "e2": _state(webhooks=BLUE, geolocation=BLUE),
    }
    assert fault_lab.disagreements(same) == []
    differ = {"e1": _state(webhooks=BLUE), "e2": _state(webhooks=green)}
    (line,) = fault_lab.disagreements(differ)
    assert line.startswith("webhooks: ")
    assert fault_lab.disagreements({"e1": _state(webhooks=BLUE), "e2": None}) != []


def test_live_view_and_digest() -> None:
    assert fault_lab.live_view(_state(webhooks=BLUE)) == {"webhooks": "blue 1.0.0"}
    assert fault_lab.live_view(None) == {}
    assert fault_lab.digest(None) is None
    assert fault_lab.digest("a") == fault_lab.digest("a") != fault_lab.digest("b")


# ---- the load's evidence ----------------------------------------------------------------------


def _load(**overrides: dict) -> dict:
    load = {
        "duration_s": 20.0,
        "wrk": {"requests": 6000, "non2xx": 0, "socket_errors_total": 0},
        "h2load": {"requests": 900, "non2xx": 0, "errors": 0, "short_rounds": 0},
        "probe": {"requests": 900, "failed": 0},
    }
    for key, value in overrides.items():
        load[key] = {**load[key], **value}
    return load


def test_enough_clean_requests_pass_every_load_check() -> None:
    checks = fault_load.load_checks(_load(), fault_load.LoadSettings(), zero_errors=True)
    assert checks and all(checks.values())


@pytest.mark.parametrize(
    ("overrides", "failed"),
    [
        ({"wrk": {"requests": 100}}, "wrk_enough_requests"),
        ({"h2load": {"requests": 10}}, "h2load_enough_requests"),
        ({"probe": {"requests": 10}}, "probe_enough_requests"),
        ({"wrk": {"socket_errors_total": 1}}, "wrk_zero_socket_errors"),
        ({"wrk": {"non2xx": 2}}, "wrk_zero_non2xx"),
        ({"h2load": {"errors": 1}}, "h2load_zero_errors"),
        ({"probe": {"failed": 1}}, "probe_zero_failed"),
    ],
)
def test_too_little_evidence_or_one_error_fails(overrides: dict, failed: str) -> None:
    checks = fault_load.load_checks(_load(**overrides), fault_load.LoadSettings(), True)
    assert [k for k, v in checks.items() if not v] == [failed]


def test_short_h2load_rounds_are_reported_not_judged() -> None:
    checks = fault_load.load_checks(
        _load(h2load={"short_rounds": 2}), fault_load.LoadSettings(), True
    )
    assert all(checks.values())


def test_errors_are_measured_not_judged_where_a_case_allows_them() -> None:
    load = _load(wrk={"socket_errors_total": 40}, probe={"failed": 30})
    checks = fault_load.load_checks(load, fault_load.LoadSettings(), zero_errors=False)
    assert set(checks) == {"wrk_enough_requests", "h2load_enough_requests", "probe_enough_requests"}
    assert all(checks.values())


def test_a_load_without_output_is_no_evidence() -> None:
    checks = fault_load.load_checks(
        {"duration_s": 10.0, "wrk": {"error": "ValueError"}}, fault_load.LoadSettings(), True
    )
    assert not any(checks.values())


def test_h2load_rounds_must_stay_below_keepalive_requests() -> None:
    with pytest.raises(ValueError, match="keepalive_requests"):
        fault_load.LoadSettings(h2_rps=100, h2_round_s=10)


def test_websocket_survived_needs_every_echo_and_one_after_the_stop() -> None:
    ok = {"status": 101, "echoes_ok": 5, "echoes_failed": 0, "echo_after_stop_file": True}
    assert fault_load.websocket_survived({"websocket": ok})
    assert not fault_load.websocket_survived({"websocket": {**ok, "echoes_failed": 1}})
    assert not fault_load.websocket_survived({"websocket": {**ok, "echo_after_stop_file": False}})
    assert not fault_load.websocket_survived({"websocket": {"error": "OSError"}})


# ---- what the cases read ----------------------------------------------------------------------


def _json_output(*results: dict) -> str:
    tasks = [
        {"task": {"name": f"task {i}"}, "hosts": {"venta-edge1": r}} for i, r in enumerate(results)
    ]
    return "PLAY [x]\n" + json.dumps({"plays": [{"tasks": tasks}], "stats": {}}) + "\n"


def test_play_messages_and_failures_from_the_json_output() -> None:
    text = _json_output(
        {"action": "ansible.builtin.debug", "msg": "The run abc was killed half way; put back: x."},
        {"action": "ansible.builtin.fail", "failed": True, "msg": "release lock: refused"},
        {"action": "ansible.builtin.debug", "msg": "The run abc was killed half way; put back: x."},
    )
    assert fault_cases.play_messages(text) == [
        "The run abc was killed half way; put back: x.",
        "release lock: refused",
    ]
    assert fault_cases.failure_messages(text) == ["release lock: refused"]
    assert fault_cases.play_messages("killed before any output") == []


def test_the_holder_run_id_of_a_lock_refusal() -> None:
    message = (
        "release lock: refused on venta-edge1: the release lock /var/lib/venta/release.lock is "
        "held by root@ctl (playbook release.yml, version 1.1.0, since 2026-12-03T15:00:00Z, 3 s "
        "ago, run id k3j9q0x7m2p4a8w1): wait for it to finish"
    )
    assert fault_cases.held_by_run_id(message) == "k3j9q0x7m2p4a8w1"
    assert fault_cases.held_by_run_id("refused") is None


@pytest.mark.parametrize(
    ("weights", "percent", "reached"),
    [
        ({"blue": 90, "green": 10}, 10, True),
        ({"blue": 10, "green": 90}, 10, True),
        ({"blue": 100, "green": 0}, 10, False),
        ({"blue": 0, "green": 100}, 100, True),
    ],
)
def test_step_reached(weights: dict, percent: int, reached: bool) -> None:
    state = {"services": {"user-management": {"weights": weights}}}
    assert fault_cases.step_reached(state, "user-management", percent) is reached
    assert fault_cases.step_reached(None, "user-management", percent) is False


def test_serves_needs_every_edge_on_the_version() -> None:
    both = {"live": {"e1": {"webhooks": "blue 1.0.0"}, "e2": {"webhooks": "blue 1.0.0"}}}
    assert fault_cases.serves(both, "webhooks", "1.0.0")
    assert not fault_cases.serves(both, "webhooks", "1.1.0")
    split = {"live": {"e1": {"webhooks": "blue 1.0.0"}, "e2": {"webhooks": "green 1.1.0"}}}
    assert not fault_cases.serves(split, "webhooks", "1.0.0")
    assert not fault_cases.serves({"live": {}}, "webhooks", "1.0.0")


def test_parse_kill_reads_the_restart() -> None:
    out = "noise\n1234 5678 1700000000.100 1700000001.350\n"
    assert fault_cases.parse_kill(out) == {
        "old_pid": 1234,
        "new_pid": 5678,
        "killed_at": 1700000000.1,
        "restart_s": 1.25,
    }
    assert fault_cases.parse_kill("") is None
    assert fault_cases.parse_kill("kill: no such process\n") is None


def test_the_plan_ends_healthy_and_selects_by_prefix() -> None:
    plan = fault_run.plan()
    names = [item[0] for item in plan]
    assert names[-1] == "final_state"
    assert len(names) == len(set(names)) == 16
    assert names.index("e_canary_killed") < names.index("f_restore_canary_service")
    assert [item[0] for item in fault_run.selected(plan, "a_,c_")] == [
        n for n in names if n.startswith(("a_", "c_"))
    ]
    assert fault_run.selected(plan, "") == plan


def test_the_summary_names_the_failed_checks() -> None:
    results = [
        {"case": "x", "ok": True, "checks": {"a": True}},
        {"case": "y", "ok": False, "checks": {"a": True, "b": False}},
    ]
    summary = fault_run.summary(results, 12.34, "20261203T000000Z")
    assert summary["ok"] is False
    assert summary["cases_ok"] == {"x": True, "y": False}
    assert summary["failed_checks"] == {"y": ["b"]}
    assert fault_run.summary([], 0, "t")["ok"] is False


@pytest.mark.parametrize(
    ("message", "named"),
    [
        (
            "Release of 1.1.0 stopped at the 10 % step of communication: venta-edge2: "
            "nginx_switch: /usr/sbin/nginx -t rejected the new upstreams. Every edge is back",
            True,
        ),
        (
            "Release of 1.1.0 stopped at the 10 % step of communication: venta-edge1: did not "
            "answer | venta-edge2: nginx_switch: rejected",
            True,
        ),
        (
            "Release of 1.1.0 stopped at the 10 % step of communication: canary analysis: canary "
            "failed (counted on venta-edge1, venta-edge2): webhooks (green): too few requests; "
            "now: venta-edge1: webhooks blue 100; venta-edge2: nothing switched.",
            False,
        ),
    ],
)
def test_second_edge_failed_needs_the_edge_as_the_reason(message: str, named: bool) -> None:
    assert fault_cases.second_edge_failed(message, "venta-edge2") is named


def test_most_on_picks_the_edge_with_most_services_on_the_version() -> None:
    state = {
        "live": {
            "e1": {"a": "green 1.1.0", "b": "blue 1.0.0"},
            "e2": {"a": "blue 1.0.0", "b": "blue 1.0.0"},
        }
    }
    assert fault_cases.most_on(state, "1.0.0", ["e1", "e2"]) == "e2"
    assert fault_cases.most_on({"live": {}}, "1.0.0", ["e1", "e2"]) == "e1"


def test_edges_disagree_where_a_rollback_would_go_differently() -> None:
    def entry(kind: str) -> dict:
        return {
            "services": {
                "webhooks": {
                    "active": "blue",
                    "previous": "green",
                    "weights": {"blue": 100, "green": 0},
                    "versions": {"blue": "1.0.0", "green": "1.1.0"},
                    "last_action": {"kind": kind},
                }
            }
        }

    assert fault_lab.disagreements({"e1": entry("abort"), "e2": entry("rollback")}) == []
    (line,) = fault_lab.disagreements({"e1": entry("abort"), "e2": entry("release")})
    assert "after abort" in line
    assert "after release" in line


def test_stale_proxy_ports_are_held_for_no_running_container() -> None:
    ps_args = (
        "/sbin/init\n"
        "/usr/sbin/docker-proxy -proto tcp -host-ip 10.77.0.23 -host-port 25000 "
        "-container-ip 172.17.0.5 -container-port 5000\n"
        "/usr/sbin/docker-proxy -proto tcp -host-ip 10.77.0.23 -host-port 15000 "
        "-container-ip 172.17.0.13 -container-port 5000\n"
    )
    ports = "8080/tcp, 10.77.0.23:15000->5000/tcp\n10.77.0.23:15007->5007/tcp\n"
    assert fault_lab.proxy_ports(ps_args) == {25000, 15000}
    assert fault_lab.published_ports(ports) == {15000, 15007}
    assert fault_lab.proxy_ports(ps_args) - fault_lab.published_ports(ports) == {25000}
