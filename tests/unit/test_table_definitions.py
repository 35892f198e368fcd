"""include/tables.py is the one place the tables are written: every migration and every record
dataclass must agree with it. No services needed: the .sql and .cql files are parsed.

The parser understands the statements the migrations use (CREATE TABLE, DROP TABLE, ALTER TABLE ...
ADD/DROP COLUMN, REPLICA IDENTITY or WITH options, CREATE INDEX, CREATE TRIGGER); a statement that
changes a table in a way it does not understand fails the test, so a new migration cannot slip past it.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import pytest

from include.binance import models
from include.names import ARCHIVE_FILES_TABLE, BRIDGE_SCHEMA, HEARTBEAT_TABLE, SIGNAL_TABLE, SOURCE_SCHEMA
from include.schema import cassandra as cql_schema
from include.schema import postgres as sql_schema
from include.schema.versions import statements
from include.tables import BRIDGE_TABLES, BUCKET, CDC_COLUMNS, TABLES, Column, Table

# tables the migrations create that hold no market data, so include/tables.py does not define them
NOT_DATA = {
    SOURCE_SCHEMA: {HEARTBEAT_TABLE, ARCHIVE_FILES_TABLE, SIGNAL_TABLE},
    BRIDGE_SCHEMA: {"bridge_watermarks"},
    "cql": {"dead_letters", "changed_rows", "stream_progress", "stream_offsets", "stream_position", "sink_retention",
            "snapshot_windows"},
}
CQL_TYPES = {"text": "text", "numeric": "decimal", "timestamptz": "timestamp", "bigint": "bigint", "boolean": "boolean"}
PY_TYPES = {str: "text", Decimal: "numeric", datetime: "timestamptz", int: "bigint", bool: "boolean"}


@dataclass
class Parsed:
    """A table as the migrations leave it."""

    columns: dict[str, str] = field(default_factory=dict)
    not_null: set[str] = field(default_factory=set)
    primary_key: tuple[str, ...] = ()
    partition_key: tuple[str, ...] = ()
    clustering: tuple[str, ...] = ()
    replica_identity: str = "DEFAULT"
    indexed: set[str] = field(default_factory=set)
    # columns an UPDATE may not change (a trigger refuses it)
    fixed: set[str] = field(default_factory=set)


def _split_top(text: str) -> list[str]:
    """Split on commas outside parentheses."""
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    if current.strip():
        parts.append(current.strip())
    return parts


def _body(stmt: str, start: int) -> str:
    """The text inside the parenthesis opened just before `start`."""
    depth = 1
    for i in range(start, len(stmt)):
        depth += (stmt[i] == "(") - (stmt[i] == ")")
        if depth == 0:
            return stmt[start:i]
    raise AssertionError(f"unbalanced parentheses: {stmt[:200]}")


def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip().strip('"') for n in text.replace("(", " ").replace(")", " ").split(",") if n.strip())


_CREATE = re.compile(r"^CREATE TABLE IF NOT EXISTS (?:(\w+)\.)?(\w+)\s*\(", re.I)
_INDEX = re.compile(r"^CREATE INDEX IF NOT EXISTS \w+ ON (?:(\w+)\.)?(\w+)\s*\((.*?)\)", re.S | re.I)
_ALTER = re.compile(r"^ALTER TABLE (?:(\w+)\.)?(\w+)\s+(.*)$", re.S | re.I)
_DROP = re.compile(r"^DROP TABLE IF EXISTS (?:(\w+)\.)?(\w+)$", re.I)
_TRIGGER = re.compile(r"^CREATE (?:OR REPLACE )?TRIGGER \w+ BEFORE UPDATE OF \w+ ON (?:(\w+)\.)?(\w+) .*"
                      r"EXECUTE FUNCTION \w+\.refuse_key_move\('(\w+)'\)$", re.I)


def parse(texts: list[str], dialect: str) -> dict[str, Parsed]:
    """Apply the migrations' statements, in order, to a model of the tables."""
    tables: dict[str, Parsed] = {}
    for text in texts:
        # dollar-quoted bodies (DO blocks) hold no table definitions here; their semicolons would split wrongly
        for stmt in statements(re.sub(r"\$\$.*?\$\$", "$$", text, flags=re.S)):
            stmt = " ".join(stmt.split())
            if m := _CREATE.match(stmt):
                t = tables.setdefault(m.group(2), Parsed())
                for item in _split_top(_body(stmt, m.end())):
                    if item.upper().startswith("PRIMARY KEY"):
                        inner = item[item.index("(") + 1:item.rindex(")")].strip()
                        if inner.startswith("("):
                            t.partition_key = _names(inner[:inner.index(")") + 1])
                            t.clustering = _names(inner[inner.index(")") + 1:])
                        else:
                            keys = _names(inner)
                            t.partition_key, t.clustering = keys[:1], keys[1:]
                        t.primary_key = t.partition_key + t.clustering
                    else:
                        name, kind, *rest = item.split()
                        t.columns[name.strip('"')] = kind.lower()
                        if "NOT NULL" in " ".join(rest).upper():
                            t.not_null.add(name.strip('"'))
            elif m := _DROP.match(stmt):
                tables.pop(m.group(2), None)
            elif m := _TRIGGER.match(stmt):
                tables[m.group(2)].fixed.add(m.group(3))
            elif m := _INDEX.match(stmt):
                tables[m.group(2)].indexed.add(_names(m.group(3))[0])
            elif m := _ALTER.match(stmt):
                t, action = tables[m.group(2)], m.group(3)
                if a := re.match(r"ADD (?:COLUMN )?(?:IF NOT EXISTS )?(\w+) (\w+)", action, re.I):
                    t.columns[a.group(1)] = a.group(2).lower()
                elif a := re.match(r"DROP COLUMN (?:IF EXISTS )?(\w+)", action, re.I):
                    t.columns.pop(a.group(1))
                elif a := re.match(r"REPLICA IDENTITY (\w+)", action, re.I):
                    t.replica_identity = a.group(1).upper()
                elif re.match(r"WITH ", action, re.I):
                    pass  # table options (TTL, compaction): no column or key changes
                else:
                    pytest.fail(f"the test cannot read this {dialect} statement; teach it: {stmt[:200]}")
            elif re.match(r"^(CREATE|ALTER|DROP) ", stmt, re.I) and "TABLE" in stmt.upper().split("(")[0]:
                pytest.fail(f"the test cannot read this {dialect} statement; teach it: {stmt[:200]}")
    return tables


def _sql_tables(schema: str) -> dict[str, Parsed]:
    return parse([m.text for m in sql_schema.migrations(schema)], "sql")


def _cql_tables() -> dict[str, Parsed]:
    return parse([m.text for m in cql_schema.migrations()], "cql")


def _check_same_tables(parsed: dict[str, Parsed], defined: dict[str, Table], not_data: set[str], where: str) -> None:
    missing = sorted(set(defined) - set(parsed))
    undefined = sorted(set(parsed) - set(defined) - not_data - {"schema_migrations"})
    assert not missing, f"{where}: tables defined in include/tables.py but not created by a migration: {missing}"
    assert not undefined, f"{where}: tables created by a migration but not defined in include/tables.py: {undefined}"


@pytest.mark.parametrize("schema, defined", [(SOURCE_SCHEMA, TABLES), (BRIDGE_SCHEMA, BRIDGE_TABLES)])
def test_postgres_migrations_create_the_defined_tables(schema, defined):
    parsed = _sql_tables(schema)
    _check_same_tables(parsed, defined, NOT_DATA[schema], f"include/schema/sql/{schema}")
    for name, table in defined.items():
        t = parsed[name]
        assert list(t.columns.items()) == [(c.name, c.type) for c in table.columns], \
            f"{schema}.{name}: the migrations' columns differ from include/tables.py"
        assert t.primary_key == table.primary_key, f"{schema}.{name}: primary key"
        data_columns = {c.name for c in table.columns} - {c.name for c in CDC_COLUMNS}
        assert data_columns <= t.not_null, f"{schema}.{name}: columns that may be NULL: {data_columns - t.not_null}"


def test_source_replica_identities_carry_the_sink_key():
    parsed = _sql_tables(SOURCE_SCHEMA)
    for name, table in TABLES.items():
        assert parsed[name].replica_identity == table.replica_identity, name
        # a delete event carries `before` = the primary key (DEFAULT) or every column (FULL)
        carried = set(table.primary_key) if table.replica_identity == "DEFAULT" else set(table.column_names)
        needed = {*table.row_key, table.time_column}
        assert needed <= carried, f"{name}: a delete event would lack {needed - carried} (Cassandra's key or bucket)"


def test_a_cassandra_key_column_outside_the_primary_key_cannot_be_updated():
    """Such an UPDATE would leave the old row in Cassandra under its old key: a trigger refuses it."""
    parsed = _sql_tables(SOURCE_SCHEMA)
    for name, table in TABLES.items():
        movable = {*table.row_key, table.time_column} - set(table.primary_key)
        assert parsed[name].fixed == movable, f"{name}: refuse_key_move triggers {parsed[name].fixed}, need {movable}"


@pytest.mark.parametrize("schema, defined", [(SOURCE_SCHEMA, TABLES), (BRIDGE_SCHEMA, BRIDGE_TABLES)])
def test_every_table_indexes_its_time_and_freshness_columns(schema, defined):
    """Retention deletes by the time column, freshness reads max() of its column: both indexed
    (or first in the primary key)."""
    parsed = _sql_tables(schema)
    for name, table in defined.items():
        usable = parsed[name].indexed | {parsed[name].primary_key[0]}
        for column in {table.time_column, table.freshness_column} - {None}:
            assert column in usable, f"{schema}.{name}: no index on {column}"


def test_cassandra_migrations_create_the_defined_tables():
    parsed = _cql_tables()
    _check_same_tables(parsed, TABLES, NOT_DATA["cql"], "include/schema/cql")
    for name, table in TABLES.items():
        t = parsed[name]
        want = {c.name: CQL_TYPES[c.type] for c in (*table.columns, BUCKET, *CDC_COLUMNS)}
        assert t.columns == want, f"Cassandra {name}: the migrations' columns differ from include/tables.py"
        assert t.partition_key == table.cassandra_partition, f"Cassandra {name}: partition key"
        assert t.clustering == table.cassandra_clustering, f"Cassandra {name}: clustering columns"


def _records() -> dict[str, type]:
    found: dict[str, type] = {}
    for obj in vars(models).values():
        if dataclasses.is_dataclass(obj) and isinstance(obj, type):
            assert obj.TABLE not in found, f"two record classes for {obj.TABLE}"
            found[obj.TABLE] = obj
    return found


def test_every_table_has_one_record_class_with_its_columns():
    records = _records()
    assert set(records) == set(TABLES), "include/binance/models.py: one dataclass per table, with TABLE set"
    for name, table in TABLES.items():
        cls = records[name]
        hints = typing.get_type_hints(cls)
        fields = [(f.name, hints[f.name]) for f in dataclasses.fields(cls)]
        assert [n for n, _ in fields] == table.column_names, f"{cls.__name__}: fields differ from {name}'s columns"
        for (fname, hint), column in zip(fields, table.columns, strict=True):
            kind = "text" if typing.get_origin(hint) is typing.Literal else PY_TYPES[hint]
            assert kind == column.type, f"{cls.__name__}.{fname} is {hint}, column {name}.{column.name} {column.type}"


def test_a_column_defined_without_its_migration_is_caught(monkeypatch):
    """The check above can fail: a column added to a definition alone is reported."""
    klines = TABLES["klines"]
    grown = dataclasses.replace(klines, columns=(*klines.columns, Column("taker_buy_volume", "numeric")))
    monkeypatch.setitem(TABLES, "klines", grown)
    with pytest.raises(AssertionError, match="klines: the migrations' columns differ"):
        test_postgres_migrations_create_the_defined_tables(SOURCE_SCHEMA, TABLES)
    with pytest.raises(AssertionError, match="Cassandra klines"):
        test_cassandra_migrations_create_the_defined_tables()


def test_the_parser_reads_the_migration_files_it_is_given(tmp_path: Path):
    """An ALTER TABLE the parser does not understand fails loudly instead of being skipped."""
    with pytest.raises(pytest.fail.Exception, match="cannot read"):
        parse(["CREATE TABLE IF NOT EXISTS s.t (a text, PRIMARY KEY (a)); ALTER TABLE s.t RENAME COLUMN a TO b;"],
              "sql")
    parsed = parse(["CREATE TABLE IF NOT EXISTS s.t (a text NOT NULL, PRIMARY KEY (a));"
                    "ALTER TABLE s.t ADD COLUMN b numeric;"], "sql")
    assert parsed["t"].columns == {"a": "text", "b": "numeric"}
