"""The monitoring role's Prometheus rules: conventions, runbook links and promtool test coverage.

promtool itself checks the syntax and runs the cases (`make lint`); this checks what promtool does
not: every alert carries the labels and annotations an on-call operator needs, links a runbook
section that exists, and has a firing and a not-firing case in tests/promtool.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = sorted((ROOT / "roles/monitoring/files/rules").glob("*.yml"))
PROMTOOL_TESTS = sorted((ROOT / "tests/promtool").glob("*.test.yml"))
RUNBOOK = ROOT / "docs/runbooks/alerts.md"


def rules() -> list[dict[str, Any]]:
    found = []
    for path in RULES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            found.extend(group["rules"])
    return found


ALERTS = [rule for rule in rules() if "alert" in rule]
RECORDS = [rule for rule in rules() if "record" in rule]


def runbook_anchors() -> set[str]:
    """GitHub's anchors of the runbook's headings (lowercase, spaces to dashes)."""
    headings = re.findall(r"(?m)^#{2,3} (.+)$", RUNBOOK.read_text())
    return {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in headings}


def promtool_cases() -> dict[str, list[list[Any]]]:
    """alertname -> the exp_alerts of each of its evaluations."""
    cases: dict[str, list[list[Any]]] = {}
    for path in PROMTOOL_TESTS:
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                cases.setdefault(case["alertname"], []).append(case.get("exp_alerts") or [])
    return cases


def test_there_are_rules_and_tests() -> None:
    assert RULES and PROMTOOL_TESTS
    assert len(ALERTS) >= 20
    assert RECORDS


@pytest.mark.parametrize("rule", ALERTS, ids=lambda r: r["alert"])
def test_alert_has_severity_summary_description_runbook(rule: dict[str, Any]) -> None:
    assert re.fullmatch(r"(?:[A-Z][a-z0-9]*)+", rule["alert"]), "alert names are CamelCase"
    assert rule["labels"]["severity"] in {"critical", "warning"}
    annotations = rule["annotations"]
    assert annotations["summary"].strip()
    assert annotations["description"].strip()
    assert "for" in rule, "every alert waits (for:) before it fires"


@pytest.mark.parametrize("rule", ALERTS, ids=lambda r: r["alert"])
def test_alert_links_an_existing_runbook_section(rule: dict[str, Any]) -> None:
    page, _sep, anchor = rule["annotations"]["runbook_url"].partition("#")
    assert page == "docs/runbooks/alerts.md"
    assert anchor == rule["alert"].lower()
    assert anchor in runbook_anchors(), f"docs/runbooks/alerts.md has no section {rule['alert']}"


@pytest.mark.parametrize("rule", ALERTS, ids=lambda r: r["alert"])
def test_alert_has_a_firing_and_a_not_firing_case(rule: dict[str, Any]) -> None:
    evaluations = promtool_cases().get(rule["alert"], [])
    assert any(evaluations), f"no promtool case where {rule['alert']} fires"
    assert any(not e for e in evaluations), f"no promtool case where {rule['alert']} stays quiet"


@pytest.mark.parametrize("rule", RECORDS, ids=lambda r: r["record"])
def test_recording_rules_are_named_level_metric_operations(rule: dict[str, Any]) -> None:
    assert re.fullmatch(r"[a-z_]+:[a-z_]+:[a-z0-9_]+", rule["record"])


def test_every_runbook_section_belongs_to_an_alert() -> None:
    headings = re.findall(r"(?m)^## (.+)$", RUNBOOK.read_text())
    assert sorted(headings) == sorted(rule["alert"] for rule in ALERTS)


def test_promtool_cases_name_only_existing_alerts() -> None:
    assert set(promtool_cases()) <= {rule["alert"] for rule in ALERTS}
