"""Parsers turn each endpoint's documented JSON into exact records and reject every other shape."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from include.binance.errors import BinanceResponseError
from include.binance.models import to_epoch_ms, utc_from_epoch
from include.binance.parse import (
    parse_24hr,
    parse_agg_trades,
    parse_depth,
    parse_exchange_info,
    parse_klines,
    parse_prices,
    parse_trades,
)

OBSERVED = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)

# The documented examples from Binance's rest-api.md.
DOC_24HR = {
    "symbol": "BNBBTC",
    "priceChange": "-94.99999800",
    "priceChangePercent": "-95.960",
    "weightedAvgPrice": "0.29628482",
    "prevClosePrice": "0.10002000",
    "lastPrice": "4.00000200",
    "lastQty": "200.00000000",
    "bidPrice": "4.00000000",
    "bidQty": "100.00000000",
    "askPrice": "4.00000200",
    "askQty": "100.00000000",
    "openPrice": "99.00000000",
    "highPrice": "100.00000000",
    "lowPrice": "0.10000000",
    "volume": "8913.30000000",
    "quoteVolume": "15.30000000",
    "openTime": 1499783499040,
    "closeTime": 1499869899040,
    "firstId": 28385,
    "lastId": 28460,
    "count": 76,
}
DOC_KLINE = [
    1499040000000,
    "0.01634790",
    "0.80000000",
    "0.01575800",
    "0.01577100",
    "148976.11427815",
    1499644799999,
    "2434.19055334",
    308,
    "1756.87402397",
    "28.46694368",
    "0",
]
DOC_TRADE = {
    "id": 28457,
    "price": "4.00000100",
    "qty": "12.00000000",
    "quoteQty": "48.000012",
    "time": 1499865549590,
    "isBuyerMaker": True,
    "isBestMatch": True,
}
DOC_DEPTH = {
    "lastUpdateId": 1027024,
    "bids": [["4.00000000", "431.00000000"], ["3.99000000", "9.00000000"]],
    "asks": [["4.00000200", "12.00000000"]],
}


# -- time helpers ----------------------------------------------------------------------------


def test_epoch_millis_and_micros_give_the_same_utc_datetime() -> None:
    from_ms = utc_from_epoch(1499865549590)
    from_us = utc_from_epoch(1499865549590123)
    assert from_ms == from_us == datetime(2017, 7, 12, 13, 19, 9, 590000, tzinfo=UTC)
    assert from_ms.tzinfo is UTC


def test_microsecond_close_times_truncate_to_the_millisecond() -> None:
    assert utc_from_epoch(1499644799999999) == utc_from_epoch(1499644799999)


@pytest.mark.parametrize("value", [10**14, 10**15 - 1, 10**17, -1])
def test_epoch_values_that_are_neither_ms_nor_us_are_refused(value: int) -> None:
    with pytest.raises(ValueError, match=str(value)):
        utc_from_epoch(value)


def test_epoch_must_be_an_int_not_a_bool_or_float() -> None:
    with pytest.raises(TypeError):
        utc_from_epoch(True)
    with pytest.raises(TypeError):
        utc_from_epoch(1.5e12)  # type: ignore[arg-type]


def test_to_epoch_ms_round_trips_and_refuses_naive() -> None:
    moment = datetime(2024, 2, 29, 23, 59, 59, 999000, tzinfo=UTC)
    assert utc_from_epoch(to_epoch_ms(moment)) == moment
    assert to_epoch_ms(moment.astimezone(timezone(timedelta(hours=5)))) == to_epoch_ms(moment)
    with pytest.raises(ValueError, match="naive"):
        to_epoch_ms(datetime(2024, 1, 1))


# -- ticker/price ------------------------------------------------------------------------------


def test_prices_keep_decimal_strings_exact() -> None:
    prices = parse_prices([{"symbol": "SHIBUSDT", "price": "0.00001234"}], OBSERVED)
    assert prices[0].price == Decimal("0.00001234")
    assert str(prices[0].price) == "0.00001234"
    assert prices[0].price.as_tuple().exponent == -8


def test_prices_accept_the_single_object_of_a_symbol_request() -> None:
    prices = parse_prices({"symbol": "LTCBTC", "price": "4.00000200"}, OBSERVED)
    assert [(p.symbol, p.price) for p in prices] == [("LTCBTC", Decimal("4.00000200"))]


def test_prices_are_stamped_with_the_observation_time_in_utc_ms() -> None:
    tokyo = OBSERVED.astimezone(timezone(timedelta(hours=9)))
    (price,) = parse_prices([{"symbol": "BTCUSDT", "price": "1.00000000"}], tokyo)
    assert price.time == datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC)
    assert price.time.utcoffset() == timedelta(0)


def test_prices_refuse_a_naive_observation_time() -> None:
    with pytest.raises(ValueError, match="observed_at"):
        parse_prices([], datetime(2024, 1, 1))


def test_float_prices_are_rejected_with_a_clear_error() -> None:
    with pytest.raises(BinanceResponseError) as err:
        parse_prices([{"symbol": "BTCUSDT", "price": 65000.1}], OBSERVED)
    message = str(err.value)
    assert "/api/v3/ticker/price" in message and "BTCUSDT" in message
    assert "'price'" in message and "strings" in message
    assert err.value.symbol == "BTCUSDT"


@pytest.mark.parametrize("bad", ["abc", "NaN", "Infinity", "", None, 5, ["1"]])
def test_prices_that_are_not_decimal_strings_are_rejected(bad: object) -> None:
    with pytest.raises(BinanceResponseError, match="price"):
        parse_prices([{"symbol": "BTCUSDT", "price": bad}], OBSERVED)


def test_a_price_record_without_symbol_is_rejected() -> None:
    with pytest.raises(BinanceResponseError, match="'symbol' missing"):
        parse_prices([{"price": "1.0"}], OBSERVED)


def test_prices_payload_of_the_wrong_type_is_rejected() -> None:
    with pytest.raises(BinanceResponseError, match="expected an array or an object, got str"):
        parse_prices("oops", OBSERVED)


# -- ticker/24hr -------------------------------------------------------------------------------


def test_24hr_full_document_example() -> None:
    (ticker,) = parse_24hr([DOC_24HR])
    assert ticker.symbol == "BNBBTC"
    assert ticker.open_price == Decimal("99.00000000")
    assert ticker.high_price == Decimal("100.00000000")
    assert ticker.low_price == Decimal("0.10000000")
    assert ticker.last_price == Decimal("4.00000200")
    assert ticker.volume == Decimal("8913.30000000")
    assert ticker.quote_volume == Decimal("15.30000000")
    assert ticker.open_time == utc_from_epoch(1499783499040)
    assert ticker.close_time == utc_from_epoch(1499869899040)
    assert (ticker.first_id, ticker.last_id, ticker.count) == (28385, 28460, 76)


def test_24hr_mini_object_is_enough() -> None:
    mini_keys = ("symbol", "openPrice", "highPrice", "lowPrice", "lastPrice", "volume", "quoteVolume")
    mini = {k: DOC_24HR[k] for k in (*mini_keys, "openTime", "closeTime", "firstId", "lastId", "count")}
    assert parse_24hr(mini) == parse_24hr([DOC_24HR])


def test_24hr_missing_field_names_endpoint_symbol_field_and_excerpt() -> None:
    broken = {k: v for k, v in DOC_24HR.items() if k != "lastPrice"}
    with pytest.raises(BinanceResponseError) as err:
        parse_24hr([broken])
    assert err.value.endpoint == "/api/v3/ticker/24hr"
    assert err.value.symbol == "BNBBTC"
    assert "'lastPrice' missing" in err.value.problem
    assert err.value.body_excerpt.startswith('{"symbol":"BNBBTC"')
    assert len(err.value.body_excerpt) <= 210


def test_24hr_ids_must_be_integers() -> None:
    with pytest.raises(BinanceResponseError, match="'count' must be an integer"):
        parse_24hr([{**DOC_24HR, "count": "76"}])
    with pytest.raises(BinanceResponseError, match="'firstId' must be an integer"):
        parse_24hr([{**DOC_24HR, "firstId": True}])


# -- klines ------------------------------------------------------------------------------------


def test_klines_document_example() -> None:
    (kline,) = parse_klines([DOC_KLINE], "BNBBTC", "1d")
    assert kline.symbol == "BNBBTC" and kline.interval == "1d"
    assert kline.open_time == utc_from_epoch(1499040000000)
    assert kline.close_time == utc_from_epoch(1499644799999)
    assert kline.open_price == Decimal("0.01634790")
    assert kline.high_price == Decimal("0.80000000")
    assert kline.low_price == Decimal("0.01575800")
    assert kline.close_price == Decimal("0.01577100")
    assert kline.volume == Decimal("148976.11427815")
    assert kline.quote_volume == Decimal("2434.19055334")
    assert kline.num_trades == 308


def test_klines_in_microseconds_parse_to_the_same_times() -> None:
    micro = list(DOC_KLINE)
    micro[0] = DOC_KLINE[0] * 1000
    micro[6] = (DOC_KLINE[6] + 1) * 1000 - 1
    assert parse_klines([micro], "BNBBTC", "1d") == parse_klines([DOC_KLINE], "BNBBTC", "1d")


@pytest.mark.parametrize(
    ("kline", "problem"),
    [
        (DOC_KLINE[:11], "must have 12 elements, got 11"),
        ([*DOC_KLINE, "extra"], "must have 12 elements, got 13"),
        ({"openTime": 1}, "kline must be an array"),
        ([DOC_KLINE[0], "abc", *DOC_KLINE[2:]], "is not a number: 'abc'"),
        ([str(DOC_KLINE[0]), *DOC_KLINE[1:]], "field 0 must be an integer"),
        ([*DOC_KLINE[:8], 308.0, *DOC_KLINE[9:]], "field 8 must be an integer"),
        ([*DOC_KLINE[:4], 0.015771, *DOC_KLINE[5:]], "decimals as strings"),
    ],
)
def test_malformed_klines_are_rejected(kline: object, problem: str) -> None:
    with pytest.raises(BinanceResponseError) as err:
        parse_klines([kline], "BNBBTC", "1d")
    assert problem in err.value.problem
    assert err.value.endpoint == "/api/v3/klines"
    assert err.value.symbol == "BNBBTC"


def test_klines_payload_must_be_an_array() -> None:
    with pytest.raises(BinanceResponseError, match="expected an array, got dict"):
        parse_klines({"code": -1121, "msg": "Invalid symbol."}, "BNBBTC", "1d")


# -- trades ------------------------------------------------------------------------------------


def test_trades_document_example() -> None:
    (trade,) = parse_trades([DOC_TRADE], "BNBBTC")
    assert trade.trade_id == 28457
    assert trade.price == Decimal("4.00000100")
    assert trade.qty == Decimal("12.00000000")
    assert trade.quote_qty == Decimal("48.000012")
    assert trade.time == utc_from_epoch(1499865549590)
    assert trade.is_buyer_maker is True


def test_trades_flag_must_be_boolean() -> None:
    with pytest.raises(BinanceResponseError, match="'isBuyerMaker' must be a boolean"):
        parse_trades([{**DOC_TRADE, "isBuyerMaker": "true"}], "BNBBTC")


def test_trades_missing_id_is_rejected() -> None:
    broken = {k: v for k, v in DOC_TRADE.items() if k != "id"}
    with pytest.raises(BinanceResponseError, match="'id' missing"):
        parse_trades([broken], "BNBBTC")


# -- aggregate trades -------------------------------------------------------------------------

# Binance's documented aggTrades example (a, p, q, f, l, T, m, M)
DOC_AGG_TRADE = {"a": 26129, "p": "0.01633102", "q": "4.70443515", "f": 27781, "l": 27781, "T": 1498793709153,
                 "m": True, "M": True}


def test_agg_trades_document_example() -> None:
    (agg,) = parse_agg_trades([DOC_AGG_TRADE], "LTCBTC")
    assert (agg.symbol, agg.agg_trade_id, agg.first_trade_id, agg.last_trade_id) == ("LTCBTC", 26129, 27781, 27781)
    assert (agg.price, agg.qty) == (Decimal("0.01633102"), Decimal("4.70443515"))
    assert agg.time == utc_from_epoch(1498793709153)
    assert agg.is_buyer_maker is True


def test_agg_trades_in_microseconds_parse_to_the_same_times() -> None:
    (micro,) = parse_agg_trades([{**DOC_AGG_TRADE, "T": 1498793709153_123}], "LTCBTC")
    assert micro.time == utc_from_epoch(1498793709153)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"a": "26129"}, "'a' must be an integer"),
        ({"p": 0.01633102}, "'p' is the JSON number"),
        ({"m": "true"}, "'m' must be a boolean"),
        ({"T": None}, "'T' must be an integer"),
    ],
)
def test_malformed_agg_trades_are_rejected(change: dict, problem: str) -> None:
    with pytest.raises(BinanceResponseError, match=problem) as err:
        parse_agg_trades([{**DOC_AGG_TRADE, **change}], "LTCBTC")
    assert "/api/v3/aggTrades" in str(err.value) and "LTCBTC" in str(err.value)


def test_agg_trades_missing_field_is_named() -> None:
    with pytest.raises(BinanceResponseError, match="'l' missing"):
        parse_agg_trades([{k: v for k, v in DOC_AGG_TRADE.items() if k != "l"}], "LTCBTC")


# -- depth -------------------------------------------------------------------------------------


def test_depth_one_record_per_level_bids_then_asks_best_first() -> None:
    levels = parse_depth(DOC_DEPTH, "BNBBTC", OBSERVED)
    assert [(lv.side, lv.price, lv.quantity) for lv in levels] == [
        ("bid", Decimal("4.00000000"), Decimal("431.00000000")),
        ("bid", Decimal("3.99000000"), Decimal("9.00000000")),
        ("ask", Decimal("4.00000200"), Decimal("12.00000000")),
    ]
    assert {lv.update_id for lv in levels} == {1027024}
    assert {lv.captured_at for lv in levels} == {datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC)}


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        ({**DOC_DEPTH, "bids": [["4.0", "1.0", "x"]]}, "bids level must be a [price, quantity] pair"),
        ({**DOC_DEPTH, "asks": "none"}, "'asks' must be an array"),
        ({k: v for k, v in DOC_DEPTH.items() if k != "lastUpdateId"}, "'lastUpdateId' missing"),
        ([DOC_DEPTH], "expected an object"),
        ({**DOC_DEPTH, "bids": [["4.0", 1.0]]}, "decimals as strings"),
    ],
)
def test_malformed_depth_is_rejected(payload: object, problem: str) -> None:
    with pytest.raises(BinanceResponseError) as err:
        parse_depth(payload, "BNBBTC", OBSERVED)
    assert problem in err.value.problem
    assert "/api/v3/depth" in str(err.value) and "BNBBTC" in str(err.value)


# -- exchangeInfo ------------------------------------------------------------------------------


def test_exchange_info_maps_symbol_to_status() -> None:
    payload = {
        "timezone": "UTC",
        "symbols": [
            {"symbol": "BTCUSDT", "status": "TRADING", "baseAsset": "BTC", "quoteAsset": "USDT"},
            {"symbol": "MATICUSDT", "status": "BREAK", "baseAsset": "MATIC", "quoteAsset": "USDT"},
        ],
    }
    assert parse_exchange_info(payload) == {"BTCUSDT": "TRADING", "MATICUSDT": "BREAK"}


def test_exchange_info_without_symbols_is_rejected() -> None:
    with pytest.raises(BinanceResponseError, match="'symbols' missing"):
        parse_exchange_info({"timezone": "UTC"})
    with pytest.raises(BinanceResponseError, match="'status' missing"):
        parse_exchange_info({"symbols": [{"symbol": "BTCUSDT"}]})


def test_error_excerpts_are_bounded() -> None:
    huge = {**DOC_TRADE, "price": 1.5, "padding": "x" * 5000}
    with pytest.raises(BinanceResponseError) as err:
        parse_trades([huge], "BNBBTC")
    assert len(err.value.body_excerpt) <= 210
    assert len(str(err.value)) < 600
