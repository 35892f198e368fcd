"""The rules of a Debezium change event, written once for every reader of them.

The Spark stream has two ways to apply a micro-batch (Spark jobs, or plain Python on the driver)
and the bridge to Postgres re-reads what the stream logged; all three follow these definitions:
which ops exist, what decimal text is accepted, the error a dead letter carries, which columns a
row's Cassandra key needs, the write time of a change, and the JSON a row's Cassandra key is logged
as in `changed_rows`.

Pure Python: no Spark, no Airflow, no Cassandra driver.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from include.tables import BUCKET, Table
from include.times import from_epoch_ms, to_epoch_ms

# Debezium's ops: snapshot read, create, update, delete (a tombstone has no value and no op)
READ, CREATE, UPDATE, DELETE = "r", "c", "u", "d"
OPS = (READ, CREATE, UPDATE, DELETE)

# Debezium writes numerics as exact text (decimal.handling.mode=string). The pattern is the same in
# Java (Spark's rlike) and Python (re.match): both let `$` match before a final newline.
DECIMAL_TEXT = r"^-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$"
_DECIMAL_TEXT = re.compile(DECIMAL_TEXT)


def is_decimal_text(text: str) -> bool:
    """Whether `text` is a numeric as Debezium writes one (sign, digits, fraction, exponent)."""
    return _DECIMAL_TEXT.match(text) is not None


# --------------------------------------------------------------------------- why an event is a dead letter
# In the order both write paths check them: the first that applies is the one recorded.

NOT_AN_EVENT = "not a Debezium change event (unparseable JSON or no op)"
UNKNOWN_OP_PREFIX = "unknown op "
NO_LSN = "source.lsn missing"
NO_SOURCE_TS = "source.ts_ms missing"
DELETE_WITHOUT_BEFORE = "delete without before"
NO_AFTER = "no after"


def unknown_op(op: str) -> str:
    return f"{UNKNOWN_OP_PREFIX}{op}"


def missing_row(op: str) -> str:
    """A delete keys on `before`, every other op writes `after`: the one that is missing."""
    return DELETE_WITHOUT_BEFORE if op == DELETE else NO_AFTER


def key_column_missing(column: str) -> str:
    return f"key column {column} missing"


def not_a_timestamp(column: str) -> str:
    return f"{column} is not a timestamp"


def not_a_decimal(column: str) -> str:
    return f"{column} is not a decimal"


def key_sources(table: Table) -> tuple[str, ...]:
    """The columns of a change event's row that its Cassandra key needs, in key order: the key's own
    columns, with `bucket` replaced by time_column, which the bucket follows. A row missing one of
    them is a dead letter (`key_column_missing`)."""
    out: list[str] = []
    for name in table.cassandra_key:
        source = table.time_column if name == BUCKET.name and table.bucket else name
        if source not in out:
            out.append(source)
    return tuple(out)


# --------------------------------------------------------------------------- the write time of a change

# how far below its own time a row of an initial or blocking snapshot is written (microseconds)
SNAPSHOT_MARGIN_US = 10_000_000
# source.snapshot of a read of an incremental snapshot (Debezium's signal-driven, chunked snapshot)
INCREMENTAL = "incremental"
# source.snapshot of a read that is not part of an initial or blocking snapshot
_NOT_A_FULL_SNAPSHOT = (INCREMENTAL, "false")


def source_time_us(source: Mapping[str, Any]) -> int | None:
    """The source commit time of an event in epoch microseconds: `source.ts_us` (Debezium 3), else
    `source.ts_ms` * 1000, else None (the event is a dead letter, NO_SOURCE_TS). `source` holds the
    fields as parsed: integers (or None) for ts_us and ts_ms."""
    ts_us = source.get("ts_us")
    if ts_us is not None:
        return int(ts_us)
    ts_ms = source.get("ts_ms")
    return None if ts_ms is None else int(ts_ms) * 1000


def sequence_lsn(sequence: str | None) -> int | None:
    """The last LSN in Debezium's `source.sequence`, a JSON text of [last commit LSN, last
    processed LSN] as decimal strings; None when there is none.

    An incremental snapshot read carries no `source.lsn` (null in Debezium 3.7); its `sequence`
    holds where the connector was in the WAL when it emitted the chunk, on reading the window's
    close marker. That position is the read's LSN here (`event_lsn`): every change committed after
    the window closed has a higher one, and the window's markers are at or below it."""
    if sequence is None:
        return None
    try:
        values = json.loads(sequence)
    except ValueError:
        return None
    if not isinstance(values, list) or not values:
        return None
    last = values[-1]
    if isinstance(last, int) and not isinstance(last, bool):
        last = str(last)
    if isinstance(last, str) and re.fullmatch(r"[0-9]+", last) and int(last) < 2**63:
        return int(last)
    return None


def event_lsn(lsn: int | None, snapshot: str | None, sequence: str | None) -> int | None:
    """The LSN an event is ordered and placed by: `source.lsn`, or for an incremental snapshot
    read without one, `sequence_lsn` of its `source.sequence`. None makes the event a dead letter
    (NO_LSN)."""
    if lsn is None and snapshot == INCREMENTAL:
        return sequence_lsn(sequence)
    return lsn


def is_incremental_read(op: str | None, source: Mapping[str, Any]) -> bool:
    """A read of an incremental snapshot: its write time is its window's (`write_time`)."""
    return op == READ and source.get("snapshot") == INCREMENTAL


def write_time(op: str, source: Mapping[str, Any], window_us: int | None = None) -> int:
    """The Cassandra write timestamp (microseconds) of a change: its source commit time.

    Not the LSN: TimeWindowCompactionStrategy groups SSTables by write timestamp, and a write made
    outside the pipeline with a default timestamp (now, in microseconds) must not shadow later
    pipeline changes for ever, which it would against LSNs (far smaller numbers). Within a batch
    the last event per key is still chosen by LSN, then Kafka position.

    - c, u, d (streamed changes): `source.ts_us`, the commit time (`source.ts_ms` * 1000 when
      ts_us is missing).
    - r of an initial or blocking snapshot (`source.snapshot` true, first, last,
      first_in_data_collection, last_in_data_collection, missing, or anything other than
      "incremental" and "false"): that time minus SNAPSHOT_MARGIN_US (10 s), so a change committed
      after the snapshot's consistent point wins over the snapshot's copy of the row. cdc_setup
      starts a re-snapshot more than SNAPSHOT_MARGIN_US after the data it replaces was written.
    - r of an incremental snapshot (`source.snapshot` "incremental"): `window_us`, the source commit
      time of the newest signal-table event (a window marker, or the signal itself) at or below the
      read's LSN (`window_time`), never the read's own `source.ts_us`. Debezium stamps a chunk's
      reads with its worker's clock when it emits them, on reading the window's close marker
      (verified in Debezium 3.7: AbstractIncrementalSnapshotChangeEventSource.sendEvent sets the
      offset's time to clock.currentTimeAsInstant(); `source.lsn` is null and `source.sequence`
      holds the close marker's position, `event_lsn`). A change
      committed after the window closed but before Debezium read the close marker (it lags, or
      its clock runs ahead of the database's) would carry an earlier commit time than that stamp,
      and lose to the chunk's older copy of the row for ever. The window's marker time is at most
      the close marker's commit time, so every change committed after the window wins; and it is
      after the signal that asked for the snapshot, so the read wins over what was in Cassandra
      when the signal was written (a stale row, or a write made outside the pipeline before).
      Raises ValueError when `window_us` is None: the caller drops such a read first.
    - r with `source.snapshot` "false" (not a snapshot): `source.ts_us`.

    `source` holds the fields as parsed (ts_us and ts_ms integers or None, snapshot text or None).
    Raises ValueError(NO_SOURCE_TS) when neither time is there: both write paths dead-letter such
    an event before it gets here."""
    commit = source_time_us(source)
    if commit is None:
        raise ValueError(NO_SOURCE_TS)
    if is_incremental_read(op, source):
        if window_us is None:
            raise ValueError("an incremental snapshot read needs its window's time (window_time)")
        return window_us
    if op == READ and source.get("snapshot") not in _NOT_A_FULL_SNAPSHOT:
        return commit - SNAPSHOT_MARGIN_US
    return commit


def signal_marker(value: str | None) -> tuple[int, int] | None:
    """(LSN, source commit time in µs) of a change event of the signal table (an execute-snapshot
    signal, a window's open marker or its deletion, which closes the window), from the raw Kafka
    value; None for a tombstone or anything without both."""
    if value is None:
        return None
    try:
        env = json.loads(value)
    except ValueError:
        return None
    source = env.get("source") if isinstance(env, dict) else None
    if not isinstance(source, dict):
        return None
    lsn = source.get("lsn")
    ts_us, ts_ms = source.get("ts_us"), source.get("ts_ms")
    ok = [isinstance(v, int) and not isinstance(v, bool) for v in (lsn, ts_us, ts_ms)]
    commit = ts_us if ok[1] else ts_ms * 1000 if ok[2] else None
    return (lsn, commit) if ok[0] and commit is not None else None


def window_time(markers: Iterable[tuple[int, int]], lsn: int) -> int | None:
    """The commit time of the newest signal-table event (`signal_marker`) at or below `lsn`: the
    write time of an incremental snapshot read carrying `lsn` (its window's close marker's LSN).
    None when no such event is known."""
    below = [m for m in markers if m[0] <= lsn]
    return max(below)[1] if below else None


# --------------------------------------------------------------------------- the change log's key


def encode_key(table: Table, values: Mapping[str, Any]) -> str:
    """A row's Cassandra key as `changed_rows` keeps it: compact JSON of the key columns in key order
    (`bucket` included), times as epoch milliseconds (floored), decimals as their text, other values
    as they are.

    `values` maps at least the key columns, `bucket` too (the start of the row's hour or day,
    Table.bucket_of its time_column): a timestamp as an aware datetime, a decimal as the text
    the source wrote (a Decimal is refused: str(Decimal) can differ from that text, '1E-8' for
    '0.00000001', and the same key must log the same bytes)."""
    parts: dict[str, Any] = {}
    for name in table.cassandra_key:
        kind = table.column(name).type
        value = values[name]
        if kind == "timestamptz":
            if not isinstance(value, datetime):
                raise TypeError(f"{table.name}.{name}: a key timestamp must be a datetime, got {value!r}")
            value = to_epoch_ms(value)
        elif kind == "numeric" and not isinstance(value, str):
            raise TypeError(f"{table.name}.{name}: a key decimal must be its source text, got {value!r}")
        parts[name] = value
    return _compact_json(parts)


# json.dumps(..., separators=(",", ":"), ensure_ascii=False) spends about 4 us setting up its encoder
# for a three-value key; a key's values are text, integers or booleans, and those are written here
# as json writes them (strings by json's own escaping): the same bytes in a third of the time
_JSON_TEXT = json.encoder.encode_basestring  # what json.dumps uses for strings with ensure_ascii=False


def _compact_json(parts: Mapping[str, Any]) -> str:
    """json.dumps(parts, separators=(",", ":"), ensure_ascii=False), byte for byte."""
    out = []
    for name, value in parts.items():
        kind = type(value)
        if kind is str:
            text = _JSON_TEXT(value)
        elif kind is int:
            text = int.__repr__(value)
        elif kind is bool:
            text = "true" if value else "false"
        elif value is None:
            text = "null"
        else:
            return json.dumps(parts, separators=(",", ":"), ensure_ascii=False)
        out.append(f"{_JSON_TEXT(name)}:{text}")
    return "{" + ",".join(out) + "}"


def decode_key(table: Table, key: str) -> tuple[Any, ...]:
    """A `changed_rows` key as CQL bind values in key order (`bucket` included): aware UTC datetimes,
    Decimal, int, str."""
    data = json.loads(key)
    out: list[Any] = []
    for name in table.cassandra_key:
        kind = table.column(name).type
        value = data[name]
        if kind == "timestamptz":
            value = from_epoch_ms(int(value))
        elif kind == "numeric":
            value = Decimal(str(value))
        out.append(value)
    return tuple(out)
