"""What the `cassandra_bridge` DAG's tasks run: Airflow Connections in, include.bridge out.

Connections: binance_postgres (the bridge writes schema `cassandra`), cassandra_default.
"""

from __future__ import annotations

from typing import Any

from include import connections
from include.bridge.sync import sync_table
from include.names import BRIDGE_SCHEMA
from include.schema.postgres import apply


def apply_migrations() -> list[str]:
    """The bridge's tables in Postgres schema `cassandra`."""
    with connections.postgres() as conn:
        return apply(conn, BRIDGE_SCHEMA)


def sync(table: str) -> dict[str, Any]:
    """Bring one bridge table up to date with Cassandra (see include.bridge.sync)."""
    with connections.cassandra() as (session, keyspace), connections.postgres() as pg:
        r = sync_table(pg, session, keyspace, table)
    return {"mode": r.mode, "changed_keys": r.changed_keys, "upserted": r.upserted, "deleted": r.deleted}
