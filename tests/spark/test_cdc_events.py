"""include/cdc/events.py: the change-log key (both ways, exact bytes, bucket included), the decimal
check, the write time of each op and snapshot kind, and every error a dead letter can carry,
reached alike by the stream's parsing (spark/python_events.py) and the reference transforms
(tests/spark/reference_envelope.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from include.cdc import events
from include.tables import TABLES, Column
from spark import python_events
from spark.writer import change_key, cql_value
from tests.spark.reference_envelope import incremental_read_lsns, parse_envelope, spark_rows
from tests.spark.test_envelope import SOURCE_US, envelope, frame, kline

KLINES = TABLES["klines"]
BOOK = TABLES["order_book"]
TRADES = TABLES["recent_trades"]
SAMPLE = {"text": "BTCUSDT", "bigint": 42, "numeric": "0.00000001",
          "timestamptz": datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)}


@pytest.mark.parametrize("table", list(TABLES.values()), ids=lambda t: t.name)
def test_every_tables_key_round_trips(table):
    values = {k: SAMPLE[table.column(k).type] for k in table.cassandra_key}
    key = events.encode_key(table, values)
    assert list(json.loads(key)) == list(table.cassandra_key)
    decoded = events.decode_key(table, key)
    assert decoded == tuple(cql_value(table.column(k).type, values[k]) for k in table.cassandra_key)
    for name, value in zip(table.cassandra_key, decoded, strict=True):
        kind = table.column(name).type
        assert type(value) is {"text": str, "bigint": int, "numeric": Decimal, "timestamptz": datetime}[kind]
        if kind == "timestamptz":
            assert value.tzinfo is UTC
        if kind == "numeric":
            assert str(value) == "1E-8" and json.loads(key)[name] == "0.00000001"  # the text, not str(Decimal)


def test_known_keys_are_exact_bytes():
    captured = datetime(2026, 1, 2, 3, 4, 5, 678999, tzinfo=UTC)
    book = {"symbol": "ETHUSDT", "bucket": datetime(2026, 1, 2, 3, tzinfo=UTC), "captured_at": captured,
            "update_id": 9, "side": "bid", "price": "3000.01000000", "quantity": "ignored"}
    expected = ('{"symbol":"ETHUSDT","bucket":1767322800000,"captured_at":1767323045678,"update_id":9,"side":"bid",'
                '"price":"3000.01000000"}')
    assert events.encode_key(BOOK, book) == expected
    # the writer's key computes the bucket from the row's time (the hour of captured_at)
    assert change_key(BOOK, {k: v for k, v in book.items() if k != "bucket"}) == expected
    paris = timezone(timedelta(hours=1))
    kline_key = {"symbol": "BTCUSDT", "interval": "1m", "bucket": datetime(2026, 1, 2, 1, tzinfo=paris),
                 "open_time": datetime(2026, 1, 2, 4, 4, tzinfo=paris)}
    text = '{"symbol":"BTCUSDT","interval":"1m","bucket":1767312000000,"open_time":1767323040000}'
    assert events.encode_key(KLINES, kline_key) == text
    # the bucket decodes like any time of the key: an aware UTC datetime
    decoded = events.decode_key(KLINES, text)
    assert decoded == ("BTCUSDT", "1m", datetime(2026, 1, 2, tzinfo=UTC), datetime(2026, 1, 2, 3, 4, tzinfo=UTC))
    assert decoded[2].tzinfo is UTC
    assert KLINES.column("bucket") == Column("bucket", "timestamptz")


def test_keys_are_the_json_modules_compact_text():
    # encode_key writes the JSON itself: the same bytes as json.dumps for every kind of key value
    values = ["BTCUSDT", "", 'a"b\\c', "line\nbreak\ttab\x01", "é€😀", "\ud800", 0, -1, 2**63 - 1, -(2**70), True,
              False, None]
    for value in values:
        for name in ("symbol", "sym\"bol", "ñ"):
            parts = {name: value, "n": 7}
            assert events._compact_json(parts) == json.dumps(parts, separators=(",", ":"), ensure_ascii=False)
    assert events._compact_json({}) == "{}"
    assert events._compact_json({"x": 1.5, "y": "z"}) == '{"x":1.5,"y":"z"}'  # other values: json.dumps itself


def test_keys_refuse_what_would_change_their_bytes():
    naive = {"symbol": "BTCUSDT", "interval": "1m", "bucket": datetime(2026, 1, 2),
             "open_time": datetime(2026, 1, 2, 3, 4)}
    with pytest.raises(ValueError, match="naive"):
        events.encode_key(KLINES, naive)
    with pytest.raises(TypeError, match="order_book.price"):
        events.encode_key(BOOK, {"symbol": "ETHUSDT", "bucket": SAMPLE["timestamptz"],
                                 "captured_at": SAMPLE["timestamptz"], "update_id": 9, "side": "bid",
                                 "price": Decimal("0.00000001")})
    # the writer's key refuses a naive time too: its meaning would depend on the process time zone
    with pytest.raises(ValueError, match="aware"):
        change_key(KLINES, naive)
    assert change_key(KLINES, {**naive, "open_time": datetime(2026, 1, 2, 3, 4, tzinfo=UTC)}) == (
        '{"symbol":"BTCUSDT","interval":"1m","bucket":1767312000000,"open_time":1767323040000}')


def test_a_key_needs_the_time_its_bucket_follows():
    assert events.key_sources(KLINES) == ("symbol", "interval", "open_time")
    assert events.key_sources(TRADES) == ("symbol", "time", "trade_id")
    assert events.key_sources(BOOK) == ("symbol", "captured_at", "update_id", "side", "price")


# --------------------------------------------------------------------------- write times

FULL_SNAPSHOTS = ["true", "first", "last", "first_in_data_collection", "last_in_data_collection", "other", None]


@pytest.mark.parametrize("op", ["c", "u", "d"])
@pytest.mark.parametrize("snapshot", ["false", "incremental", "true", None])
def test_changes_are_written_at_their_commit_time(op, snapshot):
    assert events.write_time(op, {"ts_us": 1_767_323_044_123_456, "ts_ms": 1_767_323_044_123,
                                  "snapshot": snapshot}) == 1_767_323_044_123_456


@pytest.mark.parametrize("snapshot", FULL_SNAPSHOTS)
def test_initial_and_blocking_snapshot_reads_are_written_a_margin_below_their_time(snapshot):
    assert events.SNAPSHOT_MARGIN_US == 10_000_000
    source = {"ts_us": 1_767_323_044_123_456, "ts_ms": 1_767_323_044_123, "snapshot": snapshot}
    assert events.write_time("r", source) == 1_767_323_044_123_456 - 10_000_000


def test_a_read_outside_any_snapshot_is_written_at_its_time():
    source = {"ts_us": 1_767_323_044_123_456, "ts_ms": 1_767_323_044_123, "snapshot": "false"}
    assert events.write_time("r", source) == 1_767_323_044_123_456


WINDOW_US = 1_767_323_040_000_000  # the window's marker committed 4.123456 s before the read was emitted


def test_incremental_snapshot_reads_are_written_at_their_windows_time():
    """Not at source.ts_us, which is when Debezium emitted the read (its worker's clock, on reading
    the close marker): a change committed between the window's close and that moment must win."""
    source = {"ts_us": 1_767_323_044_123_456, "ts_ms": 1_767_323_044_123, "snapshot": "incremental"}
    assert events.is_incremental_read("r", source) and not events.is_incremental_read("c", source)
    assert events.write_time("r", source, WINDOW_US) == WINDOW_US
    # a change committed 1 ms after the window's marker, streamed after the read: it wins
    assert events.write_time("u", {"ts_us": WINDOW_US + 1000, "snapshot": "false"}) > \
        events.write_time("r", source, WINDOW_US)
    with pytest.raises(ValueError, match="window"):
        events.write_time("r", source)
    # the window does not concern other events
    assert events.write_time("c", source, WINDOW_US) == 1_767_323_044_123_456


def test_a_window_is_the_newest_signal_table_event_at_or_below_the_reads_lsn():
    markers = [(100, 1_000), (250, 2_000), (300, 3_000), (900, 9_000)]
    assert events.window_time(markers, 250) == 2_000  # the window's closing event itself
    assert events.window_time(markers, 299) == 2_000  # its opening marker
    assert events.window_time(markers, 1_000) == 9_000
    assert events.window_time(markers, 99) is None
    assert events.window_time([], 5) is None


def test_signal_markers_are_read_from_the_raw_event():
    marker = json.dumps({"before": None, "after": {"id": "x-open", "type": "snapshot-window-open", "data": None},
                         "op": "c", "source": {"lsn": 4242, "ts_us": WINDOW_US, "ts_ms": WINDOW_US // 1000}})
    assert events.signal_marker(marker) == (4242, WINDOW_US)
    closing = json.dumps({"before": {"id": "x-open"}, "after": None, "op": "d",
                          "source": {"lsn": 4300, "ts_ms": 1_767_323_041_000}})
    assert events.signal_marker(closing) == (4300, 1_767_323_041_000_000)
    for bad in (None, "{oops", "[]", json.dumps({"op": "c"}), json.dumps({"source": {"lsn": 1}}),
                json.dumps({"source": {"lsn": "1", "ts_us": 5}}), json.dumps({"source": {"lsn": True, "ts_us": 5}})):
        assert events.signal_marker(bad) is None


def test_an_incremental_read_is_placed_by_its_sequence_when_it_has_no_lsn():
    assert events.sequence_lsn('["1556178648","1556180928"]') == 1556180928
    assert events.sequence_lsn('[null,"42"]') == 42 and events.sequence_lsn("[7]") == 7
    for bad in (None, "", "{oops", "[]", '["1",null]', '["x"]', '{"lsn": 1}', '["-5"]', f'["{2**63}"]'):
        assert events.sequence_lsn(bad) is None, bad
    assert events.event_lsn(None, "incremental", '["1","2"]') == 2
    assert events.event_lsn(5, "incremental", '["1","2"]') == 5  # source.lsn when there is one
    assert events.event_lsn(None, "false", '["1","2"]') is None  # only incremental reads go by the sequence
    assert events.event_lsn(None, "true", '["1","2"]') is None


def test_the_stream_and_the_reference_find_an_incremental_reads_lsn_alike(spark):
    def read(source):
        return json.dumps({"op": "r", "after": kline("1"), "source": {"ts_us": SOURCE_US, **source}})

    values = [read({"lsn": None, "snapshot": "incremental", "sequence": '["6","9"]'}),
              read({"snapshot": "incremental", "sequence": '["6","11"]'}),
              read({"lsn": 12, "snapshot": "incremental", "sequence": '["6","9"]'}),
              read({"lsn": None, "snapshot": "incremental"}),
              read({"lsn": None, "snapshot": "incremental", "sequence": "[]"}),
              read({"lsn": None, "snapshot": "false", "sequence": '["6","9"]'})]
    rows = parse_envelope(frame(spark, values), KLINES).orderBy("kafka_offset").collect()
    by_driver = [python_events.parse_event(KLINES, 0, o, v) for o, v in enumerate(values)]
    assert [r.cdc_lsn for r in rows] == [e.cdc_lsn for e in by_driver] == [9, 11, 12, None, None, None]
    assert [r.error for r in rows] == [e.error for e in by_driver] == [None, None, None, *[events.NO_LSN] * 3]
    lsns = sorted(r.lsn for r in incremental_read_lsns(frame(spark, values)).collect())
    assert lsns == [9, 11, 12]


def test_a_time_outside_utcs_range_is_a_dead_letter_whatever_else_is_wrong():
    # 0001-01-01T00:00+01:00 is in year 0 in UTC: no datetime holds it, and the event cannot be applied
    early = {**kline("1"), "close_time": "0001-01-01T00:00:00+01:00"}
    late = {**kline("1"), "open_time": "9999-12-31T23:30:00-01:00"}
    cases = [(envelope("c", None, early, 5), events.not_a_timestamp("close_time")),
             (envelope("c", None, late, 5), events.not_a_timestamp("open_time")),
             (json.dumps({"after": early, "source": {"lsn": 5, "ts_us": SOURCE_US}}), events.NOT_AN_EVENT),
             (envelope("c", None, late, None), events.NO_LSN)]
    for value, reason in cases:
        assert python_events.parse_event(KLINES, 0, 7, value).error == reason


def test_write_time_falls_back_to_ts_ms_and_needs_one_of_them():
    assert events.write_time("c", {"ts_ms": 1_767_323_044_123, "snapshot": "false"}) == 1_767_323_044_123_000
    assert events.write_time("r", {"ts_ms": 1_767_323_044_123, "snapshot": "last"}) == 1_767_323_034_123_000
    assert events.write_time("c", {"ts_us": 5, "ts_ms": None}) == 5
    with pytest.raises(ValueError, match="source.ts_ms missing"):
        events.write_time("c", {"ts_us": None, "ts_ms": None, "snapshot": "false"})


WRITE_TIMES = [  # (event, write time); both paths compute each through include.cdc.events.write_time
    (envelope("c", None, kline("1"), 1), SOURCE_US),
    (envelope("u", kline("1"), kline("2"), 2, ts_us=None), SOURCE_US // 1000 * 1000),
    (envelope("d", kline("1"), None, 3, snapshot=None), SOURCE_US),
    (envelope("r", None, kline("1"), 4, snapshot="true"), SOURCE_US - 10_000_000),
    (envelope("r", None, kline("1"), 5, snapshot="last_in_data_collection"), SOURCE_US - 10_000_000),
    (envelope("r", None, kline("1"), 6, snapshot=None, ts_us=None), SOURCE_US // 1000 * 1000 - 10_000_000),
    (envelope("r", None, kline("1"), 7, snapshot="incremental"), SOURCE_US - 3_000_000),  # its window's time
    (json.dumps({"op": "r", "after": kline("1"), "source": {"lsn": 8, "ts_us": SOURCE_US, "snapshot": True}}),
     SOURCE_US - 10_000_000),  # a JSON boolean reads as "true" on both
    # an incremental read as Debezium 3.7 emits it: no source.lsn, the close marker's position in
    # source.sequence ([last commit LSN, last processed LSN])
    (json.dumps({"op": "r", "after": kline("1"), "source": {"lsn": None, "sequence": '["6","9"]', "ts_us": SOURCE_US,
                                                         "snapshot": "incremental"}}), SOURCE_US - 2_000_000),
]


def test_the_stream_and_the_reference_give_each_event_its_write_time(spark):
    values = [v for v, _ in WRITE_TIMES]
    windows = {7: SOURCE_US - 3_000_000, 9: SOURCE_US - 2_000_000}
    rows = parse_envelope(frame(spark, values), KLINES).orderBy("kafka_offset").collect()
    by_spark, letters = spark_rows(KLINES, "binance.binance.klines", rows, windows)
    assert not letters
    by_driver = [python_events.parse_event(KLINES, 0, o, v).change(KLINES, windows) for o, v in enumerate(values)]
    expected = [t for _, t in WRITE_TIMES]
    assert [c.write_time for c in by_spark] == [c.write_time for c in by_driver] == expected
    # the LSN stays the LSN; the source time is the commit time, at the microsecond the source gave
    assert [c.lsn for c in by_spark] == [c.lsn for c in by_driver] == list(range(1, 10))
    assert [c.source_ts for c in by_spark] == [c.source_ts for c in by_driver]
    assert by_spark[0].source_ts == datetime(2026, 1, 2, 3, 4, 4, 123456, tzinfo=UTC)


@pytest.mark.parametrize("text,ok", [("1", True), ("-1.50", True), ("1E+2", True), ("1e-8", True),
                                     ("0.00001234", True), ("1,5", False), ("+1", False), (".5", False),
                                     ("1.", False), ("", False), ("NaN", False), ("1 ", False)])
def test_decimal_text(text, ok):
    assert events.is_decimal_text(text) is ok


def _no_symbol() -> dict:
    row = kline("1")
    del row["symbol"]
    return row


REASONS = {
    events.NOT_AN_EVENT: "{not json",
    events.unknown_op("x"): envelope("x", None, kline("1"), 1),
    events.NO_LSN: json.dumps({"op": "c", "after": kline("1"), "source": {"ts_ms": 1}}),
    events.NO_SOURCE_TS: envelope("c", None, kline("1"), 7, ts_us=None, ts_ms=None),
    events.DELETE_WITHOUT_BEFORE: envelope("d", None, None, 2),
    events.NO_AFTER: envelope("u", kline("1"), None, 3),
    events.key_column_missing("symbol"): envelope("c", None, _no_symbol(), 4),
    events.not_a_timestamp("close_time"): envelope("c", None, {**kline("1"), "close_time": "soon"}, 5),
    events.not_a_decimal("close_price"): envelope("c", None, kline("1,5"), 6),
}


def test_every_error_text_is_reached_by_the_stream_and_the_reference(spark):
    assert events.unknown_op("x") == "unknown op x"
    assert events.missing_row("d") == events.DELETE_WITHOUT_BEFORE and events.missing_row("c") == events.NO_AFTER
    values = list(REASONS.values())
    by_spark = [r.error for r in parse_envelope(frame(spark, values), KLINES).orderBy("kafka_offset").collect()]
    by_driver = [python_events.parse_event(KLINES, 0, o, v).error for o, v in enumerate(values)]
    assert by_spark == by_driver == list(REASONS)
    assert list(REASONS) == [
        "not a Debezium change event (unparseable JSON or no op)", "unknown op x", "source.lsn missing",
        "source.ts_ms missing", "delete without before", "no after", "key column symbol missing",
        "close_time is not a timestamp", "close_price is not a decimal"]
