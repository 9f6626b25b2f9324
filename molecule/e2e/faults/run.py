"""The fault-test harness of issue 14 on the deployed lab (inventories/local): run the fault cases
in an order that ends with every service on the old version and the edges agreeing, each under
keep-alive load through the VIP (wrk, h2load, a WebSocket, a 20 ms prober), and write what they
saw to <out>/summary.json. molecule/e2e/verify_faults.yml runs it and asserts the summary.

    python3 molecule/e2e/faults/run.py [--out DIR] [--cases a,b,...] [--old 1.0.0] [--new 1.1.0]

Changes the lab (releases, kills, docker stop): take the lab lock, e.g.
`flock /tmp/venta-lab.lock python3 molecule/e2e/faults/run.py`. Exit 0 when every case held.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fault_cases as cases
import fault_lab
import fault_load

ROOT = Path(__file__).resolve().parents[3]
Case = tuple[str, Callable[[cases.Context], dict[str, Any]], bool, bool]


def plan() -> list[Case]:
    """(name, body, zero errors required, WebSocket must survive), in the order they run. The
    one-service cases move webhooks between 1.1.0 and 1.0.0 and leave it on 1.0.0; the canary
    cases leave user-management on 1.0.0 with its containers back; the edge cases last."""
    return [
        ("c_concurrent_releases", cases.concurrent_releases, True, True),
        (
            "a_crash_before_write",
            cases.crash_at("before-write", "rollback", "rollback", "old"),
            True,
            True,
        ),
        (
            "a_crash_after_rename",
            cases.crash_at("after-rename", "release", "release", "new"),
            True,
            True,
        ),
        (
            "a_crash_after_reload",
            cases.crash_at("after-reload", "rollback", "rollback", "old"),
            True,
            True,
        ),
        (
            "a_crash_before_record",
            cases.crash_at("before-record", "release", "release", "new"),
            True,
            True,
        ),
        ("d_rollback_twice", cases.rollback_twice, True, True),
        ("b_canary_fails_on_second_edge", cases.canary_fails_on_second_edge, True, True),
        ("e_canary_killed", cases.canary_killed, True, True),
        # A stopped Docker host takes the WebSockets it holds with it.
        ("f_docker_host_stopped", cases.docker_host_stopped, True, False),
        ("f_restore_canary_service", cases.restore_canary_service, True, True),
        ("g_kill_switch_layer", cases.kill_master("switch layer"), False, False),
        ("g_kill_client_nginx", cases.kill_master("client-facing nginx"), False, False),
        (
            "g_kill_client_nginx_during_switch",
            cases.kill_master("client-facing nginx", during_switch=True),
            False,
            False,
        ),
        (
            "g_kill_switch_layer_during_switch",
            cases.kill_master("switch layer", during_switch=True),
            False,
            False,
        ),
        ("h_vip_holder_stopped", cases.vip_holder_stopped, False, False),
        ("final_state", cases.final_state, True, True),
    ]


def selected(all_cases: list[Case], wanted: str) -> list[Case]:
    """The cases whose name starts with one of the comma-separated prefixes (all when empty)."""
    prefixes = [w.strip() for w in wanted.split(",") if w.strip()]
    return [c for c in all_cases if not prefixes or any(c[0].startswith(p) for p in prefixes)]


def summary(results: list[dict[str, Any]], wall_s: float, started: str) -> dict[str, Any]:
    return {
        "started_at": started,
        "wall_s": round(wall_s, 3),
        "ok": bool(results) and all(r["ok"] for r in results),
        "cases_ok": {r["case"]: r["ok"] for r in results},
        "failed_checks": {
            r["case"]: [k for k, v in r["checks"].items() if not v] for r in results if not r["ok"]
        },
        "cases": results,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    parser.add_argument("--out", default=str(ROOT / ".cache" / "faults" / stamp))
    parser.add_argument("--cases", default="", help="comma-separated name prefixes, e.g. a_,c_")
    parser.add_argument("--old", default="1.0.0")
    parser.add_argument("--new", default="1.1.0")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ctx = cases.Context(fault_lab.Lab(ROOT), out, fault_load.LoadSettings(), args.old, args.new)
    began = time.monotonic()
    results = []
    for name, body, zero_errors, websocket in selected(plan(), args.cases):
        print(f"{datetime.now(UTC):%H:%M:%S} {name}", file=sys.stderr, flush=True)
        result = cases.run_case(ctx, name, body, zero_errors, websocket)
        if name != "final_state":
            result["repair"] = cases.repair(ctx, name)
        results.append(result)
        failed = [k for k, v in result["checks"].items() if not v]
        print(
            f"{datetime.now(UTC):%H:%M:%S}   {'ok' if result['ok'] else 'FAILED'} in "
            f"{result['wall_s']} s{': ' + ', '.join(failed) if failed else ''}",
            file=sys.stderr,
            flush=True,
        )
        (out / "summary.json").write_text(
            json.dumps(summary(results, time.monotonic() - began, stamp), indent=2) + "\n",
            encoding="utf-8",
        )
    report = summary(results, time.monotonic() - began, stamp)
    report["plays"] = ctx.plays
    (out / "summary.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: report[k] for k in ("ok", "wall_s", "cases_ok", "failed_checks")}))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
