"""Migrations against the real Postgres: idempotent, and the tables of both schemas (the source
`binance` and the bridge's `cassandra`) match include/tables.py."""

from __future__ import annotations

import pytest

from include.names import BRIDGE_SCHEMA, SOURCE_SCHEMA
from include.schema import postgres as migrations
from include.tables import BRIDGE_TABLES, TABLES

pytestmark = pytest.mark.integration

PG_TYPES = {"text": "text", "numeric": "numeric", "timestamptz": "timestamp with time zone", "bigint": "bigint",
            "boolean": "boolean"}


def test_applying_twice_changes_nothing(pg):
    migrations.apply(pg, "binance")
    assert migrations.apply(pg, "binance") == []


@pytest.mark.parametrize("schema, tables", [(SOURCE_SCHEMA, TABLES), (BRIDGE_SCHEMA, BRIDGE_TABLES)])
def test_tables_match_their_single_definition(pg, schema, tables):
    migrations.apply(pg, schema)
    with pg.cursor() as cur:
        for name, table in tables.items():
            cur.execute("SELECT column_name, data_type FROM information_schema.columns "
                        "WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position", (schema, name))
            assert cur.fetchall() == [(c.name, PG_TYPES[c.type]) for c in table.columns], name
            cur.execute("SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
                        "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s::regclass AND i.indisprimary "
                        "ORDER BY array_position(i.indkey, a.attnum)", (f"{schema}.{name}",))
            assert tuple(r[0] for r in cur.fetchall()) == table.primary_key, name
            if schema == SOURCE_SCHEMA:
                cur.execute("SELECT relreplident FROM pg_class WHERE oid = %s::regclass", (f"{schema}.{name}",))
                assert cur.fetchone()[0] == {"DEFAULT": "d", "FULL": "f"}[table.replica_identity], name
    pg.commit()


def test_an_edited_applied_migration_is_refused(pg, tmp_path, monkeypatch):
    migrations.apply(pg, "binance")
    folder = tmp_path / "binance"
    folder.mkdir()
    for mig in migrations.migrations("binance"):
        (folder / mig.path.name).write_text(mig.text + "\n-- edited\n")
    monkeypatch.setattr(migrations, "SQL_ROOT", tmp_path)
    with pytest.raises(migrations.MigrationError, match="changed after it was applied"):
        migrations.apply(pg, "binance")


@pytest.mark.parametrize("table, column, moved", [
    ("order_book", "captured_at", "captured_at + interval '1 minute'"),
    ("recent_trades", "time", "time + interval '1 hour'"),
])
def test_a_cassandra_key_column_outside_the_postgres_key_cannot_be_updated(pg, table, column, moved):
    """An UPDATE of it would leave the old row in Cassandra under its old key: Postgres refuses it,
    naming the column, and other columns still update."""
    migrations.apply(pg, SOURCE_SCHEMA)
    symbol = "KEYMOVEUSDT"
    with pg.cursor() as cur:
        cur.execute(f"DELETE FROM binance.{table} WHERE symbol = %s", (symbol,))
        if table == "order_book":
            cur.execute("INSERT INTO binance.order_book VALUES (1, %s, 'bid', 1.5, 2, now())", (symbol,))
        else:
            cur.execute("INSERT INTO binance.recent_trades VALUES (%s, 1, 1.5, 2, 3, now(), true)", (symbol,))
    pg.commit()
    try:
        with pytest.raises(Exception, match=rf"binance\.{table}\.{column} cannot be updated .* Cassandra's key"):
            with pg.cursor() as cur:
                cur.execute(f"UPDATE binance.{table} SET {column} = {moved} WHERE symbol = %s", (symbol,))
        pg.rollback()
        value = "quantity" if table == "order_book" else "qty"
        with pg.cursor() as cur:
            cur.execute(f"UPDATE binance.{table} SET {value} = 7 WHERE symbol = %s", (symbol,))
            assert cur.rowcount == 1
            # setting it to the value it holds changes nothing: allowed
            cur.execute(f"UPDATE binance.{table} SET {column} = {column} WHERE symbol = %s", (symbol,))
        pg.commit()
    finally:
        with pg.cursor() as cur:
            cur.execute(f"DELETE FROM binance.{table} WHERE symbol = %s", (symbol,))
        pg.commit()
