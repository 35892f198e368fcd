"""Versioned SQL migrations, applied once each, in order, idempotently.

Files are `include/sql/<schema>/V<NNN>__<name>.sql`. Applied versions are recorded with a checksum
in `<schema>.schema_migrations`; an applied file that was edited afterwards is an error (write a new
version instead). Concurrent runs serialise on an advisory lock.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SQL_ROOT = Path(__file__).resolve().parent / "sql"
_NAME = re.compile(r"^V(\d{3,})__([a-z0-9_]+)\.sql$")


class MigrationError(RuntimeError):
    """A migration file is malformed, was changed after being applied, or failed to apply."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    @property
    def sql(self) -> str:
        return self.path.read_text()

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def discover(schema: str) -> list[Migration]:
    folder = SQL_ROOT / schema
    found = []
    for path in sorted(folder.glob("*.sql")):
        m = _NAME.match(path.name)
        if not m:
            raise MigrationError(f"{path}: migration files are named V<NNN>__<name>.sql")
        found.append(Migration(int(m.group(1)), m.group(2), path))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"{folder}: two migrations share a version: {versions}")
    return sorted(found, key=lambda m: m.version)


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
            cur.execute(f'SELECT version, name, checksum FROM "{schema}".schema_migrations')
            done = {v: (n, c) for v, n, c in cur.fetchall()}
            for mig in discover(schema):
                if mig.version in done:
                    if done[mig.version][1] != mig.checksum:
                        raise MigrationError(
                            f"{mig.path.name} was changed after it was applied (checksum differs); "
                            "add a new migration instead of editing an applied one"
                        )
                    continue
                log.info("applying migration %s.%s", schema, mig.path.name)
                try:
                    cur.execute(mig.sql)
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
