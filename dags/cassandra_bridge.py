"""
### cassandra_bridge

Copies Cassandra's tables (keyspace of `cassandra_default`) into Postgres schema `cassandra`
(connection `binance_postgres`) for Grafana, every minute, one task per table. Incremental: each
run re-reads only the keys the stream logged as changed since the table's stored watermark, then
upserts and deletes them in one Postgres transaction, so a failed run is simply retried. The first
run of a table copies it whole once.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Asset, dag, task

from include.names import BRIDGE_SCHEMA
from include.schedules import batch_default_args, schedule
from include.tables import TABLES


@dag(
    schedule=schedule("CASSANDRA_BRIDGE_SCHEDULE"),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=10),
    tags=["bridge", "cassandra", "grafana"],
    default_args=batch_default_args(retries=2, retry_delay=timedelta(seconds=15)),
    doc_md=__doc__,
)
def cassandra_bridge():
    @task
    def apply_migrations() -> list[str]:
        from include.bridge import tasks

        return tasks.apply_migrations()

    ready = apply_migrations()
    for table in TABLES:

        @task(task_id=f"sync_{table}", multiple_outputs=False,
              outlets=[Asset(name=f"{BRIDGE_SCHEMA}.{table}", uri=f"postgres-table://binance/{BRIDGE_SCHEMA}/{table}")])
        def sync(table: str = table) -> dict:
            from include.bridge import tasks

            return tasks.sync(table)

        ready >> sync()


cassandra_bridge()
