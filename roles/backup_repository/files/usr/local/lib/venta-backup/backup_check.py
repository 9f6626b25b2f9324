"""Backup health check of the Venta backup host: fails loudly when a store is not backed up.

Installed by venta.deploy.backup_repository as `venta-backup-check` (standard library only). It
reads /etc/venta-backup/check.json and checks:

- postgresql: `pgbackrest info` of the stanza: the newest good backup (any type) and the newest
  full backup are younger than their thresholds;
- wal: on the primary (over the pgBackRest SSH key, as postgres), the oldest WAL segment still
  waiting to be archived is younger than the threshold, and the archiver's last attempt did not
  fail;
- verify: the last `pgbackrest verify` job passed and is recent;
- files: every shipped store (Redis, NATS) has a file younger than its threshold.

Every failure is printed at journal priority err ("<3>" prefix) and the exit code is 1; with
--json the whole report is printed as JSON on stdout. Exit 0 means every check passed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from typing import Any

WAL_QUERY = """\
SELECT count(*) AS ready,
       coalesce(extract(epoch FROM now() - min(modification))::bigint, 0) AS oldest_ready_seconds,
       (SELECT coalesce(extract(epoch FROM now() - last_archived_time)::bigint, -1) FROM pg_stat_archiver),
       (SELECT coalesce(last_failed_time > coalesce(last_archived_time, 'epoch'), false) FROM pg_stat_archiver),
       (SELECT coalesce(last_failed_wal, '') FROM pg_stat_archiver)
  FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready';
"""


def result(name: str, ok: bool, message: str, **values: Any) -> dict[str, Any]:
    return {"check": name, "ok": ok, "message": message, **values}


def hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h"


# --- pure checks (unit-tested) ----------------------------------------------------------------
def check_pgbackrest_info(
    info: list[dict[str, Any]], now: float, max_age_hours: float, full_max_age_hours: float
) -> list[dict[str, Any]]:
    """Ages of the newest good backup and the newest full backup of the stanza."""
    if not info:
        return [result("postgresql", False, "pgbackrest info returned no stanza")]
    stanza = info[0]
    name = stanza.get("name", "?")
    status = stanza.get("status", {})
    good = [b for b in stanza.get("backup", []) if not b.get("error")]
    if not good:
        return [
            result(
                "postgresql",
                False,
                f"stanza {name} has no good backup ({status.get('message', '')})",
            )
        ]
    out = []
    newest = max(good, key=lambda b: b["timestamp"]["stop"])
    age = now - newest["timestamp"]["stop"]
    out.append(
        result(
            "postgresql",
            age <= max_age_hours * 3600,
            f"newest backup {newest['label']} ({newest['type']}) is {hours(age)} old (limit {max_age_hours} h)",
            age_seconds=int(age),
            label=newest["label"],
        )
    )
    fulls = [b for b in good if b.get("type") == "full"]
    if not fulls:
        out.append(result("postgresql-full", False, f"stanza {name} has no good full backup"))
    else:
        full = max(fulls, key=lambda b: b["timestamp"]["stop"])
        full_age = now - full["timestamp"]["stop"]
        out.append(
            result(
                "postgresql-full",
                full_age <= full_max_age_hours * 3600,
                f"newest full backup {full['label']} is {hours(full_age)} old (limit {full_max_age_hours} h)",
                age_seconds=int(full_age),
                label=full["label"],
            )
        )
    if status.get("code", 0) not in (0,):
        out.append(
            result("postgresql-status", False, f"stanza {name}: {status.get('message', status)}")
        )
    return out


def check_wal(row: str, max_lag_seconds: float) -> dict[str, Any]:
    """One psql row: ready|oldest_ready_seconds|since_last_archived|last_attempt_failed|last_failed_wal."""
    fields = row.strip().split("|")
    if len(fields) != 5:
        return result("wal", False, f"unexpected answer from the primary: {row.strip()!r}")
    ready, oldest, since_archived = int(fields[0]), int(fields[1]), int(fields[2])
    failed = fields[3] == "t"
    problems = []
    if oldest > max_lag_seconds:
        problems.append(
            f"{ready} WAL segment(s) wait to be archived, the oldest for {oldest} s (limit {int(max_lag_seconds)} s)"
        )
    if failed:
        problems.append(f"the last archive attempt failed (segment {fields[4]})")
    message = "; ".join(problems) or (
        f"{ready} segment(s) waiting, oldest {oldest} s; last archived {since_archived} s ago"
    )
    return result(
        "wal",
        not problems,
        message,
        ready=ready,
        oldest_ready_seconds=oldest,
        last_archived_seconds=since_archived,
    )


def check_verify(status: dict[str, Any] | None, now: float, max_age_hours: float) -> dict[str, Any]:
    if status is None:
        return result(
            "verify", False, "no `pgbackrest verify` result yet (pgbackrest-job@verify.service)"
        )
    finished = parse_time(status.get("finished", ""))
    age = now - finished if finished else float("inf")
    if not status.get("ok"):
        return result(
            "verify",
            False,
            f"the last verify ({status.get('finished')}) FAILED: {status.get('summary', '').strip()}",
        )
    return result(
        "verify",
        age <= max_age_hours * 3600,
        f"the last verify passed {hours(age)} ago (limit {max_age_hours} h)",
        age_seconds=int(age) if finished else None,
    )


def check_files(
    store: str, source: str, files: list[tuple[str, float, int]], now: float, max_age_hours: float
) -> dict[str, Any]:
    """files: (name, mtime, size) of the shipped files of one store and source."""
    name = f"{store}:{source}"
    good = [f for f in files if f[2] > 0]
    if not good:
        return result(name, False, f"no {store} backup from {source} has arrived")
    newest = max(good, key=lambda f: f[1])
    age = now - newest[1]
    return result(
        name,
        age <= max_age_hours * 3600,
        f"newest {store} backup from {source} ({newest[0]}, {newest[2]} bytes) is {hours(age)} old (limit {max_age_hours} h)",
        age_seconds=int(age),
        file=newest[0],
    )


def parse_time(text: str) -> float | None:
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


# --- probes -----------------------------------------------------------------------------------
def run(
    argv: list[str], stdin: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, input=stdin, capture_output=True, text=True, timeout=timeout, check=False
    )


def as_user(user: str, argv: list[str]) -> list[str]:
    return argv if os.geteuid() != 0 else ["runuser", "-u", user, "--", *argv]


def probe_postgresql(cfg: dict[str, Any], now: float) -> list[dict[str, Any]]:
    user = cfg.get("user", "pgbackrest")
    proc = run(as_user(user, ["pgbackrest", f"--stanza={cfg['stanza']}", "--output=json", "info"]))
    if proc.returncode != 0:
        return [
            result(
                "postgresql",
                False,
                f"pgbackrest info failed: {(proc.stderr or proc.stdout).strip()}",
            )
        ]
    out = check_pgbackrest_info(
        json.loads(proc.stdout), now, cfg["max_age_hours"], cfg["full_max_age_hours"]
    )
    primary = cfg.get("primary") or {}
    if primary.get("address"):
        ssh = [
            "ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-p", str(primary.get("ssh_port", 22)),
            f"{primary.get('user', 'postgres')}@{primary['address']}",
            "psql", "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-p", str(primary.get("port", 5432)),
        ]  # fmt: skip
        wal = run(as_user(user, ssh), stdin=WAL_QUERY, timeout=60)
        if wal.returncode != 0:
            out.append(
                result(
                    "wal",
                    False,
                    f"cannot ask the primary {primary['address']}: {wal.stderr.strip()}",
                )
            )
        else:
            out.append(check_wal(wal.stdout, cfg["wal_lag_max_seconds"]))
    if cfg.get("verify_max_age_hours", 0):
        path = os.path.join(cfg["status_dir"], f"{cfg['stanza']}-verify.json")
        status = None
        if os.path.exists(path):
            with open(path, encoding="utf-8") as handle:
                status = json.load(handle)
        out.append(check_verify(status, now, cfg["verify_max_age_hours"]))
    return out


def probe_files(root: str, item: dict[str, Any], now: float) -> dict[str, Any]:
    directory = os.path.join(root, item["store"], item["source"])
    files = []
    if os.path.isdir(directory):
        for entry in os.scandir(directory):
            if entry.is_file() and entry.name.endswith(".age"):
                stat = entry.stat()
                files.append((entry.name, stat.st_mtime, stat.st_size))
    return check_files(item["store"], item["source"], files, now, item["max_age_hours"])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="venta-backup-check", description=__doc__.split("\n", 1)[0]
    )
    parser.add_argument("--config", default="/etc/venta-backup/check.json")
    parser.add_argument("--json", action="store_true", help="print the whole report as JSON")
    args = parser.parse_args(argv)
    with open(args.config, encoding="utf-8") as handle:
        cfg = json.load(handle)
    now = time.time()
    results: list[dict[str, Any]] = []
    if cfg.get("postgresql"):
        try:
            results.extend(probe_postgresql(cfg["postgresql"], now))
        except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
            results.append(result("postgresql", False, f"{type(exc).__name__}: {exc}"))
    for item in cfg.get("files", []):
        results.append(probe_files(cfg["root"], item, now))
    failed = [r for r in results if not r["ok"]]
    report = {
        "host": cfg.get("host"),
        "checked": datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "ok": not failed,
        "results": results,
    }
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        for item in results:
            print(f"{'OK  ' if item['ok'] else 'FAIL'} {item['check']}: {item['message']}")
    for item in failed:
        print(f"<3>BACKUP CHECK FAILED: {item['check']}: {item['message']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
