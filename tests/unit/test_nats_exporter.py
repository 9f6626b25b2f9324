"""The NATS exporter of the nats role: metric names, labels, a failing endpoint, its HTTP side."""

from __future__ import annotations

import argparse
import json
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from file_module import load_file
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

ROLES = Path(__file__).resolve().parents[2] / "roles"
exporter = load_file(
    "nats_exporter", ROLES / "nats/files/usr/local/lib/venta-nats-exporter/nats_exporter.py"
)

# Trimmed answers of a nats-server 2.9 cluster member (field names as the server writes them).
VARZ = {
    "server_id": "NDXVQ3",
    "server_name": "venta-data2",
    "version": "2.9.10",
    "connections": 7,
    "total_connections": 31,
    "routes": 2,
    "in_msgs": 1200,
    "out_msgs": 2400,
    "mem": 25_000_000,
    "cpu": 0.5,
    "slow_consumers": 0,
    "jetstream": {"config": {"max_memory": 1}},  # nested: not a metric, as with the Go exporter
    "auth_required": True,  # a boolean: not a metric either
    "host": "0.0.0.0",  # a string outside server_name/version: skipped
}
ROUTEZ = {"server_id": "NDXVQ3", "num_routes": 2, "routes": [{"rid": 1}]}
JSZ = {
    "server_id": "NDXVQ3",
    "config": {"max_memory": 1_073_741_824, "max_storage": 10_737_418_240, "domain": ""},
    "streams": 2,
    "consumers": 3,
    "messages": 42,
    "bytes": 4096,
    "meta_cluster": {"name": "venta", "leader": "venta-data1", "cluster_size": 3},
    "account_details": [
        {
            "name": "VENTA",
            "id": "VENTA",
            "stream_detail": [
                {
                    "name": "WEBHOOKS",
                    "cluster": {"leader": "venta-data2"},
                    "state": {
                        "messages": 40,
                        "bytes": 4000,
                        "first_seq": 3,
                        "last_seq": 42,
                        "consumer_count": 2,
                    },
                },
                {"name": "LEDGER", "cluster": {"leader": "venta-data3"}, "state": {"messages": 2}},
            ],
        }
    ],
}


def fetcher(answers: dict[str, Any]):
    def fetch(path: str) -> Any:
        if path not in answers:
            raise exporter.MonitorError(f"{path}: connection refused")
        return answers[path]

    return fetch


def scrape(answers: dict[str, Any]) -> dict[str, list]:
    text = generate_latest(exporter.registry_for(fetcher(answers))).decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def sample(metrics: dict[str, list], name: str, **labels: str):
    found = [s for s in metrics[name] if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (name, labels, metrics.get(name))
    return found[0]


ALL = {"/varz": VARZ, "/routez": ROUTEZ, "/jsz?streams=true": JSZ}


def test_varz_numbers_become_gnatsd_varz_gauges_labelled_with_the_server_id():
    metrics = scrape(ALL)
    assert sample(metrics, "gnatsd_varz_connections", server_id="NDXVQ3").value == 7
    assert sample(metrics, "gnatsd_varz_cpu").value == 0.5
    assert sample(metrics, "gnatsd_varz_routes").value == 2
    assert sample(metrics, "gnatsd_varz_version", value="2.9.10").value == 1
    assert sample(metrics, "gnatsd_varz_server_name", value="venta-data2").value == 1
    for skipped in ("gnatsd_varz_jetstream", "gnatsd_varz_auth_required", "gnatsd_varz_host"):
        assert skipped not in metrics


def test_routez_gives_the_number_of_routes():
    assert sample(scrape(ALL), "gnatsd_routez_num_routes", server_id="NDXVQ3").value == 2


def test_jsz_server_metrics_carry_the_meta_leader():
    metrics = scrape(ALL)
    streams = sample(metrics, "jetstream_server_total_streams")
    assert streams.value == 2
    assert streams.labels == {
        "server_id": "NDXVQ3",
        "server_name": "venta-data2",
        "cluster": "venta",
        "domain": "",
        "meta_leader": "venta-data1",
        "is_meta_leader": "false",
    }
    assert sample(metrics, "jetstream_server_max_storage").value == 10_737_418_240
    assert sample(metrics, "jetstream_server_jetstream_disabled").value == 0
    assert sample(metrics, "jetstream_server_total_message_bytes").value == 4096


def test_jsz_streams_give_sequences_and_leaders():
    metrics = scrape(ALL)
    webhooks = sample(metrics, "jetstream_stream_last_seq", stream_name="WEBHOOKS")
    assert webhooks.value == 42
    assert webhooks.labels["stream_leader"] == "venta-data2"
    assert webhooks.labels["is_stream_leader"] == "true"
    assert webhooks.labels["account"] == "VENTA"
    ledger = sample(metrics, "jetstream_stream_last_seq", stream_name="LEDGER")
    assert ledger.value == 0  # absent in the state: 0
    assert ledger.labels["is_stream_leader"] == "false"
    assert sample(metrics, "jetstream_stream_consumer_count", stream_name="WEBHOOKS").value == 2


def test_no_meta_leader_is_an_empty_label():
    jsz = {**JSZ, "meta_cluster": {"name": "venta", "cluster_size": 3}}
    metrics = scrape({**ALL, "/jsz?streams=true": jsz})
    labels = sample(metrics, "jetstream_server_total_streams").labels
    assert labels["meta_leader"] == ""
    assert labels["is_meta_leader"] == "false"


def test_a_standalone_server_leads_itself():
    jsz = {key: value for key, value in JSZ.items() if key != "meta_cluster"}
    jsz["account_details"] = [
        {"name": "VENTA", "id": "VENTA", "stream_detail": [{"name": "S", "state": {}}]}
    ]
    metrics = scrape({**ALL, "/jsz?streams=true": jsz})
    assert sample(metrics, "jetstream_server_total_streams").labels["is_meta_leader"] == "true"
    assert sample(metrics, "jetstream_stream_total_messages").labels["is_stream_leader"] == "true"


def test_disabled_jetstream_is_one():
    jsz = {"server_id": "NDXVQ3", "disabled": True, "config": {}}
    metrics = scrape({**ALL, "/jsz?streams=true": jsz})
    assert sample(metrics, "jetstream_server_jetstream_disabled").value == 1
    assert sample(metrics, "jetstream_server_total_streams").value == 0


def test_every_endpoint_answering_is_up():
    metrics = scrape(ALL)
    for endpoint in ("varz", "routez", "jsz"):
        assert sample(metrics, "venta_nats_monitor_up", endpoint=endpoint).value == 1


def test_a_failing_endpoint_is_down_and_drops_only_its_series():
    metrics = scrape({"/varz": VARZ, "/routez": ROUTEZ})
    assert sample(metrics, "venta_nats_monitor_up", endpoint="jsz").value == 0
    assert sample(metrics, "venta_nats_monitor_up", endpoint="routez").value == 1
    assert not any(name.startswith("jetstream_") for name in metrics)
    assert "gnatsd_varz_connections" in metrics


def test_a_server_that_does_not_answer_leaves_only_the_up_metric():
    metrics = scrape({})
    assert set(metrics) == {"venta_nats_monitor_up"}
    assert {s.value for s in metrics["venta_nats_monitor_up"]} == {0}


def test_an_answer_that_is_not_an_object_counts_as_down():
    metrics = scrape({**ALL, "/routez": ["not", "an", "object"]})
    assert sample(metrics, "venta_nats_monitor_up", endpoint="routez").value == 0
    assert "gnatsd_routez_num_routes" not in metrics


class FakeMonitor(BaseHTTPRequestHandler):
    """nats-server's monitoring port: the answers of ALL, 404 for anything else."""

    def do_GET(self) -> None:
        body = ALL.get(self.path)
        if body is None:
            self.send_error(404)
            return
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def monitor_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeMonitor)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_the_exporter_serves_what_it_reads_over_http(monitor_url):
    server = exporter.make_exporter("127.0.0.1", 0, exporter.http_fetch(monitor_url, 2.0))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as answer:
            text = answer.read().decode()
    finally:
        server.shutdown()
    assert 'gnatsd_varz_connections{server_id="NDXVQ3"} 7.0' in text
    assert 'venta_nats_monitor_up{endpoint="jsz"} 1.0' in text
    assert "jetstream_stream_last_seq{" in text


def test_http_fetch_names_the_url_that_failed():
    fetch = exporter.http_fetch("http://127.0.0.1:9", 0.5)  # the discard port: refused
    with pytest.raises(exporter.MonitorError, match=r"http://127\.0\.0\.1:9/varz"):
        fetch("/varz")


@pytest.mark.parametrize("listen", ["7777", ":7777", "10.0.2.11:", "10.0.2.11:0", "host:99999"])
def test_a_bad_listen_address_is_refused(listen):
    with pytest.raises(argparse.ArgumentTypeError, match="--listen"):
        exporter.parse_listen(listen)


def test_listen_takes_an_address_and_a_port():
    assert exporter.parse_listen("10.0.2.11:7777") == ("10.0.2.11", 7777)
    assert exporter.parse_listen("[::1]:7777") == ("::1", 7777)


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["--monitor-url", "127.0.0.1:8222", "--listen", "127.0.0.1:7777"], "--monitor-url"),
        (
            ["--monitor-url", "http://x", "--listen", "127.0.0.1:7777", "--timeout", "0"],
            "--timeout",
        ),
    ],
)
def test_bad_arguments_name_the_option(argv, error, capsys):
    with pytest.raises(SystemExit):
        exporter.parse_args(argv)
    assert error in capsys.readouterr().err
