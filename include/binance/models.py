"""Typed records for Binance market data, and the epoch <-> UTC datetime conversions they rely on.

Prices, quantities and volumes are `Decimal` (Binance sends them as strings; floats would lose
exactness). Times are timezone-aware UTC datetimes truncated to whole milliseconds, whatever
time unit the server answered in.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import ClassVar, Literal

from include.times import EPOCH, to_epoch_ms

# Epoch values in ms have at most 13 digits until year 2286, values in microseconds 16 digits
# from 2001 on. Anything in between fits neither reading for market data, so it is refused.
_MAX_MS = 10**14
_MIN_US = 10**15
_MAX_US = 10**17

Side = Literal["bid", "ask"]


def utc_from_epoch(value: int) -> datetime:
    """Convert an epoch in milliseconds (<= 13 digits) or microseconds (16 digits) to UTC, ms precision."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"epoch time must be an int, got {type(value).__name__}: {value!r}")
    if value < 0:
        raise ValueError(f"epoch time must not be negative, got {value}")
    if value < _MAX_MS:
        millis = value
    elif _MIN_US <= value < _MAX_US:
        millis = value // 1000
    else:
        raise ValueError(f"epoch time {value} is neither milliseconds (<= 13 digits) nor microseconds (16 digits)")
    return EPOCH + timedelta(milliseconds=millis)


def utc_ms(moment: datetime) -> datetime:
    """The same instant in UTC, truncated to whole milliseconds like every record time."""
    return utc_from_epoch(to_epoch_ms(moment))


@dataclass(frozen=True, slots=True)
class LatestPrice:
    """Latest price of a symbol (ticker/price); `time` is when the client observed it (the extract
    stamps the end of the run's data interval instead)."""

    TABLE: ClassVar[str] = "latest_prices"

    symbol: str
    price: Decimal
    time: datetime


@dataclass(frozen=True, slots=True)
class DailyTicker:
    """Rolling 24 h statistics of a symbol (ticker/24hr, the MINI fields)."""

    TABLE: ClassVar[str] = "daily_ticker"

    symbol: str
    open_price: Decimal
    high_price: Decimal
    low_price: Decimal
    last_price: Decimal
    volume: Decimal
    quote_volume: Decimal
    open_time: datetime
    close_time: datetime
    first_id: int
    last_id: int
    count: int


@dataclass(frozen=True, slots=True)
class Kline:
    """One candlestick, identified by (symbol, interval, open_time); the newest one is still open."""

    TABLE: ClassVar[str] = "klines"

    symbol: str
    interval: str
    open_time: datetime
    open_price: Decimal
    high_price: Decimal
    low_price: Decimal
    close_price: Decimal
    volume: Decimal
    close_time: datetime
    quote_volume: Decimal
    num_trades: int


@dataclass(frozen=True, slots=True)
class Trade:
    """One public trade, identified by (symbol, trade_id)."""

    TABLE: ClassVar[str] = "recent_trades"

    symbol: str
    trade_id: int
    price: Decimal
    qty: Decimal
    quote_qty: Decimal
    time: datetime
    is_buyer_maker: bool


@dataclass(frozen=True, slots=True)
class OrderBookLevel:
    """One price level of an order book snapshot; a snapshot is all levels sharing `update_id`."""

    TABLE: ClassVar[str] = "order_book"

    update_id: int
    symbol: str
    side: Side
    price: Decimal
    quantity: Decimal
    captured_at: datetime


@dataclass(frozen=True, slots=True)
class AggTrade:
    """One aggregate trade, identified by (symbol, agg_trade_id): the fills of one taker order at one
    price and time, summed (aggTrades' a, p, q, f, l, T, m; the archives' same columns). Not a trade:
    it stands for the trades first_trade_id..last_trade_id."""

    TABLE: ClassVar[str] = "agg_trades"

    symbol: str
    agg_trade_id: int
    price: Decimal
    qty: Decimal
    first_trade_id: int
    last_trade_id: int
    time: datetime
    is_buyer_maker: bool
