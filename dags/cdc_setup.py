"""
### cdc_setup

Sets up change data capture, safely re-runnable (manual trigger):

1. **Postgres**: applies the `binance` migrations (tables, heartbeat and signal tables), makes the
   filtered publication `binance_cdc` cover exactly the tables of include/tables.py (and those two),
   grants the heartbeat and signal tables to the Debezium role, checks replica identities.
2. **Cassandra**: creates the keyspace of `cassandra_default` (replication from the Variable
   `cassandra_replication`, default `{"class": "SimpleStrategy", "replication_factor": 1}`; use
   NetworkTopologyStrategy on a cluster) and applies the versioned CQL.
3. **Kafka Connect**: `PUT /connectors/binance-postgres/config` from `connectors/binance-postgres.json`
   plus the settings derived from the table definitions (table.include.list, publication, slot,
   topic prefix, signal table), through `kafka_connect`, only if the config differs (an update
   never deletes the connector, so there is no re-snapshot), then waits until the connector and
   all its tasks are RUNNING; a FAILED task fails this DAG with its trace.

Param `resnapshot` (default false) starts the capture over, the recovery when changes were lost
(an invalidated replication slot, Kafka retention shorter than an outage): before registering,
the connector is stopped, its offsets deleted and its slot dropped (through
`binance_postgres_replication`, a role with REPLICATION). By default incrementally: Cassandra
and the bridge are kept and served; the connector runs once with `snapshot.mode=no_data` (a new
slot, streaming at once) until it has committed offsets, is registered again with its usual
configuration, and `request_snapshot` asks Debezium for an incremental snapshot of every table
(signals in `binance.debezium_signal`); rows the lost changes would have deleted are then found by
`pipeline_health`'s reconciliation, whose full pass this starts, and deleted downstream.

With `{"resnapshot": true, "from_scratch": true}` (a source database rebuilt from scratch) the
Cassandra tables and the bridge's watermarks are emptied instead, and the connector resumes with a
new initial snapshot of every table; the next `cassandra_bridge` run copies every table whole.
Cassandra is incomplete until that snapshot has streamed through. A CQL migration that creates
the sink's tables again (an upgrade that changes their keys, marked `-- rebuilds sink tables`)
triggers the same by itself: their data comes back from Postgres (README, "Upgrading").

Needs: connections `binance_postgres`, `cassandra_default`, `kafka_connect` (and for `resnapshot`
`binance_postgres_replication`); Variable `cdc_debezium_role` (default: env `DEBEZIUM_DB_USER`,
else `debezium`).
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Param, dag, task


@dag(
    schedule=None,
    catchup=False,
    max_active_runs=1,
    tags=["cdc", "setup"],
    default_args={"retries": 1, "retry_delay": timedelta(seconds=15)},
    params={"resnapshot": Param(False, type="boolean",
                                description="start the capture over: new slot, incremental snapshot of every table, "
                                            "sink kept and served"),
            "from_scratch": Param(False, type="boolean",
                                  description="with resnapshot: empty the sink first and take a new initial snapshot "
                                              "(a source rebuilt from scratch)")},
    doc_md=__doc__,
)
def cdc_setup():
    @task(multiple_outputs=False)
    def ensure_postgres_side() -> dict:
        from include.cdc import tasks

        return tasks.prepare_postgres()

    @task(multiple_outputs=False)
    def ensure_cassandra_schema() -> dict:
        from include.cdc import tasks

        return tasks.prepare_cassandra()

    @task(multiple_outputs=False)
    def resnapshot(cassandra: dict, params: dict | None = None) -> dict:
        from include.cdc import tasks

        return tasks.start_over(bool((params or {}).get("resnapshot")), cassandra["rebuilt_by"],
                                bool((params or {}).get("from_scratch")))

    @task
    def register_connector(started_over: dict) -> str:
        from include.cdc import tasks

        return tasks.register_connector(started_over["resnapshot"])

    @task(multiple_outputs=False)
    def wait_for_connector() -> dict:
        from include.cdc import tasks

        return tasks.wait_for_connector()

    @task
    def request_snapshot(started_over: dict) -> list:
        from include.cdc import tasks

        return tasks.request_snapshot(started_over)

    started_over = resnapshot(ensure_cassandra_schema())
    ensure_postgres_side() >> started_over
    register_connector(started_over) >> wait_for_connector() >> request_snapshot(started_over)


cdc_setup()
