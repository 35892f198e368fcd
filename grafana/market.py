"""The "Binance market" dashboard: market data as it reached Cassandra, read from the bridge copy in
Postgres (schema BRIDGE_SCHEMA, `{bridge}` in the SQL below), and how fresh that copy is.

Each panel's SQL lives once, in `PANELS`; the tests run every query against the real database.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import barchart, candlestick, stat, table, timeseries
from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.models import candlestick as candlestick_models
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as dashboard_models

from grafana.builder import (
    AGE_THRESHOLDS,
    LATENCY_THRESHOLDS,
    DashboardSpec,
    PanelSpec,
    VariableSpec,
    fixed_colour,
    legend_bottom,
    multi_tooltip,
    sql,
    style_latency_series,
    thresholds,
)
from include.names import BRIDGE_SCHEMA
from include.tables import BRIDGE_TABLES

MARKET_UID = "binance-market"


def _per_bridge_table(select: str) -> str:
    """`select` once per bridge table of include/tables.py ({table} is its name), UNION ALL'd."""
    return "\n  UNION ALL\n".join("  " + sql(select, bridge=BRIDGE_SCHEMA, table=name) for name in BRIDGE_TABLES)


# Changes the CDC path carried (inserts and updates): snapshot reads (r) carry the snapshot's time,
# not a commit's, and deletes leave no row in the bridge.
_CHANGES = "cdc_op IN ('c', 'u') AND $__timeFilter(cdc_source_ts)"

# --------------------------------------------------------------------------- visualization options


def _style_latest_prices(p: table.Panel) -> table.Panel:
    return p.override_by_name("price", [dashboard_models.DynamicConfigValue(id_val="decimals", value=8)])


def _style_leaders(p: table.Panel) -> table.Panel:
    up_green = thresholds((None, "red"), (0, "green")).build()
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
        .legend(legend_bottom())
        .tooltip(multi_tooltip())
        .unit("short")
    )


def _style_most_traded(p: barchart.Panel) -> barchart.Panel:
    return (
        p.x_field("symbol")
        .orientation(common.VizOrientation.VERTICAL)
        .x_tick_label_rotation(-45)
        .show_value(common.VisibilityMode.AUTO)
        .legend(legend_bottom())
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
        .legend(legend_bottom())
    )


def _style_order_book(p: barchart.Panel) -> barchart.Panel:
    return (
        p.x_field("symbol")
        .stacking(common.StackingMode.NONE)
        .legend(legend_bottom())
        # symbols' base assets differ by orders of magnitude in unit price (BTC vs DOGE)
        .scale_distribution(common_builders.ScaleDistributionConfig().type(common.ScaleDistribution.LOG).log(10))
        .override_by_name("bids", fixed_colour("green"))
        .override_by_name("asks", fixed_colour("red"))
    )


def _style_freshness(p: table.Panel) -> table.Panel:
    age = [
        dashboard_models.DynamicConfigValue(id_val="unit", value="s"),
        dashboard_models.DynamicConfigValue(id_val="decimals", value=0),
        dashboard_models.DynamicConfigValue(id_val="custom.cellOptions", value=common.TableColorTextCellOptions()),
        dashboard_models.DynamicConfigValue(id_val="thresholds", value=thresholds(*AGE_THRESHOLDS).build()),
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
        .thresholds(thresholds(*LATENCY_THRESHOLDS))
    )


# --------------------------------------------------------------------------- the dashboard

DASHBOARD = DashboardSpec(
    uid=MARKET_UID,
    title="Binance market (from Cassandra)",
    description=(
        "Binance market data as it reached Cassandra through Debezium, Kafka and Spark, read from the "
        "bridge copy in Postgres schema cassandra; the Pipeline row shows how fresh that copy is."
    ),
    tags=("binance", "cassandra", "cdc"),
)

def _distinct(column: str, table: str, where: str = "") -> str:
    """The distinct values of `column`, the leading column (after the one `where` fixes) of `table`'s
    primary key, one index probe per value (a loose index scan: a recursive CTE), never a scan of the
    table: over 30 days of 1-minute candles SELECT DISTINCT would read every row on each dashboard load."""
    fixed = f"t.{where} AND " if where else ""
    return sql(f"""
        WITH RECURSIVE v AS (
          (SELECT t.{column} FROM {{bridge}}.{table} t {"WHERE " + fixed}t.{column} IS NOT NULL
           ORDER BY t.{column} LIMIT 1)
          UNION ALL
          SELECT (SELECT t.{column} FROM {{bridge}}.{table} t WHERE {fixed}t.{column} > v.{column}
                  ORDER BY t.{column} LIMIT 1)
          FROM v WHERE v.{column} IS NOT NULL
        )
        SELECT v.{column} FROM v WHERE v.{column} IS NOT NULL
    """, bridge=BRIDGE_SCHEMA)


VARIABLES: tuple[VariableSpec, ...] = (
    VariableSpec(MARKET_UID, "symbol", "Symbol", _distinct("symbol", "latest_prices"), multi=True, include_all=True),
    # the candlestick and aggregate-trade panels follow one symbol and interval the user picks
    VariableSpec(MARKET_UID, "candle_symbol", "Candlestick symbol", _distinct("symbol", "klines")),
    VariableSpec(MARKET_UID, "kline_interval", "Kline interval",
                 _distinct("interval", "klines", "symbol = '$candle_symbol'")),
)

PANELS: tuple[PanelSpec, ...] = (
    PanelSpec(
        MARKET_UID, "Latest prices", "table",
        sql("""
            SELECT DISTINCT ON (symbol) symbol, price, time
            FROM {bridge}.latest_prices
            WHERE symbol IN ($symbol) AND time <= $__timeTo()
            ORDER BY symbol, time DESC
        """, bridge=BRIDGE_SCHEMA),
        "table", ("symbol", "price", "time"),
        description="The newest price of each symbol up to the end of the time range.",
        row="Market", width=8, height=9, style=_style_latest_prices,
    ),
    PanelSpec(
        MARKET_UID, "24h leaders", "table",
        sql("""
            SELECT symbol, last_price, change_pct, high_price, low_price, quote_volume, close_time
            FROM (
              SELECT DISTINCT ON (symbol)
                     symbol, last_price, high_price, low_price, quote_volume, close_time,
                     round((last_price - open_price) / NULLIF(open_price, 0) * 100, 2) AS change_pct
              FROM {bridge}.daily_ticker
              WHERE symbol IN ($symbol) AND close_time <= $__timeTo()
              ORDER BY symbol, close_time DESC
            ) latest
            ORDER BY change_pct DESC NULLS LAST, symbol
        """, bridge=BRIDGE_SCHEMA),
        "table", ("symbol", "last_price", "change_pct", "quote_volume"),
        description="Rolling 24h ticker, newest per symbol: change = (last - open) / open.",
        row="Market", width=16, height=9, style=_style_leaders,
    ),
    PanelSpec(
        MARKET_UID, "Traded volume per symbol", "timeseries",
        sql("""
            SELECT $__timeGroupAlias(time, $__interval), symbol AS metric, sum(qty)::float8 AS volume
            FROM {bridge}.recent_trades
            WHERE $__timeFilter(time) AND symbol IN ($symbol)
            GROUP BY 1, 2
            ORDER BY 1, 2
        """, bridge=BRIDGE_SCHEMA),
        "time_series", ("time", "metric", "volume"),
        description="Base-asset quantity traded per interval, from the recent trades the extract keeps.",
        row="Market", width=16, height=9, style=_style_volume,
    ),
    PanelSpec(
        MARKET_UID, "Most traded symbols", "barchart",
        sql("""
            SELECT symbol, sum(quote_qty)::float8 AS quote_volume, count(*)::float8 AS trades
            FROM {bridge}.recent_trades
            WHERE $__timeFilter(time) AND symbol IN ($symbol)
            GROUP BY symbol
            ORDER BY quote_volume DESC
            LIMIT 20
        """, bridge=BRIDGE_SCHEMA),
        "table", ("symbol", "quote_volume", "trades"),
        description="Quote volume and number of trades over the time range.",
        row="Market", width=8, height=9, style=_style_most_traded,
    ),
    PanelSpec(
        MARKET_UID, "${candle_symbol} candlesticks (${kline_interval})", "candlestick",
        sql("""
            SELECT open_time AS "time",
                   open_price::float8 AS open, high_price::float8 AS high, low_price::float8 AS low,
                   close_price::float8 AS close, volume::float8 AS volume
            FROM {bridge}.klines
            WHERE symbol = '$candle_symbol' AND interval = '$kline_interval' AND $__timeFilter(open_time)
            ORDER BY 1
        """, bridge=BRIDGE_SCHEMA),
        "time_series", ("time", "open", "high", "low", "close", "volume"),
        description=(
            "Klines of the symbol and interval picked above (the extract's Variable binance_kline_interval, or any "
            "interval a backfill or binance_archive loaded), for the time range only: the bridge's primary key "
            "(symbol, interval, open_time) serves the query, so 30 days of 1-minute candles stay one index range."
        ),
        row="Market", width=16, height=10, style=_style_candles,
    ),
    PanelSpec(
        MARKET_UID, "${candle_symbol} taker volume (aggregate trades)", "timeseries",
        sql("""
            SELECT $__timeGroupAlias(time, $__interval),
                   CASE WHEN is_buyer_maker THEN 'taker sells' ELSE 'taker buys' END AS metric,
                   sum(qty)::float8 AS volume
            FROM {bridge}.agg_trades
            WHERE $__timeFilter(time) AND symbol = '$candle_symbol'
            GROUP BY 1, 2
            ORDER BY 1, 2
        """, bridge=BRIDGE_SCHEMA),
        "time_series", ("time", "metric", "volume"),
        description=(
            "Base-asset quantity of the aggregate trades per interval, split by the taker's side (an aggregate trade "
            "is one taker order's fills at one price: is_buyer_maker means the taker sold)."
        ),
        row="Market", width=8, height=10, style=_style_volume,
    ),
    PanelSpec(
        MARKET_UID, "Order book quantity by side", "barchart",
        sql("""
            WITH latest AS (
              SELECT symbol, max(captured_at) AS captured_at
              FROM {bridge}.order_book
              WHERE symbol IN ($symbol) AND captured_at <= $__timeTo()
              GROUP BY symbol
            )
            SELECT o.symbol,
                   coalesce(sum(o.quantity) FILTER (WHERE o.side = 'bid'), 0)::float8 AS bids,
                   coalesce(sum(o.quantity) FILTER (WHERE o.side = 'ask'), 0)::float8 AS asks
            FROM {bridge}.order_book o
            JOIN latest l ON l.symbol = o.symbol AND l.captured_at = o.captured_at
            GROUP BY o.symbol
            ORDER BY o.symbol
        """, bridge=BRIDGE_SCHEMA),
        "table", ("symbol", "bids", "asks"),
        description="Total quantity on each side of the newest order book snapshot per symbol (log scale).",
        row="Market", width=24, height=8, style=_style_order_book,
    ),
    PanelSpec(
        MARKET_UID, "Freshness by table", "table",
        sql("""
            SELECT t.table_name, t.last_commit,
                   EXTRACT(EPOCH FROM now() - t.last_commit)::float8 AS commit_age_s,
                   w.synced_at AS bridge_synced_at,
                   EXTRACT(EPOCH FROM now() - w.synced_at)::float8 AS bridge_age_s
            FROM (
            {last_commits}
            ) t
            LEFT JOIN {bridge}.bridge_watermarks w USING (table_name)
            ORDER BY t.table_name
        """, bridge=BRIDGE_SCHEMA, last_commits=_per_bridge_table(
            "SELECT '{table}' AS table_name, max(cdc_source_ts) AS last_commit FROM {bridge}.{table}")),
        "table", ("table_name", "last_commit", "commit_age_s", "bridge_synced_at", "bridge_age_s"),
        description=(
            "now() - the newest source commit time per bridge table, and when the bridge last synced it. "
            "A table whose source does not change (a quiet market) ages without the pipeline being late."
        ),
        row="Pipeline", width=14, height=8, style=_style_freshness,
    ),
    PanelSpec(
        MARKET_UID, "Commit to Cassandra latency", "stat",
        sql("""
            SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_s) AS p50,
                   percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_s) AS p95
            FROM (
            {latencies}
            ) changes
        """, latencies=_per_bridge_table(
            "SELECT EXTRACT(EPOCH FROM cdc_written_at - cdc_source_ts)::float8 AS latency_s "
            "FROM {bridge}.{table} WHERE " + _CHANGES)),
        "table", ("p50", "p95"),
        description="cdc_written_at - cdc_source_ts over the changes committed in the time range, all tables.",
        row="Pipeline", width=10, height=8, style=_style_latency_stat,
    ),
    PanelSpec(
        MARKET_UID, "Commit to Cassandra latency over time", "timeseries",
        sql("""
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
            "FROM {bridge}.{table} WHERE " + _CHANGES)),
        "time_series", ("time", "p50", "p95"),
        description="p50 and p95 of commit -> Cassandra latency per interval, all bridge tables.",
        row="Pipeline", width=24, height=8, style=style_latency_series,
    ),
)
