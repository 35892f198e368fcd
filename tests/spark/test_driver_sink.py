"""The driver path (spark/driver_sink.py) decides exactly what the Spark path (spark/envelope.py)
decides, on the same events: errors, the winner per key, the values written, the change-log key
and the batch summary."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from include.tables import TABLES
from spark import driver_sink
from spark.envelope import batch_summary, key_json, parse_envelope, rank_events
from tests.spark.test_envelope import envelope, kline

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


CORPUS = {
    KLINES: [
        envelope("r", None, kline("1.5"), 100),
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
    ],
    BOOK: [
        envelope("c", None, book_level("100.10", "1.0"), 10, "order_book"),
        envelope("c", None, book_level("100.20", "2.0"), 11, "order_book"),
        envelope("d", book_level("100.10", "1.0"), None, 12, "order_book"),
        envelope("c", None, book_level("99.90", "0.5", "2026-01-02T03:04:05Z"), 13, "order_book"),
    ],
    TRADES: [
        envelope("c", None, trade(1), 20, "recent_trades"),
        envelope("c", None, trade(2, "0.00001234"), 21, "recent_trades"),
        envelope("u", trade(1), trade(1, "1.75"), 22, "recent_trades"),
    ],
}


def _spark_side(spark, table, values):
    topic = f"binance.binance.{table.name}"
    rows = [(topic, 0, offset, value) for offset, value in enumerate(values)]
    df = spark.createDataFrame(rows, "topic string, partition int, offset long, value string")
    ranked = rank_events(parse_envelope(df, table), table)
    bad = {r.kafka_offset: r.error for r in ranked.where("error IS NOT NULL").collect()}
    winners = ranked.where("error IS NULL AND _rank = 1").select("*", key_json(table).alias("_key")).collect()
    out = {}
    for w in winners:
        values = {}
        for c in table.columns:
            v = w[c.name]
            if v is not None and c.type == "numeric":
                v = Decimal(v)
            elif isinstance(v, datetime):
                v = v.replace(tzinfo=UTC, microsecond=v.microsecond // 1000 * 1000)
            values[c.name] = v
        out[w.kafka_offset] = (w.cdc_op, w.cdc_lsn, w.cdc_source_ts.replace(tzinfo=UTC), values, w._key)
    summary = [tuple(r) for r in batch_summary(df).orderBy("topic", "partition").collect()]
    return bad, out, summary


def _driver_side(table, values):
    topic = f"binance.binance.{table.name}"
    events = [e for offset, value in enumerate(values) if (e := driver_sink.parse_event(table, 0, offset, value))]
    winners, bad = driver_sink.collapse(table, events)
    out = {w.kafka_offset: (w.cdc_op, w.cdc_lsn, w.cdc_source_ts, w.row, driver_sink.key_json(table, w))
           for w in winners}

    class Record:
        def __init__(self, offset, value):
            self.topic, self.partition, self.offset, self.value = topic, 0, offset, value

    summary = [(s.topic, s.partition, s.events, s.next_offset, s.newest_source_ms)
               for s in driver_sink.summarize([Record(o, v) for o, v in enumerate(values)])]
    return {e.kafka_offset: e.error for e in bad}, out, summary


@pytest.mark.parametrize("table", list(CORPUS), ids=lambda t: t.name)
def test_both_paths_decide_the_same(spark, table):
    values = CORPUS[table]
    spark_bad, spark_winners, spark_summary = _spark_side(spark, table, values)
    driver_bad, driver_winners, driver_summary = _driver_side(table, values)
    assert driver_bad == spark_bad
    assert driver_winners.keys() == spark_winners.keys()
    for offset, expected in spark_winners.items():
        got = driver_winners[offset]
        assert got[:3] == expected[:3], offset
        assert got[3] == expected[3], offset
        # the same decimal text and scale, not only the same number
        assert {k: str(v) for k, v in got[3].items()} == {k: str(v) for k, v in expected[3].items()}, offset
        assert got[4] == expected[4], offset  # the same change-log key text
    assert driver_summary == spark_summary


def test_the_corpus_covers_every_decision(spark):
    bad, winners, _ = _driver_side(KLINES, CORPUS[KLINES])
    assert len(bad) >= 8 and any(w[0] == "d" for w in winners.values())
    assert {w[3]["close_price"] for w in winners.values() if w[0] != "d"} >= {Decimal("1.6"), Decimal("1E+2")}
    # a value of the wrong JSON type is null, as in Spark's from_json
    assert [w[3]["num_trades"] for w in winners.values() if w[3]["interval"] == "15m"] == [None]
