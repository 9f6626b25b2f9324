"""The Kubernetes blue-green/canary switch: state transitions against an in-memory API."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from ansible_collections.venta.deploy.plugins.module_utils import k8s_switch as ks

NS = "venta-marketplace"
SVC = "user-management"


def deployment(colour: str, replicas: int, version: str, ready: bool = True) -> dict[str, Any]:
    status: dict[str, Any] = {"observedGeneration": 1, "replicas": replicas}
    if ready:
        status.update(
            updatedReplicas=replicas,
            readyReplicas=replicas,
            availableReplicas=replicas,
            conditions=[{"type": "Available", "status": "True"}],
        )
    else:
        status.update(updatedReplicas=0, readyReplicas=0, availableReplicas=0, conditions=[])
    return {
        "metadata": {
            "name": f"{SVC}-{colour}",
            "namespace": NS,
            "generation": 1,
            "labels": {ks.LABEL_APP: SVC, ks.LABEL_COLOUR: colour, ks.LABEL_VERSION: version},
        },
        "spec": {"replicas": replicas},
        "status": status,
    }


def hpa(colour: str, low: int, high: int) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"{SVC}-{colour}",
            "annotations": {ks.ANNOTATION_MIN: str(low), ks.ANNOTATION_MAX: str(high)},
        },
        "spec": {"minReplicas": low, "maxReplicas": high},
    }


def merge(base: dict[str, Any], patch: dict[str, Any]) -> None:
    """Strategic-merge semantics for maps: nested dicts merge, None deletes a key."""
    for key, value in patch.items():
        if value is None:
            base.pop(key, None)
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)


class FakeApi:
    """The objects of one service in a dict; a scaled Deployment becomes ready at once unless
    `stuck` names its colour (its new replicas never become available)."""

    def __init__(self, blue: int = 2, green: int = 2, hpa_bounds: tuple[int, int] = (2, 5)):
        self.objects: dict[tuple[str, str], dict[str, Any]] = {
            ("Service", SVC): {
                "metadata": {"name": SVC},
                "spec": {"selector": {ks.LABEL_APP: SVC, ks.LABEL_COLOUR: "blue"}},
            },
            ("Deployment", f"{SVC}-blue"): deployment("blue", blue, "1.0.0"),
            ("Deployment", f"{SVC}-green"): deployment("green", green, "1.1.0"),
            ("HorizontalPodAutoscaler", f"{SVC}-blue"): hpa("blue", *hpa_bounds),
            ("HorizontalPodAutoscaler", f"{SVC}-green"): hpa("green", *hpa_bounds),
        }
        self.calls: list[tuple[str, str, str]] = []
        self.stuck: set[str] = set()

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        assert namespace == NS
        obj = self.objects.get((kind, name))
        return copy.deepcopy(obj) if obj is not None else None

    def patch(self, kind: str, namespace: str, name: str, body: dict[str, Any]) -> None:
        self.calls.append(("patch", kind, name))
        merge(self.objects[(kind, name)], body)
        if kind == "Deployment" and "replicas" in body.get("spec", {}):
            colour = name.rsplit("-", 1)[1]
            want = body["spec"]["replicas"]
            version = self.objects[(kind, name)]["metadata"]["labels"][ks.LABEL_VERSION]
            self.objects[(kind, name)] = deployment(colour, want, version, colour not in self.stuck)

    def create(self, kind: str, namespace: str, body: dict[str, Any]) -> None:
        self.calls.append(("create", kind, body["metadata"]["name"]))
        self.objects[(kind, body["metadata"]["name"])] = copy.deepcopy(body)

    # helpers for assertions
    def selector(self) -> dict[str, str]:
        return self.objects[("Service", SVC)]["spec"]["selector"]

    def entry(self) -> dict[str, Any]:
        return json.loads(self.objects[("ConfigMap", "venta-release")]["data"][SVC])

    def replicas(self, colour: str) -> int:
        return self.objects[("Deployment", f"{SVC}-{colour}")]["spec"]["replicas"]

    def hpa_spec(self, colour: str) -> tuple[int, int]:
        spec = self.objects[("HorizontalPodAutoscaler", f"{SVC}-{colour}")]["spec"]
        return spec["minReplicas"], spec["maxReplicas"]


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds


def run(api: FakeApi, check_mode: bool = False, **request: Any) -> ks.Outcome:
    clock = Clock()
    req = ks.Request(namespace=NS, service=SVC, wait_timeout=10, **request)
    switch = ks.Switch(
        api, req, check_mode=check_mode, now=lambda: "2025-01-01T12:00:00Z",
        sleep=clock.sleep, clock=clock,
    )  # fmt: skip
    return switch.run()


def test_first_record_writes_state_and_keeps_selector() -> None:
    api = FakeApi()
    out = run(api, weights={"blue": 100})
    assert out.changed
    assert [a["object"] for a in out.actions] == [f"ConfigMap/{NS}/venta-release"]
    assert api.selector() == {ks.LABEL_APP: SVC, ks.LABEL_COLOUR: "blue"}
    entry = api.entry()
    assert entry["active"] == "blue" and entry["previous"] is None
    assert entry["versions"] == {"blue": "1.0.0", "green": "1.1.0"}
    assert entry["weights"] == {"blue": 100, "green": 0}


def test_switch_moves_selector_and_records_previous() -> None:
    api = FakeApi()
    run(api, weights={"blue": 100})
    out = run(api, weights={"green": 100})
    assert out.changed
    assert api.selector() == {ks.LABEL_APP: SVC, ks.LABEL_COLOUR: "green"}
    entry = api.entry()
    assert (entry["active"], entry["previous"]) == ("green", "blue")
    assert entry["history"][-1]["from"] == {"blue": 100, "green": 0}
    assert entry["history"][-1]["to"] == {"blue": 0, "green": 100}
    assert out.result()["diff"]["before"]["selector"][ks.LABEL_COLOUR] == "blue"


def test_repeated_switch_changes_nothing() -> None:
    api = FakeApi()
    run(api, weights={"green": 100})
    calls = len(api.calls)
    out = run(api, weights={"green": 100})
    assert not out.changed
    assert out.actions == []
    assert len(api.calls) == calls


def test_check_mode_predicts_and_touches_nothing() -> None:
    api = FakeApi()
    run(api, weights={"blue": 100})
    before = copy.deepcopy(api.objects)
    out = run(api, check_mode=True, weights={"green": 100})
    assert out.changed
    assert {a["field"] for a in out.actions} >= {"spec.selector", "data.user-management"}
    assert api.objects == before


def test_not_available_target_fails_without_change() -> None:
    api = FakeApi()
    run(api, weights={"blue": 100})
    api.objects[("Deployment", f"{SVC}-green")] = deployment("green", 2, "1.1.0", ready=False)
    before = copy.deepcopy(api.objects)
    with pytest.raises(ks.SwitchError, match="user-management-green is not Available"):
        run(api, weights={"green": 100})
    assert api.objects == before


def test_canary_pins_minor_colour_and_selects_both() -> None:
    api = FakeApi(blue=3, green=3, hpa_bounds=(3, 10))
    run(api, weights={"blue": 100})
    out = run(api, weights={"blue": 90, "green": 10})
    assert api.selector() == {ks.LABEL_APP: SVC}
    assert api.replicas("green") == 1
    assert api.hpa_spec("green") == (1, 1)
    assert api.hpa_spec("blue") == (3, 10)
    assert out.effective_weights == {"blue": 75, "green": 25}
    entry = api.entry()
    assert entry["replicas"] == {"green": 1}
    assert entry["active"] == "blue"


def test_canary_completed_restores_bounds_and_capacity() -> None:
    api = FakeApi(blue=3, green=3, hpa_bounds=(3, 10))
    run(api, weights={"blue": 100})
    run(api, weights={"blue": 90, "green": 10})
    out = run(api, weights={"green": 100})
    assert api.selector() == {ks.LABEL_APP: SVC, ks.LABEL_COLOUR: "green"}
    assert api.hpa_spec("green") == (3, 10)
    assert api.replicas("green") == 3
    entry = api.entry()
    assert (entry["active"], entry["previous"], entry["replicas"]) == ("green", "blue", {})
    assert out.gate_seconds >= 0


def test_rollback_during_canary_returns_to_major_colour() -> None:
    api = FakeApi(blue=3, green=3, hpa_bounds=(3, 10))
    run(api, weights={"blue": 100})
    run(api, weights={"blue": 80, "green": 20})
    run(api, rollback=True)
    assert api.selector() == {ks.LABEL_APP: SVC, ks.LABEL_COLOUR: "blue"}
    assert api.hpa_spec("green") == (3, 10)
    assert api.entry()["weights"] == {"blue": 100, "green": 0}


def test_rollback_after_switch_goes_to_previous() -> None:
    api = FakeApi()
    run(api, weights={"blue": 100})
    run(api, weights={"green": 100})
    out = run(api, rollback=True)
    assert out.changed
    assert api.selector()[ks.LABEL_COLOUR] == "blue"
    assert (api.entry()["active"], api.entry()["previous"]) == ("blue", "green")


def test_rollback_without_previous_fails() -> None:
    api = FakeApi()
    run(api, weights={"blue": 100})
    with pytest.raises(ks.SwitchError, match="nothing to roll back to"):
        run(api, rollback=True)


def test_takeover_matches_capacity_of_the_old_colour() -> None:
    api = FakeApi(blue=4, green=2, hpa_bounds=(2, 5))
    run(api, weights={"blue": 100})
    out = run(api, weights={"green": 100})
    assert api.replicas("green") == 4
    assert any(a["field"] == "spec.replicas" and a["to"] == 4 for a in out.actions)


def test_scale_up_timeout_leaves_selector() -> None:
    api = FakeApi(blue=4, green=2, hpa_bounds=(2, 5))
    run(api, weights={"blue": 100})
    api.stuck.add("green")
    with pytest.raises(ks.SwitchError, match="not Available"):
        run(api, weights={"green": 100})
    assert api.selector()[ks.LABEL_COLOUR] == "blue"
    assert api.entry()["active"] == "blue"


def test_missing_service_fails() -> None:
    api = FakeApi()
    del api.objects[("Service", SVC)]
    with pytest.raises(ks.SwitchError, match="does not exist"):
        run(api, weights={"green": 100})


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({"blue": 50, "green": 40}, "add up to 100"),
        ({"purple": 100}, "unknown colour"),
        ({"blue": 120, "green": -20}, "0-100"),
        ({"blue": "lots"}, "whole number"),
    ],
)
def test_bad_weights(weights: dict[str, Any], message: str) -> None:
    with pytest.raises(ks.SwitchError, match=message):
        ks.normal_weights(weights)


def test_invalid_recorded_state_names_the_key() -> None:
    api = FakeApi()
    api.objects[("ConfigMap", "venta-release")] = {"data": {SVC: "{not json"}}
    with pytest.raises(ks.SwitchError, match="key user-management is not valid JSON"):
        run(api, weights={"green": 100})


@pytest.mark.parametrize(
    ("major", "w_major", "w_minor", "expected"),
    [(3, 90, 10, 1), (9, 90, 10, 1), (10, 80, 20, 2), (4, 50, 50, 4), (2, 100, 0, 0)],
)
def test_minor_replicas(major: int, w_major: int, w_minor: int, expected: int) -> None:
    assert ks.minor_replicas(major, w_major, w_minor) == expected


@pytest.mark.parametrize(
    ("mutate", "ok", "why"),
    [
        (lambda d: None, True, "2/2"),
        (lambda d: d["metadata"].update(generation=2), False, "not seen"),
        (lambda d: d["status"].update(updatedReplicas=1), False, "1/2 replicas updated"),
        (lambda d: d["status"].update(replicas=3), False, "terminating"),
        (lambda d: d["status"].update(availableReplicas=1), False, "1/2 replicas available"),
        (lambda d: d["status"].update(conditions=[]), False, "Available"),
        (lambda d: d["spec"].update(replicas=0), False, "0 replicas"),
    ],
)
def test_deployment_available(mutate: Any, ok: bool, why: str) -> None:
    dep = deployment("blue", 2, "1.0.0")
    mutate(dep)
    result, reason = ks.deployment_available(dep)
    assert result is ok
    assert why in reason


def test_version_falls_back_to_image_tag() -> None:
    dep = deployment("blue", 1, "x")
    del dep["metadata"]["labels"][ks.LABEL_VERSION]
    dep["spec"]["template"] = {"spec": {"containers": [{"image": "reg:5000/venta/a:2.0.1"}]}}
    assert ks.deployment_version(dep) == "2.0.1"
