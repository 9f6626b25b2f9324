# Copyright: venta.deploy developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Resolve and validate the Venta service catalog."""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from typing import Any

from ansible.errors import AnsibleFilterError

DOCUMENTATION = r"""
name: service_catalog
author: venta.deploy developers
version_added: "0.2.0"
short_description: Resolve the service catalog into one checked entry per service
description:
  - Layers, for each service, the catalog defaults, its domain's defaults, its own entry and the
    inventory's overrides; fills the image tag and the blue/green slot ports; and selects the
    services of the requested domains in deploy order.
  - Fails with a message naming the variable and the fix on unknown domains or services, unknown
    keys, a service without an image or resource limits, clashing ports, or scaling bounds that do
    not fit together.
options:
  _input:
    description: The catalog's services (C(venta_catalog_services)).
    type: list
    elements: dict
    required: true
  domains:
    description: Domains with their deploy order, environment and service defaults
      (C(venta_catalog_domains)).
    type: dict
    required: true
  defaults:
    description: Defaults of every service (C(venta_catalog_service_defaults)).
    type: dict
    default: {}
  overrides:
    description: Per-service changes from the inventory, by name (C(venta_catalog_overrides)).
    type: dict
    default: {}
  select_domains:
    description: Domains to act on (list or comma-separated string); empty means all.
    type: raw
    default: []
  select_services:
    description: Services to act on (list or comma-separated string); empty means all.
    type: raw
    default: []
  version:
    description: Image tag of services that name none.
    type: str
    default: latest
  image_prefix:
    description: Repository prefix of images given without a slash.
    type: str
    default: venta
  migration_command:
    description: Command of services whose C(migration) is C(true) (C(venta_migration_command)).
    type: list
    elements: str
"""

EXAMPLES = r"""
- name: Resolve the catalog of the marketplace domain
  ansible.builtin.set_fact:
    venta_services: >-
      {{ venta_catalog_services | venta.deploy.service_catalog(
           domains=venta_catalog_domains, defaults=venta_catalog_service_defaults,
           overrides=venta_catalog_overrides, select_domains='marketplace',
           version=venta_version, image_prefix=venta_image_prefix) }}
"""

RETURN = r"""
_value:
  description: One resolved entry per selected service, in deploy order (domain order, then
    catalog order), with C(name), C(domain), C(port), C(image), C(tag), C(slots) (port per colour),
    C(env) (domain then service environment), C(secrets), C(datastores), C(resources), C(scaling),
    C(disruption), C(edge), C(migration) and C(required_vars) (variables that must be defined).
  type: list
  elements: dict
"""

SERVICE_KEYS = frozenset(
    {
        "name",
        "domain",
        "port",
        "image",
        "tag",
        "health_path",
        "ready_path",
        "replicas_per_host",
        "hosts_group",
        "resources",
        "scaling",
        "disruption",
        "datastores",
        "migration",
        "env",
        "secrets",
        "edge",
        "stop_timeout",
        "slot_offsets",
    }
)
NESTED_KEYS = {
    "resources": frozenset({"cpu_request", "cpu_limit", "memory_request", "memory_limit"}),
    "scaling": frozenset({"min", "max", "cpu_percent", "memory_percent"}),
    "disruption": frozenset({"min_available"}),
    "datastores": frozenset({"postgres", "redis", "nats"}),
    "slot_offsets": frozenset({"blue", "green"}),
    "edge": frozenset(
        {
            "locations",
            "strip_prefix",
            "websocket",
            "client_max_body_size",
            "rate_limit",
            "rate_limit_burst",
            "read_timeout",
        }
    ),
}
DOMAIN_KEYS = frozenset({"order", "env", "service_defaults"})
COLOURS = ("blue", "green")
NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,40}[a-z0-9]$")
ENV_RE = re.compile(r"^[A-Z][A-Z0-9_]*$")
CPU_RE = re.compile(r"^(\d+m|\d+(\.\d+)?)$")
MEM_RE = re.compile(r"^\d+(Ki|Mi|Gi)$")


def _fail(msg: str) -> None:
    raise AnsibleFilterError(f"service catalog: {msg}")


def _as_list(value: Any, var: str) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, Sequence):
        return [str(part).strip() for part in value if str(part).strip()]
    _fail(f"{var} must be a list or a comma-separated string, got {value!r}")
    return []


def plain(value: Any) -> Any:
    """A plain copy of value (dicts, lists, scalars); reads Ansible's lazy containers once."""
    if isinstance(value, Mapping):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return [plain(item) for item in value]
    return value


def deep_merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Return base with extra layered on top; dicts merge, everything else replaces."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def cpu_millis(value: Any) -> int:
    text = str(value)
    if not CPU_RE.match(text):
        raise ValueError(text)
    return int(text[:-1]) if text.endswith("m") else int(float(text) * 1000)


def memory_mib(value: Any) -> int:
    text = str(value)
    if not MEM_RE.match(text):
        raise ValueError(text)
    number, unit = int(text[:-2]), text[-2:]
    return {"Ki": number // 1024, "Mi": number, "Gi": number * 1024}[unit]


def _check_keys(entry: Mapping[str, Any], where: str) -> None:
    unknown = sorted(set(entry) - SERVICE_KEYS)
    if unknown:
        _fail(
            f"{where} has unknown keys {unknown}; known keys: {sorted(SERVICE_KEYS)}. "
            "Fix the spelling (see roles/catalog/README.md)."
        )
    for key, allowed in NESTED_KEYS.items():
        value = entry.get(key)
        if value is None:
            continue
        if not isinstance(value, Mapping):
            _fail(f"{where}.{key} must be a mapping, got {value!r}")
        bad = sorted(set(value) - allowed)
        if bad:
            _fail(f"{where}.{key} has unknown keys {bad}; known keys: {sorted(allowed)}")


def _check_resources(svc: Mapping[str, Any], where: str) -> None:
    res = svc.get("resources") or {}
    for key in sorted(NESTED_KEYS["resources"]):
        if res.get(key) in (None, ""):
            _fail(
                f"{where}.resources.{key} is not set: every service needs CPU and memory requests "
                "and limits (set it in venta_catalog_service_defaults, the domain's "
                "service_defaults or venta_catalog_overrides)"
            )
    try:
        cpu_req, cpu_lim = cpu_millis(res["cpu_request"]), cpu_millis(res["cpu_limit"])
    except ValueError as exc:
        _fail(f"{where}.resources: CPU {exc} is not a quantity like 500m or 2")
    try:
        mem_req, mem_lim = memory_mib(res["memory_request"]), memory_mib(res["memory_limit"])
    except ValueError as exc:
        _fail(f"{where}.resources: memory {exc} is not a quantity like 512Mi or 2Gi")
    if cpu_req > cpu_lim or mem_req > mem_lim:
        _fail(f"{where}.resources: a request is above its limit ({dict(res)})")


def _check_scaling(svc: Mapping[str, Any], where: str) -> None:
    scaling = svc.get("scaling") or {}
    low, high = scaling.get("min"), scaling.get("max")
    if not isinstance(low, int) or not isinstance(high, int) or low < 1:
        _fail(f"{where}.scaling.min and .max must be whole numbers >= 1, got {low!r}/{high!r}")
    if high < low:
        _fail(
            f"{where}.scaling.max ({high}) is below scaling.min ({low}): the autoscaler could "
            "never satisfy both; raise max or lower min"
        )
    for key in ("cpu_percent", "memory_percent"):
        pct = scaling.get(key)
        if not isinstance(pct, int) or not 1 <= pct <= 100:
            _fail(f"{where}.scaling.{key} must be a percentage 1-100, got {pct!r}")
    min_available = (svc.get("disruption") or {}).get("min_available", 0)
    if not isinstance(min_available, int) or min_available < 0:
        _fail(f"{where}.disruption.min_available must be a whole number >= 0")
    if min_available >= low:
        _fail(
            f"{where}: scaling.min ({low}) replicas is not above the disruption budget's "
            f"min_available ({min_available}): no pod could ever be evicted (node drains would "
            "block). Raise scaling.min or lower disruption.min_available."
        )


def _check_service(svc: dict[str, Any], where: str, domains: Mapping[str, Any]) -> None:
    name = svc.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        _fail(f"{where}.name {name!r} must match [a-z][a-z0-9-]*[a-z0-9]")
    if svc.get("domain") not in domains:
        _fail(
            f"{where}.domain {svc.get('domain')!r} is not a domain of venta_catalog_domains "
            f"({', '.join(sorted(domains))})"
        )
    port = svc.get("port")
    if not isinstance(port, int) or not 1024 <= port <= 9999:
        _fail(f"{where}.port must be a port number 1024-9999, got {port!r}")
    if not svc.get("image"):
        _fail(
            f"service {name} has no image: set venta_catalog_overrides.{name}.image "
            "(a repository in venta_registry, e.g. venta/" + str(name) + ")"
        )
    if not str(svc.get("tag") or ""):
        _fail(f"service {name} has no tag: set venta_version or venta_catalog_overrides.{name}.tag")
    replicas = svc.get("replicas_per_host")
    if not isinstance(replicas, int) or not 1 <= replicas <= 9:
        _fail(f"{where}.replicas_per_host must be 1-9, got {replicas!r}")
    for key, value in (svc.get("env") or {}).items():
        if not ENV_RE.match(str(key)):
            _fail(f"{where}.env: {key!r} is not an environment variable name")
        if isinstance(value, Mapping | list):
            _fail(f"{where}.env.{key} must be a scalar")
    for key, var in (svc.get("secrets") or {}).items():
        if not ENV_RE.match(str(key)) or not isinstance(var, str) or not var:
            _fail(f"{where}.secrets: {key!r} must map an env name to a variable name")
    for path_key in ("health_path", "ready_path"):
        if not str(svc.get(path_key, "")).startswith("/"):
            _fail(f"{where}.{path_key} must start with /")
    _check_resources(svc, where)
    _check_scaling(svc, where)


def _required_vars(svc: Mapping[str, Any]) -> list[dict[str, str]]:
    ident = svc["name"].replace("-", "_")
    needed = []
    stores = svc.get("datastores") or {}
    for store in ("postgres", "redis", "nats"):
        if stores.get(store):
            prefix = "postgresql" if store == "postgres" else store
            needed.append(
                {
                    "var": f"vault_{prefix}_{ident}_password",
                    "purpose": f"{store} password of {svc['name']}",
                }
            )
    for env, var in sorted((svc.get("secrets") or {}).items()):
        needed.append({"var": var, "purpose": f"{env} of {svc['name']}"})
    return needed


def service_catalog(
    services: Sequence[Mapping[str, Any]],
    domains: Mapping[str, Any],
    defaults: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
    select_domains: Any = None,
    select_services: Any = None,
    version: str = "latest",
    image_prefix: str = "venta",
    migration_command: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    if not isinstance(services, Sequence) or isinstance(services, str) or not services:
        _fail("venta_catalog_services must be a non-empty list of services")
    if not isinstance(domains, Mapping) or not domains:
        _fail("venta_catalog_domains must be a non-empty mapping of domain name to settings")
    services, domains = plain(services), plain(domains)
    defaults, overrides = plain(defaults or {}), plain(overrides or {})
    for dname, dom in domains.items():
        if not isinstance(dom, Mapping) or set(dom) - DOMAIN_KEYS:
            _fail(f"venta_catalog_domains.{dname} may only have keys {sorted(DOMAIN_KEYS)}")
    _check_keys(defaults, "venta_catalog_service_defaults")

    names = [s.get("name") for s in services if isinstance(s, Mapping)]
    if len(names) != len(services):
        _fail("every item of venta_catalog_services must be a mapping")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        _fail(f"venta_catalog_services lists {dupes} more than once")
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        _fail(f"venta_catalog_overrides names unknown services {unknown}; known: {names}")

    wanted_domains = _as_list(select_domains, "venta_domains")
    bad = [d for d in wanted_domains if d not in domains]
    if bad:
        _fail(
            f"venta_domains: unknown domain(s) {bad}; known domains: "
            f"{', '.join(sorted(domains))}. Example: -e venta_domains=marketplace"
        )
    wanted_services = _as_list(select_services, "venta_services_selected")
    bad = [s for s in wanted_services if s not in names]
    if bad:
        _fail(f"venta_services_selected: unknown service(s) {bad}; known services: {names}")

    resolved: list[dict[str, Any]] = []
    ports: dict[int, str] = {}
    for index, entry in enumerate(services):
        where = f"venta_catalog_services[{entry.get('name') or index}]"
        _check_keys(entry, where)
        override = overrides.get(entry["name"]) or {}
        if not isinstance(override, Mapping):
            _fail(f"venta_catalog_overrides.{entry['name']} must be a mapping")
        _check_keys(override, f"venta_catalog_overrides.{entry['name']}")
        if "name" in override or "domain" in override:
            _fail(f"venta_catalog_overrides.{entry['name']} cannot change name or domain")
        domain = domains.get(entry.get("domain")) or {}
        svc = deep_merge(defaults, domain.get("service_defaults") or {})
        svc = deep_merge(svc, entry)
        svc = deep_merge(svc, override)
        svc["env"] = {**(domain.get("env") or {}), **(svc.get("env") or {})}
        svc.setdefault("tag", version)
        svc["tag"] = str(svc.get("tag") or version)
        _check_service(svc, where, domains)
        image = str(svc["image"])
        svc["image"] = image if "/" in image else f"{image_prefix}/{image}"
        offsets = svc.get("slot_offsets") or {"blue": 10000, "green": 20000}
        svc["slots"] = {colour: svc["port"] + int(offsets[colour]) for colour in COLOURS}
        svc["domain_order"] = int(domain.get("order", 99))
        migration = svc.get("migration")
        if migration is True:
            migration = list(migration_command or [])
            if not migration:
                _fail(f"{where}.migration is true but venta_migration_command is empty")
        svc["migration"] = list(migration or [])
        svc["required_vars"] = _required_vars(svc)
        for port in [svc["port"], *svc["slots"].values()]:
            for replica in range(svc["replicas_per_host"]):
                used = port + 100 * replica if port != svc["port"] else port
                if used in ports and ports[used] != svc["name"]:
                    _fail(f"service {svc['name']} and {ports[used]} both use port {used}")
                ports[used] = svc["name"]
        resolved.append(svc)

    order = {name: i for i, name in enumerate(names)}
    resolved.sort(key=lambda s: (s["domain_order"], order[s["name"]]))
    return [
        s
        for s in resolved
        if (not wanted_domains or s["domain"] in wanted_domains)
        and (not wanted_services or s["name"] in wanted_services)
    ]


class FilterModule:
    """The service catalog filter."""

    def filters(self) -> dict[str, Any]:
        return {"service_catalog": service_catalog}
