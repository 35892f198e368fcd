"""Each service SIGKILLed by its PID under a steady write load, then recovered with nobody acting:
supervisord starts the service again (the watchdog restarts Airflow services that hang meanwhile)
and Airflow restarts the stream. Cassandra ends equal to Postgres row for row and value for value,
within FAULT_RECOVERY_LIMIT_S of the kill, and so does the bridge after its next run.

Recovery times are printed (`pytest -s`) and collected in bench/RESULTS.md.
"""

from __future__ import annotations

import os
import signal
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests

from include.cdc.kafka_connect import KafkaConnectClient
from include.health import checks as health
from include.tables import TABLES
from stack import localstack as ls
from tests.faults.conftest import Load, assert_bridge_exact_after_its_run, pg_connect, wait_equal
from tests.integration.test_health import _alive, _api, _newest_batch, _stop_stream, _wait

pytestmark = pytest.mark.faults

SYMBOLS = tuple(f"FAULT{i}USDT" for i in range(4))
SERVICES = ("kafka-connect", "kafka", "cassandra", "spark-driver", "postgres")
# seconds of load before the kill, and after the service is back
BEFORE = 8
RESULTS: list[str] = []


# from the kill to an exact Cassandra at this suite's load; the target is 60 s (bench/RESULTS.md
# records the measured times): the bound here is the one a stack that does not heal itself fails
RECOVERY_LIMIT_S = float(os.environ.get("FAULT_RECOVERY_LIMIT_S", "120"))


def _wait_restarted(service: str, old_pid: int, settings) -> float:
    """Seconds until supervisord runs the service again under a new PID and it answers its health
    check; nobody but supervisord and the watchdog acts."""
    started = time.monotonic()
    healthy = {"postgres": ls.postgres_healthy, "kafka": ls.kafka_healthy, "cassandra": ls.cassandra_healthy,
               "kafka-connect": ls.connect_healthy}[service]
    while True:
        pid = ls.read_pid(service)
        try:
            # Cassandra's health check opens a session: not before its port answers (quieter logs)
            if pid not in (None, old_pid) and (service != "cassandra" or ls.cassandra_port_open(settings)) \
                    and healthy(settings):
                return time.monotonic() - started
        except Exception:  # noqa: BLE001 - still starting
            pass
        assert time.monotonic() - started < RECOVERY_LIMIT_S, f"{service} not running again after the kill"
        time.sleep(0.5)


def _fresh_airflow_orm() -> None:
    """This process's Airflow ORM (dag.test) holds a session and pooled connections that a
    restarted Postgres closed: start them over."""
    from airflow import settings as airflow_settings

    try:
        airflow_settings.dispose_orm()
    except Exception:  # noqa: BLE001 - closing a dead connection may raise; it is dropped all the same
        pass
    airflow_settings.configure_orm()


def _spark_driver_pid(cassandra) -> int:
    """The driver JVM of the stream Airflow runs: the parent of the Python process that reports
    its batches."""
    last = health.last_batch(cassandra, cassandra.keyspace)
    assert last is not None and _alive(last.driver_pid), "no live stream driver reported"
    stat = Path(f"/proc/{last.driver_pid}/stat").read_text().rsplit(")", 1)[1].split()
    parent = int(stat[1])
    cmdline = Path(f"/proc/{parent}/cmdline").read_bytes().decode(errors="replace")
    assert "java" in cmdline and "SparkSubmit" in cmdline, f"unexpected parent of the driver: {cmdline[:200]}"
    return parent


def _pid(service: str, cassandra) -> int:
    if service == "spark-driver":
        return _spark_driver_pid(cassandra)
    pid = ls.read_pid(service)
    assert pid is not None, f"{service} is not running"
    return pid


def _kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(pid), f"PID {pid} survived SIGKILL"


def _heal_connector(settings) -> str:
    """What pipeline_health's check_connector does every minute: restart FAILED parts."""
    client = KafkaConnectClient(settings["KAFKA_CONNECT_URL"])
    deadline = time.monotonic() + 180
    while True:
        try:
            result = health.check_connector(client, health.Thresholds())
        except (requests.RequestException, OSError) as exc:
            result = health.CheckResult("connector", False, str(exc))
        if result.ok:
            return result.message
        assert time.monotonic() < deadline, result.message
        time.sleep(5)


@pytest.fixture(scope="module")
def supervised_stream(settings, cdc_ready, cassandra):
    """cdc_stream unpaused: the Airflow scheduler runs the stream and restarts it when it dies."""
    started = datetime.now(UTC)
    _api(settings, "PATCH", "/api/v2/dags/cdc_stream", {"is_paused": False})
    try:
        _wait("the supervised stream's first batch", lambda: _newest_batch(cassandra, started), 300)
        yield
    finally:
        for attempt in range(10):
            try:
                _stop_stream(settings, cassandra)
                break
            except Exception:  # noqa: BLE001 - services may still be coming back; the stream must stop
                if attempt == 9:
                    raise
                time.sleep(10)
        if RESULTS:
            print("\n" + "\n".join(RESULTS))


@pytest.fixture(scope="module")
def load(settings, supervised_stream):
    load = Load(settings, SYMBOLS)
    yield load
    load.stop()
    conn = pg_connect(settings)
    try:
        with conn.cursor() as cur:
            for table in TABLES:
                cur.execute(f"DELETE FROM binance.{table} WHERE symbol = ANY(%s)", (list(SYMBOLS),))
        conn.commit()
    finally:
        conn.close()


@pytest.mark.parametrize("service", SERVICES)
def test_sigkill_under_load_then_recovery_leaves_cassandra_exact(service, settings, cassandra, load):
    load.start()
    time.sleep(BEFORE)
    pid = _pid(service, cassandra)
    killed = time.monotonic()
    _kill(pid)
    if service == "spark-driver":
        # Airflow starts the stream again
        up_s = None
    else:
        up_s = _wait_restarted(service, pid, settings)
        # what pipeline_health's check_connector does every minute (a task failed while Kafka was away)
        _heal_connector(settings)
    back = time.monotonic() - killed
    time.sleep(BEFORE)
    load.stop()
    pg = pg_connect(settings)
    try:
        wait_equal(pg, cassandra, SYMBOLS, timeout=420)
    finally:
        pg.close()
    total = time.monotonic() - killed
    if service == "postgres":
        _fresh_airflow_orm()
    line = (f"{service:<14} SIGKILL under {load.rate:.0f} rows/s: "
            + (f"restarted by supervisord in {up_s:.1f}s; " if up_s is not None else "restarted by Airflow; ")
            + f"Cassandra exact {total:.0f}s after the kill ({total - back - BEFORE:.0f}s after the load stopped; "
            f"{load.committed_rows} rows written so far, {load.failed_ticks} load transactions refused)")
    RESULTS.append(line)
    print("\n" + line)
    assert total <= RECOVERY_LIMIT_S, f"Cassandra exact only {total:.0f}s after {service} was killed"


def test_the_bridge_is_exact_after_its_next_run(settings, cassandra, load, dagbag):
    _fresh_airflow_orm()
    assert_bridge_exact_after_its_run(settings, cassandra, dagbag, SYMBOLS)
