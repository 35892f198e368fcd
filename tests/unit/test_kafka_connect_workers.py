"""The `kafka_connect` connection naming several workers of one Connect group: the base URLs built
from it, and the client reaching the group through the next worker when one is down.

The worker that answers is a small HTTP server on loopback serving a connector's status as Kafka
Connect's REST API does; the worker that is down is a loopback port bound but not listening, which
refuses connections as a killed worker's port does. The cluster suite (tests/cluster) checks the
same against the cluster profile's real workers, one of them killed."""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from include.cdc.kafka_connect import KafkaConnectClient
from include.connections import ConnectionSettingsError, http_base_urls
from include.health.checks import Thresholds, check_connector
from stack import topology
from tests.unit.test_stack_supervision import _example_settings

STATUS = {"name": "binance-postgres", "connector": {"state": "RUNNING", "worker_id": "127.0.0.3:8083"},
          "tasks": [{"id": 0, "state": "RUNNING", "worker_id": "127.0.0.3:8083"}]}


@pytest.fixture
def worker() -> Iterator[tuple[str, list[str]]]:
    """(base URL, paths requested) of a worker that answers."""
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server name
            seen.append(self.path)
            body = json.dumps(STATUS).encode() if self.path == "/connectors/binance-postgres/status" else b"{}"
            self.send_response(200 if body != b"{}" else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def down() -> Iterator[str]:
    """The base URL of a worker that is down: its port refuses connections."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


def test_a_worker_down_sends_the_request_to_the_next(worker, down, caplog):
    url, seen = worker
    client = KafkaConnectClient([down, url], timeout=5)
    with caplog.at_level(logging.WARNING, logger="include.cdc.kafka_connect"):
        assert client.status("binance-postgres") == STATUS
    assert seen == ["/connectors/binance-postgres/status"]
    assert f"Kafka Connect worker {down} unreachable" in caplog.text
    # the worker that answered is asked first from then on: no second attempt at the one down
    assert client.base_url == url
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="include.cdc.kafka_connect"):
        client.status("binance-postgres")
    assert "unreachable" not in caplog.text


def test_every_worker_down_raises_the_connection_error_the_checks_report(down):
    client = KafkaConnectClient([down, down], timeout=5)
    with pytest.raises(requests.ConnectionError):
        client.status("binance-postgres")
    result = check_connector(client, Thresholds(), heal=False)
    assert not result.ok and "Kafka Connect unreachable" in result.message


def test_the_health_check_passes_while_one_worker_of_two_is_down(worker, down):
    url, _ = worker
    result = check_connector(KafkaConnectClient([down, url], timeout=5), Thresholds(), heal=False)
    assert result.ok, result.message


def test_an_empty_url_is_refused():
    with pytest.raises(ValueError, match="empty URL"):
        KafkaConnectClient(["http://127.0.0.2:8083", ""])


@pytest.mark.parametrize(("host", "schema", "port", "urls"), [
    ("127.0.0.1", None, 8083, ["http://127.0.0.1:8083"]),
    ("127.0.0.2,127.0.0.3", "http", 8083, ["http://127.0.0.2:8083", "http://127.0.0.3:8083"]),
    ("c1.example.com, c2.example.com", "https", None, ["https://c1.example.com", "https://c2.example.com"]),
    ("https://c1.example.com:8083,https://c2.example.com:8083", None, None,
     ["https://c1.example.com:8083", "https://c2.example.com:8083"]),
])
def test_each_comma_separated_host_is_a_base_url_built_as_httphook_builds_one(host, schema, port, urls):
    assert http_base_urls("kafka_connect", host, schema, port) == urls


@pytest.mark.parametrize("host", [None, "", "127.0.0.2,,127.0.0.3", "127.0.0.2,"])
def test_a_connection_without_a_host_or_with_an_empty_one_names_the_connection(host):
    with pytest.raises(ConnectionSettingsError, match="connection kafka_connect: host"):
        http_base_urls("kafka_connect", host, "http", 8083)


def test_the_cluster_profile_connection_names_both_workers():
    s = topology.overlay(_example_settings(), "cluster")
    conn = json.loads(s["AIRFLOW_CONN_KAFKA_CONNECT"])
    workers = [n.host for n in topology.of(s, "kafka-connect")]
    assert len(workers) == 2
    assert http_base_urls("kafka_connect", conn["host"], conn["schema"], conn["port"]) == topology.connect_urls(s)
    assert topology.connect_urls(s) == [f"http://{h}:{s['KAFKA_CONNECT_PORT']}" for h in workers]
