"""Benchmark: what one run of pipeline_health's check_reconciliation costs, in time and CPU.

Usage: python bench/bench_reconcile.py [--symbols 10] [--trades-per-minute 500] [--agg-trades-per-minute 500]
                                      [--runs 3] [--keep]
       python bench/bench_reconcile.py --live [--runs 3]

Synthetic (default): scratch Postgres schemas `bench_reconcile_src` (copies of the binance tables)
and `bench_reconcile_bridge` (copies of the bridge tables) and a scratch keyspace `bench_reconcile`
(the sink's CQL), filled with what the recent scope of a run reads at the default settings
(`recent_buckets` 2) and the default schedule, for N symbols: per symbol the two newest hours of
trades (`--trades-per-minute`, default 500, the extraction's fetch limit: the worst case), of
aggregate trades (`--agg-trades-per-minute`, default 500: the extraction loads every one, so this is
the market's rate, not a limit) and of the order book (100 levels a side a minute), the two newest
days of latest prices and daily tickers (one a minute) and of 30m klines. Each run then does what
the check does for those buckets, through the same functions: the source's sums per minute in SQL,
Cassandra's partitions read one by one and hashed in Python, the bridge's sums in SQL, the source's
counts and xmin sums again, the comparison. Printed per run: wall time, this process's CPU time (the
Cassandra reads' decoding and hashing), the wall time of the SQL (Postgres's work), and the rows
read per store. The fence (waiting for Debezium and the stream) is left out: it waits, it does not
compute.

--live runs the check itself (include/health/reconcile_io.run) against the stack's own stores,
`--runs` times, with repairs off (max_repairs_per_run 0), and prints each run's verdict, wall and
CPU time. It records its runs in pipeline_health like the DAG.

Needs the local stack (`make up`). The scratch schemas and keyspace are dropped at the end
(unless --keep).
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from include.bridge.reads import CassandraReads  # noqa: E402
from include.connections import CassandraSettings, open_cassandra  # noqa: E402
from include.health import reconcile as rc  # noqa: E402
from include.health import reconcile_io  # noqa: E402
from include.schema.cassandra import ensure_schema  # noqa: E402
from include.tables import TABLES  # noqa: E402
from stack.localstack import load_env  # noqa: E402

KEYSPACE = "bench_reconcile"
SOURCE, BRIDGE = "bench_reconcile_src", "bench_reconcile_bridge"

# per table: how many rows a minute each symbol gets over the recent scope (2 buckets)
def volumes(trades_per_minute: int, agg_trades_per_minute: int) -> dict[str, float]:
    return {"latest_prices": 1, "daily_ticker": 1, "klines": 1 / 30, "recent_trades": trades_per_minute,
            "order_book": 200, "agg_trades": agg_trades_per_minute}


def fill_sql(name: str, symbols: list[str], per_minute: float, start: datetime, minutes: int) -> tuple[str, tuple]:
    """INSERT ... SELECT generate_series: `per_minute` rows a minute per symbol from `start` on."""
    table = TABLES[name]
    n = max(int(per_minute * minutes), 1)
    step = timedelta(minutes=minutes) / n
    count = len(symbols)
    sym = f"(ARRAY{symbols!r})[(g %% {count}) + 1]"
    at = "%s + (g / " + str(count) + ") * %s"
    exprs = {
        "latest_prices": f"SELECT {sym}, 100 + (g %% 997) / 1000.0, {at}",
        "daily_ticker": f"SELECT {sym}, 100, 101, 99, 100 + (g %% 97) / 100.0, 12345.67890123, 1234567.89012345, "
                        f"{at} - interval '1 day', {at}, g, g + 500, 500",
        "klines": f"SELECT {sym}, '30m', {at}, 100, 101.5, 99.25, 100.5, 123.45678901, "
                  f"{at} + interval '30 minutes' - interval '1 millisecond', 12399.5, 4321",
        "recent_trades": f"SELECT {sym}, g, 100 + (g %% 997) / 1000.0, 0.00100000, 0.10000000, {at}, g %% 2 = 0",
        "order_book": f"SELECT g / 200, {sym}, CASE WHEN g %% 2 = 0 THEN 'bid' ELSE 'ask' END, "
                      f"100 + (g %% 200) / 100.0, 1.5, {at}",
        "agg_trades": f"SELECT {sym}, g, 100 + (g %% 997) / 1000.0, 0.00300000, 3 * g, 3 * g + 2, {at}, g %% 2 = 1",
    }
    params = tuple(x for _ in range(exprs[name].count(at)) for x in (start, step))
    cols = ", ".join(table.column_names)
    return (f"INSERT INTO {SOURCE}.{name} ({cols}) {exprs[name]} FROM generate_series(0, {n * count - 1}) g "
            "ON CONFLICT DO NOTHING", params)


def fill(pg, session, symbols: list[str], trades_per_minute: int, agg_trades_per_minute: int,
         now: datetime) -> dict[str, int]:
    from cassandra.concurrent import execute_concurrent_with_args

    counts = {}
    for name, per_minute in volumes(trades_per_minute, agg_trades_per_minute).items():
        table = TABLES[name]
        start = rc.recent_buckets(table, now, 2)[-1]
        minutes = int((now - start).total_seconds() // 60)
        sql, params = fill_sql(name, symbols, per_minute, start, minutes)
        with pg.cursor() as cur:
            cur.execute(sql, params)
            cur.execute(f"INSERT INTO {BRIDGE}.{name} ({', '.join(table.column_names)}, cdc_op, cdc_source_ts, "
                        f"cdc_lsn, cdc_written_at) SELECT *, 'r', now(), 1, now() FROM {SOURCE}.{name}")
            cur.execute(f"SELECT {', '.join(table.column_names)} FROM {SOURCE}.{name}")
            rows = cur.fetchall()
        pg.commit()
        cols = [*table.column_names, "bucket"]
        marks = ", ".join("?" * len(cols))
        stmt = session.prepare(f"INSERT INTO {KEYSPACE}.{name} ({', '.join(cols)}) VALUES ({marks})")
        at = table.column_names.index(table.time_column)
        for chunk in range(0, len(rows), 20_000):
            args = [(*r, table.bucket_of(r[at])) for r in rows[chunk:chunk + 20_000]]
            execute_concurrent_with_args(session, stmt, args, concurrency=200, raise_on_first_error=True)
        counts[name] = len(rows)
        print(f"  {name}: {len(rows):,} rows in each store", flush=True)
    return counts


def one_run(pg, reads: CassandraReads, symbols: list[str], now: datetime) -> dict[str, float]:
    """What check_reconciliation does for the recent buckets, timed."""
    wall, cpu = time.monotonic(), time.process_time()
    sql_s = 0.0
    rows = {"source": 0, "cassandra": 0, "bridge": 0}
    differences = 0
    for name, table in TABLES.items():
        recent = rc.recent_buckets(table, now, 2)
        start, end = min(recent), max(recent) + table.bucket_span
        parts = [(p, b) for b in recent for p in ([(s,) for s in symbols] if name != "klines"
                                                  else [(s, "30m") for s in symbols])]
        t0 = time.monotonic()
        marks: dict = {}
        first = reconcile_io.source_sums(pg, table, SOURCE, start, end, marks=marks)
        bridge = reconcile_io.source_sums(pg, table, BRIDGE, start, end)
        sql_s += time.monotonic() - t0
        in_cassandra: dict = {}
        rows["cassandra"] += reconcile_io.cassandra_sums(reads, table, parts, in_cassandra)
        t0 = time.monotonic()
        second = reconcile_io.change_marks(pg, table, SOURCE, start, end, {})
        sql_s += time.monotonic() - t0
        rows["source"] += sum(c for c, _ in first.values())
        rows["bridge"] += sum(c for c, _ in bridge.values())
        for store, sums in (("cassandra", in_cassandra), ("bridge", bridge)):
            out = rc.compare(table, store, first, sums, parts, rc.in_flight_for_cassandra(marks, second))
            differences += len(out.differences)
    return {"wall": time.monotonic() - wall, "cpu": time.process_time() - cpu, "sql": sql_s,
            "differences": differences, **rows}


def synthetic(args: argparse.Namespace, s: dict[str, str]) -> None:
    import psycopg2

    symbols = [f"BENCH{i}USDT" for i in range(args.symbols)]
    cs = CassandraSettings((s["CASSANDRA_HOST"],), int(s["CASSANDRA_PORT"]), s["CASSANDRA_USERNAME"],
                           s["CASSANDRA_PASSWORD"], KEYSPACE)
    pg = psycopg2.connect(host=s["POSTGRES_HOST"], port=s["POSTGRES_PORT"], dbname=s["POSTGRES_DB"],
                          user=s["POSTGRES_USER"], password=s["POSTGRES_PASSWORD"])
    ensure_schema(cs)
    cluster, session = open_cassandra(cs)
    try:
        with pg.cursor() as cur:
            cur.execute(f"DROP SCHEMA IF EXISTS {SOURCE} CASCADE; CREATE SCHEMA {SOURCE}; "
                        f"DROP SCHEMA IF EXISTS {BRIDGE} CASCADE; CREATE SCHEMA {BRIDGE};")
            for name in TABLES:
                cur.execute(f"CREATE TABLE {SOURCE}.{name} (LIKE binance.{name} INCLUDING ALL); "
                            f"CREATE TABLE {BRIDGE}.{name} (LIKE cassandra.{name} INCLUDING ALL)")
        pg.commit()
        for name in TABLES:
            session.execute(f"TRUNCATE {KEYSPACE}.{name}", timeout=120)
        now = datetime.now(UTC)
        print(f"filling the recent scope of {len(symbols)} symbols (trades {args.trades_per_minute}/minute "
              f"per symbol, aggregate trades {args.agg_trades_per_minute}/minute, order book 200 levels a minute) "
              "in the three stores")
        fill(pg, session, symbols, args.trades_per_minute, args.agg_trades_per_minute, now)
        reads = CassandraReads.open(session, KEYSPACE)
        print(f"\n{'run':>4} {'wall s':>8} {'CPU s':>8} {'SQL s':>8} {'source rows':>12} {'Cassandra rows':>15} "
              f"{'bridge rows':>12} {'differences':>12}")
        for n in range(1, args.runs + 1):
            r = one_run(pg, reads, symbols, now)
            print(f"{n:>4} {r['wall']:>8.2f} {r['cpu']:>8.2f} {r['sql']:>8.2f} {r['source']:>12,} "
                  f"{r['cassandra']:>15,} {r['bridge']:>12,} {r['differences']:>12}")
        print("\nwall: the run; CPU: this process (Cassandra's rows decoded and hashed, the comparison); SQL: the "
              "wall time of the three Postgres queries per table (the source hashed, the bridge hashed, the source's "
              "counts and xmin sums), Postgres's CPU. The check runs every minute; the full pass adds at most "
              "full_rows_per_run rows a run.")
    finally:
        if not args.keep:
            session.execute(f"DROP KEYSPACE IF EXISTS {KEYSPACE}", timeout=120)
            with pg.cursor() as cur:
                cur.execute(f"DROP SCHEMA IF EXISTS {SOURCE} CASCADE; DROP SCHEMA IF EXISTS {BRIDGE} CASCADE")
            pg.commit()
        cluster.shutdown()
        pg.close()


def live(args: argparse.Namespace, s: dict[str, str]) -> None:
    import psycopg2
    from confluent_kafka.admin import AdminClient

    from include.retention.policy import Retention

    cs = CassandraSettings((s["CASSANDRA_HOST"],), int(s["CASSANDRA_PORT"]), s["CASSANDRA_USERNAME"],
                           s["CASSANDRA_PASSWORD"], s["CASSANDRA_KEYSPACE"])
    pg = psycopg2.connect(host=s["POSTGRES_HOST"], port=s["POSTGRES_PORT"], dbname=s["POSTGRES_DB"],
                          user=s["POSTGRES_USER"], password=s["POSTGRES_PASSWORD"])
    admin = AdminClient({"bootstrap.servers": s["KAFKA_BOOTSTRAP_SERVERS"], "log_level": 2})
    cluster, session = open_cassandra(cs)
    settings = rc.Settings(max_repairs_per_run=0)
    try:
        for n in range(1, args.runs + 1):
            wall, cpu = time.monotonic(), time.process_time()
            result = reconcile_io.run(pg, session, cs.keyspace, admin, settings, Retention.from_json(None))
            print(f"run {n}: wall {time.monotonic() - wall:.2f}s, CPU {time.process_time() - cpu:.2f}s; "
                  f"{'ok' if result.ok else 'FAILED'}: {result.message.splitlines()[0][:400]}", flush=True)
    finally:
        cluster.shutdown()
        pg.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--symbols", type=int, default=10)
    parser.add_argument("--trades-per-minute", type=int, default=500)
    parser.add_argument("--agg-trades-per-minute", type=int, default=500,
                        help="aggregate trades a minute per symbol (no fetch limit: the market's own rate)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the scratch schemas and keyspace")
    parser.add_argument("--live", action="store_true", help="run the check itself on the stack's stores")
    args = parser.parse_args()
    s = load_env()
    (live if args.live else synthetic)(args, s)


if __name__ == "__main__":
    main()
