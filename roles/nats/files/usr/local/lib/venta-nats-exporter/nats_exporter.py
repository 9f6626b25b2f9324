"""A Prometheus exporter for nats-server's monitoring port (/varz, /routez, /jsz).

Installed by venta.deploy.nats on every member, next to the server it reads; Prometheus scrapes it
on a private address. It is ours because no NATS exporter can be had here: Debian packages none,
and the Go module proxy refuses prometheus-nats-exporter, nats-surveyor and json_exporter. The
metric names and labels are prometheus-nats-exporter's, so its dashboards and alerts carry over:

- `gnatsd_varz_<field>{server_id}` for every numeric field of /varz (connections, in_msgs, mem,
  cpu, slow_consumers, routes, ...), and `gnatsd_varz_<field>{server_id,value} 1` for
  server_name and version;
- `gnatsd_routez_<field>{server_id}` for every numeric field of /routez (num_routes);
- from /jsz?streams=true: `jetstream_server_{jetstream_disabled,total_streams,total_consumers,
  total_messages,total_message_bytes,max_memory,max_storage}` with the labels server_id,
  server_name, cluster, domain, meta_leader (empty: no meta leader) and is_meta_leader, and
  `jetstream_stream_{total_messages,total_bytes,first_seq,last_seq,consumer_count}` with those plus
  account, account_id, stream_name, stream_leader and is_stream_leader.

One metric of its own: `venta_nats_monitor_up{endpoint}` is 1 when the endpoint answered this
scrape and 0 when it did not (the series of that endpoint are then absent, as with the Go
exporter), so "the server is down" is told apart from "the exporter is down" (`up`).

Every scrape reads the server afresh (no cache, no background polling).

Usage: nats_exporter.py --monitor-url http://127.0.0.1:8222 --listen 10.0.2.11:7777 [--timeout 3]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily, Metric

# The endpoints read at each scrape, with the query the Go exporter uses for -jsz=streams.
ENDPOINTS = {"varz": "/varz", "routez": "/routez", "jsz": "/jsz?streams=true"}
# String fields of /varz and /routez exported as a label gauge (value=...), as the Go exporter does.
LABEL_FIELDS = frozenset({"server_name", "version"})
SERVER_LABELS = ["server_id", "server_name", "cluster", "domain", "meta_leader", "is_meta_leader"]
STREAM_LABELS = [
    *SERVER_LABELS,
    "account",
    "account_id",
    "stream_name",
    "stream_leader",
    "is_stream_leader",
]
# (metric name suffix, help, how to read it from /jsz)
JSZ_SERVER_METRICS: list[tuple[str, str, Callable[[Mapping[str, Any]], Any]]] = [
    ("jetstream_disabled", "JetStream disabled or not", lambda j: bool(j.get("disabled"))),
    ("total_streams", "Total number of streams in JetStream", lambda j: j.get("streams", 0)),
    ("total_consumers", "Total number of consumers in JetStream", lambda j: j.get("consumers", 0)),
    (
        "total_messages",
        "Total number of stored messages in JetStream",
        lambda j: j.get("messages", 0),
    ),
    (
        "total_message_bytes",
        "Total number of bytes stored in JetStream",
        lambda j: j.get("bytes", 0),
    ),
    ("max_memory", "JetStream Max Memory", lambda j: (j.get("config") or {}).get("max_memory", 0)),
    (
        "max_storage",
        "JetStream Max Storage",
        lambda j: (j.get("config") or {}).get("max_storage", 0),
    ),
]
JSZ_STREAM_METRICS = [
    ("total_messages", "Total number of messages from a stream", "messages"),
    ("total_bytes", "Total stored bytes from a stream", "bytes"),
    ("first_seq", "First sequence from a stream", "first_seq"),
    ("last_seq", "Last sequence from a stream", "last_seq"),
    ("consumer_count", "Total number of consumers from a stream", "consumer_count"),
]
_METRIC_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

Fetch = Callable[[str], Any]


class MonitorError(Exception):
    """The monitoring endpoint did not answer with JSON."""


def http_fetch(monitor_url: str, timeout: float) -> Fetch:
    """A fetcher of `<monitor_url><path>` as JSON, raising MonitorError on any failure."""

    def fetch(path: str) -> Any:
        url = monitor_url.rstrip("/") + path
        try:
            with urllib.request.urlopen(url, timeout=timeout) as answer:
                return json.load(answer)
        except (OSError, ValueError, urllib.error.URLError) as exc:
            raise MonitorError(f"{url}: {exc}") from exc

    return fetch


def is_number(value: Any) -> bool:
    """JSON numbers, not booleans (the Go exporter sees only float64 as a metric)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def generic_families(subsystem: str, answer: Mapping[str, Any], server_id: str) -> Iterator[Metric]:
    """gnatsd_<subsystem>_<field> for the numeric and label fields of a flat endpoint."""
    for key in sorted(answer):
        value = answer[key]
        name = f"gnatsd_{subsystem}_{key}"
        if not _METRIC_NAME.match(name):
            continue
        if is_number(value):
            family = GaugeMetricFamily(name, key, labels=["server_id"])
            family.add_metric([server_id], float(value))
            yield family
        elif key in LABEL_FIELDS and isinstance(value, str):
            family = GaugeMetricFamily(name, key, labels=["server_id", "value"])
            family.add_metric([server_id, value], 1.0)
            yield family


def leader_flag(leader: str, server_name: str) -> str:
    return "true" if leader == server_name else "false"


def jsz_families(jsz: Mapping[str, Any], server_id: str, server_name: str) -> Iterator[Metric]:
    """jetstream_server_* and jetstream_stream_* from /jsz?streams=true."""
    meta = jsz.get("meta_cluster")
    if meta is None:  # a standalone server leads itself
        cluster, meta_leader, is_meta_leader = "", "", "true"
    else:
        cluster = meta.get("name", "")
        meta_leader = meta.get("leader", "")
        is_meta_leader = leader_flag(meta_leader, server_name)
    domain = (jsz.get("config") or {}).get("domain", "")
    server_values = [server_id, server_name, cluster, domain, meta_leader, is_meta_leader]
    for suffix, help_text, read in JSZ_SERVER_METRICS:
        family = GaugeMetricFamily(f"jetstream_server_{suffix}", help_text, labels=SERVER_LABELS)
        family.add_metric(server_values, float(read(jsz)))
        yield family

    streams = []
    for account in jsz.get("account_details") or []:
        for stream in account.get("stream_detail") or []:
            stream_leader = (stream.get("cluster") or {}).get("leader")
            is_stream_leader = (
                "true" if stream_leader is None else leader_flag(stream_leader, server_name)
            )
            labels = [
                *server_values,
                account.get("name", ""),
                account.get("id", ""),
                stream.get("name", ""),
                stream_leader or "",
                is_stream_leader,
            ]
            streams.append((labels, stream.get("state") or {}))
    for suffix, help_text, field in JSZ_STREAM_METRICS:
        family = GaugeMetricFamily(f"jetstream_stream_{suffix}", help_text, labels=STREAM_LABELS)
        for labels, state in streams:
            family.add_metric(labels, float(state.get(field, 0)))
        yield family


class NatsCollector:
    """Reads the endpoints at each scrape; an endpoint that fails only drops its own series."""

    def __init__(self, fetch: Fetch) -> None:
        self.fetch = fetch

    def describe(self) -> list[Metric]:
        return []  # the metric names depend on the server's answer: no description up front

    def collect(self) -> Iterator[Metric]:
        answers: dict[str, Any] = {}
        for endpoint, path in ENDPOINTS.items():
            try:
                answer = self.fetch(path)
            except MonitorError:
                continue
            if isinstance(answer, dict):
                answers[endpoint] = answer
        up = GaugeMetricFamily(
            "venta_nats_monitor_up",
            "1 if the nats-server monitoring endpoint answered this scrape, else 0",
            labels=["endpoint"],
        )
        for endpoint in ENDPOINTS:
            up.add_metric([endpoint], 1.0 if endpoint in answers else 0.0)
        yield up

        varz = answers.get("varz")
        if varz is None:
            return  # without /varz there is no server id or name to label anything with
        server_id = str(varz.get("server_id", ""))
        server_name = str(varz.get("server_name", ""))
        yield from generic_families("varz", varz, server_id)
        if "routez" in answers:
            yield from generic_families("routez", answers["routez"], server_id)
        if "jsz" in answers:
            yield from jsz_families(answers["jsz"], server_id, server_name)


def registry_for(fetch: Fetch) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NatsCollector(fetch))
    return registry


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No line per scrape in the journal."""


def make_exporter(host: str, port: int, fetch: Fetch) -> WSGIServer:
    """The HTTP server answering /metrics (any path) from a fresh read of the server."""
    return make_server(host, port, make_wsgi_app(registry_for(fetch)), handler_class=QuietHandler)


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(
            f"--listen {text!r}: expected ADDRESS:PORT, e.g. 10.0.2.11:7777"
        )
    return host.strip("[]"), int(port)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--monitor-url", required=True, help="nats-server's monitoring URL")
    parser.add_argument("--listen", required=True, type=parse_listen, help="ADDRESS:PORT to serve")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds per endpoint read")
    args = parser.parse_args(argv)
    if not args.monitor_url.startswith(("http://", "https://")):
        parser.error(f"--monitor-url {args.monitor_url!r}: expected http://HOST:PORT")
    if args.timeout <= 0:
        parser.error(f"--timeout {args.timeout}: must be above 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    host, port = args.listen
    server = make_exporter(host, port, http_fetch(args.monitor_url, args.timeout))
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
