"""Fetch one Binance dataset and load it into schema `binance`, all or nothing.

No Airflow here: the DAG hands in a client, a DB-API connection and the settings. Every symbol of a
dataset is fetched before anything is written, so a failed call leaves the table as it was.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from include.binance.client import BinanceClient
from include.binance.intervals import KLINE_INTERVALS, candle_open
from include.loader import LoadResult, load
from include.tables import TABLES

log = logging.getLogger(__name__)

DEFAULT_SYMBOLS = (
    "BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT", "XRPUSDT", "ADAUSDT", "DOGEUSDT", "POLUSDT", "LINKUSDT", "LTCUSDT",
)
DEFAULT_LIMITS = {"klines": 100, "recent_trades": 500, "order_book": 100}

# a price observed now can stand for an interval that ended at most this long ago (a late run, a
# retry); an older interval (a backfill) cannot be observed any more, so its latest_prices are skipped
MAX_OBSERVATION_DELAY = timedelta(minutes=10)


class SettingsError(ValueError):
    """A Variable holds a value the extraction cannot use."""


@dataclass(frozen=True)
class ExtractSettings:
    symbols: tuple[str, ...] = DEFAULT_SYMBOLS
    kline_interval: str = "30m"
    limits: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_LIMITS))

    def __post_init__(self) -> None:
        if not self.symbols or not all(isinstance(s, str) and s for s in self.symbols):
            raise SettingsError(f"binance_symbols must be a non-empty JSON list of symbols, got {self.symbols!r}")
        if len(set(self.symbols)) != len(self.symbols):
            raise SettingsError(f"binance_symbols lists a symbol twice: {list(self.symbols)}")
        if self.kline_interval not in KLINE_INTERVALS:
            raise SettingsError(
                f"binance_kline_interval {self.kline_interval!r} is not one of {', '.join(KLINE_INTERVALS)}"
            )
        unknown = set(self.limits) - set(DEFAULT_LIMITS)
        if unknown:
            raise SettingsError(
                f"binance_limits names unknown datasets {sorted(unknown)}; known: {list(DEFAULT_LIMITS)}"
            )

    def limit(self, dataset: str) -> int:
        return int(self.limits.get(dataset, DEFAULT_LIMITS[dataset]))


def kline_start(interval_start: datetime, interval: str) -> datetime:
    """First candle to (re-)read for a data interval: the one open at its start, and the one before.

    Candles open on Binance's boundaries (Monday weeks, calendar months); the result is in the zone of
    `interval_start`, which must be aware.
    """
    return candle_open(interval, interval_start, shift=-1).astimezone(interval_start.tzinfo)


def fetch(dataset: str, client: BinanceClient, settings: ExtractSettings, interval_start: datetime) -> list[Any]:
    """Every record of one dataset for all symbols; raises before returning anything on any error."""
    symbols = list(settings.symbols)
    if dataset == "latest_prices":
        return list(client.ticker_price(symbols))
    if dataset == "daily_ticker":
        return list(client.ticker_24hr(symbols))
    records: list[Any] = []
    for symbol in symbols:
        if dataset == "klines":
            records += client.klines(symbol, settings.kline_interval, limit=settings.limit("klines"),
                                     start_time=kline_start(interval_start, settings.kline_interval))
        elif dataset == "recent_trades":
            records += client.trades(symbol, limit=settings.limit("recent_trades"))
        elif dataset == "order_book":
            records += client.depth(symbol, limit=settings.limit("order_book"))
        else:
            raise ValueError(f"unknown dataset {dataset!r}; known: {list(TABLES)}")
    return records


def extract(dataset: str, client: BinanceClient, conn: Any, settings: ExtractSettings,
            interval_start: datetime, interval_end: datetime | None = None,
            now: datetime | None = None) -> LoadResult:
    """Fetch `dataset` for every symbol, then upsert it in one transaction.

    Latest prices are stamped with `interval_end` when given (a scheduled run: the interval the
    observation belongs to), so re-running an interval updates its rows instead of adding more.
    """
    if dataset == "latest_prices" and interval_end is not None:
        late = (now or datetime.now(UTC)) - interval_end
        if late > MAX_OBSERVATION_DELAY:
            log.warning("latest_prices skipped: the interval ended %s ago (more than %s), and a price observed "
                        "now cannot stand for it", late, MAX_OBSERVATION_DELAY)
            return LoadResult(dataset, 0, 0, 0)
    records = fetch(dataset, client, settings, interval_start)
    if dataset == "latest_prices" and interval_end is not None:
        records = [replace(r, time=interval_end) for r in records]
    log.info("fetched %d %s records for %d symbols", len(records), dataset, len(settings.symbols))
    return load(conn, dataset, records)
