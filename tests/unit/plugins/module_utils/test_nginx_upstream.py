"""The switch writes the upstream file byte for byte as the nginx_edge role's template does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible.errors import AnsibleFilterError
from ansible.plugins.filter.core import comment as ansible_comment
from ansible_collections.venta.deploy.plugins.filter.nginx_upstream import nginx_upstream
from ansible_collections.venta.deploy.plugins.module_utils.nginx_upstream import (
    COLOURS,
    UpstreamError,
    UpstreamSettings,
    comment,
    parse_weights,
    render_upstream,
    upstream_name,
)

ROOT = Path(__file__).resolve().parents[4]
ROLE = ROOT / "roles" / "nginx_edge"
TEMPLATE = ROLE / "templates" / "etc" / "nginx" / "venta-switch" / "upstreams" / "service.conf.j2"
FACT = "/etc/ansible/facts.d/venta_release.fact"

BACKENDS = {
    "blue": ["venta-app1:15002", "venta-app2:15002"],
    "green": ["venta-app1:25002", "venta-app2:25002"],
}

# (recorded weights as they may appear in the fact file, backends)
CASES = [
    pytest.param({"blue": 100, "green": 0}, BACKENDS, id="blue"),
    pytest.param({"blue": 0, "green": 100}, BACKENDS, id="green"),
    pytest.param({"blue": 90, "green": 10}, BACKENDS, id="canary-90-10"),
    pytest.param({"blue": 50, "green": 50}, BACKENDS, id="half"),
    pytest.param({"green": 100, "blue": 0}, BACKENDS, id="keys-in-other-order"),
    pytest.param({"green": "10", "blue": "90"}, BACKENDS, id="weights-as-strings"),
    pytest.param({"blue": 100}, {"blue": ["rt1:15004"]}, id="blue-only-service"),
    pytest.param(
        {"blue": 0, "green": 100}, {"blue": [], "green": ["[::1]:25002"]}, id="empty-blue"
    ),
]


def role_vars() -> dict[str, Any]:
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    role_internal = yaml.safe_load((ROLE / "vars" / "main.yml").read_text())
    return {
        "nginx_edge_upstream_max_fails": defaults["nginx_edge_upstream_max_fails"],
        "nginx_edge_upstream_fail_timeout": defaults["nginx_edge_upstream_fail_timeout"],
        "nginx_edge_upstream_keepalive": defaults["nginx_edge_upstream_keepalive"],
        "__nginx_edge_colours": role_internal["__nginx_edge_colours"],
        "__nginx_edge_release_fact_path": role_internal["__nginx_edge_release_fact_path"],
    }


def module_render(service: str, backends: dict, weights: dict, source: str) -> str:
    defaults = role_vars()
    settings = UpstreamSettings(
        max_fails=defaults["nginx_edge_upstream_max_fails"],
        fail_timeout=defaults["nginx_edge_upstream_fail_timeout"],
        keepalive=defaults["nginx_edge_upstream_keepalive"],
    )
    normal = {colour: int(weights.get(colour) or 0) for colour in COLOURS}
    return render_upstream(service, backends, normal, source, settings)


def test_role_and_module_agree_on_paths_and_colours() -> None:
    internal = role_vars()
    assert tuple(internal["__nginx_edge_colours"]) == COLOURS
    assert internal["__nginx_edge_release_fact_path"] == FACT


@pytest.mark.parametrize(("weights", "backends"), CASES)
def test_the_role_filter_is_the_module_renderer(weights: dict, backends: dict) -> None:
    """The role's template is the nginx_upstream filter: one renderer for both writers."""
    assert "venta.deploy.nginx_upstream(" in TEMPLATE.read_text()
    defaults = role_vars()
    text = nginx_upstream(
        "api-gateway",
        backends,
        weights,
        FACT,
        max_fails=defaults["nginx_edge_upstream_max_fails"],
        fail_timeout=defaults["nginx_edge_upstream_fail_timeout"],
        keepalive=defaults["nginx_edge_upstream_keepalive"],
    )
    assert text == module_render("api-gateway", backends, weights, FACT)


def test_the_filter_names_the_service_on_bad_settings() -> None:
    with pytest.raises(AnsibleFilterError, match=r"nginx_upstream\(api-gateway\).*fail_timeout"):
        nginx_upstream("api-gateway", BACKENDS, {"blue": 100}, FACT, fail_timeout="ten")


def test_the_managed_header_is_ansibles_comment() -> None:
    assert comment("Ansible managed") == "#\n# Ansible managed\n#"
    for text in ["Ansible managed", "Managed by Ansible\nDo not edit", "a\n\nb"]:
        assert comment(text) == ansible_comment(text)


def test_rendered_file_names_weights_and_settings() -> None:
    text = module_render("api-gateway", BACKENDS, {"blue": 90, "green": 10}, FACT)
    assert text.startswith("#\n# Ansible managed\n#\n# Upstream of api-gateway:")
    assert f"# Weights blue=90 green=10 from {FACT}.\n" in text
    assert "upstream venta_api_gateway {\n    zone upstream_venta_api_gateway 64k;\n" in text
    assert "    server venta-app1:15002 weight=90 max_fails=3 fail_timeout=10s; # blue\n" in text
    assert "    server venta-app2:25002 weight=10 max_fails=3 fail_timeout=10s; # green\n" in text
    assert text.endswith(
        "    keepalive 32;\n    keepalive_timeout 60s;\n    keepalive_requests 1000;\n}\n"
    )


def test_a_colour_with_weight_zero_is_down() -> None:
    text = module_render("api-gateway", BACKENDS, {"blue": 0, "green": 100}, FACT)
    assert "    server venta-app1:15002 down; # blue\n" in text
    assert " weight=0 " not in text


@pytest.mark.parametrize(
    ("weights", "backends"),
    [
        ({"blue": 90, "green": 10}, BACKENDS),
        ({"blue": 0, "green": 100}, BACKENDS),
        ({"blue": 100, "green": 0}, {"blue": ["a:1"], "green": []}),
    ],
)
def test_parse_weights_reads_back_what_was_written(weights: dict, backends: dict) -> None:
    assert parse_weights(module_render("svc", backends, weights, FACT)) == weights


def test_parse_weights_of_a_foreign_file() -> None:
    assert parse_weights("upstream x {\n    server a:1;\n}\n") is None


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({"max_fails": -1}, "nginx_edge_upstream_max_fails"),
        ({"fail_timeout": "ten"}, "nginx_edge_upstream_fail_timeout"),
        ({"keepalive": 0}, "nginx_edge_upstream_keepalive"),
    ],
)
def test_bad_settings_name_the_role_variable(kwargs: dict, names: str) -> None:
    with pytest.raises(UpstreamError, match=names):
        UpstreamSettings(**kwargs)


def test_upstream_name() -> None:
    assert upstream_name("location-services-x") == "venta_location_services_x"


PLAYBOOK = """
- name: Render the nginx_edge upstream template with Ansible itself
  hosts: localhost
  connection: local
  gather_facts: false
  vars:
    __nginx_edge_service: {service}
    __nginx_edge_weights: {weights}
  tasks:
    - name: Load the role's internal variables
      ansible.builtin.include_vars: {role}/vars/main.yml
    - name: Load the role's defaults
      ansible.builtin.include_vars: {role}/defaults/main.yml
    - name: Render
      ansible.builtin.template:
        src: {template}
        dest: {dest}
        mode: "0644"
"""


@pytest.mark.parametrize(("weights", "backends"), CASES[2:3] + CASES[5:8])
def test_module_text_is_what_ansible_template_writes(
    tmp_path: Path, weights: dict, backends: dict
) -> None:
    """The real template module (ansible-core's engine, ansible_managed, filters) agrees too."""
    dest = tmp_path / "api-gateway.conf"
    playbook = tmp_path / "render.yml"
    playbook.write_text(
        PLAYBOOK.format(
            service=json.dumps({"name": "api-gateway", "backends": backends}),
            weights=json.dumps({"api-gateway": {"weights": weights, "source": FACT}}),
            role=ROLE,
            template=TEMPLATE,
            dest=dest,
        )
    )
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_LOCALHOST_WARNING": "false",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false",
    }
    ansible_playbook = Path(sys.executable).parent / "ansible-playbook"
    run = subprocess.run(
        [
            str(ansible_playbook),
            "-i",
            "localhost,",
            "-e",
            f"ansible_python_interpreter={sys.executable}",
            str(playbook),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert dest.read_text() == module_render("api-gateway", backends, weights, FACT)
