"""Which Cassandra partitions may hold a table's rows, worked out in Postgres, never by scanning Cassandra.

A partition is a key prefix (symbol, and interval for klines) and a time bucket. The prefixes are
those the source (`binance`) or the bridge's copy holds, found through each primary key index,
which starts with them, one probe per prefix (a loose index scan, a recursive CTE), never a scan;
with each, the oldest and newest time of its rows (an index probe each), which `bucket_range`
turns into buckets. A whole-table scan of Cassandra would read every expired cell and tombstone on
the way, which is what Cassandra's tombstone thresholds exist to stop.

Why Postgres can name every partition Cassandra may hold, for the bridge's full copy: the copy
reads the stream's position U first, and stores it as the watermark. A row a batch finished before
that read is in the source when this runs (or its deletion was logged at U or later); a row any
later batch wrote is logged at U or later. The next incremental run re-reads everything logged from
U on, so a row in a prefix or a bucket Postgres does not know yet is copied then.

Everything here runs on a cursor the caller owns (inside its transaction) and commits nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from include.tables import Table
from include.times import as_utc


def buckets(table: Table, start: datetime, end: datetime) -> list[datetime]:
    """The starts of `table`'s time buckets (hours or days) from the one holding `start` to the one
    holding `end`, both included."""
    first, last = table.bucket_of(start), table.bucket_of(end)
    span = table.bucket_span
    return [first + n * span for n in range(max((last - first) // span + 1, 0))]


def bucket_range(table: Table, oldest: datetime, newest: datetime, keep_seconds: int | None,
                 now: datetime) -> list[datetime]:
    """The buckets a full copy reads for one partition-key prefix whose rows (in the source and the
    bridge) run from `oldest` to `newest`, when Cassandra keeps the table `keep_seconds` (None: for
    ever). A retention window starts one bucket early, for the clocks that decide expiry."""
    start = as_utc(oldest)
    if keep_seconds is not None:
        window_start = table.bucket_of(as_utc(now) - timedelta(seconds=keep_seconds)) - table.bucket_span
        start = max(start, window_start)
    return buckets(table, start, newest)


def prefix_ranges(cur: Any, table: Table, schemas: Sequence[str]) -> dict[tuple[Any, ...], tuple[datetime, datetime]]:
    """Per partition-key prefix held by <schema>.<table> for any of `schemas`: (oldest, newest)
    time_column value across them. Schemas without the table are skipped."""
    cols = table.cassandra_partition_key
    quoted = [f'"{c}"' for c in cols]
    listed = ", ".join(quoted)
    time = f'"{table.time_column}"'
    out: dict[tuple[Any, ...], tuple[datetime, datetime]] = {}
    for schema in schemas:
        cur.execute("SELECT to_regclass(%s)", (f'"{schema}"."{table.name}"',))
        if cur.fetchone()[0] is None:
            continue
        target = f'"{schema}"."{table.name}"'
        same = " AND ".join(f"t.{c} = p.{c}" for c in quoted)
        # each step takes the next prefix above the last one found: an index probe
        cur.execute(
            f"WITH RECURSIVE p AS ("
            f"(SELECT {listed} FROM {target} ORDER BY {listed} LIMIT 1) "
            f"UNION ALL SELECT n.* FROM p, LATERAL (SELECT {listed} FROM {target} "
            f"WHERE ({listed}) > ({', '.join(f'p.{c}' for c in quoted)}) ORDER BY {listed} LIMIT 1) n) "
            f"SELECT p.*, (SELECT {time} FROM {target} t WHERE {same} ORDER BY {time} LIMIT 1) AS oldest, "
            f"(SELECT {time} FROM {target} t WHERE {same} ORDER BY {time} DESC LIMIT 1) AS newest FROM p")
        for row in cur.fetchall():
            prefix, oldest, newest = tuple(row[:len(cols)]), row[-2], row[-1]
            if oldest is None:
                continue
            if prefix in out:
                low, high = out[prefix]
                oldest, newest = min(low, oldest), max(high, newest)
            out[prefix] = (oldest, newest)
    return out


def prefixes(cur: Any, table: Table, schemas: Sequence[str]) -> list[tuple[Any, ...]]:
    """The partition-key prefixes (without the bucket) held by <schema>.<table> for any of `schemas`."""
    return sorted(prefix_ranges(cur, table, schemas))


def partitions(cur: Any, table: Table, schemas: Sequence[str], keep_seconds: int | None,
               now: datetime) -> list[tuple[Any, ...]]:
    """Every (prefix..., bucket) that may hold rows of `table`: per prefix Postgres holds, its buckets
    from its oldest row (or the start of Cassandra's window, `keep_seconds`) to its newest. A list,
    worked out before a copy: the cursor is busy with the COPY while the partitions are read."""
    return [(*prefix, bucket)
            for prefix, (oldest, newest) in sorted(prefix_ranges(cur, table, schemas).items())
            for bucket in bucket_range(table, oldest, newest, keep_seconds, now)]
