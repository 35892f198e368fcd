"""
### cdc_stream

Runs the Spark Structured Streaming job `spark/cdc_stream.py`, which applies every Debezium change
event of schema `binance` (topics `binance.binance.*`) to Cassandra. The schedule is
`@continuous` with one active run: Airflow supervises the long-running stream and starts it
again when it dies. Trigger with `{"mode": "available_now"}` to process what is in Kafka and exit
(catch-up runs, tests).

Needs: connection `spark_default` (`local[*]` here; a `spark://` or `k8s://` master on a cluster),
`kafka_default` (extra `bootstrap.servers`, and its security settings if any),
`cassandra_default` (keyspace in its schema field, TLS in its extra if any; README "Running on
real clusters");
the connector jars (`make install`, or env `SPARK_JARS_DIR`); checkpoint folder from env
`CDC_CHECKPOINT_DIR` (durable storage on a cluster). Run `cdc_setup` first.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import Param, dag
from cdc_stream_operator import CdcStreamSubmitOperator


@dag(
    schedule="@continuous",
    # a start date gives the first run a real data interval: without one it is zero-length, and the
    # next continuous run, which starts where the last ended, would reuse its logical date and
    # never be created
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["cdc", "spark", "stream"],
    # a driver that died is started again within 2-4 s (the usual case: one crash); one that keeps
    # dying is retried ever less often (up to about a minute), then the next continuous run starts over
    default_args={"retries": 5, "retry_delay": timedelta(seconds=2), "retry_exponential_backoff": 2.0,
                  "max_retry_delay": timedelta(minutes=2)},
    params={
        "mode": Param("continuous", enum=["continuous", "available_now"],
                      description="continuous: run until it fails; available_now: process what is there, exit"),
        "checkpoint": Param("", type="string",
                            description="checkpoint folder; empty: env CDC_CHECKPOINT_DIR (one per stream!)"),
    },
    doc_md=__doc__,
)
def cdc_stream():
    CdcStreamSubmitOperator(
        task_id="run_cdc_stream",
        conn_id="spark_default",
        mode="{{ params.mode }}",
        checkpoint="{{ params.checkpoint }}",
        conf={"spark.driver.memory": "1g", "spark.ui.enabled": "false"},
        verbose=False,
    )


cdc_stream()
