"""Summarise the runs of bench/release/run.

    summarise.py playbook <ansible json callback output> -> switches, failures, wall time
    summarise.py wrk <wrk output with the JSON line of health.lua> -> the load numbers

Prints one JSON object. Standard library only.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any


def _task_results(report: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    out = []
    for play in report.get("plays", []):
        for task in play.get("tasks", []):
            name = task.get("task", {}).get("name", "")
            for host, result in (task.get("hosts") or {}).items():
                out.append((name, host, result))
    return out


def playbook_summary(report: dict[str, Any]) -> dict[str, Any]:
    """Switch timings, failures and totals of one playbook run (json stdout callback).

    A module call switches one service (option `service`) or several at once (`services`, one
    reload for all): `switches` counts switched services, `calls` the module calls, and the
    timings are per call.
    """
    calls = []
    failures = []
    for name, host, result in _task_results(report):
        if result.get("action") == "venta.deploy.nginx_switch" and "timings" in result:
            items = result.get("services") or [result]
            calls.append(
                {
                    "host": host,
                    "changed": bool(result.get("changed")),
                    "failed": bool(result.get("failed")),
                    "services": [
                        {
                            "service": item.get("service"),
                            "changed": bool(item.get("changed", result.get("changed"))),
                            "weights": (item.get("after") or {}).get("weights"),
                        }
                        for item in items
                    ],
                    "timings": result.get("timings") or {},
                }
            )
        if result.get("failed") and result.get("action") != "venta.deploy.nginx_switch":
            failures.append({"task": name, "host": host, "msg": str(result.get("msg", ""))})
    changed = [c for c in calls if c["changed"] and not c["failed"]]
    switched = [s for c in changed for s in c["services"] if s["changed"]]
    switch_s = [c["timings"].get("switch_s", 0.0) for c in changed]
    total_s = [c["timings"].get("total_s", 0.0) for c in changed]
    stats = report.get("stats") or {}
    return {
        "switches": len(switched),
        "calls": len(changed),
        "switch_s_median": round(statistics.median(switch_s), 4) if switch_s else None,
        "switch_s_max": round(max(switch_s), 4) if switch_s else None,
        "switch_total_s_sum": round(sum(total_s), 3),
        "switch_total_s_median": round(statistics.median(total_s), 4) if total_s else None,
        "services": sorted({s["service"] for s in switched}),
        "failures": failures,
        "failed_hosts": sorted(
            host
            for host, counts in stats.items()
            if counts.get("failures") or counts.get("unreachable")
        ),
    }


def wrk_summary(text: str) -> dict[str, Any]:
    """The JSON line health.lua's done() writes, plus the totals of the failures."""
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{") and '"requests"' in line:
            data = json.loads(line)
            data["socket_errors_total"] = sum(data["socket_errors"].values())
            return data
    raise ValueError("no JSON summary line from health.lua in the wrk output")


def json_report(text: str) -> dict[str, Any]:
    """The JSON callback's report: the object that starts a line, with other callbacks' lines
    (task timers, recaps) before and after it."""
    decoder = json.JSONDecoder()
    for index in [0] + [i + 1 for i, char in enumerate(text) if char == "\n"]:
        if text.startswith("{", index):
            report, _end = decoder.raw_decode(text, index)
            if isinstance(report, dict) and "plays" in report:
                return report
    raise ValueError("no JSON report of the json stdout callback in the output")


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in ("playbook", "wrk"):
        print(__doc__, file=sys.stderr)
        return 2
    text = Path(argv[2]).read_text(encoding="utf-8")
    if argv[1] == "wrk":
        print(json.dumps(wrk_summary(text)))
    else:
        print(json.dumps(playbook_summary(json_report(text))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
