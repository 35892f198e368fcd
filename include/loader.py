"""Batched, idempotent loading of records into Postgres.

One transaction per dataset: COPY the batch into a temporary staging table, then
`INSERT ... ON CONFLICT (primary key) DO UPDATE ... WHERE something changed`. A row that already
holds the same values is left alone (no UPDATE, so no change event); a failure rolls the whole
batch back and leaves the table as it was.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import islice
from operator import attrgetter
from typing import Any

from include.tables import SCHEMA, TABLES, Table

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadResult:
    table: str
    received: int
    inserted: int
    updated: int

    @property
    def unchanged(self) -> int:
        return self.received - self.inserted - self.updated


class _CsvStream(io.TextIOBase):
    """Records rendered as CSV chunk by chunk while COPY reads them: the Python side formats the
    next rows while the server parses the previous ones, and the batch is never in memory twice.

    csv.writer's str() is exact for Decimal and int; str(datetime) and str(bool) are valid
    Postgres input; None becomes an unquoted empty field, i.e. NULL."""

    def __init__(self, rows: Iterator[tuple[Any, ...]], rows_per_chunk: int = 2000) -> None:
        self._rows = rows
        self._per_chunk = rows_per_chunk
        self._buf = io.StringIO()
        self._writer = csv.writer(self._buf, lineterminator="\n")
        self._pending = ""

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> str:
        want = size if size is not None and size >= 0 else None
        while want is None or len(self._pending) < want:
            chunk = list(islice(self._rows, self._per_chunk))
            if not chunk:
                break
            self._buf.seek(0)
            self._buf.truncate()
            self._writer.writerows(chunk)
            self._pending += self._buf.getvalue()
        if want is None:
            out, self._pending = self._pending, ""
        else:
            out, self._pending = self._pending[:want], self._pending[want:]
        return out


def _rows(table: Table, records: Sequence[Any]) -> Iterator[tuple[Any, ...]]:
    """Column values in table order from dataclasses or named tuples (e.g. Cassandra rows)."""
    names = table.column_names
    missing = [n for n in names if not hasattr(records[0], n)]
    if missing:
        raise ValueError(f"{type(records[0]).__name__} has no field(s) {missing} for table {table.name}")
    return map(attrgetter(*names), records)


def _dedupe(table: Table, records: Iterable[Any]) -> list[Any]:
    """Last record wins per primary key: ON CONFLICT cannot touch one row twice in a statement."""
    key = attrgetter(*table.primary_key)
    return list({key(rec): rec for rec in records}.values())


def _copy_in(cur: Any, sql: str, stream: io.TextIOBase) -> None:
    """COPY FROM STDIN on a psycopg2 cursor (copy_expert) or a psycopg 3 one (copy)."""
    if hasattr(cur, "copy_expert"):
        cur.copy_expert(sql, stream)
        return
    with cur.copy(sql) as copy:
        while chunk := stream.read(1 << 16):
            copy.write(chunk)


def upsert_sql(table: Table, staging: str, schema: str = SCHEMA) -> str:
    cols = ", ".join(f'"{c}"' for c in table.column_names)
    key = ", ".join(f'"{c}"' for c in table.primary_key)
    target = f'"{schema}"."{table.name}"'
    values = table.value_columns
    if values and not table.immutable:
        sets = ", ".join(f'"{c}" = EXCLUDED."{c}"' for c in values)
        changed = " OR ".join(f't."{c}" IS DISTINCT FROM EXCLUDED."{c}"' for c in values)
        action = f"DO UPDATE SET {sets} WHERE {changed}"
    else:
        action = "DO NOTHING"
    # xmax = 0 tells a fresh insert from an update; rows left unchanged are not returned at all
    return (
        f"WITH written AS (INSERT INTO {target} AS t ({cols}) SELECT {cols} FROM {staging} "
        f"ON CONFLICT ({key}) {action} RETURNING (xmax = 0) AS inserted) "
        "SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM written"
    )


def upsert(cur: Any, table: Table, records: Iterable[Any], schema: str = SCHEMA) -> tuple[int, int, int]:
    """Upsert into <schema>.<table> inside the caller's transaction: (received, inserted, updated)."""
    batch = _dedupe(table, records)
    if not batch:
        return 0, 0, 0
    staging = f"stage_{table.name}"
    cols = ", ".join(f'"{c}"' for c in table.column_names)
    # naive times, if any slipped in, are read as UTC whatever the server's default
    cur.execute("SET LOCAL timezone = 'UTC'")
    cur.execute(f'CREATE TEMP TABLE {staging} (LIKE "{schema}"."{table.name}" INCLUDING DEFAULTS) ON COMMIT DROP')
    _copy_in(cur, f"COPY {staging} ({cols}) FROM STDIN WITH (FORMAT csv)", _CsvStream(_rows(table, batch)))
    cur.execute(upsert_sql(table, staging, schema))
    inserted, updated = cur.fetchone()
    return len(batch), inserted, updated


def load(conn: Any, table: str | Table, records: Iterable[Any], schema: str = SCHEMA) -> LoadResult:
    """Upsert `records` into <schema>.<table> in one transaction on a DB-API connection."""
    table = TABLES[table] if isinstance(table, str) else table
    try:
        with conn.cursor() as cur:
            received, inserted, updated = upsert(cur, table, records, schema)
        conn.commit()
    except Exception:
        conn.rollback()
        raise
    result = LoadResult(table.name, received, inserted, updated)
    log.info(
        "%s.%s: %d received, %d inserted, %d updated, %d unchanged",
        schema, table.name, result.received, result.inserted, result.updated, result.unchanged,
    )
    return result


def prune_order_book(conn: Any, older_than: datetime) -> int:
    """Delete order book snapshots captured before `older_than` (the CDC pipeline sees the deletes)."""
    try:
        with conn.cursor() as cur:
            cur.execute(f'DELETE FROM "{SCHEMA}".order_book WHERE captured_at < %s', (older_than,))
            deleted = cur.rowcount
        conn.commit()
    except Exception:
        conn.rollback()
        raise
    log.info("%s.order_book: deleted %d levels captured before %s", SCHEMA, deleted, older_than.isoformat())
    return deleted
