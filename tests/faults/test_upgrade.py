"""Upgrade: a stack holding data under the schema before time buckets (Cassandra's tables keyed by
symbol alone, CQL migrations up to V002) is brought to the bucketed schema by cdc_setup alone, under
load, and loses nothing: Cassandra and the bridge end exactly equal to Postgres `binance`.

cdc_setup applies V003, which creates the data tables again (Cassandra cannot change a primary key),
and V005 (agg_trades), sees their `-- rebuilds sink tables` marker and takes a new snapshot from Postgres.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from cassandra.concurrent import execute_concurrent_with_args

from include.cdc.kafka_connect import KafkaConnectClient
from include.schema.versions import statements
from include.tables import TABLES
from tests.faults.conftest import Load, differences, pg_connect, wait_equal
from tests.integration.conftest import run_dag, wait_for_debezium
from tests.integration.test_health import wait_connector

pytestmark = pytest.mark.faults

SYMBOLS = tuple(f"UPGRADE{i}USDT" for i in range(2))
OLD_SCHEMA = Path(__file__).parent / "data" / "schema_before_buckets.cql"
# what V003 created and the old schema did not have
NEW_ONLY = ("sink_retention", "stream_position")
# the data tables of the old schema (agg_trades came later, with V005)
OLD_TABLES = tuple(t for t in re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", OLD_SCHEMA.read_text()) if t in TABLES)
# the CQL migrations that create sink tables again (`-- rebuilds sink tables`), which the old schema predates
REBUILDING = ("V003__time_buckets.cql", "V005__agg_trades.cql")


def _back_to_the_old_schema(pg, session) -> int:
    """Cassandra as it was before V003: the old tables, holding the rows Postgres holds (as the old
    stream wrote them, its source LSN as write time), and V003 not applied. Returns the rows written."""
    for name in (*TABLES, "stream_progress", *NEW_ONLY):
        session.execute(f"DROP TABLE IF EXISTS {name}", timeout=120)
    for stmt in statements(OLD_SCHEMA.read_text()):
        session.execute(stmt, timeout=120)
    session.execute("DELETE FROM schema_migrations WHERE version IN (3, 5)")
    written = 0
    with pg.cursor() as cur:
        for name in OLD_TABLES:
            table = TABLES[name]
            cols = [*table.column_names, "cdc_op", "cdc_source_ts", "cdc_lsn", "cdc_written_at"]
            insert = session.prepare(f"INSERT INTO {name} ({', '.join(cols)}) VALUES "
                                     f"({', '.join('?' * len(cols))}) USING TIMESTAMP ?")
            cur.execute(f"SELECT {', '.join(table.column_names)}, pg_current_wal_lsn() - '0/0'::pg_lsn, now() "
                        f"FROM binance.{name}")
            args = [(*values, "r", now, int(lsn), now, int(lsn)) for *values, lsn, now in cur.fetchall()]
            execute_concurrent_with_args(session, insert, args, concurrency=64, raise_on_first_error=True)
            written += len(args)
    pg.commit()
    return written


def test_cdc_setup_upgrades_a_stack_holding_data_under_the_schema_before_buckets(
        settings, dagbag, cdc_ready, cassandra, clean_symbols):
    pg = pg_connect(settings)
    load = Load(settings, SYMBOLS, ticks_per_second=2)
    clean_symbols.extend(SYMBOLS)
    try:
        load.start()
        time.sleep(5)
        rows = _back_to_the_old_schema(pg, cassandra)
        assert cassandra.execute("SELECT count(*) FROM system_schema.columns WHERE keyspace_name = %s "
                                 "AND table_name = 'order_book' AND column_name = 'bucket'",
                                 (settings["CASSANDRA_KEYSPACE"],)).one()[0] == 0
        started = time.monotonic()
        run = run_dag(dagbag, "cdc_setup")
        setup = {ti.task_id: ti.xcom_pull(task_ids=ti.task_id) for ti in run.get_task_instances()}
        assert setup["ensure_cassandra_schema"]["rebuilt_by"] == list(REBUILDING), setup
        # the sink's tables are new and empty: a start from scratch, not an incremental re-snapshot
        assert setup["resnapshot"]["resnapshot"] is True and setup["resnapshot"]["mode"] == "from_scratch", setup
        assert setup["request_snapshot"] == [], setup
        wait_connector(KafkaConnectClient(settings["KAFKA_CONNECT_URL"]), "RUNNING")
        time.sleep(10)
        load.stop()
        with pg.cursor() as cur:
            cur.execute(" UNION ".join(f"SELECT DISTINCT symbol FROM binance.{t}" for t in TABLES))
            symbols = sorted(r[0] for r in cur.fetchall())
        pg.commit()
        for attempt in range(3):
            wait_for_debezium(pg, timeout=180)
            run_dag(dagbag, "cdc_stream", {"mode": "available_now"})
            if not differences(pg, cassandra, symbols) or attempt == 2:
                break
        wait_equal(pg, cassandra, symbols, timeout=10)
        run_dag(dagbag, "cassandra_bridge")
        assert not differences(pg, cassandra, symbols, schema="cassandra")
        print(f"\nupgrade from the schema before time buckets ({rows} rows in Cassandra, {len(symbols)} symbols, "
              f"under {load.rate:.0f} rows/s): Cassandra and the bridge exact {time.monotonic() - started:.0f}s "
              "after cdc_setup was triggered")
    finally:
        load.stop()
        pg.close()
