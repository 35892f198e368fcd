"""Debezium's signal table: asking the connector for an incremental snapshot of some rows.

A row inserted into `binance.debezium_signal` (include/names.py SIGNAL_TABLE) with type
`execute-snapshot` reaches Debezium through the change stream; it then reads the rows asked for in
chunks, between window markers it writes to the same table, and emits each as a read event (op
`r`, `source.snapshot` "incremental") through the normal path: Kafka, the stream, Cassandra, the
bridge. A streamed change of a row inside a chunk's window wins over the chunk's copy of it.

The rows are chosen by `additional-conditions`: SQL that Debezium ANDs to its chunk query. Every
value in it is written here as a quoted SQL literal (quotes doubled), every column name quoted:
a symbol is data, never SQL. The signal's `data` column holds at most 2,048 characters: a request
that does not fit is split into several signals, each under the limit.

Used by the reconciliation's repairs (include/health/reconcile.py: the rows of a bucket that
differ) and by cdc_setup's incremental re-snapshot (every table, whole). Pure Python but for
`insert`, which writes on the caller's Postgres connection and commits.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from include.names import SIGNAL_TABLE, SOURCE_SCHEMA
from include.tables import TABLES, qualified
from include.times import as_utc

# Debezium's signal table: `data varchar(2048)`, `id varchar(42)` (V004__debezium_signal.sql)
MAX_DATA = 2048
MAX_ID = 42
EXECUTE_SNAPSHOT = "execute-snapshot"
# who asks: the reconciliation's repairs, cdc_setup's incremental re-snapshot (the first word of an id)
REPAIR, RESNAPSHOT = "repair", "resnapshot"
# ids of the signals this project writes: a purpose, the UTC time it was asked, a random tail
# (debezium's own window markers use UUIDs, which never take this form)
_ID = re.compile(r"^([a-z]+)-(\d{8}T\d{6})-[0-9a-f]+$")


class SignalError(ValueError):
    """A snapshot request that cannot be written (the message names the value)."""


@dataclass(frozen=True)
class RowRange:
    """Rows of one source table: those of a partition-key prefix (symbol, and interval for klines)
    whose time column lies in [start, end)."""

    table: str
    prefix: tuple[str, ...]
    start: datetime
    end: datetime


def sql_literal(value: Any) -> str:
    """A value as a Postgres literal: text quoted with its quotes doubled (standard_conforming_strings,
    Postgres's default since 9.1, so a backslash is a backslash), an aware datetime as its UTC
    ISO text, quoted; a naive datetime, a NUL character or any other type is refused."""
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise SignalError(f"a time in a snapshot filter must be timezone-aware, got {value.isoformat()}")
        value = as_utc(value).isoformat(sep=" ")
    if not isinstance(value, str):
        raise SignalError(f"a snapshot filter compares text and times, got {type(value).__name__} {value!r}")
    if "\x00" in value:
        raise SignalError(f"a snapshot filter value holds a NUL character: {value!r}")
    return "'" + value.replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def range_filter(rows: RowRange) -> str:
    """The SQL condition selecting `rows` in its source table."""
    table = TABLES[rows.table]
    keys = table.cassandra_partition_key
    if len(rows.prefix) != len(keys):
        raise SignalError(f"{rows.table}: a prefix names {keys}, got {rows.prefix!r}")
    if not rows.start < rows.end:
        raise SignalError(f"{rows.table} {rows.prefix}: empty time range {rows.start} .. {rows.end}")
    parts = [f"{_ident(k)} = {sql_literal(v)}" for k, v in zip(keys, rows.prefix, strict=True)]
    time = _ident(table.time_column)
    parts += [f"{time} >= {sql_literal(rows.start)}", f"{time} < {sql_literal(rows.end)}"]
    return " AND ".join(parts)


def signal_data(table: str, condition: str | None) -> str:
    """The JSON `data` of an execute-snapshot signal for one table: incremental, of the rows
    `condition` selects (None: the whole table). The condition's data-collection is a regular
    expression to Debezium, matched whole: the table's name escaped."""
    name = qualified(table, SOURCE_SCHEMA)
    data: dict[str, Any] = {"data-collections": [name], "type": "incremental"}
    if condition is not None:
        data["additional-conditions"] = [{"data-collection": re.escape(name), "filter": condition}]
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def any_of(conditions: Sequence[str]) -> str:
    """Conditions ORed, the whole in parentheses: Debezium appends a filter to its chunk query as
    `WHERE <chunk bounds> AND <filter>` without parentheses (JdbcConnection.buildSelectWithRowLimits,
    Debezium 3.7), so a bare `a OR b` would escape the chunk's bounds."""
    return "(" + " OR ".join(f"({c})" for c in conditions) + ")"


def snapshot_signals(ranges: Sequence[RowRange]) -> list[tuple[str, str]]:
    """(table, data) of the execute-snapshot signals that ask for `ranges`: one per table, its
    ranges ORed (`any_of`), split into several where one would not fit MAX_DATA characters."""
    by_table: dict[str, list[str]] = {}
    for r in ranges:
        by_table.setdefault(r.table, []).append(range_filter(r))
    out: list[tuple[str, str]] = []
    for table, conditions in by_table.items():
        group: list[str] = []
        for condition in conditions:
            if len(signal_data(table, any_of([condition]))) > MAX_DATA:
                raise SignalError(f"{table}: one range's condition alone exceeds {MAX_DATA} characters: "
                                  f"{condition[:200]}")
            if group and len(signal_data(table, any_of([*group, condition]))) > MAX_DATA:
                out.append((table, signal_data(table, any_of(group))))
                group = []
            group.append(condition)
        if group:
            out.append((table, signal_data(table, any_of(group))))
    return out


def whole_table_signals(tables: Sequence[str]) -> list[tuple[str, str]]:
    """(table, data) of execute-snapshot signals for every row of each table."""
    return [(t, signal_data(t, None)) for t in tables]


def signal_id(purpose: str, at: datetime, token: str | None = None) -> str:
    """`<purpose>-<UTC yyyymmddThhmmss>-<random hex>`, at most 42 characters: says who asked and
    when, so old requests can be pruned (`prune`)."""
    if not re.fullmatch(r"[a-z]+", purpose):
        raise SignalError(f"a signal purpose is lower-case letters, got {purpose!r}")
    token = token or secrets.token_hex(6)
    out = f"{purpose}-{as_utc(at):%Y%m%dT%H%M%S}-{token}"
    if len(out) > MAX_ID or not _ID.match(out):
        raise SignalError(f"signal id {out!r} is not of the form <purpose>-<time>-<hex> within {MAX_ID} characters")
    return out


def signal_time(signal: str) -> datetime | None:
    """When a signal written by `insert` was asked for (None for any other id, e.g. Debezium's)."""
    m = _ID.match(signal)
    return datetime.strptime(m.group(2), "%Y%m%dT%H%M%S").replace(tzinfo=UTC) if m else None


def insert(pg: Any, signals: Sequence[tuple[str, str]], purpose: str, at: datetime | None = None) -> list[str]:
    """Write the signals, one transaction each (Debezium reads a signal once it is committed),
    as the caller's Postgres role (the table's owner); returns their ids."""
    at = at or datetime.now(UTC)
    ids = []
    for _, data in signals:
        sid = signal_id(purpose, at)
        with pg.cursor() as cur:
            cur.execute(f'INSERT INTO "{SOURCE_SCHEMA}"."{SIGNAL_TABLE}" (id, type, data) VALUES (%s, %s, %s)',
                        (sid, EXECUTE_SNAPSHOT, data))
        pg.commit()
        ids.append(sid)
    return ids


def prune(pg: Any, older_than: datetime) -> int:
    """Delete the signals this project wrote before `older_than` (Debezium deletes its own window
    markers: insert_delete watermarking); returns how many. With insert_delete Debezium reads every
    DELETE in the signal table as a request to close a window of that id; ours name no window, and
    Debezium ignores them ("request ignored", AbstractIncrementalSnapshotContext.closeWindow)."""
    with pg.cursor() as cur:
        cur.execute(f'SELECT id FROM "{SOURCE_SCHEMA}"."{SIGNAL_TABLE}" WHERE type = %s', (EXECUTE_SNAPSHOT,))
        old = [sid for (sid,) in cur.fetchall() if (t := signal_time(sid)) is not None and t < older_than]
        if old:
            cur.execute(f'DELETE FROM "{SOURCE_SCHEMA}"."{SIGNAL_TABLE}" WHERE id = ANY(%s)', (old,))
    pg.commit()
    return len(old)
