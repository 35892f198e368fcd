"""spark/writer.py without Cassandra: the CQL it prepares, the values it binds (buckets, write
times, TTLs), the order it writes in, what it reads (retention, the stream's position). A fake
session records the calls (unit tests only)."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal, localcontext

import pytest

from include.tables import TABLES
from include.times import EPOCH
from spark.writer import (
    LOG_GROUP_KEYS,
    MAX_TTL,
    BatchContext,
    Binder,
    Change,
    DeadLetter,
    Offset,
    Write,
    change_key,
    cql_row,
    cql_value,
    decimal_bytes,
    epoch_us,
    partition_groups,
    quick_binding,
    timestamp_bytes,
    ttl_of,
)
from tests.spark.fakes import NOW, RecordingWriter

KLINES = TABLES["klines"]
TRADES = TABLES["recent_trades"]
BOOK = TABLES["order_book"]
OPEN = datetime(2026, 1, 2, 3, 4, tzinfo=UTC)
DAY = datetime(2026, 1, 2, tzinfo=UTC)
# a write time: a commit time in microseconds
COMMIT_US = epoch_us(datetime(2026, 1, 2, 3, 4, 4, 123456, tzinfo=UTC))


def kline_row(close: str = "1.50", open_time: datetime = OPEN) -> dict:
    return {"symbol": "BTCUSDT", "interval": "1m", "open_time": open_time, "open_price": "1", "high_price": "2",
            "low_price": "0.00001234", "close_price": close, "volume": "1E+2",
            "close_time": open_time + timedelta(seconds=59.999), "quote_volume": "3", "num_trades": 7}


def test_values_are_converted_once_and_exactly():
    assert cql_value("numeric", "1E+2") == Decimal("1E+2") and str(cql_value("numeric", "0.10")) == "0.10"
    assert cql_value("numeric", None) is None and cql_value("bigint", 7) == 7 and cql_value("text", "x") == "x"
    # aware datetimes are moved to UTC and floored to the ms; naive ones are refused (local time is a guess)
    assert cql_value("timestamptz", datetime(2026, 1, 2, 3, 4, 5, 678999, tzinfo=UTC)) == datetime(
        2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    with pytest.raises(ValueError, match="aware"):
        cql_value("timestamptz", datetime(2026, 1, 2, 3, 4, 5))
    paris = datetime(2026, 1, 2, 4, 4, 5, 1500, tzinfo=timezone(timedelta(hours=1)))
    moved = cql_value("timestamptz", paris)
    assert moved == datetime(2026, 1, 2, 3, 4, 5, 1000, tzinfo=UTC) and moved.tzinfo is UTC
    row = cql_row(KLINES, {"symbol": "BTCUSDT"})
    assert list(row) == [*KLINES.column_names, "bucket"] and row["close_price"] is None and row["bucket"] is None


@pytest.mark.parametrize("moment,bucket", [
    (datetime(2026, 1, 2, 0, 0, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC)),
    (datetime(2026, 1, 1, 23, 59, 59, 999999, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC)),
    (datetime(2026, 1, 2, 23, 59, 59, 999000, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC)),
    # the bucket is UTC's day, whatever the offset the time came with
    (datetime(2026, 1, 2, 0, 30, tzinfo=timezone(timedelta(hours=1))), datetime(2026, 1, 1, tzinfo=UTC)),
])
def test_a_day_tables_rows_bind_the_day_they_fall_in(moment, bucket):
    row = cql_row(KLINES, kline_row(open_time=moment))
    assert row["bucket"] == bucket and row["bucket"].tzinfo is UTC


@pytest.mark.parametrize("moment,bucket", [
    (datetime(2026, 1, 2, 3, 0, tzinfo=UTC), datetime(2026, 1, 2, 3, tzinfo=UTC)),
    (datetime(2026, 1, 2, 2, 59, 59, 999999, tzinfo=UTC), datetime(2026, 1, 2, 2, tzinfo=UTC)),
    (datetime(2026, 1, 2, 0, 0, 0, 1, tzinfo=UTC), datetime(2026, 1, 2, 0, tzinfo=UTC)),
    (datetime(2026, 1, 1, 23, 59, 59, 999000, tzinfo=UTC), datetime(2026, 1, 1, 23, tzinfo=UTC)),
    (datetime(2026, 1, 2, 9, 0, tzinfo=timezone(timedelta(hours=5, minutes=30))), datetime(2026, 1, 2, 3, tzinfo=UTC)),
])
def test_an_hour_tables_rows_bind_the_hour_they_fall_in(moment, bucket):
    w = RecordingWriter()
    change = Change(TRADES, "c", 1, None, COMMIT_US, trade_row(1, moment))
    [write] = w.data_writes(w.plan([change], {}, NOW)[0], NOW)
    assert write.values[TRADES.column_names.index("time")] == cql_value("timestamptz", moment)
    assert write.values[len(TRADES.column_names)] == bucket  # bucket comes right after the columns
    assert write.partition == ("recent_trades", "BTCUSDT", bucket)
    # a delete keys on the same bucket, which follows `time` in its `before`
    [delete] = w.data_writes(w.plan([Change(TRADES, "d", 2, None, COMMIT_US, trade_row(1, moment))], {}, NOW)[0], NOW)
    assert delete.values == (COMMIT_US, "BTCUSDT", bucket, 1) and delete.partition == write.partition


def trade_row(trade_id: int, time: datetime = OPEN) -> dict:
    return {"symbol": "BTCUSDT", "trade_id": trade_id, "price": "1.5", "qty": "1", "quote_qty": "1.5", "time": time,
            "is_buyer_maker": True}


def test_statements_are_prepared_once_at_local_quorum():
    from cassandra import ConsistencyLevel

    w = RecordingWriter("binance_test")
    assert w.upsert_statement(KLINES) is w.upsert_statement(KLINES)
    w.delete_statement(KLINES)
    w.change_log_statement()
    w.dead_letter_statement()
    assert w.session.prepared == [
        'INSERT INTO "binance_test"."klines" ("symbol", "interval", "open_time", "open_price", "high_price", '
        '"low_price", "close_price", "volume", "close_time", "quote_volume", "num_trades", "bucket", "cdc_op", '
        '"cdc_source_ts", "cdc_lsn", "cdc_written_at") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) '
        "USING TIMESTAMP ? AND TTL ?",
        'DELETE FROM "binance_test"."klines" USING TIMESTAMP ? WHERE "symbol" = ? AND "interval" = ? '
        'AND "bucket" = ? AND "open_time" = ?',
        'INSERT INTO "binance_test".changed_rows (table_name, bucket, key, cdc_lsn, keys) VALUES (?, ?, ?, ?, ?)',
        'INSERT INTO "binance_test".dead_letters (topic, partition, offset, raw_value, error, recorded_at) '
        "VALUES (?, ?, ?, ?, ?, ?)",
    ]
    assert all(s.consistency_level == ConsistencyLevel.LOCAL_QUORUM for s in w._prepared.values())


def test_upserts_and_deletes_bind_the_commit_time_as_write_time():
    w = RecordingWriter()
    source = datetime(2026, 1, 2, 3, 4, 4, 123456, tzinfo=UTC)
    planned, skipped = w.plan([
        Change(KLINES, "u", 300, source, COMMIT_US, kline_row()),
        Change(KLINES, "d", 400, source, COMMIT_US + 1, {"symbol": "BTCUSDT", "interval": "1m", "open_time": OPEN}),
    ], {}, NOW)
    upsert, delete = w.data_writes(planned, NOW)
    assert skipped == 0
    assert upsert.partition == delete.partition == ("klines", "BTCUSDT", "1m", DAY)
    # the LSN stays cdc_lsn; the write time is the commit time; no retention: TTL 0 (none)
    assert upsert.values == ("BTCUSDT", "1m", OPEN, Decimal("1"), Decimal("2"), Decimal("0.00001234"),
                             Decimal("1.50"), Decimal("1E+2"), OPEN + timedelta(seconds=59.999), Decimal("3"), 7,
                             DAY, "u", source.replace(microsecond=123000), 300, NOW, COMMIT_US, 0)
    assert delete.statement.cql.startswith("DELETE") and delete.values == (COMMIT_US + 1, "BTCUSDT", "1m", DAY, OPEN)


def test_one_write_is_dead_letters_then_rows_then_the_change_log():
    w = RecordingWriter()
    changes = [Change(TRADES, "c", 20 + i, None, COMMIT_US, trade_row(i)) for i in range(3)]
    # the change-log minute is the batch's, whatever the writer's clock says
    bucket = datetime(2026, 1, 2, 3, 7, tzinfo=UTC)
    written = w.write(BatchContext(bucket, {}), changes,
                      [DeadLetter("binance.binance.recent_trades", 0, 9, "{not json", "not a Debezium change event")])
    assert written == (3, 0, 0)
    kinds = [what for what, _, _ in w.records]
    assert kinds == ["execute", "upsert/delete", "upsert/delete", "upsert/delete", "change log"]
    assert w.records[0][2] == ("binance.binance.recent_trades", 0, 9, "{not json", "not a Debezium change event", NOW)
    assert [r[2][-3] for r in w.records[1:4]] == [NOW] * 3  # cdc_written_at: when the batch is written
    # one entry holds the three keys, with the newest LSN; its own key is an id no row key can be
    [(table, minute, entry, lsn, keys)] = [r[2] for r in w.records[4:]]
    assert (table, minute, entry, lsn) == ("recent_trades", bucket, "#", 22)
    assert keys == [f'{{"symbol":"BTCUSDT","bucket":1767322800000,"trade_id":{i}}}' for i in range(3)]


def test_the_change_log_holds_a_table_s_keys_in_groups_under_ids_of_their_own():
    """Every key written is in exactly one entry of its table, LOG_GROUP_KEYS at most to an entry; no
    two entries share an id, in one write or the next (a replay must never replace an entry)."""
    w = RecordingWriter()
    n = 2 * LOG_GROUP_KEYS + 7
    bucket = datetime(2026, 1, 2, 3, 7, tzinfo=UTC)
    changes = [Change(TRADES, "c", 100 + i, None, COMMIT_US, trade_row(i)) for i in range(n)]
    changes += [Change(KLINES, "u", 5000, None, COMMIT_US, kline_row())]
    planned = w.plan(changes, {}, NOW)[0]
    entries = [write.values for _ in range(2) for write in w.log_writes(planned, bucket)]
    assert all(e[2].startswith("#") and len(e[2]) == 33 for e in entries)
    assert len({e[2] for e in entries}) == len(entries) == 2 * 4
    assert {write.partition for write in w.log_writes(planned, bucket)} == {("recent_trades", bucket),
                                                                              ("klines", bucket)}
    first = entries[:4]
    trades = [e for e in first if e[0] == "recent_trades"]
    assert [len(e[4]) for e in trades] == [LOG_GROUP_KEYS, LOG_GROUP_KEYS, 7]
    lsn_of = {change_key(TRADES, c.row): c.lsn for c in changes[:n]}
    assert [k for e in trades for k in e[4]] == sorted(lsn_of)  # key order: the same changes, the same groups
    assert [e[3] for e in trades] == [max(lsn_of[k] for k in e[4]) for e in trades]  # the newest LSN of each
    [kline] = [e for e in first if e[0] == "klines"]
    assert kline[4] == [change_key(KLINES, kline_row())] and kline[3] == 5000


def test_the_change_log_keys_a_row_as_change_key_does_from_the_source_row():
    """The log takes a row's times and bucket from its converted values (converted once): the key is
    still change_key's of the row as parsed, a key time floored to the ms, its decimals as their text."""
    w = RecordingWriter()
    rows = [kline_row(open_time=OPEN + timedelta(microseconds=1999)),
            kline_row(open_time=DAY - timedelta(microseconds=1))]
    w.write(BatchContext(datetime(2026, 1, 2, 3, 7, tzinfo=UTC), {}),
            [Change(KLINES, "u", 30 + i, None, COMMIT_US, row) for i, row in enumerate(rows)])
    logged = [key for what, _, args in w.records if what == "change log" for key in args[4]]
    assert logged == sorted(change_key(KLINES, row) for row in rows)
    assert '"open_time":1767323040001' in logged[1] and '"bucket":1767225600000' in logged[0]


# --------------------------------------------------------------------------- retention: TTLs and skips


def test_ttl_is_what_is_left_of_the_window_rounded_up():
    keep = 3600
    assert ttl_of(NOW, None, NOW) == 0  # kept for ever: no TTL
    assert ttl_of(NOW, keep, NOW) == 3600
    assert ttl_of(NOW - timedelta(seconds=3599, microseconds=999999), keep, NOW) == 1
    assert ttl_of(NOW - timedelta(seconds=3600), keep, NOW) is None  # would expire at once
    assert ttl_of(NOW - timedelta(days=3), keep, NOW) is None
    assert ttl_of(NOW - timedelta(seconds=1800, milliseconds=1), keep, NOW) == 1800
    assert ttl_of(NOW + timedelta(seconds=10), keep, NOW) == 3610  # a row from the future keeps longer
    assert ttl_of(NOW, 10**12, NOW) == MAX_TTL == 630_720_000
    assert ttl_of(NOW, 0, NOW) is None


def test_changes_outside_the_retention_window_are_neither_written_nor_logged():
    w = RecordingWriter(retention={"recent_trades": 3600, "klines": None})
    old, edge, fresh = NOW - timedelta(hours=2), NOW - timedelta(seconds=3600), NOW - timedelta(seconds=1800.5)
    changes = [
        Change(TRADES, "c", 1, None, COMMIT_US, trade_row(1, old)),
        Change(TRADES, "d", 2, None, COMMIT_US, trade_row(2, old)),  # the source's own retention delete
        Change(TRADES, "c", 3, None, COMMIT_US, trade_row(3, edge)),
        Change(TRADES, "c", 4, None, COMMIT_US, trade_row(4, fresh)),
        Change(TRADES, "d", 5, None, COMMIT_US, trade_row(5, fresh)),
        Change(KLINES, "c", 6, None, COMMIT_US, kline_row(open_time=OPEN - timedelta(days=3650))),  # kept for ever
    ]
    assert w.write(w.context(), changes) == (2, 1, 3)
    data = [args for what, _, args in w.records if what == "upsert/delete"]
    logged = [key for what, _, args in w.records if what == "change log" for key in args[4]]
    assert logged == [change_key(TRADES, trade_row(4, fresh)), change_key(TRADES, trade_row(5, fresh)),
                      change_key(KLINES, changes[5].row)]
    [trade, delete, kline] = data
    assert trade[-1] == 1800 and trade[-2] == COMMIT_US  # ceil(1799.5): TTL, after the write time
    assert delete == (COMMIT_US, "BTCUSDT", datetime(2026, 1, 2, 2, tzinfo=UTC), 5)  # inside: written as ever
    assert kline[-1] == 0


def test_retention_is_read_once_then_at_most_once_a_minute():
    w = RecordingWriter(retention={"klines": 86400})
    reads = w.session.reads
    assert w.retention() == {"klines": 86400}
    assert len(reads) == 1 and reads[0][0] == 'SELECT table_name, keep_seconds FROM "ks".sink_retention'
    w.session.retention["klines"] = 3600
    w.ticks += 59.9
    w.clock = NOW + timedelta(hours=5)  # the wall clock does not age the cache
    assert w.retention() == {"klines": 86400} and len(reads) == 1
    w.ticks += 0.1
    assert w.retention() == {"klines": 3600} and len(reads) == 2
    w.ticks += 30
    assert w.retention() == {"klines": 3600} and len(reads) == 2
    del w.session.retention["klines"]  # a row removed: kept for ever again, once re-read
    w.ticks += 30
    assert w.retention() == {} and len(reads) == 3


def test_writes_are_grouped_by_partition_into_bounded_batches():
    writes = [Write(("t", i % 2), None, (i,)) for i in range(7)]
    groups = partition_groups(writes, size=2)
    assert [[w.values[0] for w in g] for g in groups] == [[0, 2], [4, 6], [1, 3], [5]]


def test_progress_is_offsets_then_a_progress_row_then_the_position():
    w = RecordingWriter()
    newest = datetime(2026, 1, 2, 3, 4, 4, tzinfo=UTC)
    bucket = datetime(2026, 1, 2, 3, 5, tzinfo=UTC)
    w.record_progress("q", 5, 12, 340, newest, [Offset("binance.binance.klines", 0, 10, newest),
                                                Offset("binance.binance.debezium_heartbeat", 0, 3, None)],
                      bucket, "host", 99, NOW)
    [with_ts, without_ts, progress, position] = w.records
    # the offsets bind themselves as their write time: a replayed or slower stream never moves them back
    assert with_ts[2] == ("q", "binance.binance.klines", 0, 10, newest, NOW, 10)
    assert "newest_source_ts" not in without_ts[1]
    assert without_ts[2] == ("q", "binance.binance.debezium_heartbeat", 0, 3, NOW, 3)
    assert progress[1] == (
        'INSERT INTO "ks".stream_progress (query_name, hour, finished_at, batch_id, input_rows, processing_ms, '
        "newest_source_ts, changelog_bucket, driver_host, driver_pid) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
    assert progress[2] == ("q", datetime(2026, 1, 2, 3, tzinfo=UTC), NOW, 5, 12, 340, newest, bucket, "host", 99)
    assert position[1] == (
        'INSERT INTO "ks".stream_position (query_name, batch_id, finished_at, changelog_bucket, input_rows, '
        "processing_ms, newest_source_ts, driver_host, driver_pid) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
    assert position[2] == ("q", 5, NOW, bucket, 12, 340, newest, "host", 99)
    assert all(w._prepared[cql].consistency_level is not None for _, cql, _ in w.records)


def test_the_last_changelog_bucket_is_read_from_the_stream_position():
    w = RecordingWriter(position={"q": datetime(2026, 1, 2, 3, 9)})  # naive UTC, as the driver returns it
    assert w.last_changelog_bucket("q") == datetime(2026, 1, 2, 3, 9, tzinfo=UTC)
    assert w.last_changelog_bucket("other") is None
    assert w.session.reads[0] == ('SELECT changelog_bucket FROM "ks".stream_position WHERE query_name = ?', ("q",))


# --------------------------------------------------------------------------- binding: the driver's bytes


def _decimals() -> list[Decimal]:
    rng = random.Random(7)
    edge = ["0", "-0", "0.00", "1", "-1", "127", "128", "255", "256", "-128", "-129", "-256", "-257", "1E+2", "-1E+2",
            "1E-30", "0.00000001", "64369.75000000", "-0.01597000", "1027.98490750", "9" * 40, "-" + "9" * 40 + ".5",
            "123456789012345678901234567890.123456789"]
    randoms = [f"{'-' if rng.random() < 0.3 else ''}{rng.randrange(10 ** rng.randrange(1, 30))}e{rng.randrange(-20, 5)}"
               for _ in range(2000)]
    return [Decimal(v) for v in edge + randoms]


def test_decimals_bind_to_the_drivers_bytes():
    from cassandra.cqltypes import DecimalType

    for value in _decimals():
        assert decimal_bytes(value) == DecimalType.serialize(value, 5), value
    assert decimal_bytes("1.50") == DecimalType.serialize("1.50", 5)  # text, as the driver takes it too
    # text in plain notation is read by int(); anything else int() would misread goes through Decimal
    texts = [str(v) for v in _decimals()] + [f"{v:f}" for v in _decimals()] + [
        "0064369.75", "-000.010", "5.", ".5", "-.5", " 1.5", "1.5 ", "+1.5", "1_000.5", "1.5_0", "١٢.٣", "-0", "-0.00"]
    for text in texts:
        assert decimal_bytes(text) == DecimalType.serialize(Decimal(text), 5), text
    # more digits than int() reads from text: through the digits, as before (the driver refuses both ways)
    for text in ("9" * 4001, "-1." + "0" * 4500 + "7"):
        out = decimal_bytes(text)
        scale, unscaled = int.from_bytes(out[:4], "big", signed=True), int.from_bytes(out[4:], "big", signed=True)
        with localcontext() as exact:
            exact.prec = 10_000
            assert Decimal(unscaled).scaleb(-scale) == Decimal(text) and scale == len(text.partition(".")[2])
    for bad in (Decimal("NaN"), Decimal("-Infinity")):
        with pytest.raises(TypeError):
            decimal_bytes(bad)


def test_timestamps_bind_to_the_drivers_bytes():
    from cassandra.cqltypes import DateType

    rng = random.Random(11)
    moments = [EPOCH, EPOCH + timedelta(microseconds=999), OPEN, NOW, datetime(2026, 1, 2, 3, 4, 5, 999999, tzinfo=UTC),
               datetime(2100, 12, 31, 23, 59, 59, 999000, tzinfo=UTC),
               datetime(2026, 1, 2, 5, 4, 5, 123456, tzinfo=timezone(timedelta(hours=2)))]
    moments += [EPOCH + timedelta(microseconds=rng.randrange(4 * 10 ** 15)) for _ in range(2000)]
    for moment in moments:
        assert timestamp_bytes(moment) == DateType.serialize(moment, 5), moment
    # anything else is left to the driver's own serializer
    for other in (datetime(2026, 1, 2, 3, 4, 5), datetime(1969, 12, 31, 23, 59, 59, 999500, tzinfo=UTC),
                  date(2026, 1, 2), 1767323045000):
        assert timestamp_bytes(other) is None


def test_a_prepared_statement_binds_the_same_bytes_with_the_quick_types():
    from cassandra.cqltypes import BooleanType, DateType, DecimalType, LongType, VarcharType
    from cassandra.protocol import ColumnMetadata
    from cassandra.query import BoundStatement, PreparedStatement

    def prepared() -> PreparedStatement:
        meta = [ColumnMetadata("ks", "t", name, kind) for name, kind in
                (("symbol", VarcharType), ("bucket", DateType), ("trade_id", LongType), ("price", DecimalType),
                 ("time", DateType), ("is_buyer_maker", BooleanType))]
        return PreparedStatement(meta, b"id", [0, 1], "INSERT", "ks", 5, [], None)

    quick = quick_binding(prepared())
    assert [m.type.__name__ for m in quick.column_metadata] == [
        "VarcharType", "_QuickTimestamp", "LongType", "_QuickDecimal", "_QuickTimestamp", "BooleanType"]
    rows = [("BTCUSDT", OPEN, 7, Decimal("64369.75000000"), NOW, True),
            ("ETHUSDT", datetime(2026, 1, 2, 3, 4), -1, Decimal("-1E+2"), 1767323045123, None)]
    for row in rows:
        assert BoundStatement(quick).bind(row).values == BoundStatement(prepared()).bind(row).values


def test_the_writers_binder_binds_what_the_driver_binds():
    from cassandra.cqltypes import BooleanType, DateType, DecimalType, LongType, VarcharType
    from cassandra.protocol import ColumnMetadata
    from cassandra.query import UNSET_VALUE, BatchStatement, BatchType, PreparedStatement

    meta = [ColumnMetadata("ks", "t", name, kind) for name, kind in
            (("symbol", VarcharType), ("bucket", DateType), ("trade_id", LongType), ("price", DecimalType),
             ("time", DateType), ("is_buyer_maker", BooleanType))]
    quick = quick_binding(PreparedStatement(meta, b"id", [0, 1], "INSERT", "ks", 5, [], None))
    binder = Binder(quick)
    rows = [("BTCUSDT", OPEN, 7, Decimal("64369.75000000"), NOW, True),
            ("ETHUSDT", datetime(2026, 1, 2, 3, 4), -1, Decimal("-1E+2"), 1767323045123, None),
            ("BTCUSDT", OPEN, None, None, None, False)]
    for row in rows:
        ours, drivers = binder.bind(row), quick.bind(row)
        assert ours.values == drivers.values and ours.routing_key == drivers.routing_key
        assert ours.keyspace == drivers.keyspace == "ks" and ours.consistency_level == drivers.consistency_level
        # in a batch: the same statement and values, and the batch routed by the first statement's key
        batches = [BatchStatement(batch_type=BatchType.UNLOGGED) for _ in range(2)]
        batches[0].add(ours)
        batches[1].add(quick, row)
        assert batches[0]._statements_and_parameters == batches[1]._statements_and_parameters
        assert batches[0].routing_key == batches[1].routing_key and batches[0].keyspace == "ks"
    # a value of the wrong type names its column, as the driver's bind does
    with pytest.raises(TypeError, match='column "trade_id"'):
        binder.bind(("BTCUSDT", OPEN, "seven", Decimal("1"), NOW, True))
    # too few values (UNSET padding), UNSET_VALUE, a dict and a column encryption policy are left to the driver
    assert binder.bind(("BTCUSDT", OPEN)).values == quick.bind(("BTCUSDT", OPEN)).values
    unset = ("BTCUSDT", OPEN, UNSET_VALUE, Decimal("1"), NOW, True)
    assert binder.bind(unset).values == quick.bind(unset).values and UNSET_VALUE in binder.bind(unset).values
    by_name = {"is_buyer_maker": True, "symbol": "BTCUSDT", "bucket": OPEN, "trade_id": 7, "price": Decimal("1"),
               "time": NOW}
    assert binder.bind(by_name).values == quick.bind(by_name).values
    quick.column_encryption_policy = object()
    with pytest.raises(AttributeError):  # the driver's bind asks the policy, which has no such method
        binder.bind(rows[0])
