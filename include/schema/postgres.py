"""Postgres migrations: `include/schema/sql/<schema>/V<NNN>__<name>.sql`, applied once each, in
order, idempotently (see include/schema/versions.py).

Applied versions are recorded with their checksum in `<schema>.schema_migrations`. Concurrent runs
serialise on an advisory lock.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from include.schema.versions import Migration, MigrationError, discover

log = logging.getLogger(__name__)

SQL_ROOT = Path(__file__).resolve().parent / "sql"


def migrations(schema: str) -> list[Migration]:
    return discover(SQL_ROOT / schema, "sql")


def apply(conn: Any, schema: str) -> list[str]:
    """Apply the pending migrations of `schema` on a DB-API connection; return what was applied."""
    applied_now: list[str] = []
    lock_key = int(hashlib.sha256(f"migrations:{schema}".encode()).hexdigest()[:15], 16)
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_lock(%s)", (lock_key,))
        try:
            cur.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            cur.execute(
                f'CREATE TABLE IF NOT EXISTS "{schema}".schema_migrations ('
                "version int PRIMARY KEY, name text NOT NULL, checksum text NOT NULL, "
                "applied_at timestamptz NOT NULL DEFAULT now())"
            )
            conn.commit()
            cur.execute(f'SELECT version, checksum FROM "{schema}".schema_migrations')
            done = dict(cur.fetchall())
            for mig in migrations(schema):
                if mig.version in done:
                    mig.check_unchanged(done[mig.version])
                    continue
                log.info("applying migration %s.%s", schema, mig.path.name)
                try:
                    cur.execute(mig.text)
                    cur.execute(
                        f'INSERT INTO "{schema}".schema_migrations (version, name, checksum) VALUES (%s, %s, %s)',
                        (mig.version, mig.name, mig.checksum),
                    )
                    conn.commit()
                except Exception as exc:
                    conn.rollback()
                    raise MigrationError(f"migration {mig.path.name} failed: {exc}") from exc
                applied_now.append(mig.path.name)
        finally:
            cur.execute("SELECT pg_advisory_unlock(%s)", (lock_key,))
            conn.commit()
    if not applied_now:
        log.info("schema %s is up to date", schema)
    return applied_now
