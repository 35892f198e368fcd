"""What the `pipeline_health` DAG's tasks run: Airflow Connections and Variables in,
include.health.checks out.

Connections: binance_postgres, kafka_connect, kafka_default, cassandra_default. Variables:
`pipeline_health_thresholds` (JSON, see checks.Thresholds), `pipeline_health_connector`
(default binance-postgres), `pipeline_health_slot` (default binance_cdc), `reconciliation` (JSON,
see reconcile.Settings), `retention` (what each store keeps: the reconciliation compares within it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from include import connections
from include.cdc import kafka_connect, signals
from include.health import checks, reconcile, reconcile_io
from include.names import CONNECTOR, HEALTH_SCHEMA, SLOT
from include.schema.postgres import apply

log = logging.getLogger(__name__)


def thresholds() -> checks.Thresholds:
    from airflow.sdk import Variable

    return checks.Thresholds.from_json(Variable.get("pipeline_health_thresholds", default=None))


def apply_migrations() -> list[str]:
    with connections.postgres() as conn:
        return apply(conn, HEALTH_SCHEMA)


def _run(check: str, measure: Callable[[], checks.CheckResult]) -> str:
    """Measure, store what was measured and the verdict, then fail the task if unhealthy. When the
    measuring itself raises (a store unreachable, a read Cassandra refuses), a failed verdict naming
    the error is stored before the task fails with it: the dashboard says why, not only that the
    check went quiet."""
    try:
        result = measure()
    except Exception as e:
        _store_unmeasured(check, e)
        raise
    with connections.postgres() as conn:
        checks.store(conn, result)
    result.raise_if_failed()
    return result.message


def _store_unmeasured(check: str, error: Exception) -> None:
    message = f"the check could not run: {type(error).__name__}: {error}"[:2000]
    try:
        with connections.postgres() as conn:
            checks.store(conn, checks.CheckResult(check, False, message))
    except Exception as store_error:  # Postgres down too: the task's own error says what failed
        log.error("%s: %s; storing that verdict failed as well: %s", check, message, store_error)


def check_connector() -> str:
    from airflow.sdk import Variable

    name = Variable.get("pipeline_health_connector", default=CONNECTOR)
    th = thresholds()

    def measure() -> checks.CheckResult:
        with kafka_connect.client() as client:
            return checks.check_connector(client, th, name)

    return _run("connector", measure)


def check_replication_slot() -> str:
    from airflow.sdk import Variable

    slot = Variable.get("pipeline_health_slot", default=SLOT)
    th = thresholds()

    def measure() -> checks.CheckResult:
        with connections.postgres() as conn:
            return checks.check_slot(conn, th, slot)

    return _run("replication_slot", measure)


def check_stream_lag() -> str:
    th = thresholds()

    def measure() -> checks.CheckResult:
        with connections.kafka_admin() as admin, connections.cassandra() as (session, keyspace), \
                connections.postgres() as pg:
            return checks.measure_stream_lag(admin, session, keyspace, th, pg=pg)[0]

    return _run("stream_lag", measure)


def check_freshness() -> str:
    th = thresholds()

    def measure() -> checks.CheckResult:
        with connections.postgres() as pg, connections.cassandra() as (session, keyspace):
            return checks.measure_freshness(pg, session, keyspace, th)

    return _run("freshness", measure)


def check_bridge() -> str:
    from include.bridge.state import bridge_states

    def measure() -> checks.CheckResult:
        with connections.postgres() as conn:
            return checks.check_bridge(bridge_states(conn), checks.previous_check(conn, "bridge"))

    return _run("bridge", measure)


def check_reconciliation() -> str:
    """The three stores compared bucket by bucket, differences repaired (include/health/reconcile.py)."""
    from airflow.sdk import Variable

    from include.retention.tasks import policy

    settings = reconcile.Settings.from_json(Variable.get("reconciliation", default=None))
    retention = policy()

    def measure() -> checks.CheckResult:
        with connections.postgres() as pg, connections.cassandra() as (session, keyspace), \
                connections.kafka_admin() as admin:
            return reconcile_io.run(pg, session, keyspace, admin, settings, retention)

    return _run(reconcile_io.CHECK, measure)


def record_stream_batches() -> int:
    with connections.postgres() as conn, connections.cassandra() as (session, keyspace):
        return checks.store_stream_batches(conn, session, keyspace)


def prune_history() -> dict[str, int]:
    """Measurements older than history_days, and the snapshot signals the reconciliation and
    cdc_setup wrote before then."""
    th = thresholds()
    with connections.postgres() as conn:
        pruned = checks.prune(conn, th)
        pruned["debezium_signal"] = signals.prune(conn, datetime.now(UTC) - timedelta(days=th.history_days))
        return pruned
