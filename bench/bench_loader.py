"""Benchmark: the project's loader against pandas `to_sql` (what the reference project used).

Usage: python bench/bench_loader.py [--rows 200000] [--repeat 3]

Loads the same N trades into scratch copies of binance.recent_trades (schema `bench`, dropped at
the end), side by side in one run, and prints rows/s for each and the ratio: the project's loader
as it loads trades (new rows COPYed straight in), the same loader through its staging table (the
way it loads tables whose rows change: klines, tickers, prices), and pandas `to_sql`. Needs the local
stack's Postgres (`make up`) and the settings in .env.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import statistics
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pandas as pd
import psycopg2
import sqlalchemy

from include.binance.models import Trade
from include.loader import load
from include.schema.postgres import apply
from include.tables import TABLES
from stack.localstack import load_env


def make_trades(n: int, seed: int = 7) -> list[Trade]:
    rng = random.Random(seed)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    price = Decimal("64000.00000000")
    out = []
    for i in range(n):
        price = (price + Decimal(rng.randint(-500, 500)) / 100).quantize(Decimal("0.00000001"))
        qty = (Decimal(rng.randint(1, 10**8)) / 10**8).quantize(Decimal("0.00000001"))
        out.append(Trade("BTCUSDT", 10**9 + i, price, qty, (price * qty).quantize(Decimal("0.00000001")),
                         start + timedelta(milliseconds=i * 3), rng.random() < 0.5))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    s = load_env()
    dsn = dict(host=s["POSTGRES_HOST"], port=s["POSTGRES_PORT"], dbname=s["POSTGRES_DB"],
               user=s["POSTGRES_USER"], password=s["POSTGRES_PASSWORD"])
    conn = psycopg2.connect(**dsn)
    apply(conn, "binance")
    with conn.cursor() as cur:
        cur.execute("DROP SCHEMA IF EXISTS bench CASCADE; CREATE SCHEMA bench;"
                    "CREATE TABLE bench.recent_trades (LIKE binance.recent_trades INCLUDING ALL);"
                    "CREATE TABLE bench.recent_trades_pandas (LIKE binance.recent_trades INCLUDING ALL);"
                    "CREATE TABLE bench.recent_trades_staged (LIKE binance.recent_trades INCLUDING ALL);")
    conn.commit()

    trades = make_trades(args.rows)
    # the reference project: a DataFrame of floats appended with to_sql
    df = pd.DataFrame([{"symbol": t.symbol, "trade_id": t.trade_id, "price": float(t.price), "qty": float(t.qty),
                        "quote_qty": float(t.quote_qty), "time": t.time, "is_buyer_maker": t.is_buyer_maker}
                       for t in trades])
    engine = sqlalchemy.create_engine(
        f"postgresql+psycopg2://{dsn['user']}:{dsn['password']}@{dsn['host']}:{dsn['port']}/{dsn['dbname']}")
    print(f"rows: {args.rows}, rounds: {args.repeat} (alternating, tables emptied before each)")
    # the same table loaded the way mutable tables are: staging table + INSERT ... ON CONFLICT
    staged_table = dataclasses.replace(TABLES["recent_trades"], name="recent_trades_staged", immutable=False)
    ours, theirs, reruns, staged = [], [], [], []
    for i in range(args.repeat):
        with conn.cursor() as cur:
            cur.execute("TRUNCATE bench.recent_trades, bench.recent_trades_pandas, bench.recent_trades_staged")
        conn.commit()
        t0 = time.perf_counter()
        result = load(conn, "recent_trades", trades, schema="bench")
        ours.append(time.perf_counter() - t0)
        assert result.inserted == args.rows, result

        t0 = time.perf_counter()
        result = load(conn, staged_table, trades, schema="bench")
        staged.append(time.perf_counter() - t0)
        assert result.inserted == args.rows, result

        t0 = time.perf_counter()
        df.to_sql("recent_trades_pandas", engine, schema="bench", if_exists="append", index=False)
        theirs.append(time.perf_counter() - t0)

        # the loader is idempotent: the same batch again adds nothing
        t0 = time.perf_counter()
        again = load(conn, "recent_trades", trades, schema="bench")
        reruns.append(time.perf_counter() - t0)
        assert again.inserted == 0 and again.updated == 0, again
        print(f"  round {i + 1}: loader {ours[-1]:.2f} s, through staging {staged[-1]:.2f} s, "
              f"to_sql {theirs[-1]:.2f} s, ratio {theirs[-1] / ours[-1]:.1f}x "
              f"(staging {theirs[-1] / staged[-1]:.1f}x), re-load {reruns[-1]:.2f} s")

    o, t, r = statistics.median(ours), statistics.median(theirs), statistics.median(reruns)
    st = statistics.median(staged)
    print(f"project loader (trades: COPY in):   {o:7.2f} s  {args.rows / o:10,.0f} rows/s  (median)")
    print(f"project loader (staging + upsert): {st:7.2f} s  {args.rows / st:10,.0f} rows/s  (median)")
    print(f"pandas to_sql (reference):         {t:7.2f} s  {args.rows / t:10,.0f} rows/s  (median)")
    print(f"ratio: {t / o:.1f}x faster (median of per-round ratios "
          f"{statistics.median([b / a for a, b in zip(ours, theirs, strict=True)]):.1f}x); "
          f"through staging {t / st:.1f}x")
    print(f"re-load of the same rows (no change): {r:.2f} s, 0 inserted, 0 updated")
    with conn.cursor() as cur:
        cur.execute("DROP SCHEMA bench CASCADE")
    conn.commit()
    conn.close()
    engine.dispose()


if __name__ == "__main__":
    main()
