"""What the `retention` DAG's tasks run: the Variable `retention` in, deletes and Cassandra's window out.

Connections: binance_postgres (both Postgres stores), cassandra_default. Variables: `retention`
(see include/retention/policy.py), and the older `binance_order_book_retention_hours`, still read
for the order book when `retention` does not name it.
"""

from __future__ import annotations

import logging

from include import connections
from include.names import BRIDGE_SCHEMA, SOURCE_SCHEMA
from include.retention.policy import Retention
from include.retention.prune import prune_postgres, publish_cassandra_window

log = logging.getLogger(__name__)


def policy() -> Retention:
    from airflow.sdk import Variable

    retention = Retention.from_json(Variable.get("retention", default=None),
                                    Variable.get("binance_order_book_retention_hours", default=None))
    log.info("retention: %s", retention.describe())
    return retention


def publish_cassandra() -> dict[str, int | None]:
    """Cassandra's window, for the stream's TTLs (first: it bounds what the source's deletes must do)."""
    with connections.cassandra() as (session, keyspace), connections.postgres() as pg:
        return publish_cassandra_window(session, keyspace, policy(), pg)


def prune_source() -> dict[str, int]:
    """Postgres `binance`: rows past each table's horizon (their deletes flow to Cassandra)."""
    with connections.postgres() as conn:
        return prune_postgres(conn, SOURCE_SCHEMA, "binance", policy())


def prune_bridge() -> dict[str, int]:
    """Postgres `cassandra` (what Grafana reads): rows past each table's bridge horizon."""
    with connections.postgres() as conn:
        return prune_postgres(conn, BRIDGE_SCHEMA, "bridge", policy())
