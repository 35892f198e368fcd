"""The loader against real Postgres, in a scratch schema: new trades COPYed straight in, a
re-fetch overlapping stored ids adds only the new ones, a key stored meanwhile by another writer
sends the batch through the staging table, and a failure leaves the table as it was."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from include import loader
from include.binance.models import Trade
from include.schema.postgres import apply

pytestmark = pytest.mark.integration

SCHEMA = "loader_test"
T0 = datetime(2026, 2, 3, 4, 5, 6, 789000, tzinfo=UTC)


def _trades(ids, price: str = "0.00001234") -> list[Trade]:
    return [Trade("BTCUSDT", i, Decimal(price), Decimal("2.5"), Decimal(price) * Decimal("2.5"),
                  T0 + timedelta(milliseconds=i), i % 2 == 0) for i in ids]


@pytest.fixture
def scratch(pg):
    apply(pg, "binance")
    with pg.cursor() as cur:
        cur.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE; CREATE SCHEMA {SCHEMA}; "
                    f"CREATE TABLE {SCHEMA}.recent_trades (LIKE binance.recent_trades INCLUDING ALL)")
    pg.commit()
    yield pg
    pg.rollback()
    with pg.cursor() as cur:
        cur.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    pg.commit()


def _stored(pg) -> list[tuple]:
    with pg.cursor() as cur:
        cur.execute(f"SELECT trade_id, price, qty, quote_qty, time, is_buyer_maker, xmin::text "
                    f"FROM {SCHEMA}.recent_trades ORDER BY trade_id")
        rows = cur.fetchall()
    pg.commit()
    return rows


def test_new_trades_go_straight_in_and_an_overlap_adds_only_the_new(scratch):
    first = loader.load(scratch, "recent_trades", _trades(range(1, 101)), schema=SCHEMA)
    assert (first.received, first.inserted, first.updated) == (100, 100, 0)
    stored = _stored(scratch)
    assert stored[0][:6] == (1, Decimal("0.00001234"), Decimal("2.5"), Decimal("0.00003085"),
                             T0 + timedelta(milliseconds=1), False)
    again = loader.load(scratch, "recent_trades", _trades(range(51, 151)), schema=SCHEMA)
    assert (again.received, again.inserted, again.updated) == (100, 50, 0)
    after = _stored(scratch)
    assert after[:100] == stored, "stored trades were rewritten"
    assert [r[0] for r in after] == list(range(1, 151))


def test_a_key_stored_meanwhile_sends_the_batch_through_staging(scratch, monkeypatch):
    loader.load(scratch, "recent_trades", _trades(range(1, 11)), schema=SCHEMA)
    before = _stored(scratch)
    # another writer stored ids 1..10 after this load looked: it believes they are all new
    monkeypatch.setattr(loader, "_new_rows", lambda cur, table, batch, *args: batch)
    result = loader.load(scratch, "recent_trades", _trades(range(1, 21)), schema=SCHEMA)
    assert (result.inserted, result.updated) == (10, 0)
    after = _stored(scratch)
    assert after[:10] == before and [r[0] for r in after] == list(range(1, 21))


def test_a_bad_row_leaves_the_table_as_it_was(scratch):
    loader.load(scratch, "recent_trades", _trades(range(1, 11)), schema=SCHEMA)
    before = _stored(scratch)
    bad = _trades(range(11, 21))
    bad[5] = Trade("BTCUSDT", 16, Decimal("NaN"), None, Decimal(1), T0, True)  # qty NULL: NOT NULL refuses it
    with pytest.raises(Exception, match="qty"):
        loader.load(scratch, "recent_trades", bad, schema=SCHEMA)
    assert _stored(scratch) == before


def test_a_key_twice_in_one_batch_keeps_the_last(scratch):
    batch = _trades(range(1, 6)) + _trades([3], price="9.5")
    result = loader.load(scratch, "recent_trades", batch, schema=SCHEMA)
    assert (result.received, result.inserted, result.updated) == (5, 5, 0)
    assert [(r[0], r[1]) for r in _stored(scratch)][2] == (3, Decimal("9.5"))
