"""One canonical text per row, and its hash, the same in Python and in Postgres SQL.

The reconciliation (include/health/reconcile.py) sums row hashes per time slice in each store and
compares the sums: Postgres computes its side in SQL (`sql_row_hash`), Cassandra's rows are hashed
here (`row_hash`), so both must produce the same bytes for the same row.

The text of a row is its columns' values in include/tables.py order, joined by SEP (U+001F, the
unit separator), each written as:
- text: as it is;
- numeric: as Postgres prints it: the digits and the scale, never an exponent. Cassandra's
  decimal keeps the scale it was written with (the stream writes Decimal(source text)), but
  `str(Decimal)` switches to an exponent below 1E-6 (str(Decimal("0.00000001")) is "1E-8") and for
  a negative exponent of scale ("1E+2"); `format(value, "f")` is Postgres's text in every case
  ("0.00000001", "100"; tests/unit/test_reconcile.py checks them);
- timestamptz: epoch milliseconds, floored (Cassandra keeps milliseconds);
- bigint: decimal digits;
- boolean: t or f;
- NULL: NULL_TEXT (U+001E), which no value above can be.

The hash is the first 15 hex digits of the text's MD5 (UTF-8), read as an integer (60 bits): a sum
of up to a few million of them stays exact in Python and in Postgres's numeric, and a sum does not
depend on the order the rows were read in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from include.tables import Table
from include.times import EPOCH

SEP = "\x1f"
NULL_TEXT = "\x1e"
HEX_DIGITS = 15


def _numeric(value: Decimal) -> str:
    return format(value, "f")


_EPOCH_NAIVE = EPOCH.replace(tzinfo=None)


def _timestamp(value: datetime) -> str:
    # the Cassandra driver hands back naive UTC datetimes, psycopg2 aware ones; floored like to_epoch_ms
    delta = value - (_EPOCH_NAIVE if value.tzinfo is None else EPOCH)
    return str((delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000)


def _boolean(value: bool) -> str:
    return "t" if value else "f"


_PY: dict[str, Callable[[Any], str]] = {
    "text": str,
    "numeric": _numeric,
    "timestamptz": _timestamp,
    "bigint": str,
    "boolean": _boolean,
}


def value_text(kind: str, value: Any) -> str:
    """One value's canonical text (NULL_TEXT for None)."""
    return NULL_TEXT if value is None else _PY[kind](value)


def row_converters(table: Table) -> list[Callable[[Any], str]]:
    """Per column of `table`, value -> canonical text (None -> NULL_TEXT)."""
    def wrap(conv: Callable[[Any], str]) -> Callable[[Any], str]:
        return lambda v: NULL_TEXT if v is None else conv(v)

    return [wrap(_PY[c.type]) for c in table.columns]


def row_text(table: Table, values: Sequence[Any], converters: Sequence[Callable[[Any], str]] | None = None) -> str:
    """The canonical text of a row given as its values in table.column_names order."""
    convs = converters or row_converters(table)
    return SEP.join(conv(v) for conv, v in zip(convs, values, strict=True))


def text_hash(text: str) -> int:
    return int(hashlib.md5(text.encode("utf-8"), usedforsecurity=False).hexdigest()[:HEX_DIGITS], 16)


def row_hash(table: Table, values: Sequence[Any], converters: Sequence[Callable[[Any], str]] | None = None) -> int:
    """The hash of a row (values in table.column_names order): what `sql_row_hash` computes in Postgres."""
    return text_hash(row_text(table, values, converters))


# --------------------------------------------------------------------------- the same in SQL


def _sql_value(kind: str, column: str) -> str:
    if kind == "text":
        return column
    if kind in ("numeric", "bigint"):
        return f"{column}::text"
    if kind == "timestamptz":
        # extract(epoch ...) is an exact numeric since Postgres 14: no float rounding
        return f"floor(extract(epoch FROM {column}) * 1000)::bigint::text"
    if kind == "boolean":
        return f"CASE {column} WHEN true THEN 't' WHEN false THEN 'f' END"
    raise ValueError(f"no canonical text for type {kind}")


def sql_row_text(table: Table, alias: str | None = None) -> str:
    """SQL for the canonical text of a row of `table` (columns qualified by `alias` if given)."""
    prefix = f"{alias}." if alias else ""
    parts = [f"coalesce({_sql_value(c.type, prefix + chr(34) + c.name + chr(34))}, chr(30))" for c in table.columns]
    return " || chr(31) || ".join(parts)


def sql_row_hash(table: Table, alias: str | None = None) -> str:
    """SQL for `row_hash`: a bigint (60 bits, never negative)."""
    return f"('x' || substr(md5({sql_row_text(table, alias)}), 1, {HEX_DIGITS}))::bit({HEX_DIGITS * 4})::bigint"
