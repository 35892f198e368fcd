"""Rate-limit-aware client for Binance Spot market data, built on `requests` (no Airflow imports).

Why it is careful: Binance answers an over-eager client with 429 and then 418 (an IP ban of two
minutes to three days) that would stop every dataset of the pipeline. So the client:
- keeps a ban-until time from every 429/418 `Retry-After` and refuses to send anything before it,
  sharing it with other processes through an optional JSON state file;
- tracks `X-MBX-USED-WEIGHT-1M` and waits for the next minute rather than exceed its weight budget
  (by default half of the 6000/minute limit, leaving room for other users of the IP); with a weight
  state file, every process on the host reserves its weight in one file-locked record before it
  calls, so concurrent tasks (backfill runs) keep to one budget together;
- retries only what is safe to retry (5xx, connection errors, timeouts) with jittered backoff;
- turns every other failure into an exception naming endpoint, parameters, status and body.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import random
import re
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import requests

from include.binance.errors import (
    BinanceAPIError,
    BinanceBannedError,
    BinanceError,
    BinanceHTTPError,
    BinanceResponseError,
    UnknownSymbolError,
    excerpt,
)
from include.binance.intervals import KLINE_INTERVALS
from include.binance.models import (
    AggTrade,
    DailyTicker,
    Kline,
    LatestPrice,
    OrderBookLevel,
    Trade,
    to_epoch_ms,
    utc_from_epoch,
)
from include.binance.parse import (
    AGG_TRADES,
    DEPTH,
    EXCHANGE_INFO,
    KLINES,
    TICKER_24HR,
    TICKER_PRICE,
    TRADES,
    parse_24hr,
    parse_agg_trades,
    parse_depth,
    parse_exchange_info,
    parse_klines,
    parse_prices,
    parse_trades,
)

log = logging.getLogger("include.binance")

PING = "/api/v3/ping"
TIME = "/api/v3/time"

DEFAULT_BASE_URL = "https://data-api.binance.vision"
REQUEST_WEIGHT_LIMIT = 6000
DEFAULT_WEIGHT_BUDGET = REQUEST_WEIGHT_LIMIT // 2
MAX_LIMITS = {KLINES: 1000, TRADES: 1000, DEPTH: 5000, AGG_TRADES: 1000}
# aggTrades: startTime and endTime less than one hour apart (Binance answers -1127 otherwise)
AGG_TRADES_MAX_WINDOW_MS = 3_600_000
# The project's shared facts give no weight for aggTrades; Binance's documentation charges 4, so the
# budget reserves 4 (the server's X-MBX-USED-WEIGHT-1M corrects the count after every call anyway).
AGG_TRADES_WEIGHT = 4
SYMBOL_PATTERN = re.compile(r"^[A-Z0-9\-_.]{1,20}$")

# Used when a 429/418 comes without a readable Retry-After: the documented minimum ban is 2 minutes.
DEFAULT_RETRY_AFTER_S = {429: 60.0, 418: 120.0}
# The weight counter resets on the server's minute; waking a little after the local boundary
# absorbs small clock differences between this host and Binance.
MINUTE_MARGIN_S = 1.0

T = TypeVar("T")


def request_weight(endpoint: str, params: Mapping[str, Any] | None = None) -> int:
    """Request weight Binance charges for `endpoint` called with `params` (raises ValueError if unknown)."""
    params = params or {}
    if endpoint in (PING, TIME):
        return 1
    if endpoint == EXCHANGE_INFO:
        return 20
    if endpoint == TICKER_PRICE:
        return 2 if "symbol" in params else 4
    if endpoint == TICKER_24HR:
        if "symbol" in params:
            return 2
        if "symbols" not in params:
            return 80
        count = _symbols_count(params["symbols"])
        return 2 if count <= 20 else 40 if count <= 100 else 80
    if endpoint == KLINES:
        return 2
    if endpoint == AGG_TRADES:
        return AGG_TRADES_WEIGHT
    if endpoint == TRADES:
        return 25
    if endpoint == DEPTH:
        limit = int(params.get("limit", 100))
        return 5 if limit <= 100 else 25 if limit <= 500 else 50 if limit <= 1000 else 250
    raise ValueError(f"no request weight known for endpoint {endpoint!r}")


def _symbols_count(value: Any) -> int:
    if isinstance(value, str):
        value = json.loads(value)
    if not isinstance(value, list | tuple):
        raise ValueError(f"symbols must be a JSON array, got {value!r}")
    return len(value)


def normalize_base_url(base_url: str) -> str:
    """`https://host` from `host`, `host/`, `https://host/` (http:// kept for local test servers)."""
    url = base_url.strip()
    if "://" not in url:
        url = "https://" + url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"base_url must be a host or an http(s) URL, got {base_url!r}")
    return url.rstrip("/")


def symbols_param(symbols: Sequence[str]) -> str:
    """The `symbols` query value: a JSON array without spaces (Binance answers 400 to a space)."""
    return json.dumps(list(symbols), separators=(",", ":"))


def _check_symbols(symbols: Sequence[str]) -> list[str]:
    if isinstance(symbols, str):
        raise TypeError(f"symbols must be a list of symbols, got the string {symbols!r}")
    checked = list(symbols)
    if not checked:
        raise ValueError("symbols must not be empty")
    for symbol in checked:
        _check_symbol(symbol)
    duplicates = sorted({s for s in checked if checked.count(s) > 1})
    if duplicates:
        raise ValueError(f"symbols listed more than once (Binance answers -1151): {duplicates}")
    return checked


def _check_symbol(symbol: str) -> str:
    if not isinstance(symbol, str) or not SYMBOL_PATTERN.match(symbol):
        raise ValueError(f"invalid symbol {symbol!r}: expected upper-case letters/digits like 'BTCUSDT'")
    return symbol


def _check_limit(endpoint: str, limit: int) -> int:
    top = MAX_LIMITS[endpoint]
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= top:
        raise ValueError(f"limit for {endpoint} must be an int in 1..{top}, got {limit!r}")
    return limit


def _time_param(value: datetime | int, name: str) -> str:
    if isinstance(value, datetime):
        return str(to_epoch_ms(value))
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an aware datetime or epoch milliseconds, got {value!r}")
    return str(value)


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class BanState:
    """Calls are blocked until `until` (epoch seconds) because `endpoint` answered `status`."""

    until: float
    status: int
    reason: str
    endpoint: str

    def to_json(self) -> dict[str, Any]:
        return {
            "until": self.until,
            "until_iso": _iso(self.until),
            "status": self.status,
            "reason": self.reason,
            "endpoint": self.endpoint,
        }


def read_ban_state(path: Path) -> BanState | None:
    """The ban recorded in `path`, or None if there is no file (a corrupt file is an error, not ignored)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
        return BanState(
            until=float(data["until"]),
            status=int(data["status"]),
            reason=str(data["reason"]),
            endpoint=str(data["endpoint"]),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise BinanceError(
            f"Binance ban state file {path} is unreadable ({exc!r}); fix or delete it. Content: {excerpt(text)!r}"
        ) from exc


def write_ban_state(path: Path, ban: BanState) -> None:
    """Write `ban` atomically (temp file + os.replace) so concurrent readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as tmp:
            json.dump(ban.to_json(), tmp)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


class SharedWeight:
    """The weight used this minute by every client of the host, in one small file that each process
    locks (flock) while it reads and writes it: `{"minute": <epoch minute>, "used": <weight>}`.

    A client reserves a call's weight before sending it, and raises the record to what the server
    reports afterwards (X-MBX-USED-WEIGHT-1M counts every user of the IP), so the reservations of
    concurrent processes add up and none of them can push the IP past the budget by itself. An
    unreadable record (a process died mid-write) counts as a full minute: the next minute starts clean.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    @contextlib.contextmanager
    def _locked(self) -> Any:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd
        finally:
            os.close(fd)  # releases the lock

    def _read(self, fd: int, minute: int, budget: int) -> int:
        raw = os.pread(fd, 4096, 0)
        if not raw.strip():
            return 0
        try:
            data = json.loads(raw)
            recorded, used = int(data["minute"]), int(data["used"])
        except (ValueError, KeyError, TypeError):
            log.warning("weight state file %s is unreadable (%r): counting this minute as full", self.path,
                        excerpt(raw))
            # recorded as a full minute, so the next minute starts clean
            self._write(fd, minute, budget)
            return budget
        return used if recorded == minute else 0

    @staticmethod
    def _write(fd: int, minute: int, used: int) -> None:
        body = json.dumps({"minute": minute, "used": used, "minute_iso": _iso(minute * 60)}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, body, 0)

    def reserve(self, minute: int, weight: int, budget: int) -> tuple[bool, int]:
        """(True, used after adding `weight`) when it fits this minute's budget, or nothing is used
        yet (a call heavier than the budget goes alone); else (False, used), nothing reserved."""
        with self._locked() as fd:
            used = self._read(fd, minute, budget)
            if used and used + weight > budget:
                return False, used
            self._write(fd, minute, used + weight)
            return True, used + weight

    def observe(self, minute: int, used: int, budget: int) -> int:
        """Raise the record to `used`, the server's count for `minute`; returns the record."""
        with self._locked() as fd:
            recorded = self._read(fd, minute, budget)
            if used > recorded:
                self._write(fd, minute, used)
                return used
            return recorded

    def used(self, minute: int, budget: int) -> int:
        with self._locked() as fd:
            return self._read(fd, minute, budget)


@dataclass(frozen=True)
class _Reply:
    payload: Any
    status: int
    received_at: datetime


class BinanceClient:
    """Binance Spot market-data client: one method per endpoint, returning parsed records.

    `clock` returns epoch seconds and `sleep` waits; both are injectable so tests can drive time.
    One instance per thread/task: its own ban and weight bookkeeping is not locked. Processes share
    bans through `ban_state_path` (last writer wins if two record a ban at the same instant) and the
    weight budget through `weight_state_path` (a locked record, see SharedWeight).
    """

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        *,
        timeout: float | tuple[float, float] = (3.05, 10.0),
        max_retries: int = 3,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 10.0,
        max_wait_s: float = 60.0,
        weight_budget: int = DEFAULT_WEIGHT_BUDGET,
        ban_state_path: str | os.PathLike[str] | None = None,
        weight_state_path: str | os.PathLike[str] | None = None,
        symbol_cache_ttl_s: float = 3600.0,
        max_rate_limit_retries: int = 2,
        time_unit: str | None = None,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        if max_retries < 0 or max_rate_limit_retries < 0:
            raise ValueError(f"retry counts must be >= 0, got {max_retries=} {max_rate_limit_retries=}")
        if not 0 < weight_budget <= REQUEST_WEIGHT_LIMIT:
            raise ValueError(f"weight_budget must be in 1..{REQUEST_WEIGHT_LIMIT}, got {weight_budget}")
        if max_wait_s < 0 or backoff_base_s < 0 or backoff_cap_s < 0:
            raise ValueError(f"waits must be >= 0, got {max_wait_s=} {backoff_base_s=} {backoff_cap_s=}")
        if time_unit not in (None, "MILLISECOND", "MICROSECOND"):
            raise ValueError(f"time_unit must be None, 'MILLISECOND' or 'MICROSECOND', got {time_unit!r}")
        self.base_url = normalize_base_url(base_url)
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.max_wait_s = max_wait_s
        self.weight_budget = weight_budget
        self.ban_state_path = Path(ban_state_path) if ban_state_path is not None else None
        self.shared_weight = SharedWeight(weight_state_path) if weight_state_path is not None else None
        self.symbol_cache_ttl_s = symbol_cache_ttl_s
        self.max_rate_limit_retries = max_rate_limit_retries
        self._owns_session = session is None
        self._session = session if session is not None else requests.Session()
        self._headers = {"Accept": "application/json", "User-Agent": "binance-cdc-pipeline/1.0"}
        if time_unit is not None:
            self._headers["X-MBX-TIME-UNIT"] = time_unit
        self._sleep = sleep
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._ban: BanState | None = None
        self._used_weight = 0
        self._used_minute: int | None = None
        self._symbol_cache: dict[str, tuple[str | None, float]] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """Close the HTTP session if this client created it."""
        if self._owns_session:
            self._session.close()

    def __enter__(self) -> BinanceClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def used_weight(self) -> int:
        """Weight used in the current minute, as last reported by the server (or counted locally)."""
        if self._used_minute != int(self._clock() // 60):
            return 0
        return self._used_weight

    @property
    def banned_until(self) -> datetime | None:
        """When the current 429/418 block ends (this client's or the shared file's), or None."""
        ban = self._current_ban()
        if ban is None or ban.until <= self._clock():
            return None
        return datetime.fromtimestamp(ban.until, UTC)

    # -- endpoints -----------------------------------------------------------------------------

    def ping(self) -> None:
        """Check connectivity (weight 1)."""
        self._get(PING, {}, None)

    def server_time(self) -> datetime:
        """Binance's clock (weight 1), e.g. to check this host's clock."""
        reply = self._get(TIME, {}, None)
        payload = reply.payload
        value = payload.get("serverTime") if isinstance(payload, dict) else None
        if isinstance(value, bool) or not isinstance(value, int):
            raise BinanceResponseError(
                TIME, None, "field 'serverTime' missing or not an integer", excerpt(json.dumps(payload)), reply.status
            )
        return utc_from_epoch(value)

    def exchange_info(self, symbols: Sequence[str] | None = None) -> dict[str, str]:
        """{symbol: status} for `symbols` (one request), or for every listed symbol if None."""
        params: dict[str, str] = {}
        label = None
        if symbols is not None:
            checked = _check_symbols(symbols)
            params["symbols"] = symbols_param(checked)
            label = ",".join(checked)
        reply = self._get(EXCHANGE_INFO, params, label)
        return self._parsed(EXCHANGE_INFO, label, reply, lambda: parse_exchange_info(reply.payload))

    def ticker_price(self, symbols: Sequence[str]) -> list[LatestPrice]:
        """Latest price of each symbol, in one request; `time` is when the response arrived."""
        checked = _check_symbols(symbols)
        label = ",".join(checked)
        reply = self._get(TICKER_PRICE, {"symbols": symbols_param(checked)}, label)
        prices = self._parsed(TICKER_PRICE, label, reply, lambda: parse_prices(reply.payload, reply.received_at))
        self._check_all_returned(TICKER_PRICE, checked, [p.symbol for p in prices], reply)
        return prices

    def ticker_24hr(self, symbols: Sequence[str]) -> list[DailyTicker]:
        """Rolling 24 h statistics of each symbol, in one request (type MINI: the fields we keep)."""
        checked = _check_symbols(symbols)
        label = ",".join(checked)
        reply = self._get(TICKER_24HR, {"symbols": symbols_param(checked), "type": "MINI"}, label)
        tickers = self._parsed(TICKER_24HR, label, reply, lambda: parse_24hr(reply.payload))
        self._check_all_returned(TICKER_24HR, checked, [t.symbol for t in tickers], reply)
        return tickers

    def klines(
        self,
        symbol: str,
        interval: str,
        limit: int = 500,
        start_time: datetime | int | None = None,
        end_time: datetime | int | None = None,
    ) -> list[Kline]:
        """Up to `limit` klines, oldest first, from `start_time` (or the newest ones); the last may be open."""
        _check_symbol(symbol)
        if interval not in KLINE_INTERVALS:
            raise ValueError(f"unknown kline interval {interval!r}; valid (case-sensitive): {KLINE_INTERVALS}")
        params = {"symbol": symbol, "interval": interval, "limit": str(_check_limit(KLINES, limit))}
        if start_time is not None:
            params["startTime"] = _time_param(start_time, "start_time")
        if end_time is not None:
            params["endTime"] = _time_param(end_time, "end_time")
        reply = self._get(KLINES, params, symbol)
        return self._parsed(KLINES, symbol, reply, lambda: parse_klines(reply.payload, symbol, interval))

    def agg_trades(
        self,
        symbol: str,
        limit: int = 500,
        start_time: datetime | int | None = None,
        end_time: datetime | int | None = None,
        from_id: int | None = None,
    ) -> list[AggTrade]:
        """Up to `limit` aggregate trades, oldest first: from `from_id` (inclusive), or with times in
        [start_time, end_time] (both inclusive, at most one hour apart), or the most recent ones."""
        _check_symbol(symbol)
        params = {"symbol": symbol, "limit": str(_check_limit(AGG_TRADES, limit))}
        if from_id is not None:
            if isinstance(from_id, bool) or not isinstance(from_id, int) or from_id < 0:
                raise ValueError(f"from_id must be an int >= 0, got {from_id!r}")
            if start_time is not None or end_time is not None:
                raise ValueError("aggTrades takes from_id or start_time/end_time, not both")
            params["fromId"] = str(from_id)
        if start_time is not None:
            params["startTime"] = _time_param(start_time, "start_time")
        if end_time is not None:
            params["endTime"] = _time_param(end_time, "end_time")
        if start_time is not None and end_time is not None:
            span = int(params["endTime"]) - int(params["startTime"])
            if not 0 <= span < AGG_TRADES_MAX_WINDOW_MS:
                raise ValueError(f"aggTrades start_time..end_time must span less than 1 h, got {span} ms ({symbol})")
        reply = self._get(AGG_TRADES, params, symbol)
        return self._parsed(AGG_TRADES, symbol, reply, lambda: parse_agg_trades(reply.payload, symbol))

    def trades(self, symbol: str, limit: int = 500) -> list[Trade]:
        """The `limit` most recent trades, oldest first (weight 25 whatever the limit)."""
        _check_symbol(symbol)
        params = {"symbol": symbol, "limit": str(_check_limit(TRADES, limit))}
        reply = self._get(TRADES, params, symbol)
        return self._parsed(TRADES, symbol, reply, lambda: parse_trades(reply.payload, symbol))

    def depth(self, symbol: str, limit: int = 100) -> list[OrderBookLevel]:
        """Order book snapshot: `limit` levels per side, bids then asks, best first."""
        _check_symbol(symbol)
        params = {"symbol": symbol, "limit": str(_check_limit(DEPTH, limit))}
        reply = self._get(DEPTH, params, symbol)
        return self._parsed(DEPTH, symbol, reply, lambda: parse_depth(reply.payload, symbol, reply.received_at))

    def validate_symbols(self, symbols: Sequence[str]) -> None:
        """Raise UnknownSymbolError naming every symbol not listed or not TRADING (cached per client)."""
        checked = _check_symbols(symbols)
        now = self._clock()
        stale = [
            s
            for s in checked
            if s not in self._symbol_cache or self._symbol_cache[s][1] + self.symbol_cache_ttl_s <= now
        ]
        if stale:
            try:
                statuses = self.exchange_info(stale)
            except BinanceAPIError as exc:
                if exc.code != -1121:
                    raise
                # One unknown symbol makes Binance reject the whole list; the full listing names them all.
                log.info("exchangeInfo rejected %s as invalid; reading the full listing to name each one", stale)
                statuses = self.exchange_info(None)
            fetched_at = self._clock()
            for symbol, status in statuses.items():
                self._symbol_cache[symbol] = (status, fetched_at)
            for symbol in stale:
                if symbol not in statuses:
                    self._symbol_cache[symbol] = (None, fetched_at)
        problems = {s: self._symbol_cache[s][0] for s in checked if self._symbol_cache[s][0] != "TRADING"}
        if problems:
            raise UnknownSymbolError(problems)

    # -- request machinery ---------------------------------------------------------------------

    def _get(self, endpoint: str, params: dict[str, str], symbol: str | None) -> _Reply:
        """GET with ban and weight checks, retries for 5xx/transport errors, and error mapping."""
        weight = request_weight(endpoint, params)
        url = self.base_url + endpoint
        transient_failures = 0
        rate_limited = 0
        while True:
            self._respect_ban(endpoint, params)
            self._respect_weight_budget(endpoint, weight)
            started = time.perf_counter()
            try:
                response = self._session.get(url, params=params, headers=self._headers, timeout=self.timeout)
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
                self._count_weight_locally(weight)
                detail = f"{type(exc).__name__}: {exc}"
                log.warning(
                    "GET %s %s -> no response after %.0f ms: %s",
                    endpoint,
                    params,
                    (time.perf_counter() - started) * 1000,
                    detail,
                )
                if transient_failures < self.max_retries:
                    transient_failures += 1
                    self._backoff(endpoint, transient_failures, detail)
                    continue
                raise BinanceHTTPError(endpoint, params, None, excerpt(detail), transient_failures + 1) from exc
            used = self._note_used_weight(response, weight, endpoint)
            status = response.status_code
            log.info(
                "GET %s %s -> HTTP %s, used weight %s/%s, %.0f ms",
                endpoint,
                params,
                status,
                used,
                self.weight_budget,
                (time.perf_counter() - started) * 1000,
            )
            if status in (429, 418):
                ban = self._record_ban(endpoint, response)
                if rate_limited >= self.max_rate_limit_retries:
                    raise self._banned_error(
                        ban, endpoint, f"still rate limited after {rate_limited} wait(s); not retrying in a loop"
                    )
                rate_limited += 1
                continue  # the ban check at the top waits it out or raises
            if status >= 500:
                if transient_failures < self.max_retries:
                    transient_failures += 1
                    self._backoff(endpoint, transient_failures, f"HTTP {status}")
                    continue
                raise BinanceHTTPError(endpoint, params, status, excerpt(response.content), transient_failures + 1)
            if status >= 400:
                raise self._client_error(endpoint, params, symbol, response, transient_failures + 1)
            if status != 200:
                raise BinanceHTTPError(endpoint, params, status, excerpt(response.content), transient_failures + 1)
            return _Reply(self._decode(endpoint, symbol, response), status, datetime.fromtimestamp(self._clock(), UTC))

    def _respect_ban(self, endpoint: str, params: dict[str, str]) -> None:
        ban = self._current_ban()
        if ban is None:
            return
        remaining = ban.until - self._clock()
        if remaining <= 0:
            return
        if remaining > self.max_wait_s:
            raise self._banned_error(
                ban, endpoint, f"{remaining:.0f} s from now, more than max_wait_s={self.max_wait_s:g}"
            )
        log.warning(
            "waiting %.1f s before GET %s %s: HTTP %s on %s blocks calls until %s (%s)",
            remaining,
            endpoint,
            params,
            ban.status,
            ban.endpoint,
            _iso(ban.until),
            ban.reason,
        )
        self._sleep(remaining)

    def _current_ban(self) -> BanState | None:
        """The later of this client's ban and the shared file's (read before every call)."""
        if self.ban_state_path is not None:
            shared = read_ban_state(self.ban_state_path)
            if shared is not None and (self._ban is None or shared.until > self._ban.until):
                self._ban = shared
        return self._ban

    def _record_ban(self, endpoint: str, response: requests.Response) -> BanState:
        status = response.status_code
        retry_after = _retry_after_s(response.headers.get("Retry-After"))
        if retry_after is None:
            retry_after = DEFAULT_RETRY_AFTER_S[status]
            log.warning("HTTP %s from %s without a usable Retry-After; assuming %.0f s", status, endpoint, retry_after)
        ban = BanState(
            until=self._clock() + retry_after,
            status=status,
            reason=_error_message(response) or f"HTTP {status}",
            endpoint=endpoint,
        )
        if self._ban is None or ban.until > self._ban.until:
            self._ban = ban
        if self.ban_state_path is not None:
            shared = read_ban_state(self.ban_state_path)
            if shared is None or ban.until > shared.until:
                write_ban_state(self.ban_state_path, ban)
        log.warning(
            "HTTP %s from %s with Retry-After %.0f s: no call to %s until %s; reason: %s",
            status,
            endpoint,
            retry_after,
            self.base_url,
            _iso(ban.until),
            ban.reason,
        )
        return ban

    def _banned_error(self, ban: BanState, endpoint: str, detail: str) -> BinanceBannedError:
        return BinanceBannedError(
            status=ban.status,
            until=datetime.fromtimestamp(ban.until, UTC),
            reason=ban.reason,
            cause_endpoint=ban.endpoint,
            blocked_endpoint=endpoint,
            detail=detail,
        )

    def _respect_weight_budget(self, endpoint: str, weight: int) -> None:
        if self.shared_weight is not None:
            self._reserve_shared_weight(endpoint, weight)
            return
        now = self._clock()
        minute = int(now // 60)
        used = self._used_weight if self._used_minute == minute else 0
        # A call heavier than the whole budget still goes, alone, at the start of a minute.
        if used == 0 or used + weight <= self.weight_budget:
            return
        wait = (minute + 1) * 60 + MINUTE_MARGIN_S - now
        log.warning(
            "waiting %.1f s before GET %s: used weight %s + %s would exceed the budget of %s this minute",
            wait,
            endpoint,
            used,
            weight,
            self.weight_budget,
        )
        self._sleep(wait)
        self._used_weight = 0
        self._used_minute = minute + 1

    def _reserve_shared_weight(self, endpoint: str, weight: int) -> None:
        """Reserve `weight` in the host's shared record, waiting for the next minute while the budget
        holds no room for it (the record, not this client, knows what the others used)."""
        assert self.shared_weight is not None
        while True:
            now = self._clock()
            minute = int(now // 60)
            fits, used = self.shared_weight.reserve(minute, weight, self.weight_budget)
            if fits:
                self._used_weight, self._used_minute = used, minute
                return
            wait = (minute + 1) * 60 + MINUTE_MARGIN_S - now
            log.warning(
                "waiting %.1f s before GET %s: weight used this minute by this host (%s, shared through %s) + %s "
                "would exceed the budget of %s",
                wait,
                endpoint,
                used,
                self.shared_weight.path,
                weight,
                self.weight_budget,
            )
            self._sleep(wait)

    def _note_used_weight(self, response: requests.Response, weight: int, endpoint: str) -> int:
        header = response.headers.get("X-MBX-USED-WEIGHT-1M")
        if header is None:
            return self._count_weight_locally(weight)
        try:
            used = int(header)
        except ValueError:
            log.warning("unreadable X-MBX-USED-WEIGHT-1M %r from %s; counting weight locally", header, endpoint)
            return self._count_weight_locally(weight)
        minute = int(self._clock() // 60)
        if self.shared_weight is not None:
            used = self.shared_weight.observe(minute, used, self.weight_budget)
        self._used_weight = used
        self._used_minute = minute
        return used

    def _count_weight_locally(self, weight: int) -> int:
        minute = int(self._clock() // 60)
        self._used_weight = (self._used_weight if self._used_minute == minute else 0) + weight
        self._used_minute = minute
        return self._used_weight

    def _backoff(self, endpoint: str, attempt: int, reason: str) -> None:
        """Exponential backoff with full jitter: uniform(0, min(cap, base * 2**(attempt-1)))."""
        delay = self._rng.uniform(0, min(self.backoff_cap_s, self.backoff_base_s * 2 ** (attempt - 1)))
        log.warning(
            "waiting %.2f s before retry %d/%d of GET %s: %s", delay, attempt, self.max_retries, endpoint, reason
        )
        self._sleep(delay)

    def _client_error(
        self, endpoint: str, params: dict[str, str], symbol: str | None, response: requests.Response, attempts: int
    ) -> BinanceError:
        try:
            body = json.loads(response.content)
        except ValueError:
            body = None
        if isinstance(body, dict) and "code" in body and "msg" in body:
            code = body["code"] if isinstance(body["code"], int) and not isinstance(body["code"], bool) else None
            return BinanceAPIError(endpoint, symbol, response.status_code, code, str(body["msg"]))
        return BinanceHTTPError(endpoint, params, response.status_code, excerpt(response.content), attempts)

    def _decode(self, endpoint: str, symbol: str | None, response: requests.Response) -> Any:
        try:
            return json.loads(response.content)
        except ValueError as exc:
            content_type = response.headers.get("Content-Type", "")
            body = response.content.lstrip()[:1]
            if "html" in content_type.lower() or body == b"<":
                problem = f"body is HTML ({content_type or 'no Content-Type'}), not JSON"
            else:
                problem = f"body is not valid JSON (truncated?): {exc}"
            raise BinanceResponseError(
                endpoint, symbol, problem, excerpt(response.content), response.status_code
            ) from exc

    def _parsed(self, endpoint: str, symbol: str | None, reply: _Reply, parse: Callable[[], T]) -> T:
        """Run a parser, adding the HTTP status to its shape errors."""
        try:
            return parse()
        except BinanceResponseError as exc:
            raise BinanceResponseError(
                exc.endpoint, exc.symbol or symbol, exc.problem, exc.body_excerpt, reply.status
            ) from exc

    def _check_all_returned(self, endpoint: str, asked: list[str], got: list[str], reply: _Reply) -> None:
        missing = sorted(set(asked) - set(got))
        extra = sorted(set(got) - set(asked))
        if missing or extra:
            raise BinanceResponseError(
                endpoint,
                ",".join(asked),
                f"symbols missing from the response: {missing}; not asked for: {extra}",
                excerpt(json.dumps(reply.payload, default=str)),
                reply.status,
            )


def _retry_after_s(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def _error_message(response: requests.Response) -> str:
    """`msg` of a JSON error body, else a body excerpt (for ban reasons)."""
    try:
        body = json.loads(response.content)
    except ValueError:
        return excerpt(response.content)
    if isinstance(body, dict) and "msg" in body:
        return f"code {body.get('code')}: {body['msg']}"
    return excerpt(response.content)
