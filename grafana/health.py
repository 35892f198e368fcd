"""The "Pipeline health" dashboard: what the pipeline_health DAG measures, read from Postgres schema
HEALTH_SCHEMA (`{health}` in the SQL below): check verdicts, connector states, the replication slot,
stream lag, freshness per stage, the stream's latency per micro-batch, and the reconciliation of the
three stores (open differences, and each run's cost).

Each panel's SQL lives once, in `PANELS`; the tests run every query against the real database.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import table, timeseries
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as dashboard_models

from grafana.builder import (
    AGE_THRESHOLDS,
    DashboardSpec,
    PanelSpec,
    VariableSpec,
    bytes_cells,
    coloured_cells,
    dashed_thresholds,
    legend_bottom,
    multi_tooltip,
    sql,
    style_latency_series,
    thresholds,
)
from include.names import HEALTH_SCHEMA

HEALTH_UID = "pipeline-health"

# --------------------------------------------------------------------------- visualization options

# Kafka Connect states (https://kafka.apache.org/documentation/#connect_administration)
_CONNECT_STATES = {"RUNNING": "green", "PAUSED": "orange", "STOPPED": "orange", "UNASSIGNED": "orange",
                   "RESTARTING": "orange", "FAILED": "red", "MISSING": "red"}
# pg_replication_slots.wal_status: lost means invalidated, unreserved means about to be
_WAL_STATUS = {"reserved": "green", "extended": "orange", "unreserved": "red", "lost": "red"}


def _style_checks(p: table.Panel) -> table.Panel:
    return p.override_by_name("status", coloured_cells({"OK": "green", "FAILED": "red"}))


def _style_connector_states(p: table.Panel) -> table.Panel:
    return p.override_by_name("state", coloured_cells(_CONNECT_STATES))


def _style_slot(p: table.Panel) -> table.Panel:
    return (
        p.override_by_name("wal_status", coloured_cells(_WAL_STATUS))
        .override_by_name("retained_wal", bytes_cells())
        .override_by_name("safe_wal_size", bytes_cells())
    )


def _style_wal_series(p: timeseries.Panel) -> timeseries.Panel:
    return p.unit("bytes").legend(legend_bottom()).tooltip(multi_tooltip())


def _style_lag_series(p: timeseries.Panel) -> timeseries.Panel:
    return p.unit("short").legend(legend_bottom()).tooltip(multi_tooltip()).fill_opacity(10)


def _style_age_series(p: timeseries.Panel) -> timeseries.Panel:
    return (
        p.unit("s")
        .legend(legend_bottom())
        .tooltip(multi_tooltip())
        .thresholds(thresholds(*AGE_THRESHOLDS))
        .thresholds_style(dashed_thresholds())
    )


_RECONCILIATION_STATUS = {"open": "red", "repairing": "orange", "resolved": "green"}


def _style_differences(p: table.Panel) -> table.Panel:
    return p.override_by_name("status", coloured_cells(_RECONCILIATION_STATUS))


def _style_reconciliation_runs(p: timeseries.Panel) -> timeseries.Panel:
    # run and CPU seconds on the left, differences and minutes in flight on their own axis
    return (
        p.unit("s")
        .legend(legend_bottom())
        .tooltip(multi_tooltip())
        .override_by_name("differences", [
            dashboard_models.DynamicConfigValue(id_val="unit", value="short"),
            dashboard_models.DynamicConfigValue(id_val="custom.drawStyle", value=common.GraphDrawStyle.BARS),
            dashboard_models.DynamicConfigValue(id_val="custom.axisPlacement", value=common.AxisPlacement.RIGHT),
        ])
        .override_by_name("in_flight", [
            dashboard_models.DynamicConfigValue(id_val="unit", value="short"),
            dashboard_models.DynamicConfigValue(id_val="custom.axisPlacement", value=common.AxisPlacement.RIGHT),
        ])
    )


def _style_batches(p: timeseries.Panel) -> timeseries.Panel:
    # rows per interval as bars on the left, processing time as a line on its own axis
    return (
        p.unit("short")
        .legend(legend_bottom())
        .tooltip(multi_tooltip())
        .override_by_name("input_rows", [
            dashboard_models.DynamicConfigValue(id_val="custom.drawStyle", value=common.GraphDrawStyle.BARS),
            dashboard_models.DynamicConfigValue(id_val="custom.fillOpacity", value=50),
        ])
        .override_by_name("processing_s", [
            dashboard_models.DynamicConfigValue(id_val="unit", value="s"),
            dashboard_models.DynamicConfigValue(id_val="custom.axisPlacement", value=common.AxisPlacement.RIGHT),
        ])
    )


# --------------------------------------------------------------------------- the dashboard

DASHBOARD = DashboardSpec(
    uid=HEALTH_UID,
    title="Pipeline health",
    description=(
        "What the pipeline_health DAG checks every minute: the Debezium connector and its tasks, the "
        "replication slot's retained WAL, the stream's lag per topic, freshness per stage, the stream's "
        "commit -> Cassandra latency, and the reconciliation of Postgres binance, Cassandra and the bridge. A "
        "failed check says what is wrong and what to do."
    ),
    tags=("binance", "cdc", "health"),
    time_from="now-3h",
)

VARIABLES: tuple[VariableSpec, ...] = ()

PANELS: tuple[PanelSpec, ...] = (
    PanelSpec(
        HEALTH_UID, "Checks", "table",
        sql("""
            SELECT DISTINCT ON (check_name)
                   check_name, CASE WHEN ok THEN 'OK' ELSE 'FAILED' END AS status, message, checked_at
            FROM {health}.checks
            WHERE checked_at <= $__timeTo()
            ORDER BY check_name, checked_at DESC
        """, health=HEALTH_SCHEMA),
        "table", ("check_name", "status", "message", "checked_at"),
        description="The newest verdict of each check; a failed one says what is wrong and what to do.",
        row="State", width=16, height=8, style=_style_checks,
    ),
    PanelSpec(
        HEALTH_UID, "Connector and tasks", "table",
        sql("""
            SELECT s.connector,
                   CASE WHEN s.task_id < 0 THEN 'connector' ELSE 'task ' || s.task_id END AS part,
                   s.state, s.restarts, s.worker_id, s.checked_at
            FROM {health}.connector_states s
            JOIN (
              SELECT connector, max(checked_at) AS checked_at
              FROM {health}.connector_states
              WHERE checked_at <= $__timeTo()
              GROUP BY connector
            ) newest USING (connector, checked_at)
            ORDER BY s.connector, s.task_id
        """, health=HEALTH_SCHEMA),
        "table", ("connector", "part", "state", "restarts", "checked_at"),
        description="Kafka Connect's state of the connector and each task at the newest check, and the "
                    "restarts that check made.",
        row="State", width=8, height=8, style=_style_connector_states,
    ),
    PanelSpec(
        HEALTH_UID, "Slot at the newest check", "table",
        sql("""
            SELECT DISTINCT ON (slot_name)
                   slot_name, present, active, wal_status, retained_wal_bytes::float8 AS retained_wal,
                   safe_wal_size_bytes::float8 AS safe_wal_size, checked_at
            FROM {health}.slot_states
            WHERE checked_at <= $__timeTo()
            ORDER BY slot_name, checked_at DESC
        """, health=HEALTH_SCHEMA),
        "table", ("slot_name", "active", "wal_status", "retained_wal", "safe_wal_size"),
        description="The slot at the newest check. wal_status lost: the slot was invalidated; recover with "
                    "cdc_setup {\"resnapshot\": true}. safe_wal_size: WAL left before Postgres invalidates it.",
        row="Replication slot", width=10, height=8, style=_style_slot,
    ),
    PanelSpec(
        HEALTH_UID, "Retained WAL", "timeseries",
        sql("""
            SELECT s.checked_at AS "time", s.slot_name || ' ' || v.kind AS metric, v.bytes
            FROM {health}.slot_states s
            CROSS JOIN LATERAL (VALUES ('retained', s.retained_wal_bytes::float8),
                                       ('unconfirmed', s.unconfirmed_bytes::float8)) AS v(kind, bytes)
            WHERE $__timeFilter(s.checked_at) AND s.present
            ORDER BY 1, 2
        """, health=HEALTH_SCHEMA),
        "time_series", ("time", "metric", "bytes"),
        description="WAL the slot holds back (from restart_lsn) and WAL the connector has not confirmed yet. "
                    "It grows while the connector is stopped; Postgres keeps at most max_slot_wal_keep_size.",
        row="Replication slot", width=14, height=8, style=_style_wal_series,
    ),
    PanelSpec(
        HEALTH_UID, "Stream lag per topic", "timeseries",
        sql("""
            SELECT checked_at AS "time", topic AS metric, sum(lag)::float8 AS lag
            FROM {health}.stream_lag
            WHERE $__timeFilter(checked_at)
            GROUP BY 1, 2
            ORDER BY 1, 2
        """, health=HEALTH_SCHEMA),
        "time_series", ("time", "metric", "lag"),
        description="Kafka end offsets minus the offsets the stream has applied, summed over partitions.",
        row="Stream", width=12, height=8, style=_style_lag_series,
    ),
    PanelSpec(
        HEALTH_UID, "Freshness per stage", "timeseries",
        sql("""
            SELECT checked_at AS "time", stage AS metric, age_seconds AS age_s
            FROM {health}.freshness
            WHERE $__timeFilter(checked_at) AND age_seconds IS NOT NULL
            ORDER BY 1, 2
        """, health=HEALTH_SCHEMA),
        "time_series", ("time", "metric", "age_s"),
        description="now() - the newest source commit time each stage holds: Postgres binance, Cassandra, "
                    "and the bridge in Postgres cassandra.",
        row="Stream", width=12, height=8, style=_style_age_series,
    ),
    PanelSpec(
        HEALTH_UID, "Commit to Cassandra latency per micro-batch", "timeseries",
        sql("""
            SELECT $__timeGroupAlias(finished_at, $__interval),
                   (percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms) / 1000)::float8 AS p50,
                   (max(latency_ms) / 1000.0)::float8 AS worst
            FROM {health}.stream_batches
            WHERE $__timeFilter(finished_at) AND latency_ms IS NOT NULL
            GROUP BY 1
            ORDER BY 1
        """, health=HEALTH_SCHEMA),
        "time_series", ("time", "p50", "worst"),
        description="Per micro-batch, its newest event's source commit -> the batch written to Cassandra.",
        row="End to end", width=12, height=8, style=style_latency_series,
    ),
    PanelSpec(
        HEALTH_UID, "Micro-batches", "timeseries",
        sql("""
            SELECT $__timeGroupAlias(finished_at, $__interval),
                   sum(input_rows)::float8 AS input_rows,
                   (avg(processing_ms) / 1000)::float8 AS processing_s
            FROM {health}.stream_batches
            WHERE $__timeFilter(finished_at)
            GROUP BY 1
            ORDER BY 1
        """, health=HEALTH_SCHEMA),
        "time_series", ("time", "input_rows", "processing_s"),
        description="Change events the stream applied per interval, and its mean processing time per batch.",
        row="End to end", width=12, height=8, style=_style_batches,
    ),
    PanelSpec(
        HEALTH_UID, "Reconciliation: open differences", "table",
        sql("""
            SELECT table_name, prefix, bucket, store, status, source_count, store_count, slices, action, checked_at
            FROM (
              SELECT DISTINCT ON (table_name, prefix, bucket, store) *
              FROM {health}.reconciliation
              WHERE checked_at <= $__timeTo()
              ORDER BY table_name, prefix, bucket, store, checked_at DESC
            ) newest
            WHERE status <> 'resolved'
            ORDER BY checked_at DESC, table_name, prefix, bucket
        """, health=HEALTH_SCHEMA),
        "table", ("table_name", "prefix", "bucket", "store", "status", "action"),
        description="Buckets (table, symbol and interval, hour or day) where Cassandra or the bridge differs from "
                    "Postgres binance at the newest check, and what the DAG did: repairing (Debezium re-emits the "
                    "rows through an incremental snapshot; rows the source does not hold are deleted) or open "
                    "(waiting for a repair on its way, or for the next run). Empty when the stores agree.",
        row="Reconciliation", width=16, height=8, style=_style_differences,
    ),
    PanelSpec(
        HEALTH_UID, "Reconciliation runs", "timeseries",
        sql("""
            SELECT checked_at AS "time", run_seconds, cpu_seconds, differences::float8 AS differences,
                   slices_in_flight::float8 AS in_flight
            FROM {health}.reconciliation_runs
            WHERE $__timeFilter(checked_at)
            ORDER BY 1
        """, health=HEALTH_SCHEMA),
        "time_series", ("time", "run_seconds", "cpu_seconds", "differences", "in_flight"),
        description="Each run of check_reconciliation: its wall and CPU time, the buckets that differed, and the "
                    "minutes left out because they were still changing or not yet copied by the bridge.",
        row="Reconciliation", width=8, height=8, style=_style_reconciliation_runs,
    ),
)
