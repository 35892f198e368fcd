"""The loader's pure parts: rendering for COPY, the upsert statement, de-duplication."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from include.binance.models import Kline, Trade
from include.loader import (
    _ChunkStream,
    _direct_insert_key,
    _TimestampText,
    copy_text,
    dedupe,
    upsert_sql,
)
from include.tables import TABLES

T0 = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)


def _trade(trade_id: int, price: str = "0.00001234") -> Trade:
    return Trade("BTCUSDT", trade_id, Decimal(price), Decimal("12.00000000"), Decimal("0.00014808"), T0, True)


def test_copy_text_keeps_decimals_exact_times_in_utc_and_marks_nulls():
    lines = "".join(copy_text(TABLES["recent_trades"], [_trade(1), _trade(2, "64000.12345678")], rows_per_chunk=1))
    rows = [line.split("\t") for line in lines.splitlines()]
    assert rows[0] == ["BTCUSDT", "1", "0.00001234", "12.00000000", "0.00014808", "2026-01-02 03:04:05.678000+00", "t"]
    assert rows[1][2] == "64000.12345678"
    kline = Kline("BTCUSDT", "1m", T0, Decimal("1E+2"), *(Decimal("1"),) * 4, T0, None, 3)
    fields = "".join(copy_text(TABLES["klines"], [kline])).rstrip("\n").split("\t")
    assert fields[3] == "1E+2" and fields[-2] == "\\N"


def test_copy_text_escapes_what_the_text_format_reserves():
    odd = Trade("A\tB\\C\nD\rE", 1, Decimal(1), Decimal(1), Decimal(1), T0, False)
    line = "".join(copy_text(TABLES["recent_trades"], [odd]))
    assert len(line.split("\t")) == 7  # the symbol's tab is escaped, not a field separator
    assert line.startswith("A\\tB\\\\C\\nD\\rE\t") and line.count("\n") == 1


@pytest.mark.parametrize("moment", [
    T0,
    datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(2026, 1, 2, 5, 4, 5, 1, tzinfo=timezone(timedelta(hours=2))),  # another offset: same instant in UTC
])
def test_timestamps_render_like_str_in_utc(moment):
    text = _TimestampText()
    expected = moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f") + "+00"
    assert text(moment) == expected
    assert text(moment) == expected  # from the per-second cache
    assert text(moment.astimezone(UTC).replace(tzinfo=None)) == expected  # naive is read as UTC


def test_chunk_stream_reads_in_pieces_of_any_size():
    records = [_trade(i) for i in range(100)]
    whole = "".join(copy_text(TABLES["recent_trades"], records))
    stream = _ChunkStream(copy_text(TABLES["recent_trades"], records, rows_per_chunk=7))
    pieces = []
    while chunk := stream.read(33):
        pieces.append(chunk)
    assert "".join(pieces) == whole and whole.count("\n") == 100
    assert _ChunkStream(copy_text(TABLES["recent_trades"], records)).read() == whole


def test_only_immutable_id_keyed_tables_are_copied_straight_in():
    assert _direct_insert_key(TABLES["recent_trades"]) == ("symbol", "trade_id")
    assert _direct_insert_key(TABLES["order_book"]) == ("symbol", "update_id")
    for name in ("latest_prices", "daily_ticker", "klines"):
        assert _direct_insert_key(TABLES[name]) is None


def test_dedupe_keeps_the_last_record_per_key():
    kept = dedupe(TABLES["recent_trades"], [_trade(1, "1"), _trade(2, "2"), _trade(1, "3")])
    assert sorted((t.trade_id, t.price) for t in kept) == [(1, Decimal("3")), (2, Decimal("2"))]


def test_upsert_updates_only_when_a_value_changed():
    sql = upsert_sql(TABLES["klines"], "stage_klines")
    assert 'ON CONFLICT ("symbol", "interval", "open_time") DO UPDATE SET' in sql
    assert 't."close_price" IS DISTINCT FROM EXCLUDED."close_price"' in sql
    # key columns are never updated
    assert '"open_time" = EXCLUDED' not in sql


def test_immutable_trades_are_never_compared_or_updated():
    sql = upsert_sql(TABLES["recent_trades"], "stage_recent_trades")
    assert 'ON CONFLICT ("symbol", "trade_id") DO NOTHING' in sql


def test_an_order_book_snapshot_fetched_twice_keeps_its_first_capture_time():
    # captured_at is part of Cassandra's key: updating it would leave the old row in Cassandra
    sql = upsert_sql(TABLES["order_book"], "stage_order_book")
    assert 'ON CONFLICT ("symbol", "update_id", "side", "price") DO NOTHING' in sql


def test_record_fields_match_table_columns():
    kline = Kline("BTCUSDT", "1m", T0, *(Decimal("1"),) * 5, T0, Decimal("1"), 3)
    assert "".join(copy_text(TABLES["klines"], [kline])).split("\t")[:3] == ["BTCUSDT", "1m",
                                                                            "2026-01-02 03:04:05.678000+00"]


def test_a_record_lacking_a_column_is_refused_naming_it():
    with pytest.raises(ValueError, match=r"Trade has no field\(s\) \['interval'"):
        list(copy_text(TABLES["klines"], [_trade(1)]))
