"""Grafana dashboards as code, built with grafana-foundation-sdk and written as JSON for provisioning.

Two dashboards, both through the provisioned datasource `binance-postgres` (the read-only Grafana role):
"Binance market" reads the bridge copy of Cassandra in Postgres schema `cassandra`; "Pipeline health"
reads what the pipeline_health DAG measures, in schema `pipeline_health`. Each panel's SQL lives once, in `PANELS`
below; `panels()` hands the same specs to the tests, which run every query against the real database.

Usage:
    python grafana/generate.py           # write grafana/dashboards/<uid>.json
    python grafana/generate.py --check   # exit 1, with a diff summary, if the committed JSON is stale
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

REPO = Path(__file__).resolve().parent.parent
# `python grafana/generate.py` puts grafana/ on sys.path, not the repository: include/ must be importable
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from grafana_foundation_sdk.builders import barchart, candlestick, stat, table, timeseries  # noqa: E402
from grafana_foundation_sdk.builders import common as common_builders  # noqa: E402
from grafana_foundation_sdk.builders import dashboard as dashboard_builders  # noqa: E402
from grafana_foundation_sdk.cog import builder as cogbuilder  # noqa: E402
from grafana_foundation_sdk.cog import variants as cogvariants  # noqa: E402
from grafana_foundation_sdk.cog.encoder import JSONEncoder  # noqa: E402
from grafana_foundation_sdk.models import candlestick as candlestick_models  # noqa: E402
from grafana_foundation_sdk.models import common  # noqa: E402
from grafana_foundation_sdk.models import dashboard as dashboard_models  # noqa: E402

from include.health import HEALTH_SCHEMA  # noqa: E402
from include.tables import BRIDGE_SCHEMA, BRIDGE_TABLES  # noqa: E402

DASHBOARDS_DIR = Path(__file__).resolve().parent / "dashboards"

# grafana/provisioning/datasources/postgres.yaml provisions this datasource (a test checks they agree)
DATASOURCE_UID = "binance-postgres"
DATASOURCE_TYPE = "grafana-postgresql-datasource"
DATASOURCE = dashboard_models.DataSourceRef(type_val=DATASOURCE_TYPE, uid=DATASOURCE_UID)

MARKET_UID = "binance-market"
HEALTH_UID = "pipeline-health"

Format = Literal["time_series", "table"]


@dataclass(frozen=True)
class PanelSpec:
    """One panel: where it goes, what it shows, and the single copy of its SQL.

    `columns` are the result columns the visualization needs (the integration test checks them).
    `style` sets the visualization's own options on the SDK builder for `type`.
    """

    dashboard_uid: str
    title: str
    type: str
    raw_sql: str
    format: Format
    columns: tuple[str, ...]
    description: str = ""
    row: str = ""
    width: int = 12
    height: int = 8
    style: Callable[[Any], Any] = field(default=lambda panel: panel, repr=False, compare=False)


@dataclass(frozen=True)
class VariableSpec:
    """A dashboard variable: a SQL query variable, or a constant (`query` is then its value)."""

    dashboard_uid: str
    name: str
    label: str
    query: str
    kind: Literal["query", "constant"] = "query"
    multi: bool = False
    include_all: bool = False


@dataclass(frozen=True)
class DashboardSpec:
    uid: str
    title: str
    description: str
    tags: tuple[str, ...]
    time_from: str = "now-6h"
    refresh: str = "1m"


class SQLQuery(cogvariants.Dataquery):
    """A code-mode query of Grafana's PostgreSQL datasource (the SDK ships no model for it)."""

    def __init__(self, ref_id: str, raw_sql: str, fmt: Format) -> None:
        self.ref_id = ref_id
        self.raw_sql = raw_sql
        self.format = fmt

    def to_json(self) -> dict[str, object]:
        return {
            "datasource": DATASOURCE.to_json(),
            "editorMode": "code",
            "format": self.format,
            "rawQuery": True,
            "rawSql": self.raw_sql,
            "refId": self.ref_id,
        }


class SQLQueryBuilder(cogbuilder.Builder[SQLQuery]):
    def __init__(self, raw_sql: str, fmt: Format, ref_id: str = "A") -> None:
        self._internal = SQLQuery(ref_id, raw_sql, fmt)

    def build(self) -> SQLQuery:
        return self._internal


def _sql(text: str, **parts: str) -> str:
    """SQL as written in this file, without the source's indentation; each {name} in it becomes parts[name]."""
    lines = [line.rstrip() for line in text.splitlines()]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    indent = min(len(line) - len(line.lstrip()) for line in lines if line)
    sql = "\n".join(line[indent:] for line in lines)
    for name, value in parts.items():
        sql = sql.replace("{" + name + "}", value)
    return sql


def _per_bridge_table(select: str) -> str:
    """`select` once per bridge table of include/tables.py ({table} is its name), UNION ALL'd."""
    return "\n  UNION ALL\n".join("  " + select.format(schema=BRIDGE_SCHEMA, table=name) for name in BRIDGE_TABLES)


# Changes the CDC path carried (inserts and updates): snapshot reads (r) carry the snapshot's time,
# not a commit's, and deletes leave no row in the bridge.
_CHANGES = "cdc_op IN ('c', 'u') AND $__timeFilter(cdc_source_ts)"

# --------------------------------------------------------------------------- visualization options


def _thresholds(*steps: tuple[float | None, str]) -> dashboard_builders.ThresholdsConfig:
    return (
        dashboard_builders.ThresholdsConfig()
        .mode(dashboard_models.ThresholdsMode.ABSOLUTE)
        .steps([dashboard_models.Threshold(value=value, color=color) for value, color in steps])
    )


# seconds since the last change: fine up to two extract cycles, stale beyond ten minutes
_AGE_THRESHOLDS = ((None, "green"), (120, "orange"), (600, "red"))
# commit -> Cassandra latency in seconds
_LATENCY_THRESHOLDS = ((None, "green"), (10, "orange"), (60, "red"))


def _fixed_colour(colour: str) -> list[dashboard_models.DynamicConfigValue]:
    return [dashboard_models.DynamicConfigValue(id_val="color", value={"mode": "fixed", "fixedColor": colour})]


def _legend_bottom() -> common_builders.VizLegendOptions:
    return (
        common_builders.VizLegendOptions()
        .display_mode(common.LegendDisplayMode.LIST)
        .placement(common.LegendPlacement.BOTTOM)
        .show_legend(True)
    )


def _multi_tooltip() -> common_builders.VizTooltipOptions:
    return common_builders.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI).sort(common.SortOrder.DESCENDING)


# tables keep the order of their SQL (ORDER BY), so no sortBy here

def _style_latest_prices(p: table.Panel) -> table.Panel:
    return p.override_by_name("price", [dashboard_models.DynamicConfigValue(id_val="decimals", value=8)])


def _style_leaders(p: table.Panel) -> table.Panel:
    up_green = _thresholds((None, "red"), (0, "green")).build()
    return (
        p.override_by_name("change_pct", [
            dashboard_models.DynamicConfigValue(id_val="displayName", value="24h change"),
            dashboard_models.DynamicConfigValue(id_val="unit", value="percent"),
            dashboard_models.DynamicConfigValue(id_val="decimals", value=2),
            dashboard_models.DynamicConfigValue(id_val="custom.cellOptions", value=common.TableColorTextCellOptions()),
            dashboard_models.DynamicConfigValue(id_val="thresholds", value=up_green),
        ])
        .override_by_name("quote_volume", [dashboard_models.DynamicConfigValue(id_val="unit", value="short")])
    )


def _style_volume(p: timeseries.Panel) -> timeseries.Panel:
    return (
        p.draw_style(common.GraphDrawStyle.BARS)
        .fill_opacity(60)
        .stacking(common_builders.StackingConfig().mode(common.StackingMode.NORMAL))
        .legend(_legend_bottom())
        .tooltip(_multi_tooltip())
        .unit("short")
    )


def _style_most_traded(p: barchart.Panel) -> barchart.Panel:
    return (
        p.x_field("symbol")
        .orientation(common.VizOrientation.VERTICAL)
        .x_tick_label_rotation(-45)
        .show_value(common.VisibilityMode.AUTO)
        .legend(_legend_bottom())
        .unit("short")
        # counts and quote volumes differ by orders of magnitude: each on its own axis
        .override_by_name("trades", [dashboard_models.DynamicConfigValue(id_val="custom.axisPlacement",
                                                                         value=common.AxisPlacement.RIGHT)])
    )


def _style_candles(p: candlestick.Panel) -> candlestick.Panel:
    return (
        p.mode(candlestick_models.VizDisplayMode.CANDLES_VOLUME)
        .candle_style(candlestick_models.CandleStyle.CANDLES)
        .color_strategy(candlestick_models.ColorStrategy.OPEN_CLOSE)
        .fields(candlestick.CandlestickFieldMap().open("open").high("high").low("low").close("close").volume("volume"))
        .colors(candlestick.CandlestickColors().up("green").down("red").flat("gray"))
        .include_all_fields(False)
        .legend(_legend_bottom())
    )


def _style_order_book(p: barchart.Panel) -> barchart.Panel:
    return (
        p.x_field("symbol")
        .stacking(common.StackingMode.NONE)
        .legend(_legend_bottom())
        # symbols' base assets differ by orders of magnitude in unit price (BTC vs DOGE)
        .scale_distribution(common_builders.ScaleDistributionConfig().type(common.ScaleDistribution.LOG).log(10))
        .override_by_name("bids", _fixed_colour("green"))
        .override_by_name("asks", _fixed_colour("red"))
    )


def _style_freshness(p: table.Panel) -> table.Panel:
    age = [
        dashboard_models.DynamicConfigValue(id_val="unit", value="s"),
        dashboard_models.DynamicConfigValue(id_val="decimals", value=0),
        dashboard_models.DynamicConfigValue(id_val="custom.cellOptions", value=common.TableColorTextCellOptions()),
        dashboard_models.DynamicConfigValue(id_val="thresholds", value=_thresholds(*_AGE_THRESHOLDS).build()),
    ]
    return p.override_by_name("commit_age_s", age).override_by_name("bridge_age_s", age)


def _style_latency_stat(p: stat.Panel) -> stat.Panel:
    return (
        p.unit("s")
        .decimals(2)
        .reduce_options(common_builders.ReduceDataOptions().values(False).calcs(["lastNotNull"]).fields(""))
        .graph_mode(common.BigValueGraphMode.NONE)
        .color_mode(common.BigValueColorMode.VALUE)
        .text_mode(common.BigValueTextMode.VALUE_AND_NAME)
        .thresholds(_thresholds(*_LATENCY_THRESHOLDS))
    )


def _style_latency_series(p: timeseries.Panel) -> timeseries.Panel:
    return (
        p.unit("s")
        .legend(_legend_bottom())
        .tooltip(_multi_tooltip())
        .show_points(common.VisibilityMode.AUTO)
        .thresholds(_thresholds(*_LATENCY_THRESHOLDS))
        .thresholds_style(common_builders.GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.DASHED))
    )


# --------------------------------------------------------------------------- pipeline health options


def _colour_map(colours: dict[str, str]) -> dashboard_models.ValueMap:
    """Text values shown as they are, each in its colour."""
    results = {value: dashboard_models.ValueMappingResult(color=colour, index=i)
               for i, (value, colour) in enumerate(colours.items())}
    return dashboard_models.ValueMap(options=results)


def _coloured_cells(colours: dict[str, str]) -> list[dashboard_models.DynamicConfigValue]:
    return [
        dashboard_models.DynamicConfigValue(id_val="mappings", value=[_colour_map(colours)]),
        dashboard_models.DynamicConfigValue(id_val="custom.cellOptions",
                                            value=common.TableColoredBackgroundCellOptions()),
    ]


def _bytes_cells() -> list[dashboard_models.DynamicConfigValue]:
    return [dashboard_models.DynamicConfigValue(id_val="unit", value="bytes")]


# Kafka Connect states (https://kafka.apache.org/documentation/#connect_administration)
_CONNECT_STATES = {"RUNNING": "green", "PAUSED": "orange", "STOPPED": "orange", "UNASSIGNED": "orange",
                   "RESTARTING": "orange", "FAILED": "red", "MISSING": "red"}
# pg_replication_slots.wal_status: lost means invalidated, unreserved means about to be
_WAL_STATUS = {"reserved": "green", "extended": "orange", "unreserved": "red", "lost": "red"}


def _style_checks(p: table.Panel) -> table.Panel:
    return p.override_by_name("status", _coloured_cells({"OK": "green", "FAILED": "red"}))


def _style_connector_states(p: table.Panel) -> table.Panel:
    return p.override_by_name("state", _coloured_cells(_CONNECT_STATES))


def _style_slot(p: table.Panel) -> table.Panel:
    return (
        p.override_by_name("wal_status", _coloured_cells(_WAL_STATUS))
        .override_by_name("retained_wal", _bytes_cells())
        .override_by_name("safe_wal_size", _bytes_cells())
    )


def _style_wal_series(p: timeseries.Panel) -> timeseries.Panel:
    return p.unit("bytes").legend(_legend_bottom()).tooltip(_multi_tooltip())


def _style_lag_series(p: timeseries.Panel) -> timeseries.Panel:
    return p.unit("short").legend(_legend_bottom()).tooltip(_multi_tooltip()).fill_opacity(10)


def _style_age_series(p: timeseries.Panel) -> timeseries.Panel:
    return (
        p.unit("s")
        .legend(_legend_bottom())
        .tooltip(_multi_tooltip())
        .thresholds(_thresholds(*_AGE_THRESHOLDS))
        .thresholds_style(common_builders.GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.DASHED))
    )


def _style_batches(p: timeseries.Panel) -> timeseries.Panel:
    # rows per interval as bars on the left, processing time as a line on its own axis
    return (
        p.unit("short")
        .legend(_legend_bottom())
        .tooltip(_multi_tooltip())
        .override_by_name("input_rows", [
            dashboard_models.DynamicConfigValue(id_val="custom.drawStyle", value=common.GraphDrawStyle.BARS),
            dashboard_models.DynamicConfigValue(id_val="custom.fillOpacity", value=50),
        ])
        .override_by_name("processing_s", [
            dashboard_models.DynamicConfigValue(id_val="unit", value="s"),
            dashboard_models.DynamicConfigValue(id_val="custom.axisPlacement", value=common.AxisPlacement.RIGHT),
        ])
    )


# --------------------------------------------------------------------------- the dashboards

DASHBOARDS: tuple[DashboardSpec, ...] = (
    DashboardSpec(
        uid=MARKET_UID,
        title="Binance market (from Cassandra)",
        description=(
            "Binance market data as it reached Cassandra through Debezium, Kafka and Spark, read from the "
            "bridge copy in Postgres schema cassandra; the Pipeline row shows how fresh that copy is."
        ),
        tags=("binance", "cassandra", "cdc"),
    ),
    DashboardSpec(
        uid=HEALTH_UID,
        title="Pipeline health",
        description=(
            "What the pipeline_health DAG checks every minute: the Debezium connector and its tasks, the "
            "replication slot's retained WAL, the stream's lag per topic, freshness per stage and the stream's "
            "commit -> Cassandra latency. A failed check says what is wrong and what to do."
        ),
        tags=("binance", "cdc", "health"),
        time_from="now-3h",
    ),
)

VARIABLES: tuple[VariableSpec, ...] = (
    VariableSpec(MARKET_UID, "symbol", "Symbol", "SELECT DISTINCT symbol FROM cassandra.latest_prices ORDER BY 1",
                 multi=True, include_all=True),
    VariableSpec(MARKET_UID, "candle_symbol", "Candlestick symbol", "BTCUSDT", kind="constant"),
    VariableSpec(MARKET_UID, "kline_interval", "Kline interval",
                 "SELECT DISTINCT interval FROM cassandra.klines WHERE symbol = '$candle_symbol' ORDER BY 1"),
)

PANELS: tuple[PanelSpec, ...] = (
    PanelSpec(
        MARKET_UID, "Latest prices", "table",
        _sql("""
            SELECT DISTINCT ON (symbol) symbol, price, time
            FROM cassandra.latest_prices
            WHERE symbol IN ($symbol) AND time <= $__timeTo()
            ORDER BY symbol, time DESC
        """),
        "table", ("symbol", "price", "time"),
        description="The newest price of each symbol up to the end of the time range.",
        row="Market", width=8, height=9, style=_style_latest_prices,
    ),
    PanelSpec(
        MARKET_UID, "24h leaders", "table",
        _sql("""
            SELECT symbol, last_price, change_pct, high_price, low_price, quote_volume, close_time
            FROM (
              SELECT DISTINCT ON (symbol)
                     symbol, last_price, high_price, low_price, quote_volume, close_time,
                     round((last_price - open_price) / NULLIF(open_price, 0) * 100, 2) AS change_pct
              FROM cassandra.daily_ticker
              WHERE symbol IN ($symbol) AND close_time <= $__timeTo()
              ORDER BY symbol, close_time DESC
            ) latest
            ORDER BY change_pct DESC NULLS LAST, symbol
        """),
        "table", ("symbol", "last_price", "change_pct", "quote_volume"),
        description="Rolling 24h ticker, newest per symbol: change = (last - open) / open.",
        row="Market", width=16, height=9, style=_style_leaders,
    ),
    PanelSpec(
        MARKET_UID, "Traded volume per symbol", "timeseries",
        _sql("""
            SELECT $__timeGroupAlias(time, $__interval), symbol AS metric, sum(qty)::float8 AS volume
            FROM cassandra.recent_trades
            WHERE $__timeFilter(time) AND symbol IN ($symbol)
            GROUP BY 1, 2
            ORDER BY 1, 2
        """),
        "time_series", ("time", "metric", "volume"),
        description="Base-asset quantity traded per interval, from the recent trades the extract keeps.",
        row="Market", width=16, height=9, style=_style_volume,
    ),
    PanelSpec(
        MARKET_UID, "Most traded symbols", "barchart",
        _sql("""
            SELECT symbol, sum(quote_qty)::float8 AS quote_volume, count(*)::float8 AS trades
            FROM cassandra.recent_trades
            WHERE $__timeFilter(time) AND symbol IN ($symbol)
            GROUP BY symbol
            ORDER BY quote_volume DESC
            LIMIT 20
        """),
        "table", ("symbol", "quote_volume", "trades"),
        description="Quote volume and number of trades over the time range.",
        row="Market", width=8, height=9, style=_style_most_traded,
    ),
    PanelSpec(
        MARKET_UID, "${candle_symbol} candlesticks (${kline_interval})", "candlestick",
        _sql("""
            SELECT open_time AS "time",
                   open_price::float8 AS open, high_price::float8 AS high, low_price::float8 AS low,
                   close_price::float8 AS close, volume::float8 AS volume
            FROM cassandra.klines
            WHERE symbol = '$candle_symbol' AND interval = '$kline_interval' AND $__timeFilter(open_time)
            ORDER BY 1
        """),
        "time_series", ("time", "open", "high", "low", "close", "volume"),
        description="Klines of the interval the extract fetches (Airflow Variable binance_kline_interval).",
        row="Market", width=16, height=10, style=_style_candles,
    ),
    PanelSpec(
        MARKET_UID, "Order book quantity by side", "barchart",
        _sql("""
            WITH latest AS (
              SELECT symbol, max(captured_at) AS captured_at
              FROM cassandra.order_book
              WHERE symbol IN ($symbol) AND captured_at <= $__timeTo()
              GROUP BY symbol
            )
            SELECT o.symbol,
                   coalesce(sum(o.quantity) FILTER (WHERE o.side = 'bid'), 0)::float8 AS bids,
                   coalesce(sum(o.quantity) FILTER (WHERE o.side = 'ask'), 0)::float8 AS asks
            FROM cassandra.order_book o
            JOIN latest l ON l.symbol = o.symbol AND l.captured_at = o.captured_at
            GROUP BY o.symbol
            ORDER BY o.symbol
        """),
        "table", ("symbol", "bids", "asks"),
        description="Total quantity on each side of the newest order book snapshot per symbol (log scale).",
        row="Market", width=8, height=10, style=_style_order_book,
    ),
    PanelSpec(
        MARKET_UID, "Freshness by table", "table",
        _sql("""
            SELECT t.table_name, t.last_commit,
                   EXTRACT(EPOCH FROM now() - t.last_commit)::float8 AS commit_age_s,
                   w.synced_at AS bridge_synced_at,
                   EXTRACT(EPOCH FROM now() - w.synced_at)::float8 AS bridge_age_s
            FROM (
            {last_commits}
            ) t
            LEFT JOIN cassandra.bridge_watermarks w USING (table_name)
            ORDER BY t.table_name
        """, last_commits=_per_bridge_table(
            "SELECT '{table}' AS table_name, max(cdc_source_ts) AS last_commit FROM {schema}.{table}")),
        "table", ("table_name", "last_commit", "commit_age_s", "bridge_synced_at", "bridge_age_s"),
        description=(
            "now() - the newest source commit time per bridge table, and when the bridge last synced it. "
            "A table whose source does not change (a quiet market) ages without the pipeline being late."
        ),
        row="Pipeline", width=14, height=8, style=_style_freshness,
    ),
    PanelSpec(
        MARKET_UID, "Commit to Cassandra latency", "stat",
        _sql("""
            SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_s) AS p50,
                   percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_s) AS p95
            FROM (
            {latencies}
            ) changes
        """, latencies=_per_bridge_table(
            "SELECT EXTRACT(EPOCH FROM cdc_written_at - cdc_source_ts)::float8 AS latency_s "
            "FROM {schema}.{table} WHERE " + _CHANGES)),
        "table", ("p50", "p95"),
        description="cdc_written_at - cdc_source_ts over the changes committed in the time range, all tables.",
        row="Pipeline", width=10, height=8, style=_style_latency_stat,
    ),
    PanelSpec(
        MARKET_UID, "Commit to Cassandra latency over time", "timeseries",
        _sql("""
            SELECT $__timeGroupAlias(cdc_source_ts, $__interval),
                   percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_s) AS p50,
                   percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_s) AS p95
            FROM (
            {latencies}
            ) changes
            GROUP BY 1
            ORDER BY 1
        """, latencies=_per_bridge_table(
            "SELECT cdc_source_ts, EXTRACT(EPOCH FROM cdc_written_at - cdc_source_ts)::float8 AS latency_s "
            "FROM {schema}.{table} WHERE " + _CHANGES)),
        "time_series", ("time", "p50", "p95"),
        description="p50 and p95 of commit -> Cassandra latency per interval, all bridge tables.",
        row="Pipeline", width=24, height=8, style=_style_latency_series,
    ),
    # ----------------------------------------------------------------- Pipeline health
    PanelSpec(
        HEALTH_UID, "Checks", "table",
        _sql("""
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
        _sql("""
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
        _sql("""
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
        _sql("""
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
        _sql("""
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
        _sql("""
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
        _sql("""
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
        row="End to end", width=12, height=8, style=_style_latency_series,
    ),
    PanelSpec(
        HEALTH_UID, "Micro-batches", "timeseries",
        _sql("""
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
)

_PANEL_BUILDERS: dict[str, Callable[[], Any]] = {
    "barchart": barchart.Panel,
    "candlestick": candlestick.Panel,
    "stat": stat.Panel,
    "table": table.Panel,
    "timeseries": timeseries.Panel,
}


def panels() -> list[PanelSpec]:
    """Every panel of every dashboard, in dashboard order."""
    return list(PANELS)


def variables() -> list[VariableSpec]:
    return list(VARIABLES)


# --------------------------------------------------------------------------- building and writing


def _variable(spec: VariableSpec) -> cogbuilder.Builder[dashboard_models.VariableModel]:
    if spec.kind == "constant":
        return dashboard_builders.ConstantVariable(spec.name).label(spec.label).value(spec.query)
    var = (
        dashboard_builders.QueryVariable(spec.name)
        .label(spec.label)
        .datasource(DATASOURCE)
        .query(spec.query)
        .refresh(dashboard_models.VariableRefresh.ON_DASHBOARD_LOAD)
        .sort(dashboard_models.VariableSort.ALPHABETICAL_ASC)
        .multi(spec.multi)
        .include_all(spec.include_all)
    )
    if spec.include_all:
        var = var.current(dashboard_models.VariableOption(selected=True, text=["All"], value=["$__all"]))
    return var


def _panel(spec: PanelSpec, panel_id: int) -> cogbuilder.Builder[dashboard_models.Panel]:
    if spec.type not in _PANEL_BUILDERS:
        raise ValueError(f"panel {spec.title!r}: no builder for panel type {spec.type!r}")
    builder = (
        _PANEL_BUILDERS[spec.type]()
        .id(panel_id)
        .title(spec.title)
        .description(spec.description)
        .datasource(DATASOURCE)
        .with_target(SQLQueryBuilder(spec.raw_sql, spec.format))
        .span(spec.width)
        .height(spec.height)
    )
    return spec.style(builder)


def build_dashboard(spec: DashboardSpec) -> dashboard_models.Dashboard:
    board = (
        dashboard_builders.Dashboard(spec.title)
        .uid(spec.uid)
        .description(spec.description)
        .tags(list(spec.tags))
        .time(spec.time_from, "now")
        .refresh(spec.refresh)
        .timezone("browser")
        .tooltip(dashboard_models.DashboardCursorSync.CROSSHAIR)
        .timepicker(dashboard_builders.TimePicker().refresh_intervals(["30s", "1m", "5m", "15m"]))
        .variables([_variable(v) for v in VARIABLES if v.dashboard_uid == spec.uid])
    )
    panel_id, row = 0, None
    for panel in (p for p in PANELS if p.dashboard_uid == spec.uid):
        if panel.row and panel.row != row:
            panel_id += 1
            row = panel.row
            board = board.with_row(dashboard_builders.Row(row).id(panel_id))
        panel_id += 1
        board = board.with_panel(_panel(panel, panel_id))
    return board.build()


def render(spec: DashboardSpec) -> str:
    """Stable JSON: sorted keys, two-space indentation, a final newline."""
    return json.dumps(build_dashboard(spec), cls=JSONEncoder, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def rendered() -> dict[str, str]:
    """File name -> content of every dashboard this module defines."""
    return {f"{spec.uid}.json": render(spec) for spec in DASHBOARDS}


def check(folder: Path | None = None) -> list[str]:
    """Differences between `folder` (grafana/dashboards) and a fresh generation, a summary and short diff each."""
    folder = folder or DASHBOARDS_DIR
    problems = []
    expected = rendered()
    for name, text in sorted(expected.items()):
        path = folder / name
        if not path.exists():
            problems.append(f"{name}: missing")
            continue
        current = path.read_text()
        if current != text:
            diff = list(difflib.unified_diff(current.splitlines(), text.splitlines(), f"committed/{name}",
                                             f"generated/{name}", lineterm="", n=1))
            shown = "\n".join(diff[:40]) + ("\n..." if len(diff) > 40 else "")
            problems.append(f"{name}: differs from a fresh generation\n{shown}")
    for path in sorted(folder.glob("*.json")):
        if path.name not in expected:
            problems.append(f"{path.name}: not generated by grafana/generate.py (stale)")
    return problems


def write(folder: Path | None = None) -> list[Path]:
    folder = folder or DASHBOARDS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in sorted(rendered().items()):
        path = folder / name
        path.write_text(text)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 on a difference")
    args = parser.parse_args(argv)
    if args.check:
        problems = check()
        if problems:
            print("\n\n".join(problems), file=sys.stderr)
            print("\nrun `python grafana/generate.py` and commit grafana/dashboards/", file=sys.stderr)
            return 1
        print(f"{len(DASHBOARDS)} dashboard(s) up to date in {DASHBOARDS_DIR}")
        return 0
    for path in write():
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
