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
    stage,
    upsert_sql,
)
from include.tables import BRIDGE_TABLES, TABLES

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


# --------------------------------------------------------------------------- COPY from an iterator


def _counting(records: list, seen: list[int]):
    """`records` as a generator that counts how many were taken."""
    for rec in records:
        seen[0] += 1
        yield rec


@pytest.mark.parametrize("chunk", [1, 7, 2000])
def test_an_iterator_renders_exactly_what_a_list_renders(chunk):
    records = [_trade(i, f"{i}.5") for i in range(50)]
    as_list = "".join(copy_text(TABLES["recent_trades"], records, rows_per_chunk=chunk))
    assert "".join(copy_text(TABLES["recent_trades"], iter(records), rows_per_chunk=chunk)) == as_list
    assert "".join(copy_text(TABLES["recent_trades"], _counting(records, [0]), rows_per_chunk=chunk)) == as_list
    assert list(copy_text(TABLES["recent_trades"], iter([]))) == []


def test_an_iterator_is_read_one_chunk_at_a_time():
    seen = [0]
    chunks = copy_text(TABLES["recent_trades"], _counting([_trade(i) for i in range(100)], seen), rows_per_chunk=10)
    assert seen[0] == 0  # nothing is read before the COPY asks
    first = next(chunks)
    assert seen[0] == 10 and first.count("\n") == 10
    next(chunks)
    assert seen[0] == 20


def test_an_iterator_lacking_a_column_is_refused_naming_it():
    with pytest.raises(ValueError, match=r"Trade has no field\(s\) \['interval'"):
        list(copy_text(TABLES["klines"], iter([_trade(1)])))


class _CopyCursor:
    """A psycopg2-like cursor whose COPY reads the stream as the server would, 8 KiB at a time, and
    records how far the records read ran ahead of the rows received."""

    def __init__(self, seen: list[int]) -> None:
        self.seen = seen
        self.sql: list[str] = []
        self.received = 0
        self.ahead = 0

    def execute(self, sql, params=None):
        self.sql.append(sql)

    def copy_expert(self, sql, stream):
        self.sql.append(sql)
        while data := stream.read(8192):
            self.received += data.count("\n")
            self.ahead = max(self.ahead, self.seen[0] - self.received)


def test_stage_streams_an_iterator_into_one_copy_holding_a_chunk_or_two():
    seen = [0]
    cur = _CopyCursor(seen)
    name = stage(cur, TABLES["recent_trades"], _counting([_trade(i) for i in range(10_000)], seen), name="s")
    assert name == "s" and cur.received == seen[0] == 10_000
    assert sum(s.startswith("COPY") for s in cur.sql) == 1
    # the default chunk is 2,000 rows: the records read but not yet sent stay within one chunk and a partial one
    assert cur.ahead <= 2 * 2000


# --------------------------------------------------------------------------- the bridge's cdc_lsn guard


def test_a_versioned_upsert_never_replaces_a_row_holding_a_higher_version():
    sql = upsert_sql(BRIDGE_TABLES["klines"], '"stage_klines"', "cassandra", version_column="cdc_lsn")
    changed = " OR ".join(f't."{c}" IS DISTINCT FROM EXCLUDED."{c}"' for c in BRIDGE_TABLES["klines"].value_columns)
    assert f'WHERE ({changed}) AND (t."cdc_lsn" IS NULL OR EXCLUDED."cdc_lsn" >= t."cdc_lsn")' in sql
    # of several staged versions of one key, the highest is the one offered
    assert ('FROM (SELECT DISTINCT ON ("symbol", "interval", "open_time") ' in sql
            and 'FROM "stage_klines" ORDER BY "symbol", "interval", "open_time", "cdc_lsn" DESC NULLS LAST) AS newest'
            in sql)
    assert 'INSERT INTO "cassandra"."klines" AS t' in sql


def test_the_source_load_has_no_version_guard():
    sql = upsert_sql(TABLES["klines"], "stage_klines")
    assert "cdc_lsn" not in sql and "DISTINCT ON" not in sql
