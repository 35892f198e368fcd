"""pipeline_health against the real stack: a paused connector, a FAILED task, a killed stream.

Runs the DAG (or the part of it a scenario is about) with dag.test(); the stream-kill scenario
uses the running Airflow scheduler, which supervises cdc_stream as it would in production.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from include import names
from include.cdc.kafka_connect import KafkaConnectClient
from include.health import checks as health
from stack import localstack as ls
from tests.integration.conftest import run_dag, wait_for_debezium

SYMBOL = "HEALTHUSDT"


@pytest.fixture
def connect(settings) -> KafkaConnectClient:
    return KafkaConnectClient(settings["KAFKA_CONNECT_URL"])


@pytest.fixture(autouse=True)
def _clean(pg):
    yield
    with pg.cursor() as cur:
        cur.execute("DELETE FROM binance.latest_prices WHERE symbol = %s", (SYMBOL,))
        cur.execute("DELETE FROM binance.recent_trades WHERE symbol = %s", (SYMBOL,))
    pg.commit()


def superuser_sql(settings, sql: str) -> str:
    """Run SQL as the postgres superuser over the stack's Unix socket (what an operator would do)."""
    _, sock = ls._pg_dirs()
    argv = ls._as_postgres([str(ls._pg_bin() / "psql"), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", str(sock),
                            "-p", settings["POSTGRES_PORT"], "-d", settings["POSTGRES_DB"], "-c", sql])
    r = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    return r.stdout


def thresholds(monkeypatch, **values) -> None:
    monkeypatch.setenv("AIRFLOW_VAR_PIPELINE_HEALTH_THRESHOLDS", json.dumps(values))


def health_run(dagbag, *task_ids: str, retries: int = 0):
    """Run pipeline_health (or only `task_ids` and their upstream) once; return {task_id: state}."""
    dag = dagbag.dags["pipeline_health"]
    if task_ids:
        dag = dag.partial_subset(task_ids=list(task_ids), include_upstream=True)
    for t in dag.tasks:
        t.retries = retries
    run = dag.test()
    return {ti.task_id: ti.state for ti in run.get_task_instances()}


def latest_checks(pg) -> dict[str, tuple[bool, str]]:
    with pg.cursor() as cur:
        cur.execute("SELECT DISTINCT ON (check_name) check_name, ok, message FROM pipeline_health.checks "
                    "ORDER BY check_name, checked_at DESC")
        out = {name: (ok, msg) for name, ok, msg in cur.fetchall()}
    pg.commit()
    return out


def insert_prices(pg, n: int = 1) -> None:
    now = datetime.now(UTC)
    with pg.cursor() as cur:
        cur.executemany("INSERT INTO binance.latest_prices (symbol, price, time) VALUES (%s, %s, %s) "
                        "ON CONFLICT DO NOTHING",
                        [(SYMBOL, Decimal("1.00000001") + i, now + timedelta(milliseconds=i)) for i in range(n)])
    pg.commit()


def write_wal(pg, megabytes: int) -> None:
    """About `megabytes` of WAL that no connector has to carry: a throw-away table outside the
    publication, written and dropped."""
    with pg.cursor() as cur:
        cur.execute("CREATE TABLE pipeline_health.test_wal AS SELECT g, repeat('x', 1000) AS pad "
                    "FROM generate_series(1, %s) g", (megabytes * 1000,))
        cur.execute("DROP TABLE pipeline_health.test_wal")
    pg.commit()


def wait_connector(connect: KafkaConnectClient, wanted: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status = connect.status(names.CONNECTOR)
        states = {status["connector"]["state"], *(t["state"] for t in status["tasks"])}
        if wanted in states and (wanted != "RUNNING" or states == {"RUNNING"}):
            return status
        assert time.monotonic() < deadline, f"connector not {wanted} after {timeout}s: {status}"
        time.sleep(2)


def catch_up(dagbag, pg) -> None:
    """Everything committed so far through Debezium, the stream and the bridge."""
    wait_for_debezium(pg, timeout=120)
    run_dag(dagbag, "cdc_stream", {"mode": "available_now"})
    run_dag(dagbag, "cassandra_bridge")


def wait_slot_below(pg, limit: int, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while True:
        retained = health.measure_slot(pg)["retained_wal_bytes"]
        if retained is not None and retained <= limit:
            return retained
        assert time.monotonic() < deadline, f"slot still retains {retained} bytes after {timeout}s"
        time.sleep(3)


def test_a_paused_connector_is_reported_then_all_checks_pass_once_resumed(dagbag, cdc_ready, pg, connect,
                                                                          monkeypatch):
    insert_prices(pg)
    catch_up(dagbag, pg)
    baseline = health.measure_slot(pg)["retained_wal_bytes"]
    # tight limits, so a short pause trips them; no warm-up grace: the suite runs the checks now and
    # then, and a gap in their history reads as a restart (README, Pipeline health, warming up)
    limit = baseline + 16 * 1024 * 1024
    thresholds(monkeypatch, max_retained_wal_bytes=limit, max_cassandra_delay_seconds=5, warmup_seconds=0)

    connect._request("PUT", f"/connectors/{names.CONNECTOR}/pause", ok=(200, 202, 204))
    try:
        wait_connector(connect, "PAUSED")
        write_wal(pg, 40)
        time.sleep(6)
        insert_prices(pg)
        retained = health.measure_slot(pg)["retained_wal_bytes"]
        assert retained > limit, f"WAL did not grow behind the paused connector: {baseline} -> {retained}"

        states = health_run(dagbag)
        checks = latest_checks(pg)
        assert states["check_connector"] == "failed" and "PAUSED" in checks["connector"][1]
        assert "/resume" in checks["connector"][1]
        assert states["check_replication_slot"] == "failed"
        assert "above the threshold" in checks["replication_slot"][1]
        assert states["check_freshness"] == "failed"
        assert "Cassandra is" in checks["freshness"][1] and "behind Postgres" in checks["freshness"][1]
        with pg.cursor() as cur:
            cur.execute("SELECT retained_wal_bytes FROM pipeline_health.slot_states ORDER BY checked_at DESC LIMIT 1")
            assert cur.fetchone()[0] > limit
        pg.commit()
    finally:
        connect._request("PUT", f"/connectors/{names.CONNECTOR}/resume", ok=(200, 202, 204))

    wait_connector(connect, "RUNNING")
    catch_up(dagbag, pg)
    wait_slot_below(pg, limit)
    # back to the default limits: what the DAG runs with every minute
    monkeypatch.delenv("AIRFLOW_VAR_PIPELINE_HEALTH_THRESHOLDS")
    states = health_run(dagbag)
    assert set(states.values()) == {"success"}, (states, latest_checks(pg))
    assert all(ok for ok, _ in latest_checks(pg).values()), latest_checks(pg)


def test_a_failed_connector_task_is_restarted_and_runs_again(dagbag, cdc_ready, pg, connect, settings):
    role = settings["DEBEZIUM_DB_USER"]
    superuser_sql(settings, f'ALTER ROLE "{role}" NOREPLICATION')
    try:
        # the connector's session ends; its reconnects are refused until it gives up (errors.max.retries)
        superuser_sql(settings, f"SELECT pg_terminate_backend(pid) FROM pg_stat_replication WHERE usename = '{role}'")
        status = wait_connector(connect, "FAILED", timeout=150)
        assert "replication" in json.dumps(status)
    finally:
        superuser_sql(settings, f'ALTER ROLE "{role}" REPLICATION')

    states = health_run(dagbag, "check_connector")
    assert states["check_connector"] == "success"
    assert "restart" in latest_checks(pg)["connector"][1]
    with pg.cursor() as cur:
        cur.execute("SELECT state, restarts FROM pipeline_health.connector_states WHERE task_id = 0 "
                    "ORDER BY checked_at DESC LIMIT 1")
        state, restarts = cur.fetchone()
    pg.commit()
    assert state == "RUNNING" and restarts >= 1
    wait_connector(connect, "RUNNING")
    insert_prices(pg)
    wait_for_debezium(pg, timeout=60)


def test_a_check_that_cannot_reach_cassandra_records_why_and_fails(dagbag, pg, settings, monkeypatch):
    """cassandra_default pointing at a port nobody listens on: the checks that read Cassandra cannot
    measure. Each fails its task and leaves a failed verdict naming the error (what the dashboard and
    `make status` show), rather than no verdict at all."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    monkeypatch.setenv("AIRFLOW_CONN_CASSANDRA_DEFAULT",
                       f"cassandra://{settings['CASSANDRA_USERNAME']}:{settings['CASSANDRA_PASSWORD']}@127.0.0.1:"
                       f"{closed}/{settings['CASSANDRA_KEYSPACE']}")
    started = datetime.now(UTC)
    states = health_run(dagbag, "check_reconciliation", "check_stream_lag")
    assert states["check_reconciliation"] == "failed" and states["check_stream_lag"] == "failed", states
    with pg.cursor() as cur:
        cur.execute("SELECT check_name, ok, message FROM pipeline_health.checks WHERE checked_at >= %s "
                    "AND check_name IN ('reconciliation', 'stream_lag')", (started,))
        verdicts = {name: (ok, message) for name, ok, message in cur.fetchall()}
    pg.commit()
    assert set(verdicts) == {"reconciliation", "stream_lag"}, verdicts
    for name, (ok, message) in verdicts.items():
        assert not ok and message.startswith("the check could not run: NoHostAvailable"), (name, message)
        assert f"127.0.0.1:{closed}" in message, (name, message)


# ------------------------------------------------------------------ the stream under Airflow's supervision


def _api(settings, method: str, path: str, body: dict | None = None) -> dict:
    from stack.demo import _api, _token

    return _api(settings, method, path, body, _token(settings))


def _newest_batch(cassandra, after: datetime):
    row = health.last_batch(cassandra, cassandra.keyspace)
    if row is None or row.finished_at.replace(tzinfo=UTC) <= after:
        return None
    return row


def _lag(settings, cassandra) -> int:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": settings["KAFKA_BOOTSTRAP_SERVERS"], "log_level": 2})
    end = health.kafka_end_offsets(admin)
    done = health.processed_offsets(cassandra, cassandra.keyspace)
    result = health.check_stream_lag(end, done, health.last_batch(cassandra, cassandra.keyspace), health.Thresholds())
    return sum(r["lag"] for r in result.rows["stream_lag"])


def _wait(what: str, probe, timeout: float, every: float = 2.0):
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        time.sleep(every)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _stop_stream(settings, cassandra) -> None:
    """Pause cdc_stream and fail its run, as an operator would; the driver must end with it."""
    _api(settings, "PATCH", "/api/v2/dags/cdc_stream", {"is_paused": True})
    runs = _api(settings, "GET", "/api/v2/dags/cdc_stream/dagRuns?state=running&state=queued")["dag_runs"]
    for run in runs:
        _api(settings, "PATCH", f"/api/v2/dags/cdc_stream/dagRuns/{run['dag_run_id']}", {"state": "failed"})
    last = health.last_batch(cassandra, cassandra.keyspace)
    if last is not None and last.driver_pid and _alive(last.driver_pid):
        deadline = time.monotonic() + 60
        while _alive(last.driver_pid) and time.monotonic() < deadline:
            time.sleep(1)
        if _alive(last.driver_pid):
            # the driver Airflow started for this test outlived its run: end it by its PID
            os.kill(last.driver_pid, signal.SIGKILL)


def test_a_killed_stream_shows_as_lag_and_airflow_restarts_it(dagbag, cdc_ready, pg, cassandra, settings):
    started = datetime.now(UTC)
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            insert_prices(pg_writer, 20)
            stop.wait(0.5)

    import psycopg2

    pg_writer = psycopg2.connect(host=settings["POSTGRES_HOST"], port=settings["POSTGRES_PORT"],
                                 dbname=settings["POSTGRES_DB"], user=settings["POSTGRES_USER"],
                                 password=settings["POSTGRES_PASSWORD"])
    writer = threading.Thread(target=load, daemon=True)
    _api(settings, "PATCH", "/api/v2/dags/cdc_stream", {"is_paused": False})
    try:
        first = _wait("the supervised stream's first batch", lambda: _newest_batch(cassandra, started), 300)
        writer.start()
        _wait("the stream caught up", lambda: _lag(settings, cassandra) <= 200, 300)
        pid = first.driver_pid
        killed_at = datetime.now(UTC)
        os.kill(pid, signal.SIGKILL)
        at_kill = _lag(settings, cassandra)
        grown = _wait("lag growing while the stream is down",
                      lambda: (n := _lag(settings, cassandra)) > at_kill + 50 and n, 60)
        again = _wait("Airflow restarting the stream",
                      lambda: (b := _newest_batch(cassandra, killed_at)) and b.driver_pid != pid and b, 300)
        restarted_s = (again.finished_at.replace(tzinfo=UTC) - killed_at).total_seconds()
        stop.set()
        writer.join(10)
        _wait("lag back to near zero", lambda: _lag(settings, cassandra) <= 20, 180)
        print(f"\nstream SIGKILLed (lag {at_kill} -> {grown}); Airflow restarted it, first batch after "
              f"{restarted_s:.0f}s; lag back to near zero")
    finally:
        stop.set()
        _stop_stream(settings, cassandra)
        pg_writer.close()
