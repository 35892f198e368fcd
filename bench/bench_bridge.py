"""Benchmark: the incremental bridge run against a full re-scan (the reference project's bridge).

Usage: python bench/bench_bridge.py [--rows 1000000] [--changed 1000]

In a scratch keyspace (`bench_bridge`, same CQL as the sink) and a scratch Postgres schema
(`bench_bridge`, copies of the bridge tables), fills Cassandra's recent_trades with N rows over
ten symbols, brings Postgres level with one full copy, then changes M rows in Cassandra (updates
and deletes, logged in changed_rows as the stream logs them) and times, side by side in one run:
the incremental run (what the DAG does every minute) and a full re-scan of the table. Both end
with the same Postgres content, which is checked. Needs the local stack (`make up`). The scratch
keyspace and schema are dropped at the end.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from include.bridge.sync import sync_table  # noqa: E402
from include.connections import CassandraSettings, open_cassandra  # noqa: E402
from include.schema.cassandra import ensure_schema  # noqa: E402
from stack.localstack import load_env  # noqa: E402

KEYSPACE = SCHEMA = "bench_bridge"
SYMBOLS = [f"BENCH{i}USDT" for i in range(10)]
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def fill(session, rows: int) -> None:
    from cassandra.concurrent import execute_concurrent_with_args

    stmt = session.prepare(
        f"INSERT INTO {KEYSPACE}.recent_trades (symbol, trade_id, price, qty, quote_qty, time, is_buyer_maker, "
        "cdc_op, cdc_source_ts, cdc_lsn, cdc_written_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'r', ?, ?, ?) USING TIMESTAMP 1")
    rng = random.Random(3)
    started = time.perf_counter()
    chunk = 20000
    for start in range(0, rows, chunk):
        args = []
        for n in range(start, min(rows, start + chunk)):
            price = Decimal(rng.randint(1, 10**12)) / 10**8
            when = T0 + timedelta(milliseconds=n)
            args.append((SYMBOLS[n % 10], n, price, Decimal("0.5"), price / 2, when, n % 2 == 0, when, 1, when))
        execute_concurrent_with_args(session, stmt, args, concurrency=200, raise_on_first_error=True)
        if (start // chunk) % 10 == 0:
            print(f"  filled {start + len(args):,}/{rows:,} rows ({time.perf_counter() - started:.0f}s)", flush=True)


def change(session, rows: int, changed: int) -> None:
    """Update half and delete half of `changed` random rows, and log them as the stream does."""
    rng = random.Random(5)
    picks = rng.sample(range(rows), changed)
    bucket = datetime.now(UTC).replace(second=0, microsecond=0)
    upd = session.prepare(f"UPDATE {KEYSPACE}.recent_trades USING TIMESTAMP 2 SET qty = ?, cdc_op = 'u', cdc_lsn = 2 "
                          "WHERE symbol = ? AND trade_id = ?")
    dele = session.prepare(f"DELETE FROM {KEYSPACE}.recent_trades USING TIMESTAMP 2 WHERE symbol = ? AND trade_id = ?")
    log = session.prepare(f"INSERT INTO {KEYSPACE}.changed_rows (table_name, bucket, key, cdc_lsn) VALUES "
                          "('recent_trades', ?, ?, 2)")
    for i, n in enumerate(picks):
        sym = SYMBOLS[n % 10]
        if i % 2:
            session.execute(dele, (sym, n))
        else:
            session.execute(upd, (Decimal("0.75"), sym, n))
        session.execute(log, (bucket, json.dumps({"symbol": sym, "trade_id": n}, separators=(",", ":"))))


def pg_state(pg) -> tuple[int, str]:
    with pg.cursor() as cur:
        cur.execute(f"SELECT count(*), md5(string_agg(symbol || trade_id || qty::text, ',' ORDER BY symbol, trade_id)) "
                    f"FROM {SCHEMA}.recent_trades")
        out = cur.fetchone()
    pg.commit()
    return out


def main() -> None:
    import psycopg2

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--changed", type=int, default=1000)
    args = parser.parse_args()
    s = load_env()
    cs = CassandraSettings((s["CASSANDRA_HOST"],), int(s["CASSANDRA_PORT"]), s["CASSANDRA_USERNAME"],
                           s["CASSANDRA_PASSWORD"], KEYSPACE)
    pg = psycopg2.connect(host=s["POSTGRES_HOST"], port=s["POSTGRES_PORT"], dbname=s["POSTGRES_DB"],
                          user=s["POSTGRES_USER"], password=s["POSTGRES_PASSWORD"])
    ensure_schema(cs)
    cluster, session = open_cassandra(cs)
    try:
        with pg.cursor() as cur:
            cur.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE; CREATE SCHEMA {SCHEMA};"
                        f"CREATE TABLE {SCHEMA}.recent_trades (LIKE cassandra.recent_trades INCLUDING ALL);"
                        f"CREATE TABLE {SCHEMA}.bridge_watermarks (LIKE cassandra.bridge_watermarks INCLUDING ALL);")
        pg.commit()
        session.execute(f"TRUNCATE {KEYSPACE}.recent_trades")
        session.execute(f"TRUNCATE {KEYSPACE}.changed_rows")
        print(f"filling Cassandra with {args.rows:,} trades")
        fill(session, args.rows)
        t0 = time.perf_counter()
        first = sync_table(pg, session, KEYSPACE, "recent_trades", schema=SCHEMA)
        print(f"initial full copy into Postgres: {first.upserted:,} rows in {time.perf_counter() - t0:.1f}s")

        change(session, args.rows, args.changed)
        t0 = time.perf_counter()
        inc = sync_table(pg, session, KEYSPACE, "recent_trades", schema=SCHEMA)
        incremental = time.perf_counter() - t0
        after_incremental = pg_state(pg)

        t0 = time.perf_counter()
        full = sync_table(pg, session, KEYSPACE, "recent_trades", schema=SCHEMA, full=True)
        rescan = time.perf_counter() - t0
        after_full = pg_state(pg)
        assert after_incremental == after_full, (after_incremental, after_full)
        assert after_full[0] == args.rows - args.changed // 2

        print(f"table: {args.rows:,} rows; changed since the last run: {args.changed:,} "
              f"({inc.upserted} updated, {inc.deleted} deleted)")
        print(f"incremental run (change log -> point reads -> upsert/delete): {incremental:7.2f} s")
        print(f"full re-scan (reference project's approach):                 {rescan:7.2f} s  "
              f"({full.changed_keys:,} rows read)")
        print(f"ratio: {rescan / incremental:.0f}x faster; Postgres content identical after both "
              f"({after_full[0]:,} rows)")
    finally:
        session.execute(f"DROP KEYSPACE IF EXISTS {KEYSPACE}")
        cluster.shutdown()
        with pg.cursor() as cur:
            cur.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        pg.commit()
        pg.close()


if __name__ == "__main__":
    main()
