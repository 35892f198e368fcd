"""BinanceClient against the in-process test server: retries, bans, weight budget, error reporting."""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from include.binance.client import (
    BanState,
    BinanceClient,
    normalize_base_url,
    read_ban_state,
    request_weight,
    symbols_param,
    write_ban_state,
)
from include.binance.errors import (
    BinanceAPIError,
    BinanceBannedError,
    BinanceError,
    BinanceHTTPError,
    BinanceResponseError,
    UnknownSymbolError,
)
from stack.exchange import BinanceTestServer

TICKER_PRICE = "/api/v3/ticker/price"
# 2026-01-01T00:00:10Z: early in a minute, so minute arithmetic in tests is unambiguous.
T0 = 1_767_225_610.0


class FakeTime:
    """Injected clock and sleep: sleeping advances the clock at once and is recorded."""

    def __init__(self, start: float = T0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def server() -> Iterator[BinanceTestServer]:
    with BinanceTestServer(seed=7) as srv:
        yield srv


@pytest.fixture
def fake() -> FakeTime:
    return FakeTime()


@pytest.fixture
def fake_server(fake: FakeTime) -> Iterator[BinanceTestServer]:
    """A server living on the same fake time as the client, so fake waits count as real waits."""
    with BinanceTestServer(seed=7, clock=fake.clock) as srv:
        yield srv


def client_for(server: BinanceTestServer, fake: FakeTime | None = None, **options: Any) -> BinanceClient:
    """A client with short timeouts and backoff; fake time if given, real time otherwise."""
    settings: dict[str, Any] = {"timeout": (1.0, 2.0), "max_retries": 2, "backoff_base_s": 0.01, "backoff_cap_s": 0.05}
    if fake is not None:
        settings.update(clock=fake.clock, sleep=fake.sleep)
    settings.update(options)
    return BinanceClient(server.url, **settings)


# -- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("data-api.binance.vision", "https://data-api.binance.vision"),
        ("data-api.binance.vision/", "https://data-api.binance.vision"),
        ("https://api.binance.com/", "https://api.binance.com"),
        ("http://127.0.0.1:8765", "http://127.0.0.1:8765"),
        (" https://api1.binance.com ", "https://api1.binance.com"),
    ],
)
def test_base_url_with_or_without_scheme_and_slash(given: str, expected: str) -> None:
    assert normalize_base_url(given) == expected


def test_default_base_url_is_the_market_data_host() -> None:
    assert BinanceClient().base_url == "https://data-api.binance.vision"


@pytest.mark.parametrize("bad", ["ftp://host", "https://", ""])
def test_bad_base_url_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="base_url"):
        normalize_base_url(bad)


@pytest.mark.parametrize(
    ("endpoint", "params", "weight"),
    [
        ("/api/v3/ping", {}, 1),
        ("/api/v3/exchangeInfo", {"symbols": '["BTCUSDT"]'}, 20),
        ("/api/v3/ticker/price", {"symbol": "BTCUSDT"}, 2),
        ("/api/v3/ticker/price", {"symbols": '["BTCUSDT","ETHUSDT"]'}, 4),
        ("/api/v3/ticker/price", {}, 4),
        ("/api/v3/ticker/24hr", {"symbol": "BTCUSDT"}, 2),
        ("/api/v3/ticker/24hr", {"symbols": json.dumps([f"S{i}" for i in range(20)])}, 2),
        ("/api/v3/ticker/24hr", {"symbols": json.dumps([f"S{i}" for i in range(21)])}, 40),
        ("/api/v3/ticker/24hr", {"symbols": json.dumps([f"S{i}" for i in range(100)])}, 40),
        ("/api/v3/ticker/24hr", {"symbols": json.dumps([f"S{i}" for i in range(101)])}, 80),
        ("/api/v3/ticker/24hr", {}, 80),
        ("/api/v3/klines", {"symbol": "BTCUSDT", "interval": "1m"}, 2),
        ("/api/v3/trades", {"symbol": "BTCUSDT", "limit": "1000"}, 25),
        # not in the project's shared facts: 4, as Binance documents it (include/binance/client.AGG_TRADES_WEIGHT)
        ("/api/v3/aggTrades", {"symbol": "BTCUSDT", "limit": "1000"}, 4),
        ("/api/v3/depth", {"symbol": "BTCUSDT"}, 5),
        ("/api/v3/depth", {"limit": "100"}, 5),
        ("/api/v3/depth", {"limit": "101"}, 25),
        ("/api/v3/depth", {"limit": "500"}, 25),
        ("/api/v3/depth", {"limit": "1000"}, 50),
        ("/api/v3/depth", {"limit": "5000"}, 250),
    ],
)
def test_request_weights_follow_the_documented_table(endpoint: str, params: dict[str, str], weight: int) -> None:
    assert request_weight(endpoint, params) == weight


def test_symbols_param_is_a_json_array_without_spaces() -> None:
    assert symbols_param(["BTCUSDT", "ETHUSDT"]) == '["BTCUSDT","ETHUSDT"]'


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c: c.ticker_price("BTCUSDT"), "list of symbols"),
        (lambda c: c.ticker_price([]), "must not be empty"),
        (lambda c: c.ticker_price(["BTCUSDT", "BTCUSDT"]), "more than once"),
        (lambda c: c.ticker_price(["btcusdt"]), "invalid symbol 'btcusdt'"),
        (lambda c: c.klines("BTCUSDT", "1H"), "unknown kline interval '1H'"),
        (lambda c: c.klines("BTCUSDT", "1m", limit=1001), r"1\.\.1000"),
        (lambda c: c.trades("BTCUSDT", limit=0), "limit"),
        (lambda c: c.depth("BTCUSDT", limit=5001), r"1\.\.5000"),
        (lambda c: c.agg_trades("BTCUSDT", limit=1001), r"1\.\.1000"),
        (lambda c: c.agg_trades("BTCUSDT", from_id=5, start_time=0), "not both"),
        (lambda c: c.agg_trades("BTCUSDT", from_id=-1), "from_id"),
        (lambda c: c.agg_trades("BTCUSDT", start_time=0, end_time=3_600_000), r"less than 1 h"),
        (lambda c: c.agg_trades("BTCUSDT", start_time=10, end_time=9), r"less than 1 h"),
    ],
)
def test_bad_arguments_fail_before_any_request(server: BinanceTestServer, call: Any, message: str) -> None:
    client = client_for(server)
    with pytest.raises((ValueError, TypeError), match=message):
        call(client)
    assert server.calls() == []


# -- requests and records ----------------------------------------------------------------------


def test_ticker_price_is_one_request_with_a_compact_symbols_array(server: BinanceTestServer) -> None:
    prices = client_for(server).ticker_price(["BTCUSDT", "ETHUSDT", "SOLUSDT"])
    assert [p.symbol for p in prices] == ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
    (call,) = server.calls()
    assert call["path"] == TICKER_PRICE and call["status"] == 200
    assert call["params"]["symbols"] == '["BTCUSDT","ETHUSDT","SOLUSDT"]'
    assert " " not in call["query"] and "+" not in call["query"] and "%20" not in call["query"]


def test_endpoints_return_typed_records(server: BinanceTestServer) -> None:
    client = client_for(server)
    before = datetime.now(UTC)
    (price,) = client.ticker_price(["BTCUSDT"])
    assert isinstance(price.price, Decimal) and price.price > 0
    assert before.replace(microsecond=before.microsecond // 1000 * 1000) <= price.time <= datetime.now(UTC)
    (daily,) = client.ticker_24hr(["ETHUSDT"])
    assert daily.low_price <= daily.last_price <= daily.high_price and daily.count > 0
    klines = client.klines("BTCUSDT", "1m", limit=5)
    assert len(klines) == 5 and all(k.interval == "1m" for k in klines)
    assert [k.open_time for k in klines] == sorted(k.open_time for k in klines)
    trades = client.trades("BTCUSDT", limit=10)
    assert len(trades) == 10 and trades[-1].trade_id == trades[0].trade_id + 9
    levels = client.depth("BTCUSDT", limit=5)
    assert [lv.side for lv in levels] == ["bid"] * 5 + ["ask"] * 5
    assert client.exchange_info(["BTCUSDT", "MATICUSDT"]) == {"BTCUSDT": "TRADING", "MATICUSDT": "BREAK"}
    assert abs(client.server_time() - datetime.now(UTC)).total_seconds() < 5
    recent = client.agg_trades("BTCUSDT", limit=10)
    assert len(recent) == 10 and [a.agg_trade_id for a in recent] == list(range(recent[0].agg_trade_id,
                                                                              recent[0].agg_trade_id + 10))
    assert client.agg_trades("BTCUSDT", limit=3, from_id=recent[0].agg_trade_id) == recent[:3]
    window = client.agg_trades("BTCUSDT", limit=1000, start_time=recent[0].time, end_time=recent[-1].time)
    assert set(recent) <= set(window) and all(recent[0].time <= a.time <= recent[-1].time for a in window)


def test_klines_start_time_accepts_datetimes(server: BinanceTestServer) -> None:
    client = client_for(server)
    newest = client.klines("BTCUSDT", "1m", limit=3)
    again = client.klines("BTCUSDT", "1m", limit=2, start_time=newest[0].open_time)
    assert [k.open_time for k in again] == [k.open_time for k in newest[:2]]
    assert server.calls()[-1]["params"]["startTime"] == str(int(newest[0].open_time.timestamp() * 1000))


def test_microsecond_time_unit_gives_the_same_records(server: BinanceTestServer) -> None:
    millis = client_for(server).klines("BTCUSDT", "1h", limit=3)
    micros = client_for(server, time_unit="MICROSECOND").klines("BTCUSDT", "1h", limit=3)
    assert server.calls()[-1]["time_unit"] == "MICROSECOND"
    assert [k.open_time for k in micros] == [k.open_time for k in millis]
    assert micros[:2] == millis[:2]  # closed klines are fixed; the open one moved in between


def test_each_call_is_logged_with_endpoint_status_weight_and_duration(
    server: BinanceTestServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="include.binance")
    client_for(server).trades("BTCUSDT", limit=5)
    (record,) = [r for r in caplog.records if r.name == "include.binance"]
    assert "/api/v3/trades" in record.getMessage()
    assert "HTTP 200" in record.getMessage() and "used weight 25/3000" in record.getMessage()
    assert " ms" in record.getMessage()


# -- retries -----------------------------------------------------------------------------------


def test_5xx_is_retried_with_jittered_backoff(server: BinanceTestServer, fake: FakeTime) -> None:
    server.add_fault("5xx", count=2, status=503)
    trades = client_for(server, fake, max_retries=3, backoff_base_s=0.5, backoff_cap_s=1.0).trades("BTCUSDT", 5)
    assert len(trades) == 5
    assert [c["status"] for c in server.calls()] == [503, 503, 200]
    assert len(fake.sleeps) == 2
    assert 0 <= fake.sleeps[0] <= 0.5 and 0 <= fake.sleeps[1] <= 1.0


def test_5xx_after_all_retries_raises_http_error_with_details(server: BinanceTestServer, fake: FakeTime) -> None:
    server.add_fault("5xx", count=10, status=502)
    with pytest.raises(BinanceHTTPError) as err:
        client_for(server, fake, max_retries=2).klines("ETHUSDT", "5m", limit=3)
    assert err.value.status == 502 and err.value.attempts == 3
    assert err.value.endpoint == "/api/v3/klines"
    assert err.value.params["symbol"] == "ETHUSDT"
    assert "Service unavailable" in err.value.body_excerpt
    assert "ETHUSDT" in str(err.value) and "HTTP 502" in str(err.value)
    assert len(server.calls()) == 3


def test_connection_errors_are_retried_then_reported(fake: FakeTime) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = BinanceClient(f"http://127.0.0.1:{port}", max_retries=2, clock=fake.clock, sleep=fake.sleep)
    with pytest.raises(BinanceHTTPError) as err:
        client.depth("BTCUSDT")
    assert err.value.status is None and err.value.attempts == 3
    assert "ConnectionError" in err.value.body_excerpt
    assert len(fake.sleeps) == 2


def test_read_timeout_is_retried(server: BinanceTestServer) -> None:
    server.add_fault("delay", delay_s=0.6)
    client = client_for(server, timeout=(1.0, 0.2), backoff_base_s=0.0)
    assert len(client.trades("BTCUSDT", limit=3)) == 3
    assert len(server.calls()) == 2


# -- 429 / 418 ---------------------------------------------------------------------------------


def test_429_with_short_retry_after_is_waited_out_and_nothing_arrives_during_it(server: BinanceTestServer) -> None:
    server.add_fault("429", retry_after=1, path=TICKER_PRICE)
    started = time.monotonic()
    prices = client_for(server).ticker_price(["BTCUSDT", "ETHUSDT"])
    assert len(prices) == 2
    assert time.monotonic() - started >= 1.0
    first, second = server.calls()
    assert (first["status"], second["status"]) == (429, 200)  # a call inside the ban would have got 418
    assert second["time"] >= first["banned_until"]


def test_418_longer_than_max_wait_raises_at_once_and_blocks_every_endpoint(
    server: BinanceTestServer, fake: FakeTime
) -> None:
    server.add_fault("418", retry_after=300, path="/api/v3/trades")
    client = client_for(server, fake, max_wait_s=60)
    with pytest.raises(BinanceBannedError) as err:
        client.trades("BTCUSDT")
    assert fake.sleeps == []
    assert err.value.status == 418
    assert err.value.until == datetime.fromtimestamp(T0 + 300, UTC)
    assert "2026-01-01T00:05:10+00:00" in str(err.value)
    assert "Too many requests" in err.value.reason
    # Every other dataset is blocked too, without reaching the server.
    with pytest.raises(BinanceBannedError, match="not calling /api/v3/klines"):
        client.klines("ETHUSDT", "1m")
    assert len(server.calls()) == 1
    assert client.banned_until == datetime.fromtimestamp(T0 + 300, UTC)


def test_repeated_429s_are_not_retried_in_a_loop(fake_server: BinanceTestServer, fake: FakeTime) -> None:
    fake_server.add_fault("429", count=10, retry_after=2)
    with pytest.raises(BinanceBannedError, match="still rate limited after 2 wait"):
        client_for(fake_server, fake, max_rate_limit_retries=2).ticker_price(["BTCUSDT"])
    assert [c["status"] for c in fake_server.calls()] == [429, 429, 429]  # never called inside a ban (418)
    assert fake.sleeps == [pytest.approx(2), pytest.approx(2)]


def test_a_client_that_does_not_really_wait_is_caught_by_the_server(server: BinanceTestServer, fake: FakeTime) -> None:
    # The client's sleep is fake but the server's clock is real: its retry lands inside the ban.
    server.add_fault("429", retry_after=2)
    with pytest.raises(BinanceBannedError) as err:
        client_for(server, fake).ticker_price(["BTCUSDT"])
    assert [c["status"] for c in server.calls()] == [429, 418]
    assert err.value.status == 418


def test_ban_is_shared_through_the_state_file(server: BinanceTestServer, tmp_path: Path) -> None:
    state = tmp_path / "state" / "binance-ban.json"
    server.add_fault("429", retry_after=1)
    first = client_for(server, ban_state_path=state, max_wait_s=0)
    with pytest.raises(BinanceBannedError):
        first.trades("BTCUSDT")
    saved = json.loads(state.read_text())
    assert saved["status"] == 429 and saved["endpoint"] == "/api/v3/trades"
    assert [p.name for p in state.parent.iterdir()] == ["binance-ban.json"]  # no temp file left over

    second = client_for(server, ban_state_path=state, max_wait_s=5)
    assert len(second.depth("ETHUSDT", limit=5)) == 10  # waited, then called
    banned, allowed = server.calls()
    assert allowed["status"] == 200 and allowed["time"] >= banned["banned_until"]


def test_long_ban_in_the_state_file_stops_another_client_without_calling(
    server: BinanceTestServer, tmp_path: Path
) -> None:
    state = tmp_path / "ban.json"
    write_ban_state(state, BanState(time.time() + 600, 418, "IP banned", "/api/v3/klines"))
    with pytest.raises(BinanceBannedError) as err:
        client_for(server, ban_state_path=state).ticker_24hr(["BTCUSDT"])
    assert err.value.status == 418 and err.value.cause_endpoint == "/api/v3/klines"
    assert server.calls() == []


def test_a_shorter_ban_does_not_overwrite_a_longer_one(tmp_path: Path) -> None:
    state = tmp_path / "ban.json"
    write_ban_state(state, BanState(T0 + 600, 418, "long", "/api/v3/klines"))
    client = BinanceClient("http://127.0.0.1:9", ban_state_path=state, clock=lambda: T0)
    client._record_ban("/api/v3/trades", _FakeResponse(429, {"Retry-After": "5"}))
    ban = read_ban_state(state)
    assert ban is not None and ban.until == T0 + 600 and ban.reason == "long"


def test_corrupt_ban_state_file_is_an_error_not_ignored(server: BinanceTestServer, tmp_path: Path) -> None:
    state = tmp_path / "ban.json"
    state.write_text("{not json")
    with pytest.raises(BinanceError, match="unreadable"):
        client_for(server, ban_state_path=state).trades("BTCUSDT")


class _FakeResponse:
    """The parts of requests.Response that _record_ban reads."""

    def __init__(self, status: int, headers: dict[str, str]) -> None:
        self.status_code = status
        self.headers = headers
        self.content = b'{"code":-1003,"msg":"Too many requests."}'


# -- weight budget -----------------------------------------------------------------------------


def test_weight_budget_waits_for_the_next_minute_before_sending(fake_server: BinanceTestServer, fake: FakeTime) -> None:
    fake_server.set_used_weight(2970)  # other users of the IP this minute
    calls_at_sleep: list[int] = []

    def sleep(seconds: float) -> None:
        calls_at_sleep.append(len(fake_server.calls()))
        fake.sleep(seconds)

    client = client_for(fake_server, clock=fake.clock, sleep=sleep, weight_budget=3000)
    client.trades("BTCUSDT", limit=5)  # 2970 + 25 = 2995: within budget, no wait
    assert fake.sleeps == [] and client.used_weight == 2995
    client.exchange_info(["BTCUSDT"])  # 2995 + 20 > 3000: wait first
    assert fake.sleeps == [pytest.approx(60 - 10 + 1)]  # to the next minute (+1 s margin)
    assert calls_at_sleep == [1]  # the wait happened before the second request was sent
    assert [c["status"] for c in fake_server.calls()] == [200, 200]
    assert client.used_weight == 20  # a new minute on the server too


def test_weight_is_counted_from_the_server_header(server: BinanceTestServer, fake: FakeTime) -> None:
    client = client_for(server, fake, weight_budget=60)
    client.trades("BTCUSDT")
    client.trades("ETHUSDT")  # 25 + 25 = 50 <= 60
    assert fake.sleeps == []
    client.trades("SOLUSDT")  # 50 + 25 > 60
    assert len(fake.sleeps) == 1


# -- error reporting ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "problem", "body"),
    [
        ({"kind": "html"}, "body is HTML", "<!DOCTYPE html>"),
        ({"kind": "truncated"}, "not valid JSON", '[{"id":'),
        ({"kind": "missing_field", "field": "price"}, "field 'price' missing", '{"id":'),
    ],
)
def test_bad_bodies_raise_response_errors_naming_endpoint_symbol_status_and_excerpt(
    server: BinanceTestServer, fault: dict[str, Any], problem: str, body: str
) -> None:
    server.add_fault(fault.pop("kind"), **fault)
    with pytest.raises(BinanceResponseError) as err:
        client_for(server).trades("LINKUSDT", limit=3)
    assert err.value.endpoint == "/api/v3/trades"
    assert err.value.symbol == "LINKUSDT"
    assert err.value.status == 200
    assert problem in err.value.problem
    assert err.value.body_excerpt.startswith(body)
    assert all(part in str(err.value) for part in ("/api/v3/trades", "LINKUSDT", "HTTP 200", problem))


def test_missing_symbol_in_multi_symbol_answer_is_reported(server: BinanceTestServer) -> None:
    server.add_fault("missing_field", field="symbol", path=TICKER_PRICE)
    with pytest.raises(BinanceResponseError, match="'symbol' missing"):
        client_for(server).ticker_price(["BTCUSDT", "ETHUSDT"])


def test_binance_error_body_becomes_api_error(server: BinanceTestServer) -> None:
    with pytest.raises(BinanceAPIError) as err:
        client_for(server).klines("FOOUSDT", "1m")
    assert (err.value.status, err.value.code, err.value.msg) == (400, -1121, "Invalid symbol.")
    assert err.value.endpoint == "/api/v3/klines" and err.value.symbol == "FOOUSDT"
    assert "FOOUSDT" in str(err.value) and "-1121" in str(err.value)


def test_html_error_page_on_4xx_becomes_http_error(server: BinanceTestServer) -> None:
    server.add_fault("html", status=403)
    with pytest.raises(BinanceHTTPError) as err:
        client_for(server).depth("BTCUSDT")
    assert err.value.status == 403 and err.value.body_excerpt.startswith("<!DOCTYPE html>")


# -- symbol validation -------------------------------------------------------------------------


def test_validate_symbols_names_break_and_unknown_symbols(server: BinanceTestServer) -> None:
    client = client_for(server)
    with pytest.raises(UnknownSymbolError) as err:
        client.validate_symbols(["BTCUSDT", "MATICUSDT", "NOPEUSDT", "ETHUSDT"])
    assert err.value.problems == {"MATICUSDT": "BREAK", "NOPEUSDT": None}
    assert "MATICUSDT (status BREAK)" in str(err.value) and "NOPEUSDT (not listed)" in str(err.value)


def test_validate_symbols_uses_a_cache_with_a_ttl(server: BinanceTestServer, fake: FakeTime) -> None:
    client = client_for(server, fake, symbol_cache_ttl_s=3600)
    client.validate_symbols(["BTCUSDT", "POLUSDT"])
    client.validate_symbols(["POLUSDT"])
    assert len(server.calls()) == 1
    fake.now += 3601
    client.validate_symbols(["POLUSDT"])
    assert len(server.calls()) == 2
    assert server.calls()[-1]["params"] == {"symbols": '["POLUSDT"]'}
