"""The canary verdict: evidence over every edge, limits, bad counts and bad arguments."""

from __future__ import annotations

from typing import Any

import pytest
from ansible_collections.venta.deploy.plugins.module_utils.canary_analysis import (
    CanaryArgumentError,
    canary_verdict,
)


def colour(attempts: int, errors: int = 0, answers: int | None = None) -> dict[str, int]:
    return {
        "attempts": attempts,
        "errors": errors,
        "client_errors": 0,
        "answers": attempts - errors if answers is None else answers,
    }


def counts(green: dict, blue: dict | None = None, service: str = "api-gateway") -> dict:
    return {service: {"green": green, "blue": blue or colour(0)}}


CANARY = {"api-gateway": "green"}


# ---- pass and fail ------------------------------------------------------------------------------

VERDICTS = [
    pytest.param(colour(0), 50, 0.01, "fail", "too few requests", id="no-traffic"),
    pytest.param(colour(2, 0), 1, 0.01, "pass", "0 error attempt(s) of 2", id="two-good"),
    pytest.param(colour(49, 0), 50, 0.01, "fail", "49 attempt(s)", id="one-below-the-minimum"),
    pytest.param(colour(50, 0), 50, 0.01, "pass", "of 50", id="exactly-the-minimum"),
    pytest.param(colour(100, 1), 50, 0.01, "pass", "(1.00 %)", id="exactly-the-max-ratio"),
    pytest.param(colour(100, 2), 50, 0.01, "fail", "more than the 1.00 %", id="above-the-ratio"),
    pytest.param(colour(2, 1), 2, "0.5", "pass", "(50.00 %)", id="half-at-half-as-text"),
    pytest.param(colour(10, 3), 10, 0.3, "pass", "(30.00 %)", id="float-0.3-is-exact"),
    pytest.param(colour(60, 0), 50, 0, "pass", "0 error", id="zero-tolerance-clean"),
    pytest.param(colour(60, 1), 50, 0, "fail", "more than the 0.00 %", id="zero-tolerance-one"),
    pytest.param(colour(2, 2), 50, 0.01, "fail", "too few", id="dead-canary-few-requests"),
]


@pytest.mark.parametrize(("green", "minimum", "ratio", "verdict", "text"), VERDICTS)
def test_verdict(green: dict, minimum: int, ratio: float, verdict: str, text: str) -> None:
    result = canary_verdict({"edge1": counts(green)}, CANARY, minimum, ratio)
    service = result["services"]["api-gateway"]
    assert service["verdict"] == verdict
    assert result["ok"] is (verdict == "pass")
    assert text in service["reason"]
    assert text in result["message"]


def test_too_few_is_a_fail_never_a_pass_and_says_why() -> None:
    result = canary_verdict({"edge1": counts(colour(12, 0))}, CANARY)
    assert result["ok"] is False
    reason = result["services"]["api-gateway"]["reason"]
    assert "12 attempt(s) on the canary, at least 50 needed" in reason
    assert "no evidence is not success" in reason
    assert "venta_release_canary_min_requests" in reason


def test_a_high_ratio_names_the_variable() -> None:
    result = canary_verdict({"edge1": counts(colour(100, 5))}, CANARY)
    assert "5 error attempt(s) of 100 (5.00 %)" in result["message"]
    assert "venta_release_canary_max_error_ratio=0.01" in result["message"]


def test_sums_over_two_edges() -> None:
    by_edge = {
        "edge1": counts(colour(30, 1), colour(270, 0)),
        "edge2": counts(colour(20, 0), colour(180, 2)),
    }
    result = canary_verdict(by_edge, CANARY, min_attempts=50, max_error_ratio=0.02)
    service = result["services"]["api-gateway"]
    assert result["ok"] is True
    assert (service["attempts"], service["errors"], service["ratio"]) == (50, 1, 0.02)
    assert service["stable"]["colour"] == "blue"
    assert (service["stable"]["attempts"], service["stable"]["errors"]) == (450, 2)
    assert service["edges"] == {
        "edge1": {"blue": {"attempts": 270, "errors": 0}, "green": {"attempts": 30, "errors": 1}},
        "edge2": {"blue": {"attempts": 180, "errors": 2}, "green": {"attempts": 20, "errors": 0}},
    }
    assert "counted on edge1, edge2" in result["message"]


def test_one_edge_alone_would_be_too_few() -> None:
    by_edge = {"edge1": counts(colour(30)), "edge2": counts(colour(0))}
    assert canary_verdict(by_edge, CANARY, 50)["ok"] is False
    by_edge["edge2"] = counts(colour(20))
    assert canary_verdict(by_edge, CANARY, 50)["ok"] is True


def test_a_service_or_colour_an_edge_does_not_list_counts_zero() -> None:
    by_edge = {"edge1": counts(colour(60)), "edge2": {}, "edge3": {"api-gateway": {}}}
    result = canary_verdict(by_edge, CANARY)
    assert result["ok"] is True
    assert result["services"]["api-gateway"]["edges"]["edge2"]["green"]["attempts"] == 0


def test_every_failing_service_is_named_and_passing_ones_are_not_in_the_failure() -> None:
    by_edge = {
        "edge1": {
            **counts(colour(100, 0)),
            **counts(colour(10, 0), service="geolocation"),
            **counts(colour(100, 40), service="chat", blue=colour(100)),
        }
    }
    canary = {"api-gateway": "green", "geolocation": "green", "chat": "green"}
    result = canary_verdict(by_edge, canary)
    assert result["ok"] is False
    assert [name for name, s in result["services"].items() if s["verdict"] == "fail"] == [
        "geolocation",
        "chat",
    ]
    assert "geolocation (green): too few requests" in result["message"]
    assert "chat (green): 40 error attempt(s) of 100 (40.00 %)" in result["message"]
    assert "[stable blue: 0 error attempt(s) of 100, 0.00 %]" in result["message"]
    assert "api-gateway" not in result["message"]


def test_a_blue_canary_compares_with_green() -> None:
    result = canary_verdict({"e": counts(colour(0), blue=colour(80))}, {"api-gateway": "blue"})
    service = result["services"]["api-gateway"]
    assert (service["colour"], service["attempts"], service["stable"]["colour"]) == (
        "blue",
        80,
        "green",
    )
    assert service["stable"]["ratio"] is None


def test_no_edge_at_all_fails_for_too_few() -> None:
    result = canary_verdict({}, CANARY)
    assert result["ok"] is False
    assert "counted on no edge" in result["message"]


def test_the_limits_are_in_the_result() -> None:
    service = canary_verdict({"e": counts(colour(60))}, CANARY, "60", "0.05")["services"][
        "api-gateway"
    ]
    assert (service["min_attempts"], service["max_error_ratio"]) == (60, 0.05)


# ---- bad counts: never raise --------------------------------------------------------------------

BAD_COUNTS: list[Any] = [
    pytest.param(None, "must be a dict {edge: counts}", id="none"),
    pytest.param([1, 2], "must be a dict {edge: counts}", id="list"),
    pytest.param({"edge1": "text"}, "counts of edge edge1 must be a dict", id="edge-not-a-dict"),
    pytest.param({"edge1": {"api-gateway": [1]}}, "edge1.api-gateway must be a dict", id="svc"),
    pytest.param(
        {"edge1": {"api-gateway": {"green": 5}}},
        "edge1.api-gateway.green must be a dict",
        id="colour-not-a-dict",
    ),
    pytest.param(
        {"edge1": counts({"attempts": "10", "errors": 0})},
        "edge1.api-gateway.green.attempts must be an integer >= 0, got '10'",
        id="text-number",
    ),
    pytest.param(
        {"edge1": counts({"attempts": -1})}, "attempts must be an integer >= 0", id="negative"
    ),
    pytest.param(
        {"edge1": counts({"attempts": True})}, "attempts must be an integer >= 0", id="bool"
    ),
    pytest.param(
        {"edge1": counts({"attempts": 1, "errors": 2})},
        "errors (2) > attempts (1)",
        id="more-errors-than-attempts",
    ),
]


@pytest.mark.parametrize(("data", "reason"), BAD_COUNTS)
def test_bad_counts_are_not_ok_with_the_reason(data: Any, reason: str) -> None:
    result = canary_verdict(data, CANARY)
    assert result["ok"] is False
    assert result["services"] == {}
    assert "the counts cannot be judged, so the canary fails" in result["message"]
    assert reason in result["message"]


# ---- bad arguments: raise, naming the argument ---------------------------------------------------

BAD_ARGUMENTS = [
    pytest.param({"canary": {}}, "canary must be a non-empty dict", id="no-service"),
    pytest.param({"canary": ["api-gateway"]}, "canary must be a non-empty dict", id="list"),
    pytest.param({"canary": {"api-gateway": "red"}}, "canary\\['api-gateway'\\]", id="colour"),
    pytest.param({"min_attempts": 0}, "min_attempts must be an integer >= 1", id="zero-min"),
    pytest.param({"min_attempts": -5}, "min_attempts", id="negative-min"),
    pytest.param({"min_attempts": 2.5}, "min_attempts", id="float-min"),
    pytest.param({"min_attempts": True}, "min_attempts", id="bool-min"),
    pytest.param({"min_attempts": "many"}, "min_attempts", id="text-min"),
    pytest.param({"max_error_ratio": 1}, "max_error_ratio must be a number in \\[0, 1\\)", id="1"),
    pytest.param({"max_error_ratio": -0.1}, "max_error_ratio", id="negative-ratio"),
    pytest.param({"max_error_ratio": "a lot"}, "max_error_ratio", id="text-ratio"),
    pytest.param({"max_error_ratio": None}, "max_error_ratio", id="none-ratio"),
    pytest.param({"max_error_ratio": False}, "max_error_ratio", id="bool-ratio"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD_ARGUMENTS)
def test_bad_arguments_raise_naming_the_argument(overrides: dict, message: str) -> None:
    args: dict[str, Any] = {"canary": CANARY, "min_attempts": 50, "max_error_ratio": 0.01}
    args.update(overrides)
    with pytest.raises(CanaryArgumentError, match=message):
        canary_verdict({"edge1": counts(colour(60))}, **args)
