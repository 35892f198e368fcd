"""Benchmark: commit in Postgres -> visible in Cassandra, through Debezium, Kafka and the Spark stream.

Usage: python bench/bench_cdc_latency.py [--rates 200,1000,3000,5000] [--seconds 20] [--trigger 0.5]
                                         [--paths driver,spark-jobs]

Needs the local stack up with the connector RUNNING (`make up`, then the cdc_setup DAG or
`make demo`). Starts its own spark/cdc_stream.py (fresh checkpoint, reading from the latest
offsets), then for each rate inserts trades of a bench-only symbol into binance.recent_trades in
batches every 100 ms for a fixed time, while another process polls Cassandra every 50 ms and
notes when each trade becomes visible. Prints latency p50/p95/p99 per rate and whether the lag
stayed flat (the backlog at the end of the run no larger than in its middle). Bounded: loopback
only, rates x seconds rows in all, and the bench rows are deleted at the end.

`--paths` runs the rates once per write path of the stream, one after the other in the same run:
`driver` (the default: batches up to 20000 events written from the Spark driver, bigger ones by
Spark jobs) and `spark-jobs` (every batch by Spark jobs, `--driver-max-events 0`).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "plugins")]

from include.binance.models import Trade  # noqa: E402
from include.connections import CassandraSettings, open_cassandra  # noqa: E402
from include.loader import load  # noqa: E402
from include.names import topic_for  # noqa: E402
from stack.localstack import load_env  # noqa: E402

# a symbol of its own per run: the clean-up deletes its rows, which leaves tombstones in its partition
SYMBOL = f"BENCH{int(time.time()) % 10**6}USDT"
TOPIC = topic_for("recent_trades")
TICK = 0.1


def pg_connect(s: dict[str, str]):
    import psycopg2

    return psycopg2.connect(host=s["POSTGRES_HOST"], port=s["POSTGRES_PORT"], dbname=s["POSTGRES_DB"],
                            user=s["POSTGRES_USER"], password=s["POSTGRES_PASSWORD"])


def cassandra(s: dict[str, str]):
    hosts = tuple(s.get("CASSANDRA_HOSTS", s["CASSANDRA_HOST"]).split(","))
    return open_cassandra(CassandraSettings(hosts, int(s["CASSANDRA_PORT"]), s["CASSANDRA_USERNAME"],
                                     s["CASSANDRA_PASSWORD"], s["CASSANDRA_KEYSPACE"]), s["CASSANDRA_KEYSPACE"])


def writer(s: dict[str, str], first_id: int, rate: int, seconds: float, out: mp.Queue) -> None:
    """Insert `rate` rows/s in 100 ms batches; report (first_id, last_id, commit time) per batch."""
    conn = pg_connect(s)
    per_tick = max(1, round(rate * TICK))
    next_id = first_id
    start = time.time()
    ticks = int(seconds / TICK)
    commits = []
    for i in range(ticks):
        target = start + i * TICK
        delay = target - time.time()
        if delay > 0:
            time.sleep(delay)
        now = datetime.now(UTC)
        batch = [Trade(SYMBOL, next_id + k, Decimal("1.00000001"), Decimal("0.5"), Decimal("0.500000005"), now, False)
                 for k in range(per_tick)]
        load(conn, "recent_trades", batch)
        commits.append((next_id, next_id + per_tick - 1, time.time()))
        next_id += per_tick
    conn.close()
    out.put(commits)


def _hours() -> list[datetime]:
    """The hour partitions (recent_trades' buckets) a trade written in the last minute may be in."""
    now = datetime.now(UTC)
    return sorted({(now - timedelta(minutes=m)).replace(minute=0, second=0, microsecond=0) for m in (0, 1)})


def poller(s: dict[str, str], first_id: int, last_id: int, deadline: float, out: mp.Queue) -> None:
    """Every 50 ms, read the ids newly visible in Cassandra; report id -> first time seen."""
    cluster, session = cassandra(s)
    stmt = session.prepare("SELECT trade_id FROM recent_trades WHERE symbol = ? AND bucket = ? AND trade_id >= ?")
    stmt.fetch_size = 20000
    seen: dict[int, float] = {}
    low = first_id
    while time.time() < deadline and low <= last_id:
        now = time.time()
        for row in (r for hour in _hours() for r in session.execute(stmt, (SYMBOL, hour, low))):
            if row.trade_id not in seen and row.trade_id <= last_id:
                seen[row.trade_id] = now
        while low in seen:
            low += 1
        time.sleep(0.05)
    cluster.shutdown()
    out.put(seen)


PATHS = {"driver": "20000", "spark-jobs": "0"}


def start_stream(s: dict[str, str], checkpoint: Path, trigger: float, driver_max_events: str) -> subprocess.Popen:
    from cdc_stream_operator import spark_jars, stream_args, stream_env

    env = dict(os.environ, **stream_env(s["CASSANDRA_HOST"], s["CASSANDRA_PORT"], s["CASSANDRA_USERNAME"],
                                        s["CASSANDRA_PASSWORD"]))
    argv = [str(REPO / ".cache" / "bin" / "spark-submit"), "--master", "local[2]", "--driver-memory", "1g",
            "--jars", spark_jars(), str(REPO / "spark" / "cdc_stream.py"),
            *stream_args(s["KAFKA_BOOTSTRAP_SERVERS"], s["CASSANDRA_KEYSPACE"], str(checkpoint)),
            "--trigger-seconds", str(trigger), "--starting-offsets", "latest", "--driver-max-events", driver_max_events]
    log = open(checkpoint.parent / "stream.log", "ab")  # noqa: SIM115 - owned by the child
    return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_visible(s: dict[str, str], first_id: int, timeout: float) -> int:
    """Insert a warm-up row every few seconds until one shows up in Cassandra (the stream reads
    from the latest offsets, so rows written before it started are not seen); return the next id."""
    conn = pg_connect(s)
    cluster, session = cassandra(s)
    deadline = time.time() + timeout
    trade_id = first_id
    try:
        while time.time() < deadline:
            load(conn, "recent_trades", [Trade(SYMBOL, trade_id, Decimal(1), Decimal(1), Decimal(1),
                                               datetime.now(UTC), True)])
            for _ in range(10):
                if any(session.execute("SELECT trade_id FROM recent_trades WHERE symbol = %s AND bucket = %s "
                                       "AND trade_id >= %s", (SYMBOL, hour, first_id)).one() for hour in _hours()):
                    return trade_id + 1
                time.sleep(0.5)
            trade_id += 1
    finally:
        cluster.shutdown()
        conn.close()
    raise SystemExit(f"the stream did not apply a warm-up row within {timeout:.0f}s: is the connector RUNNING?")


def kafka_positions(s: dict[str, str]) -> dict[int, int]:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": s["KAFKA_BOOTSTRAP_SERVERS"], "group.id": "bench-peek"})
    try:
        parts = c.list_topics(TOPIC, timeout=10).topics[TOPIC].partitions
        return {p: c.get_watermark_offsets(TopicPartition(TOPIC, p), timeout=10)[1] for p in parts}
    finally:
        c.close()


def debezium_lags(s: dict[str, str], start: dict[int, int], first_id: int, last_id: int) -> list[float]:
    """Commit (source.ts_ms) -> record in Kafka (its CreateTime, set by Connect's producer), seconds."""
    from confluent_kafka import Consumer, TopicPartition

    end = kafka_positions(s)
    c = Consumer({"bootstrap.servers": s["KAFKA_BOOTSTRAP_SERVERS"], "group.id": "bench-peek",
                  "enable.auto.commit": False})
    c.assign([TopicPartition(TOPIC, p, off) for p, off in start.items()])
    lags, remaining = [], sum(end[p] - start.get(p, 0) for p in end)
    deadline = time.time() + 60
    try:
        while remaining > 0 and time.time() < deadline:
            for msg in c.consume(2000, timeout=1):
                remaining -= 1
                if msg.error() or msg.value() is None:
                    continue
                env = json.loads(msg.value())
                row = env.get("after") or {}
                if row.get("symbol") == SYMBOL and first_id <= row.get("trade_id", -1) <= last_id:
                    lags.append((msg.timestamp()[1] - env["source"]["ts_ms"]) / 1000)
    finally:
        c.close()
    return lags


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def run_rate(s: dict[str, str], rate: int, seconds: float, first_id: int) -> tuple[dict, int]:
    rows = int(rate * TICK) * int(seconds / TICK)
    last_id = first_id + rows - 1
    start_offsets = kafka_positions(s)
    q_w, q_p = mp.Queue(), mp.Queue()
    deadline = time.time() + seconds + 60
    p = mp.Process(target=poller, args=(s, first_id, last_id, deadline, q_p))
    w = mp.Process(target=writer, args=(s, first_id, rate, seconds, q_w))
    p.start()
    w.start()
    commits = q_w.get()
    seen = q_p.get()
    w.join()
    p.join()
    latencies, missing = [], 0
    for lo, hi, committed in commits:
        for tid in range(lo, hi + 1):
            if tid in seen:
                latencies.append(seen[tid] - committed)
            else:
                missing += 1
    # backlog (committed but not yet visible) at the middle and at the end of the writing window
    t_start = commits[0][2]

    def backlog(at: float) -> int:
        done = sum(hi - lo + 1 for lo, hi, c in commits if c <= at)
        vis = sum(1 for tid, t in seen.items() if t <= at)
        return done - vis

    mid, end = backlog(t_start + seconds / 2), backlog(t_start + seconds)
    dbz = debezium_lags(s, start_offsets, first_id, last_id)
    result = {
        "rate": rate, "rows": rows, "achieved": round(rows / (commits[-1][2] - t_start + TICK)),
        "p50": pct(latencies, 50), "p95": pct(latencies, 95), "p99": pct(latencies, 99),
        "max": max(latencies) if latencies else float("nan"), "missing": missing,
        "backlog_mid": mid, "backlog_end": end,
        "dbz_p50": pct(dbz, 50) if dbz else float("nan"), "dbz_p99": pct(dbz, 99) if dbz else float("nan"),
        "flat": missing == 0 and end <= max(mid * 1.5, rate),
    }
    return result, last_id + 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="200,1000,3000,5000")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--trigger", type=float, default=0.5, help="the stream's trigger interval, seconds")
    parser.add_argument("--paths", default="driver", help=f"comma-separated, of {', '.join(PATHS)}")
    parser.add_argument("--driver-max-events", default=PATHS["driver"],
                        help="the driver path's threshold (the stream's --driver-max-events)")
    args = parser.parse_args()
    PATHS["driver"] = args.driver_max_events
    paths = args.paths.split(",")
    unknown = set(paths) - set(PATHS)
    if unknown:
        parser.error(f"unknown path(s) {sorted(unknown)}; known: {', '.join(PATHS)}")
    s = load_env()
    next_id = int(time.time()) * 1000
    try:
        for path in paths:
            tmp = Path(tempfile.mkdtemp(prefix=f"bench-cdc-{path}-", dir=REPO / ".run"))
            stream = start_stream(s, tmp / "checkpoint", args.trigger, PATHS[path])
            try:
                print(f"\n[{path}] stream starting (trigger {args.trigger}s, log {tmp / 'stream.log'}); warming up")
                time.sleep(5)
                next_id = wait_visible(s, next_id, timeout=180)
                print(f"{'path':>10} {'rate/s':>7} {'rows':>7} {'achieved':>8} {'p50 s':>6} {'p95 s':>6} {'p99 s':>6} "
                      f"{'max s':>6} {'missing':>7} {'backlog mid/end':>15} {'debezium p50/p99 s':>18}  lag")
                for rate in [int(r) for r in args.rates.split(",")]:
                    r, next_id = run_rate(s, rate, args.seconds, next_id)
                    print(f"{path:>10} {r['rate']:>7} {r['rows']:>7} {r['achieved']:>8} {r['p50']:6.2f} "
                          f"{r['p95']:6.2f} {r['p99']:6.2f} {r['max']:6.2f} {r['missing']:>7} "
                          f"{r['backlog_mid']:>7}/{r['backlog_end']:<7} {r['dbz_p50']:>8.2f}/{r['dbz_p99']:<9.2f}  "
                          f"{'flat' if r['flat'] else 'GROWING'}", flush=True)
                    time.sleep(3)
            finally:
                os.killpg(stream.pid, signal.SIGTERM)
                try:
                    stream.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(stream.pid, signal.SIGKILL)
                print(f"[{path}] stream log: {tmp / 'stream.log'}")
    finally:
        conn = pg_connect(s)
        with conn.cursor() as cur:
            cur.execute("DELETE FROM binance.recent_trades WHERE symbol = %s", (SYMBOL,))
        conn.commit()
        conn.close()


if __name__ == "__main__":
    main()
