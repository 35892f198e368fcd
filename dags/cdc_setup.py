"""
### cdc_setup

Sets up change data capture, safely re-runnable (manual trigger):

1. **Postgres**: applies the `binance` migrations (tables, heartbeat table, the filtered
   publication `binance_cdc`), grants the heartbeat table to the Debezium role, checks replica identities.
2. **Cassandra**: creates the keyspace of `cassandra_default` (replication from the Variable
   `cassandra_replication`, default `{"class": "SimpleStrategy", "replication_factor": 1}`; use
   NetworkTopologyStrategy on a cluster) and applies the versioned CQL.
3. **Kafka Connect**: `PUT /connectors/binance-postgres/config` from `connectors/binance-postgres.json`
   through `kafka_connect` only if the config differs (an update never deletes the connector, so
   there is no re-snapshot), then waits until the connector and all its tasks are RUNNING; a
   FAILED task fails this DAG with its trace.

Param `resnapshot` (default false) starts the capture over, the recovery when changes were lost
(an invalidated replication slot, Kafka retention shorter than an outage): before registering,
the connector is stopped, its offsets deleted, its slot dropped (through
`binance_postgres_replication`, a role with REPLICATION) and the Cassandra tables and the
bridge's watermarks emptied; the connector then resumes with a new snapshot of every table, and
the next `cassandra_bridge` run copies every table whole. Cassandra is incomplete until the
snapshot has streamed through.

Needs: connections `binance_postgres`, `cassandra_default`, `kafka_connect` (and for `resnapshot`
`binance_postgres_replication`); Variable `cdc_debezium_role` (default: env `DEBEZIUM_DB_USER`,
else `debezium`).
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Param, dag, task

CONNECTOR = "binance-postgres"


@dag(
    schedule=None,
    catchup=False,
    max_active_runs=1,
    tags=["cdc", "setup"],
    default_args={"retries": 1, "retry_delay": timedelta(seconds=15)},
    params={"resnapshot": Param(False, type="boolean",
                                description="start the capture over: new slot, new snapshot, sink emptied first")},
    doc_md=__doc__,
)
def cdc_setup():
    @task
    def ensure_postgres_side() -> dict:
        import os

        from airflow.providers.postgres.hooks.postgres import PostgresHook
        from airflow.sdk import Variable

        from include.cdc_setup import ensure_postgres_side

        role = Variable.get("cdc_debezium_role", default=os.environ.get("DEBEZIUM_DB_USER", "debezium"))
        conn = PostgresHook(postgres_conn_id="binance_postgres").get_conn()
        try:
            return ensure_postgres_side(conn, role)
        finally:
            conn.close()

    @task
    def ensure_cassandra_schema() -> list[str]:
        import json

        from airflow.sdk import BaseHook, Variable

        from include.cassandra_schema import DEFAULT_REPLICATION, CassandraSettings, ensure_schema

        replication = json.loads(Variable.get("cassandra_replication", default=json.dumps(DEFAULT_REPLICATION)))
        settings = CassandraSettings.from_connection(BaseHook.get_connection("cassandra_default"))
        return ensure_schema(settings, replication)

    @task
    def resnapshot(params: dict | None = None) -> dict:
        if not (params or {}).get("resnapshot"):
            return {"resnapshot": False}
        from airflow.providers.postgres.hooks.postgres import PostgresHook
        from airflow.sdk import BaseHook
        from kafka_connect_hook import KafkaConnectHook

        from include.cassandra_schema import CassandraSettings, connect
        from include.cdc_setup import resnapshot

        client = KafkaConnectHook().get_client()
        if client.get_config(CONNECTOR) is None:
            return {"resnapshot": False, "reason": "connector not registered yet: registering takes a snapshot"}
        settings = CassandraSettings.from_connection(BaseHook.get_connection("cassandra_default"))
        cluster, session = connect(settings)
        replication = PostgresHook(postgres_conn_id="binance_postgres_replication").get_conn()
        pg = PostgresHook(postgres_conn_id="binance_postgres").get_conn()
        try:
            return resnapshot(client, CONNECTOR, replication, session, settings.keyspace, pg)
        finally:
            pg.close()
            replication.close()
            cluster.shutdown()

    @task
    def register_connector(params: dict | None = None) -> str:
        from kafka_connect_hook import KafkaConnectHook

        from include.kafka_connect import load_connector

        client = KafkaConnectHook().get_client()
        outcome = client.ensure(CONNECTOR, load_connector(CONNECTOR))
        if (params or {}).get("resnapshot") and client.status(CONNECTOR)["connector"]["state"] == "STOPPED":
            client.resume(CONNECTOR)
            outcome += ", resumed for a new snapshot"
        return outcome

    @task
    def wait_for_connector() -> dict:
        from kafka_connect_hook import KafkaConnectHook

        return KafkaConnectHook().get_client().wait_running(CONNECTOR, timeout=180)

    [ensure_postgres_side(), ensure_cassandra_schema()] >> resnapshot() >> register_connector() >> wait_for_connector()


cdc_setup()
