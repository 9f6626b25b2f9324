"""The fine-grained prober of the fault cases: one HTTPS request every 20 ms over one keep-alive
connection to the VIP, reconnecting after an error, every request recorded with its start time.
From the samples: how many failed, and for each run of failures the seconds from the last good
request before it to the first good one after it (what a client saw as an outage)."""

from __future__ import annotations

import http.client
import ssl
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Sample:
    """One request: start (time.monotonic()), good (2xx), latency in ms, status or error."""

    start: float
    ok: bool
    ms: float
    detail: str


@dataclass
class Prober:
    """Requests `paths` in turn on one keep-alive connection to host:port (TLS verified against
    `ca`), one every `interval` seconds; an error closes the connection and the next request opens
    a new one. run() until stop is set (in a thread)."""

    host: str
    port: int
    ca: str
    paths: list[str]
    interval: float = 0.02
    timeout: float = 2.0
    samples: list[Sample] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def _connection(self) -> http.client.HTTPSConnection:
        context = ssl.create_default_context(cafile=self.ca)
        return http.client.HTTPSConnection(
            self.host, self.port, timeout=self.timeout, context=context
        )

    def _one(self, conn: http.client.HTTPSConnection, path: str) -> tuple[bool, str]:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return 200 <= response.status < 300, str(response.status)

    def run(self) -> None:
        conn = self._connection()
        number = 0
        while not self.stop.is_set():
            path = self.paths[number % len(self.paths)]
            number += 1
            start = time.monotonic()
            try:
                ok, detail = self._one(conn, path)
            except (OSError, http.client.HTTPException) as exc:
                ok, detail = False, type(exc).__name__
                conn.close()
                conn = self._connection()
            took = time.monotonic() - start
            self.samples.append(Sample(start, ok, round(took * 1000, 2), detail))
            self.stop.wait(max(0.0, self.interval - took))
        conn.close()


def outages(samples: list[Sample]) -> list[dict[str, Any]]:
    """Each run of failed requests: when it began (start of its first failure), how many failed,
    which errors, and the outage: from the start of the last good request before it (or of its
    first failure) to the start of the first good one after it (None when none came)."""
    episodes: list[dict[str, Any]] = []
    last_good: float | None = None
    current: dict[str, Any] | None = None
    for sample in samples:
        if not sample.ok:
            if current is None:
                current = {
                    "from": last_good if last_good is not None else sample.start,
                    "first_failure": sample.start,
                    "failed": 0,
                    "errors": set(),
                }
            current["failed"] += 1
            current["errors"].add(sample.detail)
            continue
        if current is not None:
            episodes.append(_episode(current, sample.start))
            current = None
        last_good = sample.start
    if current is not None:
        episodes.append(_episode(current, None))
    return episodes


def _episode(current: dict[str, Any], recovered: float | None) -> dict[str, Any]:
    return {
        "at": current["first_failure"],
        "failed": current["failed"],
        "errors": sorted(current["errors"]),
        "outage_s": None if recovered is None else round(recovered - current["from"], 3),
    }


def probe_summary(samples: list[Sample], origin: float) -> dict[str, Any]:
    """The prober's numbers; times relative to `origin` (the load session's start).
    `seconds_with_errors` adds up the outages (an outage that never ended counts to the last
    sample); `error_seconds` counts the distinct whole seconds (since origin) with a failure."""
    episodes = outages(samples)
    end = samples[-1].start if samples else origin
    for episode in episodes:
        if episode["outage_s"] is None:
            episode["unrecovered"] = True
            episode["outage_s"] = round(end - episode["at"], 3)
        episode["at"] = round(episode["at"] - origin, 3)
    good = [s.ms for s in samples if s.ok]
    return {
        "requests": len(samples),
        "failed": len([s for s in samples if not s.ok]),
        "outages": episodes,
        "seconds_with_errors": round(sum(e["outage_s"] for e in episodes), 3),
        "max_outage_s": max((e["outage_s"] for e in episodes), default=0.0),
        "error_seconds": len({int(s.start - origin) for s in samples if not s.ok}),
        "p50_ms": round(statistics.median(good), 2) if good else None,
        "max_ms": max(good) if good else None,
    }
