"""Time the kubernetes_workload role on the local control plane (tools/k8s/cluster).

Runs, each on a fresh cluster: the real catalog (8 services), then synthetic catalogs of N
services with R replicas per colour (both colours run, so 2*N*R pods on simulated nodes), and
records per run the wall time of the playbook and of the role's phases (apply, rollout wait,
state recording), first run and second (no-op) run. Results: bench/k8s/results/<date>.{json,md}.

Usage: .venv/bin/python bench/k8s/bench.py [--sizes 10,50,100] [--replicas 10]
The machine's 1-minute load average after each case is recorded: other work on the machine
slows the control plane and Ansible alike.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "tools" / "k8s" / "cluster"
PLAYBOOK = str(Path(sys.executable).parent / "ansible-playbook")
DOMAINS = ["infrastructure", "communication", "location-services", "marketplace"]
# Phases of the role (task names as profile_tasks prints them; a phase may be several tasks).
PHASES = {
    "read": ["Read the recorded release state", "Read the live Deployments"],
    "apply": [
        "Apply the namespaces with Pod Security labels, default-deny and DNS egress",
        "Apply the Secrets of the services and the edge TLS Secret",
        "Apply the services' objects except their Deployments",
        "Apply the Deployments",
    ],
    "migrate": ["Apply the migration Jobs", "Wait for the migrations to finish"],
    "rollout": ["Wait until every Deployment is rolled out"],
    "record": ["Record the release state and check the Service selectors"],
}
PLAY = """\
- name: Bench the Kubernetes workload role
  hosts: localhost
  connection: local
  gather_facts: false
  roles:
    - role: venta.deploy.kubernetes_workload
"""
# The real catalog's secrets (bench values).
SECRETS = {
    "vault_venta_jwt_secret": "bench-jwt-secret-0123456789",
    "vault_venta_email_password": "bench",
    **{
        f"vault_postgresql_{s}_password": "bench"
        for s in ("file_management", "geolocation", "user_management", "vendor_management")
    },
    **{f"vault_redis_{s}_password": "bench" for s in ("api_gateway", "geolocation", "real_time")},
    **{
        f"vault_nats_{s}_password": "bench"
        for s in (
            "api_gateway",
            "webhooks",
            "geolocation",
            "real_time",
            "user_management",
            "vendor_management",
            "search_discovery",
        )
    },
}


def synthetic(services: int, replicas: int) -> dict:
    """N small services spread over the four domains, min = max = replicas per colour."""
    entries = [
        {
            "name": f"svc-{i:03d}",
            "domain": DOMAINS[i % len(DOMAINS)],
            "port": 5100 + i,
            "image": "bench",
            "resources": {
                "cpu_request": "10m",
                "cpu_limit": "100m",
                "memory_request": "16Mi",
                "memory_limit": "64Mi",
            },
            "scaling": {"min": replicas, "max": replicas, "cpu_percent": 70, "memory_percent": 80},
        }
        for i in range(services)
    ]
    return {"venta_catalog_services": entries, "venta_catalog_overrides": {}}


def cluster(action: str, run_dir: Path, nodes: int) -> None:
    env = {**os.environ, "VENTA_K8S_RUN": str(run_dir), "VENTA_K8S_NODES": str(nodes)}
    subprocess.run([str(CLUSTER), action], check=True, env=env, capture_output=True, text=True)


def play(run_dir: Path, extra: dict, workdir: Path) -> dict:
    (workdir / "play.yml").write_text(PLAY)
    (workdir / "vars.json").write_text(json.dumps({**SECRETS, **extra}))
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_CALLBACKS_ENABLED": "ansible.posix.profile_tasks",
        "PROFILE_TASKS_TASK_OUTPUT_LIMIT": "all",
        "ANSIBLE_NOCOLOR": "1",
        "K8S_AUTH_KUBECONFIG": str(run_dir / "kubeconfig"),
    }
    start = time.monotonic()
    result = subprocess.run(
        [PLAYBOOK, "-i", "localhost,", str(workdir / "play.yml"), "-e", f"@{workdir / 'vars.json'}",
         "-e", f"ansible_python_interpreter={sys.executable}", "-e", "venta_platform=kubernetes",
         "-e", "kubernetes_workload_rollout_timeout=900"],
        env=env, cwd=REPO, capture_output=True, text=True, check=False,
    )  # fmt: skip
    wall = time.monotonic() - start
    if result.returncode != 0:
        sys.stderr.write(result.stdout[-5000:] + result.stderr[-2000:])
        raise SystemExit(f"playbook failed (rc {result.returncode})")
    phases = {}
    for key, names in PHASES.items():
        total = 0.0
        for name in names:
            match = re.search(re.escape(name) + r" -+ (\d+\.\d+)s", result.stdout)
            total += float(match.group(1)) if match else 0.0
        phases[key] = round(total, 1)
    recap = re.search(r"changed=(\d+)", result.stdout)
    return {"wall_s": round(wall, 1), **phases, "changed": int(recap.group(1)) if recap else None}


def measure(label: str, services: int, replicas: int, extra: dict) -> dict:
    """replicas: per service and colour, or for the catalog the sum over its services."""
    pods = 2 * services * replicas if label != "catalog" else 2 * replicas
    nodes = max(3, -(-pods // 100) + 1)
    with tempfile.TemporaryDirectory(prefix="venta-k8s-bench-") as tmp:
        run_dir, workdir = Path(tmp) / "cluster", Path(tmp)
        t0 = time.monotonic()
        cluster("up", run_dir, nodes)
        up = time.monotonic() - t0
        try:
            first = play(run_dir, extra, workdir)
            second = play(run_dir, extra, workdir)
        finally:
            cluster("down", run_dir, nodes)
    row = {
        "load_avg_1m_after": round(os.getloadavg()[0], 1),
        "case": label,
        "services": services,
        "replicas_per_colour": replicas,
        "pods": pods,
        "nodes": nodes,
        "cluster_up_s": round(up, 1),
        "first": first,
        "second": second,
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10,50,100")
    parser.add_argument("--replicas", type=int, default=10)
    args = parser.parse_args()
    # The real catalog: scaling.min of the eight services is 19 replicas per colour.
    rows = [measure("catalog", 8, 19, {})]
    rows[0]["replicas_per_colour"] = "2-3 (catalog)"
    for size in [int(s) for s in args.sizes.split(",") if s]:
        rows.append(
            measure(f"synthetic-{size}", size, args.replicas, synthetic(size, args.replicas))
        )
    stamp = dt.datetime.now(dt.UTC)
    machine = {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }
    out = REPO / "bench" / "k8s" / "results"
    out.mkdir(parents=True, exist_ok=True)
    name = stamp.strftime("%Y-%m-%dT%H%M")
    (out / f"{name}.json").write_text(
        json.dumps({"date": stamp.isoformat(), "machine": machine, "rows": rows}, indent=2) + "\n"
    )
    lines = [
        f"# kubernetes_workload bench, {stamp:%Y-%m-%d %H:%M} UTC",
        "",
        f"Machine: {machine['cpus']} CPUs, {machine['memory_gib']} GiB, Python "
        f"{machine['python']}, kernel {machine['kernel']}. Control plane: tools/k8s/cluster "
        "(Kubernetes v1.33.13, etcd v3.5.21, kwok v0.7.0), fresh per case.",
        "",
        "| case | services | pods (both colours) | nodes | first run: wall (s) | read / apply / "
        "migrate / rollout / record (s) | second run (no-op): wall (s), changed | load avg |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        f, s = r["first"], r["second"]
        lines.append(
            f"| {r['case']} | {r['services']} | {r['pods']} | {r['nodes']} | {f['wall_s']} | "
            f"{f['read']} / {f['apply']} / {f['migrate']} / {f['rollout']} / {f['record']} | "
            f"{s['wall_s']}, changed={s['changed']} | {r['load_avg_1m_after']} |"
        )
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
