"""The bridge's decisions (include/bridge/plan.py): which change-log minutes a run reads, when it
copies a table whole, which buckets a full copy reads, and its read consistency. No services."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from include.bridge.plan import (
    READ_LEVELS,
    Position,
    choose_consistency,
    full_copy_reason,
    minutes,
    replication_factor,
)
from include.partitions import bucket_range, buckets
from include.tables import TABLES

TRADES = TABLES["recent_trades"]  # hour buckets
KLINES = TABLES["klines"]  # day buckets
U = datetime(2026, 3, 10, 12, 30, tzinfo=UTC)
WEEK = 7 * 86400


# --------------------------------------------------------------------------- change-log minutes


def test_a_run_reads_the_minutes_from_the_watermark_to_the_position_both_included():
    assert minutes(U - timedelta(minutes=2), U) == [U - timedelta(minutes=2), U - timedelta(minutes=1), U]
    assert minutes(U, U) == [U]
    # the position is a minute; a time inside one counts as that minute
    assert minutes(U + timedelta(seconds=59), U + timedelta(minutes=1, seconds=1)) == [U, U + timedelta(minutes=1)]
    assert minutes(U, U - timedelta(minutes=1)) == []


def test_minutes_accept_the_naive_utc_times_the_driver_returns():
    assert minutes(U.replace(tzinfo=None), U) == [U]


# --------------------------------------------------------------------------- when the table is copied whole


def test_a_first_run_and_a_request_copy_the_table_whole():
    assert full_copy_reason(None, Position(U), WEEK) == "first run"
    assert full_copy_reason(None, None, WEEK) == "first run"
    assert full_copy_reason(U, Position(U), WEEK, requested=True) == "requested"


def test_a_watermark_older_than_the_change_log_retention_before_the_position_forces_a_full_copy():
    ttl = timedelta(seconds=WEEK)
    reason = full_copy_reason(U - ttl - timedelta(minutes=1), Position(U), WEEK)
    assert reason is not None and "change log retention (604800 s)" in reason
    assert (U - ttl - timedelta(minutes=1)).isoformat() in reason and U.isoformat() in reason
    # exactly the retention behind: every key logged since is still there
    assert full_copy_reason(U - ttl, Position(U), WEEK) is None
    assert full_copy_reason(U - timedelta(minutes=1), Position(U), WEEK) is None


def test_a_change_log_that_never_expires_never_forces_a_full_copy():
    assert full_copy_reason(U - timedelta(days=3650), Position(U), 0) is None
    assert full_copy_reason(U - timedelta(days=3650), Position(U, U), 0, last_sync=U - timedelta(days=3650),
                            now=U + timedelta(days=3650)) is None


def test_with_no_stream_position_an_incremental_run_has_nothing_to_decide():
    assert full_copy_reason(U - timedelta(days=30), None, WEEK, last_sync=U - timedelta(days=30), now=U) is None


def test_a_stream_stopped_after_a_batch_the_bridge_never_read_forces_a_full_copy_once_its_entries_expire():
    """The position stays near the watermark when the stream stops, while its last entries still expire."""
    w = U - timedelta(minutes=1)
    last_sync = U - timedelta(seconds=30)
    stopped = Position(U, finished_at=U + timedelta(seconds=5))
    assert full_copy_reason(w, stopped, WEEK, last_sync=last_sync, now=U + timedelta(days=1)) is None
    reason = full_copy_reason(w, stopped, WEEK, last_sync=last_sync, now=U + timedelta(days=8))
    assert reason is not None and "change log retention" in reason and "after the last sync" in reason
    # every batch finished before the last sync was read then: nothing is unread, however old
    read = Position(U, finished_at=last_sync - timedelta(hours=1))
    assert full_copy_reason(w, read, WEEK, last_sync=last_sync, now=U + timedelta(days=30)) is None


# --------------------------------------------------------------------------- the buckets a full copy reads


def test_buckets_run_from_the_one_holding_the_start_to_the_one_holding_the_end():
    start, end = datetime(2026, 3, 10, 10, 59, 59, tzinfo=UTC), datetime(2026, 3, 10, 13, 0, tzinfo=UTC)
    assert buckets(TRADES, start, end) == [datetime(2026, 3, 10, h, tzinfo=UTC) for h in (10, 11, 12, 13)]
    assert buckets(KLINES, start, end) == [datetime(2026, 3, 10, tzinfo=UTC)]
    # across midnight and a month end, day buckets
    assert buckets(KLINES, datetime(2026, 2, 27, 23, 59, tzinfo=UTC), datetime(2026, 3, 1, tzinfo=UTC)) == [
        datetime(2026, 2, 27, tzinfo=UTC), datetime(2026, 2, 28, tzinfo=UTC), datetime(2026, 3, 1, tzinfo=UTC)]


def test_buckets_at_their_edges():
    edge = datetime(2026, 3, 10, 12, tzinfo=UTC)
    assert buckets(TRADES, edge, edge) == [edge]
    assert buckets(TRADES, edge - timedelta(microseconds=1), edge) == [edge - timedelta(hours=1), edge]
    assert buckets(TRADES, edge, edge + timedelta(hours=1) - timedelta(microseconds=1)) == [edge]
    assert buckets(TRADES, edge + timedelta(hours=1), edge) == []
    # naive = UTC, another offset = the same instant
    assert buckets(TRADES, edge.replace(tzinfo=None), edge.astimezone(timezone(timedelta(hours=2)))) == [edge]


def test_kept_for_ever_the_buckets_follow_the_rows():
    oldest, newest = datetime(2026, 3, 1, 5, tzinfo=UTC), datetime(2026, 3, 3, 1, tzinfo=UTC)
    got = bucket_range(KLINES, oldest, newest, None, now=datetime(2026, 11, 1, tzinfo=UTC))
    assert got == [datetime(2026, 3, d, tzinfo=UTC) for d in (1, 2, 3)]


def test_a_retention_window_starts_one_bucket_before_the_oldest_bucket_cassandra_keeps():
    now = datetime(2026, 3, 10, 12, 20, tzinfo=UTC)
    got = bucket_range(TRADES, datetime(2026, 1, 1, tzinfo=UTC), now, keep_seconds=3 * 3600, now=now)
    # kept: 09:20 on; its bucket 09:00, one early for the clocks: 08:00
    assert got == [datetime(2026, 3, 10, h, tzinfo=UTC) for h in (8, 9, 10, 11, 12)]
    # rows newer than the window's start: from their own bucket
    assert bucket_range(TRADES, now, now, keep_seconds=3 * 3600, now=now) == [datetime(2026, 3, 10, 12, tzinfo=UTC)]
    # every row older than the window: nothing left to read
    assert bucket_range(TRADES, datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC), 3600, now) == []


# --------------------------------------------------------------------------- consistency


@pytest.mark.parametrize("replication, factor", [
    ({"class": "org.apache.cassandra.locator.SimpleStrategy", "replication_factor": "1"}, 1),
    ({"class": "org.apache.cassandra.locator.SimpleStrategy", "replication_factor": "3"}, 3),
    ({"class": "org.apache.cassandra.locator.NetworkTopologyStrategy", "dc1": "3", "dc2": "1"}, 3),
    ({"class": "org.apache.cassandra.locator.NetworkTopologyStrategy", "dc1": "3/1"}, 3),
    ({"class": "org.apache.cassandra.locator.NetworkTopologyStrategy"}, 1),
])
def test_the_replication_factor_of_a_keyspace(replication, factor):
    assert replication_factor(replication) == factor


def test_one_replica_reads_at_one_and_three_at_local_quorum():
    assert choose_consistency(None, 1) == ("ONE", "replication factor 1")
    assert choose_consistency(None, 3) == ("LOCAL_QUORUM", "replication factor 3")
    assert choose_consistency("", 3)[0] == "LOCAL_QUORUM"


def test_a_level_set_explicitly_wins():
    assert choose_consistency("QUORUM", 1) == ("QUORUM", "set")
    assert choose_consistency(" local_one ", 3) == ("LOCAL_ONE", "set")


@pytest.mark.parametrize("bad", ["LOCAL_QUOROM", "ANY", "EACH_QUORUM"])
def test_an_unknown_level_is_refused_naming_it_and_the_valid_ones(bad):
    with pytest.raises(ValueError) as err:
        choose_consistency(bad, 3)
    assert repr(bad) in str(err.value) and "LOCAL_QUORUM" in str(err.value)


def test_every_read_level_is_one_the_driver_knows():
    from cassandra import ConsistencyLevel

    assert set(READ_LEVELS) <= set(ConsistencyLevel.name_to_value)
