"""The test server speaks Binance's shapes, errors and weights, its data moves, and its faults work."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import requests

from include.binance.intervals import period_open
from stack.exchange import SPECS, TRADING_SYMBOLS, BinanceTestServer

REPO = Path(__file__).resolve().parents[2]
DECIMAL_8 = re.compile(r"^\d+\.\d{8}$")
# 2026-01-01T00:00:10Z (a Thursday), early in a minute.
T0 = 1_767_225_610.0


class Clock:
    """The server's clock, moved by hand."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def server(clock: Clock) -> Iterator[BinanceTestServer]:
    with BinanceTestServer(seed=3, clock=clock) as srv:
        yield srv


def get(server: BinanceTestServer, path: str, headers: dict[str, str] | None = None, **params: Any) -> Any:
    """GET an API path, expecting 200, and return the decoded JSON."""
    response = requests.get(server.url + path, params=params, headers=headers, timeout=5)
    assert response.status_code == 200, response.text
    return response.json()


def raw(server: BinanceTestServer, query: str) -> requests.Response:
    return requests.get(server.url + query, timeout=5)


def is_decimal_string(value: Any) -> bool:
    return isinstance(value, str) and bool(DECIMAL_8.match(value))


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# -- shapes ------------------------------------------------------------------------------------


def test_ping_and_time(server: BinanceTestServer) -> None:
    assert get(server, "/api/v3/ping") == {}
    assert get(server, "/api/v3/time") == {"serverTime": int(T0 * 1000)}
    assert get(server, "/api/v3/time", headers={"X-MBX-TIME-UNIT": "MICROSECOND"}) == {"serverTime": int(T0 * 1e6)}


def test_exchange_info_lists_ten_trading_pairs_and_matic_on_break(server: BinanceTestServer) -> None:
    info = get(server, "/api/v3/exchangeInfo")
    statuses = {s["symbol"]: s["status"] for s in info["symbols"]}
    assert statuses == {**dict.fromkeys(TRADING_SYMBOLS, "TRADING"), "MATICUSDT": "BREAK"}
    assert len(TRADING_SYMBOLS) == 10 and "POLUSDT" in TRADING_SYMBOLS
    btc = info["symbols"][0]
    assert (btc["baseAsset"], btc["quoteAsset"]) == ("BTC", "USDT")
    some = get(server, "/api/v3/exchangeInfo", symbols='["ETHUSDT","MATICUSDT"]')
    assert [s["symbol"] for s in some["symbols"]] == ["ETHUSDT", "MATICUSDT"]
    broken = get(server, "/api/v3/exchangeInfo", symbolStatus="BREAK")
    assert [s["symbol"] for s in broken["symbols"]] == ["MATICUSDT"]


def test_ticker_price_object_for_symbol_array_for_symbols(server: BinanceTestServer) -> None:
    one = get(server, "/api/v3/ticker/price", symbol="BTCUSDT")
    assert set(one) == {"symbol", "price"} and is_decimal_string(one["price"])
    many = get(server, "/api/v3/ticker/price", symbols='["BTCUSDT","DOGEUSDT"]')
    assert [p["symbol"] for p in many] == ["BTCUSDT", "DOGEUSDT"]
    assert all(is_decimal_string(p["price"]) for p in many)
    assert len(get(server, "/api/v3/ticker/price")) == len(SPECS)


def test_ticker_24hr_full_and_mini(server: BinanceTestServer) -> None:
    full = get(server, "/api/v3/ticker/24hr", symbol="ETHUSDT")
    assert list(full) == [
        "symbol", "priceChange", "priceChangePercent", "weightedAvgPrice", "prevClosePrice", "lastPrice",
        "lastQty", "bidPrice", "bidQty", "askPrice", "askQty", "openPrice", "highPrice", "lowPrice", "volume",
        "quoteVolume", "openTime", "closeTime", "firstId", "lastId", "count",
    ]  # fmt: skip
    (mini,) = get(server, "/api/v3/ticker/24hr", symbols='["ETHUSDT"]', type="MINI")
    assert set(mini) == {
        "symbol", "openPrice", "highPrice", "lowPrice", "lastPrice", "volume", "quoteVolume",
        "openTime", "closeTime", "firstId", "lastId", "count",
    }  # fmt: skip
    for key in ("openPrice", "highPrice", "lowPrice", "lastPrice", "volume", "quoteVolume"):
        assert is_decimal_string(mini[key]), key
    for key in ("openTime", "closeTime", "firstId", "lastId", "count"):
        assert is_int(mini[key]), key
    assert mini["closeTime"] - mini["openTime"] == 86_400_000
    assert mini["lastId"] - mini["firstId"] + 1 == mini["count"]
    assert Decimal(mini["lowPrice"]) <= Decimal(mini["lastPrice"]) <= Decimal(mini["highPrice"])


def test_klines_shape_and_order(server: BinanceTestServer) -> None:
    klines = get(server, "/api/v3/klines", symbol="BTCUSDT", interval="1m")
    assert len(klines) == 500  # the default limit
    newest = klines[-1]
    assert len(newest) == 12 and newest[0] == period_open("1m", int(T0 * 1000))
    for kline in klines[-3:]:
        assert is_int(kline[0]) and is_int(kline[6]) and is_int(kline[8])
        assert all(is_decimal_string(kline[i]) for i in (1, 2, 3, 4, 5, 7, 9, 10))
        assert kline[6] == kline[0] + 60_000 - 1
        low, high = Decimal(kline[3]), Decimal(kline[2])
        assert low <= Decimal(kline[1]) <= high and low <= Decimal(kline[4]) <= high
    assert [k[0] for k in klines] == sorted(k[0] for k in klines)


def test_klines_start_and_end_time(server: BinanceTestServer) -> None:
    hour = 3_600_000
    start = period_open("1h", int(T0 * 1000)) - 5 * hour
    window = get(server, "/api/v3/klines", symbol="ETHUSDT", interval="1h", startTime=start, limit=3)
    assert [k[0] for k in window] == [start, start + hour, start + 2 * hour]
    middle = get(server, "/api/v3/klines", symbol="ETHUSDT", interval="1h", startTime=start + 1, endTime=start + hour)
    assert [k[0] for k in middle] == [start + hour]
    before = get(server, "/api/v3/klines", symbol="ETHUSDT", interval="1h", endTime=start, limit=2)
    assert [k[0] for k in before] == [start - hour, start]
    assert get(server, "/api/v3/klines", symbol="ETHUSDT", interval="1h", startTime=int(T0 * 1000) + hour) == []


def test_trades_shape(server: BinanceTestServer) -> None:
    trades = get(server, "/api/v3/trades", symbol="SOLUSDT", limit=5)
    assert len(trades) == 5
    for trade in trades:
        assert set(trade) == {"id", "price", "qty", "quoteQty", "time", "isBuyerMaker", "isBestMatch"}
        assert is_int(trade["id"]) and is_int(trade["time"])
        assert all(is_decimal_string(trade[k]) for k in ("price", "qty", "quoteQty"))
        assert isinstance(trade["isBuyerMaker"], bool)
        assert Decimal(trade["quoteQty"]) == Decimal(trade["price"]) * Decimal(trade["qty"])
    assert len(get(server, "/api/v3/trades", symbol="SOLUSDT")) == 500  # the default limit


def test_depth_shape(server: BinanceTestServer) -> None:
    book = get(server, "/api/v3/depth", symbol="XRPUSDT", limit=10)
    assert is_int(book["lastUpdateId"])
    bids = [Decimal(p) for p, _ in book["bids"]]
    asks = [Decimal(p) for p, _ in book["asks"]]
    assert len(bids) == len(asks) == 10
    assert bids == sorted(bids, reverse=True) and asks == sorted(asks) and bids[0] < asks[0]
    assert all(is_decimal_string(p) and is_decimal_string(q) for p, q in book["bids"] + book["asks"])


def test_microsecond_time_unit(server: BinanceTestServer) -> None:
    micro = {"X-MBX-TIME-UNIT": "MICROSECOND"}
    (kline,) = get(server, "/api/v3/klines", headers=micro, symbol="BTCUSDT", interval="1m", limit=1)
    assert kline[0] == period_open("1m", int(T0 * 1000)) * 1000
    assert kline[6] == (kline[0] + 60_000_000) - 1
    (trade,) = get(server, "/api/v3/trades", headers=micro, symbol="BTCUSDT", limit=1)
    assert trade["time"] == int(T0 * 1e6) // 1000 * 1000


def test_prices_are_exact_eight_decimal_strings_on_the_tick(server: BinanceTestServer) -> None:
    for symbol in ("DOGEUSDT", "BTCUSDT"):
        price = Decimal(get(server, "/api/v3/ticker/price", symbol=symbol)["price"])
        assert price.as_tuple().exponent == -8
        assert price % SPECS[symbol].tick == 0


# -- moving data -------------------------------------------------------------------------------


def test_trade_ids_grow_and_consecutive_calls_overlap(server: BinanceTestServer) -> None:
    first = get(server, "/api/v3/trades", symbol="BTCUSDT", limit=20)
    second = get(server, "/api/v3/trades", symbol="BTCUSDT", limit=20)
    first_ids, second_ids = [t["id"] for t in first], [t["id"] for t in second]
    assert first_ids == list(range(first_ids[0], first_ids[0] + 20))
    assert second_ids[-1] > first_ids[-1]
    overlap = set(first_ids) & set(second_ids)
    assert overlap and [t for t in first if t["id"] in overlap] == [t for t in second if t["id"] in overlap]


def test_a_server_started_again_serves_trade_ids_above_the_ones_it_served(clock: Clock) -> None:
    """The same seed, started again a minute later (`make down`, `make up`): the loader keeps the first
    trade stored under an id, so an id served again would be a new trade never loaded."""
    with BinanceTestServer(seed=11, clock=clock) as srv:
        before = []
        for _ in range(30):
            before += get(srv, "/api/v3/trades", symbol="BTCUSDT", limit=1000)
            clock.now += 1
    clock.now += 60
    with BinanceTestServer(seed=11, clock=clock) as srv:
        after = get(srv, "/api/v3/trades", symbol="BTCUSDT", limit=1000)
    assert min(t["id"] for t in after) > max(t["id"] for t in before)


def test_newest_kline_changes_and_earlier_ones_stay_fixed(server: BinanceTestServer) -> None:
    first = get(server, "/api/v3/klines", symbol="ETHUSDT", interval="1m", limit=5)
    second = get(server, "/api/v3/klines", symbol="ETHUSDT", interval="1m", limit=5)
    assert first[:-1] == second[:-1]
    assert first[-1][0] == second[-1][0]
    assert second[-1][8] > first[-1][8]  # more trades
    assert Decimal(second[-1][5]) > Decimal(first[-1][5])  # more volume


def test_open_kline_closes_and_freezes_when_its_minute_ends(server: BinanceTestServer, clock: Clock) -> None:
    get(server, "/api/v3/klines", symbol="BNBUSDT", interval="1m", limit=2)
    last_seen = get(server, "/api/v3/trades", symbol="BNBUSDT", limit=1)  # another trade in the open kline
    clock.now += 60
    after = get(server, "/api/v3/klines", symbol="BNBUSDT", interval="1m", limit=2)
    closed, opened = after
    assert opened[0] == closed[0] + 60_000
    assert closed[4] == last_seen[0]["price"]  # closed on the last trade of its minute
    assert opened[1] == closed[4]  # and the next one opens there
    assert get(server, "/api/v3/klines", symbol="BNBUSDT", interval="1m", limit=2)[0] == closed


def test_prices_move_and_update_ids_grow(server: BinanceTestServer) -> None:
    prices = {get(server, "/api/v3/ticker/price", symbol="ADAUSDT")["price"] for _ in range(5)}
    assert len(prices) > 1
    ids = [get(server, "/api/v3/depth", symbol="ADAUSDT", limit=5)["lastUpdateId"] for _ in range(3)]
    assert ids == sorted(set(ids))


def test_a_frozen_market_answers_the_same_until_thawed(server: BinanceTestServer, clock: Clock) -> None:
    def snapshot() -> list[Any]:
        return [get(server, "/api/v3/ticker/price", symbol="ADAUSDT"),
                get(server, "/api/v3/ticker/24hr", symbol="ADAUSDT"),
                get(server, "/api/v3/klines", symbol="ADAUSDT", interval="1m", limit=3),
                get(server, "/api/v3/trades", symbol="ADAUSDT", limit=5),
                get(server, "/api/v3/depth", symbol="ADAUSDT", limit=5),
                get(server, "/api/v3/time")]

    get(server, "/api/v3/ticker/price", symbol="ADAUSDT")  # the symbol's live state exists
    response = requests.post(server.url + "/_control/settings", json={"frozen": True}, timeout=5)
    assert response.status_code == 200 and response.json()["frozen"] is True
    first = snapshot()
    clock.now += 90  # time passes, a minute boundary too: the market stays where it was
    assert snapshot() == first
    server.freeze(False)
    assert snapshot() != first
    assert requests.post(server.url + "/_control/settings", json={"frozen": "yes"}, timeout=5).status_code == 400


def test_break_symbol_does_not_move(server: BinanceTestServer) -> None:
    prices = {get(server, "/api/v3/ticker/price", symbol="MATICUSDT")["price"] for _ in range(3)}
    assert len(prices) == 1


def test_same_seed_and_time_give_the_same_market(clock: Clock) -> None:
    answers = []
    for _ in range(2):
        with BinanceTestServer(seed=11, clock=clock) as srv:
            answers.append(get(srv, "/api/v3/klines", symbol="LTCUSDT", interval="1h", limit=50))
    assert answers[0] == answers[1]


# -- Binance errors and weights ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ('/api/v3/ticker/price?symbols=["BTCUSDT", "ETHUSDT"]', -1100),
        ("/api/v3/ticker/price?symbols=%5B%22BTCUSDT%22,%20%22ETHUSDT%22%5D", -1100),
        ('/api/v3/ticker/price?symbols=["BTCUSDT","BTCUSDT"]', -1151),
        ('/api/v3/ticker/price?symbols=["BTCUSDT","NOPEUSDT"]', -1121),
        ("/api/v3/ticker/price?symbol=NOPEUSDT", -1121),
        ("/api/v3/ticker/price?symbol=btcusdt", -1100),
        ('/api/v3/ticker/price?symbol=BTCUSDT&symbols=["ETHUSDT"]', -1128),
        ("/api/v3/ticker/price?symbol=BTCUSDT&symbol=ETHUSDT", -1101),
        ("/api/v3/klines?symbol=BTCUSDT&interval=1H", -1120),
        ("/api/v3/klines?symbol=BTCUSDT", -1102),
        ("/api/v3/klines?interval=1m", -1102),
        ("/api/v3/trades", -1102),
        ("/api/v3/trades?symbol=BTCUSDT&limit=ten", -1100),
        ("/api/v3/depth?symbol=BTCUSDT&limit=0", -1130),
        ("/api/v3/depth?symbol=BTCUSDT&lmit=5", -1104),
        ("/api/v3/ticker/24hr?symbol=BTCUSDT&type=SMALL", -1100),
    ],
)
def test_bad_requests_get_binance_error_codes(server: BinanceTestServer, query: str, code: int) -> None:
    response = raw(server, query)
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == code and isinstance(body["msg"], str)
    assert "X-MBX-USED-WEIGHT-1M" in response.headers


def test_invalid_symbol_message_is_binances(server: BinanceTestServer) -> None:
    assert raw(server, "/api/v3/depth?symbol=NOPEUSDT").json() == {"code": -1121, "msg": "Invalid symbol."}


def test_unknown_path_is_404(server: BinanceTestServer) -> None:
    assert raw(server, "/api/v3/nothing").status_code == 404


def test_used_weight_header_counts_per_minute(server: BinanceTestServer, clock: Clock) -> None:
    expected = [
        ("/api/v3/ping", {}, 1),
        ("/api/v3/exchangeInfo", {}, 20),
        ("/api/v3/ticker/price", {"symbol": "BTCUSDT"}, 2),
        ("/api/v3/ticker/price", {"symbols": '["BTCUSDT","ETHUSDT"]'}, 4),
        ("/api/v3/ticker/24hr", {"symbols": '["BTCUSDT"]'}, 2),
        ("/api/v3/ticker/24hr", {}, 80),
        ("/api/v3/klines", {"symbol": "BTCUSDT", "interval": "1m", "limit": "3"}, 2),
        ("/api/v3/trades", {"symbol": "BTCUSDT", "limit": "1"}, 25),
        ("/api/v3/depth", {"symbol": "BTCUSDT", "limit": "101"}, 25),
        ("/api/v3/depth", {"symbol": "BTCUSDT", "limit": "1000"}, 50),
    ]
    total = 0
    for path, params, weight in expected:
        total += weight
        response = requests.get(server.url + path, params=params, timeout=5)
        assert response.headers["X-MBX-USED-WEIGHT-1M"] == str(total), path
    clock.now += 60
    response = requests.get(server.url + "/api/v3/ping", timeout=5)
    assert response.headers["X-MBX-USED-WEIGHT-1M"] == "1"


def test_going_over_the_weight_limit_gets_429_then_418(server: BinanceTestServer, clock: Clock) -> None:
    server.set_used_weight(5999)
    limited = raw(server, "/api/v3/trades?symbol=BTCUSDT")
    assert limited.status_code == 429 and limited.json()["code"] == -1003
    assert int(limited.headers["Retry-After"]) == 50  # to the next minute
    banned = raw(server, "/api/v3/ping")
    assert banned.status_code == 418 and int(banned.headers["Retry-After"]) == server.ban_retry_after_s


# -- faults and controls -----------------------------------------------------------------------


def test_rate_limit_fault_then_418_for_calls_inside_the_ban(server: BinanceTestServer, clock: Clock) -> None:
    server.add_fault("429", retry_after=5, path="/api/v3/klines")
    assert raw(server, "/api/v3/ping").status_code == 200  # other paths are not affected by the fault
    first = raw(server, "/api/v3/klines?symbol=BTCUSDT&interval=1m")
    assert first.status_code == 429 and first.headers["Retry-After"] == "5"
    clock.now += 4
    assert raw(server, "/api/v3/ping").status_code == 418  # still inside the Retry-After
    clock.now += server.ban_retry_after_s
    assert raw(server, "/api/v3/ping").status_code == 200
    assert [c["status"] for c in server.calls()] == [200, 429, 418, 200]


def test_faults_over_http_and_call_log(server: BinanceTestServer) -> None:
    control = server.url + "/_control"
    faults = [
        {"kind": "5xx", "status": 502, "path": "/api/v3/trades"},
        {"kind": "html", "path": "/api/v3/depth"},
        {"kind": "truncated", "path": "/api/v3/ticker/price"},
        {"kind": "missing_field", "path": "/api/v3/ticker/24hr", "field": "count"},
    ]
    assert requests.post(control + "/faults", json=faults, timeout=5).status_code == 200
    assert raw(server, "/api/v3/trades?symbol=BTCUSDT").status_code == 502
    html = raw(server, "/api/v3/depth?symbol=BTCUSDT")
    assert html.status_code == 200 and html.text.startswith("<!DOCTYPE html>")
    with pytest.raises(ValueError):
        json.loads(raw(server, "/api/v3/ticker/price?symbol=BTCUSDT").text)
    assert "count" not in raw(server, "/api/v3/ticker/24hr?symbol=BTCUSDT").json()
    assert raw(server, "/api/v3/trades?symbol=BTCUSDT").status_code == 200  # faults are used up

    calls = requests.get(control + "/calls", timeout=5).json()["calls"]
    assert [c["fault"] for c in calls] == ["5xx", "html", "truncated", "missing_field", None]
    assert all(c["time"] == T0 for c in calls)
    assert calls[0]["params"] == {"symbol": "BTCUSDT"}

    assert requests.post(control + "/reset", json={}, timeout=5).json() == {}
    assert requests.get(control + "/calls", timeout=5).json() == {"calls": []}


def test_bad_fault_requests_are_refused(server: BinanceTestServer) -> None:
    response = requests.post(server.url + "/_control/faults", json={"kind": "teapot"}, timeout=5)
    assert response.status_code == 400 and "teapot" in response.json()["error"]
    with pytest.raises(ValueError, match="count"):
        server.add_fault("5xx", count=0)


def test_settings_control(server: BinanceTestServer) -> None:
    response = requests.post(server.url + "/_control/settings", json={"used_weight": 100}, timeout=5)
    assert response.status_code == 200
    assert raw(server, "/api/v3/ping").headers["X-MBX-USED-WEIGHT-1M"] == "101"


def test_cli_serves_until_stopped() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "stack.exchange", "--host", "127.0.0.1", "--port", "0", "--seed", "5"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:\d+", banner)
        assert match, banner
        assert requests.get(match.group(0) + "/api/v3/ping", timeout=5).json() == {}
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0
