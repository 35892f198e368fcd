"""The test exchange's HTTP layer: Binance's market-data endpoints over the simulated market, with
Binance's parameter checks, error codes, request weights, `X-MBX-USED-WEIGHT-1M`, 429/418 bans, the
injected faults (`stack.exchange.faults`) and the control endpoints tests drive it with.

Besides the API it serves Binance's public archive layout (`stack.exchange.archive`) under /data/,
without weights or bans (on Binance it is another host, data.binance.vision).

Faults for tests can be injected through the Python API (`add_fault`) or over HTTP:
    POST /_control/faults    {"kind": "429", "count": 1, "path": "/api/v3/klines", "retry_after": 1}
                             (or a list of those); kinds: 429, 418, 5xx, html, truncated,
                             missing_field, delay; for archive zip files archive_corrupt and
                             archive_truncated (path: one file's /data/... path, or none for any)
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

import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import islice
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from include.binance.client import AGG_TRADES_MAX_WINDOW_MS, REQUEST_WEIGHT_LIMIT, request_weight
from include.binance.intervals import KLINE_INTERVALS, period_next, period_open, period_prev
from stack.exchange.archive import Archive, NotInArchive
from stack.exchange.faults import ARCHIVE_PREFIX, Answer, Fault, Faults, damage_answer, damage_archive, damage_payload
from stack.exchange.market import E8, SPECS, AggTrade, Candle, Market, SymbolState

log = logging.getLogger(__name__)

_DAY_MS = 86_400_000

SYMBOL_RE = re.compile(r"^[A-Z0-9\-_.]{1,20}$")
SYMBOLS_RE = re.compile(r'^\[("[A-Z0-9\-_.]{1,20}"(,"[A-Z0-9\-_.]{1,20}")*)?\]$')
SYMBOLS_LEGAL = '^\\[("[A-Z0-9-_.]{1,20}"(,"[A-Z0-9-_.]{1,20}"){0,}){0,1}\\]$'
INT_RE = re.compile(r"^[0-9]{1,20}$")


def fmt(value: Decimal) -> str:
    """Binance's decimal string: exactly 8 decimals, never exponent notation."""
    return format(value.quantize(E8, rounding=ROUND_HALF_EVEN), "f")


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


def _json_answer(status: int, payload: Any, headers: dict[str, str] | None = None) -> Answer:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return Answer(status, body, {"Content-Type": "application/json;charset=UTF-8", **(headers or {})})


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
        self.archive = Archive(lambda: self.market)
        self._frozen_at: float | None = None
        self._lock = threading.RLock()
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
            "/api/v3/aggTrades": self._agg_trades,
            "/api/v3/depth": self._depth,
        }
        self._faults = Faults(self._routes)

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
        """Misbehave on the next `count` API calls (to `path` only, if given); see stack.exchange.faults."""
        with self._lock:
            return self._faults.add(
                kind, count=count, path=path, retry_after=retry_after, status=status, field=field, delay_s=delay_s
            )

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
                self.archive.clear()

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

    def handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Answer:
        """Answer one HTTP request (the socket layer only transports it)."""
        parts = urlsplit(target)
        if parts.path.startswith("/_control/"):
            return self._control(method, parts.path, body)
        if parts.path.startswith(ARCHIVE_PREFIX):
            return self._archive_file(method, parts.path)
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

    def archive_file(self, path: str) -> bytes:
        """The bytes the archive serves at `path` (a zip or its .CHECKSUM), made now if not yet kept;
        raises stack.exchange.archive.NotInArchive. For benchmarks that warm the files up."""
        with self._lock:
            return self.archive.get(path, self._frozen_at or self.clock())[0]

    def _archive_file(self, method: str, path: str) -> Answer:
        """A file of the archive layout: no weight, no ban; archive faults apply to zip files."""
        arrival = self.clock()
        with self._lock:
            call: dict[str, Any] = {"time": arrival, "method": method, "path": path, "query": "", "params": {},
                                    "time_unit": None, "status": None, "weight": 0, "fault": None,
                                    "banned_until": None}
            self._calls.append(call)
            try:
                if method != "GET":
                    raise NotInArchive(f"method {method} not allowed")
                body, content_type = self.archive.get(path, self._frozen_at or arrival)
                answer = Answer(200, body, {"Content-Type": content_type})
                if path.endswith(".zip"):
                    fault = self._faults.take(path)
                    call["fault"] = fault.kind if fault else None
                    damage_archive(fault, answer)
            except NotInArchive as exc:
                # S3 answers a missing key with an XML error document
                xml = (f"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>NoSuchKey</Code>"
                       f"<Message>{exc}</Message><Key>{path}</Key></Error>").encode()
                answer = Answer(404, xml, {"Content-Type": "application/xml"})
            call["status"] = answer.status
            return answer

    def _api(self, method: str, path: str, query: str, headers: dict[str, str], call: dict[str, Any]) -> Answer:
        route = self._routes.get(path)
        if route is None:
            html = f"<html><body><h1>404 Not Found</h1><p>{path}</p></body></html>".encode()
            return Answer(404, html, {"Content-Type": "text/html"})
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
        fault = self._faults.take(path)
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

    def _apply_fault(self, fault: Fault | None, path: str, payload: Any, headers: dict[str, str]) -> Answer:
        damage_payload(fault, path, payload)
        answer = _json_answer(200, payload, headers)
        damage_answer(fault, answer)
        return answer

    def _parse_query(self, query: str) -> dict[str, str]:
        params: dict[str, str] = {}
        for name, value in parse_qsl(query, keep_blank_values=True):
            if name in params:
                raise ApiError(-1101, f"Duplicate values for parameter '{name}'.")
            params[name] = value
        return params

    def _add_weight(self, now: float, weight: int) -> int:
        minute = int(now // 60)
        if minute != self._weight_minute:
            self._weight_minute, self._weight_used = minute, 0
        self._weight_used += weight
        return self._weight_used

    def _used_weight(self, now: float) -> int:
        return self._weight_used if self._weight_minute == int(now // 60) else 0

    def _rate_limited(self, status: int, retry_after: int, msg: str, now: float) -> Answer:
        headers = {"Retry-After": str(retry_after), "X-MBX-USED-WEIGHT-1M": str(self._used_weight(now))}
        return _json_answer(status, {"code": -1003, "msg": msg}, headers)

    def _error(self, exc: ApiError, now: float) -> Answer:
        headers = {"X-MBX-USED-WEIGHT-1M": str(self._used_weight(now))}
        return _json_answer(exc.status, {"code": exc.code, "msg": exc.msg}, headers)

    def _control(self, method: str, path: str, body: bytes) -> Answer:
        try:
            data = json.loads(body) if body.strip() else {}
        except ValueError as exc:
            return _json_answer(400, {"error": f"body is not JSON: {exc}"})
        try:
            if (method, path) == ("GET", "/_control/calls"):
                return _json_answer(200, {"calls": self.calls()})
            if (method, path) == ("GET", "/_control/faults"):
                with self._lock:
                    return _json_answer(200, {"faults": self._faults.as_json()})
            if (method, path) == ("POST", "/_control/faults"):
                specs = data if isinstance(data, list) else [data]
                for spec in specs:
                    if not isinstance(spec, dict) or "kind" not in spec:
                        raise ValueError(f"a fault is an object with a 'kind', got {spec!r}")
                    spec = dict(spec)
                    self.add_fault(str(spec.pop("kind")), **spec)
                with self._lock:
                    return _json_answer(200, {"faults": self._faults.as_json()})
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

    def _stepped(self, symbol: str, ctx: _Ctx) -> SymbolState:
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
        return [_kline_row(self.market.candle(state, interval, p, ctx.now_us), ctx) for p in opens]

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

    def _agg_trades(self, params: dict[str, str], ctx: _Ctx) -> Any:
        """The aggregate trade tape up to now: from fromId, or in [startTime, endTime] (inclusive, at most
        an hour apart), from startTime, up to endTime (the newest before it), or the most recent."""
        _read_params(params, ("symbol", "fromId", "startTime", "endTime", "limit"))
        symbol = _one_symbol(params)
        limit = _int_param(params, "limit", 500, 1000) or 500
        from_id = _int_param(params, "fromId", None)
        start, end = _time_ms(params, "startTime"), _time_ms(params, "endTime")
        if from_id is not None and (start is not None or end is not None):
            raise ApiError(-1128, "Combination of optional parameters invalid.")
        if start is not None and end is not None and end - start >= AGG_TRADES_MAX_WINDOW_MS:
            raise ApiError(-1127, "More than 1 hours between startTime and endTime.")
        tape, now_us = self.market.tape(symbol), ctx.now_us
        rows: Iterable[AggTrade]
        if from_id is not None:
            rows = islice(tape.from_id(from_id, now_us), limit)
        elif start is not None:
            last = now_us if end is None else min(end * 1000 + 999, now_us)
            rows = islice(tape.between(start * 1000, last), limit)
        else:
            rows = tape.before(now_us if end is None else min(end * 1000 + 999, now_us), limit)
        return [
            {"a": a.id, "p": fmt(a.price), "q": fmt(a.qty), "f": a.first_trade_id, "l": a.last_trade_id,
             "T": ctx.us(a.time_us), "m": a.is_buyer_maker, "M": True}
            for a in rows
        ]

    def _depth(self, params: dict[str, str], ctx: _Ctx) -> Any:
        _read_params(params, ("symbol", "limit"))
        symbol = _one_symbol(params)
        limit = _int_param(params, "limit", 100, 5000) or 100
        state = self._stepped(symbol, ctx)
        bids, asks = state.book(limit)
        return {
            "lastUpdateId": state.update_id,
            "bids": [[fmt(price), fmt(qty)] for price, qty in bids],
            "asks": [[fmt(price), fmt(qty)] for price, qty in asks],
        }


def _kline_row(candle: Candle, ctx: _Ctx) -> list[Any]:
    """A kline as Binance's 12-element array, times in the unit the request asked for."""
    return [
        ctx.ms(candle.open_time),
        fmt(candle.open),
        fmt(candle.high),
        fmt(candle.low),
        fmt(candle.close),
        fmt(candle.volume),
        ctx.close_time(candle.next_open),
        fmt(candle.quote_volume),
        candle.trades,
        fmt(candle.taker_base),
        fmt(candle.taker_quote),
        "0",
    ]


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
            length = answer.content_length if answer.content_length is not None else len(answer.body)
            self.send_header("Content-Length", str(length))
            self.end_headers()
            self.wfile.write(answer.body)
        except (BrokenPipeError, ConnectionResetError) as exc:
            log.info("client left before the answer to %s %s was sent: %s", method, self.path, exc)

    def log_message(self, message_format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), message_format % args)
