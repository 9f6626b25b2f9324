"""The fault cases of issue 14 (molecule/e2e/verify_faults.yml runs them through run.py). Each
case runs under the load of fault_load (wrk, h2load, a held WebSocket and the 20 ms prober, all
through the VIP) and returns what it saw: `checks` (every one must hold), the numbers, and the
playbook runs. The lab's hand in a case (failpoints, kills, docker stop) is `docker exec` from
here; the product's own path is ansible-playbook."""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fault_lab
import fault_load
from fault_lab import Lab, Play

BREAK_LOCK = ["-e", "venta_release_break_lock=true"]
BROKEN_CONF = "zz-venta-fault-test.conf"
# Inside an edge: SIGKILL the main process of a unit, then wait until systemd runs it again (a
# new main PID, active); prints "<old pid> <new pid> <killed at> <active again at>" (epoch s).
KILL_MAIN = (
    'unit=$1; old=$(systemctl show -p MainPID --value "$unit"); t0=$(date +%s.%N); '
    'kill -9 "$old"; while :; do new=$(systemctl show -p MainPID --value "$unit"); '
    'if [ "$new" != 0 ] && [ "$new" != "$old" ] && systemctl is-active --quiet "$unit"; '
    'then break; fi; sleep 0.05; done; echo "$old $new $t0 $(date +%s.%N)"'
)
UNITS = {"switch layer": "venta-edge-switch", "client-facing nginx": "nginx"}


@dataclass
class Context:
    """What every case needs: the lab, where results go, the load settings, the two versions,
    the service the one-service cases release and the one the canary cases kill."""

    lab: Lab
    out: Path
    settings: fault_load.LoadSettings
    old: str = "1.0.0"
    new: str = "1.1.0"
    service: str = "webhooks"
    canary_service: str = "user-management"
    plays: list[dict[str, Any]] = field(default_factory=list)

    @property
    def edges(self) -> list[str]:
        return sorted(self.lab.edges)

    def release(self, version: str, service: str | None = None) -> tuple[str, list[str]]:
        return "release.yml", [
            "-e",
            f"venta_release_version={version}",
            "-e",
            f"venta_services_selected={service or self.service}",
        ]

    def rollback(self, to: str | None = None, service: str | None = None) -> tuple[str, list[str]]:
        extra = ["-e", f"venta_services_selected={service or self.service}"]
        return "rollback.yml", extra + (["-e", f"venta_rollback_to={to}"] if to else [])


# ---- what a playbook run said ---------------------------------------------------------------


def play_messages(text: str) -> list[str]:
    """Every `msg` of the run's task results (debug reports, failures), from its json output."""
    try:
        report = fault_load.summarise.json_report(text)
    except ValueError:
        return []
    out = []
    for play in report.get("plays", []):
        for task in play.get("tasks", []):
            for result in (task.get("hosts") or {}).values():
                msg = result.get("msg")
                if isinstance(msg, str) and msg and msg not in out:
                    out.append(msg)
    return out


def failure_messages(text: str) -> list[str]:
    try:
        report = fault_load.summarise.json_report(text)
    except ValueError:
        return []
    return [f["msg"] for f in fault_load.summarise.playbook_summary(report)["failures"]]


def failed_tasks(text: str) -> list[dict[str, str]]:
    """The tasks that failed, on which host, with their message (empty when no_log hid it)."""
    try:
        report = fault_load.summarise.json_report(text)
    except ValueError:
        return []
    return fault_load.summarise.playbook_summary(report)["failures"]


def play_record(play: Play) -> dict[str, Any]:
    """rc, wall time, the switches it made per edge and what it said (the last messages)."""
    text = play.text()
    try:
        summary = fault_load.summarise.playbook_summary(fault_load.summarise.json_report(text))
        switches = {
            k: summary[k] for k in ("switches_per_edge", "calls_per_edge", "recoveries", "services")
        }
    except ValueError:
        switches = {}
    return {
        "name": play.name,
        "command": " ".join(play.argv[-4:]),
        "rc": play.rc,
        "wall_s": play.wall_s,
        "killed": play.killed,
        **switches,
        "failures": failure_messages(text)[-2:],
    }


def held_by_run_id(message: str) -> str | None:
    """The run id a release lock refusal names ("... run id k3j9q0x7m2p4a8w1)")."""
    found = re.search(r"run id ([a-z0-9]{16})", message)
    return found.group(1) if found else None


def step_reached(state: dict[str, Any] | None, service: str, percent: int) -> bool:
    """The edge records the service at a canary step: one colour at `percent`, one at the rest."""
    entry = ((state or {}).get("services") or {}).get(service) or {}
    weights = sorted((entry.get("weights") or {}).values())
    return weights == sorted([percent, 100 - percent])


def serves(consistency: dict[str, Any], service: str, version: str) -> bool:
    """Every edge records (and, consistency being ok, answers) `version` for `service`."""
    live = consistency.get("live") or {}
    return bool(live) and all(
        (view.get(service) or "").endswith(f" {version}") for view in live.values()
    )


def idle_colour(lab: Lab, service: str) -> str:
    _text, state = fault_lab.edge_state(sorted(lab.edges)[0])
    active = ((state or {}).get("services") or {}).get(service, {}).get("active", "blue")
    return "green" if active == "blue" else "blue"


# ---- running a case -----------------------------------------------------------------------------


def run_case(
    ctx: Context,
    name: str,
    body: Callable[[Context], dict[str, Any]],
    zero_errors: bool = True,
    websocket_required: bool = True,
) -> dict[str, Any]:
    """Run `body` under load; its checks plus the load's (enough requests; no failure when
    zero_errors; the WebSocket echoed throughout when websocket_required)."""
    began = time.monotonic()
    record: dict[str, Any]
    with fault_load.LoadSession(ctx.lab, ctx.out, name, ctx.settings) as load:
        try:
            record = body(ctx)
        except Exception as exc:  # a broken case is a failed case, and the run goes on
            record = {"checks": {"case_ran": False}, "error": f"{type(exc).__name__}: {exc}"}
    checks = dict(record.pop("checks"))
    checks.update(fault_load.load_checks(load.result, ctx.settings, zero_errors))
    if "goal_max_outage_s" in record:
        outage = load.result.get("probe", {}).get("max_outage_s")
        checks["outage_within_goal"] = outage is not None and outage <= record["goal_max_outage_s"]
    if websocket_required:
        checks["websocket_survived"] = fault_load.websocket_survived(load.result)
    return {
        "case": name,
        "ok": all(checks.values()),
        "checks": checks,
        "wall_s": round(time.monotonic() - began, 3),
        **record,
        "load": load.result,
    }


def run(ctx: Context, name: str, playbook: tuple[str, list[str]], extra: list[str] = ()) -> Play:
    play = fault_lab.run_play(ctx.lab, ctx.out, name, playbook[0], [*playbook[1], *extra])
    ctx.plays.append(play_record(play))
    return play


def start(ctx: Context, name: str, playbook: tuple[str, list[str]], extra: list[str] = ()) -> Play:
    return fault_lab.start_play(ctx.lab, ctx.out, name, playbook[0], [*playbook[1], *extra])


def finish(ctx: Context, play: Play) -> Play:
    fault_lab.wait_play(play)
    ctx.plays.append(play_record(play))
    return play


# ---- c. two releases at once ------------------------------------------------------------------


def concurrent_releases(ctx: Context) -> dict[str, Any]:
    """Two release.yml runs started together: one runs (rc 0), the other is refused in < 10 s
    naming the run that holds the lock."""
    first = start(ctx, "c-first", ctx.release(ctx.new))
    second = start(ctx, "c-second", ctx.release(ctx.new))
    plays = [finish(ctx, first), finish(ctx, second)]
    winners = [p for p in plays if p.rc == 0]
    losers = [p for p in plays if p.rc != 0]
    refusal = " ".join(failure_messages(losers[0].text())) if len(losers) == 1 else ""
    holder = held_by_run_id(refusal)
    state = fault_lab.consistency(ctx.lab)
    return {
        "checks": {
            "exactly_one_ran": len(winners) == 1 and len(losers) == 1,
            "refused_within_10s": len(losers) == 1 and (losers[0].wall_s or 99) < 10,
            "refusal_names_the_holder": "held by" in refusal
            and holder is not None
            and len(winners) == 1
            and holder in winners[0].text(),
            "the_one_that_ran_released": serves(state, ctx.service, ctx.new),
            "every_edge_answers_what_it_records": state["ok"],
        },
        "runs": [play_record(p) for p in plays],
        "refusal": refusal[:600],
        "holder_run_id": holder,
    }


# ---- a. SIGKILL of ansible-playbook at a phase of the switch ----------------------------------


def crash_at(
    phase: str, killed: str, then: str, expect: str
) -> Callable[[Context], dict[str, Any]]:
    """A case: arm the failpoint `phase` on the first edge, start the `killed` operation
    ("release" to the new version, or "rollback" to the old one), kill -9 the playbook's process
    group the moment the switch reaches the phase, then run `then` with break_lock: it must
    converge, every edge answering what it records, the service on `expect` ("old"/"new")."""

    def body(ctx: Context) -> dict[str, Any]:
        ops = {"release": ctx.release(ctx.new), "rollback": ctx.rollback(to=ctx.old)}
        edge = ctx.edges[0]
        fault_lab.arm_failpoint(edge, phase)
        watcher = fault_lab.wait_for_file(edge, fault_lab.FAILPOINT_HIT)
        play = start(ctx, f"crash-{phase}-killed", ops[killed])
        while not watcher.done() and not play.ended.is_set():
            time.sleep(0.01)
        hit_at = time.monotonic()
        fault_lab.kill_play(play)
        kill_latency = round(time.monotonic() - hit_at, 3)
        hit = watcher.finish().strip()
        fault_lab.clear_failpoint(edge)
        ctx.plays.append(play_record(play))
        after_kill = {
            e: {
                "intent_left": fault_lab.exists(e, fault_lab.INTENT_FILE),
                "lock_left": fault_lab.exists(e, fault_lab.LOCK_FILE),
                ctx.service: fault_lab.live_view(fault_lab.edge_state(e)[1]).get(ctx.service),
            }
            for e in ctx.edges
        }
        recovery = run(ctx, f"crash-{phase}-next", ops[then], BREAK_LOCK)
        said = [m for m in play_messages(recovery.text()) if "killed half way" in m]
        state = fault_lab.consistency(ctx.lab)
        version = ctx.new if expect == "new" else ctx.old
        return {
            "checks": {
                "failpoint_hit_at_phase": hit == phase,
                "killed_run_left_its_lock": all(v["lock_left"] for v in after_kill.values()),
                "next_run_ok": recovery.rc == 0,
                "every_edge_answers_what_it_records": state["ok"],
                f"{ctx.service}_on_{expect}_version": serves(state, ctx.service, version),
            },
            "phase": phase,
            "killed_operation": killed,
            "next_operation": f"{then} with break_lock",
            "killed_after_s": play.wall_s,
            "kill_latency_s": kill_latency,
            "after_kill": after_kill,
            "next_run": play_record(recovery),
            "repair_message": said[:1],
            "consistency": state,
        }

    return body


# ---- d. rollback twice -------------------------------------------------------------------------


def rollback_twice(ctx: Context) -> dict[str, Any]:
    """A rollback, then another: the second switches nothing, leaves every state file byte for
    byte as it was and says so."""
    first = run(ctx, "d-rollback-1", ctx.rollback())
    before = fault_lab.consistency(ctx.lab)
    second = run(ctx, "d-rollback-2", ctx.rollback())
    after = fault_lab.consistency(ctx.lab)
    second_said = " ".join(play_messages(second.text()))
    switched = play_record(second).get("switches_per_edge", {"?": 1})
    return {
        "checks": {
            "first_rolled_back": first.rc == 0
            and fault_load.summarise.every_edge(
                play_record(first), "switches_per_edge", ctx.edges, 1
            ),
            "second_ok": second.rc == 0,
            "second_switched_nothing": not switched,
            "second_says_nothing_to_roll_back": "Nothing to roll back" in second_said
            and "already rolled back" in second_said,
            "state_files_byte_identical": before["digests"] == after["digests"]
            and None not in after["digests"].values(),
            "every_edge_answers_what_it_records": after["ok"],
        },
        "second_message": [m for m in play_messages(second.text()) if "roll back" in m][:1],
        "digests": after["digests"],
    }


# ---- b. a canary step that fails on the second edge only ----------------------------------------


def canary_fails_on_second_edge(ctx: Context) -> dict[str, Any]:
    """A canary release [10, 100] while the second edge's switch layer has a broken upstream
    file (dropped once the run holds the lock, removed after): its `nginx -t` fails at the 10 %
    step, so every edge goes back to the old colour and the message names that edge as the one
    that failed. The failed switch keeps its intent (nginx -t still fails on the previous files
    while the broken one is there) and the put-back cannot record the abort there; once the file
    is removed, the next run (reconcile.yml from the first edge) recovers it and converges."""
    edge = ctx.edges[1]
    broken = f"{fault_lab.UPSTREAM_DIR}/{BROKEN_CONF}"
    dropper = fault_lab.wait_for_file(
        edge,
        fault_lab.LOCK_FILE,
        then=f"echo 'venta_fault_test_not_a_directive;' > {broken}",
    )
    playbook, extra = ctx.release(ctx.new)
    steps = ["-e", '{"venta_release_canary_steps": [10, 100], "venta_release_canary_pause": 5}']
    play = start(ctx, "b-canary", (playbook, extra + steps))
    try:
        finish(ctx, play)
    finally:
        dropped = dropper.done()
        dropper.finish()
        fault_lab.remove(edge, broken)
    failures = " ".join(failure_messages(play.text()))
    after = fault_lab.consistency(ctx.lab)
    # The aborted edges recorded the abort, the broken one could not: converge from the first.
    recovery = run(
        ctx, "b-next-run", ("reconcile.yml", ["-e", f"venta_reconcile_from={ctx.edges[0]}"])
    )
    state = fault_lab.consistency(ctx.lab)
    return {
        "checks": {
            "broken_file_dropped_during_the_run": dropped,
            "release_failed": play.rc not in (0, None),
            "stopped_at_the_10_percent_step": "at the 10 % step" in failures,
            "message_names_the_second_edge_as_failed": second_edge_failed(failures, edge),
            # The put-back of the broken edge cannot pass nginx -t while the file is there, so
            # the message may say it could not be put back; what it serves is what counts.
            "every_edge_back_on_the_old_colour": serves(after, ctx.service, ctx.old),
            "edges_answer_what_they_record_after_the_abort": not after["disagreements"]
            and not any(e["mismatches"] for e in after["edges"].values()),
            "next_run_recovers": recovery.rc == 0 and state["ok"],
        },
        "broken_edge": edge,
        "message": failures[:1500],
        "after_abort": after["edges"],
        "next_run": play_record(recovery),
    }


def second_edge_failed(message: str, edge: str) -> bool:
    """The release's failure gives `edge` as the reason of its step ("... at the 10 % step of
    <domain>: <edge>: <what failed>"), not only in the list of what each edge serves now."""
    return (
        re.search(rf"at the \d+ % step of [\w-]+: (?:[\w-]+: .*\| )?{re.escape(edge)}: ", message)
        is not None
    )


# ---- e. the canary killed at the 10 % step -----------------------------------------------------


def canary_killed(ctx: Context) -> dict[str, Any]:
    """A canary release [10, 100] (pause 10 s) of the canary service; at the 10 % step every
    container of the new colour is killed: the release stops at that step's analysis (too few
    good attempts), every edge back on the old colour, no client error."""
    service = ctx.canary_service
    colour = idle_colour(ctx.lab, service)
    playbook, extra = ctx.release(ctx.new, service)
    steps = ["-e", '{"venta_release_canary_steps": [10, 100], "venta_release_canary_pause": 10}']
    play = start(ctx, "e-canary", (playbook, extra + steps))
    reached = wait_until(
        lambda: all(step_reached(fault_lab.edge_state(e)[1], service, 10) for e in ctx.edges),
        play,
        240,
    )
    killed_at = round(time.monotonic() - play.started, 3)
    kills = parallel(
        [
            ["docker", "exec", host, "docker", "kill", f"venta-{service}-{colour}"]
            for host in ctx.lab.docker_hosts
        ]
    )
    finish(ctx, play)
    failures = " ".join(failure_messages(play.text()))
    state = fault_lab.consistency(ctx.lab)
    return {
        "checks": {
            "ten_percent_step_reached_on_every_edge": reached,
            "containers_killed": all(rc == 0 for rc in kills),
            "release_failed": play.rc not in (0, None),
            "stopped_at_the_10_percent_analysis": "at the 10 % step" in failures
            and "canary analysis" in failures,
            "every_edge_back_on_the_old_colour": serves(state, service, ctx.old),
            "every_edge_answers_what_it_records": state["ok"],
        },
        "killed_colour": colour,
        "killed_after_s": killed_at,
        "message": failures[:1500],
    }


# ---- f. a Docker host stopped during a release -------------------------------------------------


def docker_host_stopped(ctx: Context, delay: float = 8.0) -> dict[str, Any]:
    """A release of the canary service; `delay` seconds after it took the release lock, the last
    Docker host is stopped (`docker stop`: systemd in it shuts down, ~10 s here), so the host
    goes away while the release gathers facts and deploys the new slots. The play must fail
    naming the host, and the traffic stays on the healthy colour. Then the host is started again
    and waited for (every service's container healthy)."""
    service = ctx.canary_service
    host = ctx.lab.docker_hosts[-1]
    locked = fault_lab.wait_for_file(ctx.edges[0], fault_lab.LOCK_FILE)
    play = start(ctx, "f-release", ctx.release(ctx.new, service))
    while not locked.done() and not play.ended.is_set():
        time.sleep(0.05)
    locked.finish()
    locked_at = round(time.monotonic() - play.started, 3)
    time.sleep(delay)
    stop_began = round(time.monotonic() - play.started, 3)
    stop = fault_lab.docker(["stop", host])
    stopped_at = round(time.monotonic() - play.started, 3)
    finish(ctx, play)
    failures = failure_messages(play.text())
    text = " ".join(failures)
    state = fault_lab.consistency(ctx.lab)
    fault_lab.docker(["start", host])
    healthy_s = wait_docker_host(host, 240)
    return {
        "checks": {
            "host_stopped": stop.returncode == 0,
            "release_failed": play.rc not in (0, None),
            "message_names_the_host": host in text,
            "traffic_stays_on_the_old_colour": serves(state, service, ctx.old),
            "every_edge_answers_what_it_records": state["ok"],
            "host_healthy_again": healthy_s is not None,
            "no_stale_docker_proxy": not fault_lab.stale_proxy_ports(host),
        },
        "stopped_host": host,
        "lock_taken_after_s": locked_at,
        "stop_began_after_s": stop_began,
        "stopped_after_s": stopped_at,
        "run_wall_s": play.wall_s,
        "rc": play.rc,
        "messages": [m[:1500] for m in failures],
        "failed_tasks": failed_tasks(play.text()),
        "host_healthy_after_s": healthy_s,
    }


def restore_canary_service(ctx: Context) -> dict[str, Any]:
    """Bring the killed containers back (a release re-creates the new colour's slots) and the
    service back to the old version (a rollback), under load."""
    service = ctx.canary_service
    release = run(ctx, "restore-release", ctx.release(ctx.new, service))
    rollback = run(ctx, "restore-rollback", ctx.rollback(service=service))
    state = fault_lab.consistency(ctx.lab)
    colour = idle_colour(ctx.lab, service)
    healthy = [healthy_container(h, f"venta-{service}-{colour}") for h in ctx.lab.docker_hosts]
    return {
        "checks": {
            "release_ok": release.rc == 0,
            "rollback_ok": rollback.rc == 0,
            "service_back_on_old": serves(state, service, ctx.old),
            "new_colour_running_again": all(healthy),
            "every_edge_answers_what_it_records": state["ok"],
        },
    }


# ---- g. SIGKILL of an nginx master on the VIP holder -------------------------------------------


def kill_master(layer: str, during_switch: bool = False) -> Callable[[Context], dict[str, Any]]:
    """SIGKILL the main process of `layer` (the switch layer or the client-facing nginx) on the
    edge holding the VIP; with `during_switch`, at the moment a run's switch is in progress on
    that edge (its intent file exists): a release of the one-service case to the new version
    when it is on the old one, else a rollback to the old one. systemd must run it again within
    5 s; whether and when the VIP moved is recorded; errors are measured, not required to be
    zero. Whatever the run's outcome, every edge must then answer what it records."""

    def body(ctx: Context) -> dict[str, Any]:
        holders = fault_lab.vip_holders(ctx.lab)
        if len(holders) != 1:
            return {"checks": {"one_vip_holder": False}, "holders": holders}
        edge = holders[0]
        unit = UNITS[layer]
        watch = VipWatch(ctx.lab, edge)
        watch.start()
        play = None
        during = None
        if during_switch:
            on_new = serves(fault_lab.consistency(ctx.lab), ctx.service, ctx.new)
            during = "rollback" if on_new else "release"
            op = ctx.rollback(to=ctx.old) if on_new else ctx.release(ctx.new)
            killer = fault_lab.wait_for_file(
                edge, fault_lab.INTENT_FILE, then=f"timeout 60 sh -c '{KILL_MAIN}' sh {unit}"
            )
            play = start(ctx, f"g-{unit}-{during}", op)
            while not killer.done() and not play.ended.is_set():
                time.sleep(0.05)
            out = killer.finish()  # cancelled when the run ended without a switch on this edge
            finish(ctx, play)
        else:
            time.sleep(4)
            killer = subprocess.run(
                ["docker", "exec", edge, "timeout", "60", "sh", "-c", KILL_MAIN, "sh", unit],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            out = killer.stdout
        restart = parse_kill(out)
        time.sleep(6)
        watch.stop.set()
        watch.join()
        state = fault_lab.consistency(ctx.lab)
        moved = watch.moved_at - restart["killed_at"] if watch.moved_at and restart else None
        record = {
            "checks": {
                "killed_and_restarted": restart is not None,
                "back_within_5s": restart is not None and restart["restart_s"] <= 5,
                "every_edge_answers_what_it_records": state["ok"],
            },
            "layer": layer,
            "unit": unit,
            "edge": edge,
            "during": during,
            "restart": restart,
            "vip_moved_to": watch.moved_to,
            "vip_moved_after_s": round(moved, 3) if moved is not None else None,
        }
        if play is not None:
            record["run"] = play_record(play)
        return record

    return body


def parse_kill(out: str) -> dict[str, Any] | None:
    """KILL_MAIN's last line: old and new main PID, when it was killed and active again."""
    lines = [line for line in (out or "").splitlines() if line.strip()]
    try:
        old, new, killed, active = lines[-1].split()
        return {
            "old_pid": int(old),
            "new_pid": int(new),
            "killed_at": float(killed),
            "restart_s": round(float(active) - float(killed), 3),
        }
    except (IndexError, ValueError):
        return None


class VipWatch(threading.Thread):
    """Polls which edge holds the VIP until stopped: when (epoch seconds) another edge than
    `holder` first held it."""

    def __init__(self, lab: Lab, holder: str) -> None:
        super().__init__(daemon=True)
        self.lab = lab
        self.holder = holder
        self.stop = threading.Event()
        self.moved_at: float | None = None
        self.moved_to: str | None = None

    def run(self) -> None:
        others = [e for e in self.lab.edges if e != self.holder]
        while not self.stop.is_set() and self.moved_at is None:
            for edge in others:
                if fault_lab.holds_vip(edge, self.lab.vip):
                    self.moved_at, self.moved_to = time.time(), edge
            self.stop.wait(0.05)


# ---- h. the VIP holder stopped ---------------------------------------------------------------


def vip_holder_stopped(ctx: Context) -> dict[str, Any]:
    """`docker stop` the edge holding the VIP under load: the other edge takes the VIP; the
    outage and the requests lost are measured (goal <= 2 s). Then `docker start` it and wait
    until both edges serve every service again."""
    holders = fault_lab.vip_holders(ctx.lab)
    if len(holders) != 1:
        return {"checks": {"one_vip_holder": False}, "holders": holders}
    edge = holders[0]
    watch = VipWatch(ctx.lab, edge)
    watch.start()
    time.sleep(2)
    stopped = time.time()
    stop = fault_lab.docker(["stop", edge])
    stop_s = round(time.time() - stopped, 3)
    time.sleep(3)
    watch.stop.set()
    watch.join()
    fault_lab.docker(["start", edge])
    serving_s = wait_edges_serving(ctx.lab, 180, since=stopped)
    time.sleep(2)
    holders_after = fault_lab.vip_holders(ctx.lab)
    moved = round(watch.moved_at - stopped, 3) if watch.moved_at else None
    return {
        "checks": {
            "edge_stopped": stop.returncode == 0,
            "vip_moved": watch.moved_to is not None,
            "both_edges_serve_again": serving_s is not None,
            "one_vip_holder_after": len(holders_after) == 1,
        },
        "edge": edge,
        "goal_max_outage_s": 2.0,
        "docker_stop_s": stop_s,
        "vip_moved_to": watch.moved_to,
        "vip_moved_after_s": moved,
        "both_serving_after_s": serving_s,
        "holder_after": holders_after,
    }


# ---- the end state -------------------------------------------------------------------------------


def final_state(ctx: Context) -> dict[str, Any]:
    """Every service on the old version on every edge, the edges agreeing with each other and
    with what they answer. When not, one release of the old version converges it (recorded)."""
    state = fault_lab.consistency(ctx.lab)
    fixed = None
    on_old = all(serves(state, s, ctx.old) for s in fault_lab.SERVICES)
    if not (state["ok"] and on_old):
        fixed = play_record(
            run(ctx, "final-converge", ("release.yml", ["-e", f"venta_release_version={ctx.old}"]))
        )
        state = fault_lab.consistency(ctx.lab)
        on_old = all(serves(state, s, ctx.old) for s in fault_lab.SERVICES)
    return {
        "checks": {"every_service_on_old": on_old, "edges_agree_and_answer": state["ok"]},
        "converge_run": fixed,
        "live": state["live"],
    }


# ---- between cases ---------------------------------------------------------------------------


def repair(ctx: Context, after: str) -> dict[str, Any] | None:
    """When a case left the edges disagreeing, answering other than they record, or a lock or an
    intent behind, converge them with reconcile.yml (from the edge with most services on the old
    version; with break_lock when a lock is left) so the next cases start from a known state.
    None when nothing was wrong. A repair does not make the case pass: its checks already
    recorded what was wrong."""
    before = fault_lab.consistency(ctx.lab)
    if before["ok"]:
        return None
    extra = ["-e", f"venta_reconcile_from={most_on(before, ctx.old, ctx.edges)}"]
    if any(e["lock_left"] for e in before["edges"].values()):
        extra += BREAK_LOCK
    play = run(ctx, f"repair-after-{after}", ("reconcile.yml", extra))
    state = fault_lab.consistency(ctx.lab)
    return {
        "before": {k: before[k] for k in ("edges", "disagreements", "live")},
        "run": play_record(play),
        "ok_after": state["ok"],
        "live_after": state["live"],
    }


def most_on(state: dict[str, Any], version: str, edges: list[str]) -> str:
    """The edge whose recorded state has the most services on `version` (the first on a tie)."""
    live = state.get("live") or {}
    return max(
        edges,
        key=lambda e: (
            sum(1 for v in (live.get(e) or {}).values() if v.endswith(f" {version}")),
            -edges.index(e),
        ),
    )


# ---- waiting -----------------------------------------------------------------------------------


def wait_until(test: Callable[[], bool], play: Play, timeout: float) -> bool:
    """Poll `test` every 0.3 s until it holds, the play ended or `timeout` passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if test():
            return True
        if play.ended.is_set():
            return False
        time.sleep(0.3)
    return False


def parallel(commands: list[list[str]]) -> list[int]:
    processes = [
        subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for c in commands
    ]
    return [p.wait(60) for p in processes]


def healthy_container(host: str, name: str) -> bool:
    result = fault_lab.docker_exec(
        host, ["docker", "inspect", "--format", "{{.State.Health.Status}}", name], 20
    )
    return result.returncode == 0 and result.stdout.strip() == "healthy"


def wait_docker_host(host: str, timeout: float) -> float | None:
    """Seconds until the host's every venta container with a health check is healthy (and at
    least one runs), None when it did not happen within `timeout`."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        result = fault_lab.docker_exec(
            host, ["docker", "ps", "--filter", "name=venta-", "--format", "{{.Status}}"], 20
        )
        statuses = [s for s in result.stdout.splitlines() if s.strip()]
        if result.returncode == 0 and statuses and all("(healthy)" in s for s in statuses):
            return round(time.monotonic() - began, 3)
        time.sleep(1)
    return None


def wait_edges_serving(lab: Lab, timeout: float, since: float) -> float | None:
    """Seconds (from `since`, epoch) until every edge answers 200 for every service through its
    own port; None when that did not happen within `timeout`."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if all(
            fault_lab.answer("127.0.0.1", port, lab.ca, service, 2)["status"] == 200
            for port in lab.edges.values()
            for service in fault_lab.SERVICES
        ):
            return round(time.time() - since, 3)
        time.sleep(0.5)
    return None
