"""Each service SIGKILLed by its PID under a steady write load, then recovered the way an operator
would (`make up`) while Airflow supervises the stream: Cassandra ends equal to Postgres row for row
and value for value, and so does the bridge after its next run.

Recovery times are printed (`pytest -s`) and collected in bench/RESULTS.md.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests

from include.cdc.kafka_connect import KafkaConnectClient
from include.health import checks as health
from include.tables import TABLES
from stack import localstack as ls
from tests.faults.conftest import Load, differences, pg_connect, wait_equal
from tests.integration.conftest import run_dag
from tests.integration.test_health import _alive, _api, _newest_batch, _stop_stream, _wait

pytestmark = pytest.mark.faults

REPO = Path(__file__).resolve().parents[2]
SYMBOLS = tuple(f"FAULT{i}USDT" for i in range(4))
SERVICES = ("kafka-connect", "kafka", "cassandra", "spark-driver", "postgres")
# seconds of load before the kill, and while the service is down
BEFORE, DOWN = 8, 10
RESULTS: list[str] = []


def _run_make_up(attempts: int = 4) -> None:
    """`make up` until it reports every service healthy, as an operator would re-run it: a service
    still going down from the fault (Airflow's scheduler after a Postgres restart) can fail one run."""
    for attempt in range(1, attempts + 1):
        r = subprocess.run(["make", "up"], cwd=REPO, capture_output=True, text=True, check=False, timeout=600)
        if r.returncode == 0:
            return
        assert attempt < attempts, r.stdout[-2000:] + r.stderr[-2000:]
        time.sleep(10)


def _fresh_airflow_orm() -> None:
    """This process's Airflow ORM (dag.test) holds a session and pooled connections that a
    restarted Postgres closed: start them over."""
    from airflow import settings as airflow_settings

    try:
        airflow_settings.dispose_orm()
    except Exception:  # noqa: BLE001 - closing a dead connection may raise; it is dropped all the same
        pass
    airflow_settings.configure_orm()


def _make_up() -> float:
    """`make up`, timed; then, as an operator would, once more a little later: a service that lost
    its database (Airflow's scheduler exits when Postgres goes away) may die after the first."""
    started = time.monotonic()
    _run_make_up()
    took = time.monotonic() - started
    time.sleep(15)
    _run_make_up()
    _fresh_airflow_orm()
    return took


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
    time.sleep(DOWN)
    if service == "spark-driver":
        # nothing for an operator to do: Airflow starts the stream again
        up_s = None
    else:
        up_s = _make_up()
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
    line = (f"{service:<14} SIGKILL under {load.rate:.0f} rows/s: "
            + (f"`make up` took {up_s:.0f}s, all up {back:.0f}s after the kill; " if up_s is not None
               else "restarted by Airflow; ")
            + f"Cassandra exact {total:.0f}s after the kill ({total - back - BEFORE:.0f}s after the load stopped; "
            f"{load.committed_rows} rows written so far, {load.failed_ticks} load transactions refused)")
    RESULTS.append(line)
    print("\n" + line)


def test_the_bridge_is_exact_after_its_next_run(settings, cassandra, load, dagbag):
    _fresh_airflow_orm()
    pg = pg_connect(settings)
    try:
        assert not differences(pg, cassandra, SYMBOLS), "Cassandra must be exact before the bridge runs"
        run_dag(dagbag, "cassandra_bridge")
        assert not differences(pg, cassandra, SYMBOLS, schema="cassandra")
    finally:
        pg.close()
