# Copyright: venta.deploy developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The verdict of a canary step from the upstream attempts every edge counted.

Input: {edge: counts}, counts as module_utils/edge_attempts.py returns them
({service: {colour: {attempts, errors, client_errors, answers}}}). Clients may reach only one
edge (a VIP), so the counts are summed over the edges before judging. A canary passes only on
evidence: fewer attempts than the minimum fail ("no evidence is not success"), and so does an
error ratio above the maximum. Bad counts never raise (the verdict is "not ok", with the
reason); bad arguments raise CanaryArgumentError naming the argument.
"""

from __future__ import annotations

from collections.abc import Mapping
from fractions import Fraction
from typing import Any

COLOURS = ("blue", "green")
NUMBER_KEYS = ("attempts", "errors", "client_errors", "answers")
MIN_VARIABLE = "venta_release_canary_min_requests"
RATIO_VARIABLE = "venta_release_canary_max_error_ratio"


class CanaryArgumentError(ValueError):
    """A bad argument of the verdict; the message names it."""


class CountsError(ValueError):
    """The counts are not what edge_attempts returns; the message says where."""


# ---- arguments ----------------------------------------------------------------------------------


def check_canary(canary: Any) -> dict[str, str]:
    if not isinstance(canary, Mapping) or not canary:
        raise CanaryArgumentError(
            "canary must be a non-empty dict {service: colour}, the canary colour of each service "
            f"to judge; got {canary!r}"
        )
    for service, colour in canary.items():
        if not isinstance(service, str) or colour not in COLOURS:
            raise CanaryArgumentError(
                f"canary[{service!r}] must be 'blue' or 'green', got {colour!r}"
            )
    return {str(service): str(colour) for service, colour in canary.items()}


def check_min_attempts(value: Any) -> int:
    number = value
    if isinstance(value, str) and value.strip().isdigit():
        number = int(value)
    if isinstance(number, bool) or not isinstance(number, int) or number < 1:
        raise CanaryArgumentError(
            f"min_attempts must be an integer >= 1 ({MIN_VARIABLE}), got {value!r}: a canary "
            "needs evidence"
        )
    return number


def check_max_error_ratio(value: Any) -> Fraction:
    """The ratio as an exact fraction of its decimal text (0.01 is exactly 1/100)."""
    try:
        if isinstance(value, bool):
            raise ValueError
        ratio = Fraction(str(value).strip())
    except (ValueError, ZeroDivisionError):
        ratio = None
    if ratio is None or not 0 <= ratio < 1:
        raise CanaryArgumentError(
            f"max_error_ratio must be a number in [0, 1) ({RATIO_VARIABLE}), got {value!r}"
        )
    return ratio


# ---- counts -------------------------------------------------------------------------------------


def check_number(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise CountsError(f"{where} must be an integer >= 0, got {value!r}")
    return value


def colour_numbers(value: Any, where: str) -> dict[str, int]:
    """attempts, errors, client_errors, answers of one colour (absent keys are 0)."""
    if value is None:
        return dict.fromkeys(NUMBER_KEYS, 0)
    if not isinstance(value, Mapping):
        raise CountsError(f"{where} must be a dict of counts, got {value!r}")
    numbers = {key: check_number(value.get(key, 0), f"{where}.{key}") for key in NUMBER_KEYS}
    if numbers["errors"] > numbers["attempts"]:
        raise CountsError(
            f"{where}: errors ({numbers['errors']}) > attempts ({numbers['attempts']})"
        )
    return numbers


def edge_numbers(
    counts_by_edge: Any, services: list[str]
) -> dict[str, dict[str, dict[str, dict[str, int]]]]:
    """{service: {edge: {colour: numbers}}} of the judged services; CountsError when malformed."""
    if not isinstance(counts_by_edge, Mapping):
        raise CountsError(
            "the input must be a dict {edge: counts} (the counts of venta.deploy.edge_attempts "
            f"per edge), got {type(counts_by_edge).__name__}"
        )
    result: dict[str, dict[str, dict[str, dict[str, int]]]] = {name: {} for name in services}
    for edge, counts in counts_by_edge.items():
        if counts is None:
            counts = {}
        if not isinstance(counts, Mapping):
            raise CountsError(f"the counts of edge {edge} must be a dict, got {counts!r}")
        for name in services:
            per_colour = counts.get(name) or {}
            if not isinstance(per_colour, Mapping):
                raise CountsError(f"{edge}.{name} must be a dict {{blue, green}}")
            result[name][str(edge)] = {
                colour: colour_numbers(per_colour.get(colour), f"{edge}.{name}.{colour}")
                for colour in COLOURS
            }
    return result


def summed(per_edge: Mapping[str, Mapping[str, Mapping[str, int]]], colour: str) -> dict[str, Any]:
    numbers = {key: sum(edge[colour][key] for edge in per_edge.values()) for key in NUMBER_KEYS}
    attempts, errors = numbers["attempts"], numbers["errors"]
    ratio = round(errors / attempts, 6) if attempts else None
    return {"colour": colour, **numbers, "ratio": ratio}


# ---- verdict ------------------------------------------------------------------------------------


def percent(errors: int, attempts: int) -> str:
    return f"{100 * errors / attempts:.2f} %" if attempts else "n/a"


def judge(
    numbers: Mapping[str, Any], min_attempts: int, max_ratio: Fraction, max_text: str
) -> tuple[str, str]:
    """("pass" | "fail", why) for the canary colour's summed numbers."""
    attempts, errors = numbers["attempts"], numbers["errors"]
    if attempts < min_attempts:
        return "fail", (
            f"too few requests: {attempts} attempt(s) on the canary, at least {min_attempts} "
            f"needed, and no evidence is not success (send more traffic, wait longer, or lower "
            f"{MIN_VARIABLE})"
        )
    seen = f"{errors} error attempt(s) of {attempts} ({percent(errors, attempts)})"
    if Fraction(errors, attempts) > max_ratio:
        return "fail", (
            f"{seen}, more than the {max_text} allowed ({RATIO_VARIABLE}={float(max_ratio):g})"
        )
    return "pass", f"{seen}, at most {max_text} allowed"


def service_verdict(
    name: str,
    colour: str,
    per_edge: Mapping[str, Mapping[str, Mapping[str, int]]],
    min_attempts: int,
    max_ratio: Fraction,
) -> dict[str, Any]:
    stable_colour = "green" if colour == "blue" else "blue"
    canary = summed(per_edge, colour)
    stable = summed(per_edge, stable_colour)
    max_text = f"{float(max_ratio) * 100:.2f} %"
    verdict, why = judge(canary, min_attempts, max_ratio, max_text)
    stable_text = (
        f"[stable {stable_colour}: {stable['errors']} error attempt(s) of {stable['attempts']}, "
        f"{percent(stable['errors'], stable['attempts'])}]"
    )
    return {
        **canary,
        "verdict": verdict,
        "reason": f"{name} ({colour}): {why} {stable_text}",
        "stable": stable,
        "edges": {
            edge: {c: {"attempts": n[c]["attempts"], "errors": n[c]["errors"]} for c in COLOURS}
            for edge, n in per_edge.items()
        },
        "min_attempts": min_attempts,
        "max_error_ratio": float(max_ratio),
    }


def invalid(reason: str) -> dict[str, Any]:
    return {
        "ok": False,
        "services": {},
        "message": f"canary verdict: the counts cannot be judged, so the canary fails: {reason}",
    }


def canary_verdict(
    counts_by_edge: Any,
    canary: Any,
    min_attempts: Any = 50,
    max_error_ratio: Any = 0.01,
) -> dict[str, Any]:
    """{ok, services: {service: verdict}, message} of one canary step over every edge's counts.

    Per service: the canary colour's summed attempts, errors, client_errors, answers and ratio,
    `verdict` ("pass" or "fail") and `reason`, the stable colour's numbers (`stable`), the
    attempts and errors per edge and colour (`edges`), and the limits used.
    """
    colours = check_canary(canary)
    minimum = check_min_attempts(min_attempts)
    max_ratio = check_max_error_ratio(max_error_ratio)
    try:
        numbers = edge_numbers(counts_by_edge, list(colours))
    except CountsError as exc:
        return invalid(str(exc))
    services = {
        name: service_verdict(name, colour, numbers[name], minimum, max_ratio)
        for name, colour in colours.items()
    }
    failed = [item["reason"] for item in services.values() if item["verdict"] == "fail"]
    edges = ", ".join(str(edge) for edge in counts_by_edge) or "no edge"
    if failed:
        message = f"canary failed (counted on {edges}): " + "; ".join(failed)
    else:
        reasons = "; ".join(item["reason"] for item in services.values())
        message = f"canary passed (counted on {edges}): {reasons}"
    return {"ok": not failed, "services": services, "message": message}
