"""Fetch one Binance dataset for a data interval and load it into schema `binance`, all or nothing.

No Airflow here: the DAG hands in a client, a DB-API connection, the settings and the run's data
interval [start, end). Every symbol of a dataset is fetched before anything is written, so a failed
call leaves the table as it was.

Two kinds of datasets:
- historical ones, which Binance serves for any past interval: klines (every candle overlapping the
  interval: those opening in it, and the one already open at its start, re-read so that a candle
  open across runs is updated in place until it closes; paged by startTime/endTime, up to 1,000 a
  call) and aggregate trades (those of the interval, in windows of at most an hour, paged by fromId);
- "now" ones, which exist only as the current state: latest price, 24 h ticker, order book, and the
  latest 1,000 trades. A run whose interval ended more than MAX_OBSERVATION_DELAY ago (a backfill)
  skips them, saying so, instead of passing today's state off as the past's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from include.binance.client import AGG_TRADES_MAX_WINDOW_MS, BinanceClient
from include.binance.intervals import KLINE_INTERVALS, candle_open, period_next
from include.binance.models import AggTrade, Kline
from include.loader import LoadResult, load
from include.tables import TABLES
from include.times import from_epoch_ms, to_epoch_ms

log = logging.getLogger(__name__)

DEFAULT_SYMBOLS = (
    "BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT", "XRPUSDT", "ADAUSDT", "DOGEUSDT", "POLUSDT", "LINKUSDT", "LTCUSDT",
)
# klines and agg_trades: rows per call (pages); recent_trades and order_book: rows fetched
DEFAULT_LIMITS = {"klines": 1000, "agg_trades": 1000, "recent_trades": 500, "order_book": 100}

# what Binance serves for a past interval, and what exists only as "now"
HISTORICAL = ("klines", "agg_trades")
NOW_ONLY = ("latest_prices", "daily_ticker", "recent_trades", "order_book")

# a price observed now can stand for an interval that ended at most this long ago (a late run, a
# retry); an older interval (a backfill) cannot be observed any more, so its "now" datasets are skipped
MAX_OBSERVATION_DELAY = timedelta(minutes=10)


class SettingsError(ValueError):
    """A Variable or a run's params hold a value the extraction cannot use."""


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


def skip_reason(dataset: str, interval_end: datetime | None, now: datetime | None = None) -> str | None:
    """Why `dataset` is not loaded for the interval ending `interval_end`, or None when it is."""
    if dataset not in TABLES:
        raise ValueError(f"unknown dataset {dataset!r}; known: {list(TABLES)}")
    if dataset in HISTORICAL or interval_end is None:
        return None
    late = (now or datetime.now(UTC)) - interval_end
    if late <= MAX_OBSERVATION_DELAY:
        return None
    return (f"{dataset} exists only as the current state on Binance: the interval ended {late} ago (more than "
            f"{MAX_OBSERVATION_DELAY}), and what is observed now cannot stand for it")


def datasets_for_interval(interval_end: datetime | None, now: datetime | None = None) -> dict[str, str | None]:
    """Every dataset with the reason it is skipped for the interval ending `interval_end` (None: loaded)."""
    return {dataset: skip_reason(dataset, interval_end, now) for dataset in TABLES}


# A scheduled run also loads the historical datasets for the intervals the runs before it did not
# reach: catchup is off, so Airflow skips the intervals that pass while a run takes longer than its
# period, waits for a pool slot or retries, or while the scheduler is down. Up to this far back; a
# longer gap is logged, naming the range to backfill.
MAX_CATCH_UP = timedelta(hours=6)


def catch_up_start(interval_start: datetime | None, previous_end: datetime | None, scheduled: bool) -> datetime | None:
    """Where a run's historical loads start: its own interval's start, or for a scheduled run the end of
    the last successful run's interval when that is earlier (at most MAX_CATCH_UP before the start).
    Airflow passes `prev_data_interval_end_success` as a lazy proxy, which `is None` does not see
    through: anything that is not a datetime means no successful run yet."""
    if not isinstance(previous_end, datetime):
        previous_end = None
    if not scheduled or interval_start is None or previous_end is None or previous_end >= interval_start:
        return interval_start
    start = max(previous_end, interval_start - MAX_CATCH_UP)
    if previous_end < start:
        log.warning("the last successful run ended its interval at %s, more than %s before this one: loading from "
                    "%s; backfill [%s, %s) to fill the rest", previous_end.isoformat(), MAX_CATCH_UP,
                    start.isoformat(), previous_end.isoformat(), start.isoformat())
    else:
        log.info("catching up the intervals no run loaded: historical datasets from %s instead of %s",
                 start.isoformat(), interval_start.isoformat())
    return start


def kline_start(interval_start: datetime, interval: str) -> datetime:
    """First candle to (re-)read for a data interval: the one open at its start (it may have opened
    before it, and still be open); candles open on Binance's boundaries (Monday weeks, calendar months).
    The result is in the zone of `interval_start`, which must be aware."""
    return candle_open(interval, interval_start).astimezone(interval_start.tzinfo)


def _check_interval(start: datetime | None, end: datetime | None, dataset: str) -> tuple[datetime, datetime]:
    if start is None or end is None or not start < end:
        raise ValueError(f"{dataset} needs a data interval [start, end) with start < end, got [{start}, {end}): "
                         "binance_extract runs on a timetable with data intervals (CronDataIntervalTimetable)")
    return start, end


def fetch_klines(client: BinanceClient, symbol: str, interval: str, start: datetime, end: datetime,
                 page: int = 1000) -> list[Kline]:
    """The `interval` candles overlapping [start, end), oldest first: from the one open at `start` to the
    last opening before `end`, `page` a call (startTime and endTime, both inclusive on Binance)."""
    cursor = to_epoch_ms(kline_start(start, interval))
    last_ms = to_epoch_ms(end) - 1
    out: list[Kline] = []
    while cursor <= last_ms:
        batch = client.klines(symbol, interval, limit=page, start_time=cursor, end_time=last_ms)
        out += batch
        if len(batch) < page:
            break
        following = period_next(interval, to_epoch_ms(batch[-1].open_time))
        if following <= cursor:
            raise RuntimeError(f"klines {symbol} {interval}: a page starting {from_epoch_ms(cursor)} did not move "
                               f"forward (last open time {batch[-1].open_time})")
        cursor = following
    return out


def fetch_agg_trades(client: BinanceClient, symbol: str, start: datetime, end: datetime,
                     page: int = 1000) -> list[AggTrade]:
    """The aggregate trades with start <= time < end, oldest first: one window of at most an hour at
    a time (Binance's limit), its first page by time, the next ones by fromId (the last id + 1) until a
    trade leaves the window. Relies on Binance answering oldest first."""
    out: list[AggTrade] = []
    window_start, stop = to_epoch_ms(start), to_epoch_ms(end)
    while window_start < stop:
        window_end = min(window_start + AGG_TRADES_MAX_WINDOW_MS, stop)  # exclusive
        batch = client.agg_trades(symbol, limit=page, start_time=window_start, end_time=window_end - 1)
        out += batch
        while len(batch) == page:
            last_id = batch[-1].agg_trade_id
            batch = client.agg_trades(symbol, limit=page, from_id=last_id + 1)
            inside = [a for a in batch if to_epoch_ms(a.time) < window_end]
            if inside and inside[0].agg_trade_id <= last_id:
                raise RuntimeError(f"aggTrades {symbol}: fromId={last_id + 1} answered id {inside[0].agg_trade_id}")
            out += inside
            if len(inside) < len(batch):
                break
        window_start = window_end
    return out


def fetch(dataset: str, client: BinanceClient, settings: ExtractSettings, interval_start: datetime | None,
          interval_end: datetime | None = None) -> list[Any]:
    """Every record of one dataset for all symbols and the interval; raises before returning anything
    on any error. Historical datasets need the interval; "now" ones ignore it."""
    symbols = list(settings.symbols)
    if dataset not in TABLES:
        raise ValueError(f"unknown dataset {dataset!r}; known: {list(TABLES)}")
    records: list[Any] = []
    if dataset in HISTORICAL:
        start, end = _check_interval(interval_start, interval_end, dataset)
        for symbol in symbols:
            if dataset == "klines":
                records += fetch_klines(client, symbol, settings.kline_interval, start, end, settings.limit("klines"))
            else:
                records += fetch_agg_trades(client, symbol, start, end, settings.limit("agg_trades"))
        return records
    if dataset == "latest_prices":
        return list(client.ticker_price(symbols))
    if dataset == "daily_ticker":
        return list(client.ticker_24hr(symbols))
    for symbol in symbols:
        if dataset == "recent_trades":
            records += client.trades(symbol, limit=settings.limit("recent_trades"))
        else:
            records += client.depth(symbol, limit=settings.limit("order_book"))
    return records


def per_symbol(records: list[Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for record in records:
        counts[record.symbol] = counts.get(record.symbol, 0) + 1
    return counts


def extract(dataset: str, client: BinanceClient, conn: Any, settings: ExtractSettings,
            interval_start: datetime | None, interval_end: datetime | None = None,
            now: datetime | None = None) -> LoadResult:
    """Fetch `dataset` for every symbol and the interval [interval_start, interval_end), then upsert
    it in one transaction; a "now" dataset of an interval long past is skipped (nothing fetched).

    Latest prices are stamped with `interval_end` when given (a scheduled run: the interval the
    observation belongs to), so re-running an interval updates its rows instead of adding more.
    """
    reason = skip_reason(dataset, interval_end, now)
    if reason is not None:
        log.warning("%s skipped: %s", dataset, reason)
        return LoadResult(dataset, 0, 0, 0)
    records = fetch(dataset, client, settings, interval_start, interval_end)
    if dataset == "latest_prices" and interval_end is not None:
        records = [replace(r, time=interval_end) for r in records]
    log.info("fetched %d %s records for [%s, %s): %s", len(records), dataset, interval_start, interval_end,
             per_symbol(records))
    return load(conn, dataset, records)
