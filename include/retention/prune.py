"""Applying the retention policy: deletes in Postgres, Cassandra's window published for the stream.

Postgres deletes go by the table's time column (indexed) in chunks of at most `chunk_rows` rows, a
transaction each, so a first prune of a large backlog neither holds locks long nor emits one huge
burst of change events; the next chunk picks up where one stopped. The source's deletes reach
Cassandra as change events, which the stream skips for rows already out of Cassandra's own window
(they have expired there): retention leaves no tombstones in the partitions that reads scan.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from include.names import BRIDGE_SCHEMA, SOURCE_SCHEMA
from include.partitions import partitions
from include.retention.policy import Retention
from include.tables import TABLES, Table

log = logging.getLogger(__name__)

CHUNK_ROWS = 20_000


def delete_older(conn: Any, schema: str, table: Table, horizon: datetime, chunk_rows: int = CHUNK_ROWS) -> int:
    """Delete rows of <schema>.<table> whose time column is before `horizon`; returns how many."""
    col = table.time_column
    total = 0
    while True:
        try:
            with conn.cursor() as cur:
                cur.execute(f'DELETE FROM "{schema}"."{table.name}" WHERE ctid = ANY(ARRAY('
                            f'SELECT ctid FROM "{schema}"."{table.name}" WHERE "{col}" < %s LIMIT %s))',
                            (horizon, chunk_rows))
                deleted = cur.rowcount
            conn.commit()
        except Exception:
            conn.rollback()
            raise
        total += deleted
        if deleted < chunk_rows:
            break
        log.info("%s.%s: %d rows older than %s deleted so far", schema, table.name, total, horizon.isoformat())
    log.info("%s.%s: deleted %d rows with %s before %s", schema, table.name, total, col, horizon.isoformat())
    return total


def prune_postgres(conn: Any, schema: str, store: str, policy: Retention, now: datetime | None = None,
                   chunk_rows: int = CHUNK_ROWS) -> dict[str, int]:
    """Every table of a Postgres store (`binance` or the bridge) cut to its horizon."""
    now = now or datetime.now(UTC)
    out = {}
    for name, table in TABLES.items():
        horizon = policy.horizon(name, store, now)
        if horizon is None:
            log.info("%s.%s: kept for ever, nothing to delete", schema, name)
            continue
        out[name] = delete_older(conn, schema, table, horizon, chunk_rows)
    return out


def publish_cassandra_window(session: Any, keyspace: str, policy: Retention, pg: Any | None = None,
                             now: datetime | None = None) -> dict[str, int | None]:
    """Write Cassandra's retention per table into `sink_retention`, where the stream reads it (within
    a minute) to give each row its TTL. Kept for ever: a null keep_seconds.

    A shorter window than the one published before applies to rows written from then on; rows
    already in Cassandra carry the TTL they were written with. So when a window shrinks, the buckets
    now entirely out of it are deleted whole (one partition tombstone each, which reads do not
    count; the partitions are listed from Postgres `pg`): what is left past the new horizon is the
    part of one bucket, gone when its rows' TTLs end."""
    now = now or datetime.now(UTC)
    before = {r.table_name: r.keep_seconds for r in session.execute(
        f'SELECT table_name, keep_seconds FROM "{keyspace}".sink_retention')}
    stmt = session.prepare(f'INSERT INTO "{keyspace}".sink_retention (table_name, keep_seconds, updated_at) '
                           "VALUES (?, ?, toTimestamp(now()))")
    published = {}
    for name, table in TABLES.items():
        seconds = policy.seconds(name, "cassandra")
        old = before.get(name, "absent")
        if pg is not None and old != "absent" and seconds is not None and (old is None or old > seconds):
            _drop_buckets_past(session, keyspace, pg, table, timedelta(seconds=seconds), now)
        session.execute(stmt, (name, seconds))
        published[name] = seconds
    log.info("Cassandra keeps: %s", ", ".join(f"{t} {'for ever' if s is None else f'{s}s'}"
                                              for t, s in published.items()))
    return published


def _drop_buckets_past(session: Any, keyspace: str, pg: Any, table: Table, keep: timedelta, now: datetime) -> int:
    """Delete, whole, every partition of `table` whose bucket ends before now - keep."""
    from cassandra.concurrent import execute_concurrent_with_args

    horizon = now - keep
    with pg.cursor() as cur:
        keys = [k for k in partitions(cur, table, (SOURCE_SCHEMA, BRIDGE_SCHEMA), None, now)
                if k[-1] + table.bucket_span <= horizon]
    pg.rollback()
    where = " AND ".join(f'"{c}" = ?' for c in table.cassandra_partition)
    stmt = session.prepare(f'DELETE FROM "{keyspace}"."{table.name}" WHERE {where}')
    execute_concurrent_with_args(session, stmt, keys, concurrency=32, raise_on_first_error=True)
    log.warning("Cassandra %s: its window shrank to %s: %d whole bucket(s) older than %s deleted", table.name, keep,
                len(keys), horizon.isoformat())
    return len(keys)
