"""Debezium signals (include/cdc/signals.py) and the connector settings they need (include/cdc/setup.py):
the execute-snapshot JSON, the quoting of every value in its filter, the split under the signal
table's 2,048 characters, the ids; the signal table in the publication and the connector config."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest

from include.cdc import setup, signals
from include.cdc.signals import RowRange
from include.names import CONNECTOR, SIGNAL_TABLE

T0 = datetime(2026, 1, 2, 3, 0, tzinfo=UTC)


def test_a_range_filter_names_the_prefix_and_the_half_open_time_range():
    r = RowRange("klines", ("BTCUSDT", "1m"), T0, T0 + timedelta(days=1))
    assert signals.range_filter(r) == (
        "\"symbol\" = 'BTCUSDT' AND \"interval\" = '1m' AND \"open_time\" >= '2026-01-02 03:00:00+00:00' "
        "AND \"open_time\" < '2026-01-03 03:00:00+00:00'")


def test_values_are_quoted_literals_never_sql():
    evil = "X' OR 1=1 --"
    r = RowRange("recent_trades", (evil,), T0, T0 + timedelta(hours=1))
    condition = signals.range_filter(r)
    assert "\"symbol\" = 'X'' OR 1=1 --'" in condition
    # every quote of the value is doubled: the literal closes exactly where it should
    literal = condition.split(" AND ")[0].split(" = ", 1)[1]
    assert literal.startswith("'") and literal.endswith("'") and "''" in literal[1:-1]
    assert re.fullmatch(r"'(?:[^']|'')*'", literal)
    assert signals.sql_literal("a\\b") == "'a\\b'"  # standard_conforming_strings: a backslash is a backslash
    with pytest.raises(signals.SignalError, match="NUL"):
        signals.sql_literal("a\x00b")
    with pytest.raises(signals.SignalError, match="timezone-aware"):
        signals.sql_literal(datetime(2026, 1, 2))
    with pytest.raises(signals.SignalError, match="text and times"):
        signals.sql_literal(5)


def test_times_in_other_zones_are_written_in_utc():
    ist = timezone(timedelta(hours=5, minutes=30))
    assert signals.sql_literal(datetime(2026, 1, 2, 8, 30, tzinfo=ist)) == "'2026-01-02 03:00:00+00:00'"


def test_a_bad_range_is_refused():
    with pytest.raises(signals.SignalError, match="prefix names"):
        signals.range_filter(RowRange("klines", ("BTCUSDT",), T0, T0 + timedelta(days=1)))
    with pytest.raises(signals.SignalError, match="empty time range"):
        signals.range_filter(RowRange("latest_prices", ("BTCUSDT",), T0, T0))


def test_the_signal_is_debeziums_execute_snapshot_json_for_one_table():
    r = RowRange("latest_prices", ("ETH'USDT",), T0, T0 + timedelta(minutes=1))
    [(table, data)] = signals.snapshot_signals([r])
    assert table == "latest_prices"
    parsed = json.loads(data)
    assert parsed == {
        "data-collections": ["binance.latest_prices"],
        "type": "incremental",
        "additional-conditions": [{"data-collection": r"binance\.latest_prices",
                                   "filter": f"(({signals.range_filter(r)}))"}],
    }
    # the filter survives the JSON layer as written: a quote doubled for SQL, nothing escaped twice
    assert "\"symbol\" = 'ETH''USDT'" in parsed["additional-conditions"][0]["filter"]
    # Debezium reads data-collection as a regular expression, matched whole
    assert re.fullmatch(parsed["additional-conditions"][0]["data-collection"], "binance.latest_prices")
    assert not re.fullmatch(parsed["additional-conditions"][0]["data-collection"], "binanceXlatest_prices")


def test_ranges_of_one_table_are_ored_and_split_under_the_data_limit():
    ranges = [RowRange("order_book", (f"SYM{i:03d}USDT",), T0 + timedelta(hours=i), T0 + timedelta(hours=i + 1))
              for i in range(40)]
    ranges.append(RowRange("klines", ("BTCUSDT", "30m"), T0, T0 + timedelta(days=1)))
    out = signals.snapshot_signals(ranges)
    assert {t for t, _ in out} == {"order_book", "klines"}
    book = [json.loads(d) for t, d in out if t == "order_book"]
    assert len(book) > 1 and all(len(d) <= signals.MAX_DATA for _, d in out)
    filters = [b["additional-conditions"][0]["filter"] for b in book]
    # each filter is one parenthesised OR: Debezium appends it after `<chunk bounds> AND` as it is
    assert all(f.startswith("((") and f.endswith("))") for f in filters)
    # every range is asked for, once
    ored = " OR ".join(f[1:-1] for f in filters)
    assert [f"({signals.range_filter(r)})" for r in ranges[:40]] == ored.split(" OR ")


def test_an_or_of_ranges_stays_inside_the_chunk_bounds_debezium_puts_before_it():
    """Debezium builds `WHERE <bounds> AND <filter>`: with the filter parenthesised, AND binds the
    bounds to every range (checked here by evaluating the SQL's boolean structure in Python)."""
    two = [RowRange("latest_prices", ("A",), T0, T0 + timedelta(minutes=1)),
           RowRange("latest_prices", ("B",), T0, T0 + timedelta(minutes=1))]
    [(_, data)] = signals.snapshot_signals(two)
    where = "bounds AND " + json.loads(data)["additional-conditions"][0]["filter"]
    names = {"bounds": False, signals.range_filter(two[0]): True, signals.range_filter(two[1]): True}
    expr = where
    for text, value in sorted(names.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(text, str(value))
    assert eval(expr.replace("AND", "and").replace("OR", "or")) is False  # noqa: S307 - booleans only


def test_whole_tables_have_no_condition():
    assert [json.loads(d) for _, d in signals.whole_table_signals(["klines"])] == [
        {"data-collections": ["binance.klines"], "type": "incremental"}]


def test_signal_ids_say_who_asked_and_when_within_the_column():
    sid = signals.signal_id("repair", datetime(2026, 1, 2, 3, 4, 5, 999, tzinfo=UTC), "00ff")
    assert sid == "repair-20260102T030405-00ff"
    assert signals.signal_time(sid) == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert len(signals.signal_id("resnapshot", T0)) <= signals.MAX_ID
    assert signals.signal_time("7a6c9d2e-1111-2222-3333-444455556666-open") is None
    with pytest.raises(signals.SignalError):
        signals.signal_id("Repair!", T0)


class _Cursor:
    def __init__(self, log, rows=()):
        self.log, self.rows = log, list(rows)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def execute(self, sql, params=None):
        self.log.append((sql, params))

    def fetchall(self):
        return self.rows


class _Pg:
    def __init__(self, rows=()):
        self.log, self.commits, self.rows = [], 0, rows

    def cursor(self):
        return _Cursor(self.log, self.rows)

    def commit(self):
        self.commits += 1


def test_insert_commits_each_signal_and_prune_keeps_debeziums_and_recent_ones():
    pg = _Pg()
    ids = signals.insert(pg, [("klines", "{}"), ("order_book", "{}")], "repair", T0)
    assert len(ids) == 2 and pg.commits == 2 and all(i.startswith("repair-20260102T030000-") for i in ids)
    assert all(f"binance.\"{SIGNAL_TABLE}\"" in sql.replace('"binance"', "binance") for sql, _ in pg.log)

    old, new = signals.signal_id("repair", T0 - timedelta(days=8)), signals.signal_id("repair", T0)
    pg = _Pg(rows=[(old,), (new,), ("9d1c-uuid-open",)])
    assert signals.prune(pg, T0 - timedelta(days=7)) == 1
    assert pg.log[-1][1] == ([old],)


# --------------------------------------------------------------------------- the connector's side


def test_the_signal_table_is_captured_and_named_in_the_connector_config():
    assert f"binance.{SIGNAL_TABLE}" in setup.captured_tables()
    config = setup.connector_config(CONNECTOR)
    assert config["signal.data.collection"] == f"binance.{SIGNAL_TABLE}"
    assert f"binance.{SIGNAL_TABLE}" in config["table.include.list"].split(",")
    assert config["signal.enabled.channels"] == "source"
    assert config["incremental.snapshot.watermarking.strategy"] == "insert_delete"
    assert config["snapshot.mode"] == "initial"
    # the incremental re-snapshot registers it once streaming only
    assert setup.connector_config(CONNECTOR, setup.STREAM_ONLY)["snapshot.mode"] == "no_data"
