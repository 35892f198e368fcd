"""binance_extract against real Postgres and Airflow, fed by the bundled Binance-compatible server."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import requests

from include.binance.client import BinanceClient
from include.binance.errors import BinanceResponseError
from include.binance.extract import ExtractSettings, extract
from include.schema.postgres import apply
from include.tables import TABLES
from stack.exchange import BinanceTestServer

pytestmark = pytest.mark.integration

# the integration tests own these two symbols' rows; the demo's other symbols are left alone
SYMBOLS = ["LINKUSDT", "LTCUSDT"]


@pytest.fixture
def server():
    with BinanceTestServer(seed=11) as srv:
        yield srv


@pytest.fixture
def clean_tables(pg):
    apply(pg, "binance")
    with pg.cursor() as cur:
        for table in TABLES:
            cur.execute(f"DELETE FROM binance.{table} WHERE symbol = ANY(%s)", (SYMBOLS,))
    pg.commit()


@pytest.fixture
def airflow_env(monkeypatch, server, tmp_path):
    """Point the DAG's connection and Variables at the test server, as a user would."""
    monkeypatch.setenv("AIRFLOW_CONN_BINANCE_API", json.dumps({"conn_type": "http", "host": server.url}))
    monkeypatch.setenv("AIRFLOW_VAR_BINANCE_SYMBOLS", json.dumps(SYMBOLS))
    # hourly candles: the run of the last minute re-reads the candle open across it (the open one)
    monkeypatch.setenv("AIRFLOW_VAR_BINANCE_KLINE_INTERVAL", "1h")
    monkeypatch.setenv("AIRFLOW_VAR_BINANCE_LIMITS", json.dumps({"klines": 5, "agg_trades": 1000, "recent_trades": 50,
                                                                  "order_book": 10}))
    # a ban file of this test's own, so an injected 429 cannot block anything else
    monkeypatch.setenv("BINANCE_BAN_STATE_FILE", str(tmp_path / "ban.json"))


@pytest.fixture(scope="module")
def dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder="dags")
    assert not bag.import_errors, bag.import_errors
    return bag.dags["binance_extract"]


def _counts(pg) -> dict[str, tuple[int, int]]:
    out = {}
    with pg.cursor() as cur:
        for name, table in TABLES.items():
            key = ", ".join(table.primary_key)
            cur.execute(f"SELECT count(*), count(DISTINCT ({key})) FROM binance.{name} WHERE symbol = ANY(%s)",
                        (SYMBOLS,))
            out[name] = cur.fetchone()
    pg.commit()
    return out


def _run(dag) -> None:
    run = dag.test()
    assert run.state == "success", [(ti.task_id, ti.state) for ti in run.get_task_instances()]


def _inside_an_hour() -> None:
    """Wait while the last complete minute and the next one fall in different hours (at :59 and :00):
    both runs must re-read the same, open, hourly candle."""
    import time

    while datetime.now(UTC).minute in (59, 0):
        time.sleep(5)


def test_two_runs_add_no_duplicates_and_update_the_open_kline_in_place(dag, pg, server, clean_tables, airflow_env):
    _inside_an_hour()
    _run(dag)
    first = _counts(pg)
    for name, (rows, distinct) in first.items():
        assert rows > 0, f"{name} got no rows"
        assert rows == distinct
    with pg.cursor() as cur:
        cur.execute("SELECT open_time, close_price, volume, num_trades, xmin::text FROM binance.klines "
                    "WHERE symbol = 'LINKUSDT' ORDER BY open_time DESC LIMIT 1")
        open_before = cur.fetchone()
        cur.execute("SELECT count(*) FROM binance.klines WHERE symbol = ANY(%s)", (SYMBOLS,))
        klines_before = cur.fetchone()[0]
    pg.commit()

    _run(dag)
    second = _counts(pg)
    for name, (rows, distinct) in second.items():
        assert rows == distinct, f"{name} has duplicates after a second run"
    # overlapping trade fetches: what was already there was not added again
    assert second["recent_trades"][0] >= first["recent_trades"][0]
    with pg.cursor() as cur:
        cur.execute("SELECT open_time, close_price, volume, num_trades, xmin::text FROM binance.klines "
                    "WHERE symbol = 'LINKUSDT' AND open_time = %s", (open_before[0],))
        open_after = cur.fetchone()
        cur.execute("SELECT count(*) FROM binance.klines WHERE symbol = ANY(%s) AND open_time <= %s",
                    (SYMBOLS, open_before[0]))
        klines_up_to_then = cur.fetchone()[0]
    pg.commit()
    # the candle that was open is one row still, its values moved and the row was UPDATEd
    assert klines_up_to_then == klines_before
    assert open_after is not None
    assert open_after[1:4] != open_before[1:4]
    assert open_after[4] != open_before[4]


def test_values_are_exact(dag, pg, server, clean_tables, airflow_env):
    _run(dag)
    trades = requests.get(f"{server.url}/api/v3/trades", params={"symbol": "LTCUSDT", "limit": 50}, timeout=5).json()
    with pg.cursor() as cur:
        cur.execute("SELECT trade_id, price, qty, quote_qty, (extract(epoch FROM time) * 1000)::bigint "
                    "FROM binance.recent_trades WHERE symbol = 'LTCUSDT'")
        stored = {row[0]: row[1:] for row in cur.fetchall()}
        cur.execute("SELECT pg_typeof(price)::text FROM binance.recent_trades LIMIT 1")
        assert cur.fetchone()[0] == "numeric"
    pg.commit()
    common = [t for t in trades if t["id"] in stored]
    assert common, "no trade of the server's latest page is stored"
    for t in common:
        price, qty, quote_qty, ms = stored[t["id"]]
        assert (price, qty, quote_qty) == (Decimal(t["price"]), Decimal(t["qty"]), Decimal(t["quoteQty"]))
        # exact text, not merely equal numbers: no float ever touched it
        assert format(price, "f").rstrip("0") == t["price"].rstrip("0")
        assert ms == t["time"]


def test_429_mid_run_is_waited_out_and_no_call_goes_out_before_retry_after(dag, pg, server, clean_tables,
                                                                          airflow_env):
    server.add_fault("429", path="/api/v3/trades", retry_after=2)
    _run(dag)
    calls = server.calls()
    limited = [c for c in calls if c["status"] == 429]
    assert len(limited) == 1
    until = limited[0]["time"] + 2
    early = [c for c in calls if limited[0]["time"] < c["time"] < until]
    assert early == [], f"calls went out during the ban: {early}"
    assert not any(c["status"] == 418 for c in calls)
    assert _counts(pg)["recent_trades"][0] > 0


@pytest.mark.parametrize("fault", ["html", "truncated", "missing_field"])
def test_malformed_body_fails_clearly_and_leaves_the_table_unchanged(pg, server, clean_tables, fault):
    settings = ExtractSettings(symbols=tuple(SYMBOLS), kline_interval="1m")
    with BinanceClient(server.url, max_retries=0) as client:
        extract("daily_ticker", client, pg, settings, datetime.now(UTC))
        with pg.cursor() as cur:
            cur.execute("SELECT * FROM binance.daily_ticker WHERE symbol = ANY(%s) ORDER BY 1, 9", (SYMBOLS,))
            before = cur.fetchall()
        pg.commit()
        server.add_fault(fault, path="/api/v3/ticker/24hr", count=5)
        with pytest.raises(BinanceResponseError) as err:
            extract("daily_ticker", client, pg, settings, datetime.now(UTC))
    message = str(err.value)
    assert "/api/v3/ticker/24hr" in message
    assert "200" in message
    with pg.cursor() as cur:
        cur.execute("SELECT * FROM binance.daily_ticker WHERE symbol = ANY(%s) ORDER BY 1, 9", (SYMBOLS,))
        assert cur.fetchall() == before
    pg.commit()


def test_latest_prices_belong_to_the_runs_interval_and_a_rerun_rewrites_nothing(pg, server, clean_tables):
    settings = ExtractSettings(symbols=tuple(SYMBOLS), kline_interval="1m")
    interval_end = datetime.now(UTC).replace(second=0, microsecond=0)
    server.freeze()

    def rows() -> list[tuple]:
        with pg.cursor() as cur:
            cur.execute("SELECT symbol, price, time, xmin::text FROM binance.latest_prices WHERE symbol = ANY(%s) "
                        "ORDER BY symbol, time", (SYMBOLS,))
            out = cur.fetchall()
        pg.commit()
        return out

    with BinanceClient(server.url, max_retries=0) as client:
        first = extract("latest_prices", client, pg, settings, interval_end, interval_end)
        stored = rows()
        assert first.inserted == len(SYMBOLS)
        assert [(s, t) for s, _, t, _ in stored] == [(s, interval_end) for s in sorted(SYMBOLS)]
        again = extract("latest_prices", client, pg, settings, interval_end, interval_end)
        assert (again.inserted, again.updated) == (0, 0)
        assert rows() == stored, "a re-run of the interval rewrote latest_prices"
        # a backfill of an old interval cannot observe its prices: nothing fetched, nothing written
        calls = len(server.calls())
        old = interval_end - timedelta(hours=1)
        skipped = extract("latest_prices", client, pg, settings, old, old)
        assert (skipped.received, skipped.inserted) == (0, 0)
        assert len(server.calls()) == calls and rows() == stored
