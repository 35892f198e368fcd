"""What the `cassandra_bridge` DAG's tasks run: Airflow Connections in, include.bridge out.

Connections: binance_postgres (the bridge writes schema `cassandra`), cassandra_default (its extra
may set the read consistency: {"consistency": "LOCAL_QUORUM"}). Variable: cassandra_bridge_consistency,
the read consistency when the connection sets none (default: by the keyspace's replication).
"""

from __future__ import annotations

import logging
from typing import Any

from include import connections
from include.bridge.sync import sync_table
from include.names import BRIDGE_SCHEMA
from include.schema.postgres import apply

log = logging.getLogger(__name__)

CONSISTENCY_VARIABLE = "cassandra_bridge_consistency"


def apply_migrations() -> list[str]:
    """The bridge's tables in Postgres schema `cassandra`."""
    with connections.postgres() as conn:
        return apply(conn, BRIDGE_SCHEMA)


def consistency_setting(settings: connections.CassandraSettings) -> str | None:
    """The read consistency level set for the bridge: the connection's extra, else the Variable, else None."""
    if settings.consistency:
        log.info("read consistency %s from the Cassandra connection's extra", settings.consistency)
        return settings.consistency
    from airflow.sdk import Variable

    value = Variable.get(CONSISTENCY_VARIABLE, default=None)
    if value:
        log.info("read consistency %s from the Variable %s", value, CONSISTENCY_VARIABLE)
    return value or None


def sync(table: str) -> dict[str, Any]:
    """Bring one bridge table up to date with Cassandra (see include.bridge.sync)."""
    settings = connections.cassandra_settings()
    consistency = consistency_setting(settings)
    with connections.cassandra_session(settings) as session, connections.postgres() as pg:
        r = sync_table(pg, session, settings.keyspace, table, consistency=consistency)
    return {"mode": r.mode, "reason": r.reason, "changed_keys": r.changed_keys, "rows_read": r.rows_read,
            "upserted": r.upserted, "deleted": r.deleted,
            "watermark": r.watermark.isoformat() if r.watermark else None}
