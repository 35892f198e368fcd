"""Fixtures for tests that need the whole CDC path: Postgres -> Debezium -> Kafka -> Spark -> Cassandra."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
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
def cassandra(settings, cdc_ready):
    """A session on the pipeline's keyspace, which exists once cdc_setup has run (on a stack started
    for the first time it does not exist before)."""
    hosts = tuple(settings.get("CASSANDRA_HOSTS", settings["CASSANDRA_HOST"]).split(","))
    cs = CassandraSettings(hosts, int(settings["CASSANDRA_PORT"]),
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


def cassandra_partition_rows(session, table: str, symbols: list[str], pg, columns: str | None = None,
                             since: datetime | None = None) -> list:
    """Rows of `symbols` in Cassandra, read partition by partition (never a whole-table scan): every
    bucket from `since` (default: three days ago, or the oldest row Postgres holds for them if older)
    to a day ahead, for every prefix (symbol, interval) Postgres holds for them, or the symbol alone."""
    from include.partitions import buckets, prefix_ranges

    t = TABLES[table]
    now = datetime.now(UTC)
    with pg.cursor() as cur:
        ranges = {p: r for p, r in prefix_ranges(cur, t, ("binance", "cassandra")).items() if p[0] in symbols}
    pg.commit()
    start = min([since or now - timedelta(days=3), *(low for low, _ in ranges.values())])
    prefixes = set(ranges) | ({(s,) for s in symbols} if len(t.cassandra_partition_key) == 1 else set())
    where = " AND ".join(f"{c} = ?" for c in t.cassandra_partition)
    stmt = session.prepare(f"SELECT {columns or ', '.join(t.column_names)} FROM {table} WHERE {where}")
    rows = []
    for prefix in sorted(prefixes):
        for bucket in buckets(t, start, now + timedelta(days=1)):
            rows += session.execute(stmt, (*prefix, bucket))
    return rows


def cassandra_rows(session, table: str, symbols: list[str], pg, since: datetime | None = None) -> dict:
    """The rows of `symbols`, keyed like pg_rows, read partition by partition."""
    return _keyed(TABLES[table], [tuple(r) for r in cassandra_partition_rows(session, table, symbols, pg,
                                                                             since=since)])


def _keyed(t, rows) -> dict[tuple, tuple]:
    names = t.column_names
    out = {}
    for row in rows:
        values = tuple(_norm(v) for v in row)
        key = tuple(values[names.index(k)] for k in t.row_key)
        assert key not in out, f"duplicate key {key} in {t.name}"
        out[key] = values
    return out
