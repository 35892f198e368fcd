"""The retention policy: the Variable `retention` parsed, defaulted and checked store by store."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from include.retention.policy import DEFAULTS, STORES, Retention, RetentionError, parse_duration
from include.tables import TABLES

NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)


def test_defaults_cover_every_table_and_apply_to_every_store():
    policy = Retention.from_json(None)
    assert set(policy.keep) == set(TABLES) == set(DEFAULTS)
    assert policy.keep["order_book"] == dict.fromkeys(STORES, timedelta(hours=24))
    assert policy.keep["klines"] == dict.fromkeys(STORES, None)
    assert policy.horizon("recent_trades", "binance", NOW) == NOW - timedelta(hours=48)
    assert policy.horizon("klines", "bridge", NOW) is None


def test_a_store_left_out_keeps_what_the_store_before_it_keeps():
    policy = Retention.from_json(json.dumps({"order_book": {"binance": "2d", "bridge": "6h"},
                                             "latest_prices": "90m"}))
    assert policy.keep["order_book"] == {"binance": timedelta(days=2), "cassandra": timedelta(days=2),
                                         "bridge": timedelta(hours=6)}
    assert policy.seconds("latest_prices", "cassandra") == 5400


def test_a_store_may_not_keep_longer_than_the_one_it_copies():
    with pytest.raises(RetentionError, match=r"retention.order_book: cassandra cannot keep longer"):
        Retention.from_json({"order_book": {"binance": "24h", "cassandra": "7d"}})
    with pytest.raises(RetentionError, match=r"retention.klines: bridge cannot keep longer \(None\)"):
        Retention.from_json({"klines": {"binance": "30d", "bridge": None}})


@pytest.mark.parametrize("raw, message", [
    ("{not json", "not valid JSON"),
    ('["order_book"]', "must be a JSON object"),
    ('{"orderbook": "24h"}', r"unknown tables \['orderbook'\]"),
    ('{"order_book": {"grafana": "1h"}}', r"unknown stores \['grafana'\]"),
    ('{"order_book": "24 hours"}', r"retention order_book.binance: '24 hours' is not a duration"),
    ('{"order_book": "0h"}', "longer than zero"),
    ('{"order_book": 24}', "is not a duration"),
])
def test_bad_input_is_refused_naming_what_is_wrong(raw, message):
    with pytest.raises(RetentionError, match=message):
        Retention.from_json(raw)


def test_the_older_order_book_variable_still_counts_unless_retention_names_the_table():
    assert Retention.from_json(None, "6").keep["order_book"]["binance"] == timedelta(hours=6)
    assert Retention.from_json({"order_book": "2h"}, "6").keep["order_book"]["bridge"] == timedelta(hours=2)


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("15m", 900), ("24h", 86400), ("7d", 604800),
                                           ("2w", 1209600), ("1.5h", 5400)])
def test_durations(text, seconds):
    assert parse_duration(text, "x") == timedelta(seconds=seconds)
