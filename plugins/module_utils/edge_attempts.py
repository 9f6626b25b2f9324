# Copyright: venta.deploy developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Count every upstream attempt of the edge's JSON access log, per service and colour.

The client-facing nginx logs, per request, the switch layer's view of the backends:

    "backend":        "10.213.7.21:25000, 10.213.7.22:15000"   ($upstream_addr of the switch layer)
    "backend_status": "502, 200"                               ($upstream_status, same hops)
    "status":         200                                      (what the client got)

nginx separates the attempts of one upstream group with ", " and the groups of an internal
redirect with " : ". The switch layer retries connect errors, timeouts, 502 and 504 on the other
servers, so crediting a request to its last hop only hides a failing canary: here every hop
counts. A hop's service and colour are found by its port (ports are unique per service and
colour; the log has addresses, the backends host names, so only the port is compared).

A mark {"offset": bytes, "inode": inode} is where a count starts. When the file's inode is not
the mark's, logrotate moved the marked file to `<path>.1` (the role's logrotate uses
delaycompress): its rest is read from the offset, then the new file from 0. A file shorter than
the offset with the same inode was truncated and is read from 0. (A file system may give a new
file the inode of one just deleted; the role's logrotate keeps the rotated files, so the marked
file is still `<path>.1` during a canary step.)
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

COLOURS = ("blue", "green")
ROTATED_SUFFIX = ".1"
HOP_SEPARATOR = re.compile(r"\s*,\s*|\s+:\s+")
COUNT_KEYS = ("attempts", "errors", "client_errors", "answers")


class EdgeAttemptsError(Exception):
    """Bad input (services, mark); the message names it."""


# ---- one line -----------------------------------------------------------------------------------


def split_hops(value: Any) -> list[str]:
    """The items of an nginx multi-value variable ('a, b : c'), in order; '' or None: none."""
    if not isinstance(value, str) or not value.strip():
        return []
    return [item.strip() for item in HOP_SEPARATOR.split(value.strip())]


def port_of(address: str) -> str | None:
    """The port of 'host:port' / '[v6]:port'; None for a unix socket or an upstream name."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        return None
    return port


def status_of(value: str | None) -> int | None:
    """A hop's status as an int; None for '-', empty, missing or non-numeric."""
    if value is None or not value.isdigit():
        return None
    return int(value)


def parse_hops(entry: Mapping[str, Any]) -> list[tuple[str | None, int | None]]:
    """The (port, status) of every attempt of one log entry; None when missing or malformed.

    Statuses pair with addresses by position; a hop without a status (shorter list, '-', a
    malformed value) gets None.
    """
    addresses = split_hops(entry.get("backend"))
    statuses = split_hops(entry.get("backend_status"))
    hops = []
    for index, address in enumerate(addresses):
        status = statuses[index] if index < len(statuses) else None
        hops.append((port_of(address), status_of(status)))
    return hops


def client_status(entry: Mapping[str, Any]) -> int | None:
    value = entry.get("status")
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    return status_of(str(value)) if value is not None else None


def parse_line(raw: bytes | str) -> dict[str, Any] | None:
    """One log line as a JSON object; None when it is not one."""
    try:
        entry = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return entry if isinstance(entry, dict) else None


def is_error(status: int | None) -> bool:
    """An attempt failed: 5xx, or no (numeric) status at all."""
    return status is None or status >= 500


# ---- services -----------------------------------------------------------------------------------


def port_map(services: Sequence[Mapping[str, Any]]) -> dict[str, tuple[str, str]]:
    """{port: (service, colour)} from [{name, backends: {blue: [h:p], green: [h:p]}}]."""
    ports: dict[str, tuple[str, str]] = {}
    for index, service in enumerate(services):
        name = service.get("name") if isinstance(service, Mapping) else None
        if not isinstance(name, str) or not name:
            raise EdgeAttemptsError(f"services[{index}] has no name")
        backends = service.get("backends") or {}
        if not isinstance(backends, Mapping):
            raise EdgeAttemptsError(f"services[{index}] ({name}): backends must be a dict")
        for colour in COLOURS:
            for backend in backends.get(colour) or []:
                add_port(ports, str(backend), name, colour)
    return ports


def add_port(ports: dict[str, tuple[str, str]], backend: str, name: str, colour: str) -> None:
    port = port_of(backend)
    if port is None:
        raise EdgeAttemptsError(f"{name}: backend {backend!r} of {colour} has no port")
    owner = ports.get(port)
    if owner is not None and owner != (name, colour):
        raise EdgeAttemptsError(
            f"port {port} belongs to {owner[0]} {owner[1]} and {name} {colour}: ports must be "
            "unique per service and colour to tell the attempts apart"
        )
    ports[port] = (name, colour)


def empty_counts(services: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, int]]]:
    return {
        str(service["name"]): {colour: dict.fromkeys(COUNT_KEYS, 0) for colour in COLOURS}
        for service in services
    }


# ---- counting -----------------------------------------------------------------------------------


@dataclass
class Tally:
    """Counts of one read, per service and colour, and of the lines seen."""

    counts: dict[str, dict[str, dict[str, int]]]
    lines_read: int = 0
    lines_skipped: int = 0
    lines_unmatched: int = 0
    unmatched_client_errors: int = 0
    sources: list[dict[str, Any]] = field(default_factory=list)

    def add_line(self, raw: bytes, ports: Mapping[str, tuple[str, str]]) -> None:
        if not raw.strip():
            return
        self.lines_read += 1
        entry = parse_line(raw)
        if entry is None:
            self.lines_skipped += 1
            return
        self.add_entry(entry, ports)

    def add_entry(self, entry: Mapping[str, Any], ports: Mapping[str, tuple[str, str]]) -> None:
        last = None
        for port, status in parse_hops(entry):
            owner = ports.get(port) if port is not None else None
            if owner is None:
                continue
            slot = self.counts[owner[0]][owner[1]]
            slot["attempts"] += 1
            slot["errors"] += int(is_error(status))
            last = owner
        final = client_status(entry)
        if last is None:
            self.lines_unmatched += 1
            self.unmatched_client_errors += int(is_error(final))
            return
        slot = self.counts[last[0]][last[1]]
        slot["answers"] += 1
        slot["client_errors"] += int(is_error(final))

    def as_dict(self) -> dict[str, Any]:
        return {
            "counts": self.counts,
            "lines_read": self.lines_read,
            "lines_skipped": self.lines_skipped,
            "lines_unmatched": self.lines_unmatched,
            "unmatched_client_errors": self.unmatched_client_errors,
            "sources": self.sources,
        }


def complete_lines(handle: BinaryIO, start: int, closed: bool) -> Iterator[tuple[bytes, int]]:
    """(line, offset after it) of every line from `start`.

    A last line without a newline is still being written and is left for the next count, unless
    the file is `closed` (rotated: nothing is written to it any more).
    """
    handle.seek(start)
    position = start
    for raw in handle:
        if not raw.endswith(b"\n") and not closed:
            return
        position += len(raw)
        yield raw, position


@dataclass(frozen=True)
class Segment:
    """A part of a file to read: `path` from byte `start` to its end."""

    path: str
    start: int
    inode: int | None
    closed: bool = False  # a rotated file: its last line counts even without a newline


def current_mark(path: str) -> dict[str, int | None]:
    """The file's size and inode, the mark of a count that starts now; offset 0 when missing."""
    try:
        stat = Path(path).stat()
    except FileNotFoundError:
        return {"offset": 0, "inode": None}
    return {"offset": stat.st_size, "inode": stat.st_ino}


def check_mark(mark: Mapping[str, Any]) -> tuple[int, int | None]:
    offset, inode = mark.get("offset"), mark.get("inode")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise EdgeAttemptsError(f"mark.offset must be an integer >= 0, got {offset!r}")
    if inode is not None and (isinstance(inode, bool) or not isinstance(inode, int)):
        raise EdgeAttemptsError(f"mark.inode must be an integer or null, got {inode!r}")
    return offset, inode


def plan_segments(path: str, mark: Mapping[str, Any]) -> tuple[list[Segment], list[str]]:
    """What to read since `mark`, with notes on rotation and truncation."""
    offset, inode = check_mark(mark)
    now = current_mark(path)
    notes: list[str] = []
    segments: list[Segment] = []
    if inode is not None and now["inode"] != inode:
        rotated = path + ROTATED_SUFFIX
        if current_mark(rotated)["inode"] == inode:
            notes.append(f"{path} was rotated: read {rotated} from byte {offset}")
            segments.append(Segment(rotated, offset, inode, closed=True))
        else:
            notes.append(
                f"{path} was rotated and the marked file is not {rotated} any more: the lines "
                "written to it since the mark are not counted"
            )
        offset = 0
    if now["inode"] is None:
        notes.append(f"{path} does not exist")
        return segments, notes
    if now["offset"] < offset:
        notes.append(f"{path} was truncated ({now['offset']} < {offset} bytes): read from 0")
        offset = 0
    segments.append(Segment(path, offset, now["inode"]))
    return segments, notes


def read_segment(
    segment: Segment, tally: Tally, ports: Mapping[str, tuple[str, str]]
) -> dict[str, Any] | None:
    """Count the lines of a segment; what was read ({path, inode, from, to}), None if missing."""
    try:
        handle = Path(segment.path).open("rb")  # noqa: SIM115 - a missing file is normal
    except FileNotFoundError:
        return None
    position = segment.start
    with handle:
        inode = os.fstat(handle.fileno()).st_ino  # the file read, should it have moved meanwhile
        for raw, after in complete_lines(handle, segment.start, segment.closed):
            tally.add_line(raw, ports)
            position = after
    source = {"path": segment.path, "inode": inode, "from": segment.start, "to": position}
    tally.sources.append(source)
    return source


def count_attempts(
    path: str, mark: Mapping[str, Any], services: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """Count every attempt since `mark`, per service and colour.

    Returns counts ({service: {colour: {attempts, errors, client_errors, answers}}}), the lines
    read, skipped (not JSON) and unmatched (no hop of the given services), the sources read, the
    notes (rotation, truncation) and the mark where this count stopped (the current file's
    inode and the offset after its last complete line), so the next count can start there.
    """
    ports = port_map(services)
    tally = Tally(counts=empty_counts(services))
    segments, notes = plan_segments(path, mark)
    end_mark = current_mark(path)
    for segment in segments:
        source = read_segment(segment, tally, ports)
        if source is not None and segment.path == path:
            end_mark = {"offset": source["to"], "inode": source["inode"]}
    return {**tally.as_dict(), "notes": notes, "mark": end_mark}
