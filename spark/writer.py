"""Every write the CDC stream makes to Cassandra, through one class.

Spark tasks apply a micro-batch's changes, each through the writer of its Python worker
(spark/apply.py). A writer writes, in this order: dead letters, then the rows (upserts and deletes
with the change's source commit time as write time, include.cdc.events.write_time, grouped into
single-partition unlogged batches), then the change log `changed_rows` the bridge reads, so a
logged key is always already applied. The task reading the signal table's partition records its
events (`snapshot_windows`); a task with incremental snapshot reads looks up their windows' times
there. The driver's writer reads what every writer of a batch shares (`BatchContext`: the change-log
minute, each table's retention) and records the stream's progress.

Retention: each row is written with a TTL that ends `keep_seconds` (table `sink_retention`) after
its time_column; a change (upsert or delete) whose row is already out of that window is not
written at all, nor logged.

Sessions are opened from the environment (CDC_CASSANDRA_HOSTS, CDC_CASSANDRA_PORT,
CDC_CASSANDRA_USERNAME, CDC_CASSANDRA_PASSWORD; include/connections.py). Spark's executors need
them too: in local mode they inherit the driver's environment, on a cluster the stream hands them
over with `spark.executorEnv.<NAME>`. The process time zone does not matter: times are parsed from
the events' ISO-8601 text into aware UTC datetimes (spark/python_events.py), never through Spark.
"""

from __future__ import annotations

import functools
import logging
import os
import struct
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, NamedTuple

from include.cdc.events import DELETE, encode_key
from include.connections import CassandraSettings, open_cassandra
from include.tables import BUCKET, Table
from include.times import EPOCH, as_utc

log = logging.getLogger("cdc_stream.writer")

# statements per single-partition unlogged batch (Cassandra's batch size thresholds apply only to
# batches over several partitions; 500 rather than 100: on one node fewer requests and less of
# Cassandra's CPU per row, on three no difference measured; bench/bench_writer.py), and requests in
# flight per writer
BATCH_SIZE = 500
CONCURRENCY = 32
# keys of one table per change-log entry (`changed_rows.keys`): one entry per key cost a statement and
# a Cassandra row per change, about as much as the row written (bench/RESULTS.md, "The change log in
# groups"); 100 keys are a few KiB, so the bridge's pages of entries stay small
LOG_GROUP_KEYS = 100
# sink_retention is read again at most this often (seconds of the writer's monotonic clock)
RETENTION_REFRESH_SECONDS = 60.0
# Cassandra's largest TTL (20 years): a longer retention is written as this
MAX_TTL = 630_720_000


@dataclass(frozen=True)
class Change:
    """One change to apply: the last event on its key in the batch. `row` maps the table's columns to
    their values as parsed (decimals as the source's text, timestamps as aware datetimes); for a
    delete it is `before`, which holds the key and time_column. `write_time` is the Cassandra write
    timestamp (include.cdc.events.write_time), `lsn` the source LSN (column cdc_lsn). `converted`
    is `cql_row(table, row)` when the caller has it already (the stream's parse does, from the key
    it collapsed by); the writer computes it otherwise."""

    table: Table
    op: str
    lsn: int
    source_ts: datetime | None
    write_time: int
    row: Mapping[str, Any]
    converted: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)


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


@dataclass(frozen=True)
class BatchContext:
    """What the driver fixes once per micro-batch, when it starts, for every writer of the batch (its
    own, or the Spark tasks' through their closure): the change-log minute every key of the batch is
    logged under, each table's retention in Cassandra (seconds; absent or None: kept for ever), and
    the write time of the batch's incremental snapshot reads per LSN (their window's time,
    include.cdc.events.window_time; reads of an LSN missing here were dropped before the collapse)."""

    changelog_bucket: datetime
    keep_seconds: Mapping[str, int | None]
    windows: Mapping[int, int] = field(default_factory=dict)


class Write(NamedTuple):
    """A statement with its values, and the Cassandra partition it lands in (how writes are batched)."""

    partition: tuple[Any, ...]
    statement: Any
    values: tuple[Any, ...]


class Planned(NamedTuple):
    """A change inside Cassandra's window: its values as bound (`cql_row`), and its TTL (0: none)."""

    change: Change
    row: dict[str, Any]
    ttl: int


class Written(NamedTuple):
    """What one `write` did: rows upserted, rows deleted, changes skipped (outside the retention window)."""

    upserts: int
    deletes: int
    skipped: int


# --------------------------------------------------------------------------- values, converted once


def from_epoch_us(micros: int) -> datetime:
    """The UTC instant `micros` microseconds after the epoch (how Spark hands times to Python)."""
    return EPOCH + timedelta(microseconds=micros)


def epoch_us(moment: datetime) -> int:
    """Microseconds since the epoch of an aware datetime (exact integers, no float)."""
    delta = moment - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def cql_value(kind: str, value: Any) -> Any:
    """A parsed value of logical type `kind` as the Cassandra driver binds it: a decimal's text as
    Decimal, a timestamp as an aware UTC datetime at Cassandra's millisecond precision (floored).
    A naive datetime is refused: its meaning would depend on the process time zone."""
    if value is None:
        return None
    if kind == "numeric":
        return value if isinstance(value, Decimal) else Decimal(value)
    if kind == "timestamptz":
        if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"a timestamp must be an aware datetime, got {value!r}")
        moment = as_utc(value)
        return moment.replace(microsecond=moment.microsecond // 1000 * 1000)
    return value


def bucket_value(table: Table, row: Mapping[str, Any]) -> datetime | None:
    """The `bucket` of a row's Cassandra key: Table.bucket_of its time_column (as written, to the ms),
    as cql_row computes it (for the values bound, the key the tasks collapse by and the batches'
    partitions) and change_key without a converted row."""
    return _bucket_of(table, cql_value("timestamptz", row.get(table.time_column)))


def _bucket_of(table: Table, moment: datetime | None) -> datetime | None:
    """The bucket of a time_column already converted by cql_value."""
    return None if moment is None else table.bucket_of(moment)


def written_columns(table: Table) -> list[str]:
    """The columns of `table` a row is written with: its own, then `bucket` (if it has one)."""
    return [*table.column_names, *((BUCKET.name,) if table.bucket else ())]


def cql_row(table: Table, row: Mapping[str, Any]) -> dict[str, Any]:
    """Every column of `table` in `row` converted with `cql_value` (absent columns are null), then
    the `bucket` its time_column falls in."""
    out = {c.name: cql_value(c.type, row.get(c.name)) for c in table.columns}
    if table.bucket:
        out[BUCKET.name] = _bucket_of(table, out[table.time_column])
    return out


def change_key(table: Table, row: Mapping[str, Any], converted: Mapping[str, Any] | None = None) -> str:
    """The change-log key of `row`: times (and the bucket) converted like the values written,
    decimals as their text. `converted`, the row's `cql_row` when the caller has it, gives the times
    and the bucket already converted."""
    values = {}
    for name in table.cassandra_key:
        kind = table.column(name).type
        if kind != "timestamptz":
            values[name] = row[name]
        elif converted is not None:
            values[name] = converted[name]
        else:
            values[name] = bucket_value(table, row) if name == BUCKET.name else cql_value(kind, row[name])
    return encode_key(table, values)


def ttl_of(row_time: datetime, keep_seconds: int | None, now: datetime) -> int | None:
    """The TTL (seconds) of a row whose time_column is `row_time`, in a table Cassandra keeps
    `keep_seconds`: ceil(row_time + keep_seconds - now), at most MAX_TTL; 0 (no expiry) when the
    table is kept for ever; None when that is <= 0: the row is outside the window (it has expired,
    or would at once) and the change is not written."""
    if keep_seconds is None:
        return 0
    left_us = epoch_us(row_time) + keep_seconds * 1_000_000 - epoch_us(now)
    ttl = -(-left_us // 1_000_000)
    return min(ttl, MAX_TTL) if ttl > 0 else None


def partition_groups(writes: Iterable[Write], size: int = BATCH_SIZE) -> list[list[Write]]:
    """Writes grouped by Cassandra partition, in groups of up to `size`: each is sent as one unlogged
    batch, one request applied atomically within its partition; each statement keeps its own write
    time. Order within a partition is kept."""
    by_partition: dict[tuple[Any, ...], list[Write]] = {}
    for w in writes:
        by_partition.setdefault(w.partition, []).append(w)
    return [group[start:start + size] for group in by_partition.values() for start in range(0, len(group), size)]


def change_log_entries(logged: Iterable[tuple[str, int]]) -> list[tuple[str, int, list[str]]]:
    """(change-log key, LSN) pairs of one table as `changed_rows` entries: (its id, '#' and a random
    hex; the newest LSN; up to LOG_GROUP_KEYS keys, in key order)."""
    ordered = sorted(logged)
    return [(f"#{uuid.uuid4().hex}", max(lsn for _, lsn in group), [key for key, _ in group])
            for group in (ordered[i:i + LOG_GROUP_KEYS] for i in range(0, len(ordered), LOG_GROUP_KEYS))]


# --------------------------------------------------------------------------- binding: the driver's bytes, sooner


def decimal_bytes(value: Any) -> bytes:
    """What the Cassandra driver's DecimalType.serialize makes of `value` (a Decimal, or what Decimal()
    takes), byte for byte: the scale as a 4-byte signed int, then the unscaled value as the shortest
    two's-complement big-endian integer. The driver's own builds the unscaled value from the digits'
    text and packs it a byte at a time in Python: 15 us a decimal, and a trade has three, a kline six
    (bench/RESULTS.md, "Binding"). A NaN or an infinity is refused, as by the driver.

    A value written in plain notation (its text, or str() of its Decimal: '-64369.75000000') is
    read from that text by int(), without Decimal's digit tuple: 1.3 us rather than 2.8 for a
    trade's price (bench/RESULTS.md, "The task's own CPU")."""
    text = value if isinstance(value, str) else str(value) if isinstance(value, Decimal) else None
    if text is not None:
        negative = text[:1] == "-"
        whole, dot, fraction = (text[1:] if negative else text).partition(".")
        # ASCII digits only: int() would also take spaces, '_' and other scripts' digits; and no more
        # than int() reads from text (Python's limit on digits, 4,300 by default)
        if whole.isdigit() and whole.isascii() and (not dot or (fraction.isdigit() and fraction.isascii())) \
                and len(whole) + len(fraction) <= _INT_DIGITS:
            unscaled = int(whole + fraction)
            return _scaled_bytes(len(fraction), -unscaled if negative else unscaled)
    sign, digits, exponent = (value if isinstance(value, Decimal) else Decimal(value)).as_tuple()
    if not isinstance(exponent, int):
        raise TypeError(f"Invalid type for Decimal value: {value!r}")
    unscaled = 0
    for digit in digits:
        unscaled = unscaled * 10 + digit
    return _scaled_bytes(-exponent, -unscaled if sign else unscaled)


def _scaled_bytes(scale: int, unscaled: int) -> bytes:
    """A decimal as Cassandra's `decimal` type holds it: the scale, then the unscaled value."""
    return _INT32.pack(scale) + unscaled.to_bytes((unscaled if unscaled >= 0 else ~unscaled).bit_length() // 8 + 1,
                                                  "big", signed=True)


def timestamp_bytes(value: Any) -> bytes | None:
    """What the driver's DateType.serialize makes of an aware datetime at or after the epoch (its
    milliseconds as an 8-byte signed int), from integers instead of a time tuple and floats; None
    for anything else, which the driver's own serializer then takes."""
    if not isinstance(value, datetime) or value.tzinfo is None:
        return None
    delta = value - EPOCH
    if delta.days < 0:
        return None
    return _INT64.pack((delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000)


_INT32 = struct.Struct(">i")
_INT_DIGITS = 4000
_INT64 = struct.Struct(">q")


@functools.cache
def _quick_types() -> dict[type, type]:
    """The driver's decimal and timestamp types, each with a serializer giving the same bytes sooner;
    the leading underscore keeps them out of the driver's type registry."""
    from cassandra.cqltypes import DateType, DecimalType

    class _QuickDecimal(DecimalType):
        @staticmethod
        def serialize(dec: Any, protocol_version: int) -> bytes:
            return decimal_bytes(dec)

    class _QuickTimestamp(DateType):
        @staticmethod
        def serialize(v: Any, protocol_version: int) -> bytes:
            out = timestamp_bytes(v)
            return DateType.serialize(v, protocol_version) if out is None else out

    return {DecimalType: _QuickDecimal, DateType: _QuickTimestamp}


def quick_binding(prepared: Any) -> Any:
    """`prepared` binding its decimals and timestamps through _quick_types (the bytes are the driver's)."""
    quick = _quick_types()
    prepared.column_metadata = [m._replace(type=quick.get(m.type, m.type)) for m in prepared.column_metadata]
    return prepared


class Binder:
    """Binds a tuple or list of values, one per column, to one prepared statement as its `bind` does:
    the same bytes and routing key, at about 60 % of the cost (bench/RESULTS.md, "The task's own
    CPU"). The driver's bind builds a column descriptor, a namedtuple, for every value it
    serializes, to ask a column encryption policy about it. A statement with such a policy, and
    values in a dict, of another length or with UNSET_VALUE, are left to the driver's own bind."""

    def __init__(self, prepared: Any) -> None:
        self.prepared = prepared
        self.protocol_version = prepared.protocol_version
        self.columns = [(m.name, m.type.serialize) for m in prepared.column_metadata]

    def bind(self, values: Sequence[Any]) -> Any:
        """A BoundStatement of `values`, ready for BatchStatement.add."""
        from cassandra.query import UNSET_VALUE, BoundStatement

        if type(values) not in (tuple, list) or len(values) != len(self.columns) \
                or self.prepared.column_encryption_policy is not None:
            return self.prepared.bind(values)
        out = []
        for value, (name, serialize) in zip(values, self.columns, strict=True):
            if value is None:
                out.append(None)
                continue
            if value is UNSET_VALUE:
                return self.prepared.bind(values)
            try:
                out.append(serialize(value, self.protocol_version))
            except (TypeError, struct.error) as exc:
                raise TypeError(f'Received an argument of invalid type for column "{name}": {value!r} ({exc})') from exc
        bound = BoundStatement(self.prepared)
        bound.raw_values = values
        bound.values = out
        return bound


# --------------------------------------------------------------------------- the writer


# the Cassandra driver's errors that mean no replica could be reached or answered in time: a node,
# or the whole cluster, down or restarting
_UNREACHABLE = ("NoHostAvailable", "OperationTimedOut", "Unavailable", "WriteTimeout", "ReadTimeout",
                "ConnectionShutdown", "ConnectionException")


def cassandra_unreachable(exc: BaseException) -> bool:
    """Whether a failure means Cassandra could not be reached: raised on the driver (the exception
    or one it came from), or relayed from a Spark task, where only its text survives."""
    seen: BaseException | None = exc
    while seen is not None:
        if type(seen).__name__ in _UNREACHABLE:
            return True
        seen = seen.__cause__ or seen.__context__
    # as a Spark task's failure reaches the driver: a traceback's last line, or a repr in a message
    text = str(exc)
    return any(f"cassandra.cluster.{name}" in text or f"cassandra.{name}" in text or f"first: {name}(" in text
               for name in _UNREACHABLE)


class CassandraWriter:
    """The one thing that writes to Cassandra: holds a session and every prepared statement of the job."""

    # statements per single-partition unlogged batch (bench/bench_writer.py compares sizes)
    batch_size = BATCH_SIZE

    def __init__(self, session: Any, keyspace: str, shutdown: Callable[[], None] | None = None) -> None:
        self.session = session
        self.keyspace = keyspace
        self._shutdown = shutdown
        self._prepared: dict[str, Any] = {}
        # a Binder per prepared statement written in batches, by the statement's id()
        self._binders: dict[int, Binder] = {}
        # a table's upsert and delete (_for_table), by (kind, table name)
        self._by_table: dict[tuple[str, str], Any] = {}
        self._retention: dict[str, int | None] | None = None
        self._retention_read_at = 0.0

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
        """When a write happens (cdc_written_at, recorded_at, TTLs, the change-log minute, progress), in ms."""
        now = datetime.now(UTC)
        return now.replace(microsecond=now.microsecond // 1000 * 1000)

    def monotonic(self) -> float:
        """The clock the retention cache ages by (never jumps with the wall clock)."""
        return time.monotonic()

    # ---------------------------------------------------------------- statements

    def _prepare(self, cql: str) -> Any:
        if cql not in self._prepared:
            from cassandra import ConsistencyLevel

            stmt = quick_binding(self.session.prepare(cql))
            stmt.consistency_level = ConsistencyLevel.LOCAL_QUORUM
            self._prepared[cql] = stmt
        return self._prepared[cql]

    def _for_table(self, kind: str, table: Table, cql: Callable[[Table], str]) -> Any:
        """A table's statement of `kind`, prepared from `cql(table)` once: looked up per change without
        building its CQL again."""
        key = (kind, table.name)
        if key not in self._by_table:
            self._by_table[key] = self._prepare(cql(table))
        return self._by_table[key]

    def upsert_statement(self, table: Table) -> Any:
        """The row (with its bucket) and its CDC columns; the change's write time and TTL last."""
        return self._for_table("upsert", table, self._upsert_cql)

    def _upsert_cql(self, table: Table) -> str:
        columns = [*written_columns(table), "cdc_op", "cdc_source_ts", "cdc_lsn", "cdc_written_at"]
        quoted = ", ".join(f'"{c}"' for c in columns)
        marks = ", ".join("?" * len(columns))
        return (f'INSERT INTO "{self.keyspace}"."{table.name}" ({quoted}) VALUES ({marks}) '
                "USING TIMESTAMP ? AND TTL ?")

    def delete_statement(self, table: Table) -> Any:
        """The key's row (bucket included), the change's write time first."""
        return self._for_table("delete", table, self._delete_cql)

    def _delete_cql(self, table: Table) -> str:
        where = " AND ".join(f'"{k}" = ?' for k in table.cassandra_key)
        return f'DELETE FROM "{self.keyspace}"."{table.name}" USING TIMESTAMP ? WHERE {where}'

    def change_log_statement(self) -> Any:
        return self._prepare(f'INSERT INTO "{self.keyspace}".changed_rows (table_name, bucket, key, cdc_lsn, keys) '
                             "VALUES (?, ?, ?, ?, ?)")

    def dead_letter_statement(self) -> Any:
        return self._prepare(f'INSERT INTO "{self.keyspace}".dead_letters (topic, partition, offset, raw_value, '
                             "error, recorded_at) VALUES (?, ?, ?, ?, ?, ?)")

    # ---------------------------------------------------------------- what a batch shares, read by the driver

    def retention(self) -> dict[str, int | None]:
        """keep_seconds per table from `sink_retention` (a table without a row, or with null, is kept
        for ever), read again when the last read is RETENTION_REFRESH_SECONDS old."""
        clock = self.monotonic()
        if self._retention is None or clock - self._retention_read_at >= RETENTION_REFRESH_SECONDS:
            stmt = self._prepare(f'SELECT table_name, keep_seconds FROM "{self.keyspace}".sink_retention')
            self._retention = {r.table_name: r.keep_seconds for r in self.session.execute(stmt)}
            self._retention_read_at = clock
        return self._retention

    def record_windows(self, topic: str, markers: Sequence[tuple[int, int]]) -> None:
        """The signal table's events of a batch, (LSN, commit µs) each, into `snapshot_windows`:
        written before any row of the batch, so the batch's incremental reads find their window."""
        if not markers:
            return
        stmt = self._prepare(f'INSERT INTO "{self.keyspace}".snapshot_windows (topic, lsn, commit_us, recorded_at) '
                             "VALUES (?, ?, ?, ?)")
        now = self.now()
        for f in [self.session.execute_async(stmt, (topic, lsn, commit, now)) for lsn, commit in markers]:
            f.result()

    def window_times(self, topic: str, lsns: Iterable[int]) -> dict[int, int]:
        """Per LSN of an incremental read, the commit time of the newest signal-table event at or
        below it (include.cdc.events.window_time, read from `snapshot_windows`); LSNs with none
        are left out."""
        stmt = self._prepare(f'SELECT lsn, commit_us FROM "{self.keyspace}".snapshot_windows WHERE topic = ? '
                             "AND lsn <= ? LIMIT 1")
        out = {}
        for lsn in sorted(set(lsns)):
            row = next(iter(self.session.execute(stmt, (topic, lsn))), None)
            if row is not None:
                out[lsn] = row.commit_us
        return out

    def last_changelog_bucket(self, query_name: str) -> datetime | None:
        """The change-log minute of the query's last finished micro-batch (`stream_position`), if any."""
        stmt = self._prepare(f'SELECT changelog_bucket FROM "{self.keyspace}".stream_position WHERE query_name = ?')
        row = next(iter(self.session.execute(stmt, (query_name,))), None)
        return as_utc(row.changelog_bucket) if row is not None and row.changelog_bucket is not None else None

    # ---------------------------------------------------------------- one batch of changes

    def plan(self, changes: Iterable[Change], keep_seconds: Mapping[str, int | None],
             now: datetime) -> tuple[list[Planned], int]:
        """(the changes inside Cassandra's retention window, with their values and TTL; how many are
        outside it). A change outside it, upsert or delete, is not written: the row has expired or
        would at once, and a delete would only leave a tombstone."""
        planned, skipped = [], 0
        for change in changes:
            table = change.table
            row = cql_row(table, change.row) if change.converted is None else change.converted
            ttl = ttl_of(row[table.time_column], keep_seconds.get(table.name), now)
            if ttl is None:
                skipped += 1
            else:
                planned.append(Planned(change, row, ttl))
        return planned, skipped

    def data_writes(self, planned: Iterable[Planned], written_at: datetime) -> list[Write]:
        """Upserts (with their TTL) and deletes, each with the change's write time."""
        out = []
        for change, row, ttl in planned:
            table = change.table
            partition = (table.name, *[row[k] for k in table.cassandra_partition])
            if change.op == DELETE:
                key = tuple(row[k] for k in table.cassandra_key)
                out.append(Write(partition, self.delete_statement(table), (change.write_time, *key)))
            else:
                values = (*row.values(), change.op, cql_value("timestamptz", change.source_ts), change.lsn,
                          written_at, change.write_time, ttl)
                out.append(Write(partition, self.upsert_statement(table), values))
        return out

    def log_writes(self, planned: Iterable[Planned], bucket: datetime) -> list[Write]:
        """The keys of the changes written (change_key), in `changed_rows` entries of the minute
        `bucket` (the batch's), up to LOG_GROUP_KEYS keys of one table each (`keys`, in key order,
        so that the same changes make the same groups), with the newest LSN among them. An entry's
        own `key` is '#' and a random id: it never replaces another entry, of this batch or of a
        replay (a replay only logs its keys again)."""
        stmt = self.change_log_statement()
        by_table: dict[str, list[tuple[str, int]]] = {}
        for p in planned:
            by_table.setdefault(p.change.table.name, []).append(
                (change_key(p.change.table, p.change.row, p.row), p.change.lsn))
        return [Write((name, bucket), stmt, (name, bucket, *entry))
                for name, logged in by_table.items() for entry in change_log_entries(logged)]

    def write(self, batch: BatchContext, changes: Sequence[Change],
              dead_letters: Sequence[DeadLetter] = ()) -> Written:
        """Dead letters, then the rows inside the retention window, then their change log under the
        batch's minute: a logged key is always already applied. Raises if any write failed (the batch
        is then replayed, which the write times make safe)."""
        now = self.now()
        if dead_letters:
            stmt = self.dead_letter_statement()
            for d in dead_letters:
                self.session.execute(stmt, (d.topic, d.partition, d.offset, d.raw_value, d.error, now))
                log.warning("dead letter %s[%d]@%d: %s", d.topic, d.partition, d.offset, d.error)
        planned, skipped = self.plan(changes, batch.keep_seconds, now)
        self._send(self.data_writes(planned, now), "upsert/delete", "the sink tables")
        self._send(self.log_writes(planned, batch.changelog_bucket), "change log", "changed_rows")
        deletes = sum(1 for p in planned if p.change.op == DELETE)
        return Written(len(planned) - deletes, deletes, skipped)

    def _send(self, writes: list[Write], what: str, target: str) -> None:
        """`writes` as single-partition unlogged batches (`partition_groups`), CONCURRENCY in flight."""
        from cassandra import ConsistencyLevel
        from cassandra.concurrent import execute_concurrent
        from cassandra.query import BatchStatement, BatchType

        batches = []
        for group in partition_groups(writes, self.batch_size):
            batch = BatchStatement(batch_type=BatchType.UNLOGGED, consistency_level=ConsistencyLevel.LOCAL_QUORUM)
            for w in group:
                binder = self._binders.get(id(w.statement))
                if binder is None:
                    binder = self._binders[id(w.statement)] = Binder(w.statement)
                batch.add(binder.bind(w.values))
            batches.append((batch, None))
        results = execute_concurrent(self.session, batches, concurrency=CONCURRENCY, raise_on_first_error=False)
        failed = [r.result_or_exc for r in results if not r.success]
        if failed:
            # chained to the first failure, so that cassandra_unreachable sees what it was
            raise RuntimeError(f"{len(failed)} {what} write(s) to {target} failed; first: {failed[0]!r}") from failed[0]

    # ---------------------------------------------------------------- the stream's progress

    def record_progress(self, query_name: str, batch_id: int, input_rows: int, processing_ms: int,
                        newest_source_ts: datetime | None, offsets: Sequence[Offset], changelog_bucket: datetime,
                        driver_host: str, driver_pid: int, now: datetime) -> None:
        """After a batch is applied: per topic partition the next offset to read (pipeline_health's lag
        check) with the newest source commit applied from it; then one stream_progress row; then the
        query's stream_position, last, since the bridge reads the change log up to its bucket."""
        ks = self.keyspace
        # the offset is the write time: a replayed or slower stream can never move it backwards
        with_ts = self._prepare(
            f'INSERT INTO "{ks}".stream_offsets (query_name, topic, partition, next_offset, newest_source_ts, '
            "updated_at) VALUES (?, ?, ?, ?, ?, ?) USING TIMESTAMP ?")
        without_ts = self._prepare(
            f'INSERT INTO "{ks}".stream_offsets (query_name, topic, partition, next_offset, updated_at) '
            "VALUES (?, ?, ?, ?, ?) USING TIMESTAMP ?")
        progress = self._prepare(
            f'INSERT INTO "{ks}".stream_progress (query_name, hour, finished_at, batch_id, input_rows, '
            "processing_ms, newest_source_ts, changelog_bucket, driver_host, driver_pid) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
        position = self._prepare(
            f'INSERT INTO "{ks}".stream_position (query_name, batch_id, finished_at, changelog_bucket, input_rows, '
            "processing_ms, newest_source_ts, driver_host, driver_pid) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
        futures = []
        for o in offsets:
            if o.newest_source_ts is not None:
                args = (query_name, o.topic, o.partition, o.next_offset, o.newest_source_ts, now, o.next_offset)
                futures.append(self.session.execute_async(with_ts, args))
            else:
                args = (query_name, o.topic, o.partition, o.next_offset, now, o.next_offset)
                futures.append(self.session.execute_async(without_ts, args))
        for f in futures:
            f.result()
        hour = now.replace(minute=0, second=0, microsecond=0)
        self.session.execute_async(progress, (query_name, hour, now, batch_id, input_rows, processing_ms,
                                              newest_source_ts, changelog_bucket, driver_host, driver_pid)).result()
        self.session.execute_async(position, (query_name, batch_id, now, changelog_bucket, input_rows, processing_ms,
                                              newest_source_ts, driver_host, driver_pid)).result()
