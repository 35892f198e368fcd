"""The stream's parsing and collapse (spark/python_events.py, run by spark/apply.py in Spark tasks)
decide exactly what the reference transforms (tests/spark/reference_envelope.py, Spark DataFrames)
decide, on the same events: errors, the winner per key (bucket included), the values written, the
write time, the change-log key and the partition's summary; and the Spark tasks hand the writer
the same writes, TTLs and skips as the reference's decisions do."""

from __future__ import annotations

import json
from dataclasses import replace
from decimal import Decimal
from functools import partial

import pytest

from include.tables import TABLES
from spark import python_events
from spark.apply import apply_partition, apply_partitions, known_tables
from spark.writer import change_key, cql_row, cql_value
from tests.spark.fakes import RecordingWriter, read_records, seed_windows
from tests.spark.reference_envelope import (
    batch_summary,
    collapse_last,
    drop_unplaced_reads,
    incremental_read_lsns,
    parse_envelope,
    rank_events,
    spark_rows,
)
from tests.spark.test_envelope import SOURCE_US, envelope, kline

KLINES = TABLES["klines"]
BOOK = TABLES["order_book"]
TRADES = TABLES["recent_trades"]


def book_level(price: str, qty: str, captured: str = "2026-01-02T03:04:05.123456Z") -> dict:
    return {"update_id": 42, "symbol": "ETHUSDT", "side": "bid", "price": price, "quantity": qty,
            "captured_at": captured}


def trade(trade_id, price: str = "1.5") -> dict:
    return {"symbol": "BTCUSDT", "trade_id": trade_id, "price": price, "qty": "0.001", "quote_qty": "0.0015",
            "time": "2026-01-02T03:04:05.678+00:00", "is_buyer_maker": True}


def _no_key() -> dict:
    row = kline("1")
    del row["symbol"]
    return row


# Cassandra's retention in the comparisons (sink_retention): the fake clock is 2026-01-02T03:04:05.678Z,
# so klines before 2025-12-03T03:04:05.678Z and trades and book levels more than an hour old are skipped
RETENTION = {"klines": 30 * 86400, "recent_trades": 3600, "order_book": 3600}
# the incremental reads' windows placed in time (LSN -> the window marker's commit, µs); LSN 185 is not
WINDOWS = {180: SOURCE_US - 2_000_000, 25: SOURCE_US - 1_000_000}
OLD = "2025-06-01T00:00:00Z"

CORPUS = {
    KLINES: [
        envelope("r", None, kline("1.5"), 100, snapshot="true"),  # an initial snapshot's read: 10 s below
        envelope("u", kline("1.5"), kline("1.6", 2), 300),
        envelope("u", kline("1.6"), kline("1.55", 3), 200),  # older LSN, later offset: loses
        None,  # tombstone
        envelope("c", None, {**kline("7"), "open_time": "2026-01-02T03:05:00Z"}, 150),
        envelope("d", {"symbol": "BTCUSDT", "interval": "1m", "open_time": "2026-01-02T03:05:00Z"}, None, 160),
        envelope("c", None, {**kline("1E+2"), "interval": "5m"}, 170),  # exponent form stays exact
        "{not json",
        json.dumps({"hello": "world"}),
        json.dumps([1, 2]),
        envelope("x", None, kline("1"), 1),
        envelope("c", None, _no_key(), 2),
        envelope("c", None, kline("1,5"), 3),
        envelope("d", None, None, 4),
        envelope("c", None, {**kline("1"), "open_time": "yesterday"}, 5),
        envelope("c", None, {**kline("1"), "interval": "15m", "num_trades": "many"}, 6),  # not a long: null
        json.dumps({"op": "c", "after": kline("2"), "source": {"ts_ms": 1}}),  # no LSN
        json.dumps({"op": "c", "after": {**kline("2"), "interval": "1h", "close_price": 2.25},
                    "source": {"lsn": 7, "ts_ms": 1767323044000}}),  # a number where text is expected
        envelope("r", None, {**kline("8"), "interval": "3m"}, 180, snapshot="incremental"),  # at its window's time
        # a change, then an incremental read of its key whose window is not placed in time: the read is
        # dropped before the collapse, the change is applied
        envelope("c", None, {**kline("11"), "interval": "6h"}, 184),
        envelope("r", None, {**kline("12"), "interval": "6h"}, 185, snapshot="incremental"),
        envelope("r", None, {**kline("8"), "interval": "2h"}, 181, snapshot="last", ts_us=None),  # ts_ms * 1000
        envelope("c", None, {**kline("8"), "interval": "4h"}, 182, ts_us=None, ts_ms=None),  # no source time
        envelope("c", None, {**kline("9"), "open_time": OLD}, 190),  # outside retention: skipped
        envelope("d", {"symbol": "BTCUSDT", "interval": "1m", "open_time": "2025-06-01T00:01:00Z"}, None, 191),
        envelope("r", None, {**kline("9"), "open_time": "2025-06-01T00:02:00Z"}, 192, snapshot="first"),
        envelope("c", None, {**kline("9"), "open_time": "2025-12-03T03:04:06Z"}, 193),  # 0.322 s left: kept
        envelope("c", None, {**kline("9"), "open_time": "2025-12-03T03:04:05.678Z"}, 194),  # 0 s left: skipped
    ],
    BOOK: [
        envelope("c", None, book_level("100.10", "1.0"), 10, "order_book"),
        envelope("c", None, book_level("100.20", "2.0"), 11, "order_book"),
        envelope("d", book_level("100.10", "1.0"), None, 12, "order_book"),
        envelope("c", None, book_level("99.90", "0.5", "2026-01-02T03:04:05Z"), 13, "order_book"),
        # the same millisecond as LSN 11's level: one Cassandra row, the later LSN wins on both paths
        envelope("c", None, book_level("100.20", "2.5", "2026-01-02T03:04:05.123999Z"), 14, "order_book"),
        envelope("r", None, book_level("98.00", "1.0", "2026-01-02T01:00:00Z"), 15, "order_book",
                 snapshot="first"),  # outside retention
        envelope("d", book_level("98.10", "1.0", "2026-01-02T01:00:00Z"), None, 16, "order_book"),  # skipped too
    ],
    TRADES: [
        envelope("c", None, trade(1), 20, "recent_trades"),
        envelope("c", None, trade(2, "0.00001234"), 21, "recent_trades"),
        envelope("u", trade(1), trade(1, "1.75"), 22, "recent_trades"),
        # a trade's time moved within its hour: the same Cassandra row (bucket 03:00), the last LSN wins
        envelope("u", trade(2), {**trade(2, "0.5"), "time": "2026-01-02T03:59:59.999Z"}, 23, "recent_trades"),
        # moved to the next hour: another bucket, another Cassandra row (both written)
        envelope("u", trade(3), {**trade(3), "time": "2026-01-02T04:00:00Z"}, 24, "recent_trades"),
        envelope("c", None, trade(3), 19, "recent_trades"),
        envelope("c", None, {**trade(4), "time": "2026-01-02T02:04:05.678Z"}, 25, "recent_trades",
                 snapshot="incremental"),  # exactly an hour old: skipped
        envelope("d", {**trade(5), "time": "2026-01-02T01:00:00Z"}, None, 26, "recent_trades"),  # skipped
        envelope("d", {**trade(6), "time": "2026-01-02T02:30:00Z"}, None, 27, "recent_trades",
                 ts_us=SOURCE_US + 7),  # inside: written
    ],
}


def _decision(table, change):
    """What the writer makes of a change: op, LSN, source time, write time, the values written (bucket
    included), the change-log key."""
    return (change.op, change.lsn, cql_value("timestamptz", change.source_ts), change.write_time,
            cql_row(table, change.row), change_key(table, change.row))


def _spark_side(spark, table, values):
    topic = f"binance.binance.{table.name}"
    rows = [(topic, 0, offset, value) for offset, value in enumerate(values)]
    df = spark.createDataFrame(rows, "topic string, partition int, offset long, value string")
    ranked = rank_events(drop_unplaced_reads(parse_envelope(df, table), WINDOWS), table)
    bad = {r.kafka_offset: r.error for r in ranked.where("error IS NOT NULL").collect()}
    winners = ranked.where("error IS NULL AND _rank = 1").collect()
    changes, letters = spark_rows(table, topic, winners, WINDOWS)
    assert not letters
    out = {w.kafka_offset: _decision(table, c) for w, c in zip(winners, changes, strict=True)}
    summary = [tuple(r) for r in batch_summary(df).orderBy("topic", "partition").collect()]
    return bad, out, summary


def _stream_events(table, values):
    events = [e for offset, value in enumerate(values) if (e := python_events.parse_event(table, 0, offset, value))]
    events, _ = python_events.drop_unplaced_reads(events, WINDOWS)
    return python_events.collapse(table, events)


def _stream_side(table, values):
    topic = f"binance.binance.{table.name}"
    winners, bad = _stream_events(table, values)
    out = {w.kafka_offset: _decision(table, w.change(table, WINDOWS)) for w in winners}
    writer = RecordingWriter(retention=RETENTION, windows=WINDOWS)
    result = apply_partition(writer, writer.context(), known_tables(), topic, 0,
                             list(enumerate(values)))
    summary = [(result.topic, result.partition, result.events, result.next_offset, result.newest_source_ms)]
    return {e.kafka_offset: e.error for e in bad}, out, summary


@pytest.mark.parametrize("table", list(CORPUS), ids=lambda t: t.name)
def test_the_stream_decides_what_the_reference_decides(spark, table):
    values = CORPUS[table]
    spark_bad, spark_winners, spark_summary = _spark_side(spark, table, values)
    stream_bad, stream_winners, stream_summary = _stream_side(table, values)
    assert stream_bad == spark_bad
    assert stream_winners.keys() == spark_winners.keys()
    for offset, expected in spark_winners.items():
        got = stream_winners[offset]
        assert got[:4] == expected[:4], offset
        assert got[4] == expected[4], offset
        # the same decimal text and scale, not only the same number
        assert {k: str(v) for k, v in got[4].items()} == {k: str(v) for k, v in expected[4].items()}, offset
        assert got[5] == expected[5], offset  # the same change-log key text
    assert stream_summary == spark_summary


@pytest.mark.parametrize("table", list(CORPUS), ids=lambda t: t.name)
def test_the_tasks_write_what_the_reference_decides(spark, table, tmp_path):
    """Spark tasks applying the partition (mapPartitions, the driver's batch context in their closure)
    and a writer handed the reference's decisions write the same statements and values (TTLs
    included), skip the same changes, dead letters first, the change log last."""
    topic = f"binance.binance.{table.name}"
    values = CORPUS[table]
    writer = RecordingWriter(retention=RETENTION)
    context = writer.context()
    df = spark.createDataFrame([(topic, 0, o, v) for o, v in enumerate(values)],
                               "topic string, partition int, offset long, value string")
    path = tmp_path / "written.pickle"
    seed_windows(path, WINDOWS)
    seeded = len(read_records(path))
    results = df.rdd.mapPartitions(partial(apply_partitions, "ks", context,
                                           open_writer=partial(RecordingWriter.to_file, str(path)))).collect()
    by_tasks = read_records(path)[seeded:]

    # the tasks place each read by the newest marker at or below its LSN (snapshot_windows), as the driver did
    lsns = [r.lsn for r in incremental_read_lsns(df).collect()]
    placed = RecordingWriter(windows=WINDOWS).window_times("binance.binance.debezium_signal", lsns)
    winners = collapse_last(drop_unplaced_reads(parse_envelope(df, table), placed), table)
    changes, letters = spark_rows(table, topic, winners.collect(), placed)
    written = writer.write(replace(context, windows=placed), changes, letters)
    by_reference = writer.records

    assert sorted(map(repr, by_tasks)) == sorted(map(repr, by_reference))
    kinds = [what for what, _, _ in by_tasks]
    assert kinds == sorted(kinds, key=["execute", "upsert/delete", "change log"].index)
    [result] = results
    assert (result.upserts, result.deletes, result.dead, result.skipped) == (
        written.upserts, written.deletes, len(letters), written.skipped)
    assert written.skipped > 0 and written.upserts + written.deletes + written.skipped == len(changes)


def test_the_corpus_covers_every_decision(spark):
    bad, winners, _ = _stream_side(KLINES, CORPUS[KLINES])
    assert len(bad) >= 9 and any(w[0] == "d" for w in winners.values())
    assert {w[4]["close_price"] for w in winners.values() if w[0] != "d"} >= {Decimal("1.6"), Decimal("1E+2")}
    # a value of the wrong JSON type is null, as in Spark's from_json
    assert [w[4]["num_trades"] for w in winners.values() if w[4]["interval"] == "15m"] == [None]
    # write times: streamed changes at their commit time, both snapshot kinds, the ts_ms fallback
    write_times = {w[3] for w in winners.values()}
    assert {SOURCE_US, SOURCE_US - 10_000_000, SOURCE_US // 1000 * 1000 - 10_000_000} <= write_times
    # an incremental read at its window's time; one whose window is unknown does not hide the change before it
    assert [w[3] for w in winners.values() if w[4]["interval"] == "3m"] == [WINDOWS[180]]
    assert [(w[1], w[4]["close_price"]) for w in winners.values() if w[4]["interval"] == "6h"] == [
        (184, Decimal("11"))]
    assert "source.ts_ms missing" in bad.values()
    # sub-millisecond times and a trade moved within its hour collapse as Cassandra keys them
    _, book, _ = _stream_side(BOOK, CORPUS[BOOK])
    assert [w[1] for w in book.values() if str(w[4]["price"]) == "100.20"] == [14]
    _, trades, _ = _stream_side(TRADES, CORPUS[TRADES])
    assert sorted((w[4]["trade_id"], w[1]) for w in trades.values()) == [(1, 22), (2, 23), (3, 19), (3, 24), (4, 25),
                                                                          (5, 26), (6, 27)]
