"""Binance's kline periods: where every interval's candles open, the extraction's first candle, and the
test server opening its candles at the same times."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest

from include.binance import client
from include.binance.client import BinanceClient
from include.binance.extract import ExtractSettings, fetch, kline_start
from include.binance.intervals import (
    KLINE_INTERVALS,
    candle_open,
    fixed_length_ms,
    period_next,
    period_open,
    period_prev,
)
from include.times import to_epoch_ms
from stack.exchange import BinanceTestServer

# 2026-01-09T13:47:25.123Z, a Friday
NOW = datetime(2026, 1, 9, 13, 47, 25, 123_000, tzinfo=UTC)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, micro: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, micro, tzinfo=UTC)


def ms(year: int, month: int, day: int, hour: int = 0) -> int:
    return to_epoch_ms(utc(year, month, day, hour))


def test_the_sixteen_intervals_binance_knows() -> None:
    assert KLINE_INTERVALS == (
        "1s", "1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d", "3d", "1w", "1M",
    )  # fmt: skip
    assert client.KLINE_INTERVALS is KLINE_INTERVALS


# interval: (open, next open, previous open) of the candle containing NOW
PERIODS = {
    "1s": (utc(2026, 1, 9, 13, 47, 25), utc(2026, 1, 9, 13, 47, 26), utc(2026, 1, 9, 13, 47, 24)),
    "1m": (utc(2026, 1, 9, 13, 47), utc(2026, 1, 9, 13, 48), utc(2026, 1, 9, 13, 46)),
    "3m": (utc(2026, 1, 9, 13, 45), utc(2026, 1, 9, 13, 48), utc(2026, 1, 9, 13, 42)),
    "5m": (utc(2026, 1, 9, 13, 45), utc(2026, 1, 9, 13, 50), utc(2026, 1, 9, 13, 40)),
    "15m": (utc(2026, 1, 9, 13, 45), utc(2026, 1, 9, 14), utc(2026, 1, 9, 13, 30)),
    "30m": (utc(2026, 1, 9, 13, 30), utc(2026, 1, 9, 14), utc(2026, 1, 9, 13)),
    "1h": (utc(2026, 1, 9, 13), utc(2026, 1, 9, 14), utc(2026, 1, 9, 12)),
    "2h": (utc(2026, 1, 9, 12), utc(2026, 1, 9, 14), utc(2026, 1, 9, 10)),
    "4h": (utc(2026, 1, 9, 12), utc(2026, 1, 9, 16), utc(2026, 1, 9, 8)),
    "6h": (utc(2026, 1, 9, 12), utc(2026, 1, 9, 18), utc(2026, 1, 9, 6)),
    "8h": (utc(2026, 1, 9, 8), utc(2026, 1, 9, 16), utc(2026, 1, 9)),
    "12h": (utc(2026, 1, 9, 12), utc(2026, 1, 10), utc(2026, 1, 9)),
    "1d": (utc(2026, 1, 9), utc(2026, 1, 10), utc(2026, 1, 8)),
    # 3d candles count from the epoch: day 20460 since 1970-01-01 (a multiple of 3) is 2026-01-07
    "3d": (utc(2026, 1, 7), utc(2026, 1, 10), utc(2026, 1, 4)),
    "1w": (utc(2026, 1, 5), utc(2026, 1, 12), utc(2025, 12, 29)),  # Mondays
    "1M": (utc(2026, 1, 1), utc(2026, 2, 1), utc(2025, 12, 1)),
}


def test_every_interval_has_its_periods_checked() -> None:
    assert tuple(PERIODS) == KLINE_INTERVALS


@pytest.mark.parametrize("interval", KLINE_INTERVALS)
def test_period_open_next_and_previous(interval: str) -> None:
    opened, following, preceding = (to_epoch_ms(d) for d in PERIODS[interval])
    t_ms = to_epoch_ms(NOW)
    assert period_open(interval, t_ms) == opened
    assert period_next(interval, t_ms) == following
    assert period_prev(interval, t_ms) == preceding
    # an open time is its own period's open, and next/previous from an open give the same answers
    assert period_open(interval, opened) == opened
    assert period_next(interval, opened) == following
    assert period_prev(interval, opened) == preceding
    assert period_open(interval, following - 1) == opened
    assert period_prev(interval, following) == opened
    assert period_next(interval, preceding) == opened


@pytest.mark.parametrize("interval", KLINE_INTERVALS)
def test_fixed_lengths(interval: str) -> None:
    opened, following, _ = (to_epoch_ms(d) for d in PERIODS[interval])
    length = fixed_length_ms(interval)
    if interval == "1M":
        assert length is None
    else:
        assert length == following - opened


@pytest.mark.parametrize(
    ("moment", "opened", "following", "preceding"),
    [
        (utc(2025, 12, 31, 18), utc(2025, 12, 29), utc(2026, 1, 5), utc(2025, 12, 22)),  # Wednesday
        (utc(2026, 1, 4, 23, 59, 59, 999_000), utc(2025, 12, 29), utc(2026, 1, 5), utc(2025, 12, 22)),  # Sunday
        (utc(2026, 1, 5), utc(2026, 1, 5), utc(2026, 1, 12), utc(2025, 12, 29)),  # Monday 00:00 opens a week
        (utc(2026, 1, 9), utc(2026, 1, 5), utc(2026, 1, 12), utc(2025, 12, 29)),
        (utc(2028, 2, 29, 12), utc(2028, 2, 28), utc(2028, 3, 6), utc(2028, 2, 21)),  # leap day
        (utc(1970, 1, 1), utc(1969, 12, 29), utc(1970, 1, 5), utc(1969, 12, 22)),  # the epoch, a Thursday
    ],
)
def test_weeks_open_on_monday_across_year_ends(
    moment: datetime, opened: datetime, following: datetime, preceding: datetime
) -> None:
    t_ms = to_epoch_ms(moment)
    assert period_open("1w", t_ms) == to_epoch_ms(opened)
    assert opened.weekday() == 0
    assert period_next("1w", t_ms) == to_epoch_ms(following)
    assert period_prev("1w", t_ms) == to_epoch_ms(preceding)


@pytest.mark.parametrize(
    ("moment", "opened", "following", "preceding"),
    [
        (utc(2025, 12, 15, 7), utc(2025, 12, 1), utc(2026, 1, 1), utc(2025, 11, 1)),
        (utc(2026, 1, 1), utc(2026, 1, 1), utc(2026, 2, 1), utc(2025, 12, 1)),
        (utc(2025, 12, 31, 23, 59, 59, 999_000), utc(2025, 12, 1), utc(2026, 1, 1), utc(2025, 11, 1)),
        (utc(2028, 2, 29, 23, 59, 59, 999_000), utc(2028, 2, 1), utc(2028, 3, 1), utc(2028, 1, 1)),  # leap year
        (utc(2028, 3, 1), utc(2028, 3, 1), utc(2028, 4, 1), utc(2028, 2, 1)),
        (utc(2027, 2, 28, 12), utc(2027, 2, 1), utc(2027, 3, 1), utc(2027, 1, 1)),
    ],
)
def test_months_open_on_the_first_across_year_ends_and_leap_years(
    moment: datetime, opened: datetime, following: datetime, preceding: datetime
) -> None:
    t_ms = to_epoch_ms(moment)
    assert period_open("1M", t_ms) == to_epoch_ms(opened)
    assert period_next("1M", t_ms) == to_epoch_ms(following)
    assert period_prev("1M", t_ms) == to_epoch_ms(preceding)


def test_calendar_intervals_align_like_binance() -> None:
    jan_15 = 1_768_435_200_000  # 2026-01-15T00:00Z, a Thursday
    assert period_open("1w", jan_15) == 1_768_176_000_000  # Monday 2026-01-12
    assert period_open("1M", jan_15) == 1_767_225_600_000  # 2026-01-01
    assert period_next("1M", 1_767_225_600_000) == 1_769_904_000_000  # 2026-02-01


def test_three_day_candles_count_from_the_epoch() -> None:
    assert period_open("3d", ms(1970, 1, 3, 23)) == ms(1970, 1, 1)
    assert period_open("3d", ms(1970, 1, 4)) == ms(1970, 1, 4)
    assert (to_epoch_ms(PERIODS["3d"][0]) // 86_400_000) % 3 == 0


@pytest.mark.parametrize(
    "call",
    [
        lambda: period_open("1H", 0),
        lambda: period_next("1H", 0),
        lambda: period_prev("1H", 0),
        lambda: fixed_length_ms("1H"),
        lambda: candle_open("1H", NOW),
        lambda: kline_start(NOW, "1H"),
    ],
)
def test_an_unknown_interval_is_named(call: Callable[[], object]) -> None:
    with pytest.raises(ValueError, match=r"unknown kline interval '1H'"):
        call()


def test_candle_open_moves_whole_candles() -> None:
    assert candle_open("1w", NOW) == utc(2026, 1, 5)
    assert candle_open("1w", NOW, shift=-2) == utc(2025, 12, 22)
    assert candle_open("1M", NOW, shift=2) == utc(2026, 3, 1)
    assert candle_open("1M", NOW, shift=-13) == utc(2024, 12, 1)
    with pytest.raises(ValueError, match="naive"):
        candle_open("1m", NOW.replace(tzinfo=None))


# -- the extraction's first candle --------------------------------------------------------------


@pytest.mark.parametrize(
    ("interval_start", "interval", "first"),
    [
        (utc(2026, 1, 9), "1w", utc(2026, 1, 5)),  # the candle open at the start: Monday 2026-01-05
        (utc(2026, 1, 5), "1w", utc(2026, 1, 5)),
        (utc(2026, 1, 9), "1M", utc(2026, 1, 1)),
        (utc(2028, 3, 1), "1M", utc(2028, 3, 1)),
        (utc(2026, 1, 9, 13, 30), "30m", utc(2026, 1, 9, 13, 30)),
        (utc(2026, 1, 9, 13, 47, 25), "30m", utc(2026, 1, 9, 13, 30)),
        (utc(2026, 1, 1), "1h", utc(2026, 1, 1)),
        (utc(2026, 1, 9), "3d", utc(2026, 1, 7)),
    ],
)
def test_kline_start_is_the_candle_open_at_the_interval_start(
    interval_start: datetime, interval: str, first: datetime
) -> None:
    assert kline_start(interval_start, interval) == first


def test_kline_start_keeps_the_zone_of_the_interval_start() -> None:
    paris = timezone(timedelta(hours=1))
    start = kline_start(utc(2026, 1, 9).astimezone(paris), "1w")
    assert start == utc(2026, 1, 5) and start.utcoffset() == timedelta(hours=1)
    with pytest.raises(ValueError, match="naive"):
        kline_start(datetime(2026, 1, 9), "1w")


# -- the test server opens its candles where the extraction expects them ------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[BinanceTestServer]:
    with BinanceTestServer(seed=5, clock=lambda: NOW.timestamp()) as srv:
        srv.freeze()
        yield srv


def expected_opens(interval: str, start_ms: int, end_ms: int) -> list[int]:
    """Open times from the candle containing `start_ms` to the one containing `end_ms`, per intervals.py."""
    opens, p = [], period_open(interval, start_ms)
    while p <= end_ms:
        opens.append(p)
        p = period_next(interval, p)
    return opens


@pytest.mark.parametrize("interval", KLINE_INTERVALS)
def test_the_extraction_reads_the_candles_the_server_opens(server: BinanceTestServer, interval: str) -> None:
    interval_start, interval_end = NOW - timedelta(minutes=5), NOW - timedelta(minutes=4)
    settings = ExtractSettings(symbols=("BTCUSDT",), kline_interval=interval, limits={"klines": 1000})
    klines = fetch("klines", BinanceClient(server.url), settings, interval_start, interval_end)
    first = to_epoch_ms(kline_start(interval_start, interval))
    expected = expected_opens(interval, first, to_epoch_ms(interval_end) - 1)
    assert [to_epoch_ms(k.open_time) for k in klines] == expected
    assert [to_epoch_ms(k.close_time) for k in klines] == [period_next(interval, p) - 1 for p in expected]


@pytest.mark.parametrize("interval", ["1h", "3d", "1w", "1M"])
def test_the_server_walks_back_from_an_end_time_like_period_prev(server: BinanceTestServer, interval: str) -> None:
    end = ms(2025, 3, 18, 5)
    klines = BinanceClient(server.url).klines("ETHUSDT", interval, limit=3, end_time=end)
    newest = period_open(interval, end)
    assert [to_epoch_ms(k.open_time) for k in klines] == [
        period_prev(interval, period_prev(interval, newest)),
        period_prev(interval, newest),
        newest,
    ]
