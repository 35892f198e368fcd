"""Cassandra -> Postgres schema `cassandra`, incrementally, for Grafana.

The stream logs every key it writes or deletes in `changed_rows`, per table and change-log minute,
and after each finished micro-batch records in `stream_position` the minute that batch logged under
(U); batches still running log under U or later. A run reads the minutes from the table's
watermark W to U, both included, re-reads exactly those keys from Cassandra, and in one Postgres
transaction per table upserts the rows that exist (never over a row with a higher cdc_lsn),
deletes the ones that are gone and stores W = U. No clock decides what is read: a slow batch or a
skewed host only delays when its keys are read. Before the stream's first finished batch there is
nothing to read, and W stays.

A table is copied whole instead (`full_copy`) on its first run, when asked, and when the change log
may have lost keys since W (its entries expire after changed_rows' default_time_to_live:
plan.full_copy_reason); the reason is logged and kept in bridge_watermarks.

Every read is made at one consistency level (plan.choose_consistency, logged once per run).
"""

from __future__ import annotations

import logging
from collections import namedtuple
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from include.bridge import state
from include.bridge.plan import Position, full_copy_reason, minutes
from include.bridge.reads import CassandraReads
from include.loader import stage, upsert_staged
from include.names import BRIDGE_SCHEMA, SOURCE_SCHEMA
from include.partitions import partitions
from include.tables import BRIDGE_TABLES, BUCKET, Table

log = logging.getLogger(__name__)

# the bridge never lets an older version of a row replace a newer one: the source LSN orders them
VERSION_COLUMN = "cdc_lsn"
# distinct changed keys re-read and applied at a time (what an incremental run holds in memory)
KEY_CHUNK = 20_000


@dataclass(frozen=True)
class BridgeResult:
    table: str
    # "incremental", "full", or "waiting" (the stream has finished no batch yet: nothing to read)
    mode: str
    changed_keys: int
    upserted: int
    deleted: int
    watermark: datetime | None
    # a full copy: why, and how many rows it read from Cassandra
    reason: str | None = None
    rows_read: int = 0


def sync_table(pg: Any, session: Any, keyspace: str, table_name: str, now: datetime | None = None,
               schema: str = BRIDGE_SCHEMA, full: bool = False, consistency: str | None = None,
               source_schema: str = SOURCE_SCHEMA) -> BridgeResult:
    """Bring <schema>.<table_name> in Postgres up to date with Cassandra, in one transaction.

    `full` copies the table whole; `consistency` names the read consistency level (default: by
    the keyspace's replication); `now` stands in for Cassandra's clock (tests); `source_schema`
    holds the source tables a full copy takes the partitions to read from."""
    table = BRIDGE_TABLES[table_name]
    reads = CassandraReads.open(session, keyspace, consistency)
    try:
        with pg.cursor() as cur:
            cur.execute("SET LOCAL timezone = 'UTC'")
            mark = state.lock_watermark(cur, table_name, schema)
            # read after the lock: a run that waited for another reads the position that one stored or later
            position = reads.stream_position()
            ttl = reads.changelog_ttl()
            clock = now or reads.now()
            reason = full_copy_reason(mark.bucket if mark else None, position, ttl, requested=full,
                                      last_sync=mark.synced_at if mark else None, now=clock)
            if reason is not None and position is None and mark is None:
                result = BridgeResult(table_name, "waiting", 0, 0, 0, None)
            elif reason is not None:
                if reason not in ("first run", "requested"):
                    log.warning("bridge %s: copying the table whole: %s", table_name, reason)
                # a copy with no position yet keeps the watermark: what is logged from it on is read again
                bucket = position.changelog_bucket if position else mark.bucket  # type: ignore[union-attr]
                result = full_copy(cur, reads, table, bucket, reason, clock, schema, source_schema)
                state.save_watermark(cur, table_name, bucket, "full", result.upserted, result.deleted, reason, schema)
            else:
                assert mark is not None  # no watermark is a first run
                result = _incremental(cur, reads, table, mark.bucket, position, schema)
                state.save_watermark(cur, table_name, result.watermark or mark.bucket, "incremental",
                                     result.upserted, result.deleted, None, schema)
        pg.commit()
    except Exception:
        pg.rollback()
        raise
    if result.mode == "waiting":
        log.info("bridge %s: waiting for the stream's first finished batch (no %s.stream_position row): "
                 "nothing to copy yet", table_name, keyspace)
    elif result.mode == "full":
        log.info("bridge %s (full copy, %s): %d rows read from Cassandra, %d upserted, %d deleted, watermark %s",
                 table_name, result.reason, result.rows_read, result.upserted, result.deleted,
                 _iso(result.watermark))
    else:
        log.info("bridge %s (incremental): %d changed keys, %d rows upserted, %d deleted, watermark %s%s",
                 table_name, result.changed_keys, result.upserted, result.deleted, _iso(result.watermark),
                 "" if position else " (kept: the stream has finished no batch yet)")
    return result


def _iso(moment: datetime | None) -> str:
    return moment.isoformat() if moment else "none"


# --------------------------------------------------------------------------- incremental


def _incremental(cur: Any, reads: CassandraReads, table: Table, watermark: datetime, position: Position | None,
                 schema: str) -> BridgeResult:
    """The keys logged from the watermark to the stream's position, re-read and applied, KEY_CHUNK at a time."""
    if position is None:
        return BridgeResult(table.name, "incremental", 0, 0, 0, watermark)
    until = position.changelog_bucket
    since = watermark
    if until < watermark:
        # the stream's position went back (its progress was reset): read from there, lose nothing
        log.warning("bridge %s: the stream position %s is behind the watermark %s; reading from the position",
                    table.name, until.isoformat(), watermark.isoformat())
        since = until
    keys = upserted = deleted = 0
    for n, chunk in enumerate(reads.changed_keys(table.name, minutes(since, until), KEY_CHUNK)):
        found, gone = reads.rows_at(table, chunk)
        keys += len(chunk)
        if found:
            staging = stage(cur, table, found, name=f"found_{table.name}_{n}")
            inserted, updated = upsert_staged(cur, table, staging, schema, VERSION_COLUMN)
            upserted += inserted + updated
        deleted += _delete_gone(cur, table, gone, schema, name=f"gone_{table.name}_{n}")
    return BridgeResult(table.name, "incremental", keys, upserted, deleted, until)


def key_table(table: Table) -> Table:
    """`table` reduced to its Cassandra key columns (`bucket` included): what the bridge stages to delete by."""
    return Table(table.name, tuple(table.column(k) for k in table.cassandra_key), primary_key=table.cassandra_key,
                 time_column=table.time_column)


def _delete_gone(cur: Any, table: Table, keys: list[tuple[Any, ...]], schema: str, name: str) -> int:
    """Delete the bridge rows of Cassandra keys that are gone. A bridge row is keyed without the
    bucket: it is deleted only if its time column falls in the gone key's bucket, so a row deleted
    and inserted again at another time (another bucket) is not deleted with its old key."""
    if not keys:
        return 0
    keyed = key_table(table)
    record = namedtuple("Key", keyed.column_names)  # type: ignore[misc]  # noqa: PYI024 - built per table
    gone = stage(cur, keyed, [record(*k) for k in keys], name=name)
    match = " AND ".join(f't."{k}" = g."{k}"' for k in table.row_key)
    if table.bucket:
        match += f' AND date_trunc(%s, t."{table.time_column}") = g."{BUCKET.name}"'
    cur.execute(f'DELETE FROM "{schema}"."{table.name}" t USING "{gone}" g WHERE {match}',
                (table.bucket,) if table.bucket else None)
    return int(cur.rowcount)


# --------------------------------------------------------------------------- full copy


def full_copy(cur: Any, reads: CassandraReads, table: Table, watermark: datetime, reason: str, now: datetime,
              schema: str = BRIDGE_SCHEMA, source_schema: str = SOURCE_SCHEMA) -> BridgeResult:
    """The whole table: every partition Postgres says may hold rows (include/partitions.py),
    streamed into one COPY into a staging table, then upserted (cdc_lsn-guarded), and the bridge's
    rows missing from it deleted.

    One transaction, the caller's: Grafana (any reader) sees the table as it was or as copied, never
    half-copied or with the missing rows deleted before the new ones are in; a failure leaves it
    and the watermark as they were. Memory is bounded on both sides: here, at most reads.WINDOW
    pages of 5,000 rows coming in plus the page being read, one COPY chunk of 2,000 rendered rows and
    the list of partitions (one tuple per prefix and bucket, no rows);
    the rows themselves are held by Postgres, in the temporary staging table (spilled to disk), and
    the upsert and delete are set operations there."""
    keep = reads.keep_seconds(table.name)
    to_read = partitions(cur, table, (source_schema, schema), keep, now)
    rows = _Counted(reads.partition_rows(table, to_read))
    staging = stage(cur, table, rows, name=f"copy_{table.name}")
    # a temporary table has no statistics until analysed: the upsert and the anti-join plan on them
    cur.execute(f'ANALYZE "{staging}"')
    inserted, updated = upsert_staged(cur, table, staging, schema, VERSION_COLUMN)
    match = " AND ".join(f't."{k}" = s."{k}"' for k in table.row_key)
    cur.execute(f'DELETE FROM "{schema}"."{table.name}" t WHERE NOT EXISTS (SELECT FROM "{staging}" s WHERE {match})')
    deleted = int(cur.rowcount)
    return BridgeResult(table.name, "full", 0, inserted + updated, deleted, watermark, reason, rows.count)


class _Counted(Iterator[Any]):
    """An iterator that counts what passes through it."""

    def __init__(self, items: Iterable[Any]) -> None:
        self._items = iter(items)
        self.count = 0

    def __next__(self) -> Any:
        item = next(self._items)
        self.count += 1
        return item
