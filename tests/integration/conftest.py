"""Fixtures for tests that need the whole CDC path: Postgres -> Debezium -> Kafka -> Spark -> Cassandra."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from include.connections import CassandraSettings, cassandra_session
from include.names import SLOT
from include.tables import TABLES


@pytest.fixture(scope="session")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder="dags")
    assert not bag.import_errors, bag.import_errors
    return bag


# the tests' stream keeps its own checkpoint, so a demo's continuous stream can run beside them
TEST_CHECKPOINT = str(Path(__file__).resolve().parents[2] / ".run" / "spark" / "checkpoints" / "tests")


def run_dag(dagbag, dag_id: str, conf: dict | None = None):
    if dag_id == "cdc_stream":
        conf = {"checkpoint": TEST_CHECKPOINT, **(conf or {})}
    run = dagbag.dags[dag_id].test(run_conf=conf)
    assert run.state == "success", [(ti.task_id, ti.state) for ti in run.get_task_instances()]
    return run


@pytest.fixture(scope="session")
def cdc_ready(dagbag):
    """cdc_setup has run: tables, publication, keyspace, connector RUNNING."""
    return run_dag(dagbag, "cdc_setup")


@pytest.fixture(scope="session")
def cassandra(settings):
    cs = CassandraSettings((settings["CASSANDRA_HOST"],), int(settings["CASSANDRA_PORT"]),
                           settings["CASSANDRA_USERNAME"], settings["CASSANDRA_PASSWORD"],
                           settings["CASSANDRA_KEYSPACE"])
    with cassandra_session(cs, cs.keyspace) as session:
        yield session


def wait_for_debezium(pg, timeout: float = 60.0) -> None:
    """Block until the connector has confirmed everything committed so far (slot flushed past it)."""
    with pg.cursor() as cur:
        cur.execute("SELECT pg_current_wal_lsn()")
        target = cur.fetchone()[0]
    pg.commit()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with pg.cursor() as cur:
            cur.execute("SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots WHERE slot_name = %s",
                        (target, SLOT))
            row = cur.fetchone()
        pg.commit()
        if row and row[0]:
            return
        time.sleep(0.5)
    raise AssertionError(f"Debezium did not confirm LSN {target} within {timeout}s")


def _norm(value):
    if isinstance(value, datetime):
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, Decimal):
        # exactness: the digits and the scale, not just the number
        return ("decimal", value.as_tuple())
    return value


def pg_rows(pg, table: str, symbols: list[str]) -> dict[tuple, tuple]:
    t = TABLES[table]
    with pg.cursor() as cur:
        cur.execute(f"SELECT {', '.join(t.column_names)} FROM binance.{table} WHERE symbol = ANY(%s)", (symbols,))
        rows = cur.fetchall()
    pg.commit()
    return _keyed(t, rows)


def cassandra_rows(session, table: str, symbols: list[str], intervals: tuple[str, ...] = ("1m", "30m")) -> dict:
    """The rows of `symbols`, read partition by partition (never a whole-table scan)."""
    t = TABLES[table]
    cols = ", ".join(t.column_names)
    rows = []
    for symbol in symbols:
        if t.cassandra_partition_key == ("symbol", "interval"):
            for interval in intervals:
                rows += session.execute(f"SELECT {cols} FROM {table} WHERE symbol = %s AND interval = %s",
                                        (symbol, interval))
        else:
            rows += session.execute(f"SELECT {cols} FROM {table} WHERE symbol = %s", (symbol,))
    return _keyed(t, [tuple(r) for r in rows])


def _keyed(t, rows) -> dict[tuple, tuple]:
    names = t.column_names
    out = {}
    for row in rows:
        values = tuple(_norm(v) for v in row)
        key = tuple(values[names.index(k)] for k in t.cassandra_key)
        assert key not in out, f"duplicate key {key} in {t.name}"
        out[key] = values
    return out
