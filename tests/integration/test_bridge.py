"""The bridge end to end: Postgres binance -> Cassandra -> Postgres cassandra, exact, with
updates and deletes reflected by incremental runs; and the bridge's own guarantees: a change log
that expired under a paused bridge forces a full copy, a batch still running is read once it has
finished, an older version never replaces a newer one, and a full copy over many partitions equals
Cassandra.

Rows are compared keyed by the bridge's key (Cassandra's without its bucket) and read from
Cassandra partition by partition (prefix and bucket), never by a table scan. The last three tests
run the bridge on a scratch keyspace and scratch Postgres schemas, writing to Cassandra with the
stream's own writer (rows with their bucket, then the change log, then the stream's position), so
they decide exactly what the bridge finds and when.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from include.binance.models import Kline, OrderBookLevel, Trade
from include.bridge.plan import minutes
from include.bridge.sync import sync_table
from include.connections import CassandraSettings
from include.loader import load
from include.names import BRIDGE_SCHEMA, STREAM_QUERY_NAME
from include.partitions import buckets
from include.schema.cassandra import ensure_schema
from include.schema.postgres import apply
from include.tables import BRIDGE_TABLES, TABLES, Table
from include.times import as_utc
from spark.writer import BatchContext, CassandraWriter, Change
from tests.integration.conftest import run_dag, wait_for_debezium

pytestmark = pytest.mark.integration

SYMBOLS = ["BRIDGEAUSDT", "BRIDGEBUSDT"]
# recent: the stream writes nothing for a bucket already out of Cassandra's retention window
HOUR = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
T0 = HOUR - timedelta(hours=2)
INTERVALS = ("1m", "30m")


# --------------------------------------------------------------------------- reading the three stores


def _norm(value: Any) -> Any:
    if isinstance(value, datetime):
        return as_utc(value)
    if isinstance(value, Decimal):
        # exactness: the digits and the scale, not just the number
        return ("decimal", value.as_tuple())
    return value


def _keyed(table: Table, rows: list[tuple]) -> dict[tuple, tuple]:
    """Rows by the bridge's key (Cassandra's key without its bucket)."""
    names = table.column_names
    out = {}
    for row in rows:
        values = tuple(_norm(v) for v in row)
        key = tuple(values[names.index(k)] for k in table.row_key)
        assert key not in out, f"duplicate key {key} in {table.name}"
        out[key] = values
    return out


def postgres_rows(pg, schema: str, table: str, symbols: list[str], with_cdc: bool = False) -> dict[tuple, tuple]:
    t = BRIDGE_TABLES[table] if with_cdc else TABLES[table]
    cols = ", ".join(f'"{c}"' for c in t.column_names)
    with pg.cursor() as cur:
        cur.execute(f'SELECT {cols} FROM "{schema}"."{table}" WHERE symbol = ANY(%s)', (symbols,))
        rows = cur.fetchall()
    pg.commit()
    return _keyed(t, rows)


def source_rows(pg, table: str, symbols: list[str] = SYMBOLS) -> dict[tuple, tuple]:
    return postgres_rows(pg, "binance", table, symbols)


def bridge_rows(pg, table: str, with_cdc: bool = False, symbols: list[str] = SYMBOLS,
                schema: str = BRIDGE_SCHEMA) -> dict[tuple, tuple]:
    return postgres_rows(pg, schema, table, symbols, with_cdc)


def cassandra_rows(session, keyspace: str, table: str, symbols: list[str], since: datetime, until: datetime,
                   with_cdc: bool = False, intervals: tuple[str, ...] = INTERVALS) -> dict[tuple, tuple]:
    """The rows of `symbols` with a time between `since` and `until`, one partition read per prefix and bucket."""
    t = BRIDGE_TABLES[table] if with_cdc else TABLES[table]
    cols = ", ".join(f'"{c}"' for c in t.column_names)
    where = " AND ".join(f'"{c}" = ?' for c in t.cassandra_partition)
    stmt = session.prepare(f'SELECT {cols} FROM "{keyspace}"."{table}" WHERE {where}')
    prefixes = [(s, i) for s in symbols for i in intervals] if "interval" in t.cassandra_partition_key \
        else [(s,) for s in symbols]
    rows = []
    for prefix in prefixes:
        for bucket in buckets(t, since, until):
            rows += [tuple(r) for r in session.execute(stmt, (*prefix, bucket))]
    return _keyed(t, rows)


def watermark_rows(pg, schema: str = BRIDGE_SCHEMA) -> dict[str, tuple]:
    """table -> (bucket, mode, full_copy_reason, full_copy_at)."""
    with pg.cursor() as cur:
        cur.execute(f'SELECT table_name, bucket, mode, full_copy_reason, full_copy_at '
                    f'FROM "{schema}".bridge_watermarks')
        out = {r[0]: r[1:] for r in cur.fetchall()}
    pg.commit()
    return out


def _flow(dagbag, pg) -> None:
    wait_for_debezium(pg)
    run_dag(dagbag, "cdc_stream", {"mode": "available_now"})
    run_dag(dagbag, "cassandra_bridge")


def _assert_three_way_equal(pg, cassandra, keyspace: str, symbols: list[str] = SYMBOLS) -> None:
    for table in TABLES:
        source = source_rows(pg, table, symbols)
        stored = cassandra_rows(cassandra, keyspace, table, symbols, T0 - timedelta(days=1), HOUR + timedelta(days=1))
        assert stored == source, f"{table}: Cassandra differs from binance"
        assert bridge_rows(pg, table, symbols=symbols) == source, f"{table}: Postgres cassandra.{table} differs"


def _clear_source(pg, symbols: list[str]) -> None:
    with pg.cursor() as cur:
        for table in TABLES:
            cur.execute(f"DELETE FROM binance.{table} WHERE symbol = ANY(%s)", (symbols,))
    pg.commit()


# --------------------------------------------------------------------------- through the whole pipeline


def test_insert_update_delete_flow_through_to_the_bridge_exactly(dagbag, cdc_ready, pg, cassandra, settings):
    keyspace = settings["CASSANDRA_KEYSPACE"]
    _clear_source(pg, SYMBOLS)
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
    _assert_three_way_equal(pg, cassandra, keyspace)

    # updates and deletes after the bridge has a watermark: the next runs are incremental
    load(pg, "klines", [Kline(SYMBOLS[0], "30m", T0, Decimal(1), Decimal(3), Decimal("0.5"), Decimal("2.75"),
                              Decimal(11), T0 + timedelta(minutes=30), Decimal(16), 4)])
    with pg.cursor() as cur:
        cur.execute("DELETE FROM binance.recent_trades WHERE symbol = %s AND trade_id IN (1, 3)", (SYMBOLS[0],))
        cur.execute("DELETE FROM binance.order_book WHERE symbol = %s", (SYMBOLS[1],))
    pg.commit()
    _flow(dagbag, pg)
    _assert_three_way_equal(pg, cassandra, keyspace)
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
    # incremental: re-reads the keys logged in the stream position's minute, writes nothing that did not change
    assert all(r["mode"] == "incremental" and r["upserted"] == 0 and r["deleted"] == 0 for r in results.values()), \
        results
    with pg.cursor() as cur:
        cur.execute("SELECT table_name, bucket FROM cassandra.bridge_watermarks ORDER BY 1")
        assert [m[0] for m in cur.fetchall()] == [m[0] for m in marks]
    pg.commit()


EXPIRY_SYMBOLS = ["BRIDGEEXPUSDT"]


def _stream_position(session, keyspace: str) -> datetime:
    row = session.execute(f"SELECT changelog_bucket FROM {keyspace}.stream_position WHERE query_name = %s",
                          (STREAM_QUERY_NAME,)).one()
    assert row is not None and row.changelog_bucket is not None, "the stream recorded no position"
    return as_utc(row.changelog_bucket)


def _changelog_ttl(session, keyspace: str) -> int:
    return session.execute("SELECT default_time_to_live FROM system_schema.tables WHERE keyspace_name = %s "
                           "AND table_name = 'changed_rows'", (keyspace,)).one().default_time_to_live


def test_a_bridge_paused_past_the_change_log_retention_copies_the_table_whole_by_itself(dagbag, cdc_ready, pg,
                                                                                          cassandra, settings):
    """The changes of the pause are no longer in changed_rows: the bridge sees its watermark is older than
    the change log keeps, copies every table whole, says why, and ends exact."""
    keyspace = settings["CASSANDRA_KEYSPACE"]
    sym = EXPIRY_SYMBOLS[0]
    trades = [Trade(sym, n, Decimal("1.25") + n, Decimal("2"), Decimal("2.5"), T0 + timedelta(minutes=20 * n), False)
              for n in range(6)]
    kline = Kline(sym, "30m", T0, Decimal(1), Decimal(2), Decimal("0.5"), Decimal("1.5"), Decimal(10),
                  T0 + timedelta(minutes=30), Decimal(15), 3)
    # every change-log entry of the test's symbol written with a 60 s TTL, its first copy's included
    ttl = _changelog_ttl(session=cassandra, keyspace=keyspace)
    cassandra.execute(f"ALTER TABLE {keyspace}.changed_rows WITH default_time_to_live = 60")
    try:
        _clear_source(pg, EXPIRY_SYMBOLS)
        load(pg, "recent_trades", trades)
        load(pg, "klines", [kline])
        _flow(dagbag, pg)
        _assert_three_way_equal(pg, cassandra, keyspace, EXPIRY_SYMBOLS)
        # the bridge paused two minutes ago: its watermarks set two minutes older than its last run left them
        # (rather than waiting two minutes), so the pause's changes are logged two minutes or more past them
        # (W < U - 60 s)
        with pg.cursor() as cur:
            cur.execute(f'UPDATE "{BRIDGE_SCHEMA}".bridge_watermarks SET bucket = bucket - interval \'2 minutes\'')
        pg.commit()
        watermark = max(as_utc(m[0]) for m in watermark_rows(pg).values())

        load(pg, "klines", [Kline(sym, "30m", T0, Decimal(1), Decimal(4), Decimal("0.5"), Decimal("3.5"), Decimal(12),
                                  T0 + timedelta(minutes=30), Decimal(18), 5)])
        load(pg, "recent_trades", [Trade(sym, 99, Decimal("9.5"), Decimal("1"), Decimal("9.5"), HOUR, True)])
        with pg.cursor() as cur:
            cur.execute("DELETE FROM binance.recent_trades WHERE symbol = %s AND trade_id = 1", (sym,))
        pg.commit()
        wait_for_debezium(pg)
        run_dag(dagbag, "cdc_stream", {"mode": "available_now"})
        position = _stream_position(cassandra, keyspace)
        assert position >= watermark + timedelta(minutes=2), (position, watermark)

        # the entries of these changes expire
        def logged() -> list[str]:
            return [key for table in ("klines", "recent_trades")
                    for minute in minutes(watermark + timedelta(minutes=1), position)
                    for r in cassandra.execute(f"SELECT keys FROM {keyspace}.changed_rows WHERE table_name = %s "
                                               "AND bucket = %s", (table, minute)) for key in r.keys or []
                    if sym in key]

        assert logged(), f"the stream logged no change of {sym}"
        deadline = time.monotonic() + 90
        while logged():
            assert time.monotonic() < deadline, \
                f"change-log entries of {sym} did not expire (does the stream set its own TTL on changed_rows?)"
            time.sleep(2)
        with pg.cursor() as cur:
            cur.execute("SELECT now()")
            started = cur.fetchone()[0]
        pg.commit()
        run_dag(dagbag, "cassandra_bridge")
    finally:
        cassandra.execute(f"ALTER TABLE {keyspace}.changed_rows WITH default_time_to_live = {ttl}")

    marks = watermark_rows(pg)
    for table in TABLES:
        bucket, mode, reason, full_copy_at = marks[table]
        assert mode == "full", (table, marks[table])
        assert reason and "change log retention (60 s)" in reason, (table, reason)
        assert full_copy_at >= started and as_utc(bucket) >= position, (table, marks[table])
    _assert_three_way_equal(pg, cassandra, keyspace, EXPIRY_SYMBOLS)
    bridged = bridge_rows(pg, "recent_trades", symbols=EXPIRY_SYMBOLS)
    assert (sym, 1) not in bridged and (sym, 99) in bridged
    assert bridge_rows(pg, "klines", symbols=EXPIRY_SYMBOLS)[(sym, "30m", T0)][6] == _norm(Decimal("3.5"))


# --------------------------------------------------------------------------- on a scratch keyspace and schemas

SCRATCH_KEYSPACE = "bridge_test"
SCRATCH_SOURCE = "bridge_test_source"
SCRATCH_BRIDGE = "bridge_test"
SCRATCH_TABLES = ("recent_trades", "klines")
A, B = "SCRATCHAUSDT", "SCRATCHBUSDT"


class ScratchStream:
    """The stream's own writer (spark/writer.py) on the scratch keyspace: a batch writes its rows (with
    their bucket) and then logs their keys under the minute it chose when it started; once finished,
    the stream records its position. A test can stop between the two, as a batch still running."""

    def __init__(self, session, keyspace: str) -> None:
        self.writer = CassandraWriter(session, keyspace)
        self.batch_id = 0

    @staticmethod
    def change(table_name: str, record: Any, lsn: int, op: str = "c") -> Change:
        """A change of `record` as the stream parses it (decimals as their text); version `lsn`, also its write time."""
        table = TABLES[table_name]
        row = {c: getattr(record, c) for c in table.column_names}
        row = {c: str(v) if isinstance(v, Decimal) else v for c, v in row.items()}
        return Change(table, op, lsn, datetime.now(UTC), lsn, row)

    def write(self, changelog_bucket: datetime, changes: list[Change]) -> None:
        """One batch's writes (kept for ever: no retention), its keys logged under `changelog_bucket`."""
        written = self.writer.write(BatchContext(changelog_bucket, {}), changes)
        assert written.skipped == 0, written

    def upsert(self, changelog_bucket: datetime, table_name: str, records: list[Any], lsn: int) -> None:
        self.write(changelog_bucket, [self.change(table_name, r, lsn) for r in records])

    def finish_batch(self, changelog_bucket: datetime) -> None:
        """The stream's position after a finished batch, written as the stream writes it."""
        self.batch_id += 1
        self.writer.record_progress(STREAM_QUERY_NAME, self.batch_id, 0, 0, None, [], changelog_bucket,
                                    "test_bridge", 0, self.writer.now())


@pytest.fixture(scope="module")
def scratch_keyspace(settings, cassandra):
    ensure_schema(CassandraSettings((settings["CASSANDRA_HOST"],), int(settings["CASSANDRA_PORT"]),
                                    settings["CASSANDRA_USERNAME"], settings["CASSANDRA_PASSWORD"], SCRATCH_KEYSPACE))
    yield SCRATCH_KEYSPACE
    cassandra.execute(f"DROP KEYSPACE IF EXISTS {SCRATCH_KEYSPACE}", timeout=120)


@pytest.fixture
def scratch(cdc_ready, pg, cassandra, scratch_keyspace) -> ScratchStream:
    """An empty scratch keyspace, a scratch source schema and a scratch bridge schema (tables like
    binance's and cassandra's)."""
    for table in (*SCRATCH_TABLES, "changed_rows", "stream_position", "sink_retention"):
        cassandra.execute(f"TRUNCATE {scratch_keyspace}.{table}", timeout=120)
    apply(pg, BRIDGE_SCHEMA)
    with pg.cursor() as cur:
        for schema, like in ((SCRATCH_SOURCE, "binance"), (SCRATCH_BRIDGE, BRIDGE_SCHEMA)):
            cur.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            cur.execute(f"CREATE SCHEMA {schema}")
            for table in SCRATCH_TABLES:
                cur.execute(f"CREATE TABLE {schema}.{table} (LIKE {like}.{table} INCLUDING ALL)")
        cur.execute(f"CREATE TABLE {SCRATCH_BRIDGE}.bridge_watermarks (LIKE {BRIDGE_SCHEMA}.bridge_watermarks "
                    "INCLUDING ALL)")
    pg.commit()
    yield ScratchStream(cassandra, scratch_keyspace)
    pg.rollback()
    with pg.cursor() as cur:
        cur.execute(f"DROP SCHEMA IF EXISTS {SCRATCH_SOURCE} CASCADE")
        cur.execute(f"DROP SCHEMA IF EXISTS {SCRATCH_BRIDGE} CASCADE")
    pg.commit()


def _sync(pg, cassandra, table: str = "recent_trades", **kwargs):
    return sync_table(pg, cassandra, SCRATCH_KEYSPACE, table, schema=SCRATCH_BRIDGE, source_schema=SCRATCH_SOURCE,
                      **kwargs)


def _scratch_equal(pg, cassandra, table: str, symbols: list[str], since: datetime, until: datetime) -> dict:
    stored = cassandra_rows(cassandra, SCRATCH_KEYSPACE, table, symbols, since, until, with_cdc=True)
    assert bridge_rows(pg, table, with_cdc=True, symbols=symbols, schema=SCRATCH_BRIDGE) == stored, \
        f"{SCRATCH_BRIDGE}.{table} differs from Cassandra"
    return stored


def _trade(symbol: str, n: int, when: datetime, price: str = "1.5") -> Trade:
    return Trade(symbol, n, Decimal(price), Decimal("2"), Decimal(price) * 2, when, n % 2 == 0)


def _minute_now() -> datetime:
    return datetime.now(UTC).replace(second=0, microsecond=0)


def test_a_batch_slower_than_a_minute_is_read_once_it_has_finished(pg, cassandra, scratch):
    """A batch logs under the minute it started in; the bridge reads up to the stream's position, not
    its own clock, so a batch that finishes ten minutes later still has every key read."""
    position = _minute_now() - timedelta(minutes=10)
    base = [_trade(A, n, HOUR - timedelta(hours=3) + timedelta(minutes=20 * n)) for n in range(10)]
    load(pg, "recent_trades", base, schema=SCRATCH_SOURCE)
    scratch.upsert(position - timedelta(minutes=5), "recent_trades", base, lsn=100)
    scratch.finish_batch(position)
    first = _sync(pg, cassandra)
    assert (first.mode, first.reason, first.watermark) == ("full", "first run", position), first

    # a batch starts one minute after the position and is still running: rows written, keys logged
    started = position + timedelta(minutes=1)
    new = [_trade(A, n, HOUR + timedelta(seconds=n)) for n in range(10, 15)]
    scratch.write(started, [*(scratch.change("recent_trades", t, 300) for t in new),
                            scratch.change("recent_trades", _trade(A, 0, base[0].time, price="9.75"), 301, "u"),
                            scratch.change("recent_trades", base[1], 302, "d")])
    running = _sync(pg, cassandra)
    assert (running.mode, running.changed_keys, running.watermark) == ("incremental", 0, position), running
    assert watermark_rows(pg, SCRATCH_BRIDGE)["recent_trades"][:2] == (position, "incremental")
    assert (A, 10) not in bridge_rows(pg, "recent_trades", symbols=[A], schema=SCRATCH_BRIDGE)

    # the batch finishes: the stream records the minute it logged under
    scratch.finish_batch(started)
    done = _sync(pg, cassandra)
    assert (done.mode, done.changed_keys, done.upserted, done.deleted, done.watermark) == \
        ("incremental", 7, 6, 1, started), done
    stored = _scratch_equal(pg, cassandra, "recent_trades", [A], HOUR - timedelta(hours=3), HOUR)
    assert {(A, n) for n in range(10, 15)} <= set(stored) and (A, 1) not in stored
    assert stored[(A, 0)][2] == _norm(Decimal("9.75"))


def test_an_older_version_read_again_never_replaces_a_newer_one(pg, cassandra, scratch):
    position = _minute_now() - timedelta(minutes=5)
    base = [_trade(A, n, HOUR - timedelta(minutes=30) + timedelta(minutes=n)) for n in range(5)]
    load(pg, "recent_trades", base, schema=SCRATCH_SOURCE)
    scratch.upsert(position - timedelta(minutes=1), "recent_trades", base, lsn=100)
    scratch.finish_batch(position)
    assert _sync(pg, cassandra).mode == "full"

    # the bridge holds a newer version of trade 0 than Cassandra gives back, and its key is logged again
    with pg.cursor() as cur:
        cur.execute(f"UPDATE {SCRATCH_BRIDGE}.recent_trades SET price = 77.7, cdc_lsn = 10000 "
                    "WHERE symbol = %s AND trade_id = 0", (A,))
    pg.commit()
    newer = bridge_rows(pg, "recent_trades", with_cdc=True, symbols=[A], schema=SCRATCH_BRIDGE)[(A, 0)]
    # the older version is written (and logged) again, as a replayed batch would
    scratch.upsert(position + timedelta(minutes=1), "recent_trades", base[:1], lsn=100)
    scratch.finish_batch(position + timedelta(minutes=1))
    result = _sync(pg, cassandra)
    assert (result.changed_keys, result.upserted, result.deleted) == (1, 0, 0), result
    assert bridge_rows(pg, "recent_trades", with_cdc=True, symbols=[A], schema=SCRATCH_BRIDGE)[(A, 0)] == newer
    # a full copy keeps it too
    assert _sync(pg, cassandra, full=True).upserted == 0
    assert bridge_rows(pg, "recent_trades", with_cdc=True, symbols=[A], schema=SCRATCH_BRIDGE)[(A, 0)] == newer


def test_runs_of_changed_trade_ids_are_read_as_slices_and_only_the_changed_rows_applied(pg, cassandra, scratch):
    """Every other trade id of a run changed (the bridge reads it as slices, reads._runs), ten of
    them deleted; a row between them that changed in Cassandra without being logged is returned by
    the slice too, and must not reach the bridge: only logged keys are applied."""
    from include.bridge.reads import SLICE_KEYS, _runs

    position = _minute_now() - timedelta(minutes=5)
    when = HOUR - timedelta(minutes=30)
    base = [_trade(A, n, when + timedelta(milliseconds=n)) for n in range(3000)]
    load(pg, "recent_trades", base, schema=SCRATCH_SOURCE)
    scratch.upsert(position - timedelta(minutes=1), "recent_trades", base, lsn=100)
    scratch.finish_batch(position)
    assert _sync(pg, cassandra).mode == "full"

    changed = list(range(0, 2000, 2))
    assert [values for _, _, values in _runs(changed)] == [None] * (len(changed) // SLICE_KEYS or 1)
    deleted = set(changed[:: len(changed) // 10][:10])
    logged_at = position + timedelta(minutes=1)
    scratch.write(logged_at, [scratch.change("recent_trades", _trade(A, n, base[n].time, price="9.75"), 300,
                                             "d" if n in deleted else "u") for n in changed])
    cassandra.execute(f"UPDATE {SCRATCH_KEYSPACE}.recent_trades SET price = 4.5 WHERE symbol = %s AND bucket = %s "
                      "AND trade_id = 1", (A, TABLES["recent_trades"].bucket_of(when)))
    scratch.finish_batch(logged_at)
    result = _sync(pg, cassandra)
    assert (result.mode, result.changed_keys, result.upserted, result.deleted) == \
        ("incremental", 1000, 990, 10), result
    rows = bridge_rows(pg, "recent_trades", symbols=[A], schema=SCRATCH_BRIDGE)
    assert all((A, n) not in rows for n in deleted)
    assert all(rows[(A, n)][2] == _norm(Decimal("9.75")) for n in changed if n not in deleted)
    # not logged: the bridge keeps what it had, the price of the full copy
    assert rows[(A, 1)][2] == _norm(Decimal("1.5"))
    assert len(rows) == 3000 - 10


def test_a_full_copy_over_many_partitions_equals_cassandra(pg, cassandra, scratch):
    """Hour buckets over twelve hours for two symbols (more partitions than the reads in flight), one
    of them holding more rows than a page, klines over four day buckets; rows the bridge holds and
    Cassandra does not (a deleted one, a symbol gone from the source) are deleted."""
    start = HOUR - timedelta(hours=12)
    trades = [_trade(s, n, start + timedelta(minutes=10 * n), price=f"{n}.25") for s in (A, B) for n in range(73)]
    dense = [_trade(A, 10_000 + n, start + timedelta(minutes=5, milliseconds=500 * n)) for n in range(6000)]
    day = TABLES["klines"].bucket_of(HOUR) - timedelta(days=4)
    klines = [Kline(s, iv, day + timedelta(hours=6 * n), Decimal(n), Decimal(n + 1), Decimal("0.5"), Decimal("1.5"),
                    Decimal(10), HOUR, Decimal(15), n)
              for s in (A, B) for iv in INTERVALS for n in range(16)]
    load(pg, "recent_trades", trades + dense, schema=SCRATCH_SOURCE)
    load(pg, "klines", klines, schema=SCRATCH_SOURCE)
    logged_at = _minute_now() - timedelta(minutes=1)
    scratch.upsert(logged_at, "recent_trades", trades + dense, lsn=100)
    scratch.upsert(logged_at, "klines", klines, lsn=100)
    assert len(buckets(TABLES["recent_trades"], start, HOUR)) == 13
    assert len(buckets(TABLES["klines"], klines[0].open_time, klines[-1].open_time)) == 4
    with pg.cursor() as cur:
        cur.execute(f"INSERT INTO {SCRATCH_BRIDGE}.recent_trades (symbol, trade_id, price, qty, quote_qty, time, "
                    "is_buyer_maker, cdc_lsn) VALUES (%s, 999999, 1, 1, 1, %s, true, 1), "
                    "('SCRATCHGHOSTUSDT', 1, 1, 1, 1, %s, true, 1)", (A, start, start))
    pg.commit()
    scratch.finish_batch(_minute_now())

    copied = _sync(pg, cassandra)
    assert (copied.mode, copied.reason, copied.rows_read) == ("full", "first run", len(trades) + len(dense)), copied
    assert (copied.upserted, copied.deleted) == (len(trades) + len(dense), 2), copied
    stored = _scratch_equal(pg, cassandra, "recent_trades", [A, B, "SCRATCHGHOSTUSDT"], start, HOUR)
    assert len(stored) == len(trades) + len(dense)

    kcopied = _sync(pg, cassandra, "klines")
    assert (kcopied.mode, kcopied.rows_read, kcopied.upserted) == ("full", len(klines), len(klines)), kcopied
    _scratch_equal(pg, cassandra, "klines", [A, B], klines[0].open_time, klines[-1].open_time)

    # asked again, it reads the same and changes nothing
    again = _sync(pg, cassandra, full=True)
    assert (again.reason, again.rows_read, again.upserted, again.deleted) == \
        ("requested", len(trades) + len(dense), 0, 0), again
