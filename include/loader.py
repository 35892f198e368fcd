"""Batched, idempotent loading of records into Postgres.

One transaction per dataset: COPY the batch into a temporary staging table, then
`INSERT ... ON CONFLICT (primary key) DO UPDATE ... WHERE something changed`. A row that already
holds the same values is left alone (no UPDATE, so no change event); a failure rolls the whole
batch back and leaves the table as it was.

Immutable tables (trades, order book snapshots), keyed by a symbol and a growing id, skip the
staging table: the keys already stored in the batch's id range are read first, and only the new
rows are COPYed straight into the table (half the server's work). If another writer stored one
of them in between, the COPY fails on the key, is rolled back to a savepoint, and the batch goes
the staging way instead.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import islice
from operator import attrgetter
from typing import Any

from include.names import SOURCE_SCHEMA
from include.tables import TABLES, Table
from include.times import EPOCH

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


_EPOCH_NAIVE = EPOCH.replace(tzinfo=None)
_TEXT_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
NULL = "\\N"


class _TimestampText:
    """Timestamps as COPY text in UTC ('2026-01-02 03:04:05.678000+00'), about four times faster
    than str(): the date and time to the second are formatted once per second seen. Naive values
    are read as UTC, as the load's `SET LOCAL timezone = 'UTC'` reads them."""

    def __init__(self) -> None:
        self._seconds: dict[int, str] = {}

    def __call__(self, moment: datetime) -> str:
        delta = moment - (_EPOCH_NAIVE if moment.tzinfo is None else EPOCH)
        second = delta.days * 86400 + delta.seconds
        prefix = self._seconds.get(second)
        if prefix is None:
            if len(self._seconds) > 100_000:
                self._seconds.clear()
            prefix = self._seconds[second] = (EPOCH + timedelta(seconds=second)).strftime("%Y-%m-%d %H:%M:%S")
        return f"{prefix}.{delta.microseconds:06d}+00"


def _converters(table: Table) -> list[Callable[[Any], str]]:
    """Per column, value -> COPY text field (decimals and ints by str(): exact). Built-ins where
    possible: they are applied a column at a time with map()."""
    by_type: dict[str, Callable[[Any], str]] = {
        "text": _text,
        "numeric": str,
        "bigint": str,
        "boolean": {True: "t", False: "f"}.__getitem__,
        "timestamptz": _TimestampText(),
    }
    return [by_type[c.type] for c in table.columns]


def _text(value: str) -> str:
    return value.translate(_TEXT_ESCAPES)


def _column_text(conv: Callable[[Any], str], values: list[Any]) -> list[str]:
    if None in values:
        return [NULL if v is None else conv(v) for v in values]
    if conv is _text:
        # symbols and sides never hold what the text format escapes: check the column at once
        joined = "".join(values)
        if not any(c in joined for c in "\\\t\n\r"):
            return values
    return list(map(conv, values))


def copy_text(table: Table, records: Iterable[Any], rows_per_chunk: int = 2000) -> Iterator[str]:
    """`records` (objects with an attribute per column: dataclasses, named tuples, Cassandra rows)
    as COPY text format (tab-separated, \\N for NULL), a chunk of rows at a time, rendered column
    by column (several times faster than row by row). `records` may be a list or any iterator (a
    generator of rows read from elsewhere): it is read `rows_per_chunk` records at a time, as the
    chunks are consumed, so only one chunk of records and its text are held here."""
    converters = _converters(table)
    getters = [attrgetter(name) for name in table.column_names]
    rows = iter(records)
    checked = False
    while chunk := list(islice(rows, rows_per_chunk)):
        if not checked:
            _check_fields(table, chunk[0])
            checked = True
        columns = [_column_text(conv, list(map(get, chunk))) for conv, get in zip(converters, getters, strict=True)]
        yield "\n".join(map("\t".join, zip(*columns, strict=True))) + "\n"


class _ChunkStream(io.TextIOBase):
    """A file-like reader over text chunks, for COPY FROM STDIN: the chunks are made while the
    server parses the previous ones."""

    def __init__(self, chunks: Iterator[str]) -> None:
        self._chunks = chunks
        self._pending = ""

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> str:
        want = size if size is not None and size >= 0 else None
        parts = [self._pending]
        have = len(self._pending)
        while want is None or have < want:
            chunk = next(self._chunks, "")
            if not chunk:
                break
            parts.append(chunk)
            have += len(chunk)
        data = "".join(parts)
        if want is None:
            self._pending = ""
            return data
        self._pending = data[want:]
        return data[:want]


def _check_fields(table: Table, record: Any) -> None:
    """Fail naming the fields `record` lacks for `table`, before anything is written."""
    missing = [n for n in table.column_names if not hasattr(record, n)]
    if missing:
        raise ValueError(f"{type(record).__name__} has no field(s) {missing} for table {table.name}")


def dedupe(table: Table, records: Iterable[Any]) -> list[Any]:
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


def stage(cur: Any, table: Table, records: Iterable[Any], name: str | None = None) -> str:
    """COPY `records` into a new temporary table holding `table`'s columns, dropped at commit;
    returns its name (default `stage_<table>`). What the upsert reads from, and what the bridge
    compares against or deletes by (with a Table of just the key columns). An iterator of records
    is streamed into the one COPY a chunk at a time (`copy_text`), never held whole."""
    name = name or f"stage_{table.name}"
    defs = ", ".join(f'"{c.name}" {c.type}' for c in table.columns)
    cols = ", ".join(f'"{c}"' for c in table.column_names)
    cur.execute(f'CREATE TEMP TABLE "{name}" ({defs}) ON COMMIT DROP')
    _copy_in(cur, f'COPY "{name}" ({cols}) FROM STDIN', _ChunkStream(copy_text(table, records)))
    return name


def upsert_staged(cur: Any, table: Table, staging: str, schema: str = SOURCE_SCHEMA,
                  version_column: str | None = None) -> tuple[int, int]:
    """Upsert a staging table's rows (one per key, unless `version_column` is given: see upsert_sql)
    into <schema>.<table>: (inserted, updated)."""
    cur.execute(upsert_sql(table, f'"{staging}"', schema, version_column))
    inserted, updated = cur.fetchone()
    return inserted, updated


def upsert_sql(table: Table, staging: str, schema: str = SOURCE_SCHEMA, version_column: str | None = None) -> str:
    """INSERT ... ON CONFLICT from `staging`, updating a row only when a value changed.

    `version_column` (the bridge's `cdc_lsn`) orders the versions of a row: a stored row holding a
    higher one is never replaced (an older version read late cannot undo a newer one; a stored
    NULL is replaced), and of several staged rows with one key the highest is taken."""
    cols = ", ".join(f'"{c}"' for c in table.column_names)
    key = ", ".join(f'"{c}"' for c in table.primary_key)
    target = f'"{schema}"."{table.name}"'
    source = staging
    values = table.value_columns
    if values and not table.immutable:
        sets = ", ".join(f'"{c}" = EXCLUDED."{c}"' for c in values)
        changed = " OR ".join(f't."{c}" IS DISTINCT FROM EXCLUDED."{c}"' for c in values)
        condition = changed
        if version_column is not None:
            v = f'"{version_column}"'
            condition = f"({changed}) AND (t.{v} IS NULL OR EXCLUDED.{v} >= t.{v})"
        action = f"DO UPDATE SET {sets} WHERE {condition}"
    else:
        action = "DO NOTHING"
    if version_column is not None:
        source = (f'(SELECT DISTINCT ON ({key}) {cols} FROM {staging} '
                  f'ORDER BY {key}, "{version_column}" DESC NULLS LAST) AS newest')
    # xmax = 0 tells a fresh insert from an update; rows left unchanged are not returned at all
    return (
        f"WITH written AS (INSERT INTO {target} AS t ({cols}) SELECT {cols} FROM {source} "
        f"ON CONFLICT ({key}) {action} RETURNING (xmax = 0) AS inserted) "
        "SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM written"
    )


def _direct_insert_key(table: Table) -> tuple[str, str] | None:
    """(group column, id column) when new rows can be COPYed straight into the table: immutable
    rows keyed by a text column and a bigint id (recent_trades, order_book)."""
    if not table.immutable or len(table.primary_key) < 2:
        return None
    group, ident = table.primary_key[0], table.primary_key[1]
    if table.column(group).type != "text" or table.column(ident).type != "bigint":
        return None
    return group, ident


def _new_rows(cur: Any, table: Table, batch: list[Any], schema: str, group: str, ident: str) -> list[Any]:
    """The records whose key is not stored yet: one range read per group (ids grow, so a re-fetch
    overlaps the newest stored ids only)."""
    ranges: dict[Any, list[int]] = {}
    for rec in batch:
        g, i = getattr(rec, group), getattr(rec, ident)
        bounds = ranges.setdefault(g, [i, i])
        bounds[0], bounds[1] = min(bounds[0], i), max(bounds[1], i)
    key_cols = ", ".join(f'"{c}"' for c in table.primary_key)
    stored: set[tuple[Any, ...]] = set()
    for g, (lo, hi) in ranges.items():
        cur.execute(f'SELECT {key_cols} FROM "{schema}"."{table.name}" '
                    f'WHERE "{group}" = %s AND "{ident}" BETWEEN %s AND %s', (g, lo, hi))
        stored.update(cur.fetchall())
    if not stored:
        return batch
    key = attrgetter(*table.primary_key)
    return [rec for rec in batch if key(rec) not in stored]


def upsert(cur: Any, table: Table, records: Iterable[Any], schema: str = SOURCE_SCHEMA,
           version_column: str | None = None, staging: str | None = None) -> tuple[int, int, int]:
    """Upsert into <schema>.<table> inside the caller's transaction: (received, inserted, updated).
    `version_column`: never replace a stored row holding a higher value of it (see upsert_sql);
    `staging`: the staging table's name (default stage_<table>), for several batches in one transaction."""
    records = list(records)
    if not records:
        return 0, 0, 0
    cols = ", ".join(f'"{c}"' for c in table.column_names)
    # naive times, if any slipped in, are read as UTC whatever the server's default
    cur.execute("SET LOCAL timezone = 'UTC'")
    direct = _direct_insert_key(table)
    if direct is not None:
        # not de-duplicated: a key twice in the batch fails the COPY, and the staging way below dedupes
        batch = records
        new = _new_rows(cur, table, batch, schema, *direct)
        if not new:
            return len(batch), 0, 0
        cur.execute("SAVEPOINT direct_copy")
        try:
            _copy_in(cur, f'COPY "{schema}"."{table.name}" ({cols}) FROM STDIN', _ChunkStream(copy_text(table, new)))
        except Exception as exc:
            # psycopg2 names the SQLSTATE pgcode, psycopg 3 sqlstate; 23505 is unique_violation
            if "23505" not in (getattr(exc, "pgcode", None), getattr(exc, "sqlstate", None)):
                raise
            # another writer stored some of these keys meanwhile: the staging way sorts it out
            cur.execute("ROLLBACK TO SAVEPOINT direct_copy")
            log.info("%s.%s: a key was stored meanwhile; loading through the staging table", schema, table.name)
        else:
            cur.execute("RELEASE SAVEPOINT direct_copy")
            return len(batch), len(new), 0
    batch = records if version_column is not None else dedupe(table, records)
    inserted, updated = upsert_staged(cur, table, stage(cur, table, batch, staging), schema, version_column)
    return len(batch), inserted, updated


def load(conn: Any, table: str | Table, records: Iterable[Any], schema: str = SOURCE_SCHEMA) -> LoadResult:
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
            cur.execute(f'DELETE FROM "{SOURCE_SCHEMA}".order_book WHERE captured_at < %s', (older_than,))
            deleted = cur.rowcount
        conn.commit()
    except Exception:
        conn.rollback()
        raise
    log.info("%s.order_book: deleted %d levels captured before %s", SOURCE_SCHEMA, deleted, older_than.isoformat())
    return deleted
