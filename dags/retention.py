"""
### retention

Applies the retention policy every minute (`RETENTION_SCHEDULE`): what each store keeps, and for
how long, per table, from the Variable `retention` (README, "Retention"; defaults: order book 24 h,
trades 48 h, prices and tickers 30 days, klines for ever).

1. `publish_cassandra_window`: Cassandra's window per table into its `sink_retention` table; the
   stream writes every row with a TTL that ends when the row leaves the window, and writes
   nothing for a row already out of it.
2. `prune_source`: deletes rows past the horizon from Postgres `binance`, in bounded chunks (the
   deletes reach Cassandra through the stream, which skips those already expired there).
3. `prune_bridge`: deletes rows past the bridge's horizon from Postgres `cassandra`.

Needs: connections `binance_postgres`, `cassandra_default`; run `cdc_setup` first (it creates
Cassandra's tables). An unknown table or store, a bad duration, or a store keeping longer than
the one it copies fails the run naming it.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import dag, task

from include.schedules import batch_default_args, schedule


@dag(
    schedule=schedule("RETENTION_SCHEDULE"),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=30),
    tags=["retention", "maintenance"],
    default_args=batch_default_args(retries=2, retry_delay=timedelta(seconds=30)),
    doc_md=__doc__,
)
def retention():
    @task(multiple_outputs=False)
    def publish_cassandra_window() -> dict:
        from include.retention import tasks

        return tasks.publish_cassandra()

    @task(multiple_outputs=False)
    def prune_source() -> dict:
        from include.retention import tasks

        return tasks.prune_source()

    @task(multiple_outputs=False)
    def prune_bridge() -> dict:
        from include.retention import tasks

        return tasks.prune_bridge()

    publish_cassandra_window() >> prune_source() >> prune_bridge()


retention()
