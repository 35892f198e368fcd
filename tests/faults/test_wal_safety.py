"""WAL safety: with the connector stopped under load, the slot never holds more WAL than
max_slot_wal_keep_size; once Postgres invalidates it, the health check names the recovery, and
cdc_setup with {"resnapshot": true} restores an exact copy in Cassandra and in the bridge: an
incremental re-snapshot, Cassandra kept and served meanwhile, the rows the lost changes deleted
found and deleted downstream by pipeline_health's reconciliation.

max_slot_wal_keep_size is lowered to 64 MB for the test (ALTER SYSTEM, reloaded, reset after).
"""

from __future__ import annotations

import json
import time

import pytest

from include import names
from include.cdc.kafka_connect import KafkaConnectClient
from include.health import checks as health
from include.tables import TABLES
from tests.faults.conftest import Load, differences, pg_connect
from tests.integration.conftest import cassandra_rows, run_dag, wait_for_debezium
from tests.integration.test_health import health_run, superuser_sql, wait_connector

pytestmark = pytest.mark.faults

SYMBOLS = tuple(f"WALSAFE{i}USDT" for i in range(3))
KEEP_MB = 64
SEGMENT_MB = 16


def _write_wal(pg, megabytes: int) -> None:
    with pg.cursor() as cur:
        cur.execute("CREATE TABLE pipeline_health.test_wal AS SELECT g, repeat('x', 1000) AS pad "
                    "FROM generate_series(1, %s) g", (megabytes * 1000,))
        cur.execute("DROP TABLE pipeline_health.test_wal")
    pg.commit()


def _all_symbols(pg) -> list[str]:
    with pg.cursor() as cur:
        cur.execute(" UNION ".join(f"SELECT DISTINCT symbol FROM binance.{t}" for t in TABLES))
        out = sorted(r[0] for r in cur.fetchall())
    pg.commit()
    return out


@pytest.fixture
def small_wal_keep(settings):
    superuser_sql(settings, f"ALTER SYSTEM SET max_slot_wal_keep_size = '{KEEP_MB}MB'")
    superuser_sql(settings, "SELECT pg_reload_conf()")
    yield KEEP_MB * 1024 * 1024
    superuser_sql(settings, "ALTER SYSTEM RESET max_slot_wal_keep_size")
    superuser_sql(settings, "SELECT pg_reload_conf()")


def test_an_invalidated_slot_is_reported_and_a_resnapshot_restores_an_exact_copy(
        settings, dagbag, cdc_ready, cassandra, small_wal_keep, monkeypatch):
    # the reconciliation repairs every difference it finds at once, and again soon if needed
    monkeypatch.setenv("AIRFLOW_VAR_RECONCILIATION", json.dumps({
        "max_repairs_per_run": 200, "min_repair_interval_seconds": 30, "fence_timeout_seconds": 20,
        "full_rows_per_run": 2_000_000}))
    client = KafkaConnectClient(settings["KAFKA_CONNECT_URL"])
    pg = pg_connect(settings)
    load = Load(settings, SYMBOLS, ticks_per_second=5)
    try:
        load.start()
        time.sleep(5)
        client.stop(names.CONNECTOR)
        # the load goes on while nothing reads the slot: its inserts, updates and deletes are lost
        peak, status = 0, None
        for _ in range(12):
            _write_wal(pg, SEGMENT_MB)
            superuser_sql(settings, "CHECKPOINT")
            slot = health.measure_slot(pg)
            status = slot["wal_status"]
            if status == "lost":
                break
            peak = max(peak, slot["retained_wal_bytes"] or 0)
            # Postgres removes WAL beyond the limit at each checkpoint (one segment of slack)
            assert peak <= small_wal_keep + 2 * SEGMENT_MB * 1024 * 1024, f"slot retains {peak} bytes"
        load.stop()
        assert status == "lost", f"the slot was not invalidated (wal_status {status}, retained {peak} bytes)"
        print(f"\nconnector stopped under {load.rate:.0f} rows/s: the slot retained at most "
              f"{peak / 1024 / 1024:.0f} MB (max_slot_wal_keep_size {KEEP_MB} MB), then Postgres invalidated it")

        verdict = health.check_slot(pg, health.Thresholds())
        assert not verdict.ok and "INVALIDATED" in verdict.message and '"resnapshot": true' in verdict.message

        started = time.monotonic()
        kept = {t: len(cassandra_rows(cassandra, t, list(SYMBOLS), pg)) for t in TABLES}
        run = run_dag(dagbag, "cdc_setup", {"resnapshot": True})
        setup = {ti.task_id: ti.xcom_pull(task_ids=ti.task_id) for ti in run.get_task_instances()}
        assert setup["resnapshot"]["mode"] == "incremental" and len(setup["request_snapshot"]) == len(TABLES), setup
        wait_connector(client, "RUNNING")
        assert health.measure_slot(pg)["wal_status"] in ("reserved", "extended")
        # Cassandra was kept, and is served while the snapshot streams
        assert {t: len(cassandra_rows(cassandra, t, list(SYMBOLS), pg)) for t in TABLES} == kept
        symbols = _all_symbols(pg)
        for attempt in range(20):
            # the incremental snapshot streams through Kafka; the test's stream applies what is there, then
            # exits; the bridge copies it; the reconciliation finds the rest (rows the lost changes deleted)
            wait_for_debezium(pg, timeout=180)
            run_dag(dagbag, "cdc_stream", {"mode": "available_now"})
            run_dag(dagbag, "cassandra_bridge")
            if not differences(pg, cassandra, symbols) and not differences(pg, cassandra, symbols, "cassandra"):
                break
            assert attempt < 19, (differences(pg, cassandra, symbols), differences(pg, cassandra, symbols, "cassandra"))
            health_run(dagbag, "check_reconciliation")
            time.sleep(10)
        print(f"incremental re-snapshot through cdc_setup: Cassandra and the bridge exact for {len(symbols)} symbols "
              f"{time.monotonic() - started:.0f}s after it was triggered, Cassandra served throughout")
    finally:
        load.stop()
        if client.status(names.CONNECTOR)["connector"]["state"] == "STOPPED":
            client.resume(names.CONNECTOR)
        with pg.cursor() as cur:
            for table in TABLES:
                cur.execute(f"DELETE FROM binance.{table} WHERE symbol = ANY(%s)", (list(SYMBOLS),))
        pg.commit()
        pg.close()
