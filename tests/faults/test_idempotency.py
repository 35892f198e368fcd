"""Re-running the same work three times changes nothing: every data table (Postgres `binance`, the
bridge in Postgres `cassandra`, Cassandra), the Kafka topics and the connector compared by checksum
before and after each run.

Bookkeeping that records when something ran (bridge watermarks' sync times, the stream's progress
rows, Debezium's heartbeat) is left out of the comparison on purpose.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest
from confluent_kafka.admin import AdminClient

from include import names
from include.cdc.kafka_connect import KafkaConnectClient
from include.health import checks as health
from include.names import BRIDGE_SCHEMA
from include.names import SOURCE_SCHEMA as SCHEMA
from include.tables import TABLES
from tests.faults.conftest import Load, differences, pg_connect
from tests.integration.conftest import run_dag, wait_for_debezium
from tests.integration.test_binance_extract import SYMBOLS as EXTRACT_SYMBOLS

pytestmark = pytest.mark.faults

SYMBOLS = ("IDEMP0USDT", "IDEMP1USDT")


def _pg_checksums(pg) -> dict[str, str]:
    out = {}
    with pg.cursor() as cur:
        for schema in (SCHEMA, BRIDGE_SCHEMA):
            for table in TABLES:
                cur.execute(f"SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) "
                            f"FROM {schema}.{table} t")
                n, digest = cur.fetchone()
                out[f"postgres {schema}.{table}"] = f"{n} rows {digest}"
    pg.commit()
    return out


def _cassandra_checksums(session, pg) -> dict[str, str]:
    """Every row of every partition Postgres knows of, read partition by partition (a whole-table
    scan would count every tombstone other tests left against Cassandra's threshold)."""
    from datetime import UTC, datetime

    from include.partitions import partitions

    out = {}
    now = datetime.now(UTC)
    for table, t in TABLES.items():
        with pg.cursor() as cur:
            keys = partitions(cur, t, (SCHEMA, BRIDGE_SCHEMA), None, now)
        pg.commit()
        where = " AND ".join(f"{c} = ?" for c in t.cassandra_partition)
        stmt = session.prepare(f"SELECT * FROM {table} WHERE {where}")
        rows = sorted(repr(tuple(r)) for k in keys for r in session.execute(stmt, k))
        out[f"cassandra {table}"] = f"{len(rows)} rows {hashlib.md5('|'.join(rows).encode()).hexdigest()}"
    return out


def _kafka_and_connector(settings) -> dict[str, str]:
    admin = AdminClient({"bootstrap.servers": settings["KAFKA_BOOTSTRAP_SERVERS"], "log_level": 2})
    ends = health.kafka_end_offsets(admin)
    out = {f"kafka {topic}[{p}] end offset": str(n) for (topic, p), n in ends.items()
           if topic.removeprefix(names.CDC_TOPIC_PREFIX) in TABLES}
    config = KafkaConnectClient(settings["KAFKA_CONNECT_URL"]).get_config(names.CONNECTOR)
    out["connector config"] = hashlib.md5(repr(sorted(config.items())).encode()).hexdigest()
    return out


def _state(settings, pg, session) -> dict[str, str]:
    return {**_pg_checksums(pg), **_cassandra_checksums(session, pg), **_kafka_and_connector(settings)}


def _changed(before: dict[str, str], after: dict[str, str]) -> dict[str, tuple]:
    return {k: (before.get(k), after.get(k)) for k in before.keys() | after.keys() if before.get(k) != after.get(k)}


def test_cdc_setup_cdc_stream_and_the_bridge_three_times_change_nothing(settings, dagbag, cdc_ready, cassandra):
    pg = pg_connect(settings)
    load = Load(settings, SYMBOLS)
    try:
        for _ in range(5):
            load._tick(pg)
        wait_for_debezium(pg, timeout=120)
        run_dag(dagbag, "cdc_stream", {"mode": "available_now"})
        run_dag(dagbag, "cassandra_bridge")
        assert not differences(pg, cassandra, SYMBOLS)
        assert not differences(pg, cassandra, SYMBOLS, schema=BRIDGE_SCHEMA)
        before = _state(settings, pg, cassandra)
        for attempt in range(1, 4):
            for dag_id, conf in (("cdc_setup", None), ("cdc_stream", {"mode": "available_now"}),
                                 ("cassandra_bridge", None)):
                run_dag(dagbag, dag_id, conf)
                after = _state(settings, pg, cassandra)
                assert not _changed(before, after), f"{dag_id} run {attempt} changed {_changed(before, after)}"
        print(f"\ncdc_setup, cdc_stream (available_now) and cassandra_bridge run 3 times each: "
              f"{len(before)} checksums unchanged")
    finally:
        with pg.cursor() as cur:
            for table in TABLES:
                cur.execute(f"DELETE FROM binance.{table} WHERE symbol = ANY(%s)", (list(SYMBOLS),))
        pg.commit()
        pg.close()


def _binance_checksums(pg, symbols) -> dict[str, str]:
    """Content and row versions (xmin: a rewritten row changes it even with equal values)."""
    out = {}
    with pg.cursor() as cur:
        for table in TABLES:
            cur.execute(f"SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')), "
                        f"md5(coalesce(string_agg(t.xmin::text, '|' ORDER BY t::text), '')) "
                        f"FROM binance.{table} t WHERE symbol = ANY(%s)", (list(symbols),))
            n, digest, versions = cur.fetchone()
            out[f"binance.{table}"] = f"{n} rows {digest} versions {versions}"
    pg.commit()
    return out


def test_binance_extract_rerun_of_one_interval_three_times_changes_nothing(
        settings, dagbag, server, airflow_env, clean_tables):
    """The same data interval re-run against the same source data (the test server frozen: a live
    market moves between runs) writes nothing: no row added, none rewritten."""
    dag = dagbag.dags["binance_extract"]
    server.freeze()
    interval = datetime.now(UTC).replace(second=0, microsecond=0)
    pg = pg_connect(settings)
    try:
        run = dag.test(logical_date=interval)
        assert run.state == "success", [(ti.task_id, ti.state) for ti in run.get_task_instances()]
        before = _binance_checksums(pg, EXTRACT_SYMBOLS)
        assert all(not v.startswith("0 rows") for v in before.values()), before
        for attempt in range(1, 4):
            run = dag.test(logical_date=interval)
            assert run.state == "success", [(ti.task_id, ti.state) for ti in run.get_task_instances()]
            after = _binance_checksums(pg, EXTRACT_SYMBOLS)
            assert not _changed(before, after), f"re-run {attempt} of {interval} changed {_changed(before, after)}"
        print(f"\nbinance_extract re-run 3 times for the interval ending {interval:%H:%M}: "
              f"{len(before)} tables, content and row versions unchanged")
    finally:
        pg.close()
