"""The request of a switch: module parameters -> SwitchBatch; errors name the option and item."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from ansible_collections.venta.deploy.plugins.module_utils.switch_request import (
    SwitchError,
    parse_backends,
    parse_batch,
    parse_health_checks,
    parse_weights,
)
from switch_fakes import GREEN, Edge, backends, item, params


@pytest.fixture
def edge(tmp_path: Path) -> Edge:
    return Edge(tmp_path)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"blue": 100}, {"blue": 100, "green": 0}),
        ({"green": 100, "blue": None}, {"blue": 0, "green": 100}),
        ({"blue": "90", "green": "10"}, {"blue": 90, "green": 10}),
        ({"green": 50, "blue": 50}, {"blue": 50, "green": 50}),
    ],
)
def test_weights_are_whole_numbers_of_both_colours(raw: dict, expected: dict) -> None:
    assert parse_weights(raw) == expected
    assert list(parse_weights(raw)) == ["blue", "green"]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"blue": 50, "green": 60}, r"weights must add up to 100 .*blue 50 \+ green 60 = 110"),
        (None, "weights must add up to 100"),
        ({"blue": -10, "green": 110}, "weights.blue must be between 0 and 100, got -10"),
        ({"blue": "most", "green": 0}, "weights.blue must be a whole number 0..100, got 'most'"),
        ({"red": 100}, r"weights: unknown colour\(s\) \['red'\]; use blue and green"),
    ],
)
def test_bad_weights_name_the_colour(raw: dict | None, message: str) -> None:
    with pytest.raises(SwitchError, match=message):
        parse_weights(raw)


def test_backends_not_given_are_none_so_the_recorded_ones_are_kept() -> None:
    assert parse_backends(None) == {"blue": None, "green": None}
    assert parse_backends({"green": ["a:1", "[::1]:2"]}) == {
        "blue": None,
        "green": ["a:1", "[::1]:2"],
    }
    assert parse_backends({"blue": [], "green": None}) == {"blue": [], "green": None}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"blue": ["app1"]}, r"backends.blue: \['app1'\] are not host:port entries"),
        ({"green": ["a:1", "a:1"]}, r"backends.green lists a backend twice: \['a:1', 'a:1'\]"),
        ({"blue": ["a:1"], "green": ["a:1"]}, r"backends: \['a:1'\] are in both colours"),
    ],
)
def test_bad_backends_name_the_colour(raw: dict, message: str) -> None:
    with pytest.raises(SwitchError, match=message):
        parse_backends(raw)


def test_health_checks_default_to_health_of_every_backend() -> None:
    (check,) = parse_health_checks(None)
    assert (check.path, check.url, check.scheme) == ("/health", None, "http")
    assert check.expectation.status_codes == (200,)
    url, path = parse_health_checks(
        [
            {"url": "https://gw.example/ready", "colour": "green", "status_code": [200, 204]},
            {"path": "/ready", "json_match": {"status": "ok"}, "colour_header": "X-Venta-Colour"},
        ]
    )
    assert (url.url, url.colour, url.expectation.status_codes) == (
        "https://gw.example/ready",
        "green",
        (200, 204),
    )
    assert (path.path, dict(path.expectation.json_match), path.colour_header) == (
        "/ready",
        {"status": "ok"},
        "X-Venta-Colour",
    )


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ([], "health_checks is empty: the switch never sends traffic to unchecked backends"),
        ([{"path": "/h", "url": "http://a:1/"}], r"health_checks\[0\]: give either url"),
        ([{}], r"health_checks\[0\]: give either url"),
        ([{"path": "/h"}, {"url": "http://a:1/"}], r"health_checks\[1\]: a url check needs colour"),
        ([{"path": "health"}], r"health_checks\[0\].path must start with /, got 'health'"),
        ([{"url": "ftp://a/", "colour": "blue"}], r"health_checks\[0\].url: 'ftp://a/' is not"),
    ],
)
def test_bad_health_checks_name_the_check(raw: list, message: str) -> None:
    with pytest.raises(SwitchError, match=message):
        parse_health_checks(raw)


def test_a_batch_of_one_and_the_shared_settings(edge: Edge) -> None:
    batch = parse_batch(params(edge, [item("search")], action="release", run_id="r-1"))
    (request,) = batch.requests
    shared = batch.shared
    assert request.service == "search"
    assert request.weights == GREEN
    assert request.backends == backends("search")
    assert request.versions == {}
    assert request.upstream_file == str(edge.upstream("search"))
    assert request.verify.url == "https://127.0.0.1/_venta/search/health"
    assert (request.verify.requests, request.verify.successes) == (10, 3)
    assert (shared.action, shared.run_id) == ("release", "r-1")
    assert shared.lock_file == f"{edge.state_file}.lock"
    assert shared.intent_file == str(edge.intent_file)
    assert shared.test_command == ("/usr/sbin/nginx", "-t")
    assert shared.gate.successes == 2


def test_an_empty_batch_only_recovers(edge: Edge) -> None:
    batch = parse_batch(params(edge, []))
    assert batch.requests == ()
    assert batch.shared.verify_url("search") == "https://127.0.0.1/_venta/search/health"


def test_items_inherit_the_top_level_checks_and_headers_and_may_override_them(edge: Edge) -> None:
    services = [
        item("api-gateway"),
        item(
            "geolocation",
            health_checks=[{"url": "http://app1:25001/ready", "colour": "green"}],
            verify_url="https://127.0.0.1/_venta/geolocation/ready",
            verify_headers={"Host": "geo.example"},
        ),
    ]
    batch = parse_batch(
        params(
            edge,
            services,
            health_checks=[{"path": "/ready"}],
            verify_headers={"Host": "edge.example"},
        )
    )
    gateway, geolocation = batch.requests
    assert [c.path for c in gateway.health_checks] == ["/ready"]
    assert dict(gateway.verify.headers) == {"Host": "edge.example"}
    assert gateway.verify.url == "https://127.0.0.1/_venta/api-gateway/health"
    assert [c.url for c in geolocation.health_checks] == ["http://app1:25001/ready"]
    assert dict(geolocation.verify.headers) == {"Host": "geo.example"}
    assert geolocation.verify.url == "https://127.0.0.1/_venta/geolocation/ready"
    assert dict(batch.shared.verify.headers) == {"Host": "edge.example"}


def test_without_a_pattern_only_an_items_own_verify_url_is_verified(edge: Edge) -> None:
    services = [item("search"), item("geolocation", verify_url="http://127.0.0.1:8080/geo")]
    batch = parse_batch(params(edge, services, verify_url_pattern=None))
    assert [r.verify.url for r in batch.requests] == [None, "http://127.0.0.1:8080/geo"]
    assert batch.shared.verify_url("search") is None


# (services, top-level overrides, the error): every error names the item and the option.
BAD_BATCHES: list[tuple[list[Any] | None, dict[str, Any], str]] = [
    (None, {}, r"^services is required: a list of \{service, weights, ...\} items"),
    (["search"], {}, r"^services\[0\] must be a dict with service and weights, got 'search'"),
    (
        [item("api-gateway"), item("geolocation", {"blue": 50, "green": 60})],
        {},
        r"^services\[1\] \(geolocation\): weights must add up to 100",
    ),
    (
        [item("api-gateway"), {**item("geolocation"), "weights": None}],
        {},
        r"^services\[1\] \(geolocation\): weights is required",
    ),
    (
        [item("search", {"red": 100})],
        {},
        r"^services\[0\] \(search\): weights: unknown colour",
    ),
    (
        [{**item("search"), "service": "API"}],
        {},
        r"^services\[0\] \(API\): service 'API' is not a service name",
    ),
    (
        [item("search", backends={"blue": ["app1"], "green": None})],
        {},
        r"^services\[0\] \(search\): backends.blue: \['app1'\] are not host:port",
    ),
    (
        [item("search", health_checks=[{"path": "ready"}])],
        {},
        r"^services\[0\] \(search\): health_checks\[0\].path must start with /",
    ),
    (
        [item("search", health_checks=[])],
        {},
        r"^services\[0\] \(search\): health_checks is empty",
    ),
    ([item("search", verify_url="ftp://x/")], {}, r"^services\[0\] \(search\): verify_url: "),
    (
        [item("search", colour="blue")],
        {},
        r"^services\[0\] \(search\): unknown option\(s\) \['colour'\]; an item takes service,",
    ),
    (
        [item("search"), item("api-gateway"), item("search")],
        {},
        r"^services\[2\] \(search\): service search is listed twice \(also services\[0\]\)",
    ),
    ([item("search")], {"health_checks": [{"path": "ready"}]}, r"^health_checks\[0\].path must"),
    ([item("search")], {"health_checks": []}, r"^health_checks is empty"),
    ([], {"verify_successes": 30}, "^verify_successes cannot exceed verify_requests"),
    ([], {"verify_requests": 0}, "^verify_requests must be at least 1"),
    ([], {"verify_successes": 0}, "^verify_successes must be at least 1"),
    ([], {"verify_interval": -1.0}, "^verify_interval must not be negative"),
    ([], {"health_successes": 0}, "^health_successes must be at least 1"),
    ([], {"health_interval": -0.5}, "^health_interval must not be negative"),
    ([], {"health_timeout": 0.0}, "^health_timeout must be a positive number of seconds"),
    ([], {"test_command": []}, "^test_command and reload_command must not be empty"),
    ([], {"reload_command": []}, "^test_command and reload_command must not be empty"),
    (
        [],
        {"verify_url_pattern": "https://127.0.0.1/health"},
        r"^verify_url_pattern 'https://127.0.0.1/health' must contain \{service\}",
    ),
    ([], {"verify_url_pattern": "ftp://x/{service}"}, "^verify_url_pattern: 'ftp://x/service'"),
    ([], {"action": "deploy"}, "^action must be one of release, rollback, abort, reconcile"),
    ([], {"fail_timeout": "soon"}, "nginx_edge_upstream_fail_timeout"),
    ([], {"max_fails": -1}, "^max_fails must not be negative"),
    ([], {"keepalive": 0}, "^keepalive must be at least 1"),
    ([], {"request_timeout": -1.0}, "^request_timeout must be a positive number"),
    ([], {"client_key": "/k.pem"}, "^client_key needs client_cert"),
]


@pytest.mark.parametrize(("services", "overrides", "message"), BAD_BATCHES)
def test_bad_batches_name_the_item_and_the_option(
    edge: Edge, services: list | None, overrides: dict, message: str
) -> None:
    with pytest.raises(SwitchError, match=message):
        parse_batch(params(edge, services, **overrides))


def test_a_recorded_item_is_copied_as_it_is(edge: Edge) -> None:
    copied = {"previous": "blue", "last_action": {"kind": "rollback", "run_id": "r", "at": "t"}}
    batch = parse_batch(params(edge, [item("search", recorded=copied)]))
    assert batch.requests[0].recorded == copied
    assert parse_batch(params(edge, [item("search")])).requests[0].recorded is None


@pytest.mark.parametrize(
    ("recorded", "message"),
    [
        ({"previous": "red", "last_action": None}, "recorded.previous must be blue, green or null"),
        ({"previous": None, "last_action": {"kind": "oops"}}, "recorded.last_action must be"),
        ({"previous": None, "extra": 1}, "recorded must be {previous, last_action}"),
    ],
)
def test_a_bad_recorded_item_names_the_option(edge: Edge, recorded: dict, message: str) -> None:
    with pytest.raises(SwitchError, match=r"services\[0\] \(search\): " + re.escape(message)):
        parse_batch(params(edge, [item("search", recorded=recorded)]))
