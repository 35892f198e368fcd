"""
### pipeline_health

Watches the CDC pipeline every minute, one task per check, each storing its measurements in
Postgres schema `pipeline_health` (Grafana dashboard "Pipeline health", `make status`):

- `check_connector`: connector and task states through `kafka_connect`; a FAILED part is restarted
  through the REST API (bounded attempts with backoff); fails if it stays FAILED, or is PAUSED.
- `check_replication_slot`: active or not, WAL retained behind the slot, `wal_status`; an
  invalidated slot is reported with the recovery path (re-snapshot through `cdc_setup`).
- `check_stream_lag`: newest Kafka offsets (`kafka_default`) minus what the Spark stream applied.
- `check_freshness`: age of the newest data in Postgres `binance`, Cassandra and Postgres `cassandra`.
  Both pass as "warming up" while the pipeline has just started, or the stage before has just
  begun holding data (`warmup_seconds`, 10 minutes), then judge as usual.
- `check_reconciliation`: per table, prefix (symbol, interval) and time bucket, the row count and a
  checksum of every column in the three stores, compared minute by minute where nothing is still
  on its way (the stream caught up, the minute unchanged in the source during the check, the
  bridge's pending keys left out); the recent buckets every run, the whole history in a pass
  spread over runs. A bucket that differs is repaired (Debezium re-emits its rows through an
  incremental snapshot; rows the source does not hold are deleted downstream), bounded, and
  recorded in `pipeline_health.reconciliation`; the task fails saying what differs and what was
  done. Variable `reconciliation` (JSON; keys in include/health/reconcile.py `Settings`).
- `check_bridge`: a table `cassandra_bridge` had to copy whole by itself (its watermark was older
  than the change log keeps) since the last check is reported once.
- `record_stream_batches`: the stream's micro-batches (rows, time, latency), copied for Grafana.

A failing check fails its task with a message saying what is wrong and what to do, and alerts
through `PipelineHealthNotifier` (the log; Slack or email when configured). Thresholds: Variable
`pipeline_health_thresholds` (JSON; keys in include/health/checks.py `Thresholds`).
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import dag, task
from health_notifier import PipelineHealthNotifier

from include.schedules import batch_default_args, schedule


@dag(
    schedule=schedule("PIPELINE_HEALTH_SCHEDULE"),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=5),
    tags=["cdc", "health", "monitoring"],
    default_args=batch_default_args(retries=1, retry_delay=timedelta(seconds=10),
                                    on_failure_callback=[PipelineHealthNotifier()]),
    doc_md=__doc__,
)
def pipeline_health():
    @task
    def apply_migrations() -> list[str]:
        from include.health import tasks

        return tasks.apply_migrations()

    @task
    def check_connector() -> str:
        from include.health import tasks

        return tasks.check_connector()

    @task
    def check_replication_slot() -> str:
        from include.health import tasks

        return tasks.check_replication_slot()

    @task
    def check_stream_lag() -> str:
        from include.health import tasks

        return tasks.check_stream_lag()

    @task
    def check_freshness() -> str:
        from include.health import tasks

        return tasks.check_freshness()

    @task
    def check_bridge() -> str:
        from include.health import tasks

        return tasks.check_bridge()

    @task
    def check_reconciliation() -> str:
        from include.health import tasks

        return tasks.check_reconciliation()

    @task
    def record_stream_batches() -> int:
        from include.health import tasks

        return tasks.record_stream_batches()

    @task(multiple_outputs=False)
    def prune_history() -> dict:
        from include.health import tasks

        return tasks.prune_history()

    apply_migrations() >> [check_connector(), check_replication_slot(), check_stream_lag(), check_freshness(),
                           check_bridge(), check_reconciliation(), record_stream_batches(), prune_history()]


pipeline_health()
