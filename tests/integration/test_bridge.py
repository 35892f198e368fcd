"""The bridge end to end: Postgres binance -> Cassandra -> Postgres cassandra, exact, with
updates and deletes reflected by incremental runs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from include.binance.models import Kline, OrderBookLevel, Trade
from include.loader import load
from include.tables import BRIDGE_TABLES, TABLES
from tests.integration.conftest import _keyed, cassandra_rows, pg_rows, run_dag, wait_for_debezium

pytestmark = pytest.mark.integration

SYMBOLS = ["BRIDGEAUSDT", "BRIDGEBUSDT"]
T0 = datetime(2026, 4, 1, 8, 0, tzinfo=UTC)


def bridge_rows(pg, table: str, with_cdc: bool = False) -> dict[tuple, tuple]:
    t = BRIDGE_TABLES[table] if with_cdc else TABLES[table]
    with pg.cursor() as cur:
        cur.execute(f"SELECT {', '.join(t.column_names)} FROM cassandra.{table} WHERE symbol = ANY(%s)", (SYMBOLS,))
        rows = cur.fetchall()
    pg.commit()
    return _keyed(t, rows)


def _flow(dagbag, pg) -> None:
    wait_for_debezium(pg)
    run_dag(dagbag, "cdc_stream", {"mode": "available_now"})
    run_dag(dagbag, "cassandra_bridge")


def _assert_three_way_equal(pg, cassandra) -> None:
    for table in TABLES:
        source = pg_rows(pg, table, SYMBOLS)
        assert cassandra_rows(cassandra, table, SYMBOLS) == source, f"{table}: Cassandra differs from binance"
        assert bridge_rows(pg, table) == source, f"{table}: Postgres cassandra.{table} differs from binance"


def test_insert_update_delete_flow_through_to_the_bridge_exactly(dagbag, cdc_ready, pg, cassandra):
    with pg.cursor() as cur:
        for table in TABLES:
            cur.execute(f"DELETE FROM binance.{table} WHERE symbol = ANY(%s)", (SYMBOLS,))
    pg.commit()
    trades = [Trade(s, n, Decimal("0.00001234") * (n + 1), Decimal("7.5"), Decimal("0.1"), T0 + timedelta(seconds=n),
                    n % 2 == 1) for s in SYMBOLS for n in range(5)]
    kl = [Kline(s, "30m", T0, Decimal(1), Decimal(2), Decimal("0.5"), Decimal("1.5"), Decimal(10),
                T0 + timedelta(minutes=30), Decimal(15), 3) for s in SYMBOLS]
    book = [OrderBookLevel(1, s, side, Decimal("100.12345678") + n, Decimal("0.001"), T0)
            for s in SYMBOLS for side in ("bid", "ask") for n in range(3)]
    load(pg, "recent_trades", trades)
    load(pg, "klines", kl)
    load(pg, "order_book", book)
    _flow(dagbag, pg)
    _assert_three_way_equal(pg, cassandra)

    # updates and deletes after the bridge has a watermark: the next runs are incremental
    load(pg, "klines", [Kline(SYMBOLS[0], "30m", T0, Decimal(1), Decimal(3), Decimal("0.5"), Decimal("2.75"),
                              Decimal(11), T0 + timedelta(minutes=30), Decimal(16), 4)])
    with pg.cursor() as cur:
        cur.execute("DELETE FROM binance.recent_trades WHERE symbol = %s AND trade_id IN (1, 3)", (SYMBOLS[0],))
        cur.execute("DELETE FROM binance.order_book WHERE symbol = %s", (SYMBOLS[1],))
    pg.commit()
    _flow(dagbag, pg)
    _assert_three_way_equal(pg, cassandra)
    with pg.cursor() as cur:
        cur.execute("SELECT close_price::text, cdc_op FROM cassandra.klines WHERE symbol = %s", (SYMBOLS[0],))
        assert cur.fetchone() == ("2.75", "u")
        cur.execute("SELECT count(*) FROM cassandra.bridge_watermarks")
        assert cur.fetchone()[0] == len(TABLES)
    pg.commit()
    # the CDC metadata arrives too: commit time and LSN of the source change
    row = bridge_rows(pg, "klines", with_cdc=True)[(SYMBOLS[0], "30m", T0)]
    assert row[-4] == "u" and row[-2] > 0 and row[-3] is not None


def test_a_second_bridge_run_with_nothing_new_changes_nothing(dagbag, cdc_ready, pg):
    run_dag(dagbag, "cassandra_bridge")
    with pg.cursor() as cur:
        cur.execute("SELECT table_name, bucket FROM cassandra.bridge_watermarks ORDER BY 1")
        marks = cur.fetchall()
    pg.commit()
    run = run_dag(dagbag, "cassandra_bridge")
    results = {ti.task_id: ti.xcom_pull(task_ids=ti.task_id) for ti in run.get_task_instances()
               if ti.task_id.startswith("sync_")}
    assert len(results) == len(TABLES)
    # incremental: only re-reads the keys of the overlap minute, writes nothing that did not change
    assert all(r["mode"] == "incremental" and r["upserted"] == 0 and r["deleted"] == 0 for r in results.values()), \
        results
    with pg.cursor() as cur:
        cur.execute("SELECT table_name, bucket FROM cassandra.bridge_watermarks ORDER BY 1")
        assert [m[0] for m in cur.fetchall()] == [m[0] for m in marks]
    pg.commit()
