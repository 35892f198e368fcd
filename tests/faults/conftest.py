"""The fault-injection suite (`make test-faults`): services SIGKILLed under load, the replication
slot invalidated, re-runs compared by checksum, bad input. It ends and restarts services of the
local stack, so it runs on its own, after `make test`, never beside other suites.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg2
import pytest

# the integration suite's fixtures, shared
from tests.integration.conftest import cassandra, cdc_ready, dagbag  # noqa: F401
from tests.integration.test_binance_extract import airflow_env, clean_tables, server  # noqa: F401

log = logging.getLogger("faults")


def pg_connect(settings, **kwargs):
    return psycopg2.connect(host=settings["POSTGRES_HOST"], port=settings["POSTGRES_PORT"],
                            dbname=settings["POSTGRES_DB"], user=settings["POSTGRES_USER"],
                            password=settings["POSTGRES_PASSWORD"], connect_timeout=5, **kwargs)


@dataclass
class Load:
    """A steady insert/update/delete load on every `binance` table, for `symbols`, from a thread.

    Each tick is one transaction: latest prices and trades inserted, the open kline updated, the
    oldest order book snapshot of a symbol deleted and a new one inserted, a daily ticker row
    upserted. It survives a Postgres restart (reconnects); what was committed is the truth the
    test compares against.
    """

    settings: dict
    symbols: tuple[str, ...]
    ticks_per_second: float = 10
    committed_rows: int = 0
    failed_ticks: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _seq: int = 0

    def start(self) -> Load:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    @property
    def rate(self) -> float:
        """Rows written per second (inserts, updates, deletes)."""
        return self.ticks_per_second * self.rows_per_tick

    @property
    def rows_per_tick(self) -> int:
        # per symbol: 3 prices, 2 trades, 1 kline update, 1 ticker upsert, 4 levels deleted + 4 inserted
        return len(self.symbols) * 15

    def _run(self) -> None:
        conn = None
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                if conn is None or conn.closed:
                    conn = pg_connect(self.settings)
                self._tick(conn)
                self.committed_rows += self.rows_per_tick
            except psycopg2.Error as exc:
                self.failed_ticks += 1
                log.info("load tick failed (%s): reconnecting", str(exc).strip()[:120])
                if conn is not None:
                    try:
                        conn.close()
                    except psycopg2.Error:
                        pass
                conn = None
                self._stop.wait(1)
                continue
            self._stop.wait(max(0.0, 1 / self.ticks_per_second - (time.monotonic() - started)))
        if conn is not None:
            conn.close()

    def _tick(self, conn) -> None:
        self._seq += 1
        n = self._seq
        # Cassandra keeps milliseconds
        now = datetime.now(UTC)
        now = now.replace(microsecond=now.microsecond // 1000 * 1000)
        open_time = now.replace(minute=0, second=0, microsecond=0)
        with conn.cursor() as cur:
            for s in self.symbols:
                price = Decimal("100.00000000") + Decimal(n % 997) / 1000
                cur.executemany("INSERT INTO binance.latest_prices (symbol, price, time) VALUES (%s, %s, %s) "
                                "ON CONFLICT DO NOTHING",
                                [(s, price + i, now + timedelta(microseconds=i * 1000)) for i in range(3)])
                cur.executemany("INSERT INTO binance.recent_trades (symbol, trade_id, price, qty, quote_qty, time, "
                                "is_buyer_maker) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                                [(s, n * 2 + i, price, Decimal("0.001"), price * Decimal("0.001"), now, i == 0)
                                 for i in range(2)])
                cur.execute("INSERT INTO binance.klines (symbol, interval, open_time, open_price, high_price, "
                            "low_price, close_price, volume, close_time, quote_volume, num_trades) "
                            "VALUES (%s, '1h', %s, 100, %s, 99, %s, %s, %s, %s, %s) "
                            "ON CONFLICT (symbol, interval, open_time) DO UPDATE SET "
                            "close_price = EXCLUDED.close_price, high_price = EXCLUDED.high_price, "
                            "volume = EXCLUDED.volume, num_trades = EXCLUDED.num_trades, "
                            "quote_volume = EXCLUDED.quote_volume",
                            (s, open_time, price + 1, price, Decimal(n),
                             open_time + timedelta(hours=1, milliseconds=-1), Decimal(n) * price, n))
                cur.execute("INSERT INTO binance.daily_ticker (symbol, open_price, high_price, low_price, last_price, "
                            "volume, quote_volume, open_time, close_time, first_id, last_id, count) VALUES "
                            "(%s, 100, %s, 99, %s, %s, %s, %s, %s, 1, %s, %s) ON CONFLICT DO NOTHING",
                            (s, price + 1, price, Decimal(n), Decimal(n) * price, now - timedelta(days=1), now, n, n))
                cur.execute("DELETE FROM binance.order_book WHERE symbol = %s AND update_id = "
                            "(SELECT min(update_id) FROM binance.order_book WHERE symbol = %s) "
                            "AND (SELECT count(DISTINCT update_id) FROM binance.order_book WHERE symbol = %s) > 3",
                            (s, s, s))
                cur.executemany("INSERT INTO binance.order_book (update_id, symbol, side, price, quantity, "
                                "captured_at) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                                [(n, s, side, price + (d if side == "ask" else -d), Decimal("1.5"), now)
                                 for side in ("bid", "ask") for d in (Decimal("0.01"), Decimal("0.02"))])
        conn.commit()


@pytest.fixture
def clean_symbols(settings):
    """Removes the rows a test wrote for its symbols, in Postgres (the pipeline then deletes them
    downstream)."""
    written: list[str] = []
    yield written
    if not written:
        return
    conn = pg_connect(settings)
    try:
        with conn.cursor() as cur:
            for table in ("latest_prices", "recent_trades", "klines", "daily_ticker", "order_book"):
                cur.execute(f"DELETE FROM binance.{table} WHERE symbol = ANY(%s)", (written,))
        conn.commit()
    finally:
        conn.close()


def table_rows(pg, schema: str, table: str, symbols) -> dict[tuple, tuple]:
    """Rows of `symbols` in <schema>.<table>, keyed by the sink's key, values normalised exactly."""
    from include.tables import TABLES
    from tests.integration.conftest import _keyed

    t = TABLES[table]
    with pg.cursor() as cur:
        cur.execute(f"SELECT {', '.join(t.column_names)} FROM {schema}.{table} WHERE symbol = ANY(%s)",
                    (list(symbols),))
        rows = cur.fetchall()
    pg.commit()
    return _keyed(t, rows)


def _ms(rows: dict[tuple, tuple]) -> dict[tuple, tuple]:
    """Times to the millisecond, what Cassandra keeps (a source row may carry microseconds)."""
    def cut(values: tuple) -> tuple:
        return tuple(v.replace(microsecond=v.microsecond // 1000 * 1000) if isinstance(v, datetime) else v
                     for v in values)

    return {cut(k): cut(v) for k, v in rows.items()}


def differences(pg, session, symbols, schema: str | None = None) -> dict[str, str]:
    """Per table, how Cassandra (or, with `schema`, that Postgres copy) differs from Postgres
    `binance` for `symbols`: missing, extra and different rows; empty when they are equal."""
    from include.tables import TABLES
    from tests.integration.conftest import cassandra_rows

    out = {}
    for table in TABLES:
        want = _ms(table_rows(pg, "binance", table, symbols))
        got = _ms(table_rows(pg, schema, table, symbols) if schema else cassandra_rows(
            session, table, list(symbols), pg))
        missing = want.keys() - got.keys()
        extra = got.keys() - want.keys()
        changed = [k for k in want.keys() & got.keys() if want[k] != got[k]]
        if missing or extra or changed:
            out[table] = (f"{len(want)} rows in Postgres: {len(missing)} missing, {len(extra)} extra, "
                          f"{len(changed)} different (e.g. {next(iter(missing or extra or changed))})")
    return out


def wait_equal(pg, session, symbols, timeout: float, schema: str | None = None) -> float:
    """Seconds until the copy equals Postgres `binance` for `symbols`; fails with the differences."""
    from cassandra import OperationTimedOut
    from cassandra.cluster import NoHostAvailable

    started = time.monotonic()
    while True:
        try:
            diff = differences(pg, session, symbols, schema)
        except (NoHostAvailable, OperationTimedOut) as exc:
            # a restarted Cassandra: the driver reconnects in the background
            diff = {"cassandra": f"not readable yet: {exc}"}
        if not diff:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{schema or 'Cassandra'} differs from Postgres after {timeout:.0f}s: {diff}")
        time.sleep(5)


def assert_bridge_exact_after_its_run(settings, session, bag, symbols) -> None:
    """Cassandra equal to Postgres for `symbols`, then the next cassandra_bridge run leaves Postgres
    `cassandra` equal too."""
    from tests.integration.conftest import run_dag

    pg = pg_connect(settings)
    try:
        assert not differences(pg, session, symbols), "Cassandra must be exact before the bridge runs"
        run_dag(bag, "cassandra_bridge")
        assert not differences(pg, session, symbols, schema="cassandra")
    finally:
        pg.close()
