"""The five source tables, defined once: columns, keys, time columns, and how Cassandra keys them.

Everything else follows these definitions: the loader's column order and conflict keys, the
publication and the connector's table list (set by cdc_setup), the Spark parsing schema, the
bridge, the health checks and the status report. The migrations (include/schema/sql, cql) are
written by hand as versioned files, and tests/unit/test_table_definitions.py checks every one of
them, and the record dataclasses of include/binance/models.py, against these definitions.
"""

from __future__ import annotations

from dataclasses import dataclass

from include.names import SOURCE_SCHEMA


@dataclass(frozen=True)
class Column:
    name: str
    # logical type: text | numeric | timestamptz | bigint | boolean
    type: str


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]
    # the column that says when a row happened (status report, freshness)
    time_column: str
    # time_column is when the row was observed and is indexed, so max() of it tells how fresh the
    # table is cheaply (klines carry a candle's open time, trades are only scanned at a cost)
    tells_freshness: bool = False
    # what Debezium puts in `before` of a delete: the primary key (DEFAULT) or every column (FULL)
    replica_identity: str = "DEFAULT"
    # rows never change once written (a trade): a re-load adds nothing and compares nothing
    immutable: bool = False
    # Cassandra's primary key for the same rows: partition by what reads filter on (symbol), cluster
    # by time, newest first. Every column of it must be in a Debezium delete event's `before`.
    cassandra_partition_key: tuple[str, ...] = ("symbol",)
    cassandra_clustering: tuple[str, ...] = ()

    @property
    def cassandra_key(self) -> tuple[str, ...]:
        return self.cassandra_partition_key + self.cassandra_clustering

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def value_columns(self) -> list[str]:
        return [c.name for c in self.columns if c.name not in self.primary_key]


def _cols(spec: str) -> tuple[Column, ...]:
    return tuple(Column(*item.split(":")) for item in spec.split())


# Columns the CDC sink adds to every Cassandra table (and the bridge carries to Postgres):
# the Debezium op, the source commit time, the source LSN, and when the row reached Cassandra.
CDC_COLUMNS = (
    Column("cdc_op", "text"),
    Column("cdc_source_ts", "timestamptz"),
    Column("cdc_lsn", "bigint"),
    Column("cdc_written_at", "timestamptz"),
)

TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        Table(
            "latest_prices",
            _cols("symbol:text price:numeric time:timestamptz"),
            primary_key=("symbol", "time"),
            time_column="time",
            tells_freshness=True,
            cassandra_clustering=("time",),
        ),
        Table(
            "daily_ticker",
            _cols(
                "symbol:text open_price:numeric high_price:numeric low_price:numeric last_price:numeric "
                "volume:numeric quote_volume:numeric open_time:timestamptz close_time:timestamptz "
                "first_id:bigint last_id:bigint count:bigint"
            ),
            primary_key=("symbol", "close_time"),
            time_column="close_time",
            tells_freshness=True,
            cassandra_clustering=("close_time",),
        ),
        Table(
            "klines",
            _cols(
                "symbol:text interval:text open_time:timestamptz open_price:numeric high_price:numeric "
                "low_price:numeric close_price:numeric volume:numeric close_time:timestamptz "
                "quote_volume:numeric num_trades:bigint"
            ),
            primary_key=("symbol", "interval", "open_time"),
            time_column="open_time",
            cassandra_partition_key=("symbol", "interval"),
            cassandra_clustering=("open_time",),
        ),
        Table(
            "recent_trades",
            _cols(
                "symbol:text trade_id:bigint price:numeric qty:numeric quote_qty:numeric time:timestamptz "
                "is_buyer_maker:boolean"
            ),
            primary_key=("symbol", "trade_id"),
            time_column="time",
            immutable=True,
            cassandra_clustering=("trade_id",),
        ),
        Table(
            "order_book",
            _cols(
                "update_id:bigint symbol:text side:text price:numeric quantity:numeric captured_at:timestamptz"
            ),
            primary_key=("symbol", "update_id", "side", "price"),
            time_column="captured_at",
            tells_freshness=True,
            # a snapshot (update_id) never changes; fetched twice, it must keep its first captured_at,
            # which Cassandra's key includes (an update of it would leave the old row there)
            immutable=True,
            # deletes (retention) must carry captured_at too, which the sink keys on
            replica_identity="FULL",
            cassandra_clustering=("captured_at", "update_id", "side", "price"),
        ),
    )
}


def bridge_table(table: Table) -> Table:
    """The copy of a Cassandra table in Postgres schema `cassandra`: same columns plus the CDC
    metadata, keyed like Cassandra (include/sql/cassandra follows this)."""
    return Table(
        table.name,
        table.columns + CDC_COLUMNS,
        primary_key=table.cassandra_key,
        # the bridge's freshness is the newest source commit it holds (indexed in every bridge table)
        time_column="cdc_source_ts",
        tells_freshness=True,
        cassandra_partition_key=table.cassandra_partition_key,
        cassandra_clustering=table.cassandra_clustering,
    )


BRIDGE_TABLES: dict[str, Table] = {name: bridge_table(t) for name, t in TABLES.items()}


def qualified(table: str, schema: str = SOURCE_SCHEMA) -> str:
    """schema.table, as Debezium's table.include.list and pg_publication_tables name it."""
    return f"{schema}.{table}"

