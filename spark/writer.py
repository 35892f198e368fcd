"""Every write the CDC stream makes to Cassandra, through one class, for both ways of applying a batch.

The driver applies small micro-batches itself; a big one is applied by Spark tasks, each with its
own writer (`write_partition`). Either way a writer writes, in this order: dead letters, then the
rows (upserts and deletes with the event's source LSN as write time, grouped into single-partition
unlogged batches), then the change log `changed_rows` the bridge reads, so a logged key is always
already applied. The driver's writer also records the stream's progress.

Sessions are opened from the environment (CDC_CASSANDRA_HOSTS, CDC_CASSANDRA_PORT,
CDC_CASSANDRA_USERNAME, CDC_CASSANDRA_PASSWORD; include/connections.py). Spark's executors need
them too: in local mode they inherit the driver's environment, on a cluster set them with
`spark.executorEnv.<NAME>` (with TZ=UTC, see `cql_value`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from itertools import islice
from typing import Any, NamedTuple

from include.cdc.events import DELETE, encode_key
from include.connections import CassandraSettings, open_cassandra
from include.tables import TABLES, Table
from include.times import as_utc

log = logging.getLogger("cdc_stream.writer")

# statements per single-partition unlogged batch, and requests in flight per writer
BATCH_SIZE = 100
CONCURRENCY = 32
# the rows a Spark task hands its writer at a time: each chunk is written in full (dead letters,
# rows, change log) before the next is read, which bounds a task's memory
TASK_CHUNK = 5000


@dataclass(frozen=True)
class Change:
    """One change to apply: the last event on its key in the batch. `row` maps the table's columns to
    their values as parsed (decimals as the source's text, timestamps as datetimes); for a delete it
    is `before`, which holds the key."""

    table: Table
    op: str
    lsn: int
    source_ts: datetime | None
    row: Mapping[str, Any]


@dataclass(frozen=True)
class DeadLetter:
    """A message that cannot be applied, kept whole with the reason."""

    topic: str
    partition: int
    offset: int
    raw_value: str | None
    error: str


@dataclass(frozen=True)
class Offset:
    """A topic partition's next offset to read, with the newest source commit applied from it (if known)."""

    topic: str
    partition: int
    next_offset: int
    newest_source_ts: datetime | None


class Write(NamedTuple):
    """A statement with its values, and the Cassandra partition it lands in (how writes are batched)."""

    partition: tuple[Any, ...]
    statement: Any
    values: tuple[Any, ...]


# --------------------------------------------------------------------------- values, converted once


def cql_value(kind: str, value: Any) -> Any:
    """A parsed value of logical type `kind` as the Cassandra driver binds it: a decimal's text as
    Decimal, a timestamp as an aware UTC datetime at Cassandra's millisecond precision (floored)."""
    if value is None:
        return None
    if kind == "numeric":
        return value if isinstance(value, Decimal) else Decimal(value)
    if kind == "timestamptz":
        # PySpark hands back naive datetimes in the process's local time. The job runs with TZ=UTC and
        # spark.sql.session.timeZone=UTC, so naive reads as UTC here, and only here.
        moment = as_utc(value)
        return moment.replace(microsecond=moment.microsecond // 1000 * 1000)
    return value


def cql_row(table: Table, row: Mapping[str, Any]) -> dict[str, Any]:
    """Every column of `table` in `row` converted with `cql_value` (absent columns are null)."""
    return {c.name: cql_value(c.type, row.get(c.name)) for c in table.columns}


def change_key(table: Table, row: Mapping[str, Any]) -> str:
    """The change-log key of `row`: times converted like the values written, decimals as their text."""
    values = {}
    for name in table.cassandra_key:
        kind = table.column(name).type
        values[name] = cql_value(kind, row[name]) if kind == "timestamptz" else row[name]
    return encode_key(table, values)


def partition_groups(writes: Iterable[Write], size: int = BATCH_SIZE) -> list[list[Write]]:
    """Writes grouped by Cassandra partition, in groups of up to `size`: each is sent as one unlogged
    batch, one request applied atomically within its partition; each statement keeps its own write
    time. Order within a partition is kept."""
    by_partition: dict[tuple[Any, ...], list[Write]] = {}
    for w in writes:
        by_partition.setdefault(w.partition, []).append(w)
    return [group[start:start + size] for group in by_partition.values() for start in range(0, len(group), size)]


# --------------------------------------------------------------------------- the writer


class CassandraWriter:
    """The one thing that writes to Cassandra: holds a session and every prepared statement of the job."""

    def __init__(self, session: Any, keyspace: str, shutdown: Callable[[], None] | None = None) -> None:
        self.session = session
        self.keyspace = keyspace
        self._shutdown = shutdown
        self._prepared: dict[str, Any] = {}

    @classmethod
    def open(cls, keyspace: str, env: Mapping[str, str] = os.environ) -> CassandraWriter:
        """A writer on a new session, from the CDC_CASSANDRA_* environment; close it when done."""
        cluster, session = open_cassandra(CassandraSettings.from_env(keyspace, env))
        return cls(session, keyspace, cluster.shutdown)

    def close(self) -> None:
        if self._shutdown is not None:
            self._shutdown()
            self._shutdown = None

    def __enter__(self) -> CassandraWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def now(self) -> datetime:
        """When a write happens (cdc_written_at, recorded_at, the change log's minute, progress), in ms."""
        now = datetime.now(UTC)
        return now.replace(microsecond=now.microsecond // 1000 * 1000)

    # ---------------------------------------------------------------- statements

    def _prepare(self, cql: str) -> Any:
        if cql not in self._prepared:
            from cassandra import ConsistencyLevel

            stmt = self.session.prepare(cql)
            stmt.consistency_level = ConsistencyLevel.LOCAL_QUORUM
            self._prepared[cql] = stmt
        return self._prepared[cql]

    def upsert_statement(self, table: Table) -> Any:
        """The row with its CDC columns, the event's source LSN as write time (the last bind value)."""
        columns = [*table.column_names, "cdc_op", "cdc_source_ts", "cdc_lsn", "cdc_written_at"]
        quoted = ", ".join(f'"{c}"' for c in columns)
        marks = ", ".join("?" * len(columns))
        return self._prepare(f'INSERT INTO "{self.keyspace}"."{table.name}" ({quoted}) VALUES ({marks}) '
                             "USING TIMESTAMP ?")

    def delete_statement(self, table: Table) -> Any:
        """The key's row, the event's source LSN as write time (the first bind value)."""
        where = " AND ".join(f'"{k}" = ?' for k in table.cassandra_key)
        return self._prepare(f'DELETE FROM "{self.keyspace}"."{table.name}" USING TIMESTAMP ? WHERE {where}')

    def change_log_statement(self) -> Any:
        return self._prepare(f'INSERT INTO "{self.keyspace}".changed_rows (table_name, bucket, key, cdc_lsn) '
                             "VALUES (?, ?, ?, ?)")

    def dead_letter_statement(self) -> Any:
        return self._prepare(f'INSERT INTO "{self.keyspace}".dead_letters (topic, partition, offset, raw_value, '
                             "error, recorded_at) VALUES (?, ?, ?, ?, ?, ?)")

    # ---------------------------------------------------------------- one batch of changes

    def data_writes(self, changes: Iterable[Change], written_at: datetime) -> list[Write]:
        """Upserts and deletes, each with the event's source LSN as write time."""
        out = []
        for change in changes:
            table = change.table
            row = cql_row(table, change.row)
            partition = (table.name, *[row[k] for k in table.cassandra_partition_key])
            if change.op == DELETE:
                key = tuple(row[k] for k in table.cassandra_key)
                out.append(Write(partition, self.delete_statement(table), (change.lsn, *key)))
            else:
                values = (*row.values(), change.op, cql_value("timestamptz", change.source_ts), change.lsn,
                          written_at, change.lsn)
                out.append(Write(partition, self.upsert_statement(table), values))
        return out

    def log_writes(self, changes: Iterable[Change], bucket: datetime) -> list[Write]:
        """One `changed_rows` entry per change, in the minute `bucket`."""
        stmt = self.change_log_statement()
        out = []
        for change in changes:
            values = (change.table.name, bucket, change_key(change.table, change.row), change.lsn)
            out.append(Write(values[:2], stmt, values))
        return out

    def write(self, changes: Sequence[Change], dead_letters: Sequence[DeadLetter] = ()) -> None:
        """Dead letters, then the rows, then the change log: a logged key is always already applied.
        Raises if any write failed (the batch is then replayed, which the LSN write times make safe)."""
        now = self.now()
        if dead_letters:
            stmt = self.dead_letter_statement()
            for d in dead_letters:
                self.session.execute(stmt, (d.topic, d.partition, d.offset, d.raw_value, d.error, now))
                log.warning("dead letter %s[%d]@%d: %s", d.topic, d.partition, d.offset, d.error)
        self._send(self.data_writes(changes, now), "upsert/delete", "the sink tables")
        self._send(self.log_writes(changes, now.replace(second=0, microsecond=0)), "change log", "changed_rows")

    def _send(self, writes: list[Write], what: str, target: str) -> None:
        """`writes` as single-partition unlogged batches (`partition_groups`), CONCURRENCY in flight."""
        from cassandra import ConsistencyLevel
        from cassandra.concurrent import execute_concurrent
        from cassandra.query import BatchStatement, BatchType

        batches = []
        for group in partition_groups(writes):
            batch = BatchStatement(batch_type=BatchType.UNLOGGED, consistency_level=ConsistencyLevel.LOCAL_QUORUM)
            for w in group:
                batch.add(w.statement, w.values)
            batches.append((batch, None))
        results = execute_concurrent(self.session, batches, concurrency=CONCURRENCY, raise_on_first_error=False)
        failed = [r.result_or_exc for r in results if not r.success]
        if failed:
            raise RuntimeError(f"{len(failed)} {what} write(s) to {target} failed; first: {failed[0]!r}")

    # ---------------------------------------------------------------- the stream's progress

    def record_progress(self, query_name: str, batch_id: int, input_rows: int, processing_ms: int,
                        newest_source_ts: datetime | None, offsets: Sequence[Offset], driver_host: str,
                        driver_pid: int, now: datetime) -> None:
        """One stream_progress row, and per topic partition the next offset to read (pipeline_health's
        lag check) with the newest source commit applied from it."""
        ks = self.keyspace
        progress = self._prepare(
            f'INSERT INTO "{ks}".stream_progress (query_name, finished_at, batch_id, input_rows, processing_ms, '
            "newest_source_ts, driver_host, driver_pid) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
        # the offset is the write time: a replayed or slower stream can never move it backwards
        with_ts = self._prepare(
            f'INSERT INTO "{ks}".stream_offsets (query_name, topic, partition, next_offset, newest_source_ts, '
            "updated_at) VALUES (?, ?, ?, ?, ?, ?) USING TIMESTAMP ?")
        without_ts = self._prepare(
            f'INSERT INTO "{ks}".stream_offsets (query_name, topic, partition, next_offset, updated_at) '
            "VALUES (?, ?, ?, ?, ?) USING TIMESTAMP ?")
        futures = [self.session.execute_async(progress, (query_name, now, batch_id, input_rows, processing_ms,
                                                         newest_source_ts, driver_host, driver_pid))]
        for o in offsets:
            if o.newest_source_ts is not None:
                args = (query_name, o.topic, o.partition, o.next_offset, o.newest_source_ts, now, o.next_offset)
                futures.append(self.session.execute_async(with_ts, args))
            else:
                args = (query_name, o.topic, o.partition, o.next_offset, now, o.next_offset)
                futures.append(self.session.execute_async(without_ts, args))
        for f in futures:
            f.result()


# --------------------------------------------------------------------------- on Spark's executors


def spark_rows(table: Table, topic: str, rows: Iterable[Any]) -> tuple[list[Change], list[DeadLetter]]:
    """Rows of spark/envelope.py's parse_envelope (each event that cannot be applied, and the last
    event per key) as the writer's changes and dead letters."""
    changes, letters = [], []
    for r in rows:
        if r.error is not None:
            letters.append(DeadLetter(topic, r.kafka_partition, r.kafka_offset, r.raw_value, r.error))
        else:
            changes.append(Change(table, r.cdc_op, r.cdc_lsn, r.cdc_source_ts, r.asDict()))
    return changes, letters


def write_partition(keyspace: str, table_name: str, topic: str, counters: Sequence[Any] | None, rows: Iterator[Any],
                    open_writer: Callable[[str], CassandraWriter] = CassandraWriter.open) -> None:
    """foreachPartition of one table's rows to apply: one writer for the task, opened from the
    environment. `counters` (Spark accumulators: upserts, deletes, dead letters) only feed the log."""
    table = TABLES[table_name]
    with open_writer(keyspace) as writer:
        while chunk := list(islice(rows, TASK_CHUNK)):
            changes, letters = spark_rows(table, topic, chunk)
            writer.write(changes, letters)
            if counters is not None:
                deletes = sum(1 for c in changes if c.op == DELETE)
                for counter, n in zip(counters, (len(changes) - deletes, deletes, len(letters)), strict=True):
                    counter.add(n)
