"""Migrations against the real Postgres: idempotent, and the tables match include/tables.py."""

from __future__ import annotations

import pytest

from include import migrations
from include.tables import TABLES

pytestmark = pytest.mark.integration

PG_TYPES = {"text": "text", "numeric": "numeric", "timestamptz": "timestamp with time zone", "bigint": "bigint",
            "boolean": "boolean"}


def test_applying_twice_changes_nothing(pg):
    migrations.apply(pg, "binance")
    assert migrations.apply(pg, "binance") == []


def test_tables_match_their_single_definition(pg):
    migrations.apply(pg, "binance")
    with pg.cursor() as cur:
        for name, table in TABLES.items():
            cur.execute("SELECT column_name, data_type FROM information_schema.columns "
                        "WHERE table_schema = 'binance' AND table_name = %s ORDER BY ordinal_position", (name,))
            assert cur.fetchall() == [(c.name, PG_TYPES[c.type]) for c in table.columns], name
            cur.execute("SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
                        "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s::regclass AND i.indisprimary "
                        "ORDER BY array_position(i.indkey, a.attnum)", (f"binance.{name}",))
            assert tuple(r[0] for r in cur.fetchall()) == table.primary_key, name
            cur.execute("SELECT relreplident FROM pg_class WHERE oid = %s::regclass", (f"binance.{name}",))
            assert cur.fetchone()[0] == {"DEFAULT": "d", "FULL": "f"}[table.replica_identity], name
    pg.commit()


def test_an_edited_applied_migration_is_refused(pg, tmp_path, monkeypatch):
    migrations.apply(pg, "binance")
    folder = tmp_path / "binance"
    folder.mkdir()
    for mig in migrations.discover("binance"):
        (folder / mig.path.name).write_text(mig.sql + "\n-- edited\n")
    monkeypatch.setattr(migrations, "SQL_ROOT", tmp_path)
    with pytest.raises(migrations.MigrationError, match="changed after it was applied"):
        migrations.apply(pg, "binance")
