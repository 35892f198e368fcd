"""Pure parsers from the decoded JSON of each Binance endpoint to typed records.

Every shape problem (missing field, wrong type, wrong array length, not a number) raises
`BinanceResponseError` naming the endpoint, the symbol and the offending record, so a bad
payload fails the task loudly instead of loading wrong rows.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, NoReturn

from include.binance.errors import BinanceResponseError, excerpt
from include.binance.models import (
    AggTrade,
    DailyTicker,
    Kline,
    LatestPrice,
    OrderBookLevel,
    Side,
    Trade,
    utc_from_epoch,
    utc_ms,
)

EXCHANGE_INFO = "/api/v3/exchangeInfo"
TICKER_PRICE = "/api/v3/ticker/price"
TICKER_24HR = "/api/v3/ticker/24hr"
KLINES = "/api/v3/klines"
TRADES = "/api/v3/trades"
AGG_TRADES = "/api/v3/aggTrades"
DEPTH = "/api/v3/depth"

KLINE_FIELDS = 12


def _dump(value: Any) -> str:
    try:
        return json.dumps(value, separators=(",", ":"), default=str)
    except (TypeError, ValueError):
        return repr(value)


class _Record:
    """Typed access to one JSON object or array; every failure names endpoint, symbol and record."""

    def __init__(self, endpoint: str, symbol: str | None, raw: Any) -> None:
        self.endpoint = endpoint
        self.symbol = symbol
        self.raw = raw

    def fail(self, problem: str) -> NoReturn:
        raise BinanceResponseError(self.endpoint, self.symbol, problem, excerpt(_dump(self.raw)))

    def get(self, key: str | int) -> Any:
        raw = self.raw
        if isinstance(key, int):
            if not isinstance(raw, list) or not 0 <= key < len(raw):
                self.fail(f"element [{key}] missing")
            return raw[key]
        if not isinstance(raw, Mapping) or key not in raw:
            self.fail(f"field {key!r} missing")
        return raw[key]

    def text(self, key: str | int) -> str:
        value = self.get(key)
        if not isinstance(value, str) or not value:
            self.fail(f"field {key!r} must be a non-empty string, got {type(value).__name__} {value!r}")
        return value

    def decimal(self, key: str | int) -> Decimal:
        value = self.get(key)
        if isinstance(value, float):
            self.fail(
                f"field {key!r} is the JSON number {value!r}; Binance sends decimals as strings "
                "and a float would not be exact"
            )
        if not isinstance(value, str):
            self.fail(f"field {key!r} must be a decimal string, got {type(value).__name__} {value!r}")
        try:
            number = Decimal(value)
        except InvalidOperation:
            self.fail(f"field {key!r} is not a number: {value!r}")
        if not number.is_finite():
            self.fail(f"field {key!r} is not a finite number: {value!r}")
        return number

    def integer(self, key: str | int) -> int:
        value = self.get(key)
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(f"field {key!r} must be an integer, got {type(value).__name__} {value!r}")
        return value

    def time(self, key: str | int) -> datetime:
        value = self.integer(key)
        try:
            return utc_from_epoch(value)
        except ValueError as exc:
            self.fail(f"field {key!r} is not an epoch time: {exc}")

    def boolean(self, key: str | int) -> bool:
        value = self.get(key)
        if not isinstance(value, bool):
            self.fail(f"field {key!r} must be a boolean, got {type(value).__name__} {value!r}")
        return value


def _objects(endpoint: str, symbol: str | None, payload: Any, *, single_ok: bool) -> list[Any]:
    """The payload as a list of records: an array, or (for `symbol` requests) one object."""
    if single_ok and isinstance(payload, Mapping):
        return [payload]
    if not isinstance(payload, list):
        expected = "an array or an object" if single_ok else "an array"
        raise BinanceResponseError(
            endpoint, symbol, f"expected {expected}, got {type(payload).__name__}", excerpt(_dump(payload))
        )
    return payload


def _record_symbol(endpoint: str, raw: Any) -> tuple[_Record, str]:
    """A record that carries its own `symbol` field, which later errors then name."""
    record = _Record(endpoint, None, raw)
    if not isinstance(raw, Mapping):
        record.fail(f"record must be an object, got {type(raw).__name__}")
    symbol = record.text("symbol")
    record.symbol = symbol
    return record, symbol


def _aware_utc(value: datetime, name: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got naive {value.isoformat()}")
    return utc_ms(value)


def parse_prices(payload: Any, observed_at: datetime) -> list[LatestPrice]:
    """ticker/price (array for `symbols`, object for `symbol`) -> LatestPrice stamped `observed_at`."""
    observed = _aware_utc(observed_at, "observed_at")
    prices = []
    for raw in _objects(TICKER_PRICE, None, payload, single_ok=True):
        record, symbol = _record_symbol(TICKER_PRICE, raw)
        prices.append(LatestPrice(symbol=symbol, price=record.decimal("price"), time=observed))
    return prices


def parse_24hr(payload: Any) -> list[DailyTicker]:
    """ticker/24hr, FULL or MINI (array for `symbols`, object for `symbol`) -> DailyTicker."""
    tickers = []
    for raw in _objects(TICKER_24HR, None, payload, single_ok=True):
        record, symbol = _record_symbol(TICKER_24HR, raw)
        tickers.append(
            DailyTicker(
                symbol=symbol,
                open_price=record.decimal("openPrice"),
                high_price=record.decimal("highPrice"),
                low_price=record.decimal("lowPrice"),
                last_price=record.decimal("lastPrice"),
                volume=record.decimal("volume"),
                quote_volume=record.decimal("quoteVolume"),
                open_time=record.time("openTime"),
                close_time=record.time("closeTime"),
                first_id=record.integer("firstId"),
                last_id=record.integer("lastId"),
                count=record.integer("count"),
            )
        )
    return tickers


def parse_klines(payload: Any, symbol: str, interval: str) -> list[Kline]:
    """klines (array of 12-element arrays, oldest first) -> Kline."""
    klines = []
    for raw in _objects(KLINES, symbol, payload, single_ok=False):
        record = _Record(KLINES, symbol, raw)
        if not isinstance(raw, list):
            record.fail(f"kline must be an array, got {type(raw).__name__}")
        if len(raw) != KLINE_FIELDS:
            record.fail(f"kline must have {KLINE_FIELDS} elements, got {len(raw)}")
        klines.append(
            Kline(
                symbol=symbol,
                interval=interval,
                open_time=record.time(0),
                open_price=record.decimal(1),
                high_price=record.decimal(2),
                low_price=record.decimal(3),
                close_price=record.decimal(4),
                volume=record.decimal(5),
                close_time=record.time(6),
                quote_volume=record.decimal(7),
                num_trades=record.integer(8),
            )
        )
    return klines


def parse_trades(payload: Any, symbol: str) -> list[Trade]:
    """trades (array of objects, oldest first) -> Trade."""
    trades = []
    for raw in _objects(TRADES, symbol, payload, single_ok=False):
        record = _Record(TRADES, symbol, raw)
        if not isinstance(raw, Mapping):
            record.fail(f"trade must be an object, got {type(raw).__name__}")
        trades.append(
            Trade(
                symbol=symbol,
                trade_id=record.integer("id"),
                price=record.decimal("price"),
                qty=record.decimal("qty"),
                quote_qty=record.decimal("quoteQty"),
                time=record.time("time"),
                is_buyer_maker=record.boolean("isBuyerMaker"),
            )
        )
    return trades


def parse_agg_trades(payload: Any, symbol: str) -> list[AggTrade]:
    """aggTrades (array of {"a", "p", "q", "f", "l", "T", "m", "M"}, oldest first) -> AggTrade.
    `M` (best price match) is not kept."""
    trades = []
    for raw in _objects(AGG_TRADES, symbol, payload, single_ok=False):
        record = _Record(AGG_TRADES, symbol, raw)
        if not isinstance(raw, Mapping):
            record.fail(f"aggregate trade must be an object, got {type(raw).__name__}")
        trades.append(
            AggTrade(
                symbol=symbol,
                agg_trade_id=record.integer("a"),
                price=record.decimal("p"),
                qty=record.decimal("q"),
                first_trade_id=record.integer("f"),
                last_trade_id=record.integer("l"),
                time=record.time("T"),
                is_buyer_maker=record.boolean("m"),
            )
        )
    return trades


def parse_depth(payload: Any, symbol: str, captured_at: datetime) -> list[OrderBookLevel]:
    """depth ({"lastUpdateId", "bids", "asks"}) -> one OrderBookLevel per level, bids then asks, best first."""
    captured = _aware_utc(captured_at, "captured_at")
    book = _Record(DEPTH, symbol, payload)
    if not isinstance(payload, Mapping):
        book.fail(f"expected an object, got {type(payload).__name__}")
    update_id = book.integer("lastUpdateId")
    levels: list[OrderBookLevel] = []
    sides: Sequence[tuple[str, Side]] = (("bids", "bid"), ("asks", "ask"))
    for key, side in sides:
        raw_levels = book.get(key)
        if not isinstance(raw_levels, list):
            book.fail(f"field {key!r} must be an array, got {type(raw_levels).__name__}")
        for raw in raw_levels:
            level = _Record(DEPTH, symbol, raw)
            if not isinstance(raw, list) or len(raw) != 2:
                level.fail(f"{key} level must be a [price, quantity] pair")
            levels.append(
                OrderBookLevel(
                    update_id=update_id,
                    symbol=symbol,
                    side=side,
                    price=level.decimal(0),
                    quantity=level.decimal(1),
                    captured_at=captured,
                )
            )
    return levels


def parse_exchange_info(payload: Any) -> dict[str, str]:
    """exchangeInfo -> {symbol: status} (TRADING, HALT, BREAK, ...)."""
    info = _Record(EXCHANGE_INFO, None, payload)
    if not isinstance(payload, Mapping):
        info.fail(f"expected an object, got {type(payload).__name__}")
    entries = info.get("symbols")
    if not isinstance(entries, list):
        info.fail(f"field 'symbols' must be an array, got {type(entries).__name__}")
    statuses: dict[str, str] = {}
    for raw in entries:
        record, symbol = _record_symbol(EXCHANGE_INFO, raw)
        statuses[symbol] = record.text("status")
    return statuses
