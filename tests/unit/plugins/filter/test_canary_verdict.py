"""The canary_verdict filter: the module_utils verdict, exposed to Jinja."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.venta.deploy.plugins.filter.canary_verdict import (
    FilterModule,
    canary_verdict,
)

COUNTS = {
    "edge1": {
        "api-gateway": {
            "blue": {"attempts": 200, "errors": 0, "client_errors": 0, "answers": 200},
            "green": {"attempts": 2, "errors": 2, "client_errors": 0, "answers": 0},
        }
    }
}


def test_the_filter_is_exposed() -> None:
    assert FilterModule().filters()["canary_verdict"] is canary_verdict


def test_a_dead_canary_behind_retries_fails() -> None:
    result = canary_verdict(COUNTS, {"api-gateway": "green"}, min_attempts=1)
    assert result["ok"] is False
    assert "2 error attempt(s) of 2 (100.00 %)" in result["message"]


def test_defaults_need_fifty_attempts() -> None:
    result = canary_verdict(COUNTS, {"api-gateway": "green"})
    assert result["services"]["api-gateway"]["min_attempts"] == 50
    assert "at least 50 needed" in result["message"]


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"min_attempts": 0}, "min_attempts"), ({"max_error_ratio": 2}, "max_error_ratio")],
)
def test_bad_arguments_are_filter_errors(kwargs: dict, name: str) -> None:
    with pytest.raises(AnsibleFilterError, match=f"canary_verdict: {name}"):
        canary_verdict(COUNTS, {"api-gateway": "green"}, **kwargs)


def test_bad_counts_are_a_result_not_an_error() -> None:
    result = canary_verdict("not counts", {"api-gateway": "green"})
    assert result["ok"] is False
