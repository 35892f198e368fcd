"""Benchmark: the incremental bridge run against a full copy of the table, and the full copy's memory.

Usage: python bench/bench_bridge.py [--rows 1000000] [--changed 1000] [--rss] [--slices-ab ROUNDS]

In a scratch keyspace (`bench_bridge`, same CQL as the sink) and scratch Postgres schemas
(`bench_bridge`, copies of the bridge tables; `bench_bridge_source`, a copy of binance.recent_trades
holding the same rows, from which a full copy takes the partitions to read), fills Cassandra's
recent_trades with N rows over ten symbols and about fourteen hour buckets, brings Postgres level
with one full copy (the first run), then changes M rows in Cassandra (updates and deletes, logged
in changed_rows and followed by the stream's position, as the stream does) and times, side by
side in one run: the incremental run (what the DAG does every minute) and a full copy of the
table (what a first run, a request or an expired change log does). Both end with the same
Postgres content, which is checked.

--rss prints the process's peak resident memory (resource.getrusage, ru_maxrss) before and after
each full copy: the full copy streams partitions into one COPY, so its peak should not grow with N.

--slices-ab R times, instead, incremental runs over M new trades in a row (trade ids of a symbol
follow each other, as Binance's do; the rows are taken out of the bridge first, so each run inserts
them), R rounds alternating the changed keys' re-read as slices (reads._runs, what the bridge does)
and by name only (IN lists), each round on trades of its own.

Needs the local stack (`make up`). The scratch keyspace and schemas are dropped at the end.
"""

from __future__ import annotations

import argparse
import random
import resource
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from include.bridge.sync import sync_table  # noqa: E402
from include.cdc.events import encode_key  # noqa: E402
from include.connections import CassandraSettings, open_cassandra  # noqa: E402
from include.names import BRIDGE_SCHEMA, STREAM_QUERY_NAME  # noqa: E402
from include.schema.cassandra import ensure_schema  # noqa: E402
from include.schema.postgres import apply  # noqa: E402
from include.tables import TABLES  # noqa: E402
from spark.writer import change_log_entries  # noqa: E402
from stack.localstack import load_env  # noqa: E402

KEYSPACE = SCHEMA = "bench_bridge"
SOURCE = "bench_bridge_source"
SYMBOLS = [f"BENCH{i}USDT" for i in range(10)]
T0 = datetime(2026, 1, 1, tzinfo=UTC)
# one trade every 50 ms: 1,000,000 rows span about 14 hours, 140 hour partitions of about 7,200 rows;
# row n is trade n // 10 of symbol n % 10, so a symbol's trade ids follow each other
STEP = timedelta(milliseconds=50)
TRADES = TABLES["recent_trades"]


def trade_key(n: int) -> tuple[str, datetime, int]:
    """Row n's Cassandra key: (symbol, hour bucket, trade id)."""
    return SYMBOLS[n % 10], TRADES.bucket_of(T0 + n * STEP), n // 10


def logged_key(n: int) -> str:
    """Row n's key as the changed-rows log holds it."""
    return encode_key(TRADES, dict(zip(TRADES.cassandra_key, trade_key(n), strict=True)))


def _price(n: int) -> Decimal:
    return Decimal(n % 100_000 + 1) / 100


def fill(session, rows: int) -> None:
    from cassandra.concurrent import execute_concurrent_with_args

    stmt = session.prepare(
        f"INSERT INTO {KEYSPACE}.recent_trades (symbol, bucket, trade_id, price, qty, quote_qty, time, "
        "is_buyer_maker, cdc_op, cdc_source_ts, cdc_lsn, cdc_written_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'r', ?, ?, ?) USING TIMESTAMP 1")
    started = time.perf_counter()
    chunk = 20000
    for start in range(0, rows, chunk):
        args = []
        for n in range(start, min(rows, start + chunk)):
            when = T0 + n * STEP
            price = _price(n)
            args.append((*trade_key(n), price, Decimal("0.5"), price / 2, when,
                         n % 2 == 0, when, 1, when))
        execute_concurrent_with_args(session, stmt, args, concurrency=200, raise_on_first_error=True)
        if (start // chunk) % 10 == 0:
            print(f"  filled {start + len(args):,}/{rows:,} rows ({time.perf_counter() - started:.0f}s)", flush=True)


def fill_source(pg, rows: int) -> None:
    """The same trades in the scratch source table (one INSERT ... SELECT, nothing held here)."""
    with pg.cursor() as cur:
        cur.execute(
            f"INSERT INTO {SOURCE}.recent_trades (symbol, trade_id, price, qty, quote_qty, time, is_buyer_maker) "
            "SELECT 'BENCH' || (n %% 10) || 'USDT', n / 10, (n %% 100000 + 1) / 100.0, 0.5, (n %% 100000 + 1) / 200.0, "
            "%s + n * %s, n %% 2 = 0 FROM generate_series(0, %s - 1) n", (T0, STEP, rows))
    pg.commit()


def log_changes(session, minute: datetime, keys: list[str], lsn: int) -> None:
    """`keys` in the change log of `minute` as the stream logs them (spark/writer.py, change_log_entries)."""
    from cassandra.concurrent import execute_concurrent_with_args

    log = session.prepare(f"INSERT INTO {KEYSPACE}.changed_rows (table_name, bucket, key, cdc_lsn, keys) VALUES "
                          "('recent_trades', ?, ?, ?, ?)")
    entries = [(minute, *entry) for entry in change_log_entries((key, lsn) for key in keys)]
    execute_concurrent_with_args(session, log, entries, concurrency=50, raise_on_first_error=True)


def finish_batch(session, changelog_bucket: datetime, batch_id: int) -> None:
    """The stream's position after a finished batch: what the bridge reads the change log up to."""
    session.execute(f"INSERT INTO {KEYSPACE}.stream_position (query_name, batch_id, finished_at, changelog_bucket) "
                    "VALUES (%s, %s, toTimestamp(now()), %s)", (STREAM_QUERY_NAME, batch_id, changelog_bucket))


def change(session, rows: int, changed: int) -> None:
    """Update half and delete half of `changed` random rows, log them as the stream does, then record
    the batch as finished."""
    rng = random.Random(5)
    picks = rng.sample(range(rows), changed)
    minute = datetime.now(UTC).replace(second=0, microsecond=0)
    upd = session.prepare(f"UPDATE {KEYSPACE}.recent_trades USING TIMESTAMP 2 SET qty = ?, cdc_op = 'u', cdc_lsn = 2 "
                          "WHERE symbol = ? AND bucket = ? AND trade_id = ?")
    dele = session.prepare(f"DELETE FROM {KEYSPACE}.recent_trades USING TIMESTAMP 2 "
                           "WHERE symbol = ? AND bucket = ? AND trade_id = ?")
    for i, n in enumerate(picks):
        key = trade_key(n)
        if i % 2:
            session.execute(dele, key)
        else:
            session.execute(upd, (Decimal("0.75"), *key))
    log_changes(session, minute, [logged_key(n) for n in picks], 2)
    finish_batch(session, minute, 2)


def slices_ab(pg, session, rows: int, changed: int, rounds: int) -> None:
    """Incremental runs over `changed` new trades in a row, re-read as slices or by name, alternating."""
    from include.bridge import reads

    by_name = 10**9  # more keys than a run has: every piece is read by name
    slices_min = reads.SLICE_MIN_KEYS
    times: dict[str, list[float]] = {"slices": [], "by name": []}
    first = 0
    for r in range(rounds):
        for mode in ("slices", "by name") if r % 2 == 0 else ("by name", "slices"):
            rows_of_round = range(first, min(rows, first + changed))
            first += changed
            session.execute(f"TRUNCATE {KEYSPACE}.changed_rows", timeout=120)
            with pg.cursor() as cur:
                cur.execute(f"DELETE FROM {SCHEMA}.recent_trades WHERE (symbol, trade_id) IN "
                            f"(SELECT 'BENCH' || (n %% 10) || 'USDT', n / 10 FROM generate_series(%s, %s) n)",
                            (rows_of_round[0], rows_of_round[-1]))
            pg.commit()
            minute = datetime.now(UTC).replace(second=0, microsecond=0)
            keys = [logged_key(n) for n in rows_of_round]
            log_changes(session, minute, keys, 1)
            finish_batch(session, minute, 3 + r)
            reads.SLICE_MIN_KEYS = slices_min if mode == "slices" else by_name
            try:
                t0 = time.perf_counter()
                result = sync_table(pg, session, KEYSPACE, "recent_trades", schema=SCHEMA, source_schema=SOURCE)
                took = time.perf_counter() - t0
            finally:
                reads.SLICE_MIN_KEYS = slices_min
            assert (result.changed_keys, result.upserted) == (len(keys), len(keys)), result
            times[mode].append(took)
            print(f"round {r + 1}, {mode:>8}: {len(keys):,} new trades in {took:6.2f} s", flush=True)
    for mode, values in times.items():
        print(f"{mode:>8}: median {statistics.median(values):.2f} s, {min(values):.2f}-{max(values):.2f} s "
              f"over {len(values)} runs")


def pg_state(pg) -> tuple[int, str]:
    with pg.cursor() as cur:
        cur.execute(f"SELECT count(*), md5(string_agg(symbol || trade_id || qty::text, ',' ORDER BY symbol, trade_id)) "
                    f"FROM {SCHEMA}.recent_trades")
        out = cur.fetchone()
    pg.commit()
    return out


def peak_rss_mb() -> float:
    """The process's peak resident set so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    import psycopg2

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--changed", type=int, default=1000)
    parser.add_argument("--rss", action="store_true", help="report the peak resident memory of each full copy")
    parser.add_argument("--slices-ab", type=int, default=0, metavar="ROUNDS",
                        help="time incremental runs over --changed new trades, re-read as slices or by name")
    args = parser.parse_args()
    s = load_env()
    cs = CassandraSettings((s["CASSANDRA_HOST"],), int(s["CASSANDRA_PORT"]), s["CASSANDRA_USERNAME"],
                           s["CASSANDRA_PASSWORD"], KEYSPACE)
    pg = psycopg2.connect(host=s["POSTGRES_HOST"], port=s["POSTGRES_PORT"], dbname=s["POSTGRES_DB"],
                          user=s["POSTGRES_USER"], password=s["POSTGRES_PASSWORD"])
    ensure_schema(cs)
    apply(pg, BRIDGE_SCHEMA)
    cluster, session = open_cassandra(cs)
    try:
        with pg.cursor() as cur:
            cur.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE; CREATE SCHEMA {SCHEMA};"
                        f"CREATE TABLE {SCHEMA}.recent_trades (LIKE cassandra.recent_trades INCLUDING ALL);"
                        f"CREATE TABLE {SCHEMA}.bridge_watermarks (LIKE cassandra.bridge_watermarks INCLUDING ALL);"
                        f"DROP SCHEMA IF EXISTS {SOURCE} CASCADE; CREATE SCHEMA {SOURCE};"
                        f"CREATE TABLE {SOURCE}.recent_trades (LIKE binance.recent_trades INCLUDING ALL);")
        pg.commit()
        for table in ("recent_trades", "changed_rows", "stream_position"):
            session.execute(f"TRUNCATE {KEYSPACE}.{table}", timeout=120)
        print(f"filling Cassandra and the scratch source with {args.rows:,} trades")
        fill(session, args.rows)
        fill_source(pg, args.rows)
        finish_batch(session, datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=1), 1)

        rss_before = peak_rss_mb()
        t0 = time.perf_counter()
        first = sync_table(pg, session, KEYSPACE, "recent_trades", schema=SCHEMA, source_schema=SOURCE)
        print(f"initial full copy into Postgres: {first.upserted:,} rows in {time.perf_counter() - t0:.1f}s")
        if args.rss:
            print(f"peak RSS: {rss_before:,.0f} MB before the first full copy, {peak_rss_mb():,.0f} MB after it "
                  f"({first.rows_read:,} rows read)")

        if args.slices_ab:
            slices_ab(pg, session, args.rows, args.changed, args.slices_ab)
            return
        change(session, args.rows, args.changed)
        t0 = time.perf_counter()
        inc = sync_table(pg, session, KEYSPACE, "recent_trades", schema=SCHEMA, source_schema=SOURCE)
        incremental = time.perf_counter() - t0
        after_incremental = pg_state(pg)

        rss_before = peak_rss_mb()
        t0 = time.perf_counter()
        full = sync_table(pg, session, KEYSPACE, "recent_trades", schema=SCHEMA, source_schema=SOURCE, full=True)
        rescan = time.perf_counter() - t0
        after_full = pg_state(pg)
        assert after_incremental == after_full, (after_incremental, after_full)
        assert after_full[0] == args.rows - args.changed // 2
        assert full.rows_read == after_full[0], (full.rows_read, after_full[0])

        print(f"table: {args.rows:,} rows; changed since the last run: {args.changed:,} "
              f"({inc.upserted} updated, {inc.deleted} deleted)")
        print(f"incremental run (change log -> point reads -> upsert/delete): {incremental:7.2f} s")
        print(f"full copy (every partition, one COPY, one upsert):           {rescan:7.2f} s  "
              f"({full.rows_read:,} rows read)")
        print(f"ratio: {rescan / incremental:.0f}x faster; Postgres content identical after both "
              f"({after_full[0]:,} rows)")
        if args.rss:
            print(f"peak RSS: {rss_before:,.0f} MB before the requested full copy, {peak_rss_mb():,.0f} MB after it")
    finally:
        session.execute(f"DROP KEYSPACE IF EXISTS {KEYSPACE}", timeout=120)
        cluster.shutdown()
        with pg.cursor() as cur:
            cur.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE; DROP SCHEMA IF EXISTS {SOURCE} CASCADE")
        pg.commit()
        pg.close()


if __name__ == "__main__":
    main()
