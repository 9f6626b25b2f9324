"""Tests of the service catalog filter, run against the catalog the collection ships."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible.errors import AnsibleFilterError
from ansible_collections.venta.deploy.plugins.filter.service_catalog import (
    cpu_millis,
    memory_mib,
    service_catalog,
)

DEFAULTS = Path(__file__).parents[4] / "roles" / "catalog" / "defaults" / "main.yml"


@pytest.fixture(scope="module")
def shipped() -> dict[str, Any]:
    return yaml.safe_load(DEFAULTS.read_text())


def resolve(shipped: dict[str, Any], **kwargs: Any) -> list[dict[str, Any]]:
    args: dict[str, Any] = {
        "domains": shipped["venta_catalog_domains"],
        "defaults": shipped["venta_catalog_service_defaults"],
        "overrides": {},
        "version": "1.0.0",
        "image_prefix": "venta",
        "migration_command": ["migrate"],
    }
    args.update(kwargs)
    services = kwargs.pop("services", None) or shipped["venta_catalog_services"]
    args.pop("services", None)
    return service_catalog(copy.deepcopy(services), **args)


def test_the_shipped_catalog_has_the_eight_services_in_deploy_order(shipped):
    resolved = resolve(shipped)
    assert [s["name"] for s in resolved] == [
        "api-gateway",
        "file-management",
        "webhooks",
        "geolocation",
        "real-time",
        "user-management",
        "vendor-management",
        "search-discovery",
    ]
    ports = {s["name"]: s["port"] for s in resolved}
    assert ports == {
        "user-management": 5000,
        "geolocation": 5001,
        "api-gateway": 5002,
        "file-management": 5003,
        "real-time": 5004,
        "vendor-management": 5005,
        "search-discovery": 5006,
        "webhooks": 5007,
    }


def test_entries_are_layered_and_completed(shipped):
    geo = next(s for s in resolve(shipped) if s["name"] == "geolocation")
    assert geo["image"] == "venta/geolocation"
    assert geo["tag"] == "1.0.0"
    assert geo["slots"] == {"blue": 15001, "green": 25001}
    assert geo["resources"]["memory_limit"] == "4Gi"
    assert geo["scaling"] == {"min": 3, "max": 10, "cpu_percent": 60, "memory_percent": 70}
    assert geo["health_path"] == "/health"
    assert geo["migration"] == ["migrate"]
    assert "LOCATION_UPDATE_FREQUENCY" in geo["env"]
    assert {n["var"] for n in geo["required_vars"]} == {
        "vault_postgresql_geolocation_password",
        "vault_redis_geolocation_password",
        "vault_nats_geolocation_password",
    }


def test_overrides_merge_deeply(shipped):
    resolved = resolve(
        shipped,
        overrides={"geolocation": {"tag": "2.0.0", "resources": {"memory_limit": "3Gi"}}},
    )
    geo = next(s for s in resolved if s["name"] == "geolocation")
    assert geo["tag"] == "2.0.0"
    assert geo["resources"]["memory_limit"] == "3Gi"
    assert geo["resources"]["cpu_limit"] == "2000m"


@pytest.mark.parametrize(
    ("select", "expected"),
    [
        ("marketplace", ["user-management", "vendor-management", "search-discovery"]),
        ("communication,infrastructure", ["api-gateway", "file-management", "webhooks"]),
        (["location-services"], ["geolocation", "real-time"]),
        ([], None),
    ],
)
def test_domain_selection(shipped, select, expected):
    names = [s["name"] for s in resolve(shipped, select_domains=select)]
    assert names == (expected or [s["name"] for s in resolve(shipped)])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"select_domains": "shipping"}, "venta_domains: unknown domain(s) ['shipping']"),
        ({"select_services": "billing"}, "venta_services_selected: unknown service(s)"),
        ({"overrides": {"billing": {}}}, "venta_catalog_overrides names unknown services"),
        ({"overrides": {"webhooks": {"image": ""}}}, "service webhooks has no image"),
        ({"overrides": {"webhooks": {"imgae": "x"}}}, "has unknown keys ['imgae']"),
        ({"overrides": {"webhooks": {"port": 5000}}}, "both use port 5000"),
        (
            {"overrides": {"webhooks": {"scaling": {"min": 4, "max": 2}}}},
            "scaling.max (2) is below scaling.min (4)",
        ),
        (
            {"overrides": {"webhooks": {"disruption": {"min_available": 2}}}},
            "is not above the disruption budget's min_available (2)",
        ),
        (
            {"overrides": {"webhooks": {"resources": {"cpu_limit": ""}}}},
            "resources.cpu_limit is not set",
        ),
        (
            {"overrides": {"webhooks": {"resources": {"cpu_request": "4", "cpu_limit": "1"}}}},
            "a request is above its limit",
        ),
        ({"overrides": {"webhooks": {"resources": {"memory_limit": "2GB"}}}}, "memory 2GB"),
        ({"overrides": {"webhooks": {"domain": "marketplace"}}}, "cannot change name or domain"),
    ],
)
def test_bad_input_names_the_variable(shipped, kwargs, message):
    with pytest.raises(AnsibleFilterError, match=None) as err:
        resolve(shipped, **kwargs)
    assert message in str(err.value)


def test_unknown_domain_of_a_service(shipped):
    services = copy.deepcopy(shipped["venta_catalog_services"])
    services[0]["domain"] = "billing"
    with pytest.raises(AnsibleFilterError) as err:
        resolve(shipped, services=services)
    assert "domain 'billing' is not a domain of venta_catalog_domains" in str(err.value)


@pytest.mark.parametrize(("text", "millis"), [("500m", 500), ("2", 2000), ("0.5", 500)])
def test_cpu_quantities(text, millis):
    assert cpu_millis(text) == millis


@pytest.mark.parametrize(("text", "mib"), [("512Mi", 512), ("2Gi", 2048), ("2048Ki", 2)])
def test_memory_quantities(text, mib):
    assert memory_mib(text) == mib
