"""Benchmark: a burst of history from the archives through the whole pipeline, nothing lost.

Usage: python bench/bench_archive.py [--symbols 10] [--days 30] [--first-day 2024-12-17] [--workers 4]
                                     [--timeout 1800] [--keep] [--load-only]

30 days of 1-minute klines for 10 symbols (432,000 rows) are loaded from the bundled server's
archive files (a server of its own, in this process, on an ephemeral 127.0.0.1 port) with the code
binance_archive runs (include/binance/archive.py: download, SHA-256 check against .CHECKSUM, one
transaction per file), then followed through the live pipeline of the local stack. Printed:
- when each stage holds everything: Postgres `binance` (download + verify + load), Debezium/Kafka
  (the replication slot confirmed past the last load's commit: every change is in Kafka), Cassandra
  (every partition holds what Postgres holds), the bridge (Postgres `cassandra`, copied by the
  stack's cassandra_bridge DAG every minute), each as seconds from the start and as rows/s;
- the live pipeline's commit -> Cassandra latency while the burst flows: a probe row inserted into
  binance.latest_prices every second (a symbol of its own) carries its source commit time and the
  time the stream wrote it (cdc_source_ts, cdc_written_at in Cassandra): p50/p95/max per phase;
- an exact comparison (every key and value, decimals digit for digit) of the three stores;
- each market dashboard panel's query time over the 30 days, as the Grafana role.

Needs the local stack running the pipeline: `make demo` (or `make demo OFFLINE=1`): the connector
RUNNING, the cdc_stream and cassandra_bridge DAGs unpaused. The default days straddle 2025-01-01, so
millisecond and microsecond files both flow. Bounded: 432,000 rows and one probe a second, every
wait under --timeout; loopback only (it refuses a stack whose hosts are not on 127.0.0.1); it
refuses to start if Postgres already holds 1m klines of those symbols and days (it deletes what it
loaded at the end, unless --keep: 432,000 deletes flow through CDC too, and leave tombstones in
those old day partitions, which live reads never touch). `--load-only` measures the archive load
into Postgres alone (no stream needed).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "plugins")]

import requests  # noqa: E402

from include.binance.archive import ArchiveFile, load_archive_file  # noqa: E402
from include.connections import CassandraSettings, open_cassandra  # noqa: E402
from include.names import ARCHIVE_FILES_TABLE, CONNECTOR, SLOT, topic_for  # noqa: E402
from include.schema.postgres import apply  # noqa: E402
from include.tables import TABLES  # noqa: E402
from stack.exchange import TRADING_SYMBOLS, BinanceTestServer  # noqa: E402
from stack.localstack import load_env  # noqa: E402

sys.path.insert(0, str(REPO / "bench"))
from bench_cdc_latency import pct  # noqa: E402 - the latency bench's percentile, for the same figures

INTERVAL = "1m"
KLINES = TABLES["klines"]
PROBE = f"PROBE{int(time.time()) % 10**6}USDT"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def pg_connect(s: dict[str, str]):
    import psycopg2

    return psycopg2.connect(host=s["POSTGRES_HOST"], port=s["POSTGRES_PORT"], dbname=s["POSTGRES_DB"],
                            user=s["POSTGRES_USER"], password=s["POSTGRES_PASSWORD"])


def cassandra(s: dict[str, str]):
    return open_cassandra(CassandraSettings((s["CASSANDRA_HOST"],), int(s["CASSANDRA_PORT"]), s["CASSANDRA_USERNAME"],
                                            s["CASSANDRA_PASSWORD"], s["CASSANDRA_KEYSPACE"]), s["CASSANDRA_KEYSPACE"])


def check_loopback(s: dict[str, str], load_only: bool) -> None:
    hosts = {"POSTGRES_HOST": s["POSTGRES_HOST"]}
    if not load_only:
        hosts |= {"CASSANDRA_HOST": s["CASSANDRA_HOST"], "KAFKA_BOOTSTRAP_SERVERS": s["KAFKA_BOOTSTRAP_SERVERS"],
                  "KAFKA_CONNECT_URL": s["KAFKA_CONNECT_URL"]}
    far = {k: v for k, v in hosts.items() if not any(h in v for h in LOOPBACK)}
    if far:
        raise SystemExit(f"this benchmark runs against the local stack only (loopback); not {far}")


def query(pg, sql: str, params: tuple = ()) -> list[tuple]:
    with pg.cursor() as cur:
        cur.execute(sql, params)
        rows = cur.fetchall() if cur.description else []
    pg.commit()
    return rows


def window(first_day: date, days: int) -> tuple[datetime, datetime]:
    start = datetime(first_day.year, first_day.month, first_day.day, tzinfo=UTC)
    return start, start + timedelta(days=days)


# --------------------------------------------------------------------------- the probe


class Probe(threading.Thread):
    """A row into binance.latest_prices every second, its commit time noted, until stopped."""

    def __init__(self, s: dict[str, str]) -> None:
        super().__init__(daemon=True)
        self.s = s
        self.stop = threading.Event()
        self.sent: list[datetime] = []

    def run(self) -> None:
        pg = pg_connect(self.s)
        try:
            n = 0
            while not self.stop.is_set():
                now = datetime.now(UTC)
                now = now.replace(microsecond=now.microsecond // 1000 * 1000)  # Cassandra keeps ms
                query(pg, "INSERT INTO binance.latest_prices (symbol, price, time) VALUES (%s, %s, %s) "
                          "ON CONFLICT DO NOTHING", (PROBE, Decimal(n) + Decimal("0.5"), now))
                self.sent.append(now)
                n += 1
                self.stop.wait(1.0)
        finally:
            pg.close()


def probe_latencies(session, sent: list[datetime]) -> dict[datetime, float | None]:
    """Per probe row: cdc_written_at - cdc_source_ts in Cassandra (s), or None if it is not there."""
    stmt = session.prepare("SELECT time, cdc_source_ts, cdc_written_at FROM latest_prices "
                           "WHERE symbol = ? AND bucket = ?")
    seen = {}
    for day in sorted({t.replace(hour=0, minute=0, second=0, microsecond=0) for t in sent}):
        for r in session.execute(stmt, (PROBE, day)):
            seen[r.time.replace(tzinfo=UTC)] = (r.cdc_written_at - r.cdc_source_ts).total_seconds()
    return {t: seen.get(t) for t in sent}


def wait_probe_visible(s: dict[str, str], timeout: float) -> None:
    """One probe row through to Cassandra before the burst: the pipeline is live."""
    pg = pg_connect(s)
    cluster, session = cassandra(s)
    at = datetime.now(UTC).replace(microsecond=0)
    try:
        query(pg, "INSERT INTO binance.latest_prices (symbol, price, time) VALUES (%s, 1, %s) ON CONFLICT DO NOTHING",
              (PROBE, at))
        deadline = time.monotonic() + timeout
        stmt = session.prepare("SELECT time FROM latest_prices WHERE symbol = ? AND bucket = ? AND time = ?")
        while time.monotonic() < deadline:
            if session.execute(stmt, (PROBE, at.replace(hour=0, minute=0, second=0), at)).one():
                return
            time.sleep(1)
    finally:
        cluster.shutdown()
        pg.close()
    raise SystemExit(f"a probe row did not reach Cassandra within {timeout:.0f}s: is the pipeline running "
                     "(`make demo`: connector RUNNING, cdc_stream unpaused)?")


# --------------------------------------------------------------------------- the stages


def load_stage(s: dict[str, str], url: str, files: list[ArchiveFile], workers: int) -> list[dict[str, Any]]:
    """Every file through include.binance.archive (the DAG's code), `workers` at a time."""
    local = threading.local()

    def one(f: ArchiveFile) -> dict[str, Any]:
        if not hasattr(local, "pg"):
            local.pg, local.http = pg_connect(s), requests.Session()
            local.dir = Path(tempfile.mkdtemp(prefix="bench-archive-"))
        return load_archive_file(local.http, local.pg, url, f, local.dir)

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, files))


def wait_for(what: str, done, timeout: float, every: float = 2.0) -> float:
    deadline = time.monotonic() + timeout
    while True:
        if done():
            return time.monotonic()
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} not complete within {timeout:.0f}s")
        time.sleep(every)


def slot_confirmed(pg, lsn: str) -> bool:
    rows = query(pg, "SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots WHERE slot_name = %s",
                 (lsn, SLOT))
    return bool(rows and rows[0][0])


def kafka_end(s: dict[str, str], topic: str) -> int:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": s["KAFKA_BOOTSTRAP_SERVERS"], "group.id": "bench-archive-peek"})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts)
    finally:
        c.close()


def partitions(symbols: list[str], start: datetime, days: int) -> list[tuple[str, str, datetime]]:
    return [(sym, INTERVAL, start + timedelta(days=d)) for sym in symbols for d in range(days)]


def cassandra_counts(session, parts: list[tuple[str, str, datetime]]) -> int:
    stmt = session.prepare("SELECT count(*) AS n FROM klines WHERE symbol = ? AND interval = ? AND bucket = ?")
    return sum(session.execute(stmt, p, timeout=60).one().n for p in parts)


def _norm(v: Any) -> Any:
    if isinstance(v, datetime):
        return v.replace(tzinfo=UTC) if v.tzinfo is None else v.astimezone(UTC)
    if isinstance(v, Decimal):
        return v.as_tuple()
    return v


def source_rows(pg, schema: str, symbols: list[str], start: datetime, end: datetime) -> dict[tuple, tuple]:
    cols = ", ".join(KLINES.column_names)
    rows = query(pg, f"SELECT {cols} FROM {schema}.klines WHERE symbol = ANY(%s) AND interval = %s "
                     "AND open_time >= %s AND open_time < %s", (symbols, INTERVAL, start, end))
    return {(r[0], r[2]): tuple(_norm(v) for v in r) for r in rows}


def cassandra_rows(session, parts) -> dict[tuple, tuple]:
    stmt = session.prepare(f"SELECT {', '.join(KLINES.column_names)} FROM klines "
                           "WHERE symbol = ? AND interval = ? AND bucket = ?")
    stmt.fetch_size = 5000
    out = {}
    for p in parts:
        for r in session.execute(stmt, p, timeout=60):
            out[(r.symbol, _norm(r.open_time))] = tuple(_norm(v) for v in r)
    return out


def differences(a: dict, b: dict) -> str:
    missing, extra = a.keys() - b.keys(), b.keys() - a.keys()
    changed = [k for k in a.keys() & b.keys() if a[k] != b[k]]
    return "identical" if not (missing or extra or changed) else \
        f"{len(missing)} missing, {len(extra)} extra, {len(changed)} different"


def panel_times(s: dict[str, str], symbols: list[str], start: datetime, end: datetime,
                rounds: int = 3) -> list[tuple[str, int, list[float]]]:
    """Each market dashboard panel's SQL over [start, end) as Grafana sends it (the Grafana role, its
    macros and variables expanded as tests/integration/test_grafana_sql.py does), candles of the first
    symbol at 1m: (title, rows, seconds per round)."""
    import psycopg2

    from grafana import market
    from tests.integration.test_grafana_sql import expand

    conn = psycopg2.connect(host=s["POSTGRES_HOST"], port=s["POSTGRES_PORT"], dbname=s["POSTGRES_DB"],
                            user=s["GRAFANA_DB_USER"], password=s["GRAFANA_DB_PASSWORD"])
    conn.autocommit = True
    variables = {"symbol": symbols, "candle_symbol": symbols[0], "kline_interval": INTERVAL}
    out = []
    try:
        for spec in market.PANELS:
            # Grafana's $__interval for 30 days on a panel about 1,000 px wide
            sql = expand(spec.raw_sql, start, end, variables, interval="1h")
            times, rows = [], 0
            for _ in range(rounds):
                t = time.perf_counter()
                with conn.cursor() as cur:
                    cur.execute(sql)
                    rows = len(cur.fetchall())
                times.append(time.perf_counter() - t)
            out.append((spec.title, rows, times))
    finally:
        conn.close()
    return out


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--symbols", type=int, default=10, help="how many of the server's trading symbols")
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--first-day", type=date.fromisoformat, default=date(2024, 12, 17),
                        help="default: 15 days of millisecond files, then 15 of microsecond ones")
    parser.add_argument("--workers", type=int, default=4, help="files downloaded and loaded at once")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds each stage may take")
    parser.add_argument("--keep", action="store_true", help="keep the loaded rows (default: delete them at the end)")
    parser.add_argument("--load-only", action="store_true", help="only the archive load into Postgres")
    args = parser.parse_args()
    if not 1 <= args.symbols <= len(TRADING_SYMBOLS):
        parser.error(f"--symbols must be 1..{len(TRADING_SYMBOLS)}")
    s = load_env()
    check_loopback(s, args.load_only)
    symbols = list(TRADING_SYMBOLS[:args.symbols])
    start, end = window(args.first_day, args.days)
    if end.date() >= datetime.now(UTC).date():
        parser.error("the days must have ended (archive files appear the next day)")
    files = [ArchiveFile(sym, "klines", INTERVAL, "daily", (start + timedelta(days=d)).date())
             for sym in symbols for d in range(args.days)]
    expected = len(symbols) * args.days * 1440
    pg = pg_connect(s)
    apply(pg, "binance")
    held = query(pg, "SELECT count(*) FROM binance.klines WHERE symbol = ANY(%s) AND interval = %s "
                     "AND open_time >= %s AND open_time < %s", (symbols, INTERVAL, start, end))[0][0]
    if held:
        raise SystemExit(f"Postgres already holds {held} 1m klines of {symbols} in [{start:%Y-%m-%d}, {end:%Y-%m-%d}): "
                         "pick other days (--first-day); this benchmark deletes what it loaded")
    print(f"{len(files)} archive files, {expected:,} rows: 1m klines of {len(symbols)} symbols, "
          f"{start:%Y-%m-%d} .. {end - timedelta(days=1):%Y-%m-%d}")

    server = BinanceTestServer(seed=0).start()
    session = cluster = probe = None
    try:
        t = time.monotonic()
        for f in files:
            server.archive_file("/" + f.path)
            server.archive_file("/" + f.path + ".CHECKSUM")
        print(f"  the bundled server made the files in {time.monotonic() - t:.1f}s (not counted below)")
        if not args.load_only:
            cluster, session = cassandra(s)
            wait_probe_visible(s, timeout=180)
            kafka_before = kafka_end(s, topic_for("klines"))
            probe = Probe(s)
            probe.start()
            time.sleep(5)  # a few probes before the burst
        marks = {"start": time.monotonic()}
        marks_wall = {"start": datetime.now(UTC)}
        results = load_stage(s, server.url, files, args.workers)
        marks["postgres"] = time.monotonic()
        marks_wall["postgres"] = datetime.now(UTC)
        loaded = sum(r.get("rows", 0) for r in results)
        lsn = query(pg, "SELECT pg_current_wal_lsn()::text")[0][0]

        def line(stage: str, rows: int) -> None:
            took = marks[stage] - marks["start"]
            print(f"  {stage:<26} complete at +{took:7.1f}s  {rows / took:>10,.0f} rows/s")

        print("stage (times from the start of the load)")
        line("postgres", loaded)
        if args.load_only:
            return
        marks["debezium/kafka"] = wait_for("Debezium", lambda: slot_confirmed(pg, lsn), args.timeout, 0.5)
        marks_wall["debezium/kafka"] = datetime.now(UTC)
        line("debezium/kafka", loaded)
        print(f"    {kafka_end(s, topic_for('klines')) - kafka_before:,} events on {topic_for('klines')} "
              "(the live extraction's klines included)")
        parts = partitions(symbols, start, args.days)
        marks["cassandra"] = wait_for("Cassandra", lambda: cassandra_counts(session, parts) >= expected, args.timeout)
        marks_wall["cassandra"] = datetime.now(UTC)
        line("cassandra", loaded)
        marks["bridge (postgres cassandra)"] = wait_for(
            "the bridge (is cassandra_bridge unpaused?)",
            lambda: query(pg, "SELECT count(*) FROM cassandra.klines WHERE symbol = ANY(%s) AND interval = %s "
                              "AND open_time >= %s AND open_time < %s", (symbols, INTERVAL, start, end))[0][0]
            >= expected, args.timeout, 5)
        line("bridge (postgres cassandra)", loaded)
        time.sleep(5)  # a few probes after
        probe.stop.set()
        probe.join()

        source = source_rows(pg, "binance", symbols, start, end)
        print(f"\nexact comparison of {len(source):,} rows (expected {expected:,}):")
        print(f"  Cassandra vs Postgres binance: {differences(source, cassandra_rows(session, parts))}")
        bridge = source_rows(pg, "cassandra", symbols, start, end)
        print(f"  bridge vs Postgres binance:    {differences(source, bridge)}")

        print(f"\nmarket dashboard panels over the {args.days} days ({symbols[0]} candles at {INTERVAL}), "
              "as the Grafana role, 3 rounds:")
        for title, rows, times in panel_times(s, symbols, start, end):
            print(f"  {title:<34} {rows:>7,} rows  median {statistics.median(times) * 1000:8.1f} ms  "
                  f"max {max(times) * 1000:8.1f} ms")

        latencies = probe_latencies(session, probe.sent)
        lost = [t for t, v in latencies.items() if v is None]
        print(f"\nlive commit -> Cassandra latency, probe rows into latest_prices ({PROBE}), one a second:")
        phases = [("before the burst", datetime.min.replace(tzinfo=UTC), marks_wall["start"]),
                  ("while loading", marks_wall["start"], marks_wall["postgres"]),
                  ("while CDC drains", marks_wall["postgres"], marks_wall["cassandra"]),
                  ("after", marks_wall["cassandra"], datetime.max.replace(tzinfo=UTC))]
        for name, lo, hi in phases:
            values = [v for t, v in latencies.items() if v is not None and lo <= t < hi]
            if values:
                print(f"  {name:<18} {len(values):>5} probes  p50 {pct(values, 50):6.2f}s  p95 {pct(values, 95):6.2f}s"
                      f"  max {max(values):6.2f}s  mean {statistics.fmean(values):6.2f}s")
        print(f"  probes not in Cassandra: {len(lost)}")
    finally:
        if probe is not None and probe.is_alive():
            probe.stop.set()
            probe.join()
        server.stop()
        if not args.keep:
            query(pg, "DELETE FROM binance.klines WHERE symbol = ANY(%s) AND interval = %s AND open_time >= %s "
                      "AND open_time < %s", (symbols, INTERVAL, start, end))
            query(pg, f"DELETE FROM binance.{ARCHIVE_FILES_TABLE} WHERE path = ANY(%s)", ([f.path for f in files],))
            query(pg, "DELETE FROM binance.latest_prices WHERE symbol = %s", (PROBE,))
            print("\nthe benchmark's rows were deleted (--keep keeps them); the deletes flow through CDC too")
        if cluster is not None:
            cluster.shutdown()
        pg.close()
        print(f"connector {CONNECTOR}, slot {SLOT}; stack left running")


if __name__ == "__main__":
    main()
