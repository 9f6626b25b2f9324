"""The Kubernetes workload plan (what each colour runs) and the rollout check."""

from __future__ import annotations

import json
from typing import Any

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.venta.deploy.plugins.filter.k8s_rollout_pending import (
    k8s_rollout_pending,
)
from ansible_collections.venta.deploy.plugins.filter.k8s_workload import k8s_workload_plan

SVC = {
    "name": "geolocation",
    "domain": "location-services",
    "tag": "1.2.0",
    "scaling": {"min": 3, "max": 10, "cpu_percent": 60, "memory_percent": 70},
}
NS = "venta-location-services"


def release(entry: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"metadata": {"namespace": NS}, "data": {"geolocation": json.dumps(entry)}}]


def dep(colour: str, replicas: int, version: str) -> dict[str, Any]:
    return {
        "metadata": {
            "namespace": NS,
            "name": f"geolocation-{colour}",
            "labels": {"app.kubernetes.io/version": version},
        },
        "spec": {"replicas": replicas},
    }


def test_first_deploy_puts_the_tag_on_both_colours_blue_active() -> None:
    [plan] = k8s_workload_plan([SVC])
    assert plan["namespace"] == NS
    assert plan["active"] == "blue" and plan["target_colour"] == "blue"
    assert plan["selector"] == {"app.kubernetes.io/name": "geolocation", "venta.io/colour": "blue"}
    assert {c: v["tag"] for c, v in plan["colours"].items()} == {"blue": "1.2.0", "green": "1.2.0"}
    assert plan["colours"]["green"]["replicas"] == 3
    assert plan["recorded"] is False


def test_release_to_idle_keeps_the_active_version() -> None:
    entry = {"weights": {"blue": 100, "green": 0}, "active": "blue", "versions": {"blue": "1.1.0"}}
    [plan] = k8s_workload_plan(
        [SVC], releases=release(entry),
        deployments=[dep("blue", 5, "1.1.0"), dep("green", 3, "1.1.0")], target="idle",
    )  # fmt: skip
    assert plan["target_colour"] == "green"
    assert plan["colours"]["green"]["tag"] == "1.2.0"
    assert plan["colours"]["blue"]["tag"] == "1.1.0"
    assert plan["colours"]["blue"]["replicas"] == 5  # the autoscaler's count is kept
    assert plan["recorded"] is False  # green gets a new version: record it


def test_converge_keeps_the_released_version_of_the_active_colour() -> None:
    entry = {"weights": {"blue": 0, "green": 100}, "active": "green",
             "versions": {"blue": "1.0.0", "green": "1.1.0"}}  # fmt: skip
    [plan] = k8s_workload_plan(
        [{**SVC, "tag": "1.0.0"}], releases=release(entry),
        deployments=[dep("blue", 3, "1.0.0"), dep("green", 3, "1.1.0")],
    )  # fmt: skip
    assert plan["target_colour"] == "green"
    assert plan["colours"]["green"]["tag"] == "1.1.0"
    assert plan["selector"]["venta.io/colour"] == "green"
    assert plan["recorded"] is True


def test_canary_selects_both_and_keeps_the_pin() -> None:
    entry = {"weights": {"blue": 90, "green": 10}, "active": "blue", "replicas": {"green": 1}}
    [plan] = k8s_workload_plan(
        [SVC], releases=release(entry), deployments=[dep("blue", 3, "1"), dep("green", 1, "2")]
    )
    assert plan["canary"] is True
    assert plan["selector"] == {"app.kubernetes.io/name": "geolocation"}
    assert plan["colours"]["green"] | {"tag": None} == {
        "tag": None, "replicas": 1, "hpa_min": 1, "hpa_max": 1, "pinned": True,
    }  # fmt: skip


def test_several_services_each_get_their_own_state() -> None:
    other = {**SVC, "name": "real-time"}
    entry = {"weights": {"blue": 0, "green": 100}, "active": "green",
             "versions": {"blue": "1.2.0", "green": "1.2.0"}}  # fmt: skip
    plans = k8s_workload_plan([SVC, other], releases=release(entry))
    assert [p["active"] for p in plans] == ["green", "blue"]
    assert [p["recorded"] for p in plans] == [True, False]


def test_replicas_are_clamped_to_the_bounds() -> None:
    [plan] = k8s_workload_plan([SVC], deployments=[dep("blue", 50, "1"), dep("green", 1, "1")])
    assert plan["colours"]["blue"]["replicas"] == 10
    assert plan["colours"]["green"]["replicas"] == 3


def test_bad_target_and_bad_state_fail() -> None:
    with pytest.raises(AnsibleFilterError, match="kubernetes_workload_target"):
        k8s_workload_plan([SVC], target="purple")
    bad = [{"metadata": {"namespace": NS}, "data": {"geolocation": "{"}}]
    with pytest.raises(AnsibleFilterError, match="not JSON"):
        k8s_workload_plan([SVC], releases=bad)


def test_rollout_pending_names_the_deployment() -> None:
    done = {
        "metadata": {"namespace": NS, "name": "a", "generation": 2},
        "spec": {"replicas": 2},
        "status": {"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2,
                   "readyReplicas": 2, "availableReplicas": 2,
                   "conditions": [{"type": "Available", "status": "True"}]},
    }  # fmt: skip
    pending = {**done, "metadata": {"namespace": NS, "name": "b", "generation": 3}}
    assert k8s_rollout_pending([done, pending]) == [
        f"{NS}/b: the controller has not seen its latest spec yet"
    ]
