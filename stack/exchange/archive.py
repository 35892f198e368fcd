"""The test exchange's copy of Binance's public archives (data.binance.vision): zip files of CSV per
symbol, dataset and day or month, each with a `.CHECKSUM` file, made from the simulated market.

Layout (the one Binance publishes, spot only):
    /data/spot/daily/klines/<SYMBOL>/<interval>/<SYMBOL>-<interval>-<YYYY-MM-DD>.zip[.CHECKSUM]
    /data/spot/monthly/klines/<SYMBOL>/<interval>/<SYMBOL>-<interval>-<YYYY-MM>.zip[.CHECKSUM]
    /data/spot/daily/aggTrades/<SYMBOL>/<SYMBOL>-aggTrades-<YYYY-MM-DD>.zip[.CHECKSUM]
    /data/spot/monthly/aggTrades/<SYMBOL>/<SYMBOL>-aggTrades-<YYYY-MM>.zip[.CHECKSUM]
A zip holds one CSV named like it (`.csv` for `.zip`), without a header:
- klines: the 12 kline fields, as the REST API's arrays (open time, open, high, low, close, volume,
  close time, quote volume, trades, taker buy base volume, taker buy quote volume, ignore);
- aggTrades: aggregate trade id, price, quantity, first trade id, last trade id, time, buyer was
  maker, best price match (True/False): 8 columns.
Times are milliseconds in files of periods before 2025-01-01 and microseconds from then on, as
Binance's spot files are. The `.CHECKSUM` is `<sha256 hex>  <file name>` (sha256sum's format).

A file exists once its period has ended (Binance publishes a day's files the next day): a day or
month still running, an unknown symbol, interval or path is a 404. The candles are the ones the
REST API serves for the same open times (`Market.candle`, live where the server traded, else the
synthetic history) and the aggregate trades the ones of the tape, so a file equals what the API
answers for its period. A file is made once and kept (its bytes and checksum never change while the
server runs; the cache holds the newest 512 files).
"""

from __future__ import annotations

import hashlib
import io
import re
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal

from include.binance.intervals import KLINE_INTERVALS, period_next, period_open
from stack.exchange.market import E8, SPECS, Candle, Market

# spot archive files carry microseconds from this day on, milliseconds before
MICROSECONDS_FROM = date(2025, 1, 1)
# the first day the archives cover (Binance's spot archives start in 2017)
FIRST_DAY = date(2017, 1, 1)
CACHED_FILES = 512

_PATH = re.compile(
    r"^/data/spot/(?P<period>daily|monthly)/"
    r"(?:klines/(?P<ksym>[A-Z0-9]{1,20})/(?P<interval>[0-9]+[smhdwM])/(?P=ksym)-(?P=interval)-"
    r"|aggTrades/(?P<asym>[A-Z0-9]{1,20})/(?P=asym)-aggTrades-)"
    r"(?P<date>\d{4}-\d{2}(?:-\d{2})?)\.zip(?P<checksum>\.CHECKSUM)?$"
)


class NotInArchive(LookupError):
    """The path names no file of the archive (yet)."""


@dataclass(frozen=True)
class ArchivePath:
    """One archive file: dataset `klines` or `aggTrades`, a symbol, the kline interval, the period."""

    period: str
    dataset: str
    symbol: str
    interval: str | None
    start: date

    @property
    def end(self) -> date:
        """The first day after the file's period."""
        if self.period == "daily":
            return date.fromordinal(self.start.toordinal() + 1)
        return date(self.start.year + self.start.month // 12, self.start.month % 12 + 1, 1)

    @property
    def zip_name(self) -> str:
        stamp = self.start.isoformat() if self.period == "daily" else self.start.strftime("%Y-%m")
        middle = self.interval if self.dataset == "klines" else "aggTrades"
        return f"{self.symbol}-{middle}-{stamp}.zip"

    @property
    def micro(self) -> bool:
        return self.start >= MICROSECONDS_FROM


def parse_path(path: str) -> tuple[ArchivePath, bool]:
    """(the file, whether the .CHECKSUM was asked for) for an archive URL path; NotInArchive else."""
    m = _PATH.match(path)
    if not m:
        raise NotInArchive(f"no such archive path: {path}")
    period, stamp = m.group("period"), m.group("date")
    try:
        start = date.fromisoformat(stamp) if period == "daily" else date.fromisoformat(stamp + "-01")
    except ValueError as exc:
        raise NotInArchive(f"bad date {stamp!r} in {path}") from exc
    if (period == "daily") != (len(stamp) == 10):
        raise NotInArchive(f"a {period} file is named by {'day' if period == 'daily' else 'month'}: {path}")
    dataset = "klines" if m.group("ksym") else "aggTrades"
    symbol = m.group("ksym") or m.group("asym")
    interval = m.group("interval")
    if symbol not in SPECS:
        raise NotInArchive(f"no archive for symbol {symbol}")
    if interval is not None and interval not in KLINE_INTERVALS:
        raise NotInArchive(f"no archive for interval {interval}")
    return ArchivePath(period, dataset, symbol, interval, start), bool(m.group("checksum"))


def _epoch_ms(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()) * 1000


def _fmt(value: Decimal) -> str:
    return format(value.quantize(E8), "f")


def kline_rows(candles: Iterable[Candle], micro: bool) -> Iterable[str]:
    for c in candles:
        open_t = c.open_time * 1000 if micro else c.open_time
        close_t = c.next_open * 1000 - 1 if micro else c.next_open - 1
        yield (f"{open_t},{_fmt(c.open)},{_fmt(c.high)},{_fmt(c.low)},{_fmt(c.close)},{_fmt(c.volume)},{close_t},"
               f"{_fmt(c.quote_volume)},{c.trades},{_fmt(c.taker_base)},{_fmt(c.taker_quote)},0")


class Archive:
    """Makes and keeps the archive files of a market; `now` (epoch s) decides which periods ended."""

    def __init__(self, market: Callable[[], Market]) -> None:
        self._market = market
        self._files: OrderedDict[str, bytes] = OrderedDict()

    def clear(self) -> None:
        self._files.clear()

    def get(self, path: str, now: float) -> tuple[bytes, str]:
        """(body, content type) of the file or checksum at `path`; NotInArchive if there is none."""
        file, checksum = parse_path(path)
        today = datetime.fromtimestamp(now, UTC).date()
        if file.end > today:
            raise NotInArchive(f"{file.zip_name} is not published yet: its period ends {file.end}")
        if file.start < FIRST_DAY:
            raise NotInArchive(f"{file.zip_name}: the archive starts on {FIRST_DAY}")
        body = self.zip_bytes(file, now)
        if checksum:
            return f"{hashlib.sha256(body).hexdigest()}  {file.zip_name}\n".encode(), "text/plain"
        return body, "application/zip"

    def zip_bytes(self, file: ArchivePath, now: float) -> bytes:
        key = f"{file.period}/{file.dataset}/{file.zip_name}"
        body = self._files.get(key)
        if body is None:
            body = self._files[key] = self._make(file, now)
            while len(self._files) > CACHED_FILES:
                self._files.popitem(last=False)
        return body

    def _make(self, file: ArchivePath, now: float) -> bytes:
        market = self._market()
        start_ms, end_ms = _epoch_ms(file.start), _epoch_ms(file.end)
        if file.dataset == "klines":
            assert file.interval is not None
            state = market.state(file.symbol, int(now * 1_000_000))
            candles = []
            p = period_open(file.interval, start_ms)
            if p < start_ms:
                p = period_next(file.interval, p)
            while p < end_ms:
                candles.append(market.candle(state, file.interval, p, int(now * 1_000_000)))
                p = period_next(file.interval, p)
            lines: Iterable[str] = kline_rows(candles, file.micro)
        else:
            tape = market.tape(file.symbol)
            lines = (
                f"{a.id},{_fmt(a.price)},{_fmt(a.qty)},{a.first_trade_id},{a.last_trade_id},"
                f"{a.time_us if file.micro else a.time_us // 1000},{a.is_buyer_maker},True"
                for a in tape.between(start_ms * 1000, end_ms * 1000 - 1)
            )
        text = "".join(line + "\n" for line in lines)
        out = io.BytesIO()
        info = zipfile.ZipInfo(file.zip_name.removesuffix(".zip") + ".csv",
                               date_time=(file.start.year, file.start.month, file.start.day, 0, 0, 0))
        info.compress_type = zipfile.ZIP_DEFLATED
        info.external_attr = 0o644 << 16
        with zipfile.ZipFile(out, "w") as archive:
            archive.writestr(info, text)
        return out.getvalue()
