"""The reference transforms (tests/spark/reference_envelope.py: parse_envelope, collapse_last) on
hand-written Debezium envelopes, one per op, down to what they hand the writer: the reference the
stream's own parsing is compared with must be right itself."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from include.tables import TABLES
from spark.writer import change_key, epoch_us
from tests.spark.fakes import RecordingWriter
from tests.spark.reference_envelope import batch_summary, collapse_last, envelope_schema, parse_envelope, spark_rows

KLINES = TABLES["klines"]
BOOK = TABLES["order_book"]
# the source commit time of the hand-written events: 2026-01-02T03:04:04.123456Z, in microseconds
SOURCE_US = 1_767_323_044_123_456


def kline(close: str, trades: int = 1) -> dict:
    return {"symbol": "BTCUSDT", "interval": "1m", "open_time": "2026-01-02T03:04:00Z", "open_price": "1.00000000",
            "high_price": "2.5", "low_price": "0.00001234", "close_price": close, "volume": "10.12345678",
            "close_time": "2026-01-02T03:04:59.999Z", "quote_volume": "3", "num_trades": trades}


def envelope(op: str, before: dict | None, after: dict | None, lsn: int, table: str = "klines", *,
             snapshot: str | None = "false", ts_us: int | None = SOURCE_US,
             ts_ms: int | None = SOURCE_US // 1000) -> str:
    """A Debezium 3 change event; source.ts_us, source.ts_ms and source.snapshot left out when None."""
    source = {"lsn": lsn, "ts_ms": ts_ms, "ts_us": ts_us, "txId": 7, "snapshot": snapshot, "table": table}
    source = {k: v for k, v in source.items() if v is not None}
    return json.dumps({"before": before, "after": after, "op": op, "ts_ms": 1767323045000, "source": source,
                       "transaction": None})


def frame(spark, values: list[str | None], topic: str = "binance.binance.klines"):
    rows = [(topic, 0, offset, value) for offset, value in enumerate(values)]
    return spark.createDataFrame(rows, "topic string, partition int, offset long, value string")


def written(table, winners) -> list[tuple[str, str, tuple]]:
    """What a writer writes for these rows."""
    writer = RecordingWriter()
    writer.write(writer.context(), *spark_rows(table, f"binance.binance.{table.name}", winners.collect()))
    return writer.records


def micros(*args) -> int:
    return epoch_us(datetime(*args, tzinfo=UTC))


def test_schema_is_derived_from_the_table_definition():
    after = envelope_schema(KLINES)["after"].dataType
    assert after.fieldNames() == KLINES.column_names
    assert {"lsn", "ts_us", "ts_ms", "snapshot"} <= set(envelope_schema(KLINES)["source"].dataType.fieldNames())


def test_each_op_becomes_a_typed_row(spark):
    key_only = {"symbol": "BTCUSDT", "interval": "1m", "open_time": "2026-01-02T03:04:00Z"}
    values = [
        envelope("r", None, kline("1.5"), 100),
        envelope("c", None, kline("1.6"), 200),
        envelope("u", kline("1.6"), kline("1.7"), 300),
        envelope("d", key_only, None, 400),
    ]
    rows = parse_envelope(frame(spark, values), KLINES).orderBy("cdc_lsn").collect()
    assert [r.cdc_op for r in rows] == ["r", "c", "u", "d"]
    assert [r.error for r in rows] == [None] * 4
    assert [r.close_price for r in rows[:3]] == ["1.5", "1.6", "1.7"]
    # decimals stay exact text; times are epoch microseconds (no time zone can creep in)
    assert rows[0].low_price == "0.00001234"
    assert rows[0].open_time == micros(2026, 1, 2, 3, 4)
    assert rows[0].close_time == micros(2026, 1, 2, 3, 4, 59, 999000)
    assert rows[3].symbol == "BTCUSDT" and rows[3].open_time == micros(2026, 1, 2, 3, 4)
    assert rows[3].close_price is None
    # the source's fields that make the write time, as Debezium wrote them
    assert (rows[0].source_ts_us, rows[0].source_ts_ms, rows[0].source_snapshot) == (
        SOURCE_US, SOURCE_US // 1000, "false")


def test_tombstones_are_skipped(spark):
    rows = parse_envelope(frame(spark, [None, envelope("c", None, kline("1"), 5)]), KLINES).collect()
    assert len(rows) == 1 and rows[0].cdc_op == "c"


def test_poison_messages_carry_a_reason(spark):
    no_key = kline("1")
    del no_key["symbol"]
    values = [
        "{not json",
        json.dumps({"hello": "world"}),
        envelope("x", None, kline("1"), 1),
        envelope("c", None, no_key, 2),
        envelope("c", None, kline("1,5"), 3),
        envelope("d", None, None, 4),
    ]
    rows = parse_envelope(frame(spark, values), KLINES).orderBy("kafka_offset").collect()
    errors = [r.error for r in rows]
    assert errors[0].startswith("not a Debezium change event")
    assert errors[1].startswith("not a Debezium change event")
    assert errors[2] == "unknown op x"
    assert errors[3] == "key column symbol missing"
    assert errors[4] == "close_price is not a decimal"
    assert errors[5] == "delete without before"
    assert rows[0].raw_value == "{not json"


def test_events_on_one_key_collapse_to_the_last_in_source_order(spark):
    values = [
        envelope("u", None, kline("3", 3), 300),
        envelope("c", None, kline("1", 1), 100),
        envelope("u", None, kline("2", 2), 200),
    ]
    parsed = parse_envelope(frame(spark, values), KLINES)
    rows = collapse_last(parsed, KLINES).collect()
    assert len(rows) == 1
    assert (rows[0].close_price, rows[0].num_trades, rows[0].cdc_lsn) == ("3", 3, 300)


def test_a_delete_after_an_insert_wins_and_is_not_upserted(spark):
    key_only = {"symbol": "BTCUSDT", "interval": "1m", "open_time": "2026-01-02T03:04:00Z"}
    values = [envelope("c", None, kline("1"), 100), envelope("d", key_only, None, 200, ts_us=SOURCE_US + 1)]
    winners = collapse_last(parse_envelope(frame(spark, values), KLINES), KLINES)
    assert [r.cdc_op for r in winners.collect()] == ["d"]
    data = [(cql, args) for what, cql, args in written(KLINES, winners) if what == "upsert/delete"]
    assert [cql.split()[0] for cql, _ in data] == ["DELETE"]
    # the delete's write time: its commit time (the bucket follows open_time)
    assert data[0][1] == (SOURCE_US + 1, "BTCUSDT", "1m", datetime(2026, 1, 2, tzinfo=UTC),
                          datetime(2026, 1, 2, 3, 4, tzinfo=UTC))


def test_a_delete_after_an_insert_wins_and_is_not_upserted_at_its_commit_time(spark):
    key_only = {"symbol": "BTCUSDT", "interval": "1m", "open_time": "2026-01-02T03:04:00Z"}
    # the LSN orders the batch, whatever the commit times say
    values = [envelope("c", None, kline("1"), 100, ts_us=SOURCE_US + 5), envelope("d", key_only, None, 200)]
    winners = collapse_last(parse_envelope(frame(spark, values), KLINES), KLINES)
    [(_, cql, args)] = [r for r in written(KLINES, winners) if r[0] == "upsert/delete"]
    assert cql.startswith("DELETE") and args[0] == SOURCE_US


def test_upserts_carry_the_commit_time_as_write_time(spark):
    winners = collapse_last(parse_envelope(frame(spark, [envelope("c", None, kline("1"), 4242)]), KLINES), KLINES)
    [(what, cql, args)] = [r for r in written(KLINES, winners) if r[0] == "upsert/delete"]
    assert cql.startswith('INSERT INTO "ks"."klines"') and cql.endswith("USING TIMESTAMP ? AND TTL ?")
    columns = [*KLINES.column_names, "bucket", "cdc_op", "cdc_source_ts", "cdc_lsn", "cdc_written_at", "writetime",
               "ttl"]
    row = dict(zip(columns, args, strict=True))
    assert row["writetime"] == SOURCE_US and row["cdc_lsn"] == 4242 and row["cdc_op"] == "c"
    assert row["cdc_source_ts"] == datetime(2026, 1, 2, 3, 4, 4, 123000, tzinfo=UTC)
    assert row["bucket"] == datetime(2026, 1, 2, tzinfo=UTC) and row["ttl"] == 0  # no retention: no TTL


def test_order_book_delete_keys_on_the_full_before_row(spark):
    level = {"update_id": 9, "symbol": "ETHUSDT", "side": "bid", "price": "3000.01000000", "quantity": "1.5",
             "captured_at": "2026-01-02T03:04:05.678Z"}
    values = [envelope("d", level, None, 10, "order_book")]
    rows = parse_envelope(frame(spark, values, "binance.binance.order_book"), BOOK).collect()
    [change], _ = spark_rows(BOOK, "binance.binance.order_book", rows)
    out = change_key(BOOK, change.row)
    # the bucket: the hour of captured_at
    assert out == ('{"symbol":"ETHUSDT","bucket":1767322800000,"captured_at":1767323045678,"update_id":9,'
                   '"side":"bid","price":"3000.01000000"}')


def test_batch_summary_reports_next_offsets_and_newest_source_commit(spark):
    rows = [
        ("binance.binance.klines", 0, 7, envelope("c", None, kline("1"), 100)),
        ("binance.binance.klines", 0, 9, json.dumps({"op": "u", "source": {"ts_ms": 1767323099000}})),
        ("binance.binance.klines", 1, 3, None),  # a tombstone: counted, no source time
        ("binance.binance.order_book", 0, 41, "{not json"),
    ]
    df = spark.createDataFrame(rows, "topic string, partition int, offset long, value string")
    got = {(r.topic, r.partition): (r.events, r.next_offset, r.newest_source_ms) for r in batch_summary(df).collect()}
    assert got == {
        ("binance.binance.klines", 0): (2, 10, 1767323099000),
        ("binance.binance.klines", 1): (1, 4, None),
        ("binance.binance.order_book", 0): (1, 42, None),
    }
