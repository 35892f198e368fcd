"""The six source tables, defined once: columns, keys, time columns, and how Cassandra keys them.

Everything else follows these definitions: the loader's column order and conflict keys, the
publication and the connector's table list (set by cdc_setup), the Spark parsing schema, the
bridge, the health checks and the status report. The migrations (include/schema/sql, cql) are
written by hand as versioned files, and tests/unit/test_table_definitions.py checks every one of
them, and the record dataclasses of include/binance/models.py, against these definitions.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cached_property

from include.names import SOURCE_SCHEMA
from include.times import as_utc


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
    # the column that says when a row happened: its Cassandra bucket, its retention, the status report
    time_column: str
    # an indexed column whose max() tells how fresh the table is, cheaply: the observation time in
    # the source (klines carry a candle's open time, trades would be scanned at a cost: None), the
    # source commit time in the bridge
    freshness_column: str | None = None
    # what Debezium puts in `before` of a delete: the primary key (DEFAULT) or every column (FULL)
    replica_identity: str = "DEFAULT"
    # rows never change once written (a trade): a re-load adds nothing and compares nothing
    immutable: bool = False
    # Cassandra's primary key for the same rows: partition by what reads filter on (symbol) and a
    # time bucket of time_column (`bucket`, the start of its hour or day), cluster by time, newest
    # first. The bucket keeps every partition bounded (sizes in the README, "Data"). Every column of
    # the key, and time_column, must be in a Debezium delete event's `before`.
    cassandra_partition_key: tuple[str, ...] = ("symbol",)
    cassandra_clustering: tuple[str, ...] = ()
    # "hour" or "day": the span of one partition's bucket (None: no bucket, for bridge copies)
    bucket: str | None = None

    # the derived names and lookups below are cached on the instance: the stream asks for them per change
    @cached_property
    def cassandra_key(self) -> tuple[str, ...]:
        """Cassandra's primary key: partition key (with `bucket` last), then clustering columns."""
        bucket = (BUCKET.name,) if self.bucket else ()
        return self.cassandra_partition_key + bucket + self.cassandra_clustering

    @cached_property
    def cassandra_partition(self) -> tuple[str, ...]:
        return self.cassandra_partition_key + ((BUCKET.name,) if self.bucket else ())

    @property
    def row_key(self) -> tuple[str, ...]:
        """The source columns that identify a row in Cassandra: its key without the bucket, which
        follows from time_column (the bridge's primary key in Postgres)."""
        return self.cassandra_partition_key + self.cassandra_clustering

    @property
    def bucket_span(self) -> timedelta:
        if self.bucket is None:
            raise ValueError(f"table {self.name} has no time bucket")
        return _SPANS[self.bucket]

    def bucket_of(self, moment: datetime) -> datetime:
        """The start (UTC) of the bucket holding a row whose time_column is `moment` (naive = UTC)."""
        moment = as_utc(moment)
        start = moment.replace(minute=0, second=0, microsecond=0)
        return start.replace(hour=0) if self.bucket == "day" else start

    def column(self, name: str) -> Column:
        """A column of the table, or `bucket`, the Cassandra key's time bucket."""
        if name == BUCKET.name and self.bucket:
            return BUCKET
        return self._by_name[name]

    @cached_property
    def _by_name(self) -> dict[str, Column]:
        return {c.name: c for c in self.columns}

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def value_columns(self) -> list[str]:
        return [c.name for c in self.columns if c.name not in self.primary_key]


# the partition bucket of Cassandra's keys: the start of the hour or day of time_column
BUCKET = Column("bucket", "timestamptz")
_SPANS = {"hour": timedelta(hours=1), "day": timedelta(days=1)}


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
            freshness_column="time",
            cassandra_clustering=("time",),
            bucket="day",
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
            freshness_column="close_time",
            cassandra_clustering=("close_time",),
            bucket="day",
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
            bucket="day",
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
            # deletes must carry `time`, which Cassandra's bucket follows
            replica_identity="FULL",
            cassandra_clustering=("trade_id",),
            bucket="hour",
        ),
        Table(
            "order_book",
            _cols(
                "update_id:bigint symbol:text side:text price:numeric quantity:numeric captured_at:timestamptz"
            ),
            primary_key=("symbol", "update_id", "side", "price"),
            time_column="captured_at",
            freshness_column="captured_at",
            # a snapshot (update_id) never changes; fetched twice, it keeps its first captured_at
            immutable=True,
            # deletes must carry captured_at too, which Cassandra's key and bucket follow
            replica_identity="FULL",
            cassandra_clustering=("captured_at", "update_id", "side", "price"),
            bucket="hour",
        ),
        Table(
            # one aggregate trade: the fills of one taker order at one price and time (Binance's a, p, q,
            # f, l, T, m); from GET /api/v3/aggTrades for a run's interval, or from the archives
            "agg_trades",
            _cols(
                "symbol:text agg_trade_id:bigint price:numeric qty:numeric first_trade_id:bigint "
                "last_trade_id:bigint time:timestamptz is_buyer_maker:boolean"
            ),
            primary_key=("symbol", "agg_trade_id"),
            time_column="time",
            immutable=True,
            # deletes must carry `time`, which Cassandra's bucket follows
            replica_identity="FULL",
            cassandra_clustering=("agg_trade_id",),
            bucket="hour",
        ),
    )
}


def bridge_table(table: Table) -> Table:
    """The copy of a Cassandra table in Postgres schema `cassandra`: same columns plus the CDC
    metadata, keyed like a Cassandra row without its bucket (include/schema/sql/cassandra follows this)."""
    return Table(
        table.name,
        table.columns + CDC_COLUMNS,
        primary_key=table.row_key,
        time_column=table.time_column,
        # the bridge's freshness is the newest source commit it holds (indexed in every bridge table)
        freshness_column="cdc_source_ts",
        cassandra_partition_key=table.cassandra_partition_key,
        cassandra_clustering=table.cassandra_clustering,
        bucket=table.bucket,
    )


BRIDGE_TABLES: dict[str, Table] = {name: bridge_table(t) for name, t in TABLES.items()}


def qualified(table: str, schema: str = SOURCE_SCHEMA) -> str:
    """schema.table, as Debezium's table.include.list and pg_publication_tables name it."""
    return f"{schema}.{table}"

