"""Exceptions raised by the Binance client and parsers; each names endpoint, symbol and what failed."""

from __future__ import annotations

from datetime import datetime

EXCERPT_CHARS = 200


def excerpt(text: str | bytes | None, limit: int = EXCERPT_CHARS) -> str:
    """First `limit` characters of a body, on one line, marked when cut, for error messages."""
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit] + "...[cut]"


class BinanceError(Exception):
    """Base class of every error raised by `include.binance`."""


class BinanceHTTPError(BinanceError):
    """A transport failure or unexpected HTTP status that retries did not cure."""

    def __init__(
        self, endpoint: str, params: dict[str, str], status: int | None, body_excerpt: str, attempts: int
    ) -> None:
        self.endpoint = endpoint
        self.params = params
        self.status = status
        self.body_excerpt = body_excerpt
        self.attempts = attempts
        what = f"HTTP {status}" if status is not None else "no HTTP response"
        super().__init__(
            f"GET {endpoint} params={params} failed after {attempts} attempt(s): {what}; body/error: {body_excerpt!r}"
        )


class BinanceAPIError(BinanceError):
    """Binance refused the request with a JSON error body {"code": ..., "msg": ...} (4xx)."""

    def __init__(self, endpoint: str, symbol: str | None, status: int, code: int | None, msg: str) -> None:
        self.endpoint = endpoint
        self.symbol = symbol
        self.status = status
        self.code = code
        self.msg = msg
        super().__init__(f"GET {endpoint} (symbol {symbol or '-'}) answered HTTP {status}, code {code}: {msg}")


class BinanceResponseError(BinanceError):
    """A response that is not the documented shape: not JSON, truncated, missing or mistyped fields."""

    def __init__(
        self,
        endpoint: str,
        symbol: str | None,
        problem: str,
        body_excerpt: str = "",
        status: int | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.symbol = symbol
        self.problem = problem
        self.body_excerpt = body_excerpt
        self.status = status
        status_part = f", HTTP {status}" if status is not None else ""
        super().__init__(
            f"bad response from {endpoint} (symbol {symbol or '-'}{status_part}): {problem}; body: {body_excerpt!r}"
        )


class BinanceBannedError(BinanceError):
    """Calls are blocked by a 429/418 Retry-After longer than the client may wait (or retried too often)."""

    def __init__(
        self, status: int, until: datetime, reason: str, cause_endpoint: str, blocked_endpoint: str, detail: str
    ) -> None:
        self.status = status
        self.until = until
        self.reason = reason
        self.cause_endpoint = cause_endpoint
        self.blocked_endpoint = blocked_endpoint
        super().__init__(
            f"Binance HTTP {status} on {cause_endpoint}: calls blocked until "
            f"{until.isoformat(timespec='seconds')} ({detail}); not calling {blocked_endpoint}; reason: {reason}"
        )


class UnknownSymbolError(BinanceError):
    """Symbols that exchangeInfo does not list, or lists with a status other than TRADING."""

    def __init__(self, problems: dict[str, str | None]) -> None:
        self.problems = dict(problems)
        parts = [
            f"{symbol} ({'not listed' if status is None else 'status ' + status})"
            for symbol, status in sorted(self.problems.items())
        ]
        super().__init__(f"symbols not tradable on Binance: {', '.join(parts)}")
