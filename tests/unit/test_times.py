"""include/times.py: epoch milliseconds for the datetimes every caller hands in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pendulum
import pytest

from include.times import as_utc, from_epoch_ms, to_epoch_ms


@pytest.mark.parametrize("moment, millis", [
    (datetime(2026, 1, 9, 12, 30, 1, 999999, tzinfo=UTC), 1767961801999),
    (datetime(2026, 1, 9, 14, 30, 1, 999000, tzinfo=timezone(timedelta(hours=2))), 1767961801999),
    (datetime(1969, 12, 31, 23, 59, 59, 999500, tzinfo=UTC), -1),  # floored, like Spark's unix_millis
    # what Airflow hands a task as its data interval: a pendulum DateTime
    (pendulum.datetime(2026, 1, 9, 12, 30, 1, 999999, tz="UTC"), 1767961801999),
])
def test_epoch_milliseconds_are_floored_for_any_aware_datetime(moment, millis):
    assert to_epoch_ms(moment) == millis
    assert to_epoch_ms(from_epoch_ms(millis)) == millis


def test_a_naive_datetime_is_refused_not_guessed():
    with pytest.raises(ValueError, match="naive"):
        to_epoch_ms(datetime(2026, 1, 9))
    assert as_utc(datetime(2026, 1, 9)) == datetime(2026, 1, 9, tzinfo=UTC)
