"""Every Grafana panel's SQL runs on the real bridge schema as the Grafana role, and returns what its
visualization needs. The market dashboard reads the bridge schema, the health dashboard schema
pipeline_health.

Grafana expands its macros and variables before Postgres sees a query; `expand` below does the same
for the ones the dashboards use. Fixture rows (symbols GRAFTEST*, health rows named graftest*) are
written as the pipeline's owner and removed afterwards.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg2
import psycopg2.errors
import pytest

from grafana import generate
from include.health.checks import HEALTH_TABLES
from include.names import BRIDGE_SCHEMA, HEALTH_SCHEMA
from include.schema import postgres as migrations
from include.tables import BRIDGE_TABLES

pytestmark = pytest.mark.integration

SYMBOL = "GRAFTESTUSDT"
OTHER = "GRAFTEST2USDT"
SYMBOLS = (SYMBOL, OTHER)
KLINE_INTERVAL = "1m"
# the dashboard interval Grafana would pick ($__interval) for the test's time range
INTERVAL = "1m"
LATENCY = timedelta(milliseconds=1500)

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_GROUP = re.compile(r"\$__timeGroup(Alias)?\(\s*([^,()]+?)\s*,\s*([^,()]+?)\s*\)")
_COLUMN_MACRO = re.compile(r"\$__(timeFilter|unixEpochFilter)\(\s*([^()]+?)\s*\)")
_VARIABLE = re.compile(r"\$\{([A-Za-z_]\w*)\}|\$([A-Za-z_]\w*)")


# --------------------------------------------------------------------------- Grafana's macros


def _seconds(interval: str) -> float:
    m = re.fullmatch(r"(\d+)(ms|s|m|h|d|w)", interval.strip().strip("'"))
    if not m:
        raise ValueError(f"not a Grafana interval: {interval!r}")
    return int(m.group(1)) * _UNITS[m.group(2)]


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def expand(sql: str, start: datetime, end: datetime, variables: dict[str, str | list[str]],
           interval: str = INTERVAL) -> str:
    """What Grafana's PostgreSQL datasource sends for `sql` with this time range and these variables.

    A list is a multi-value variable (each value quoted, comma-separated, as for `IN (...)`); a string
    is a single value, inserted as it is with quotes doubled.
    """
    frm, to = (t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") for t in (start, end))

    def group(m: re.Match[str]) -> str:
        column, bucket = m.group(2), m.group(3)
        seconds = _seconds(interval if bucket == "$__interval" else bucket)
        expr = f"date_bin('{seconds:g} seconds', {column}, TIMESTAMPTZ '2000-01-01 00:00:00+00')"
        return f'{expr} AS "time"' if m.group(1) else expr

    def column_macro(m: re.Match[str]) -> str:
        if m.group(1) == "timeFilter":
            return f"{m.group(2)} BETWEEN '{frm}' AND '{to}'"
        return f"{m.group(2)} >= {int(start.timestamp())} AND {m.group(2)} <= {int(end.timestamp())}"

    def variable(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name not in variables:
            raise KeyError(f"the query uses ${name}, which the test gives no value")
        value = variables[name]
        return ",".join(_literal(v) for v in value) if isinstance(value, list) else value.replace("'", "''")

    out = _GROUP.sub(group, sql)
    out = _COLUMN_MACRO.sub(column_macro, out)
    out = out.replace("$__timeFrom()", f"'{frm}'").replace("$__timeTo()", f"'{to}'")
    out = out.replace("$__interval_ms", str(int(_seconds(interval) * 1000))).replace("$__interval", interval)
    leftover = re.findall(r"\$__\w+", out)
    assert not leftover, f"macros the test does not expand: {leftover}"
    out = _VARIABLE.sub(variable, out)
    assert "$" not in out, f"unexpanded $ left in:\n{out}"
    return out


def test_expand_follows_grafana():
    start, end = datetime(2024, 1, 2, 3, 0, tzinfo=UTC), datetime(2024, 1, 2, 4, 0, tzinfo=UTC)
    sql = ("SELECT $__timeGroupAlias(time, $__interval), x FROM t WHERE $__timeFilter(time) AND s IN ($symbol) "
           "AND k = '${one}' AND time <= $__timeTo()")
    assert expand(sql, start, end, {"symbol": ["A", "B'C"], "one": "x'y"}, interval="5m") == (
        "SELECT date_bin('300 seconds', time, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS \"time\", x FROM t "
        "WHERE time BETWEEN '2024-01-02T03:00:00Z' AND '2024-01-02T04:00:00Z' AND s IN ('A','B''C') "
        "AND k = 'x''y' AND time <= '2024-01-02T04:00:00Z'"
    )
    with pytest.raises(KeyError):
        expand("SELECT $nothing", start, end, {})


# --------------------------------------------------------------------------- fixtures


def _rows(now: datetime) -> dict[str, list[dict[str, Any]]]:
    """A few rows per bridge table, for the GRAFTEST symbols, all inside the last hour."""

    def cdc(ts: datetime, lsn: int) -> dict[str, Any]:
        return {"cdc_op": "c", "cdc_source_ts": ts, "cdc_lsn": lsn, "cdc_written_at": ts + LATENCY}

    def ago(minutes: float) -> datetime:
        return now - timedelta(minutes=minutes)

    prices = [(SYMBOL, "100.5", ago(10)), (SYMBOL, "101.25", ago(2)), (OTHER, "0.123", ago(3))]
    tickers = [  # (symbol, open, last, close_time): the newest per symbol counts
        (SYMBOL, "100", "90", ago(30)), (SYMBOL, "100", "110", ago(1)), (OTHER, "2", "1.9", ago(1)),
    ]
    trades = [(SYMBOL, i, "0.5", "50.25", ago(5 - i * 0.5)) for i in range(1, 7)]
    trades += [(OTHER, i, "10", "1.23", ago(4 - i)) for i in range(1, 4)]
    # (symbol, id, qty, buyer is maker, time): taker buys 0.5 + 0.25, taker sells 2.0 for SYMBOL
    aggs = [(SYMBOL, 11, "0.5", False, ago(4)), (SYMBOL, 12, "2.0", True, ago(3)), (SYMBOL, 13, "0.25", False, ago(2)),
            (OTHER, 21, "9", True, ago(2))]
    book = [  # (symbol, update_id, side, price, quantity, captured_at)
        (SYMBOL, 1, "bid", "100", "1.0", ago(10)), (SYMBOL, 1, "ask", "101", "2.0", ago(10)),
        (SYMBOL, 2, "bid", "100", "1.5", ago(1)), (SYMBOL, 2, "bid", "99.9", "0.5", ago(1)),
        (SYMBOL, 2, "ask", "101", "3.0", ago(1)),
        (OTHER, 7, "bid", "0.12", "10", ago(2)), (OTHER, 7, "ask", "0.13", "20", ago(2)),
    ]
    lsn = iter(range(9_000_000_000, 9_000_001_000))
    return {
        "latest_prices": [
            {"symbol": s, "price": Decimal(p), "time": t, **cdc(t, next(lsn))} for s, p, t in prices
        ],
        "daily_ticker": [
            {"symbol": s, "open_price": Decimal(o), "high_price": Decimal(o) * 2, "low_price": Decimal(o) / 2,
             "last_price": Decimal(last), "volume": Decimal("1000"), "quote_volume": Decimal("100000"),
             "open_time": t - timedelta(hours=24), "close_time": t, "first_id": 1, "last_id": 500, "count": 500,
             **cdc(t, next(lsn))}
            for s, o, last, t in tickers
        ],
        "klines": [
            {"symbol": SYMBOL, "interval": KLINE_INTERVAL, "open_time": ago(m).replace(second=0, microsecond=0),
             "open_price": Decimal(100 + m), "high_price": Decimal(102 + m), "low_price": Decimal(99 + m),
             "close_price": Decimal(101 + m), "volume": Decimal("12.5"),
             "close_time": ago(m).replace(second=59, microsecond=999000), "quote_volume": Decimal("1262.5"),
             "num_trades": 42, **cdc(ago(m), next(lsn))}
            for m in range(2, 7)
        ],
        "recent_trades": [
            {"symbol": s, "trade_id": i, "price": Decimal(q) / Decimal(qty), "qty": Decimal(qty),
             "quote_qty": Decimal(q), "time": t, "is_buyer_maker": i % 2 == 0, **cdc(t, next(lsn))}
            for s, i, qty, q, t in trades
        ],
        "order_book": [
            {"update_id": u, "symbol": s, "side": side, "price": Decimal(p), "quantity": Decimal(q),
             "captured_at": t, **cdc(t, next(lsn))}
            for s, u, side, p, q, t in book
        ],
        "agg_trades": [
            {"symbol": s, "agg_trade_id": i, "price": Decimal("100.5"), "qty": Decimal(q), "first_trade_id": i * 10,
             "last_trade_id": i * 10 + 2, "time": t, "is_buyer_maker": maker, **cdc(t, next(lsn))}
            for s, i, q, maker, t in aggs
        ],
    }


# the health fixtures' names: real checks never use them
HEALTH_MARK = "graftest"
CONNECTOR, SLOT = f"{HEALTH_MARK}-connector", f"{HEALTH_MARK}_slot"
TOPIC, STAGE = f"{HEALTH_MARK}.topic", f"{HEALTH_MARK} stage"
HEALTH_KEYS = {  # table -> (column naming the fixture, its value)
    "checks": ("check_name", f"{HEALTH_MARK}%"),
    "connector_states": ("connector", CONNECTOR),
    "slot_states": ("slot_name", SLOT),
    "stream_lag": ("topic", TOPIC),
    "freshness": ("stage", STAGE),
    "stream_batches": ("query_name", HEALTH_MARK),
    "reconciliation": ("table_name", f"{HEALTH_MARK}%"),
    "reconciliation_runs": ("scope", f"{HEALTH_MARK}%"),
}


def _health_rows(now: datetime) -> dict[str, list[dict[str, Any]]]:
    """Two checks' worth of measurements: the older one unhealthy, the newer one healed but for the slot."""
    old, new = now - timedelta(minutes=5), now - timedelta(minutes=1)
    hour, day = now.replace(minute=0, second=0, microsecond=0), now.replace(hour=0, minute=0, second=0, microsecond=0)
    return {
        "checks": [
            {"checked_at": old, "check_name": f"{HEALTH_MARK}_connector", "ok": False, "message": "task 0 FAILED"},
            {"checked_at": new, "check_name": f"{HEALTH_MARK}_connector", "ok": True, "message": "RUNNING"},
            {"checked_at": new, "check_name": f"{HEALTH_MARK}_slot", "ok": False, "message": "slot invalidated"},
        ],
        "connector_states": [
            {"checked_at": old, "connector": CONNECTOR, "task_id": -1, "state": "RUNNING", "restarts": 0},
            {"checked_at": old, "connector": CONNECTOR, "task_id": 0, "state": "FAILED", "restarts": 0},
            {"checked_at": new, "connector": CONNECTOR, "task_id": -1, "state": "RUNNING", "restarts": 0},
            {"checked_at": new, "connector": CONNECTOR, "task_id": 0, "state": "RUNNING", "restarts": 1},
        ],
        "slot_states": [
            {"checked_at": old, "slot_name": SLOT, "present": True, "active": False, "wal_status": "extended",
             "retained_wal_bytes": 64 << 20, "unconfirmed_bytes": 60 << 20, "safe_wal_size_bytes": 1 << 20},
            {"checked_at": new, "slot_name": SLOT, "present": True, "active": False, "wal_status": "lost",
             "retained_wal_bytes": 66 << 20, "unconfirmed_bytes": 66 << 20, "safe_wal_size_bytes": None},
        ],
        "stream_lag": [
            {"checked_at": t, "topic": TOPIC, "partition": part, "end_offset": 1000, "processed_offset": 1000 - lag,
             "lag": lag}
            for t, lags in ((old, (40, 2)), (new, (0, 0))) for part, lag in enumerate(lags)
        ],
        "freshness": [
            {"checked_at": old, "stage": STAGE, "age_seconds": 420.0},
            {"checked_at": new, "stage": STAGE, "age_seconds": 3.5},
        ],
        "stream_batches": [
            {"query_name": HEALTH_MARK, "finished_at": now - timedelta(seconds=30 + i), "batch_id": 10_000 + i,
             "input_rows": 100 * i, "processing_ms": 400 + i, "latency_ms": 900 + 100 * i}
            for i in range(5)
        ],
        # two buckets that differed: the first repaired and confirmed equal since, the second still open
        "reconciliation": [
            {"checked_at": old, "table_name": f"{HEALTH_MARK}_trades", "prefix": "GRAFTESTUSDT", "bucket": hour,
             "store": "cassandra", "source_count": 10, "store_count": 9, "source_checksum": Decimal(123),
             "store_checksum": Decimal(100), "slices": "03:04", "status": "repairing",
             "action": "incremental snapshot requested", "signal_ids": "repair-x"},
            {"checked_at": new, "table_name": f"{HEALTH_MARK}_trades", "prefix": "GRAFTESTUSDT", "bucket": hour,
             "store": "cassandra", "source_count": 10, "store_count": 10, "source_checksum": Decimal(123),
             "store_checksum": Decimal(123), "slices": None, "status": "resolved", "action": "equal again: repaired",
             "signal_ids": None},
            {"checked_at": new, "table_name": f"{HEALTH_MARK}_klines", "prefix": "GRAFTESTUSDT 1m", "bucket": day,
             "store": "bridge", "source_count": 48, "store_count": 49, "source_checksum": Decimal(7),
             "store_checksum": Decimal(8), "slices": "00:30", "status": "open",
             "action": "repair requested at 03:00:00 still on its way", "signal_ids": None},
        ],
        "reconciliation_runs": [
            {"checked_at": t, "scope": f"{HEALTH_MARK} recent", "buckets": 100, "slices_compared": 4000,
             "slices_in_flight": n, "rows_source": 50_000, "rows_cassandra": 50_000, "rows_bridge": 50_000,
             "differences": d, "repairs": d, "run_seconds": 2.5, "cpu_seconds": 1.25, "ok": d == 0, "message": "x"}
            for t, n, d in ((old, 7, 1), (new, 3, 0))
        ],
    }


def _delete_fixtures(conn) -> None:
    with conn.cursor() as cur:
        for name in BRIDGE_TABLES:
            cur.execute(f'DELETE FROM "{BRIDGE_SCHEMA}"."{name}" WHERE symbol = ANY(%s)', (list(SYMBOLS),))
        for name, (column, value) in HEALTH_KEYS.items():
            cur.execute(f'DELETE FROM "{HEALTH_SCHEMA}"."{name}" WHERE {column} LIKE %s', (value,))
    conn.commit()


def _insert(cur, schema: str, table: str, rows: list[dict[str, Any]]) -> None:
    columns = list(rows[0])
    cur.executemany(f'INSERT INTO "{schema}"."{table}" ({", ".join(columns)}) '
                    f'VALUES ({", ".join(["%s"] * len(columns))})', [tuple(r[c] for c in columns) for r in rows])


@pytest.fixture
def seeded(pg) -> Iterator[dict[str, Any]]:
    """The bridge tables exist and hold the fixture rows; yields the test's clock and fixture rows."""
    migrations.apply(pg, BRIDGE_SCHEMA)
    migrations.apply(pg, HEALTH_SCHEMA)
    _delete_fixtures(pg)  # a run that died before its clean-up
    now = datetime.now(UTC).replace(microsecond=0)
    rows = _rows(now)
    try:
        with pg.cursor() as cur:
            for name, table_rows in rows.items():
                columns = BRIDGE_TABLES[name].column_names
                _insert(cur, BRIDGE_SCHEMA, name, [{c: row[c] for c in columns} for row in table_rows])
            for name, table_rows in _health_rows(now).items():
                _insert(cur, HEALTH_SCHEMA, name, table_rows)
        pg.commit()
        yield {"now": now, "rows": rows}
    finally:
        pg.rollback()
        _delete_fixtures(pg)


@pytest.fixture
def grafana_db(settings) -> Iterator[Any]:
    """A connection as Grafana's role, as the provisioned datasource makes it."""
    conn = psycopg2.connect(
        host=settings["POSTGRES_HOST"], port=settings["POSTGRES_PORT"], dbname=settings["POSTGRES_DB"],
        user=settings["GRAFANA_DB_USER"], password=settings["GRAFANA_DB_PASSWORD"], connect_timeout=5,
        options="-c statement_timeout=30000",
    )
    conn.autocommit = True
    yield conn
    conn.close()


def _query(conn, sql: str, params: tuple = ()) -> tuple[list[str], list[tuple]]:
    """Column names and rows (none for a statement that returns no result)."""
    with conn.cursor() as cur:
        cur.execute(sql, params or None)
        if cur.description is None:
            return [], []
        return [d.name for d in cur.description], cur.fetchall()


def _variables() -> dict[str, str | list[str]]:
    return {"symbol": list(SYMBOLS), "candle_symbol": SYMBOL, "kline_interval": KLINE_INTERVAL}


# --------------------------------------------------------------------------- every panel


def _check_latest_prices(rows: list[dict]) -> None:
    # ordered by symbol: GRAFTEST2USDT sorts before GRAFTESTUSDT
    assert [(r["symbol"], r["price"]) for r in rows] == [(OTHER, Decimal("0.123")), (SYMBOL, Decimal("101.25"))]


def _check_leaders(rows: list[dict]) -> None:
    assert [(r["symbol"], r["change_pct"]) for r in rows] == [(SYMBOL, Decimal("10.00")), (OTHER, Decimal("-5.00"))]


def _check_volume(rows: list[dict]) -> None:
    totals: dict[str, float] = {}
    for r in rows:
        totals[r["metric"]] = totals.get(r["metric"], 0.0) + r["volume"]
    assert totals == pytest.approx({SYMBOL: 3.0, OTHER: 30.0})


def _check_most_traded(rows: list[dict]) -> None:
    assert [(r["symbol"], r["trades"]) for r in rows] == [(SYMBOL, 6), (OTHER, 3)]
    assert rows[0]["quote_volume"] == pytest.approx(6 * 50.25)


def _check_candles(rows: list[dict]) -> None:
    assert len(rows) == 5
    assert [r["time"] for r in rows] == sorted(r["time"] for r in rows)
    assert all(r["low"] <= min(r["open"], r["close"]) <= max(r["open"], r["close"]) <= r["high"] for r in rows)


def _check_taker_volume(rows: list[dict]) -> None:
    totals: dict[str, float] = {}
    for r in rows:
        totals[r["metric"]] = totals.get(r["metric"], 0.0) + r["volume"]
    # $candle_symbol only: OTHER's sell is not there
    assert totals == pytest.approx({"taker buys": 0.75, "taker sells": 2.0})


def _check_order_book(rows: list[dict]) -> None:
    assert [(r["symbol"], r["bids"], r["asks"]) for r in rows] == [(OTHER, 10.0, 20.0), (SYMBOL, 2.0, 3.0)]


def _check_freshness(rows: list[dict]) -> None:
    assert sorted(r["table_name"] for r in rows) == sorted(BRIDGE_TABLES)
    assert all(r["last_commit"] is not None and r["commit_age_s"] >= 0 for r in rows)


def _check_latency(rows: list[dict]) -> None:
    assert len(rows) == 1 and rows[0]["p50"] is not None and rows[0]["p95"] >= rows[0]["p50"] >= 0


def _check_latency_series(rows: list[dict]) -> None:
    assert all(r["p50"] is not None and r["p95"] >= r["p50"] >= 0 for r in rows)


def _mine(rows: list[dict], column: str) -> list[dict]:
    """The rows the health fixtures wrote (real checks may have written others)."""
    return [r for r in rows if str(r[column]).startswith(HEALTH_MARK)]


def _check_checks(rows: list[dict]) -> None:
    assert [(r["check_name"], r["status"]) for r in _mine(rows, "check_name")] == [
        (f"{HEALTH_MARK}_connector", "OK"), (f"{HEALTH_MARK}_slot", "FAILED")]


def _check_connector_states(rows: list[dict]) -> None:
    assert [(r["part"], r["state"], r["restarts"]) for r in _mine(rows, "connector")] == [
        ("connector", "RUNNING", 0), ("task 0", "RUNNING", 1)]


def _check_slot(rows: list[dict]) -> None:
    assert [(r["wal_status"], r["retained_wal"]) for r in _mine(rows, "slot_name")] == [("lost", float(66 << 20))]


def _check_retained_wal(rows: list[dict]) -> None:
    mine = _mine(rows, "metric")
    assert {r["metric"] for r in mine} == {f"{SLOT} retained", f"{SLOT} unconfirmed"}
    assert [r["bytes"] for r in mine if r["metric"] == f"{SLOT} retained"] == [64 << 20, 66 << 20]


def _check_lag(rows: list[dict]) -> None:
    assert [r["lag"] for r in _mine(rows, "metric")] == [42.0, 0.0]


def _check_stage_age(rows: list[dict]) -> None:
    assert [r["age_s"] for r in _mine(rows, "metric")] == [420.0, 3.5]


def _check_batch_latency(rows: list[dict]) -> None:
    # the fixture batches' latencies are 0.9 .. 1.3 s; real batches may share their minute
    assert any(r["worst"] >= 1.3 for r in rows), rows
    assert all(r["worst"] >= r["p50"] >= 0 for r in rows)


def _check_batches(rows: list[dict]) -> None:
    assert sum(r["input_rows"] for r in rows) >= 1000 and all(r["processing_s"] > 0 for r in rows)


def _check_open_differences(rows: list[dict]) -> None:
    # the repaired bucket is resolved by its newest record: only the open one is listed
    assert [(r["table_name"], r["store"], r["status"]) for r in _mine(rows, "table_name")] == [
        (f"{HEALTH_MARK}_klines", "bridge", "open")]


def _check_reconciliation_runs(rows: list[dict]) -> None:
    # the fixture runs: 2.5 s and 1.25 s of CPU each (real runs may add theirs)
    assert any(r["run_seconds"] == 2.5 and r["cpu_seconds"] == 1.25 and r["differences"] == 1.0 for r in rows)


# what the fixture rows guarantee, beyond the columns and types every panel is checked for
EXPECTED = {
    "Checks": _check_checks,
    "Connector and tasks": _check_connector_states,
    "Slot at the newest check": _check_slot,
    "Retained WAL": _check_retained_wal,
    "Stream lag per topic": _check_lag,
    "Freshness per stage": _check_stage_age,
    "Commit to Cassandra latency per micro-batch": _check_batch_latency,
    "Micro-batches": _check_batches,
    "Reconciliation: open differences": _check_open_differences,
    "Reconciliation runs": _check_reconciliation_runs,
    "Latest prices": _check_latest_prices,
    "24h leaders": _check_leaders,
    "Traded volume per symbol": _check_volume,
    "Most traded symbols": _check_most_traded,
    "${candle_symbol} candlesticks (${kline_interval})": _check_candles,
    "${candle_symbol} taker volume (aggregate trades)": _check_taker_volume,
    "Order book quantity by side": _check_order_book,
    "Freshness by table": _check_freshness,
    "Commit to Cassandra latency": _check_latency,
    "Commit to Cassandra latency over time": _check_latency_series,
}
# columns a chart shows as labels or categories, not as numbers
LABELS = {"time", "metric", "symbol", "table_name", "check_name", "status", "message", "connector", "part",
          "state", "worker_id", "slot_name", "wal_status", "present", "active", "checked_at", "prefix", "bucket",
          "store", "slices", "action"}
CHARTS = {"timeseries", "candlestick", "barchart", "stat", "bargauge"}


def test_expectations_name_existing_panels():
    titles = {p.title for p in generate.panels()}
    assert set(EXPECTED) <= titles, f"expectations for panels that no longer exist: {sorted(set(EXPECTED) - titles)}"


@pytest.mark.parametrize("spec", generate.panels(), ids=lambda s: s.title)
def test_panel_sql_runs_as_grafana(spec, seeded, grafana_db):
    now = seeded["now"]
    sql = expand(spec.raw_sql, now - timedelta(hours=1), now + timedelta(seconds=1), _variables())
    try:
        names, rows = _query(grafana_db, sql)
    except psycopg2.Error as exc:
        pytest.fail(f"panel {spec.title!r} failed as the Grafana role: {exc}\n{sql}")
    missing = [c for c in spec.columns if c not in names]
    assert not missing, f"panel {spec.title!r} returns {names}, lacks {missing}"
    assert rows, f"panel {spec.title!r} returned no rows although the fixtures cover it\n{sql}"
    records = [dict(zip(names, row, strict=True)) for row in rows]

    if spec.format == "time_series":
        assert all(isinstance(r["time"], datetime) for r in records), f"{spec.title}: time is not a timestamp"
        values = [n for n in names if n not in LABELS]
        assert values, f"{spec.title}: a time series needs a value column besides {names}"
    if spec.type in CHARTS:
        # charts need numbers: the SELECT casts numeric to float8 (prices stay numeric elsewhere)
        for name in (c for c in spec.columns if c not in LABELS):
            bad = [r[name] for r in records if r[name] is not None and
                   (isinstance(r[name], bool) or not isinstance(r[name], int | float))]
            assert not bad, f"{spec.title}: column {name} should be a float for the chart, got {bad[:3]}"
    if spec.type == "candlestick":
        assert {"time", "open", "high", "low", "close"} <= set(names)

    check = EXPECTED.get(spec.title)
    if check:
        check(records)


@pytest.mark.parametrize("var", [v for v in generate.variables() if v.kind == "query"], ids=lambda v: v.name)
def test_variable_query_runs_as_grafana(var, seeded, grafana_db):
    sql = expand(var.query, seeded["now"] - timedelta(hours=1), seeded["now"], _variables())
    names, rows = _query(grafana_db, sql)
    assert len(names) == 1, f"${var.name} must return one column, got {names}"
    values = {row[0] for row in rows}
    expected = {"symbol": set(SYMBOLS), "candle_symbol": {SYMBOL}, "kline_interval": {KLINE_INTERVAL}}[var.name]
    assert expected <= values, f"${var.name} lacks the fixture values {expected - values}"


# --------------------------------------------------------------------------- Grafana's role is read-only


WRITES = {
    "INSERT": f"INSERT INTO {BRIDGE_SCHEMA}.latest_prices (symbol, price, time) VALUES ('{SYMBOL}', 1, now())",
    "UPDATE": f"UPDATE {BRIDGE_SCHEMA}.latest_prices SET price = price + 1 WHERE symbol = '{SYMBOL}'",
    "DELETE": f"DELETE FROM {BRIDGE_SCHEMA}.latest_prices WHERE symbol = '{SYMBOL}'",
    "CREATE": f"CREATE TABLE {BRIDGE_SCHEMA}.grafana_write_probe (x int)",
}


@pytest.mark.parametrize("statement", sorted(WRITES))
def test_grafana_role_cannot_write(statement, seeded, grafana_db):
    sql = WRITES[statement]
    # as connected: the role's default_transaction_read_only refuses the statement
    with pytest.raises((psycopg2.errors.ReadOnlySqlTransaction, psycopg2.errors.InsufficientPrivilege)):
        _query(grafana_db, sql)
    # a session may switch to read-write; then the missing privileges must still refuse it
    _query(grafana_db, "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE")
    with pytest.raises(psycopg2.errors.InsufficientPrivilege):
        _query(grafana_db, sql)
    _, rows = _query(grafana_db, f"SELECT price FROM {BRIDGE_SCHEMA}.latest_prices WHERE symbol = '{SYMBOL}' "
                                 "ORDER BY time")
    assert [r[0] for r in rows] == [Decimal("100.5"), Decimal("101.25")], "the fixture rows changed"


def test_grafana_role_is_read_only_with_select_only(seeded, grafana_db):
    _, rows = _query(grafana_db, "SHOW default_transaction_read_only")
    assert rows == [("on",)]
    _, rows = _query(grafana_db, "SELECT has_schema_privilege(current_user, %s, 'CREATE')", (BRIDGE_SCHEMA,))
    assert rows == [(False,)], "Grafana's role may create objects in the bridge schema"
    tables = [f"{BRIDGE_SCHEMA}.{name}" for name in (*BRIDGE_TABLES, "bridge_watermarks")]
    tables += [f"{HEALTH_SCHEMA}.{name}" for name in HEALTH_TABLES]
    for table in tables:
        _, rows = _query(grafana_db, "SELECT has_table_privilege(current_user, %s, 'SELECT'), "
                                     "has_table_privilege(current_user, %s, "
                                     "'INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER')", (table, table))
        assert rows == [(True, False)], f"Grafana's role on {table}: (SELECT, any write) = {rows}"


def test_grafana_role_cannot_read_the_source_schema(grafana_db):
    with pytest.raises(psycopg2.errors.InsufficientPrivilege):
        _query(grafana_db, "SELECT 1 FROM binance.latest_prices LIMIT 1")
