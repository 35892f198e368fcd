"""What the `cdc_setup` DAG does, free of Airflow: source side, sink schema, connector."""

from __future__ import annotations

import logging
from typing import Any

from include.migrations import apply
from include.tables import SCHEMA, TABLES

log = logging.getLogger(__name__)

PUBLICATION = "binance_cdc"
SLOT = "binance_cdc"
HEARTBEAT_TABLE = "debezium_heartbeat"


def ensure_postgres_side(conn: Any, debezium_role: str) -> dict[str, Any]:
    """Tables and CDC objects from the migrations, plus what depends on configuration: the
    heartbeat grant for the Debezium role and a publication covering every source table."""
    applied = apply(conn, SCHEMA)
    wanted = {f"{SCHEMA}.{t}" for t in (*TABLES, HEARTBEAT_TABLE)}
    with conn.cursor() as cur:
        cur.execute(f'GRANT SELECT, INSERT, UPDATE ON "{SCHEMA}"."{HEARTBEAT_TABLE}" TO "{debezium_role}"')
        cur.execute("SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = %s",
                    (PUBLICATION,))
        published = {r[0] for r in cur.fetchall()}
        missing = sorted(wanted - published)
        for table in missing:
            schema, name = table.split(".")
            cur.execute(f'ALTER PUBLICATION {PUBLICATION} ADD TABLE "{schema}"."{name}"')
            log.info("added %s to publication %s", table, PUBLICATION)
        cur.execute("SELECT c.relname, c.relreplident FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = %s AND c.relname = ANY(%s)", (SCHEMA, list(TABLES)))
        identities = dict(cur.fetchall())
    conn.commit()
    for name, table in TABLES.items():
        expected = {"DEFAULT": "d", "FULL": "f"}[table.replica_identity]
        if identities.get(name) != expected:
            raise RuntimeError(f"{SCHEMA}.{name} has replica identity {identities.get(name)!r}, expected "
                               f"{table.replica_identity}: Debezium's deletes would lack the sink's key")
    return {"migrations_applied": applied, "publication_tables_added": missing}
