"""The five source tables, defined once.

Postgres migrations (include/sql/binance), the loader's column order and conflict keys, and later
the Spark parsing schema and the Cassandra DDL all read these definitions; a test checks that the
tables the migrations create match them column for column.
"""

from __future__ import annotations

from dataclasses import dataclass


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
    # what Debezium puts in `before` of a delete: the primary key (DEFAULT) or every column (FULL)
    replica_identity: str = "DEFAULT"
    # rows never change once written (a trade): a re-load adds nothing and compares nothing
    immutable: bool = False

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def value_columns(self) -> list[str]:
        return [c.name for c in self.columns if c.name not in self.primary_key]


def _cols(spec: str) -> tuple[Column, ...]:
    return tuple(Column(*item.split(":")) for item in spec.split())


SCHEMA = "binance"

TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        Table(
            "latest_prices",
            _cols("symbol:text price:numeric time:timestamptz"),
            primary_key=("symbol", "time"),
        ),
        Table(
            "daily_ticker",
            _cols(
                "symbol:text open_price:numeric high_price:numeric low_price:numeric last_price:numeric "
                "volume:numeric quote_volume:numeric open_time:timestamptz close_time:timestamptz "
                "first_id:bigint last_id:bigint count:bigint"
            ),
            primary_key=("symbol", "close_time"),
        ),
        Table(
            "klines",
            _cols(
                "symbol:text interval:text open_time:timestamptz open_price:numeric high_price:numeric "
                "low_price:numeric close_price:numeric volume:numeric close_time:timestamptz "
                "quote_volume:numeric num_trades:bigint"
            ),
            primary_key=("symbol", "interval", "open_time"),
        ),
        Table(
            "recent_trades",
            _cols(
                "symbol:text trade_id:bigint price:numeric qty:numeric quote_qty:numeric time:timestamptz "
                "is_buyer_maker:boolean"
            ),
            primary_key=("symbol", "trade_id"),
            immutable=True,
        ),
        Table(
            "order_book",
            _cols(
                "update_id:bigint symbol:text side:text price:numeric quantity:numeric captured_at:timestamptz"
            ),
            primary_key=("symbol", "update_id", "side", "price"),
            # deletes (retention) must carry captured_at too, which the sink keys on
            replica_identity="FULL",
        ),
    )
}
