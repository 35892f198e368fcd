"""A small Binance-compatible market-data server, for tests and for running the pipeline offline.

Usage:
    python -m include.binance.server --host 127.0.0.1 --port 8765 [--seed N]

It serves GET /api/v3/{ping,time,exchangeInfo,ticker/price,ticker/24hr,klines,trades,depth} with
Binance's shapes, parameter checks, error codes, request weights and `X-MBX-USED-WEIGHT-1M`.
Data moves between calls: every data request on a symbol adds one to three trades to a seeded
random walk, so trade ids grow, the newest kline changes while earlier ones stay fixed, and the
order book's lastUpdateId increases. MATICUSDT is listed with status BREAK and never moves.

Faults for tests can be injected through the Python API (`add_fault`) or over HTTP:
    POST /_control/faults    {"kind": "429", "count": 1, "path": "/api/v3/klines", "retry_after": 1}
                             (or a list of those); kinds: 429, 418, 5xx, html, truncated,
                             missing_field, delay
    POST /_control/settings  {"used_weight": 5990, "ban_retry_after": 120, "weight_limit": 6000,
                              "frozen": true}
    POST /_control/reset     {} or {"market": true}: clear faults, ban, weights and the call log
    GET  /_control/calls     every API call received, with arrival time and answer status
As on Binance, a call arriving while a 429/418 Retry-After runs gets 418, so a test can catch a
client that kept calling. A frozen market (`freeze()`, or "frozen": true) stops moving: every call
answers with the same data, at the time it was frozen, until it is thawed (rate limits keep the real
clock); tests use it to re-run an interval against the same source data.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import re
import signal
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from include.binance.client import REQUEST_WEIGHT_LIMIT, request_weight
from include.binance.intervals import KLINE_INTERVALS, fixed_length_ms, period_next, period_open, period_prev

log = logging.getLogger("include.binance.server")

_DAY_MS = 86_400_000
E8 = Decimal("0.00000001")
MAX_TRADES_KEPT = 5000
MAX_CANDLES_KEPT = 1500
INITIAL_TRADES = 1000
INITIAL_TRADE_SPACING_US = 60_000

SYMBOL_RE = re.compile(r"^[A-Z0-9\-_.]{1,20}$")
SYMBOLS_RE = re.compile(r'^\[("[A-Z0-9\-_.]{1,20}"(,"[A-Z0-9\-_.]{1,20}")*)?\]$')
SYMBOLS_LEGAL = '^\\[("[A-Z0-9-_.]{1,20}"(,"[A-Z0-9-_.]{1,20}"){0,}){0,1}\\]$'
INT_RE = re.compile(r"^[0-9]{1,20}$")

FAULT_KINDS = ("429", "418", "5xx", "html", "truncated", "missing_field", "delay")
# The field a missing_field fault drops by default: one the project's parsers read.
DEFAULT_MISSING_FIELD = {
    "/api/v3/time": "serverTime",
    "/api/v3/exchangeInfo": "status",
    "/api/v3/ticker/price": "price",
    "/api/v3/ticker/24hr": "lastPrice",
    "/api/v3/trades": "price",
    "/api/v3/depth": "lastUpdateId",
}


@dataclass(frozen=True)
class SymbolSpec:
    """A listed symbol: status, assets, a starting price and its tick and lot step (powers of ten)."""

    symbol: str
    base: str
    quote: str
    status: str
    base_price: Decimal
    tick: Decimal
    step: Decimal


SPECS: dict[str, SymbolSpec] = {
    spec.symbol: spec
    for spec in (
        SymbolSpec("BTCUSDT", "BTC", "USDT", "TRADING", Decimal("65000.00"), Decimal("0.01"), Decimal("0.00001")),
        SymbolSpec("ETHUSDT", "ETH", "USDT", "TRADING", Decimal("3200.00"), Decimal("0.01"), Decimal("0.0001")),
        SymbolSpec("BNBUSDT", "BNB", "USDT", "TRADING", Decimal("600.00"), Decimal("0.01"), Decimal("0.001")),
        SymbolSpec("SOLUSDT", "SOL", "USDT", "TRADING", Decimal("150.00"), Decimal("0.01"), Decimal("0.001")),
        SymbolSpec("XRPUSDT", "XRP", "USDT", "TRADING", Decimal("0.5200"), Decimal("0.0001"), Decimal("0.1")),
        SymbolSpec("ADAUSDT", "ADA", "USDT", "TRADING", Decimal("0.4500"), Decimal("0.0001"), Decimal("0.1")),
        SymbolSpec("DOGEUSDT", "DOGE", "USDT", "TRADING", Decimal("0.12000"), Decimal("0.00001"), Decimal("1")),
        SymbolSpec("POLUSDT", "POL", "USDT", "TRADING", Decimal("0.4000"), Decimal("0.0001"), Decimal("0.1")),
        SymbolSpec("LINKUSDT", "LINK", "USDT", "TRADING", Decimal("15.000"), Decimal("0.001"), Decimal("0.01")),
        SymbolSpec("LTCUSDT", "LTC", "USDT", "TRADING", Decimal("80.00"), Decimal("0.01"), Decimal("0.001")),
        SymbolSpec("MATICUSDT", "MATIC", "USDT", "BREAK", Decimal("0.3800"), Decimal("0.0001"), Decimal("0.1")),
    )
}
TRADING_SYMBOLS = tuple(s for s, spec in SPECS.items() if spec.status == "TRADING")


def fmt(value: Decimal) -> str:
    """Binance's decimal string: exactly 8 decimals, never exponent notation."""
    return format(value.quantize(E8, rounding=ROUND_HALF_EVEN), "f")


def _to_tick(value: Decimal, tick: Decimal) -> Decimal:
    return value.quantize(tick, rounding=ROUND_HALF_EVEN)


# -- market simulation -----------------------------------------------------------------------


@dataclass
class _Candle:
    open_time: int
    next_open: int
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal = Decimal(0)
    quote_volume: Decimal = Decimal(0)
    trades: int = 0
    taker_base: Decimal = Decimal(0)
    taker_quote: Decimal = Decimal(0)

    def add(self, trade: _Trade) -> None:
        self.high = max(self.high, trade.price)
        self.low = min(self.low, trade.price)
        self.close = trade.price
        self.volume += trade.qty
        self.quote_volume += trade.quote_qty
        self.trades += 1
        if not trade.is_buyer_maker:  # the taker bought
            self.taker_base += trade.qty
            self.taker_quote += trade.quote_qty

    def to_json(self, ctx: _Ctx) -> list[Any]:
        return [
            ctx.ms(self.open_time),
            fmt(self.open),
            fmt(self.high),
            fmt(self.low),
            fmt(self.close),
            fmt(self.volume),
            ctx.close_time(self.next_open),
            fmt(self.quote_volume),
            self.trades,
            fmt(self.taker_base),
            fmt(self.taker_quote),
            "0",
        ]


@dataclass(frozen=True)
class _Trade:
    id: int
    price: Decimal
    qty: Decimal
    quote_qty: Decimal
    time_us: int
    is_buyer_maker: bool


class _Series:
    """Klines of one symbol and interval built from live trades: the open one, and frozen closed ones."""

    def __init__(self, interval: str) -> None:
        self.interval = interval
        self.current: _Candle | None = None
        self.closed: OrderedDict[int, _Candle] = OrderedDict()

    def add(self, trade: _Trade) -> None:
        t_ms = trade.time_us // 1000
        self.roll_to(t_ms)
        if self.current is None:
            start = period_open(self.interval, t_ms)
            self.current = _Candle(
                start, period_next(self.interval, start), trade.price, trade.price, trade.price, trade.price
            )
        self.current.add(trade)

    def roll_to(self, t_ms: int) -> None:
        """Close the open kline if `t_ms` is past it; periods without trades become flat klines."""
        current = self.current
        if current is None or t_ms < current.next_open:
            return
        self._keep(current)
        target = period_open(self.interval, t_ms)
        start = current.next_open
        size = fixed_length_ms(self.interval)
        if size is not None and (target - start) // size > MAX_CANDLES_KEPT:
            start = target - MAX_CANDLES_KEPT * size
        price = current.close
        while start < target:
            nxt = period_next(self.interval, start)
            self._keep(_Candle(start, nxt, price, price, price, price))
            start = nxt
        self.current = _Candle(target, period_next(self.interval, target), price, price, price, price)

    def _keep(self, candle: _Candle) -> None:
        self.closed[candle.open_time] = candle
        while len(self.closed) > MAX_CANDLES_KEPT:
            self.closed.popitem(last=False)

    def get(self, open_ms: int) -> _Candle | None:
        if self.current is not None and self.current.open_time == open_ms:
            return self.current
        return self.closed.get(open_ms)


class _SymbolState:
    """Live state of one symbol: price, recent trades, order-book update id and kline series."""

    def __init__(self, spec: SymbolSpec, seed: int, now_us: int, market: Market) -> None:
        self.spec = spec
        self.rng_seed = f"{seed}|{spec.symbol}"
        self.rng = random.Random(f"{self.rng_seed}|live")
        self.trades: list[_Trade] = []
        self.series: dict[str, _Series] = {}
        self.next_id = 100_000_000 + self.rng.randrange(1_000_000)
        self.update_id = 1_000_000_000 + self.rng.randrange(1_000_000_000)
        first_us = now_us - INITIAL_TRADES * INITIAL_TRADE_SPACING_US
        self.price = market.anchor(spec, "1m", period_open("1m", first_us // 1000))
        for i in range(INITIAL_TRADES):
            self.trade(first_us + i * INITIAL_TRADE_SPACING_US)

    def trade(self, time_us: int) -> _Trade:
        spec, rng = self.spec, self.rng
        move = _to_tick(self.price * rng.randint(-3, 3) / 10_000, spec.tick)
        if move == 0:
            move = spec.tick * rng.choice((-1, 1))
        self.price = max(self.price + move, spec.tick)
        most = max(2, int(Decimal(5000) / (self.price * spec.step)))
        qty = spec.step * rng.randint(max(1, most // 1000), most)
        trade = _Trade(
            id=self.next_id,
            price=self.price,
            qty=qty,
            quote_qty=(self.price * qty).quantize(E8),
            time_us=time_us,
            is_buyer_maker=rng.random() < 0.5,
        )
        self.next_id += 1
        self.trades.append(trade)
        if len(self.trades) > MAX_TRADES_KEPT + 1000:
            del self.trades[:-MAX_TRADES_KEPT]
        for series in self.series.values():
            series.add(trade)
        return trade

    def step(self, now_us: int) -> None:
        """Market activity between two calls: 1-3 trades and a new book update (none when not TRADING)."""
        if self.spec.status == "TRADING":
            for _ in range(self.rng.randint(1, 3)):
                self.trade(now_us)
            self.update_id += self.rng.randint(1, 20)
        for series in self.series.values():
            series.roll_to(now_us // 1000)

    def book_rng(self) -> random.Random:
        """The order book's randomness: one book per update id, so the same update id is the same book."""
        return random.Random(f"{self.rng_seed}|book|{self.update_id}")

    def series_for(self, interval: str, now_us: int) -> _Series:
        """The kline series of `interval`, built from the retained trades on first use."""
        series = self.series.get(interval)
        if series is None:
            series = self.series[interval] = _Series(interval)
            for trade in self.trades:
                series.add(trade)
            series.roll_to(now_us // 1000)
        return series


class Market:
    """Seeded market for every symbol: live states on first use, synthetic history before that."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._states: dict[str, _SymbolState] = {}

    def state(self, symbol: str, now_us: int) -> _SymbolState:
        state = self._states.get(symbol)
        if state is None:
            state = self._states[symbol] = _SymbolState(SPECS[symbol], self.seed, now_us, self)
        return state

    def anchor(self, spec: SymbolSpec, interval: str, open_ms: int) -> Decimal:
        """Deterministic price at a kline boundary before live data: within 2% of the base price."""
        rng = random.Random(f"{self.seed}|{spec.symbol}|{interval}|{open_ms}")
        return _to_tick(spec.base_price * (1 + Decimal(rng.randint(-200, 200)) / 10_000), spec.tick)

    def synthetic(self, spec: SymbolSpec, interval: str, open_ms: int) -> _Candle:
        """A fixed kline for a period without live data; consecutive ones join (close = next open)."""
        nxt = period_next(interval, open_ms)
        open_, close = self.anchor(spec, interval, open_ms), self.anchor(spec, interval, nxt)
        rng = random.Random(f"{self.seed}|{spec.symbol}|{interval}|{open_ms}|shape")
        high = _to_tick(max(open_, close) * (1 + Decimal(rng.randint(0, 50)) / 10_000), spec.tick)
        low = max(_to_tick(min(open_, close) * (1 - Decimal(rng.randint(0, 50)) / 10_000), spec.tick), spec.tick)
        volume = spec.step * rng.randint(1_000, 1_000_000)
        quote = (volume * (open_ + close) / 2).quantize(E8)
        share = Decimal(rng.randint(30, 70)) / 100
        return _Candle(
            open_time=open_ms,
            next_open=nxt,
            open=open_,
            high=high,
            low=low,
            close=close,
            volume=volume,
            quote_volume=quote,
            trades=rng.randint(10, 5_000),
            taker_base=(volume * share).quantize(spec.step),
            taker_quote=(quote * share).quantize(E8),
        )

    def candle(self, state: _SymbolState, interval: str, open_ms: int, now_us: int) -> _Candle:
        live = state.series_for(interval, now_us).get(open_ms)
        return live if live is not None else self.synthetic(state.spec, interval, open_ms)


# -- HTTP layer ------------------------------------------------------------------------------


class ApiError(Exception):
    """A Binance-style error answer: HTTP status plus {"code", "msg"}."""

    def __init__(self, code: int, msg: str, status: int = 400) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.status = status


@dataclass(frozen=True)
class _Ctx:
    """Per-request context: the time and the time unit asked for by X-MBX-TIME-UNIT."""

    now: float
    micro: bool

    @property
    def now_us(self) -> int:
        return int(self.now * 1_000_000)

    def ms(self, ms: int) -> int:
        return ms * 1000 if self.micro else ms

    def us(self, us: int) -> int:
        return us if self.micro else us // 1000

    def close_time(self, next_open_ms: int) -> int:
        return next_open_ms * 1000 - 1 if self.micro else next_open_ms - 1


@dataclass
class Fault:
    """An injected misbehaviour for the next `remaining` API calls (to `path`, or to any path)."""

    kind: str
    remaining: int = 1
    path: str | None = None
    retry_after: int = 1
    status: int | None = None
    field: str | None = None
    delay_s: float = 0.0


@dataclass
class _Answer:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


def _json_answer(status: int, payload: Any, headers: dict[str, str] | None = None) -> _Answer:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return _Answer(status, body, {"Content-Type": "application/json;charset=UTF-8", **(headers or {})})


def _read_params(params: dict[str, str], allowed: tuple[str, ...]) -> None:
    unread = [name for name in params if name not in allowed]
    if unread:
        read = len(params) - len(unread)
        raise ApiError(
            -1104, f"Not all sent parameters were read; read '{read}' parameter(s) but was sent '{len(params)}'."
        )


def _mandatory(params: dict[str, str], name: str) -> str:
    value = params.get(name, "")
    if value == "":
        raise ApiError(-1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.")
    return value


def _int_param(params: dict[str, str], name: str, default: int | None, top: int | None = None) -> int | None:
    """An unsigned integer parameter; values above `top` are cut to it, as Binance does for limits."""
    raw = params.get(name)
    if raw is None:
        return default
    if not INT_RE.match(raw):
        raise ApiError(-1100, f"Illegal characters found in parameter '{name}'; legal range is '^[0-9]{{1,20}}$'.")
    value = int(raw)
    if name == "limit" and value < 1:
        raise ApiError(-1130, f"Invalid data sent for a parameter: '{name}' must be at least 1.")
    return min(value, top) if top is not None else value


def _time_ms(params: dict[str, str], name: str) -> int | None:
    """startTime/endTime, accepted in milliseconds or (16 digits) microseconds."""
    value = _int_param(params, name, None)
    if value is None:
        return None
    return value // 1000 if value >= 10**14 else value


def _one_symbol(params: dict[str, str]) -> str:
    """The mandatory `symbol` of single-symbol endpoints (klines, trades, depth)."""
    symbols = _symbols({"symbol": _mandatory(params, "symbol")}, required=True)
    assert symbols is not None  # required=True never answers "all"
    return symbols[0]


def _symbols(params: dict[str, str], *, required: bool) -> list[str] | None:
    """Requested symbols from `symbol` or `symbols`; None means all (where allowed)."""
    if "symbol" in params and "symbols" in params:
        raise ApiError(-1128, "Combination of optional parameters invalid.")
    if "symbol" in params:
        symbol = _mandatory(params, "symbol")
        if not SYMBOL_RE.match(symbol):
            raise ApiError(
                -1100, "Illegal characters found in parameter 'symbol'; legal range is '^[A-Z0-9-_.]{1,20}$'."
            )
        if symbol not in SPECS:
            raise ApiError(-1121, "Invalid symbol.")
        return [symbol]
    if "symbols" in params:
        raw = _mandatory(params, "symbols")
        if not SYMBOLS_RE.match(raw):
            raise ApiError(-1100, f"Illegal characters found in parameter 'symbols'; legal range is '{SYMBOLS_LEGAL}'.")
        symbols: list[str] = json.loads(raw)
        if not symbols:
            raise ApiError(-1102, "Mandatory parameter 'symbols' was not sent, was empty/null, or malformed.")
        if len(set(symbols)) != len(symbols):
            raise ApiError(-1151, "Symbol is present multiple times in the list.")
        if any(s not in SPECS for s in symbols):
            raise ApiError(-1121, "Invalid symbol.")
        return symbols
    if required:
        raise ApiError(-1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.")
    return None


class BinanceTestServer:
    """The server, runnable in-process: `start()` serves on a background thread (port 0 -> `.url`)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        seed: int = 0,
        clock: Callable[[], float] = time.time,
        weight_limit: int = REQUEST_WEIGHT_LIMIT,
        ban_retry_after_s: int = 120,
    ) -> None:
        self.host = host
        self.port = port
        self.seed = seed
        self.clock = clock
        self.weight_limit = weight_limit
        self.ban_retry_after_s = ban_retry_after_s
        self.market = Market(seed)
        self._frozen_at: float | None = None
        self._lock = threading.RLock()
        self._faults: list[Fault] = []
        self._calls: list[dict[str, Any]] = []
        self._banned_until: float | None = None
        self._weight_minute: int | None = None
        self._weight_used = 0
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._routes: dict[str, Callable[[dict[str, str], _Ctx], Any]] = {
            "/api/v3/ping": self._ping,
            "/api/v3/time": self._time,
            "/api/v3/exchangeInfo": self._exchange_info,
            "/api/v3/ticker/price": self._ticker_price,
            "/api/v3/ticker/24hr": self._ticker_24hr,
            "/api/v3/klines": self._klines,
            "/api/v3/trades": self._trades,
            "/api/v3/depth": self._depth,
        }

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL to give the client, e.g. http://127.0.0.1:54321 (real port once started)."""
        if self._httpd is None:
            raise RuntimeError("server not started: call start() first")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> BinanceTestServer:
        """Bind and serve on a daemon thread; returns self so `server = BinanceTestServer().start()` works."""
        if self._httpd is not None:
            raise RuntimeError(f"server already running on {self.url}")
        self._httpd = _HTTPServer((self.host, self.port), _Handler, self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="binance-test-server", daemon=True
        )
        self._thread.start()
        log.info("Binance test server listening on %s (seed %s)", self.url, self.seed)
        return self

    def stop(self) -> None:
        """Stop serving and release the port."""
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    def __enter__(self) -> BinanceTestServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- test controls ---------------------------------------------------------------------------

    def add_fault(
        self,
        kind: str,
        *,
        count: int = 1,
        path: str | None = None,
        retry_after: int = 1,
        status: int | None = None,
        field: str | None = None,
        delay_s: float = 0.0,
    ) -> Fault:
        """Misbehave on the next `count` API calls (to `path` only, if given); see FAULT_KINDS."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; known: {FAULT_KINDS}")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"fault count must be an int >= 1, got {count!r}")
        if path is not None and path not in self._routes:
            raise ValueError(f"fault path {path!r} is not an API path; known: {sorted(self._routes)}")
        if isinstance(retry_after, bool) or not isinstance(retry_after, int) or retry_after < 0:
            raise ValueError(f"retry_after must be whole seconds >= 0, got {retry_after!r}")
        if kind == "5xx" and status is not None and not 500 <= status <= 599:
            raise ValueError(f"a 5xx fault needs a status in 500..599, got {status}")
        if kind == "delay" and not delay_s > 0:
            raise ValueError(f"a delay fault needs delay_s > 0, got {delay_s!r}")
        fault = Fault(kind, count, path, retry_after, status, field, float(delay_s))
        with self._lock:
            self._faults.append(fault)
        return fault

    def reset(self, *, market: bool = False) -> None:
        """Forget faults, ban, used weight and the call log (and the market state if `market`)."""
        with self._lock:
            self._faults.clear()
            self._calls.clear()
            self._banned_until = None
            self._weight_minute = None
            self._weight_used = 0
            if market:
                self.market = Market(self.seed)

    def freeze(self, frozen: bool = True) -> None:
        """Stop (or restart) the market: while frozen, data calls neither trade nor move the clock."""
        with self._lock:
            self._frozen_at = self.clock() if frozen else None

    @property
    def frozen(self) -> bool:
        return self._frozen_at is not None

    def calls(self) -> list[dict[str, Any]]:
        """Every API call received so far: time (arrival, epoch s), path, query, params, status, ..."""
        with self._lock:
            return [dict(call) for call in self._calls]

    def set_used_weight(self, used: int) -> None:
        """Pretend other clients already used `used` weight in the current minute."""
        with self._lock:
            self._weight_minute = int(self.clock() // 60)
            self._weight_used = used

    @property
    def banned_until(self) -> float | None:
        """End (epoch s) of the 429/418 block the server enforces, if any."""
        with self._lock:
            return self._banned_until

    # -- request handling --------------------------------------------------------------------

    def handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> _Answer:
        """Answer one HTTP request (the socket layer only transports it)."""
        parts = urlsplit(target)
        if parts.path.startswith("/_control/"):
            return self._control(method, parts.path, body)
        arrival = self.clock()
        with self._lock:
            call: dict[str, Any] = {
                "time": arrival,
                "method": method,
                "path": parts.path,
                "query": parts.query,
                "params": {},
                "time_unit": headers.get("x-mbx-time-unit"),
                "status": None,
                "weight": 0,
                "fault": None,
                "banned_until": None,
            }
            self._calls.append(call)
            answer = self._api(method, parts.path, parts.query, headers, call)
            call["status"] = answer.status
            call["banned_until"] = self._banned_until
            return answer

    def _api(self, method: str, path: str, query: str, headers: dict[str, str], call: dict[str, Any]) -> _Answer:
        route = self._routes.get(path)
        if route is None:
            html = f"<html><body><h1>404 Not Found</h1><p>{path}</p></body></html>".encode()
            return _Answer(404, html, {"Content-Type": "text/html"})
        now = self.clock()
        try:
            if method != "GET":
                raise ApiError(-1000, f"Method {method} is not supported for {path}.", status=405)
            params = self._parse_query(query)
            call["params"] = params
        except ApiError as exc:
            return self._error(exc, now)
        try:
            weight = request_weight(path, params)
        except ValueError:
            weight = request_weight(path, {})
        call["weight"] = weight

        if self._banned_until is not None and now < self._banned_until:
            # Calling during a Retry-After is what gets an IP banned: answer 418 and extend the ban.
            self._banned_until = now + self.ban_retry_after_s
            until_ms = int(self._banned_until * 1000)
            return self._rate_limited(
                418,
                self.ban_retry_after_s,
                f"Way too many requests; IP(127.0.0.1) banned until {until_ms}. "
                "Please use the websocket for live updates to avoid bans.",
                now,
            )
        fault = self._take_fault(path)
        call["fault"] = fault.kind if fault else None
        if fault is not None and fault.kind in ("429", "418"):
            self._banned_until = now + fault.retry_after
            return self._rate_limited(int(fault.kind), fault.retry_after, "Too many requests (injected).", now)
        used = self._add_weight(now, weight)
        if used > self.weight_limit:
            retry_after = max(1, math.ceil(60 - now % 60))
            self._banned_until = now + retry_after
            return self._rate_limited(
                429,
                retry_after,
                f"Too many requests; current limit of IP(127.0.0.1) is {self.weight_limit} "
                "requests per minute. Please use the websocket for live updates to avoid polling the API.",
                now,
            )
        weight_header = {"X-MBX-USED-WEIGHT-1M": str(used)}
        if fault is not None and fault.kind == "5xx":
            status = fault.status or 503
            return _json_answer(status, {"code": -1001, "msg": "Service unavailable (injected)."}, weight_header)
        try:
            unit = headers.get("x-mbx-time-unit", "MILLISECOND").upper()
            if unit not in ("MILLISECOND", "MICROSECOND"):
                raise ApiError(-1100, f"Invalid X-MBX-TIME-UNIT {unit!r}: use MILLISECOND or MICROSECOND.")
            market_now = now if self._frozen_at is None else self._frozen_at
            payload = route(params, _Ctx(market_now, unit == "MICROSECOND"))
        except ApiError as exc:
            return self._error(exc, now)
        return self._apply_fault(fault, path, payload, weight_header)

    def _apply_fault(self, fault: Fault | None, path: str, payload: Any, headers: dict[str, str]) -> _Answer:
        if fault is not None and fault.kind == "missing_field":
            _drop_field(payload, fault.field or DEFAULT_MISSING_FIELD.get(path))
        answer = _json_answer(200, payload, headers)
        if fault is None:
            return answer
        if fault.kind == "truncated":
            answer.body = answer.body[: max(1, len(answer.body) // 2)]
        elif fault.kind == "html":
            answer.status = fault.status or 200
            answer.body = (
                b"<!DOCTYPE html><html><head><title>Bad gateway</title></head><body><h1>502</h1></body></html>"
            )
            answer.headers["Content-Type"] = "text/html; charset=utf-8"
        elif fault.kind == "delay":
            answer.delay_s = fault.delay_s
        return answer

    def _parse_query(self, query: str) -> dict[str, str]:
        params: dict[str, str] = {}
        for name, value in parse_qsl(query, keep_blank_values=True):
            if name in params:
                raise ApiError(-1101, f"Duplicate values for parameter '{name}'.")
            params[name] = value
        return params

    def _take_fault(self, path: str) -> Fault | None:
        for fault in self._faults:
            if fault.path is None or fault.path == path:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    def _add_weight(self, now: float, weight: int) -> int:
        minute = int(now // 60)
        if minute != self._weight_minute:
            self._weight_minute, self._weight_used = minute, 0
        self._weight_used += weight
        return self._weight_used

    def _used_weight(self, now: float) -> int:
        return self._weight_used if self._weight_minute == int(now // 60) else 0

    def _rate_limited(self, status: int, retry_after: int, msg: str, now: float) -> _Answer:
        headers = {"Retry-After": str(retry_after), "X-MBX-USED-WEIGHT-1M": str(self._used_weight(now))}
        return _json_answer(status, {"code": -1003, "msg": msg}, headers)

    def _error(self, exc: ApiError, now: float) -> _Answer:
        headers = {"X-MBX-USED-WEIGHT-1M": str(self._used_weight(now))}
        return _json_answer(exc.status, {"code": exc.code, "msg": exc.msg}, headers)

    def _control(self, method: str, path: str, body: bytes) -> _Answer:
        try:
            data = json.loads(body) if body.strip() else {}
        except ValueError as exc:
            return _json_answer(400, {"error": f"body is not JSON: {exc}"})
        try:
            if (method, path) == ("GET", "/_control/calls"):
                return _json_answer(200, {"calls": self.calls()})
            if (method, path) == ("GET", "/_control/faults"):
                with self._lock:
                    return _json_answer(200, {"faults": [asdict(f) for f in self._faults]})
            if (method, path) == ("POST", "/_control/faults"):
                specs = data if isinstance(data, list) else [data]
                for spec in specs:
                    if not isinstance(spec, dict) or "kind" not in spec:
                        raise ValueError(f"a fault is an object with a 'kind', got {spec!r}")
                    spec = dict(spec)
                    self.add_fault(str(spec.pop("kind")), **spec)
                with self._lock:
                    return _json_answer(200, {"faults": [asdict(f) for f in self._faults]})
            if (method, path) == ("POST", "/_control/reset"):
                self.reset(market=bool(data.get("market", False)))
                return _json_answer(200, {})
            if (method, path) == ("POST", "/_control/settings"):
                with self._lock:
                    if "used_weight" in data:
                        self.set_used_weight(int(data["used_weight"]))
                    if "ban_retry_after" in data:
                        self.ban_retry_after_s = int(data["ban_retry_after"])
                    if "weight_limit" in data:
                        self.weight_limit = int(data["weight_limit"])
                    if "frozen" in data:
                        if not isinstance(data["frozen"], bool):
                            raise TypeError(f"frozen must be true or false, got {data['frozen']!r}")
                        self.freeze(data["frozen"])
                return _json_answer(200, {"ban_retry_after": self.ban_retry_after_s, "weight_limit": self.weight_limit,
                                          "frozen": self.frozen})
        except (TypeError, ValueError) as exc:
            return _json_answer(400, {"error": str(exc)})
        return _json_answer(404, {"error": f"no control endpoint {method} {path}"})

    # -- endpoints -------------------------------------------------------------------------------

    def _ping(self, params: dict[str, str], ctx: _Ctx) -> Any:
        _read_params(params, ())
        return {}

    def _time(self, params: dict[str, str], ctx: _Ctx) -> Any:
        _read_params(params, ())
        return {"serverTime": ctx.us(ctx.now_us)}

    def _exchange_info(self, params: dict[str, str], ctx: _Ctx) -> Any:
        _read_params(params, ("symbol", "symbols", "symbolStatus"))
        symbols = _symbols(params, required=False)
        status = params.get("symbolStatus")
        if status is not None:
            if symbols is not None:
                raise ApiError(-1128, "Combination of optional parameters invalid.")
            if status not in ("TRADING", "HALT", "BREAK"):
                raise ApiError(-1100, "Illegal characters found in parameter 'symbolStatus'.")
        listed = [SPECS[s] for s in (symbols or SPECS)]
        return {
            "timezone": "UTC",
            "serverTime": ctx.us(ctx.now_us),
            "rateLimits": [
                {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": self.weight_limit},
                {"rateLimitType": "RAW_REQUESTS", "interval": "MINUTE", "intervalNum": 5, "limit": 300000},
            ],
            "exchangeFilters": [],
            "symbols": [
                {
                    "symbol": spec.symbol,
                    "status": spec.status,
                    "baseAsset": spec.base,
                    "baseAssetPrecision": 8,
                    "quoteAsset": spec.quote,
                    "quoteAssetPrecision": 8,
                    "filters": [
                        {
                            "filterType": "PRICE_FILTER",
                            "minPrice": fmt(spec.tick),
                            "maxPrice": "1000000.00000000",
                            "tickSize": fmt(spec.tick),
                        },
                        {
                            "filterType": "LOT_SIZE",
                            "minQty": fmt(spec.step),
                            "maxQty": "9000000.00000000",
                            "stepSize": fmt(spec.step),
                        },
                    ],
                }
                for spec in listed
                if status is None or spec.status == status
            ],
        }

    def _stepped(self, symbol: str, ctx: _Ctx) -> _SymbolState:
        state = self.market.state(symbol, ctx.now_us)
        if self._frozen_at is None:
            state.step(ctx.now_us)
        return state

    def _ticker_price(self, params: dict[str, str], ctx: _Ctx) -> Any:
        _read_params(params, ("symbol", "symbols"))
        symbols = _symbols(params, required=False)
        rows = [{"symbol": s, "price": fmt(self._stepped(s, ctx).price)} for s in (symbols or SPECS)]
        return rows[0] if "symbol" in params else rows

    def _ticker_24hr(self, params: dict[str, str], ctx: _Ctx) -> Any:
        _read_params(params, ("symbol", "symbols", "type"))
        symbols = _symbols(params, required=False)
        kind = params.get("type", "FULL")
        if kind not in ("FULL", "MINI"):
            raise ApiError(-1100, "Illegal characters found in parameter 'type'; legal range is 'FULL, MINI'.")
        rows = [self._daily(s, ctx, mini=kind == "MINI") for s in (symbols or SPECS)]
        return rows[0] if "symbol" in params else rows

    def _daily(self, symbol: str, ctx: _Ctx, *, mini: bool) -> dict[str, Any]:
        """24 h rolling statistics, aggregated from the hourly klines so both endpoints agree."""
        state = self._stepped(symbol, ctx)
        now_ms = ctx.now_us // 1000
        opened = now_ms - _DAY_MS
        start = period_open("1h", opened)
        current = state.series_for("1h", ctx.now_us).current
        end = current.open_time if current is not None else period_open("1h", now_ms)
        candles = []
        p = start
        while p <= end:
            candles.append(self.market.candle(state, "1h", p, ctx.now_us))
            p = period_next("1h", p)
        spec, last = state.spec, state.trades[-1]
        volume = sum((c.volume for c in candles), Decimal(0))
        quote_volume = sum((c.quote_volume for c in candles), Decimal(0))
        count = sum(c.trades for c in candles)
        open_price, last_price = candles[0].open, state.price
        row: dict[str, Any] = {
            "symbol": symbol,
            "openPrice": fmt(open_price),
            "highPrice": fmt(max(max(c.high for c in candles), last_price)),
            "lowPrice": fmt(min(min(c.low for c in candles), last_price)),
            "lastPrice": fmt(last_price),
            "volume": fmt(volume),
            "quoteVolume": fmt(quote_volume),
            "openTime": ctx.ms(opened),
            "closeTime": ctx.ms(now_ms),
            "firstId": last.id - count + 1 if count else -1,
            "lastId": last.id if count else -1,
            "count": count,
        }
        if mini:
            return row
        change = last_price - open_price
        previous = self.market.candle(state, "1h", period_prev("1h", start), ctx.now_us)
        book = state.book_rng()
        return {
            "symbol": symbol,
            "priceChange": fmt(change),
            "priceChangePercent": format((change / open_price * 100).quantize(Decimal("0.001")), "f"),
            "weightedAvgPrice": fmt(quote_volume / volume if volume else last_price),
            "prevClosePrice": fmt(previous.close),
            "lastPrice": row["lastPrice"],
            "lastQty": fmt(last.qty),
            "bidPrice": fmt(last_price),
            "bidQty": fmt(spec.step * book.randint(1, 10_000)),
            "askPrice": fmt(last_price + spec.tick),
            "askQty": fmt(spec.step * book.randint(1, 10_000)),
            **{k: row[k] for k in ("openPrice", "highPrice", "lowPrice", "volume", "quoteVolume")},
            **{k: row[k] for k in ("openTime", "closeTime", "firstId", "lastId", "count")},
        }

    def _klines(self, params: dict[str, str], ctx: _Ctx) -> Any:
        _read_params(params, ("symbol", "interval", "startTime", "endTime", "timeZone", "limit"))
        symbol = _one_symbol(params)
        interval = _mandatory(params, "interval")
        if interval not in KLINE_INTERVALS:
            raise ApiError(-1120, "Invalid interval.")
        if params.get("timeZone", "0") not in ("0", "+0", "-0", "00:00", "+00:00", "-00:00"):
            raise ApiError(-1100, "This test server supports timeZone 0 (UTC) only.")
        limit = _int_param(params, "limit", 500, 1000) or 500
        start, end = _time_ms(params, "startTime"), _time_ms(params, "endTime")
        state = self._stepped(symbol, ctx)
        series = state.series_for(interval, ctx.now_us)
        newest = series.current.open_time if series.current is not None else period_open(interval, ctx.now_us // 1000)
        opens: list[int] = []
        if start is not None:
            p = period_open(interval, start)
            if p < start:
                p = period_next(interval, p)
            while p <= newest and (end is None or p <= end) and len(opens) < limit:
                opens.append(p)
                p = period_next(interval, p)
        else:
            p = newest if end is None else min(newest, period_open(interval, end))
            while len(opens) < limit and p >= 0:
                opens.append(p)
                p = period_prev(interval, p)
            opens.reverse()
        return [self.market.candle(state, interval, p, ctx.now_us).to_json(ctx) for p in opens]

    def _trades(self, params: dict[str, str], ctx: _Ctx) -> Any:
        _read_params(params, ("symbol", "limit"))
        symbol = _one_symbol(params)
        limit = _int_param(params, "limit", 500, 1000) or 500
        state = self._stepped(symbol, ctx)
        return [
            {
                "id": t.id,
                "price": fmt(t.price),
                "qty": fmt(t.qty),
                "quoteQty": fmt(t.quote_qty),
                "time": ctx.us(t.time_us),
                "isBuyerMaker": t.is_buyer_maker,
                "isBestMatch": True,
            }
            for t in state.trades[-limit:]
        ]

    def _depth(self, params: dict[str, str], ctx: _Ctx) -> Any:
        _read_params(params, ("symbol", "limit"))
        symbol = _one_symbol(params)
        limit = _int_param(params, "limit", 100, 5000) or 100
        state = self._stepped(symbol, ctx)
        spec, rng = state.spec, state.book_rng()
        bids: list[list[str]] = []
        price = state.price
        while len(bids) < limit and price > 0:
            bids.append([fmt(price), fmt(spec.step * rng.randint(1, 20_000))])
            price -= spec.tick * rng.randint(1, 3)
        asks: list[list[str]] = []
        price = state.price + spec.tick
        while len(asks) < limit:
            asks.append([fmt(price), fmt(spec.step * rng.randint(1, 20_000))])
            price += spec.tick * rng.randint(1, 3)
        return {"lastUpdateId": state.update_id, "bids": bids, "asks": asks}


def _drop_field(payload: Any, name: str | None) -> None:
    """Damage the first record: drop `name` from an object, or the last element of an array."""
    record = payload
    if isinstance(payload, dict) and isinstance(payload.get("symbols"), list) and payload["symbols"]:
        record = payload["symbols"][0]
    elif isinstance(payload, list) and payload:
        record = payload[0]
    if isinstance(record, list) and record:
        record.pop()
    elif isinstance(record, dict) and record:
        record.pop(name if name in record else next(iter(record)))


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], app: BinanceTestServer):
        self.app = app
        super().__init__(address, handler)


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    server_version = "BinanceTestServer/1.0"

    def do_GET(self) -> None:
        self._answer("GET")

    def do_POST(self) -> None:
        self._answer("POST")

    def _answer(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        answer = self.server.app.handle(method, self.path, headers, body)
        if answer.delay_s:
            time.sleep(answer.delay_s)
        try:
            self.send_response(answer.status)
            for name, value in answer.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(answer.body)))
            self.end_headers()
            self.wfile.write(answer.body)
        except (BrokenPipeError, ConnectionResetError) as exc:
            log.info("client left before the answer to %s %s was sent: %s", method, self.path, exc)

    def log_message(self, message_format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), message_format % args)


def main(argv: list[str] | None = None) -> int:
    """Run the server in the foreground until Ctrl-C or SIGTERM."""
    parser = argparse.ArgumentParser(description="Binance-compatible market-data server for tests and demos.")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="port to bind; 0 picks a free one (default 8765)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the simulated market (default 0)")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = BinanceTestServer(args.host, args.port, seed=args.seed).start()
    print(f"Binance test server on {server.url} (seed {args.seed}); Ctrl-C to stop", flush=True)
    stopped = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopped.set())
    while not stopped.wait(0.5):
        pass
    server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
