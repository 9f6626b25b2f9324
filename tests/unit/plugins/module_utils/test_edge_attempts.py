"""Counting every upstream attempt of the edge's access log: hops, colours, rotation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from ansible_collections.venta.deploy.plugins.module_utils.edge_attempts import (
    EdgeAttemptsError,
    Tally,
    count_attempts,
    current_mark,
    empty_counts,
    parse_hops,
    parse_line,
    port_map,
)

SERVICES = [
    {
        "name": "api-gateway",
        "backends": {
            "blue": ["venta-app1:15002", "venta-app2:15002"],
            "green": ["venta-app1:25002", "venta-app2:25002"],
        },
        "locations": ["/api/"],  # other keys of nginx_edge_services are ignored
    },
    {
        "name": "geolocation",
        "backends": {"blue": ["venta-app1:15005"], "green": ["venta-app1:25005"]},
    },
]
PORTS = port_map(SERVICES)
BLUE = "10.213.7.21:15002"
BLUE2 = "10.213.7.22:15002"
GREEN = "10.213.7.21:25002"
GREEN2 = "10.213.7.22:25002"


def line(backend: Any = None, backend_status: Any = None, status: Any = 200, **extra: Any) -> str:
    entry: dict[str, Any] = {"time": "2025-01-01T12:00:00+00:00", "status": status, **extra}
    if backend is not None:
        entry["backend"] = backend
    if backend_status is not None:
        entry["backend_status"] = backend_status
    return json.dumps(entry) + "\n"


def tally_of(*lines: str) -> Tally:
    tally = Tally(counts=empty_counts(SERVICES))
    for text in lines:
        tally.add_line(text.encode(), PORTS)
    return tally


def numbers(attempts: int, errors: int, answers: int, client_errors: int) -> dict[str, int]:
    return {
        "attempts": attempts,
        "errors": errors,
        "answers": answers,
        "client_errors": client_errors,
    }


ZERO = numbers(0, 0, 0, 0)


# ---- one line -----------------------------------------------------------------------------------

HOPS = [
    pytest.param({"backend": BLUE, "backend_status": "200"}, [("15002", 200)], id="one-hop"),
    pytest.param(
        {"backend": f"{GREEN}, {BLUE}", "backend_status": "502, 200"},
        [("25002", 502), ("15002", 200)],
        id="retried-onto-the-other-colour",
    ),
    pytest.param(
        {"backend": f"{GREEN}, {GREEN2}, {BLUE}", "backend_status": "504, 502, 200"},
        [("25002", 504), ("25002", 502), ("15002", 200)],
        id="three-tries",
    ),
    pytest.param(
        {"backend": f"{GREEN}, {GREEN2} : {BLUE}", "backend_status": "502, 504 : 200"},
        [("25002", 502), ("25002", 504), ("15002", 200)],
        id="groups-after-an-internal-redirect",
    ),
    pytest.param(
        {"backend": f"{GREEN},{BLUE}", "backend_status": "502,200"},
        [("25002", 502), ("15002", 200)],
        id="no-space-after-the-comma",
    ),
    pytest.param(
        {"backend": f"{GREEN}, {BLUE}", "backend_status": "-, 200"},
        [("25002", None), ("15002", 200)],
        id="dash-status",
    ),
    pytest.param(
        {"backend": f"{GREEN}, {BLUE}", "backend_status": "502"},
        [("25002", 502), ("15002", None)],
        id="fewer-statuses-than-hops",
    ),
    pytest.param(
        {"backend": f"{GREEN}, {BLUE}"}, [("25002", None), ("15002", None)], id="no-status"
    ),
    pytest.param({"backend": GREEN, "backend_status": "oops"}, [("25002", None)], id="non-numeric"),
    pytest.param(
        {"backend": GREEN, "backend_status": 502}, [("25002", None)], id="status-not-text"
    ),
    pytest.param({"backend": "", "backend_status": ""}, [], id="empty"),
    pytest.param({"status": 502}, [], id="no-backend-field"),
    pytest.param({"backend": 25002}, [], id="backend-not-text"),
    pytest.param({"backend": "unix:/run/venta-switch/api.sock"}, [(None, None)], id="unix-socket"),
    pytest.param(
        {"backend": "venta_api_gateway", "backend_status": "502"}, [(None, 502)], id="no-live-up"
    ),
    pytest.param({"backend": "[::1]:25002", "backend_status": "200"}, [("25002", 200)], id="ipv6"),
]


@pytest.mark.parametrize(("entry", "expected"), HOPS)
def test_parse_hops(entry: dict[str, Any], expected: list) -> None:
    assert parse_hops(entry) == expected


@pytest.mark.parametrize(
    "raw", [b"not json\n", b"[1, 2]\n", b'"text"\n', b'{"status": 200\n', b"\xff\xfe{}\n"]
)
def test_a_line_that_is_not_a_json_object_is_none(raw: bytes) -> None:
    assert parse_line(raw) is None


# ---- counting per service and colour -------------------------------------------------------------


def test_a_retried_502_counts_against_the_canary_and_the_answer_for_the_stable() -> None:
    tally = tally_of(line(f"{GREEN}, {BLUE}", "502, 200", 200))
    assert tally.counts["api-gateway"]["green"] == numbers(1, 1, 0, 0)
    assert tally.counts["api-gateway"]["blue"] == numbers(1, 0, 1, 0)
    assert tally.counts["geolocation"] == {"blue": ZERO, "green": ZERO}


def test_a_dead_canary_is_visible_even_when_every_client_got_200() -> None:
    tally = tally_of(
        *(line(f"{GREEN}, {BLUE}", "502, 200") for _i in range(2)),
        *(line(BLUE2, "200") for _i in range(8)),
    )
    green = tally.counts["api-gateway"]["green"]
    assert green["attempts"] == green["errors"] == 2
    assert tally.counts["api-gateway"]["blue"] == numbers(10, 0, 10, 0)


def test_every_hop_of_an_internal_redirect_counts() -> None:
    tally = tally_of(line(f"{GREEN}, {GREEN2} : {BLUE}", "502, 504 : 200"))
    assert tally.counts["api-gateway"]["green"] == numbers(2, 2, 0, 0)
    assert tally.counts["api-gateway"]["blue"] == numbers(1, 0, 1, 0)


def test_a_hop_without_status_is_an_error() -> None:
    tally = tally_of(line(f"{GREEN}, {BLUE}", "-, 200"), line(GREEN), line(GREEN, "x"))
    assert tally.counts["api-gateway"]["green"] == numbers(3, 3, 2, 0)


def test_client_errors_go_to_the_colour_of_the_last_hop() -> None:
    tally = tally_of(line(f"{BLUE}, {GREEN}", "502, 503", 503), line(GREEN, "500", 500))
    assert tally.counts["api-gateway"]["blue"] == numbers(1, 1, 0, 0)
    assert tally.counts["api-gateway"]["green"] == numbers(2, 2, 2, 2)


def test_services_are_told_apart_by_port_only() -> None:
    tally = tally_of(line("192.0.2.9:25005", "200"), line("venta-app1:15005", "503", 503))
    assert tally.counts["geolocation"]["green"] == numbers(1, 0, 1, 0)
    assert tally.counts["geolocation"]["blue"] == numbers(1, 1, 1, 1)
    assert tally.counts["api-gateway"] == {"blue": ZERO, "green": ZERO}


def test_garbage_empty_and_unmatched_lines() -> None:
    tally = tally_of(
        "not json at all\n",
        "[1, 2]\n",
        "\n",
        line("10.0.0.9:9999", "200"),
        line("", "", 502),
        line(status=200, uri="/_venta/api-gateway/health"),
        line(BLUE, "200"),
    )
    assert tally.lines_read == 6
    assert tally.lines_skipped == 2
    assert tally.lines_unmatched == 3
    assert tally.unmatched_client_errors == 1
    assert tally.counts["api-gateway"]["blue"] == numbers(1, 0, 1, 0)


@pytest.mark.parametrize(("status", "client_errors"), [(200, 0), (499, 0), (500, 1), ("-", 1)])
def test_final_status(status: Any, client_errors: int) -> None:
    tally = tally_of(line(BLUE, "200", status))
    assert tally.counts["api-gateway"]["blue"]["client_errors"] == client_errors


@pytest.mark.parametrize(
    ("services", "message"),
    [
        ([{"backends": {}}], "services\\[0\\] has no name"),
        ([{"name": "a", "backends": ["x:1"]}], "backends must be a dict"),
        ([{"name": "a", "backends": {"blue": ["venta-app1"]}}], "has no port"),
        (
            [
                {"name": "a", "backends": {"blue": ["h1:15000"]}},
                {"name": "b", "backends": {"green": ["h2:15000"]}},
            ],
            "port 15000 belongs to a blue and b green",
        ),
    ],
)
def test_bad_services_are_refused(services: list, message: str) -> None:
    with pytest.raises(EdgeAttemptsError, match=message):
        port_map(services)


def test_the_same_port_on_two_hosts_of_one_colour_is_fine() -> None:
    assert PORTS["15002"] == ("api-gateway", "blue")
    assert PORTS["25005"] == ("geolocation", "green")


# ---- files: offsets, rotation, truncation --------------------------------------------------------


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "venta_access.json"
    path.write_text(line(BLUE, "200") * 3)
    return path


def append(path: Path, *lines: str) -> None:
    with path.open("a") as out:
        out.write("".join(lines))


def green(result: dict) -> dict[str, int]:
    return result["counts"]["api-gateway"]["green"]


def test_counts_only_what_was_written_after_the_mark(log: Path) -> None:
    mark = current_mark(str(log))
    assert mark == {"offset": log.stat().st_size, "inode": log.stat().st_ino}
    append(log, line(f"{GREEN}, {BLUE}", "502, 200"), line(GREEN, "200"))
    result = count_attempts(str(log), mark, SERVICES)
    assert green(result) == numbers(2, 1, 1, 0)
    assert result["counts"]["api-gateway"]["blue"] == numbers(1, 0, 1, 0)
    assert result["lines_read"] == 2
    assert result["mark"] == {"offset": log.stat().st_size, "inode": log.stat().st_ino}
    assert result["notes"] == []
    assert result["sources"] == [
        {"path": str(log), "inode": mark["inode"], "from": mark["offset"], "to": log.stat().st_size}
    ]


def test_the_whole_file_from_offset_zero(log: Path) -> None:
    result = count_attempts(str(log), {"offset": 0, "inode": log.stat().st_ino}, SERVICES)
    assert result["counts"]["api-gateway"]["blue"]["attempts"] == 3


def test_a_line_still_being_written_is_left_for_the_next_count(log: Path) -> None:
    mark = current_mark(str(log))
    whole = line(GREEN, "503", 503)
    append(log, line(GREEN, "200"), whole[:20])
    first = count_attempts(str(log), mark, SERVICES)
    assert green(first)["attempts"] == 1
    assert first["mark"]["offset"] == log.stat().st_size - 20
    append(log, whole[20:])
    second = count_attempts(str(log), first["mark"], SERVICES)
    assert green(second) == numbers(1, 1, 1, 1)
    assert second["lines_skipped"] == 0


def test_rotation_reads_the_rest_of_dot_1_then_the_new_file(log: Path) -> None:
    mark = current_mark(str(log))
    append(log, line(GREEN, "502", 502))
    rotated = log.with_name(log.name + ".1")
    log.rename(rotated)
    log.write_text(line(GREEN, "200") + line(f"{GREEN}, {BLUE}", "504, 200"))
    result = count_attempts(str(log), mark, SERVICES)
    assert green(result) == numbers(3, 2, 2, 1)
    assert [source["path"] for source in result["sources"]] == [str(rotated), str(log)]
    assert result["sources"][1]["from"] == 0
    assert "was rotated" in result["notes"][0]
    assert result["mark"] == {"offset": log.stat().st_size, "inode": log.stat().st_ino}


def test_rotated_twice_the_marked_file_is_not_dot_1_any_more(log: Path) -> None:
    mark = current_mark(str(log))
    append(log, line(GREEN, "502", 502))
    log.rename(log.with_name(log.name + ".2"))  # kept, so its inode is not reused
    log.with_name(log.name + ".1").write_text(line(GREEN, "502") * 50)  # another file
    log.write_text(line(GREEN, "200"))
    result = count_attempts(str(log), mark, SERVICES)
    assert green(result) == numbers(1, 0, 1, 0)
    assert [source["path"] for source in result["sources"]] == [str(log)]
    assert "not counted" in result["notes"][0]


def test_truncation_reads_from_zero(log: Path) -> None:
    mark = current_mark(str(log))
    inode = log.stat().st_ino
    with log.open("r+") as handle:
        handle.truncate(0)
    append(log, line(GREEN, "500", 500))
    assert log.stat().st_ino == inode
    result = count_attempts(str(log), mark, SERVICES)
    assert green(result) == numbers(1, 1, 1, 1)
    assert "truncated" in result["notes"][0]


def test_a_missing_log_counts_nothing_and_marks_offset_zero(tmp_path: Path) -> None:
    path = tmp_path / "none.json"
    mark = current_mark(str(path))
    assert mark == {"offset": 0, "inode": None}
    result = count_attempts(str(path), mark, SERVICES)
    assert result["counts"] == empty_counts(SERVICES)
    assert result["lines_read"] == 0
    assert result["notes"] == [f"{path} does not exist"]
    path.write_text(line(GREEN, "200"))
    later = count_attempts(str(path), mark, SERVICES)
    assert green(later)["attempts"] == 1


@pytest.mark.parametrize(
    "mark", [{"offset": -1, "inode": 1}, {"offset": "12", "inode": 1}, {"offset": 0, "inode": "x"}]
)
def test_a_bad_mark_is_refused(log: Path, mark: dict) -> None:
    with pytest.raises(EdgeAttemptsError, match="mark"):
        count_attempts(str(log), mark, SERVICES)


def test_a_big_log_is_read_line_by_line(log: Path) -> None:
    mark = current_mark(str(log))
    append(log, *(line(f"{GREEN}, {BLUE}", "502, 200") for _i in range(20000)))
    result = count_attempts(str(log), mark, SERVICES)
    assert green(result) == numbers(20000, 20000, 0, 0)
    assert log.stat().st_size == result["mark"]["offset"]
