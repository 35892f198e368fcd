"""include/cdc/events.py: the change-log key (both ways, exact bytes), the decimal check, and every
error a dead letter can carry, reached by both write paths."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from include.cdc import events
from include.tables import TABLES
from spark import python_events
from spark.envelope import parse_envelope
from spark.writer import change_key, cql_value
from tests.spark.test_envelope import envelope, frame, kline

KLINES = TABLES["klines"]
BOOK = TABLES["order_book"]
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
    book = {"symbol": "ETHUSDT", "captured_at": datetime(2026, 1, 2, 3, 4, 5, 678999, tzinfo=UTC), "update_id": 9,
            "side": "bid", "price": "3000.01000000", "quantity": "ignored"}
    assert events.encode_key(BOOK, book) == (
        '{"symbol":"ETHUSDT","captured_at":1767323045678,"update_id":9,"side":"bid","price":"3000.01000000"}')
    paris = timezone(timedelta(hours=1))
    kline_key = {"symbol": "BTCUSDT", "interval": "1m", "open_time": datetime(2026, 1, 2, 4, 4, tzinfo=paris)}
    assert events.encode_key(KLINES, kline_key) == '{"symbol":"BTCUSDT","interval":"1m","open_time":1767323040000}'
    assert events.decode_key(KLINES, '{"symbol":"BTCUSDT","interval":"1m","open_time":1767323040000}') == (
        "BTCUSDT", "1m", datetime(2026, 1, 2, 3, 4, tzinfo=UTC))


def test_keys_refuse_what_would_change_their_bytes():
    naive = {"symbol": "BTCUSDT", "interval": "1m", "open_time": datetime(2026, 1, 2, 3, 4)}
    with pytest.raises(ValueError, match="naive"):
        events.encode_key(KLINES, naive)
    with pytest.raises(TypeError, match="order_book.price"):
        events.encode_key(BOOK, {"symbol": "ETHUSDT", "captured_at": SAMPLE["timestamptz"], "update_id": 9,
                                 "side": "bid", "price": Decimal("0.00000001")})
    # the writer's key: a naive (Spark) time read as UTC, a decimal's text kept
    assert change_key(KLINES, {**naive, "open_time": datetime(2026, 1, 2, 3, 4)}) == (
        '{"symbol":"BTCUSDT","interval":"1m","open_time":1767323040000}')


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
    events.DELETE_WITHOUT_BEFORE: envelope("d", None, None, 2),
    events.NO_AFTER: envelope("u", kline("1"), None, 3),
    events.key_column_missing("symbol"): envelope("c", None, _no_symbol(), 4),
    events.not_a_timestamp("close_time"): envelope("c", None, {**kline("1"), "close_time": "soon"}, 5),
    events.not_a_decimal("close_price"): envelope("c", None, kline("1,5"), 6),
}


def test_every_error_text_is_reached_by_both_paths(spark):
    assert events.unknown_op("x") == "unknown op x"
    assert events.missing_row("d") == events.DELETE_WITHOUT_BEFORE and events.missing_row("c") == events.NO_AFTER
    values = list(REASONS.values())
    by_spark = [r.error for r in parse_envelope(frame(spark, values), KLINES).orderBy("kafka_offset").collect()]
    by_driver = [python_events.parse_event(KLINES, 0, o, v).error for o, v in enumerate(values)]
    assert by_spark == by_driver == list(REASONS)
    assert list(REASONS) == [
        "not a Debezium change event (unparseable JSON or no op)", "unknown op x", "source.lsn missing",
        "delete without before", "no after", "key column symbol missing", "close_time is not a timestamp",
        "close_price is not a decimal"]
