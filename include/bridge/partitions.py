"""The Cassandra partitions a full copy reads, worked out in Postgres inside the bridge's transaction.

A partition is a key prefix (symbol, and interval for klines) and a time bucket. The prefixes are
those the source (`binance`) or the bridge's own copy holds, found through each primary key index,
which starts with them, one probe per prefix (a loose index scan, a recursive CTE), never a scan;
with each, the oldest and newest time of its rows (an index probe each where the primary key or an
index orders them), which plan.bucket_range turns into buckets.

Why Postgres can name every partition Cassandra may hold: the copy reads the stream's position U
first, and stores it as the watermark. A row a batch finished before that read is in the source when
this runs (or its deletion was logged at U or later); a row any later batch wrote is logged at U or
later. The next incremental run re-reads everything logged from U on, so a row in a prefix or a
bucket Postgres does not know yet is copied then.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from include.bridge.plan import bucket_range
from include.tables import Table


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


def full_copy_partitions(cur: Any, table: Table, schemas: Sequence[str], keep_seconds: int | None,
                         now: datetime) -> list[tuple[Any, ...]]:
    """Every (prefix..., bucket) that may hold rows of `table`: per prefix Postgres holds, its buckets
    from its oldest row (or the start of Cassandra's window, `keep_seconds`) to its newest. A list,
    worked out before the copy: the cursor is busy with the COPY while the partitions are read."""
    return [(*prefix, bucket)
            for prefix, (oldest, newest) in sorted(prefix_ranges(cur, table, schemas).items())
            for bucket in bucket_range(table, oldest, newest, keep_seconds, now)]
