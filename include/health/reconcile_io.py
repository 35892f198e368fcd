"""The reconciliation's reads, waits, repairs and records: the three stores in, a verdict out.

One run (`run`), in this order, so that the lag rule of include/health/reconcile.py holds:
1. the source's sums per slice, in SQL (`source_sums`), for every bucket in scope; then the
   source's WAL position;
2. the fence: Debezium has confirmed that position, and the stream has applied every Kafka offset
   there was once it had (`wait_for_stream`); if not within the timeout, nothing else is compared;
3. Cassandra's sums, partition by partition (`cassandra_sums`, hashed in Python); the bridge's, in
   SQL, and the keys the stream logged since the bridge's watermark (`bridge_pending`);
4. the source again, its row counts and xmin sums only: the slices that changed meanwhile are in
   flight;
5. the comparison, the repairs (`repair`), the records in `pipeline_health.reconciliation`
   (one row per bucket and store that differs, what was done about it, and when it compares
   equal again) and `pipeline_health.reconciliation_runs` (one row per run: what was compared,
   the run and CPU time).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from include.bridge.plan import minutes
from include.bridge.reads import CassandraReads
from include.bridge.state import bridge_states
from include.cdc import signals
from include.cdc.events import decode_key
from include.health import reconcile as rc
from include.health.canonical import SEP, row_converters, row_hash, sql_row_hash, text_hash
from include.health.checks import CheckResult, kafka_end_offsets, processed_offsets
from include.names import BRIDGE_SCHEMA, HEALTH_SCHEMA, SIGNAL_TABLE, SLOT, SOURCE_SCHEMA, topic_for
from include.partitions import prefix_ranges
from include.retention.policy import Retention
from include.tables import TABLES, Table
from include.times import as_utc

log = logging.getLogger(__name__)

CHECK = "reconciliation"
# changed-row keys read at a time to find the bridge's pending slices
PENDING_CHUNK = 20_000
# more pending keys than this for one table: its bridge copy is treated as behind altogether
MAX_PENDING = 200_000
# open differences looked at again in one run, besides the buckets in scope
MAX_OPEN_RECHECKS = 200
# a replica's failure code in a ReadFailure's error_code_map: the read scanned more tombstones than
# tombstone_failure_threshold (the native protocol's READ_TOO_MANY_TOMBSTONES)
TOMBSTONE_OVERWHELM = 0x0001


# --------------------------------------------------------------------------- sums per slice


def sums_sql(table: Table, schema: str, content: bool = True) -> str:
    """Per prefix and minute of the time column, for rows with the time column in [%s, %s) (one
    pass of the table's time index): the rows, the sum of their hashes (`content`) and the sum of
    their xmin. The xmin sum changes with any insert, update or delete in the minute: the second
    read of the source needs only it and the count, not the hashes (a third of the SQL's cost)."""
    prefix = ", ".join(f'"{c}"' for c in table.cassandra_partition_key)
    time_col = f'"{table.time_column}"'
    sums = f"sum({sql_row_hash(table)}), " if content else ""
    return (f"SELECT {prefix}, floor(extract(epoch FROM {time_col}) / 60)::bigint AS minute, count(*), "
            f"{sums}sum(xmin::text::bigint) FROM \"{schema}\".\"{table.name}\" "
            f"WHERE {time_col} >= %s AND {time_col} < %s GROUP BY {prefix}, minute")


Marks = dict[rc.SliceKey, tuple[int, int]]


def source_sums(pg: Any, table: Table, schema: str, start: datetime, end: datetime,
                into: dict[rc.SliceKey, tuple[int, int]] | None = None,
                marks: Marks | None = None) -> dict[rc.SliceKey, tuple[int, int]]:
    """sums_sql over [start, end) of <schema>.<table>: (rows, sum of hashes) per slice added to
    `into`, and (rows, sum of xmin) to `marks` if given; nothing if the table is missing."""
    out = {} if into is None else into
    n = len(table.cassandra_partition_key)
    with pg.cursor() as cur:
        cur.execute("SELECT to_regclass(%s)", (f'"{schema}"."{table.name}"',))
        if cur.fetchone()[0] is not None:
            cur.execute(sums_sql(table, schema), (start, end))
            for row in cur.fetchall():
                key = (tuple(row[:n]), int(row[n]))
                out[key] = (int(row[n + 1]), int(row[n + 2]))
                if marks is not None:
                    marks[key] = (int(row[n + 1]), int(row[n + 3]))
    pg.rollback()
    return out


def change_marks(pg: Any, table: Table, schema: str, start: datetime, end: datetime, into: Marks) -> Marks:
    """(rows, sum of xmin) per slice of <schema>.<table> over [start, end): compared with the marks
    of the first read, they tell the slices that changed in between."""
    n = len(table.cassandra_partition_key)
    with pg.cursor() as cur:
        cur.execute("SELECT to_regclass(%s)", (f'"{schema}"."{table.name}"',))
        if cur.fetchone()[0] is not None:
            cur.execute(sums_sql(table, schema, content=False), (start, end))
            for row in cur.fetchall():
                into[(tuple(row[:n]), int(row[n]))] = (int(row[n + 1]), int(row[n + 2]))
    pg.rollback()
    return into


def _too_many_tombstones(exc: Exception) -> bool:
    """A failed read (ReadFailure) Cassandra aborted because it scanned more than
    tombstone_failure_threshold tombstones: the replicas' failure codes (protocol v5), or the
    message naming it."""
    codes = getattr(exc, "error_code_map", None) or {}
    return TOMBSTONE_OVERWHELM in codes.values() or "TOMBSTONES" in str(exc)


def cassandra_sums(reads: CassandraReads, table: Table, partitions: Sequence[tuple[rc.Prefix, datetime]],
                   into: dict[rc.SliceKey, tuple[int, int]],
                   unreadable: list[tuple[rc.Prefix, datetime]] | None = None) -> int:
    """Cassandra's sums for `partitions` (prefix, bucket), read partition by partition (paged, a
    few partitions in flight), each row hashed here; returns the rows read. A row whose time column
    is not in its partition's bucket (set so outside the pipeline) counts in the bucket's first
    minute: the bucket it is in differs, and its repair reaches it.

    A partition Cassandra refuses to read for its tombstones (more than tombstone_failure_threshold,
    as a mass delete of one symbol's hour leaves until a compaction purges them, gc_grace_seconds
    later) is added to `unreadable`, with none of its rows summed, and the others are read on; with
    no `unreadable` given, the refusal is raised."""
    from cassandra import ReadFailure

    convs = row_converters(table)
    names = table.column_names
    prefix_at = [names.index(c) for c in table.cassandra_partition_key]
    time_at = names.index(table.time_column)
    where = " AND ".join(f'"{k}" = ?' for k in table.cassandra_partition)
    cols = ", ".join(f'"{c}"' for c in (*names, "bucket"))
    stmt = reads.prepare(f'SELECT {cols} FROM "{reads.keyspace}"."{table.name}" WHERE {where}')
    span = table.bucket_span
    rows = 0
    for (*prefix, bucket_key), found in reads.paged_each(stmt, [(*p, b) for p, b in partitions]):
        part: dict[rc.SliceKey, tuple[int, int]] = {}
        try:
            for row in found:
                *data, bucket = row
                bucket = as_utc(bucket)
                moment = data[time_at]
                inside = moment is not None and bucket <= as_utc(moment) < bucket + span
                key = (tuple(data[i] for i in prefix_at), rc.slice_of(moment if inside else bucket))
                count, total = part.get(key, (0, 0))
                part[key] = (count + 1, total + row_hash(table, data, convs))
        except ReadFailure as exc:
            if unreadable is None or not _too_many_tombstones(exc):
                raise
            log.warning("reconciliation: %s %s %s not read: Cassandra scanned too many tombstones (%s)", table.name,
                        rc.prefix_text(tuple(prefix)), bucket_key, str(exc).splitlines()[0][:200])
            unreadable.append((tuple(prefix), bucket_key))
            continue
        for key, (count, total) in part.items():
            had_count, had_total = into.get(key, (0, 0))
            into[key] = (had_count + count, had_total + total)
            rows += count
    return rows


# --------------------------------------------------------------------------- the fence


def current_lsn(pg: Any) -> str:
    with pg.cursor() as cur:
        cur.execute("SELECT pg_current_wal_lsn()::text")
        lsn = cur.fetchone()[0]
    pg.rollback()
    return str(lsn)


def wait_for_stream(pg: Any, admin: Any, session: Any, keyspace: str, lsn: str, tables: Iterable[str],
                    timeout: float, sleep: Callable[[float], None] = time.sleep,
                    clock: Callable[[], float] = time.monotonic) -> str | None:
    """None once everything committed before `lsn` is in Cassandra: Debezium confirmed the slot
    past it (so its events are in Kafka), then the stream applied every offset of the tables'
    topics that existed at that moment. Otherwise, after `timeout` seconds, what is behind."""
    deadline = clock() + timeout
    while True:
        with pg.cursor() as cur:
            cur.execute("SELECT confirmed_flush_lsn >= %s::pg_lsn, confirmed_flush_lsn::text, wal_status "
                        "FROM pg_replication_slots WHERE slot_name = %s", (lsn, SLOT))
            row = cur.fetchone()
        pg.rollback()
        if row is None:
            return f"replication slot {SLOT} does not exist: nothing reaches Cassandra"
        if row[0]:
            break
        if clock() >= deadline:
            return (f"Debezium has not confirmed WAL position {lsn} within {timeout:.0f}s (slot at {row[1]}, "
                    f"wal_status {row[2]}): the connector is behind or stopped")
        sleep(1)
    topics = {topic_for(t) for t in tables}
    end = {tp: off for tp, off in kafka_end_offsets(admin).items() if tp[0] in topics}
    while True:
        done = processed_offsets(session, keyspace)
        behind = {tp: off - (done[tp].next_offset if tp in done else 0) for tp, off in end.items()}
        behind = {tp: n for tp, n in behind.items() if n > 0}
        if not behind:
            return None
        if clock() >= deadline:
            what = ", ".join(f"{t.removeprefix('binance.binance.')}[{p}] {n}" for (t, p), n in sorted(behind.items()))
            return f"the stream has not applied {sum(behind.values())} event(s) within {timeout:.0f}s ({what})"
        sleep(0.5)


# --------------------------------------------------------------------------- the bridge's pending keys


def bridge_pending(reads: CassandraReads, pg: Any, table: Table, since: datetime, until: datetime
                   ) -> tuple[set[rc.SliceKey], set[tuple[rc.Prefix, datetime]]] | None:
    """The slices holding a key the stream logged in changed_rows from minute `since` to `until`
    (the bridge's watermark to the stream's position): the bridge may not have copied them yet. For
    a table whose time column is not in Cassandra's key (trades), each key's time is looked up in
    the source and the bridge; a key found in neither marks its whole bucket. None: too many keys."""
    keyed = list(table.cassandra_key)
    prefix_n = len(table.cassandra_partition_key)
    slices: set[rc.SliceKey] = set()
    buckets: set[tuple[rc.Prefix, datetime]] = set()
    total = 0
    for chunk in reads.changed_keys(table.name, minutes(since, until), PENDING_CHUNK):
        total += len(chunk)
        if total > MAX_PENDING:
            return None
        decoded = [decode_key(table, k) for k in chunk]
        if table.time_column in keyed:
            at = keyed.index(table.time_column)
            slices |= {(tuple(k[:prefix_n]), rc.slice_of(k[at])) for k in decoded}
            continue
        times = _times_of(pg, table, [tuple(k[keyed.index(c)] for c in table.row_key) for k in decoded])
        for k in decoded:
            found = times.get(tuple(k[keyed.index(c)] for c in table.row_key))
            if found:
                slices |= {(tuple(k[:prefix_n]), rc.slice_of(t)) for t in found}
            else:
                buckets.add((tuple(k[:prefix_n]), as_utc(k[prefix_n])))
    return slices, buckets


_ARRAY = {"text": "text[]", "bigint": "bigint[]", "numeric": "numeric[]", "timestamptz": "timestamptz[]",
          "boolean": "boolean[]"}


def _times_of(pg: Any, table: Table, keys: list[tuple[Any, ...]]) -> dict[tuple[Any, ...], list[datetime]]:
    """The time column of the rows with these row keys, in the source and in the bridge."""
    out: dict[tuple[Any, ...], list[datetime]] = {}
    if not keys:
        return out
    cols = list(table.row_key)
    listed = ", ".join(f'"{c}"' for c in cols)
    unnest = ", ".join(f"%s::{_ARRAY[table.column(c).type]}" for c in cols)
    columns = [list(col) for col in zip(*keys, strict=True)]
    with pg.cursor() as cur:
        for schema in (SOURCE_SCHEMA, BRIDGE_SCHEMA):
            cur.execute(f'SELECT {listed}, "{table.time_column}" FROM "{schema}"."{table.name}" '
                        f"WHERE ({listed}) IN (SELECT * FROM unnest({unnest}))", columns)
            for row in cur.fetchall():
                out.setdefault(tuple(row[:-1]), []).append(row[-1])
    pg.rollback()
    return out


# --------------------------------------------------------------------------- repairs


def source_clock_us(pg: Any) -> int:
    """The source database's clock in µs: the time base of every write timestamp in Cassandra."""
    with pg.cursor() as cur:
        cur.execute("SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint")
        now_us = cur.fetchone()[0]
    pg.rollback()
    return int(now_us)


def _pg_row_hashes(pg: Any, table: Table, schema: str, repair: rc.Repair) -> dict[tuple[Any, ...], int]:
    keys = ", ".join(f'"{c}"' for c in table.row_key)
    where = " AND ".join(f'"{c}" = %s' for c in table.cassandra_partition_key)
    time_col = f'"{table.time_column}"'
    with pg.cursor() as cur:
        cur.execute(f'SELECT {keys}, {sql_row_hash(table)} FROM "{schema}"."{table.name}" WHERE {where} '
                    f"AND {time_col} >= %s AND {time_col} < %s", (*repair.prefix, repair.start, repair.end))
        rows = cur.fetchall()
    pg.rollback()
    return {tuple(_norm(v) for v in r[:-1]): int(r[-1]) for r in rows}


def _norm(value: Any) -> Any:
    """Key values compared across drivers: times as aware UTC to the millisecond (Cassandra's)."""
    if isinstance(value, datetime):
        moment = as_utc(value)
        return moment.replace(microsecond=moment.microsecond // 1000 * 1000)
    return value


def _cassandra_rows(reads: CassandraReads, table: Table, repair: rc.Repair) -> dict[tuple[Any, ...], tuple[int, tuple]]:
    """Cassandra's rows of the repair's partition with the time column in its range: row key ->
    (hash, Cassandra key)."""
    convs = row_converters(table)
    names = table.column_names
    out = {}
    for row in reads.partition_rows(table, [(*repair.prefix, repair.bucket)]):
        values = tuple(row)
        moment = values[names.index(table.time_column)]
        if moment is not None and not repair.start <= as_utc(moment) < repair.end:
            continue
        key = tuple(_norm(values[names.index(c)]) for c in table.row_key)
        full = tuple(repair.bucket if c == "bucket" else values[names.index(c)] for c in table.cassandra_key)
        out[key] = (text_hash(SEP.join(conv(v) for conv, v in zip(convs, values, strict=True))), full)
    return out


def _still_absent(pg: Any, table: Table, keys: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The row keys that the source does not hold now."""
    if not keys:
        return []
    cols = list(table.row_key)
    listed = ", ".join(f'"{c}"' for c in cols)
    unnest = ", ".join(f"%s::{_ARRAY[table.column(c).type]}" for c in cols)
    with pg.cursor() as cur:
        cur.execute(f'SELECT {listed} FROM "{SOURCE_SCHEMA}"."{table.name}" WHERE ({listed}) IN '
                    f"(SELECT * FROM unnest({unnest}))", [list(c) for c in zip(*keys, strict=True)])
        present = {tuple(_norm(v) for v in r) for r in cur.fetchall()}
    pg.rollback()
    return [k for k in keys if k not in present]


@dataclass
class RepairDone:
    """What one repair did."""

    snapshot: bool = False
    deleted_cassandra: int = 0
    deleted_bridge: int = 0
    signal_ids: list[str] = field(default_factory=list)

    def action(self) -> str:
        parts = []
        if self.snapshot:
            parts.append("incremental snapshot of its differing minutes requested from Debezium (signal "
                         f"{', '.join(self.signal_ids)})")
        if self.deleted_cassandra:
            parts.append(f"{self.deleted_cassandra} row(s) the source does not hold deleted from Cassandra")
        if self.deleted_bridge:
            parts.append(f"{self.deleted_bridge} row(s) the source does not hold deleted from the bridge")
        return "; ".join(parts) or "nothing left to repair by the time it was looked at row by row"


def repair(pg: Any, session: Any, keyspace: str, reads: CassandraReads, repairs: Sequence[rc.Repair],
           now: datetime) -> dict[tuple[str, rc.Prefix, datetime], RepairDone]:
    """Each bucket row by row over its differing minutes: rows missing or different downstream come
    back through an incremental snapshot of those minutes (one signal per table, include/cdc/
    signals.py); rows the source does not hold are deleted downstream, in Cassandra with a write
    timestamp of the source's clock now (taken before the source is checked again: a row inserted
    after it wins), in the bridge where the source still does not hold them."""
    from cassandra import ConsistencyLevel

    done: dict[tuple[str, rc.Prefix, datetime], RepairDone] = {}
    ranges: list[tuple[tuple[str, rc.Prefix, datetime], signals.RowRange]] = []
    for r in repairs:
        table = TABLES[r.table]
        outcome = done.setdefault((r.table, r.prefix, r.bucket), RepairDone())
        source = _pg_row_hashes(pg, table, SOURCE_SCHEMA, r)
        needs_snapshot = False
        if rc.CASSANDRA in r.stores:
            rows = _cassandra_rows(reads, table, r)
            missing, different, stray = rc.row_differences(source, {k: h for k, (h, _) in rows.items()})
            needs_snapshot |= bool(missing or different)
            if stray:
                at = source_clock_us(pg)
                gone = _still_absent(pg, table, stray)
                where = " AND ".join(f'"{c}" = ?' for c in table.cassandra_key)
                stmt = session.prepare(f'DELETE FROM "{keyspace}"."{table.name}" USING TIMESTAMP ? WHERE {where}')
                stmt.consistency_level = ConsistencyLevel.LOCAL_QUORUM
                for k in gone:
                    session.execute(stmt, (at, *rows[k][1]))
                outcome.deleted_cassandra += len(gone)
        if rc.BRIDGE in r.stores:
            copy = _pg_row_hashes(pg, table, BRIDGE_SCHEMA, r)
            missing, different, stray = rc.row_differences(source, copy)
            needs_snapshot |= bool(missing or different)
            outcome.deleted_bridge += _delete_bridge_strays(pg, table, stray)
        if needs_snapshot:
            ranges.append(((r.table, r.prefix, r.bucket), signals.RowRange(r.table, r.prefix, r.start, r.end)))
    by_table: dict[str, list[tuple[tuple[str, rc.Prefix, datetime], signals.RowRange]]] = {}
    for key, rows_range in ranges:
        by_table.setdefault(rows_range.table, []).append((key, rows_range))
    for table_name, items in by_table.items():
        ids = signals.insert(pg, signals.snapshot_signals([rr for _, rr in items]), signals.REPAIR, now)
        for key, _ in items:
            done[key].snapshot = True
            done[key].signal_ids = ids
        log.warning("reconciliation: incremental snapshot of %d bucket range(s) of %s requested (signal %s)",
                    len(items), table_name, ", ".join(ids))
    return done


def _delete_bridge_strays(pg: Any, table: Table, keys: list[tuple[Any, ...]]) -> int:
    """Delete bridge rows with these row keys where the source holds no such row (checked in the
    same statement)."""
    if not keys:
        return 0
    cols = list(table.row_key)
    listed = ", ".join(f'"{c}"' for c in cols)
    unnest = ", ".join(f"%s::{_ARRAY[table.column(c).type]}" for c in cols)
    same = " AND ".join(f's."{c}" = b."{c}"' for c in cols)
    with pg.cursor() as cur:
        cur.execute(f'DELETE FROM "{BRIDGE_SCHEMA}"."{table.name}" b WHERE ({listed}) IN '
                    f"(SELECT * FROM unnest({unnest})) "
                    f'AND NOT EXISTS (SELECT FROM "{SOURCE_SCHEMA}"."{table.name}" s WHERE {same})',
                    [list(c) for c in zip(*keys, strict=True)])
        deleted = int(cur.rowcount)
    pg.commit()
    return deleted


# --------------------------------------------------------------------------- state: cursor, open differences


def load_cursor(pg: Any) -> rc.Cursor:
    with pg.cursor() as cur:
        cur.execute(f"SELECT pass_started_at, table_name, bucket FROM {HEALTH_SCHEMA}.reconciliation_cursor "
                    "WHERE id = 1")
        row = cur.fetchone()
    pg.rollback()
    return rc.Cursor(*row) if row else rc.Cursor()


def save_cursor(cur: Any, cursor: rc.Cursor) -> None:
    cur.execute(f"INSERT INTO {HEALTH_SCHEMA}.reconciliation_cursor (id, pass_started_at, table_name, bucket, "
                "updated_at) VALUES (1, %s, %s, %s, now()) ON CONFLICT (id) DO UPDATE SET "
                "pass_started_at = EXCLUDED.pass_started_at, table_name = EXCLUDED.table_name, "
                "bucket = EXCLUDED.bucket, updated_at = now()",
                (cursor.pass_started_at, cursor.table, cursor.bucket))


def last_resnapshot(pg: Any) -> datetime | None:
    """When cdc_setup last asked for an incremental re-snapshot (its signal's id says), if ever."""
    with pg.cursor() as cur:
        cur.execute("SELECT to_regclass(%s)", (f'"{SOURCE_SCHEMA}"."{SIGNAL_TABLE}"',))
        if cur.fetchone()[0] is None:
            pg.rollback()
            return None
        cur.execute(f'SELECT id FROM "{SOURCE_SCHEMA}"."{SIGNAL_TABLE}" WHERE id LIKE %s',
                    (f"{signals.RESNAPSHOT}-%",))
        times = [t for (sid,) in cur.fetchall() if (t := signals.signal_time(sid)) is not None]
    pg.rollback()
    return max(times, default=None)


OpenKey = tuple[str, str, datetime, str]


def open_differences(pg: Any) -> dict[OpenKey, dict[str, Any]]:
    """The buckets and stores whose newest record is not 'resolved': (table, prefix, bucket, store) ->
    that record (checked_at, status, action)."""
    with pg.cursor() as cur:
        cur.execute(f"SELECT DISTINCT ON (table_name, prefix, bucket, store) table_name, prefix, bucket, store, "
                    f"checked_at, status, action FROM {HEALTH_SCHEMA}.reconciliation "
                    "ORDER BY table_name, prefix, bucket, store, checked_at DESC")
        rows = cur.fetchall()
    pg.rollback()
    return {(t, p, as_utc(b), s): {"checked_at": at, "status": st, "action": a}
            for t, p, b, s, at, st, a in rows if st != "resolved"}


def last_repairs(pg: Any, since: datetime) -> dict[tuple[str, str, datetime, str], datetime]:
    """(table, prefix text, bucket, store) -> when it was last repaired, since `since`."""
    with pg.cursor() as cur:
        cur.execute(f"SELECT table_name, prefix, bucket, store, max(checked_at) FROM {HEALTH_SCHEMA}.reconciliation "
                    "WHERE checked_at >= %s AND status = 'repairing' GROUP BY 1, 2, 3, 4", (since,))
        rows = cur.fetchall()
    pg.rollback()
    return {(t, p, as_utc(b), s): at for t, p, b, s, at in rows}


def record(pg: Any, at: datetime, rows: Sequence[tuple[rc.Difference, str, str, str | None]],
           resolved: Sequence[tuple[OpenKey, str]], run_row: Mapping[str, Any], cursor: rc.Cursor | None) -> None:
    """The run's differences (each with its status, action and signal ids), the earlier differences
    closed (each with why: equal again, or past retention), the run, and the full pass's cursor: one
    transaction."""
    with pg.cursor() as cur:
        for d, status, action, ids in rows:
            cur.execute(f"INSERT INTO {HEALTH_SCHEMA}.reconciliation (checked_at, table_name, prefix, bucket, store, "
                        "source_count, store_count, source_checksum, store_checksum, slices, status, action, "
                        "signal_ids) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
                        "ON CONFLICT DO NOTHING",
                        (at, d.table, rc.prefix_text(d.prefix), d.bucket, d.store, d.source_count, d.store_count,
                         d.source_checksum, d.store_checksum,
                         " ".join(f"{rc.slice_start(m):%H:%M}" for m in d.slices), status, action, ids))
        for (table, prefix, bucket, store), why in resolved:
            cur.execute(f"INSERT INTO {HEALTH_SCHEMA}.reconciliation (checked_at, table_name, prefix, bucket, store, "
                        "source_count, store_count, source_checksum, store_checksum, slices, status, action) "
                        "SELECT %s, table_name, prefix, bucket, store, source_count, source_count, source_checksum, "
                        "source_checksum, NULL, 'resolved', %s "
                        f"FROM {HEALTH_SCHEMA}.reconciliation "
                        "WHERE table_name = %s AND prefix = %s AND bucket = %s AND store = %s "
                        "ORDER BY checked_at DESC LIMIT 1 ON CONFLICT DO NOTHING",
                        (at, why, table, prefix, bucket, store))
        columns = list(run_row)
        cur.execute(f"INSERT INTO {HEALTH_SCHEMA}.reconciliation_runs ({', '.join(columns)}) VALUES "
                    f"({', '.join(['%s'] * len(columns))}) ON CONFLICT DO NOTHING", [run_row[c] for c in columns])
        if cursor is not None:
            save_cursor(cur, cursor)
    pg.commit()


# --------------------------------------------------------------------------- the run


@dataclass
class Scope:
    """What one run compares of one table: the source's time ranges and the partitions."""

    ranges: list[tuple[datetime, datetime]] = field(default_factory=list)
    partitions: list[tuple[rc.Prefix, datetime]] = field(default_factory=list)


def _partitions(table: Table, prefixes: Mapping[rc.Prefix, tuple[datetime, datetime]], bucket: datetime
                ) -> list[tuple[rc.Prefix, datetime]]:
    """The partitions of `bucket` that may hold rows: prefixes whose rows (source or bridge) span it."""
    end = bucket + table.bucket_span
    return [(p, bucket) for p, (old, new) in sorted(prefixes.items()) if as_utc(old) < end and as_utc(new) >= bucket]


def _horizons(table: str, policy: Retention, cassandra_keep: int | None, now: datetime) -> list[datetime | None]:
    cassandra = None if cassandra_keep is None else now - timedelta(seconds=cassandra_keep)
    return [policy.horizon(table, "binance", now), cassandra, policy.horizon(table, "bridge", now)]


def run(pg: Any, session: Any, keyspace: str, admin: Any, settings: rc.Settings, policy: Retention,
        now: datetime | None = None, sleep: Callable[[float], None] = time.sleep) -> CheckResult:
    """One reconciliation run (module docstring); stores what it found and returns the verdict."""
    started, cpu_started = time.monotonic(), time.process_time()
    now = now or rc.now_utc()
    reads = CassandraReads.open(session, keyspace)
    cursor = load_cursor(pg)
    full = rc.full_pass_due(cursor, settings, now, last_resnapshot(pg))
    if full and not cursor.running:
        cursor = rc.Cursor(now, next(iter(TABLES)), None)
        log.info("reconciliation: a full pass starts")

    # 1. the scope and the source's first read
    scopes: dict[str, Scope] = {}
    first: dict[str, dict[rc.SliceKey, tuple[int, int]]] = {}
    marks: dict[str, Marks] = {}
    prefixes: dict[str, dict[rc.Prefix, tuple[datetime, datetime]]] = {}
    full_ranges: dict[str, tuple[datetime, datetime] | None] = {}
    limits: dict[str, datetime | None] = {}
    for name, table in TABLES.items():
        with pg.cursor() as cur:
            prefixes[name] = prefix_ranges(cur, table, (SOURCE_SCHEMA, BRIDGE_SCHEMA))
        pg.rollback()
        limit = limits[name] = rc.first_comparable(table, _horizons(name, policy, reads.keep_seconds(name), now))
        recent = [b for b in rc.recent_buckets(table, now, settings.recent_buckets) if limit is None or b >= limit]
        scope = scopes[name] = Scope()
        first[name], marks[name] = {}, {}
        if recent:
            scope.ranges.append((min(recent), max(recent) + table.bucket_span))
            scope.partitions += [p for b in sorted(recent) for p in _partitions(table, prefixes[name], b)]
            source_sums(pg, table, SOURCE_SCHEMA, min(recent), max(recent) + table.bucket_span, first[name],
                        marks[name])
        oldest = min((as_utc(old) for old, _ in prefixes[name].values()), default=None)
        before_recent = (min(recent) if recent else table.bucket_of(now)) - table.bucket_span
        start = table.bucket_of(oldest) if oldest else None
        if start is not None and limit is not None:
            start = max(start, limit)
        full_ranges[name] = (start, before_recent) if start is not None and start <= before_recent else None
    rows_full = 0
    next_cursor: rc.Cursor | None = None
    full_note = ""
    if full:
        next_cursor = rc.Cursor(cursor.pass_started_at, None, None)
        for name, bucket in rc.full_pass_buckets(full_ranges, cursor):
            if rows_full >= settings.full_rows_per_run:
                next_cursor = rc.Cursor(cursor.pass_started_at, name, bucket)
                break
            table = TABLES[name]
            before = sum(c for c, _ in first[name].values())
            source_sums(pg, table, SOURCE_SCHEMA, bucket, bucket + table.bucket_span, first[name], marks[name])
            rows_full += sum(c for c, _ in first[name].values()) - before
            scopes[name].ranges.append((bucket, bucket + table.bucket_span))
            scopes[name].partitions += _partitions(table, prefixes[name], bucket)
        full_note = (f"; full pass (started {as_utc(cursor.pass_started_at):%Y-%m-%d %H:%M}) "
                     + (f"now at {next_cursor.table} {as_utc(next_cursor.bucket):%Y-%m-%d %H:%M}"  # type: ignore[arg-type]
                        if next_cursor.running else "complete"))
    # the differences still open are looked at again, wherever they are; those now past retention close
    open_now = open_differences(pg)
    closed: list[tuple[OpenKey, str]] = []
    for key in sorted(open_now)[:MAX_OPEN_RECHECKS]:
        name, text, bucket, _ = key
        table = TABLES[name]
        limit = limits.get(name)
        if limit is not None and bucket < limit:
            closed.append((key, "closed: past retention, no longer compared"))
            continue
        part = (tuple(text.split(" ")), bucket)
        if part not in scopes[name].partitions:
            scopes[name].partitions.append(part)
            scopes[name].ranges.append((bucket, bucket + table.bucket_span))
            source_sums(pg, table, SOURCE_SCHEMA, bucket, bucket + table.bucket_span, first[name], marks[name])
    lsn = current_lsn(pg)
    rows_source = sum(c for sums in first.values() for c, _ in sums.values())

    def finish(result: CheckResult, counts: Mapping[str, Any], compared: bool) -> CheckResult:
        run_s, cpu_s = time.monotonic() - started, time.process_time() - cpu_started
        result.message += f" (run {run_s:.1f}s, CPU {cpu_s:.1f}s)"
        run_row = {"checked_at": now, "scope": "recent" + (" + full pass" if full else ""),
                   "buckets": counts.get("buckets", 0), "slices_compared": counts.get("compared", 0),
                   "slices_in_flight": counts.get("in_flight", 0), "rows_source": rows_source,
                   "rows_cassandra": counts.get("rows_cassandra", 0), "rows_bridge": counts.get("rows_bridge", 0),
                   "differences": counts.get("differences", 0), "repairs": counts.get("repairs", 0),
                   "run_seconds": run_s, "cpu_seconds": cpu_s, "ok": result.ok, "message": result.message}
        # the full pass moves on only over buckets that were compared
        record(pg, now, counts.get("rows", []), counts.get("resolved", []), run_row,
               next_cursor if (full and compared) else None)
        log.info("reconciliation: %s", result.message)
        return result

    # 2. the fence
    behind = wait_for_stream(pg, admin, session, keyspace, lsn, TABLES, settings.fence_timeout_seconds, sleep)
    if behind:
        return finish(CheckResult(CHECK, True, f"not compared this run: {behind}. A stage that is behind is not a "
                                  "divergence; the stream_lag and freshness checks watch it"),
                      {"resolved": closed}, False)

    # 3. Cassandra, the bridge, its pending keys
    cassandra: dict[str, dict[rc.SliceKey, tuple[int, int]]] = {}
    bridge: dict[str, dict[rc.SliceKey, tuple[int, int]]] = {}
    rows_cassandra = rows_bridge = 0
    # partitions Cassandra refused to read for their tombstones: Cassandra is not compared there
    unreadable: dict[str, list[tuple[rc.Prefix, datetime]]] = {}
    for name, scope in scopes.items():
        cassandra[name], unreadable[name] = {}, []
        rows_cassandra += cassandra_sums(reads, TABLES[name], scope.partitions, cassandra[name], unreadable[name])
    states = {s["table"]: s for s in bridge_states(pg)}
    position = reads.stream_position()
    pending: dict[str, tuple[set[rc.SliceKey], set[tuple[rc.Prefix, datetime]]]] = {}
    bridge_notes = []
    for name, scope in scopes.items():
        state = states.get(name)
        if state is None or state.get("bucket") is None:
            bridge_notes.append(f"{name}: the bridge has not copied it yet")
            continue
        if position is not None and as_utc(state["bucket"]) < position.changelog_bucket - timedelta(
                minutes=settings.max_bridge_lag_minutes):
            bridge_notes.append(f"{name}: the bridge is behind (watermark {as_utc(state['bucket']):%H:%M})")
            continue
        found = bridge_pending(reads, pg, TABLES[name], as_utc(state["bucket"]),
                               position.changelog_bucket if position else as_utc(state["bucket"]))
        if found is None:
            bridge_notes.append(f"{name}: more than {MAX_PENDING} keys wait for the bridge")
            continue
        pending[name] = found
        bridge[name] = {}
        for start, end in scope.ranges:
            source_sums(pg, TABLES[name], BRIDGE_SCHEMA, start, end, bridge[name])
        rows_bridge += sum(c for c, _ in bridge[name].values())

    # 4. the source again
    second: dict[str, Marks] = {}
    for name, scope in scopes.items():
        second[name] = {}
        for start, end in scope.ranges:
            change_marks(pg, TABLES[name], SOURCE_SCHEMA, start, end, second[name])

    # 5. compare, repair, record
    differences: list[rc.Difference] = []
    equal: set[tuple[str, str, datetime, str]] = set()
    compared = in_flight = buckets = 0
    for name, scope in scopes.items():
        table = TABLES[name]
        buckets += len(scope.partitions)
        readable = [p for p in scope.partitions if p not in unreadable[name]]
        result = rc.compare(table, rc.CASSANDRA, first[name], cassandra[name], readable,
                            rc.in_flight_for_cassandra(marks[name], second[name]))
        comparisons = [result]
        if name in bridge:
            slices, pending_buckets = pending[name]
            comparisons.append(rc.compare(table, rc.BRIDGE, first[name], bridge[name], scope.partitions,
                                          rc.in_flight_for_bridge(marks[name], second[name], slices, pending_buckets,
                                                                  table)))
        for store, found in zip(rc.STORES, comparisons, strict=False):
            differences += found.differences
            compared += found.slices_compared
            in_flight += found.slices_in_flight
            equal |= {(name, rc.prefix_text(p), b, store) for p, b in found.equal}

    resolved = [(k, "equal again: repaired") for k in sorted(open_now) if k in equal] + closed
    last = last_repairs(pg, now - timedelta(seconds=settings.min_repair_interval_seconds + 3600))
    last_repaired = {(*d.key, d.store): last[(d.table, rc.prefix_text(d.prefix), d.bucket, d.store)]
                     for d in differences if (d.table, rc.prefix_text(d.prefix), d.bucket, d.store) in last}
    repairs, waiting = rc.plan_repairs(differences, last_repaired, settings, now)
    done = repair(pg, session, reads.keyspace, reads, repairs, now) if repairs else {}
    repaired = {(r.table, r.prefix, r.bucket, store) for r in repairs for store in r.stores}
    rows = []
    lines = []
    for d in differences:
        if (*d.key, d.store) in repaired:
            status, action, ids = "repairing", done[d.key].action(), ", ".join(done[d.key].signal_ids) or None
        else:
            status, action, ids = "open", waiting.get((*d.key, d.store), "not repaired"), None
        rows.append((d, status, action, ids))
        lines.append(rc.describe(d, action))
    counts = {"buckets": buckets, "compared": compared, "in_flight": in_flight, "rows_cassandra": rows_cassandra,
              "rows_bridge": rows_bridge, "differences": len(differences), "repairs": len(done), "rows": rows,
              "resolved": resolved}
    skipped = f"; bridge not compared for {'; '.join(bridge_notes)}" if bridge_notes else ""
    refused = [f"{name} {rc.prefix_text(p)} {as_utc(b):%Y-%m-%d %H:%M}" for name, parts in unreadable.items()
               for p, b in parts]
    if refused:
        skipped += (f"; Cassandra not compared in {len(refused)} bucket(s) it refused to read, too many tombstones "
                    f"(tombstone_failure_threshold): {', '.join(refused[:10])}"
                    + (f" and {len(refused) - 10} more" if len(refused) > 10 else "")
                    + "; a compaction purges them once gc_grace_seconds have passed (README, Reconciliation)")
    scope_text = (f"{buckets} bucket(s), {compared} minute slice(s) compared, {in_flight} in flight (changing in "
                  f"the source, or not yet copied by the bridge){skipped}{full_note}")
    if len(resolved) > len(closed):
        scope_text += f"; {len(resolved) - len(closed)} earlier difference(s) now equal (repaired)"
    if closed:
        scope_text += f"; {len(closed)} earlier difference(s) past retention closed"
    if differences:
        what = "\n".join(lines[:20]) + (f"\n... and {len(lines) - 20} more" if len(lines) > 20 else "")
        return finish(CheckResult(CHECK, False, f"{len(differences)} bucket(s) differ from Postgres binance "
                                  f"({scope_text}):\n{what}\nThe next runs confirm the repairs (README, "
                                  "Reconciliation)"), counts, True)
    return finish(CheckResult(CHECK, True, f"Cassandra and the bridge equal Postgres binance: {scope_text}"),
                  counts, True)
