"""A small Binance-compatible market-data exchange: the local stack's offline Binance and the tests'
fixture. Not pipeline code: `include/` never imports it.

Usage:
    python -m stack.exchange --host 127.0.0.1 --port 8765 [--seed N]
or in-process: `with BinanceTestServer(seed=7) as server: BinanceClient(server.url)...`

It serves GET /api/v3/{ping,time,exchangeInfo,ticker/price,ticker/24hr,klines,trades,aggTrades,depth}
with Binance's shapes, parameter checks, error codes, request weights and `X-MBX-USED-WEIGHT-1M`,
and Binance's public archive layout (/data/spot/{daily,monthly}/{klines,aggTrades}/..., zip files
of CSV with their .CHECKSUM).
Data moves between calls: every data request on a symbol adds one to three trades to a seeded
random walk, so trade ids grow, the newest kline changes while earlier ones stay fixed, and the
order book's lastUpdateId increases. MATICUSDT is listed with status BREAK and never moves.

- `market`: the simulated market (symbols, trades, klines, order book);
- `archive`: the archive files, made from the market;
- `faults`: the misbehaviour a test can switch on;
- `api`: the HTTP layer, its rate limits and the /_control endpoints;
- `__main__`: the command line.
Kline periods come from `include.binance.intervals`, the same arithmetic the extraction uses.
"""

from __future__ import annotations

from stack.exchange.api import BinanceTestServer
from stack.exchange.faults import FAULT_KINDS, Fault
from stack.exchange.market import SPECS, TRADING_SYMBOLS

__all__ = ["FAULT_KINDS", "SPECS", "TRADING_SYMBOLS", "BinanceTestServer", "Fault"]
