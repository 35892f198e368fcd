"""The simulated market behind the test exchange: listed symbols, a seeded random walk of trades per
symbol, the klines built from them (and fixed synthetic ones before the live data), the order book,
and a tape of aggregate trades.

No HTTP here: the API layer (`stack.exchange.api`) asks a `Market` for a symbol's state at an
instant and renders what it gets. Times are epoch microseconds (trades) and milliseconds (klines).

Aggregate trades are a history of their own, fixed for every hour of every day by the seed alone
(`AggTape`): the same hour is the same list whenever it is asked for, so the REST endpoint and the
archive files agree, and a backfill can be compared with what the server serves afterwards. They
are not derived from the live trade walk or the klines (a simplification: on Binance they are the
same trades).
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal

from include.binance.intervals import fixed_length_ms, period_next, period_open

E8 = Decimal("0.00000001")
MAX_TRADES_KEPT = 5000
MAX_CANDLES_KEPT = 1500
INITIAL_TRADES = 1000
INITIAL_TRADE_SPACING_US = 60_000
HOUR_US = 3_600_000_000
# fills per aggregate trade at most: trade ids advance by 1-4 per aggregate trade
MAX_FILLS_PER_AGG = 4


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


def _to_tick(value: Decimal, tick: Decimal) -> Decimal:
    return value.quantize(tick, rounding=ROUND_HALF_EVEN)


@dataclass
class Candle:
    """One kline, times in epoch ms; `next_open` is the next kline's open (this one closes 1 ms before)."""

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

    def add(self, trade: Trade) -> None:
        self.high = max(self.high, trade.price)
        self.low = min(self.low, trade.price)
        self.close = trade.price
        self.volume += trade.qty
        self.quote_volume += trade.quote_qty
        self.trades += 1
        if not trade.is_buyer_maker:  # the taker bought
            self.taker_base += trade.qty
            self.taker_quote += trade.quote_qty


@dataclass(frozen=True)
class Trade:
    """One simulated trade, its time in epoch microseconds."""

    id: int
    price: Decimal
    qty: Decimal
    quote_qty: Decimal
    time_us: int
    is_buyer_maker: bool


class KlineSeries:
    """Klines of one symbol and interval built from live trades: the open one, and frozen closed ones."""

    def __init__(self, interval: str) -> None:
        self.interval = interval
        self.current: Candle | None = None
        self.closed: OrderedDict[int, Candle] = OrderedDict()

    def add(self, trade: Trade) -> None:
        t_ms = trade.time_us // 1000
        self.roll_to(t_ms)
        if self.current is None:
            start = period_open(self.interval, t_ms)
            self.current = Candle(
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
            self._keep(Candle(start, nxt, price, price, price, price))
            start = nxt
        self.current = Candle(target, period_next(self.interval, target), price, price, price, price)

    def _keep(self, candle: Candle) -> None:
        self.closed[candle.open_time] = candle
        while len(self.closed) > MAX_CANDLES_KEPT:
            self.closed.popitem(last=False)

    def get(self, open_ms: int) -> Candle | None:
        if self.current is not None and self.current.open_time == open_ms:
            return self.current
        return self.closed.get(open_ms)


class SymbolState:
    """Live state of one symbol: price, recent trades, order-book update id and kline series."""

    def __init__(self, spec: SymbolSpec, seed: int, now_us: int, market: Market) -> None:
        self.spec = spec
        self.rng_seed = f"{seed}|{spec.symbol}"
        self.rng = random.Random(f"{self.rng_seed}|live")
        self.trades: list[Trade] = []
        self.series: dict[str, KlineSeries] = {}
        # trade ids start at the start time in milliseconds, so that a server started again continues
        # above every id it served before (as long as it made under one trade a millisecond per symbol):
        # with the same seed, ids from a fixed number came again after a restart and the loader kept the
        # earlier trades of those ids, loading no new trade for hours
        self.next_id = now_us // 1000 - INITIAL_TRADES
        self.update_id = 1_000_000_000 + self.rng.randrange(1_000_000_000)
        first_us = now_us - INITIAL_TRADES * INITIAL_TRADE_SPACING_US
        self.price = market.anchor(spec, "1m", period_open("1m", first_us // 1000))
        for i in range(INITIAL_TRADES):
            self.trade(first_us + i * INITIAL_TRADE_SPACING_US)

    def trade(self, time_us: int) -> Trade:
        spec, rng = self.spec, self.rng
        move = _to_tick(self.price * rng.randint(-3, 3) / 10_000, spec.tick)
        if move == 0:
            move = spec.tick * rng.choice((-1, 1))
        self.price = max(self.price + move, spec.tick)
        most = max(2, int(Decimal(5000) / (self.price * spec.step)))
        qty = spec.step * rng.randint(max(1, most // 1000), most)
        trade = Trade(
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

    def book(self, limit: int) -> tuple[list[tuple[Decimal, Decimal]], list[tuple[Decimal, Decimal]]]:
        """The order book at the current update id: up to `limit` (price, quantity) bids and asks, best first."""
        spec, rng = self.spec, self.book_rng()
        bids: list[tuple[Decimal, Decimal]] = []
        price = self.price
        while len(bids) < limit and price > 0:
            bids.append((price, spec.step * rng.randint(1, 20_000)))
            price -= spec.tick * rng.randint(1, 3)
        asks: list[tuple[Decimal, Decimal]] = []
        price = self.price + spec.tick
        while len(asks) < limit:
            asks.append((price, spec.step * rng.randint(1, 20_000)))
            price += spec.tick * rng.randint(1, 3)
        return bids, asks

    def series_for(self, interval: str, now_us: int) -> KlineSeries:
        """The kline series of `interval`, built from the retained trades on first use."""
        series = self.series.get(interval)
        if series is None:
            series = self.series[interval] = KlineSeries(interval)
            for trade in self.trades:
                series.add(trade)
            series.roll_to(now_us // 1000)
        return series


@dataclass(frozen=True)
class AggTrade:
    """One aggregate trade of the tape: id `a`, price, quantity, first and last trade id, time (µs)."""

    id: int
    price: Decimal
    qty: Decimal
    first_trade_id: int
    last_trade_id: int
    time_us: int
    is_buyer_maker: bool


class AggTape:
    """The aggregate trades of one symbol: a fixed number per hour (300-900, by symbol), at seeded
    times within the hour, priced along the synthetic hourly anchors. Ids follow each other across
    hours (hour h holds ids h * per_hour .. h * per_hour + per_hour - 1), so an id names its hour."""

    CACHED_HOURS = 256

    def __init__(self, spec: SymbolSpec, seed: int, market: Market) -> None:
        self.spec = spec
        self.seed = seed
        self.market = market
        self.per_hour = random.Random(f"{seed}|{spec.symbol}|aggTrades").randint(300, 900)
        self._hours: OrderedDict[int, list[AggTrade]] = OrderedDict()

    def hour(self, index: int) -> list[AggTrade]:
        """The aggregate trades of hour `index` (since the epoch), oldest first."""
        cached = self._hours.get(index)
        if cached is not None:
            self._hours.move_to_end(index)
            return cached
        spec, n = self.spec, self.per_hour
        rng = random.Random(f"{self.seed}|{spec.symbol}|aggTrades|{index}")
        offsets = sorted(rng.randrange(HOUR_US) for _ in range(n))
        start_ms = index * HOUR_US // 1000
        p0 = self.market.anchor(spec, "1h", start_ms)
        p1 = self.market.anchor(spec, "1h", start_ms + HOUR_US // 1000)
        first_trade = index * n * MAX_FILLS_PER_AGG
        out = []
        for i, offset in enumerate(offsets):
            drift = (p1 - p0) * Decimal(offset) / Decimal(HOUR_US)
            price = max(_to_tick(p0 + drift + spec.tick * rng.randint(-5, 5), spec.tick), spec.tick)
            most = max(2, int(Decimal(5000) / (price * spec.step)))
            fills = rng.randint(1, MAX_FILLS_PER_AGG)
            out.append(AggTrade(
                id=index * n + i,
                price=price,
                qty=spec.step * rng.randint(max(1, most // 1000), most),
                first_trade_id=first_trade,
                last_trade_id=first_trade + fills - 1,
                time_us=index * HOUR_US + offset,
                is_buyer_maker=rng.random() < 0.5,
            ))
            first_trade += fills
        self._hours[index] = out
        while len(self._hours) > self.CACHED_HOURS:
            self._hours.popitem(last=False)
        return out

    def between(self, start_us: int, end_us: int) -> Iterator[AggTrade]:
        """Aggregate trades with start_us <= time <= end_us, oldest first."""
        for index in range(start_us // HOUR_US, end_us // HOUR_US + 1):
            for agg in self.hour(index):
                if start_us <= agg.time_us <= end_us:
                    yield agg

    def from_id(self, first_id: int, end_us: int) -> Iterator[AggTrade]:
        """Aggregate trades with id >= first_id and time <= end_us, oldest first."""
        index = max(first_id, 0) // self.per_hour
        while index * HOUR_US <= end_us:
            for agg in self.hour(index):
                if agg.id >= first_id and agg.time_us <= end_us:
                    yield agg
            index += 1

    def before(self, end_us: int, count: int) -> list[AggTrade]:
        """The `count` newest aggregate trades with time <= end_us, oldest first."""
        out: list[AggTrade] = []
        index = end_us // HOUR_US
        while len(out) < count and index >= 0:
            out[:0] = [agg for agg in self.hour(index) if agg.time_us <= end_us]
            index -= 1
        return out[-count:] if count else []


class Market:
    """Seeded market for every symbol: live states on first use, synthetic history before that."""

    ANCHORS_CACHED = 200_000

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._states: dict[str, SymbolState] = {}
        self._tapes: dict[str, AggTape] = {}
        self._anchors: dict[tuple[str, str, int], Decimal] = {}

    def tape(self, symbol: str) -> AggTape:
        """The aggregate trade tape of `symbol` (the same for any instant: it depends on the seed only)."""
        tape = self._tapes.get(symbol)
        if tape is None:
            tape = self._tapes[symbol] = AggTape(SPECS[symbol], self.seed, self)
        return tape

    def state(self, symbol: str, now_us: int) -> SymbolState:
        state = self._states.get(symbol)
        if state is None:
            state = self._states[symbol] = SymbolState(SPECS[symbol], self.seed, now_us, self)
        return state

    def anchor(self, spec: SymbolSpec, interval: str, open_ms: int) -> Decimal:
        """Deterministic price at a kline boundary before live data: within 2% of the base price."""
        key = (spec.symbol, interval, open_ms)
        price = self._anchors.get(key)
        if price is None:
            if len(self._anchors) >= self.ANCHORS_CACHED:
                self._anchors.clear()
            rng = random.Random(f"{self.seed}|{spec.symbol}|{interval}|{open_ms}")
            price = self._anchors[key] = _to_tick(spec.base_price * (1 + Decimal(rng.randint(-200, 200)) / 10_000),
                                                  spec.tick)
        return price

    def synthetic(self, spec: SymbolSpec, interval: str, open_ms: int) -> Candle:
        """A fixed kline for a period without live data; consecutive ones join (close = next open)."""
        nxt = period_next(interval, open_ms)
        open_, close = self.anchor(spec, interval, open_ms), self.anchor(spec, interval, nxt)
        rng = random.Random(f"{self.seed}|{spec.symbol}|{interval}|{open_ms}|shape")
        high = _to_tick(max(open_, close) * (1 + Decimal(rng.randint(0, 50)) / 10_000), spec.tick)
        low = max(_to_tick(min(open_, close) * (1 - Decimal(rng.randint(0, 50)) / 10_000), spec.tick), spec.tick)
        volume = spec.step * rng.randint(1_000, 1_000_000)
        quote = (volume * (open_ + close) / 2).quantize(E8)
        share = Decimal(rng.randint(30, 70)) / 100
        return Candle(
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

    def candle(self, state: SymbolState, interval: str, open_ms: int, now_us: int) -> Candle:
        live = state.series_for(interval, now_us).get(open_ms)
        return live if live is not None else self.synthetic(state.spec, interval, open_ms)
