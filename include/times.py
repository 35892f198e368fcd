"""UTC instants and epoch milliseconds, the one conversion every stage uses (Binance's times, the
change-log keys, COPY text)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def from_epoch_ms(millis: int) -> datetime:
    """The UTC instant `millis` milliseconds after the epoch."""
    return EPOCH + timedelta(milliseconds=millis)


def to_epoch_ms(moment: datetime) -> int:
    """Milliseconds since the epoch, floored, for an aware datetime (naive ones are refused, not guessed)."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"datetime must be timezone-aware, got naive {moment.isoformat()}")
    # days/seconds/microseconds rather than `// timedelta(...)`: Airflow's pendulum datetimes subtract
    # to a pendulum Interval, whose floor division by a plain timedelta fails
    delta = moment - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def as_utc(moment: datetime) -> datetime:
    """An aware datetime in UTC; a naive one is read as UTC (what the Cassandra driver returns). One
    already in UTC is returned as it is (the stream converts every row's times through here)."""
    if moment.tzinfo is UTC:
        return moment
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
