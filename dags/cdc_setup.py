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

Needs: connections `binance_postgres`, `cassandra_default`, `kafka_connect`; Variable
`cdc_debezium_role` (default: env `DEBEZIUM_DB_USER`, else `debezium`).
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import dag, task

CONNECTOR = "binance-postgres"


@dag(
    schedule=None,
    catchup=False,
    max_active_runs=1,
    tags=["cdc", "setup"],
    default_args={"retries": 1, "retry_delay": timedelta(seconds=15)},
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
    def register_connector() -> str:
        from kafka_connect_hook import KafkaConnectHook

        from include.kafka_connect import load_connector

        return KafkaConnectHook().get_client().ensure(CONNECTOR, load_connector(CONNECTOR))

    @task
    def wait_for_connector() -> dict:
        from kafka_connect_hook import KafkaConnectHook

        return KafkaConnectHook().get_client().wait_running(CONNECTOR, timeout=180)

    [ensure_postgres_side(), ensure_cassandra_schema()] >> register_connector() >> wait_for_connector()


cdc_setup()
