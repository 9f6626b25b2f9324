# Copyright: venta.deploy developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Blue-green and canary switches of one service on Kubernetes (logic of the k8s_switch module).

A service <name> in a namespace has two Deployments, <name>-blue and <name>-green, one
HorizontalPodAutoscaler per colour of the same name, and the Service <name> that carries its
traffic. The switch:

- weights {colour: 100}: the Service selects that colour only (selector app + venta.io/colour);
- weights split (e.g. 90/10, a canary): the Service selects both colours (selector app only) and
  the colour with less weight runs replicas in proportion to the other's, pinned through its HPA
  (min = max), so EndpointSlices, and so kube-proxy's random choice among endpoints, carry
  about that share.

The release state lives in the ConfigMap `venta-release` of the namespace, one JSON entry per
service under data.<service> (the same shape as the Docker platform's state file entries):

    {"weights": {"blue": 0, "green": 100}, "active": "green", "previous": "blue",
     "versions": {"blue": "1.0.0", "green": "1.1.0"}, "replicas": {"green": 1},
     "switched_at": "2025-01-01T12:00:00Z",
     "history": [{"from": {...}, "to": {...}, "at": "...", "versions": {...}}]}

`replicas` holds the pinned replica count of the minor colour during a canary (empty otherwise).
The kubernetes_workload role reads this entry, so a later deploy renders the same selector and
HPA bounds and never reverts a switch.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

COLOURS = ("blue", "green")
LABEL_APP = "app.kubernetes.io/name"
LABEL_COLOUR = "venta.io/colour"
LABEL_VERSION = "app.kubernetes.io/version"
ANNOTATION_MIN = "venta.io/min-replicas"
ANNOTATION_MAX = "venta.io/max-replicas"
STATE_CONFIGMAP = "venta-release"
HISTORY_LENGTH = 10
FIELD_MANAGER = "venta.deploy.k8s_switch"


class SwitchError(Exception):
    """The switch cannot be done; the message says why and what the operator can do."""


class KubeApi(Protocol):
    """The few API calls the switch needs (objects are plain dicts as the API returns them)."""

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None: ...

    def patch(self, kind: str, namespace: str, name: str, body: dict[str, Any]) -> None: ...

    def create(self, kind: str, namespace: str, body: dict[str, Any]) -> None: ...


def other(colour: str) -> str:
    return COLOURS[1] if colour == COLOURS[0] else COLOURS[0]


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def normal_weights(weights: Mapping[str, Any]) -> dict[str, int]:
    """Both colours' weights as integers in colour order; checks range and sum."""
    unknown = sorted(set(weights) - set(COLOURS))
    if unknown:
        raise SwitchError(f"weights: unknown colour(s) {unknown}; use blue and green")
    result = {}
    for colour in COLOURS:
        value = weights.get(colour) or 0
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise SwitchError(
                f"weights.{colour} must be a whole number 0-100, got {value!r}"
            ) from None
        if not 0 <= number <= 100:
            raise SwitchError(f"weights.{colour} must be 0-100, got {number}")
        result[colour] = number
    if sum(result.values()) != 100:
        raise SwitchError(f"weights must add up to 100, got {result}")
    return result


def active_colour(weights: Mapping[str, int], tie_break: str | None = None) -> str:
    """The colour with the most weight; a tie keeps tie_break (the active one), else blue."""
    top = max(weights[colour] for colour in COLOURS)
    leaders = [colour for colour in COLOURS if weights[colour] == top]
    return tie_break if tie_break in leaders else leaders[0]


def minor_replicas(major_replicas: int, major_weight: int, minor_weight: int) -> int:
    """Replicas of the colour with less weight so that its share of endpoints fits the weights."""
    if minor_weight <= 0:
        return 0
    return max(1, round(major_replicas * minor_weight / major_weight))


def effective_weights(replicas: Mapping[str, int], weights: Mapping[str, int]) -> dict[str, int]:
    """Share of endpoints per colour (percent) that the replica counts give."""
    serving = {c: replicas.get(c, 0) for c in COLOURS if weights[c] > 0}
    total = sum(serving.values())
    if total == 0:
        return dict(weights)
    return {c: round(100 * serving.get(c, 0) / total) for c in COLOURS}


def deployment_available(deployment: Mapping[str, Any] | None) -> tuple[bool, str]:
    """Whether a Deployment is rolled out: Available, every replica updated, ready, available."""
    if not deployment:
        return False, "does not exist"
    meta, spec = deployment.get("metadata", {}), deployment.get("spec", {})
    status = deployment.get("status", {}) or {}
    want = int(spec.get("replicas", 1))
    if int(status.get("observedGeneration", 0)) < int(meta.get("generation", 0)):
        return False, "the controller has not seen its latest spec yet"
    if want < 1:
        return False, "it is scaled to 0 replicas"
    counts = {k: int(status.get(k, 0) or 0) for k in ("updatedReplicas", "readyReplicas")}
    counts["availableReplicas"] = int(status.get("availableReplicas", 0) or 0)
    counts["replicas"] = int(status.get("replicas", 0) or 0)
    if counts["updatedReplicas"] < want:
        return False, f"{counts['updatedReplicas']}/{want} replicas updated"
    if counts["replicas"] > want:
        return False, f"{counts['replicas'] - want} old replica(s) still terminating"
    if counts["availableReplicas"] < want or counts["readyReplicas"] < want:
        return False, f"{counts['availableReplicas']}/{want} replicas available"
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    if conditions.get("Available") != "True":
        return False, "condition Available is not True"
    return True, f"{want}/{want} replicas updated and available"


def deployment_version(deployment: Mapping[str, Any] | None) -> str | None:
    if not deployment:
        return None
    labels = deployment.get("metadata", {}).get("labels") or {}
    if labels.get(LABEL_VERSION):
        return str(labels[LABEL_VERSION])
    containers = deployment.get("spec", {}).get("template", {}).get("spec", {}).get("containers")
    image = str((containers or [{}])[0].get("image", ""))
    tail = image.rsplit("/", 1)[-1]
    return tail.split(":", 1)[1] if ":" in tail else None


def selector_for(service: str, weights: Mapping[str, int]) -> dict[str, str]:
    """The Service selector that sends traffic to the colours with weight."""
    serving = [c for c in COLOURS if weights[c] > 0]
    if len(serving) == 1:
        return {LABEL_APP: service, LABEL_COLOUR: serving[0]}
    return {LABEL_APP: service}


def load_entry(configmap: Mapping[str, Any] | None, service: str) -> dict[str, Any] | None:
    text = ((configmap or {}).get("data") or {}).get(service)
    if not text:
        return None
    try:
        entry = json.loads(text)
    except ValueError as exc:
        raise SwitchError(
            f"ConfigMap {STATE_CONFIGMAP} key {service} is not valid JSON ({exc}); fix or delete "
            "that key (the next switch records it again from the live Service)"
        ) from None
    if not isinstance(entry, dict) or "weights" not in entry:
        raise SwitchError(f"ConfigMap {STATE_CONFIGMAP} key {service} has no weights; delete it")
    return entry


def weights_from_selector(selector: Mapping[str, str] | None) -> dict[str, int] | None:
    """Weights implied by a live Service selector with no recorded state (colour -> 100)."""
    colour = (selector or {}).get(LABEL_COLOUR)
    if colour in COLOURS:
        return {c: 100 if c == colour else 0 for c in COLOURS}
    return None


@dataclass
class Request:
    namespace: str
    service: str
    weights: dict[str, int] | None = None
    rollback: bool = False
    wait_timeout: int = 120
    match_capacity: bool = True
    configmap: str = STATE_CONFIGMAP


@dataclass
class Outcome:
    changed: bool = False
    actions: list[dict[str, Any]] = field(default_factory=list)
    entry: dict[str, Any] = field(default_factory=dict)
    before: dict[str, Any] = field(default_factory=dict)
    after: dict[str, Any] = field(default_factory=dict)
    gate_seconds: float = 0.0
    effective_weights: dict[str, int] = field(default_factory=dict)

    def result(self) -> dict[str, Any]:
        return {
            "changed": self.changed,
            "actions": self.actions,
            "state": self.entry,
            "gate_seconds": round(self.gate_seconds, 1),
            "effective_weights": self.effective_weights,
            "diff": {"before": self.before, "after": self.after},
        }


def target_weights(request: Request, entry: Mapping[str, Any] | None, live: dict[str, int] | None):
    """The weights the request asks for (a rollback reads the recorded previous colour)."""
    current = normal_weights(entry["weights"]) if entry else live
    if request.rollback:
        if current and min(current.values()) > 0:
            # A canary is running: roll back = all traffic to the colour that had the most.
            keep = active_colour(current, (entry or {}).get("active"))
            return {c: 100 if c == keep else 0 for c in COLOURS}
        previous = (entry or {}).get("previous")
        if previous not in COLOURS:
            raise SwitchError(
                f"{request.service}: no previous colour recorded in ConfigMap "
                f"{request.namespace}/{request.configmap}; nothing to roll back to (give weights)"
            )
        return {c: 100 if c == previous else 0 for c in COLOURS}
    if request.weights is None:
        raise SwitchError("give weights (e.g. {green: 100}) or rollback: true")
    return normal_weights(request.weights)


def hpa_bounds(hpa: Mapping[str, Any] | None) -> tuple[int, int] | None:
    """The catalog's min/max of a colour's HPA (annotations set by the role), else its spec."""
    if not hpa:
        return None
    notes = hpa.get("metadata", {}).get("annotations") or {}
    spec = hpa.get("spec", {})
    low = int(notes.get(ANNOTATION_MIN, spec.get("minReplicas", 1)))
    high = int(notes.get(ANNOTATION_MAX, spec.get("maxReplicas", low)))
    return low, high


class Switch:
    """Plan and carry out one switch against a KubeApi."""

    def __init__(
        self,
        api: KubeApi,
        request: Request,
        check_mode: bool = False,
        now: Callable[[], str] = utc_now,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api, self.req, self.check_mode = api, request, check_mode
        self.now, self.sleep, self.clock = now, sleep, clock
        self.out = Outcome()

    # ---- reading ------------------------------------------------------------------------
    def _name(self, colour: str) -> str:
        return f"{self.req.service}-{colour}"

    def _get(self, kind: str, name: str) -> dict[str, Any] | None:
        return self.api.get(kind, self.req.namespace, name)

    def _record(self, kind: str, name: str, what: str, before: Any, after: Any) -> None:
        self.out.actions.append(
            {
                "object": f"{kind}/{self.req.namespace}/{name}",
                "field": what,
                "from": before,
                "to": after,
            }
        )

    # ---- waiting ------------------------------------------------------------------------
    def _wait_available(self, colour: str, replicas: int | None = None) -> None:
        """Wait until colour's Deployment is Available with replicas; SwitchError on timeout."""
        start = self.clock()
        name = self._name(colour)
        while True:
            dep = self._get("Deployment", name)
            ok, why = deployment_available(dep)
            if ok and replicas is not None and int(dep["spec"].get("replicas", 1)) < replicas:
                ok, why = False, f"not yet scaled to {replicas} replicas"
            if ok:
                self.out.gate_seconds += self.clock() - start
                return
            if self.clock() - start >= self.req.wait_timeout:
                self.out.gate_seconds += self.clock() - start
                raise SwitchError(
                    f"Deployment {self.req.namespace}/{name} is not Available: {why} (waited "
                    f"{self.req.wait_timeout} s). Traffic stays where it was; check its pods "
                    f"(kubectl -n {self.req.namespace} describe deployment {name}), fix the "
                    "release and run the switch again"
                )
            self.sleep(2)

    # ---- the switch ---------------------------------------------------------------------
    def run(self) -> Outcome:
        req = self.req
        svc = self._get("Service", req.service)
        if svc is None:
            raise SwitchError(
                f"Service {req.namespace}/{req.service} does not exist; deploy the service with "
                "the venta.deploy.kubernetes_workload role first"
            )
        deps = {c: self._get("Deployment", self._name(c)) for c in COLOURS}
        hpas = {c: self._get("HorizontalPodAutoscaler", self._name(c)) for c in COLOURS}
        configmap = self._get("ConfigMap", req.configmap)
        entry = load_entry(configmap, req.service)
        selector = dict(svc.get("spec", {}).get("selector") or {})
        live_weights = weights_from_selector(selector)
        weights = target_weights(req, entry, live_weights)
        old_weights = normal_weights(entry["weights"]) if entry else live_weights
        old_active = (entry or {}).get("active") or (
            active_colour(old_weights) if old_weights else None
        )
        active = active_colour(weights, old_active)
        minor = other(active)

        # 1. Gate: every colour that gets traffic must be rolled out (nothing touched before).
        for colour in COLOURS:
            if weights[colour] == 0:
                continue
            ok, why = deployment_available(deps[colour])
            if not ok:
                raise SwitchError(
                    f"{req.service}: Deployment {req.namespace}/{self._name(colour)} is not "
                    f"Available ({why}); traffic was not switched to {colour}. Wait for its "
                    "rollout or fix it (kubectl describe deployment), then run the switch again"
                )

        replicas = {c: int((deps[c] or {}).get("spec", {}).get("replicas", 0)) for c in COLOURS}
        # 2. Capacity. The minor colour of a canary runs replicas in proportion to the weights,
        #    pinned through its HPA (min = max); every other colour gets its catalog HPA bounds
        #    back. A colour that takes over all traffic first gets at least the replicas of the
        #    colour that carried it (within its HPA bounds).
        pinned: dict[str, int] = {}
        if weights[minor] > 0:
            pinned[minor] = minor_replicas(replicas[active], weights[active], weights[minor])
        final = dict(replicas)
        for colour in COLOURS:
            bounds = hpa_bounds(hpas[colour])
            if colour in pinned:
                self._set_hpa(colour, hpas[colour], pinned[colour], pinned[colour])
                final[colour] = pinned[colour]
            elif bounds:
                self._set_hpa(colour, hpas[colour], bounds[0], bounds[1])
                final[colour] = min(max(final[colour], bounds[0]), bounds[1])
        taking_over = old_active is not None and old_active != active and weights[active] == 100
        if req.match_capacity and taking_over:
            high = (hpa_bounds(hpas[active]) or (1, replicas[old_active]))[1]
            final[active] = max(final[active], min(replicas[old_active], high))
        for colour in COLOURS:
            if weights[colour] > 0 or colour in pinned:
                self._scale(colour, replicas[colour], final[colour])
        if not self.check_mode:
            for colour in COLOURS:
                if weights[colour] > 0 and final[colour] != replicas[colour]:
                    self._wait_available(colour, final[colour])

        # 3. The Service selector.
        new_selector = selector_for(req.service, weights)
        if new_selector != selector:
            body: dict[str, Any] = {"spec": {"selector": dict(new_selector)}}
            for key in selector:
                if key not in new_selector:
                    body["spec"]["selector"][key] = None
            self._record("Service", req.service, "spec.selector", selector, new_selector)
            if not self.check_mode:
                self.api.patch("Service", req.namespace, req.service, body)

        # 4. The recorded state.
        versions = {c: v for c in COLOURS if (v := deployment_version(deps[c])) is not None}
        new_entry = self._next_entry(
            entry, old_weights, weights, active, old_active, versions, pinned
        )
        if entry is None or _comparable(entry) != _comparable(new_entry):
            self._write_state(configmap, new_entry)
        else:
            new_entry = entry
        self.out.entry = new_entry
        self.out.effective_weights = effective_weights(final, weights)
        self.out.before = {"selector": selector, "state": entry or {}}
        self.out.after = {"selector": new_selector, "state": new_entry}
        self.out.changed = bool(self.out.actions)
        return self.out

    def _set_hpa(self, colour: str, hpa: dict[str, Any] | None, low: int, high: int) -> None:
        if not hpa:
            return
        spec = hpa.get("spec", {})
        before = (int(spec.get("minReplicas", 1)), int(spec.get("maxReplicas", 1)))
        if before == (low, high):
            return
        name = self._name(colour)
        field_name = "spec.minReplicas/maxReplicas"
        self._record("HorizontalPodAutoscaler", name, field_name, list(before), [low, high])
        if not self.check_mode:
            body = {"spec": {"minReplicas": low, "maxReplicas": high}}
            self.api.patch("HorizontalPodAutoscaler", self.req.namespace, name, body)

    def _scale(self, colour: str, current: int, want: int) -> None:
        if current == want:
            return
        name = self._name(colour)
        self._record("Deployment", name, "spec.replicas", current, want)
        if not self.check_mode:
            self.api.patch("Deployment", self.req.namespace, name, {"spec": {"replicas": want}})

    def _next_entry(
        self,
        entry: Mapping[str, Any] | None,
        old_weights: dict[str, int] | None,
        weights: dict[str, int],
        active: str,
        old_active: str | None,
        versions: dict[str, str],
        pinned: dict[str, int],
    ) -> dict[str, Any]:
        current = copy.deepcopy(dict(entry or {}))
        history = [h for h in current.get("history") or [] if isinstance(h, dict)]
        previous = current.get("previous")
        switched_at = current.get("switched_at")
        if old_weights != weights:
            at = self.now()
            history.append({"from": old_weights, "to": weights, "at": at, "versions": versions})
            switched_at = at
            if old_active and old_active != active:
                previous = old_active
        return {
            "weights": weights,
            "active": active,
            "previous": previous,
            "versions": versions,
            "replicas": pinned,
            "switched_at": switched_at or self.now(),
            "history": history[-HISTORY_LENGTH:],
        }

    def _write_state(self, configmap: dict[str, Any] | None, entry: dict[str, Any]) -> None:
        text = json.dumps(entry, sort_keys=True)
        old = ((configmap or {}).get("data") or {}).get(self.req.service)
        self._record("ConfigMap", self.req.configmap, f"data.{self.req.service}", old, text)
        if self.check_mode:
            return
        if configmap is None:
            body = {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": self.req.configmap,
                    "namespace": self.req.namespace,
                    "labels": {"app.kubernetes.io/managed-by": "venta.deploy"},
                },
                "data": {self.req.service: text},
            }
            self.api.create("ConfigMap", self.req.namespace, body)
        else:
            body = {"data": {self.req.service: text}}
            self.api.patch("ConfigMap", self.req.namespace, self.req.configmap, body)


def _comparable(entry: Mapping[str, Any]) -> dict[str, Any]:
    """What decides whether the recorded entry must be rewritten (not the timestamps)."""
    return {
        "weights": dict(entry.get("weights") or {}),
        "active": entry.get("active"),
        "previous": entry.get("previous"),
        "versions": dict(entry.get("versions") or {}),
        "replicas": dict(entry.get("replicas") or {}),
    }


class ClientApi:
    """KubeApi over the official `kubernetes` Python client (dicts in, dicts out)."""

    def __init__(self, kubeconfig: str | None, context: str | None) -> None:
        from kubernetes import client, config  # guarded by the module (missing_required_lib)

        self._exc = client.exceptions.ApiException
        api_client = config.new_client_from_config(config_file=kubeconfig, context=context)
        self._core = client.CoreV1Api(api_client)
        self._apps = client.AppsV1Api(api_client)
        self._hpa = client.AutoscalingV2Api(api_client)

    def _methods(self, kind: str) -> tuple[Callable[..., Any], Callable[..., Any], Any]:
        table = {
            "Service": ("read_namespaced_service", "patch_namespaced_service", self._core),
            "ConfigMap": ("read_namespaced_config_map", "patch_namespaced_config_map", self._core),
            "Deployment": ("read_namespaced_deployment", "patch_namespaced_deployment", self._apps),
            "HorizontalPodAutoscaler": (
                "read_namespaced_horizontal_pod_autoscaler",
                "patch_namespaced_horizontal_pod_autoscaler",
                self._hpa,
            ),
        }
        read, patch, api = table[kind]
        return getattr(api, read), getattr(api, patch), api

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        read = self._methods(kind)[0]
        try:
            response = read(name, namespace, _preload_content=False)
        except self._exc as exc:
            if exc.status == 404:
                return None
            raise
        return json.loads(response.data)

    def patch(self, kind: str, namespace: str, name: str, body: dict[str, Any]) -> None:
        patch = self._methods(kind)[1]
        patch(name, namespace, body, field_manager=FIELD_MANAGER)

    def create(self, kind: str, namespace: str, body: dict[str, Any]) -> None:
        if kind != "ConfigMap":
            raise SwitchError(f"creating a {kind} is not part of a switch")
        self._core.create_namespaced_config_map(namespace, body, field_manager=FIELD_MANAGER)
