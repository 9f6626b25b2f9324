"""The load of one fault case, all through the VIP: wrk (HTTP/1.1 keep-alive, bench/release's
health.lua), h2load (HTTP/2) in rounds sized so no connection reaches nginx's keepalive_requests
(h2load does not reconnect after the GOAWAY), a WebSocket held open (bench/release/ws_hold.py) and
the 20 ms prober (fault_probe). Started before the case, stopped after it; the numbers come from
bench/release/summarise.py, and load_checks() decides whether they are evidence of success."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import fault_lab
import fault_probe

BENCH = Path(__file__).resolve().parents[3] / "bench" / "release"
H2_KEEPALIVE_REQUESTS = 1000


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


summarise = _load("release_summarise", BENCH / "summarise.py")


@dataclass(frozen=True)
class LoadSettings:
    """How much load: wrk connections and pacing, h2load clients x requests a second x seconds a
    round (below keepalive_requests a connection), the prober's interval and timeout, and the
    least a case must have seen (per second of the case) to count as evidence."""

    wrk_connections: int = 4
    wrk_delay_ms: int = 10
    h2_clients: int = 2
    h2_rps: int = 25
    h2_round_s: int = 4
    probe_interval: float = 0.02
    probe_timeout: float = 6.0
    min_wrk_per_s: float = 40.0
    min_share_of_planned: float = 0.5
    min_probe_share: float = 0.4

    def __post_init__(self) -> None:
        if self.h2_rps * self.h2_round_s >= H2_KEEPALIVE_REQUESTS:
            raise ValueError("h2_rps x h2_round_s must stay below nginx's keepalive_requests")


@dataclass
class H2Rounds:
    """h2load run again and again (each run one round) until stopped; the output of every round,
    after a "# h2load round" header, goes to one file for summarise.h2load_summary."""

    urls: list[str]
    settings: LoadSettings
    out: Path
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        s = self.settings
        argv = ["h2load", "-c", str(s.h2_clients), "-t", "1", "--rps", str(s.h2_rps)]
        argv += ["-D", str(s.h2_round_s), *self.urls]
        with self.out.open("w", encoding="utf-8") as out:
            while not self.stop.is_set():
                began = time.monotonic()
                out.write(
                    f"# h2load round clients={s.h2_clients} rps={s.h2_rps} "
                    f"duration={s.h2_round_s}\n"
                )
                out.flush()
                subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=False)
                out.flush()
                # A round that could not connect ends at once: do not spin.
                if time.monotonic() - began < 1:
                    self.stop.wait(0.2)


class LoadSession:
    """Start every load generator (with LoadSession(...) as load: ...); result after the block."""

    def __init__(
        self, lab: fault_lab.Lab, out_dir: Path, name: str, settings: LoadSettings
    ) -> None:
        self.lab = lab
        self.dir = out_dir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.settings = settings
        base = f"https://{lab.vip}"
        self.h2 = H2Rounds(
            [f"{base}/_venta/{s}/health" for s in fault_lab.SERVICES],
            settings,
            self.dir / "h2load.txt",
        )
        self.prober = fault_probe.Prober(
            lab.vip,
            443,
            lab.ca,
            [f"/_venta/{s}/health" for s in fault_lab.SERVICES],
            settings.probe_interval,
            settings.probe_timeout,
        )
        self.threads: list[threading.Thread] = []
        self.wrk: subprocess.Popen[bytes] | None = None
        self.ws: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.result: dict[str, Any] = {}

    def __enter__(self) -> LoadSession:
        self.started = time.monotonic()
        env = {**os.environ, "VENTA_DELAY_MS": str(self.settings.wrk_delay_ms)}
        with (self.dir / "wrk.txt").open("wb") as out:
            self.wrk = subprocess.Popen(
                [
                    "wrk",
                    "-t",
                    "1",
                    "-c",
                    str(self.settings.wrk_connections),
                    "-d",
                    "3600s",
                    "--timeout",
                    "10s",
                    "-s",
                    str(BENCH / "health.lua"),
                    f"https://{self.lab.vip}",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        self._start_ws()
        for target in (self.h2.run, self.prober.run):
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self.threads.append(thread)
        time.sleep(1.0)
        return self

    def _start_ws(self) -> None:
        for name in ("ws.stop", "ws.ready"):
            (self.dir / name).unlink(missing_ok=True)
        with (self.dir / "ws.json").open("wb") as out:
            self.ws = subprocess.Popen(
                [
                    "python3",
                    str(BENCH / "ws_hold.py"),
                    "--host",
                    self.lab.vip,
                    "--port",
                    "443",
                    "--server-name",
                    self.lab.vip,
                    "--ca",
                    self.lab.ca,
                    "--until-file",
                    str(self.dir / "ws.stop"),
                    "--ready-file",
                    str(self.dir / "ws.ready"),
                    "--max-seconds",
                    "900",
                    "--interval",
                    "0.5",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        for _try in range(50):
            if (self.dir / "ws.ready").exists():
                break
            time.sleep(0.1)

    def __exit__(self, *_exc: object) -> None:
        duration = time.monotonic() - self.started
        (self.dir / "ws.stop").touch()
        self.prober.stop.set()
        self.h2.stop.set()
        assert self.wrk is not None and self.ws is not None
        self.wrk.send_signal(signal.SIGINT)
        for process in (self.wrk, self.ws):
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for thread in self.threads:
            thread.join(self.settings.h2_round_s + 30)
        self.result = self._summary(duration)

    def _summary(self, duration: float) -> dict[str, Any]:
        out: dict[str, Any] = {"duration_s": round(duration, 3)}
        readers = {
            "wrk": lambda: summarise.wrk_summary(self._text("wrk.txt")),
            "h2load": lambda: summarise.h2load_summary(self._text("h2load.txt")),
            "websocket": lambda: json.loads(self._text("ws.json")),
        }
        for key, read in readers.items():
            try:
                out[key] = read()
            except (OSError, ValueError) as exc:
                out[key] = {"error": f"{type(exc).__name__}: {exc}"}
        out["probe"] = fault_probe.probe_summary(self.prober.samples, self.started)
        return out

    def _text(self, name: str) -> str:
        return (self.dir / name).read_text(encoding="utf-8", errors="replace")


def load_checks(load: dict[str, Any], settings: LoadSettings, zero_errors: bool) -> dict[str, bool]:
    """Enough requests of every kind for the case's duration (no evidence is not success) and,
    when the case allows none, no failure: 0 non-2xx and 0 socket errors (wrk), 0 non-2xx and 0
    failed/errored/timed-out streams (h2load), 0 failed probes. h2load's short rounds (fewer
    than 90 % of the planned requests: slow answers, or a connection that got a GOAWAY, which
    h2load does not replace) are reported, not judged: no round plans keepalive_requests on a
    connection, and the requests they did not send count against h2load_enough_requests."""
    duration = load.get("duration_s", 0.0)
    wrk, h2, probe = load.get("wrk", {}), load.get("h2load", {}), load.get("probe", {})
    share = settings.min_share_of_planned
    h2_planned = settings.h2_clients * settings.h2_rps * duration
    checks = {
        "wrk_enough_requests": wrk.get("requests", 0) >= settings.min_wrk_per_s * duration,
        "h2load_enough_requests": h2.get("requests", 0) >= share * h2_planned,
        # One request at a time: answers that wait (nginx's 5 s connect timeout to a stopped
        # host) slow it down more than the others.
        "probe_enough_requests": probe.get("requests", 0)
        >= settings.min_probe_share * duration / settings.probe_interval,
    }
    if zero_errors:
        checks.update(
            {
                "wrk_zero_non2xx": wrk.get("non2xx", 1) == 0,
                "wrk_zero_socket_errors": wrk.get("socket_errors_total", 1) == 0,
                "h2load_zero_non2xx": h2.get("non2xx", 1) == 0,
                "h2load_zero_errors": h2.get("errors", 1) == 0,
                "probe_zero_failed": probe.get("failed", 1) == 0,
            }
        )
    return checks


def websocket_survived(load: dict[str, Any]) -> bool:
    ws = load.get("websocket", {})
    return (
        ws.get("status") == 101
        and ws.get("echoes_failed", 1) == 0
        and ws.get("echoes_ok", 0) > 0
        and bool(ws.get("echo_after_stop_file"))
    )
