"""Least privilege and secrets, against the running stack.

Beside tests/integration/test_stack.py (stack sockets on loopback, Cassandra refusing anonymous
and default logins, role attributes): what each Postgres role can actually do, the Spark driver's
sockets, the connector's config as Kafka Connect returns it, and generated secrets in git.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
from pathlib import Path

import psycopg2
import pytest
import requests

from include.names import CONNECTOR
from tests.integration.conftest import run_dag
from tests.integration.test_stack import _is_loopback, _listening_sockets

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _connect(settings, user_key: str, password_key: str):
    conn = psycopg2.connect(host=settings["POSTGRES_HOST"], port=settings["POSTGRES_PORT"],
                            dbname=settings["POSTGRES_DB"], user=settings[user_key],
                            password=settings[password_key], connect_timeout=5)
    conn.autocommit = True
    return conn


def _refused(conn, sql: str) -> str:
    """The error Postgres gives for `sql`; fails the test if it runs."""
    with conn.cursor() as cur:
        try:
            cur.execute(sql)
        except psycopg2.Error as exc:
            return str(exc)
    raise AssertionError(f"{sql!r} was allowed")


@pytest.mark.parametrize("sql", [
    "INSERT INTO binance.latest_prices (symbol, price, time) VALUES ('SECTESTUSDT', 1, now())",
    "UPDATE binance.latest_prices SET price = price WHERE symbol = 'SECTESTUSDT'",
    "DELETE FROM binance.latest_prices WHERE symbol = 'SECTESTUSDT'",
    "TRUNCATE binance.order_book",
    "CREATE TABLE binance.debezium_must_not_create (x int)",
    "SELECT count(*) FROM cassandra.latest_prices",
    "SELECT count(*) FROM pipeline_health.checks",
    "CREATE TABLE public.debezium_must_not_create (x int)",
])
def test_debezium_role_can_neither_write_nor_read_outside_binance(settings, sql):
    conn = _connect(settings, "DEBEZIUM_DB_USER", "DEBEZIUM_DB_PASSWORD")
    try:
        assert "permission denied" in _refused(conn, sql)
        # what it is there for still works: reading the source tables
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM binance.latest_prices")
    finally:
        conn.close()


@pytest.mark.parametrize("sql", [
    "INSERT INTO cassandra.latest_prices (symbol, price, time) VALUES ('SECTESTUSDT', 1, now())",
    "DELETE FROM cassandra.latest_prices WHERE symbol = 'SECTESTUSDT'",
    "UPDATE pipeline_health.checks SET ok = true WHERE false",
    "CREATE TABLE pipeline_health.grafana_must_not_create (x int)",
    "SELECT count(*) FROM binance.latest_prices",
])
def test_grafana_role_cannot_write_even_in_a_read_write_transaction(settings, sql):
    conn = _connect(settings, "GRAFANA_DB_USER", "GRAFANA_DB_PASSWORD")
    try:
        with conn.cursor() as cur:
            # the role's default is read-only; its privileges must hold without that default too
            cur.execute("SET default_transaction_read_only = off")
        assert "permission denied" in _refused(conn, sql)
    finally:
        conn.close()


def _generated_secrets(settings) -> dict[str, str]:
    """The values `make up` generated for this checkout (the `__generated__*` entries of .env.example)."""
    example = (REPO / ".env.example").read_text()
    names = re.findall(r"^([A-Z0-9_]+)=__generated", example, re.M)
    secrets = {n: settings[n] for n in names if settings.get(n)}
    assert len(secrets) >= 6, f"expected the stack's generated secrets in .env, found {sorted(secrets)}"
    return secrets


def test_connector_config_from_kafka_connect_holds_no_plaintext_password(settings, cdc_ready):
    base = settings["KAFKA_CONNECT_URL"]
    answers = {path: requests.get(f"{base}{path}", timeout=10) for path in (
        f"/connectors/{CONNECTOR}", f"/connectors/{CONNECTOR}/config", "/connectors?expand=info&expand=status",
        f"/connectors/{CONNECTOR}/tasks")}
    config = answers[f"/connectors/{CONNECTOR}"].json()["config"]
    for key, value in config.items():
        if "password" in key.lower():
            assert value.startswith("${env:") or value.startswith("${file:"), f"{key} is a literal: {value!r}"
    for path, resp in answers.items():
        assert resp.status_code == 200, (path, resp.text[:300])
        for name, secret in _generated_secrets(settings).items():
            assert secret not in resp.text, f"GET {path} returns {name} in plain text"


def test_no_generated_secret_is_in_any_tracked_file(settings):
    secrets = _generated_secrets(settings)
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    files = [REPO / f for f in tracked.decode().split("\0") if f]
    assert len(files) > 50
    leaks = []
    for path in files:
        if not path.is_file():
            continue
        data = path.read_bytes()
        leaks += [f"{path.relative_to(REPO)}: {name}" for name, value in secrets.items() if value.encode() in data]
    assert not leaks, leaks
    assert ".env" not in {f.name for f in files}, ".env is tracked"


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


def test_spark_driver_listens_on_loopback_only(dagbag, cdc_ready):
    """A stream submitted the way cdc_stream submits it (spark-submit, a child of this process);
    its sockets are sampled from a thread while the DAG runs (dag.test needs the main thread)."""
    done = threading.Event()
    seen: dict[str, int] = {}

    def sample() -> None:
        while not done.is_set():
            for pid in _descendants(os.getpid()):
                try:
                    for addr in _listening_sockets(pid):
                        seen[addr] = pid
                except (FileNotFoundError, PermissionError, ProcessLookupError):
                    continue
            done.wait(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        run_dag(dagbag, "cdc_stream", {"mode": "available_now"})
    finally:
        done.set()
        sampler.join(10)
    assert seen, "the Spark driver was never seen listening (no driver or block manager port)"
    exposed = {addr: pid for addr, pid in seen.items() if not _is_loopback(addr)}
    assert not exposed, f"Spark driver sockets not on loopback: {exposed} (is SPARK_LOCAL_IP=127.0.0.1 set?)"
