"""spark/writer.py without Cassandra: the CQL it prepares, the values it binds, the order it writes
in, and a Spark task's use of it. A fake session records the calls (unit tests only)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

from pyspark.sql import Row

from include.tables import TABLES
from spark import writer as writer_module
from spark.writer import Change, DeadLetter, Offset, Write, cql_row, cql_value, partition_groups, write_partition
from tests.spark.fakes import NOW, RecordingWriter

KLINES = TABLES["klines"]
TRADES = TABLES["recent_trades"]
OPEN = datetime(2026, 1, 2, 3, 4, tzinfo=UTC)


def kline_row(close: str = "1.50", open_time: datetime = OPEN) -> dict:
    return {"symbol": "BTCUSDT", "interval": "1m", "open_time": open_time, "open_price": "1", "high_price": "2",
            "low_price": "0.00001234", "close_price": close, "volume": "1E+2",
            "close_time": open_time + timedelta(seconds=59.999), "quote_volume": "3", "num_trades": 7}


def test_values_are_converted_once_and_exactly():
    assert cql_value("numeric", "1E+2") == Decimal("1E+2") and str(cql_value("numeric", "0.10")) == "0.10"
    assert cql_value("numeric", None) is None and cql_value("bigint", 7) == 7 and cql_value("text", "x") == "x"
    # naive datetimes (what PySpark hands back) are UTC; aware ones are moved to UTC; floored to the ms
    assert cql_value("timestamptz", datetime(2026, 1, 2, 3, 4, 5, 678999)) == datetime(2026, 1, 2, 3, 4, 5, 678000,
                                                                                       tzinfo=UTC)
    paris = datetime(2026, 1, 2, 4, 4, 5, 1500, tzinfo=timezone(timedelta(hours=1)))
    moved = cql_value("timestamptz", paris)
    assert moved == datetime(2026, 1, 2, 3, 4, 5, 1000, tzinfo=UTC) and moved.tzinfo is UTC
    row = cql_row(KLINES, {"symbol": "BTCUSDT"})
    assert list(row) == KLINES.column_names and row["close_price"] is None


def test_statements_are_prepared_once_at_local_quorum():
    from cassandra import ConsistencyLevel

    w = RecordingWriter("binance_test")
    assert w.upsert_statement(KLINES) is w.upsert_statement(KLINES)
    w.delete_statement(KLINES)
    w.change_log_statement()
    w.dead_letter_statement()
    assert w.session.prepared == [
        'INSERT INTO "binance_test"."klines" ("symbol", "interval", "open_time", "open_price", "high_price", '
        '"low_price", "close_price", "volume", "close_time", "quote_volume", "num_trades", "cdc_op", '
        '"cdc_source_ts", "cdc_lsn", "cdc_written_at") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) '
        "USING TIMESTAMP ?",
        'DELETE FROM "binance_test"."klines" USING TIMESTAMP ? WHERE "symbol" = ? AND "interval" = ? '
        'AND "open_time" = ?',
        'INSERT INTO "binance_test".changed_rows (table_name, bucket, key, cdc_lsn) VALUES (?, ?, ?, ?)',
        'INSERT INTO "binance_test".dead_letters (topic, partition, offset, raw_value, error, recorded_at) '
        "VALUES (?, ?, ?, ?, ?, ?)",
    ]
    assert all(s.consistency_level == ConsistencyLevel.LOCAL_QUORUM for s in w._prepared.values())


def test_upserts_and_deletes_bind_the_lsn_as_write_time():
    w = RecordingWriter()
    source = datetime(2026, 1, 2, 3, 4, 4, tzinfo=UTC)
    upsert, delete = w.data_writes([
        Change(KLINES, "u", 300, source, kline_row()),
        Change(KLINES, "d", 400, source, {"symbol": "BTCUSDT", "interval": "1m", "open_time": OPEN}),
    ], NOW)
    assert upsert.partition == delete.partition == ("klines", "BTCUSDT", "1m")
    assert upsert.values == ("BTCUSDT", "1m", OPEN, Decimal("1"), Decimal("2"), Decimal("0.00001234"),
                             Decimal("1.50"), Decimal("1E+2"), OPEN + timedelta(seconds=59.999), Decimal("3"), 7,
                             "u", source, 300, NOW, 300)
    assert delete.statement.cql.startswith("DELETE") and delete.values == (400, "BTCUSDT", "1m", OPEN)


def test_one_write_is_dead_letters_then_rows_then_the_change_log():
    w = RecordingWriter()
    changes = [Change(TRADES, "c", 20 + i, None, {"symbol": "BTCUSDT", "trade_id": i, "price": "1.5", "qty": "1",
                                                   "quote_qty": "1.5", "time": OPEN, "is_buyer_maker": True})
               for i in range(3)]
    w.write(changes, [DeadLetter("binance.binance.recent_trades", 0, 9, "{not json", "not a Debezium change event")])
    kinds = [what for what, _, _ in w.records]
    assert kinds == ["execute", "upsert/delete", "upsert/delete", "upsert/delete", "change log", "change log",
                     "change log"]
    assert w.records[0][2] == ("binance.binance.recent_trades", 0, 9, "{not json", "not a Debezium change event", NOW)
    assert [r[2][-2] for r in w.records[1:4]] == [NOW] * 3  # cdc_written_at: when the batch is written
    bucket = NOW.replace(second=0, microsecond=0)
    assert [r[2] for r in w.records[4:]] == [
        ("recent_trades", bucket, f'{{"symbol":"BTCUSDT","trade_id":{i}}}', 20 + i) for i in range(3)]


def test_writes_are_grouped_by_partition_into_bounded_batches():
    writes = [Write(("t", i % 2), None, (i,)) for i in range(7)]
    groups = partition_groups(writes, size=2)
    assert [[w.values[0] for w in g] for g in groups] == [[0, 2], [4, 6], [1, 3], [5]]


def test_progress_binds_offsets_as_their_own_write_time():
    w = RecordingWriter()
    newest = datetime(2026, 1, 2, 3, 4, 4, tzinfo=UTC)
    w.record_progress("q", 5, 12, 340, newest, [Offset("binance.binance.klines", 0, 10, newest),
                                                Offset("binance.binance.debezium_heartbeat", 0, 3, None)],
                      "host", 99, NOW)
    [progress, with_ts, without_ts] = w.records
    assert "stream_progress" in progress[1] and progress[2] == ("q", NOW, 5, 12, 340, newest, "host", 99)
    assert with_ts[2] == ("q", "binance.binance.klines", 0, 10, newest, NOW, 10)
    assert "newest_source_ts" not in without_ts[1]
    assert without_ts[2] == ("q", "binance.binance.debezium_heartbeat", 0, 3, NOW, 3)


class Counter:
    def __init__(self) -> None:
        self.value = 0

    def add(self, n: int) -> None:
        self.value += n


def test_a_task_writes_its_partition_in_chunks_each_complete(monkeypatch):
    monkeypatch.setattr(writer_module, "TASK_CHUNK", 2)
    opened: list[RecordingWriter] = []

    def open_writer(keyspace: str) -> RecordingWriter:
        opened.append(RecordingWriter(keyspace))
        return opened[-1]

    def event(offset: int, op: str = "c", error: str | None = None) -> Row:
        return Row(**kline_row(open_time=OPEN + timedelta(minutes=offset)), cdc_op=op, cdc_lsn=100 + offset,
                   cdc_source_ts=datetime(2026, 1, 2, 3, 4, 4), kafka_partition=0, kafka_offset=offset,
                   raw_value="{}", error=error)

    rows = [event(0), event(1, error="no after"), event(2, "d"), event(3)]
    counters = (Counter(), Counter(), Counter())
    write_partition("ks", "klines", "binance.binance.klines", counters, iter(rows), open_writer=open_writer)
    [w] = opened
    assert w.closed
    kinds = [what for what, _, _ in w.records]
    # each chunk of two rows is written in full before the next: dead letter, rows, change log
    assert kinds == ["execute", "upsert/delete", "change log", "upsert/delete", "upsert/delete", "change log",
                     "change log"]
    assert [c.value for c in counters] == [2, 1, 1]
    # the source time came naive from Spark: written as UTC
    assert w.records[1][2][12] == datetime(2026, 1, 2, 3, 4, 4, tzinfo=UTC)
