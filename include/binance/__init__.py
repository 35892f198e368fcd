"""Binance Spot market-data access: a rate-limit-aware client, response parsers and typed records.

The test server (`include.binance.server`) is not imported here: it is only for tests and demos.
"""

from __future__ import annotations

from include.binance.client import DEFAULT_BASE_URL, KLINE_INTERVALS, BinanceClient, request_weight
from include.binance.errors import (
    BinanceAPIError,
    BinanceBannedError,
    BinanceError,
    BinanceHTTPError,
    BinanceResponseError,
    UnknownSymbolError,
)
from include.binance.models import (
    DailyTicker,
    Kline,
    LatestPrice,
    OrderBookLevel,
    Trade,
    to_epoch_ms,
    utc_from_epoch,
)

__all__ = [
    "DEFAULT_BASE_URL",
    "KLINE_INTERVALS",
    "BinanceAPIError",
    "BinanceBannedError",
    "BinanceClient",
    "BinanceError",
    "BinanceHTTPError",
    "BinanceResponseError",
    "DailyTicker",
    "Kline",
    "LatestPrice",
    "OrderBookLevel",
    "Trade",
    "UnknownSymbolError",
    "request_weight",
    "to_epoch_ms",
    "utc_from_epoch",
]
