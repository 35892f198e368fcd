"""What the `pipeline_health` DAG's tasks run: Airflow Connections and Variables in, include.health out.

Kept apart from the DAG file so parsing it stays cheap (nothing here runs at import time).
Connections: binance_postgres, kafka_connect, kafka_default, cassandra_default. Variables:
`pipeline_health_thresholds` (JSON, see include.health.Thresholds), `pipeline_health_connector`
(default binance-postgres), `pipeline_health_slot` (default binance_cdc).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from include import health
from include.migrations import apply

log = logging.getLogger(__name__)

POSTGRES_CONN_ID = "binance_postgres"


def thresholds() -> health.Thresholds:
    from airflow.sdk import Variable

    return health.Thresholds.from_json(Variable.get("pipeline_health_thresholds", default=None))


@contextmanager
def _pg() -> Iterator[Any]:
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    conn = PostgresHook(postgres_conn_id=POSTGRES_CONN_ID).get_conn()
    try:
        yield conn
    finally:
        conn.close()


@contextmanager
def _cassandra() -> Iterator[tuple[Any, str]]:
    from airflow.sdk import BaseHook

    from include.cassandra_schema import CassandraSettings, connect

    settings = CassandraSettings.from_connection(BaseHook.get_connection("cassandra_default"))
    cluster, session = connect(settings)
    try:
        yield session, settings.keyspace
    finally:
        cluster.shutdown()


def apply_migrations() -> list[str]:
    with _pg() as conn:
        return apply(conn, health.HEALTH_SCHEMA)


def _run(measure: Callable[[], health.CheckResult]) -> str:
    """Measure, store what was measured and the verdict, then fail the task if unhealthy."""
    result = measure()
    with _pg() as conn:
        health.store(conn, result)
    result.raise_if_failed()
    return result.message


def check_connector() -> str:
    from airflow.sdk import Variable
    from kafka_connect_hook import KafkaConnectHook

    name = Variable.get("pipeline_health_connector", default=health.CONNECTOR)
    th = thresholds()
    return _run(lambda: health.check_connector(KafkaConnectHook().get_client(), th, name))


def check_replication_slot() -> str:
    from airflow.sdk import Variable

    slot = Variable.get("pipeline_health_slot", default=health.SLOT)
    th = thresholds()

    def measure() -> health.CheckResult:
        with _pg() as conn:
            return health.check_slot(conn, th, slot)

    return _run(measure)


def check_stream_lag() -> str:
    from airflow.providers.apache.kafka.hooks.client import KafkaAdminClientHook

    th = thresholds()

    def measure() -> health.CheckResult:
        end = health.kafka_end_offsets(KafkaAdminClientHook(kafka_config_id="kafka_default").get_conn)
        with _cassandra() as (session, keyspace):
            done = health.processed_offsets(session, keyspace)
            last = health.last_batch(session, keyspace)
        return health.check_stream_lag(end, done, last, th)

    return _run(measure)


def check_freshness() -> str:
    th = thresholds()

    def measure() -> health.CheckResult:
        with _pg() as conn:
            source = health.newest_in_postgres(conn, "binance")
            bridge = health.newest_in_postgres(conn, "cassandra")
        with _cassandra() as (session, keyspace):
            cassandra = health.newest_in_cassandra(health.processed_offsets(session, keyspace))
        return health.check_freshness({"postgres binance": source, "cassandra": cassandra,
                                       "postgres cassandra": bridge}, th)

    return _run(measure)


def record_stream_batches() -> int:
    with _pg() as conn, _cassandra() as (session, keyspace):
        return health.store_stream_batches(conn, session, keyspace)


def prune_history() -> dict[str, int]:
    th = thresholds()
    with _pg() as conn:
        return health.prune(conn, th)
