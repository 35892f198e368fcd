"""What the `cdc_setup` DAG's tasks run: Airflow Connections and Variables in, include.cdc out.

Connections: binance_postgres, cassandra_default, kafka_connect, and for a re-snapshot
binance_postgres_replication (a role with REPLICATION). Variables: `cdc_debezium_role` (default:
env DEBEZIUM_DB_USER, else debezium), `cassandra_replication` (JSON; default SimpleStrategy RF 1).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from include import connections
from include.cdc import kafka_connect
from include.cdc.setup import (
    FROM_SCRATCH,
    INCREMENTAL,
    connector_config,
    ensure_postgres_side,
    request_incremental_snapshot,
    resnapshot,
    resnapshot_incremental,
)
from include.names import CONNECTOR, POSTGRES_REPLICATION_CONN_ID
from include.schema.cassandra import DEFAULT_REPLICATION, ensure_schema, migrations

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_SECONDS = 180


def prepare_postgres() -> dict[str, Any]:
    """Migrations of schema binance, the publication, the heartbeat grant, replica identities."""
    from airflow.sdk import Variable

    role = Variable.get("cdc_debezium_role", default=os.environ.get("DEBEZIUM_DB_USER", "debezium"))
    with connections.postgres() as conn:
        return ensure_postgres_side(conn, role)


def prepare_cassandra() -> dict[str, Any]:
    """The keyspace of cassandra_default (replication from the Variable) and the CQL migrations;
    says whether one of them created the sink's data tables again (they must be filled anew)."""
    from airflow.sdk import Variable

    replication = json.loads(Variable.get("cassandra_replication", default=json.dumps(DEFAULT_REPLICATION)))
    applied = ensure_schema(connections.cassandra_settings(), replication)
    rebuilt = [m.path.name for m in migrations() if m.path.name in applied and m.rebuilds_sink]
    return {"applied": applied, "rebuilt_by": rebuilt}


def resnapshot_mode(requested: bool, from_scratch: bool, rebuilt_by: list[str] | None) -> str | None:
    """How to start the capture over, if at all: from scratch when a migration created the sink's
    tables again (an upgrade: they are empty) or when asked (`from_scratch`: the source was rebuilt,
    so Cassandra may hold rows the new source never had, nor will delete); incremental when asked
    otherwise (an invalidated slot, Kafka's retention passed during an outage)."""
    if rebuilt_by or (requested and from_scratch):
        return FROM_SCRATCH
    return INCREMENTAL if requested else None


def start_over(requested: bool, rebuilt_by: list[str] | None = None, from_scratch: bool = False) -> dict[str, Any]:
    """Start the capture over when asked (`requested`), or when a migration created the sink's
    tables again. From scratch: stop the connector, drop its offsets and slot and empty the sink, so
    that registering it again takes a new initial snapshot. Incremental: the same but the sink,
    which is kept, and the connector started at once with a new slot, streaming only; the next
    tasks register the usual configuration and ask for an incremental snapshot of every table. A
    connector not registered yet needs none of it: registering takes a snapshot."""
    mode = resnapshot_mode(requested, from_scratch, rebuilt_by)
    if mode is None:
        return {"resnapshot": False}
    reason = "asked for" if requested else f"the sink's tables were created again by {', '.join(rebuilt_by or [])}"
    with kafka_connect.client() as client:
        if client.get_config(CONNECTOR) is None:
            return {"resnapshot": False, "reason": "connector not registered yet: registering takes a snapshot"}
        if mode == INCREMENTAL:
            log.warning("incremental re-snapshot (%s): new slot, streaming at once, Cassandra kept and served; every "
                        "table is snapshotted again incrementally", reason)
            with connections.postgres(POSTGRES_REPLICATION_CONN_ID) as replication:
                return {"resnapshot": True, "reason": reason,
                        **resnapshot_incremental(client, CONNECTOR, replication)}
        log.warning("re-snapshot from scratch (%s): the connector stops, Cassandra is emptied and filled again from "
                    "Postgres", reason)
        with connections.cassandra() as (session, keyspace), \
                connections.postgres(POSTGRES_REPLICATION_CONN_ID) as replication, connections.postgres() as pg:
            return {"resnapshot": True, "reason": reason,
                    **resnapshot(client, CONNECTOR, replication, session, keyspace, pg)}


def register_connector(resnapshotted: bool) -> str:
    """PUT the connector's configuration if it differs (an update never re-snapshots); after a
    re-snapshot's stop, resume it."""
    with kafka_connect.client() as client:
        outcome = client.ensure(CONNECTOR, connector_config(CONNECTOR))
        if resnapshotted and client.status(CONNECTOR)["connector"]["state"] == "STOPPED":
            client.resume(CONNECTOR)
            outcome += ", resumed for a new snapshot"
    log.info("connector %s: %s", CONNECTOR, outcome)
    return outcome


def wait_for_connector() -> dict[str, Any]:
    """Until the connector and its tasks are RUNNING; a FAILED one fails the task with its trace."""
    with kafka_connect.client() as client:
        return client.wait_running(CONNECTOR, timeout=CONNECT_TIMEOUT_SECONDS)


def request_snapshot(started_over: dict[str, Any]) -> list[str]:
    """After an incremental re-snapshot, once the connector runs: ask Debezium for an incremental
    snapshot of every table (signals in binance.debezium_signal). Nothing otherwise."""
    if started_over.get("mode") != INCREMENTAL:
        return []
    with connections.postgres() as pg:
        return request_incremental_snapshot(pg)
