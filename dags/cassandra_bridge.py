"""
### cassandra_bridge

Copies Cassandra's tables (keyspace of `cassandra_default`) into Postgres schema `cassandra`
(connection `binance_postgres`) for Grafana, every minute, one task per table. Incremental: each
run re-reads only the keys the stream logged as changed since the table's stored watermark, then
upserts and deletes them in one Postgres transaction, so a failed run is simply retried. The first
run of a table copies it whole once.
"""

from __future__ import annotations

import os
from datetime import timedelta

from airflow.sdk import Asset, dag, task

from include.tables import TABLES


@dag(
    schedule=os.environ.get("CASSANDRA_BRIDGE_SCHEDULE", "* * * * *"),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=10),
    tags=["bridge", "cassandra", "grafana"],
    default_args={"retries": 2, "retry_delay": timedelta(seconds=15)},
    doc_md=__doc__,
)
def cassandra_bridge():
    @task
    def apply_migrations() -> list[str]:
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        from include.migrations import apply

        conn = PostgresHook(postgres_conn_id="binance_postgres").get_conn()
        try:
            return apply(conn, "cassandra")
        finally:
            conn.close()

    ready = apply_migrations()
    for table in TABLES:

        @task(task_id=f"sync_{table}", outlets=[Asset(name=f"cassandra.{table}",
                                                       uri=f"postgres-table://binance/cassandra/{table}")])
        def sync(table: str = table) -> dict:
            from airflow.providers.postgres.hooks.postgres import PostgresHook
            from airflow.sdk import BaseHook

            from include.bridge import sync_table
            from include.cassandra_schema import CassandraSettings, connect

            settings = CassandraSettings.from_connection(BaseHook.get_connection("cassandra_default"))
            cluster, session = connect(settings)
            pg = PostgresHook(postgres_conn_id="binance_postgres").get_conn()
            try:
                r = sync_table(pg, session, settings.keyspace, table)
            finally:
                pg.close()
                cluster.shutdown()
            return {"mode": r.mode, "changed_keys": r.changed_keys, "upserted": r.upserted, "deleted": r.deleted}

        ready >> sync()


cassandra_bridge()
