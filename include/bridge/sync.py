"""Cassandra -> Postgres schema `cassandra`, incrementally, for Grafana.

The stream logs every key it writes or deletes in `changed_rows` (per table and minute). A run
reads the minutes since the table's watermark (plus one minute of overlap, for batches that
logged late), re-reads exactly those keys from Cassandra, and in one Postgres transaction per
table upserts the rows that exist, deletes the ones that are gone and moves the watermark. The
cost is proportional to what changed, not to the table. The first run of a table (no watermark)
copies it whole once.
"""

from __future__ import annotations

import logging
from collections import namedtuple
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from include.cdc.events import decode_key
from include.loader import dedupe, stage, upsert, upsert_staged
from include.names import BRIDGE_SCHEMA
from include.tables import BRIDGE_TABLES, Table

log = logging.getLogger(__name__)

OVERLAP = timedelta(minutes=1)


@dataclass(frozen=True)
class BridgeResult:
    table: str
    mode: str
    changed_keys: int
    upserted: int
    deleted: int
    watermark: datetime


def _minute(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(second=0, microsecond=0)


def _watermark(cur: Any, table: str, schema: str) -> datetime | None:
    cur.execute(f'SELECT bucket FROM "{schema}".bridge_watermarks WHERE table_name = %s FOR UPDATE', (table,))
    row = cur.fetchone()
    return row[0] if row else None


def _set_watermark(cur: Any, table: str, bucket: datetime, upserted: int, deleted: int, schema: str) -> None:
    cur.execute(
        f'INSERT INTO "{schema}".bridge_watermarks (table_name, bucket, synced_at, rows_upserted, rows_deleted) '
        "VALUES (%s, %s, now(), %s, %s) ON CONFLICT (table_name) DO UPDATE SET bucket = EXCLUDED.bucket, "
        "synced_at = now(), rows_upserted = EXCLUDED.rows_upserted, rows_deleted = EXCLUDED.rows_deleted",
        (table, bucket, upserted, deleted),
    )


def changed_keys(session: Any, keyspace: str, table: str, since: datetime, until: datetime) -> set[str]:
    """Keys logged for `table` in the minutes [since, until]: one partition read per minute."""
    stmt = session.prepare(f'SELECT key FROM "{keyspace}".changed_rows WHERE table_name = ? AND bucket = ?')
    keys: set[str] = set()
    bucket = _minute(since)
    while bucket <= until:
        keys.update(r.key for r in session.execute(stmt, (table, bucket)))
        bucket += timedelta(minutes=1)
    return keys


def fetch_rows(session: Any, keyspace: str, table: Table, keys: Iterable[str]) -> tuple[list[Any], list[tuple]]:
    """Read each key from Cassandra (concurrently): (rows that exist, keys that are gone)."""
    from cassandra.concurrent import execute_concurrent_with_args

    decoded = [decode_key(table, k) for k in keys]
    if not decoded:
        return [], []
    where = " AND ".join(f'"{k}" = ?' for k in table.cassandra_key)
    cols = ", ".join(f'"{c}"' for c in table.column_names)
    stmt = session.prepare(f'SELECT {cols} FROM "{keyspace}"."{table.name}" WHERE {where}')
    found, gone = [], []
    for key, result in zip(decoded, execute_concurrent_with_args(session, stmt, decoded, concurrency=100,
                                                                 raise_on_first_error=True), strict=True):
        row = result.result_or_exc.one()
        if row is None:
            gone.append(key)
        else:
            found.append(row)
    return found, gone


def key_table(table: Table) -> Table:
    """`table` reduced to its Cassandra key columns: what the bridge stages to delete by."""
    return Table(table.name, tuple(table.column(k) for k in table.cassandra_key), primary_key=table.cassandra_key,
                 time_column=table.time_column)


def _delete_keys(cur: Any, table: Table, keys: list[tuple], schema: str) -> int:
    if not keys:
        return 0
    keyed = key_table(table)
    record = namedtuple("Key", keyed.column_names)  # type: ignore[misc]  # noqa: PYI024 - built per table
    gone = stage(cur, keyed, [record(*k) for k in keys], name=f"gone_{table.name}")
    match = " AND ".join(f't."{k}" = g."{k}"' for k in table.cassandra_key)
    cur.execute(f'DELETE FROM "{schema}"."{table.name}" t USING "{gone}" g WHERE {match}')
    return cur.rowcount


def sync_table(pg: Any, session: Any, keyspace: str, table_name: str, now: datetime | None = None,
               schema: str = BRIDGE_SCHEMA, full: bool = False) -> BridgeResult:
    """Bring <schema>.<table_name> in Postgres up to date with Cassandra; one transaction.
    `full` re-reads the whole table (the first run of a table always does)."""
    table = BRIDGE_TABLES[table_name]
    now = now or datetime.now(UTC)
    until = _minute(now)
    try:
        with pg.cursor() as cur:
            cur.execute("SET LOCAL timezone = 'UTC'")
            mark = _watermark(cur, table_name, schema)
            if mark is None or full:
                result = _full_copy(cur, session, keyspace, table, until, schema)
            else:
                keys = changed_keys(session, keyspace, table_name, mark - OVERLAP, until)
                found, gone = fetch_rows(session, keyspace, table, keys)
                _, inserted, updated = upsert(cur, table, found, schema)
                deleted = _delete_keys(cur, table, gone, schema)
                _set_watermark(cur, table_name, until, inserted + updated, deleted, schema)
                result = BridgeResult(table_name, "incremental", len(keys), inserted + updated, deleted, until)
        pg.commit()
    except Exception:
        pg.rollback()
        raise
    log.info("bridge %s (%s): %d changed keys, %d rows upserted, %d deleted, watermark %s", result.table,
             result.mode, result.changed_keys, result.upserted, result.deleted, result.watermark.isoformat())
    return result


def _full_copy(cur: Any, session: Any, keyspace: str, table: Table, until: datetime, schema: str) -> BridgeResult:
    """First run: the whole table, paged; rows Postgres has and Cassandra does not are removed."""
    cols = ", ".join(f'"{c}"' for c in table.column_names)
    stmt = session.prepare(f'SELECT {cols} FROM "{keyspace}"."{table.name}"')
    stmt.fetch_size = 5000
    rows = list(session.execute(stmt))
    staging = stage(cur, table, dedupe(table, rows))
    inserted, updated = upsert_staged(cur, table, staging, schema)
    match = " AND ".join(f't."{k}" = s."{k}"' for k in table.cassandra_key)
    cur.execute(f'DELETE FROM "{schema}"."{table.name}" t WHERE NOT EXISTS '
                f'(SELECT FROM "{staging}" s WHERE {match})')
    deleted = cur.rowcount
    # changes that land while this copy runs are logged in this minute: the next run replays it
    _set_watermark(cur, table.name, until - OVERLAP, inserted + updated, deleted, schema)
    return BridgeResult(table.name, "full", len(rows), inserted + updated, deleted, until - OVERLAP)
