"""The rules of a Debezium change event, written once for every reader of them.

The Spark stream has two ways to apply a micro-batch (Spark jobs, or plain Python on the driver)
and the bridge to Postgres re-reads what the stream logged; all three follow these definitions:
which ops exist, what decimal text is accepted, the error a dead letter carries, and the JSON a
row's Cassandra key is logged as in `changed_rows`.

Pure Python: no Spark, no Airflow, no Cassandra driver.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from include.tables import Table
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


# --------------------------------------------------------------------------- the change log's key


def encode_key(table: Table, values: Mapping[str, Any]) -> str:
    """A row's Cassandra key as `changed_rows` keeps it: compact JSON of the key columns in key order,
    times as epoch milliseconds (floored), decimals as their text, other values as they are.

    `values` maps at least the key columns: a timestamp as an aware datetime, a decimal as the text
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
    return json.dumps(parts, separators=(",", ":"), ensure_ascii=False)


def decode_key(table: Table, key: str) -> tuple[Any, ...]:
    """A `changed_rows` key as CQL bind values in key order: aware UTC datetimes, Decimal, int, str."""
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
