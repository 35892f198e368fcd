"""Binance's kline intervals and where their candles open: the one implementation the client, the
extraction and the test server share.

A candle is named by its open time. Binance opens them on these boundaries (UTC):
- 1s to 1d, and 3d: multiples of the interval since the Unix epoch (3d candles too, so they open
  on whatever weekday the epoch count lands on);
- 1w: Monday 00:00 (the epoch, 1970-01-01, was a Thursday, so weeks are offset by four days);
- 1M: the 1st of the month 00:00 (months differ in length, so no fixed size).
The epoch-millisecond functions work for any instant, not only open times.
"""

from __future__ import annotations

from datetime import UTC, datetime

from include.times import from_epoch_ms, to_epoch_ms

KLINE_INTERVALS = ("1s", "1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d", "3d", "1w", "1M")

_DAY_MS = 86_400_000
_FIXED_MS = {
    "1s": 1000,
    "1m": 60_000,
    "3m": 180_000,
    "5m": 300_000,
    "15m": 900_000,
    "30m": 1_800_000,
    "1h": 3_600_000,
    "2h": 7_200_000,
    "4h": 14_400_000,
    "6h": 21_600_000,
    "8h": 28_800_000,
    "12h": 43_200_000,
    "1d": _DAY_MS,
    "3d": 3 * _DAY_MS,
    "1w": 7 * _DAY_MS,
}
# Where the fixed-size periods start counting from, relative to the epoch: weeks from Monday 1970-01-05.
_OFFSET_MS = {"1w": 4 * _DAY_MS}


def fixed_length_ms(interval: str) -> int | None:
    """Length (ms) of every period of `interval`; None for 1M, whose months differ.

    Raises ValueError naming `interval` if Binance has no such interval.
    """
    if interval == "1M":
        return None
    size = _FIXED_MS.get(interval)
    if size is None:
        raise ValueError(f"unknown kline interval {interval!r}; valid (case-sensitive): {', '.join(KLINE_INTERVALS)}")
    return size


def _month_start_ms(year: int, month: int) -> int:
    return to_epoch_ms(datetime(year, month, 1, tzinfo=UTC))


def period_open(interval: str, t_ms: int) -> int:
    """Open time (ms) of the `interval` candle containing the instant `t_ms`."""
    size = fixed_length_ms(interval)
    if size is None:
        moment = from_epoch_ms(t_ms)
        return _month_start_ms(moment.year, moment.month)
    offset = _OFFSET_MS.get(interval, 0)
    return (t_ms - offset) // size * size + offset


def period_next(interval: str, t_ms: int) -> int:
    """Open time (ms) of the candle after the one containing `t_ms`."""
    size = fixed_length_ms(interval)
    if size is None:
        moment = from_epoch_ms(t_ms)
        year, month = (moment.year + 1, 1) if moment.month == 12 else (moment.year, moment.month + 1)
        return _month_start_ms(year, month)
    return period_open(interval, t_ms) + size


def period_prev(interval: str, t_ms: int) -> int:
    """Open time (ms) of the candle before the one containing `t_ms`."""
    return period_open(interval, period_open(interval, t_ms) - 1)


def candle_open(interval: str, moment: datetime, shift: int = 0) -> datetime:
    """Open time (UTC) of the `interval` candle containing the aware `moment`, moved `shift` candles
    later (negative: earlier)."""
    t_ms = period_open(interval, to_epoch_ms(moment))
    step = period_next if shift > 0 else period_prev
    for _ in range(abs(shift)):
        t_ms = step(interval, t_ms)
    return from_epoch_ms(t_ms)
