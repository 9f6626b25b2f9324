"""Summarise the runs of bench/release/run (and of molecule/e2e/faults).

    summarise.py playbook <ansible json callback output> -> switches per edge, failures, times
    summarise.py wrk <wrk output with the JSON line of health.lua> -> the load numbers
    summarise.py h2load <the rounds of h2load, each after a "# h2load round" line> -> the same
    summarise.py bench <results directory of bench/release/run> -> summary.json with its checks

Prints one JSON object. Standard library only.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path
from typing import Any

SWITCH_ACTION = "venta.deploy.nginx_switch"
# nginx closes a client connection after keepalive_requests (1000) requests: HTTP/2 with a
# GOAWAY, after which h2load does not reconnect. A round is sized below that (see run).
H2_KEEPALIVE_REQUESTS = 1000


# ---- playbook runs (json stdout callback) ----------------------------------------------------


def _task_results(report: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    out = []
    for play in report.get("plays", []):
        for task in play.get("tasks", []):
            name = task.get("task", {}).get("name", "")
            for host, result in (task.get("hosts") or {}).items():
                out.append((name, host, result))
    return out


def switch_items(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-service results of one nginx_switch call. A recovery-only call (no service asked
    for: `services: []`, or none returned because it failed) switches no service; a result of the
    old one-service shape (`service` at the top) is a batch of one."""
    services = result.get("services")
    if isinstance(services, list):
        return [item for item in services if isinstance(item, dict)]
    if result.get("service"):
        return [result]
    return []


def _call(host: str, result: dict[str, Any]) -> dict[str, Any]:
    return {
        "host": host,
        "changed": bool(result.get("changed")),
        "failed": bool(result.get("failed")),
        "services": [
            {
                "service": item.get("service"),
                "changed": bool(item.get("changed", result.get("changed"))),
                "weights": (item.get("after") or {}).get("weights"),
            }
            for item in switch_items(result)
        ],
        "recovered": result.get("recovered") or {},
        "timings": result.get("timings") or {},
    }


def _per_host(calls: list[dict[str, Any]], count: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for call in calls:
        out[call["host"]] = out.get(call["host"], 0) + count(call)
    return dict(sorted(out.items()))


def _median(values: list[float], digits: int) -> float | None:
    return round(statistics.median(values), digits) if values else None


def playbook_summary(report: dict[str, Any]) -> dict[str, Any]:
    """Switch timings, failures and totals of one playbook run (json stdout callback).

    A domain step is one nginx_switch call per edge for every service of the step (one reload
    per edge); every run also makes one recovery-only call per edge (`services: []`, unchanged
    unless it completed or undid an interrupted switch). `calls` counts the changed calls that
    switched a service, `switches` the switched services summed over every edge, and the
    `*_per_edge` maps split both by edge; `recoveries` lists the calls that recovered something.
    The timings are per call.
    """
    calls = []
    failures = []
    for name, host, result in _task_results(report):
        if result.get("action") == SWITCH_ACTION and "timings" in result:
            calls.append(_call(host, result))
        if result.get("failed") and result.get("action") != SWITCH_ACTION:
            failures.append({"task": name, "host": host, "msg": str(result.get("msg", ""))})
    changed = [
        c
        for c in calls
        if c["changed"] and not c["failed"] and any(s["changed"] for s in c["services"])
    ]
    switched = [s for c in changed for s in c["services"] if s["changed"]]
    switch_s = [c["timings"].get("switch_s", 0.0) for c in changed]
    total_s = [c["timings"].get("total_s", 0.0) for c in changed]
    stats = report.get("stats") or {}
    return {
        "switches": len(switched),
        "calls": len(changed),
        "switches_per_edge": _per_host(
            changed, lambda c: len([s for s in c["services"] if s["changed"]])
        ),
        "calls_per_edge": _per_host(changed, lambda _c: 1),
        "recoveries": [
            {"host": c["host"], "recovered": c["recovered"]} for c in calls if c["recovered"]
        ],
        "switch_s_median": _median(switch_s, 4),
        "switch_s_max": round(max(switch_s), 4) if switch_s else None,
        "switch_total_s_sum": round(sum(total_s), 3),
        "switch_total_s_median": _median(total_s, 4),
        "services": sorted({str(s["service"]) for s in switched}),
        "failures": failures,
        "failed_hosts": sorted(
            host
            for host, counts in stats.items()
            if counts.get("failures") or counts.get("unreachable")
        ),
    }


def json_report(text: str) -> dict[str, Any]:
    """The JSON callback's report: the object that starts a line, with other callbacks' lines
    (task timers, recaps) before and after it."""
    decoder = json.JSONDecoder()
    for index in [0] + [i + 1 for i, char in enumerate(text) if char == "\n"]:
        if text.startswith("{", index):
            try:
                report, _end = decoder.raw_decode(text, index)
            except ValueError:
                continue
            if isinstance(report, dict) and "plays" in report:
                return report
    raise ValueError("no JSON report of the json stdout callback in the output")


# ---- wrk ---------------------------------------------------------------------------------------


def wrk_summary(text: str) -> dict[str, Any]:
    """The JSON line health.lua's done() writes, plus the totals of the failures."""
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{") and '"requests"' in line:
            data = json.loads(line)
            data["socket_errors_total"] = sum(data["socket_errors"].values())
            return data
    raise ValueError("no JSON summary line from health.lua in the wrk output")


# ---- h2load ------------------------------------------------------------------------------------

_ROUND = re.compile(r"^# h2load round clients=(\d+) rps=(\d+) duration=(\d+)", re.MULTILINE)
_REQUESTS = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
    r"(\d+) errored, (\d+) timeout"
)
_STATUS = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")
_TIME = re.compile(r"time for request:\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)")
_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(value: str, unit: str) -> float:
    return float(value) * _UNIT_MS[unit]


def h2load_round(text: str, clients: int, rps: int, duration: int) -> dict[str, Any]:
    """One h2load run of `duration` seconds, `clients` connections sending `rps` requests a
    second each. `short` is true when it did fewer than 90 % of the planned requests (a
    connection stalled: a GOAWAY at keepalive_requests, or a connection lost, is not followed by
    a new one); `planned_per_connection` must stay below nginx's keepalive_requests."""
    requests = _REQUESTS.search(text)
    status = _STATUS.search(text)
    if requests is None or status is None:
        raise ValueError("an h2load round without its 'requests:' and 'status codes:' lines")
    total, started, done, ok, failed, errored, timeout = (int(v) for v in requests.groups())
    s2xx, s3xx, s4xx, s5xx = (int(v) for v in status.groups())
    timing = _TIME.search(text)
    planned = clients * rps * duration
    return {
        "requests": done,
        "started": started,
        "succeeded": ok,
        "failed": failed,
        "errored": errored,
        "timeout": timeout,
        "status_2xx": s2xx,
        "non2xx": s3xx + s4xx + s5xx,
        "planned": planned,
        "planned_per_connection": rps * duration,
        "short": done < 0.9 * planned,
        "not_done": total - done,
        "max_ms": _ms(timing.group(3), timing.group(4)) if timing else None,
        "mean_ms": _ms(timing.group(5), timing.group(6)) if timing else None,
    }


def h2load_summary(text: str) -> dict[str, Any]:
    """Every round of the h2load loop (each after its "# h2load round clients= rps= duration="
    line; a round cut off at the end of the run, without its summary, is left out and counted in
    `rounds_incomplete`), added up. `errors` = failed + errored + timeout streams; `short_rounds`
    the rounds that did < 90 % of their planned requests (see h2load_round)."""
    heads = list(_ROUND.finditer(text))
    rounds = []
    incomplete = 0
    for index, head in enumerate(heads):
        end = heads[index + 1].start() if index + 1 < len(heads) else len(text)
        clients, rps, duration = (int(v) for v in head.groups())
        try:
            rounds.append(h2load_round(text[head.end() : end], clients, rps, duration))
        except ValueError:
            incomplete += 1
    if not rounds:
        raise ValueError("no complete h2load round in the output")
    total = {
        key: sum(r[key] for r in rounds)
        for key in ("requests", "succeeded", "failed", "errored", "timeout", "status_2xx")
    }
    total["non2xx"] = sum(r["non2xx"] for r in rounds)
    done = total["requests"]
    means = [(r["mean_ms"], r["requests"]) for r in rounds if r["mean_ms"] is not None]
    return {
        **total,
        "errors": total["failed"] + total["errored"] + total["timeout"],
        "rounds": len(rounds),
        "rounds_incomplete": incomplete,
        "short_rounds": len([r for r in rounds if r["short"]]),
        "max_planned_per_connection": max(r["planned_per_connection"] for r in rounds),
        "mean_ms": round(sum(m * n for m, n in means) / done, 3) if means and done else None,
        "max_ms": max((r["max_ms"] for r in rounds if r["max_ms"] is not None), default=None),
    }


# ---- the whole bench run -----------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _steps(out: Path) -> dict[str, dict[str, Any]]:
    """steps.jsonl: one {"name", "rc", "wall_s"} line per playbook run of bench/release/run."""
    steps = {}
    for line in (out / "steps.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            step = json.loads(line)
            steps[step["name"]] = step
    return steps


def _playbook(out: Path, name: str, steps: dict[str, dict[str, Any]]) -> dict[str, Any]:
    step = steps.get(name, {"rc": None, "wall_s": None})
    try:
        summary = playbook_summary(json_report((out / f"{name}.json").read_text(encoding="utf-8")))
    except (OSError, ValueError) as exc:
        summary = {"error": f"{type(exc).__name__}: {exc}", "failures": []}
    return {"rc": step["rc"], "wall_s": step["wall_s"], **summary}


def every_edge(summary: dict[str, Any], key: str, edges: list[str], value: int) -> bool:
    """Every edge has `value` in the `key` map of a playbook summary (switches or calls)."""
    counts = summary.get(key) or {}
    return sorted(counts) == sorted(edges) and all(counts[e] == value for e in edges)


def bench_summary(out: Path) -> dict[str, Any]:
    """summary.json of bench/release/run from its results directory: facts.json (what the run
    observed: versions, edges, colours, the expected numbers), steps.jsonl, every playbook's JSON,
    wrk.txt, h2load.txt and ws.json; a `checks` map and `ok`."""
    facts = _read_json(out / "facts.json")
    steps = _steps(out)
    edges = facts["edges"]
    domains = facts["domains"]
    canary_services = facts["canary_services"]
    services = facts["services"]
    runs = {
        name: _playbook(out, name, steps)
        for name in ("release", "rollback", "canary", "rollback_domain", "fault")
    }
    fault_msgs = " ".join(f["msg"] for f in runs["fault"].get("failures", []))
    wrk = wrk_summary((out / "wrk.txt").read_text(encoding="utf-8"))
    h2 = h2load_summary((out / "h2load.txt").read_text(encoding="utf-8"))
    ws = {**_read_json(out / "ws.json"), **facts["websocket"]}
    fault = facts["fault"]
    summary: dict[str, Any] = {
        "versions": facts["versions"],
        "vip": facts["vip"],
        "edges": edges,
        "release_all": runs["release"],
        "rollback_all": runs["rollback"],
        "canary_domain": {"domain": facts["canary_domain"], **runs["canary"]},
        "rollback_domain": runs["rollback_domain"],
        "fault": {
            **fault,
            **{k: runs["fault"][k] for k in ("rc", "wall_s")},
            "names_service_and_check": fault["service"] in fault_msgs and "/ready" in fault_msgs,
            "messages": [f["msg"] for f in runs["fault"].get("failures", [])][-1:],
        },
        "websocket": ws,
        "wrk": wrk,
        "h2load": h2,
        "final": facts["final"],
    }
    steps_n = len(facts["canary_steps"])
    checks = {
        "release_ok": runs["release"]["rc"] == 0
        and every_edge(runs["release"], "switches_per_edge", edges, len(services))
        and every_edge(runs["release"], "calls_per_edge", edges, len(domains)),
        "rollback_ok": runs["rollback"]["rc"] == 0
        and every_edge(runs["rollback"], "switches_per_edge", edges, len(services))
        and every_edge(runs["rollback"], "calls_per_edge", edges, 1),
        "canary_ok": runs["canary"]["rc"] == 0
        and every_edge(runs["canary"], "calls_per_edge", edges, steps_n)
        and every_edge(runs["canary"], "switches_per_edge", edges, steps_n * len(canary_services)),
        "rollback_domain_ok": runs["rollback_domain"]["rc"] == 0
        and every_edge(runs["rollback_domain"], "switches_per_edge", edges, len(canary_services)),
        "fault_failed_named": runs["fault"]["rc"] not in (0, None)
        and summary["fault"]["names_service_and_check"],
        "fault_traffic_kept": bool(fault["colours_before"])
        and set(fault["colours_before"].values()) <= {"blue", "green"}
        and fault["colours_before"] == fault["colours_after"],
        "websocket_survived": ws.get("rc") == 0
        and bool(ws.get("echo_after_stop_file"))
        and ws.get("new_connection_colour") not in ("", "none", None, ws.get("colour_before")),
        "zero_non2xx": wrk["non2xx"] == 0 and h2["non2xx"] == 0,
        "zero_socket_errors": wrk["socket_errors_total"] == 0 and h2["errors"] == 0,
        "h2load_no_stalled_connection": h2["short_rounds"] == 0
        and h2["max_planned_per_connection"] < H2_KEEPALIVE_REQUESTS,
        "enough_requests": wrk["requests"] >= facts["min_requests"]
        and h2["requests"] >= facts["min_h2_requests"],
        "edges_agree_on_old": facts["final"]["every_edge_on_old"],
    }
    summary["checks"] = checks
    summary["ok"] = all(checks.values())
    return summary


def main(argv: list[str]) -> int:
    commands = ("playbook", "wrk", "h2load", "bench")
    if len(argv) != 3 or argv[1] not in commands:
        print(__doc__, file=sys.stderr)
        return 2
    if argv[1] == "bench":
        summary = bench_summary(Path(argv[2]))
        (Path(argv[2]) / "summary.json").write_text(
            json.dumps(summary, indent=2) + "\n", encoding="utf-8"
        )
        print(json.dumps(summary, indent=2))
        return 0 if summary["ok"] else 1
    text = Path(argv[2]).read_text(encoding="utf-8")
    if argv[1] == "wrk":
        print(json.dumps(wrk_summary(text)))
    elif argv[1] == "h2load":
        print(json.dumps(h2load_summary(text)))
    else:
        print(json.dumps(playbook_summary(json_report(text))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
