"""Benchmark: commit in Postgres -> visible in Cassandra, through Debezium, Kafka and the Spark stream.

Usage: python bench/bench_cdc_latency.py [--stream deployed|own] [--rates 200,1000,3000,5000]
                                         [--seconds 20] [--commit-rows 1,0] [--rounds 1] [--trigger 0.5]
                                         [--by-second] [--connections 1] [--write insert,loader] [--nice 0]

`--stream deployed` (the default) measures the stream users run: the one the `cdc_stream` DAG
launched, reading every topic, with the demo's DAGs running beside it (`make demo OFFLINE=1` first;
it refuses to start when that stream has not finished a batch in the last 30 s). `--stream own`
starts a spark/cdc_stream.py of its own instead (fresh checkpoint, latest offsets, `--trigger`),
which needs only the stack up with the connector RUNNING.

For each rate, each transaction size of `--commit-rows` (1: one row per transaction; 0: all the rows
of a 100-ms tick in one) and each round, it inserts trades of a bench-only symbol into
binance.recent_trades for a fixed time, from `--connections` Postgres connections (one commits
700-1,000 single-row transactions a second here, depending on `--write`), while another process
polls Cassandra every 50 ms and notes when each trade becomes visible. Prints latency p50/p95/p99
from commit to visible, where the time goes (commit -> record in Kafka, read from the records'
CreateTime; the stream's micro-batches from `stream_progress`: how many, their median processing
time and the median gap between them), the backlog's trend over the last three quarters of the
run (rows/s, its slope sampled every second) and whether the lag stayed flat (a trend of at most 1 %
of the rate or 20 rows/s).
`--write` names how a transaction writes its rows, comma-separated to compare them in one run:
`insert`, one INSERT statement (one row, or a tick's rows in one multi-row INSERT), as an
application committing rows as they come would; `loader`, the DAGs' include.loader.load (a range
read, a savepoint and a COPY per transaction: six statements for one row). Both put the same
rows, hence the same change events, in the WAL; they differ in what the writes cost Postgres and
the bench on the machine the pipeline shares.
`--nice N` runs the writers and their Postgres backends at niceness N, so that the pipeline gets
the CPU first when both want it; the walsender and the poller keep their priority. It tells how
much of a latency the load's own CPU causes on a machine it shares with the pipeline (on the
cluster profile at 1,000 single-row commits a second it lowered no p99: bench/RESULTS.md).
`--by-second` adds p50/p99 by the 10-s window of the minute the rows were committed in: the
per-minute DAGs start at their own seconds (include/schedules.py), so run `--seconds 60` or longer.
Bounded: loopback only, rates x seconds rows per run, and the bench rows are deleted at the end.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import json
import multiprocessing as mp
import os
import queue
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from operator import attrgetter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "plugins")]

from include.binance.models import Trade  # noqa: E402
from include.connections import CassandraSettings, open_cassandra  # noqa: E402
from include.loader import load  # noqa: E402
from include.names import SOURCE_SCHEMA, topic_for  # noqa: E402
from include.tables import TABLES  # noqa: E402
from stack.localstack import load_env  # noqa: E402

# a symbol of its own per run: the clean-up deletes its rows, which leaves tombstones in its partition
SYMBOL = f"BENCH{int(time.time()) % 10**6}USDT"
TOPIC = topic_for("recent_trades")
TICK = 0.1
WRITES = ("insert", "loader")


def pg_connect(s: dict[str, str]):
    import psycopg2

    return psycopg2.connect(host=s["POSTGRES_HOST"], port=s["POSTGRES_PORT"], dbname=s["POSTGRES_DB"],
                            user=s["POSTGRES_USER"], password=s["POSTGRES_PASSWORD"])


def cassandra(s: dict[str, str]):
    hosts = tuple(s.get("CASSANDRA_HOSTS", s["CASSANDRA_HOST"]).split(","))
    return open_cassandra(CassandraSettings(hosts, int(s["CASSANDRA_PORT"]), s["CASSANDRA_USERNAME"],
                                     s["CASSANDRA_PASSWORD"], s["CASSANDRA_KEYSPACE"]), s["CASSANDRA_KEYSPACE"])


_TRADES = TABLES["recent_trades"]
# built once: the writers send about 1,000 of these a second
_COLUMNS = ", ".join(f'"{c}"' for c in _TRADES.column_names)
INSERT_SQL = f'INSERT INTO "{SOURCE_SCHEMA}"."{_TRADES.name}" ({_COLUMNS}) VALUES %s'
_TRADE_VALUES = attrgetter(*_TRADES.column_names)


def insert_rows(conn, rows: list[Trade]) -> None:
    """The rows in one transaction of one INSERT statement."""
    from psycopg2.extras import execute_values

    with conn.cursor() as cur:
        execute_values(cur, INSERT_SQL, [_TRADE_VALUES(r) for r in rows], page_size=len(rows))
    conn.commit()


def yield_cpu(conn, nice: int) -> None:
    """Lower the priority of this process and of the connection's Postgres backend by `nice`: the
    load and the commits it costs give the CPU to the pipeline when both want it. The walsender
    keeps its priority: decoding the WAL is the pipeline's work."""
    import psutil

    with conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        backend = cur.fetchone()[0]
    conn.commit()
    try:
        os.nice(nice)
        # setting even the backend's own niceness needs the right to renice another user's process
        psutil.Process(backend).nice(psutil.Process(backend).nice() + nice)
    except (psutil.Error, OSError) as exc:
        raise SystemExit(f"--nice {nice}: cannot lower the priority of the writer or of its Postgres backend "
                         f"(PID {backend}): {exc}") from exc


def writer(s: dict[str, str], first_id: int, rate: int, seconds: float, commit_rows: int, out: mp.Queue,
           start: float, connection: int = 0, connections: int = 1, write: str = "insert", nice: int = 0) -> None:
    """Insert `rate` rows/s, a tick's rows every 100 ms from `start`, `commit_rows` per transaction (0:
    the whole tick in one), each transaction written as `write` says (see the module's doc); report
    (first_id, last_id, commit time) per transaction. With several connections, this one commits the
    tick's transactions number `connection`, `connection` + `connections`, ... (trade ids as with one
    connection). `nice` > 0: this process and its Postgres backend run at that niceness."""
    conn = pg_connect(s)
    if nice:
        yield_cpu(conn, nice)
    per_tick = max(1, round(rate * TICK))
    size = commit_rows or per_tick
    ticks = int(seconds / TICK)
    commits = []
    for i in range(ticks):
        target = start + i * TICK
        delay = target - time.time()
        if delay > 0:
            time.sleep(delay)
        for lo in range(connection * size, per_tick, size * connections):
            n = min(size, per_tick - lo)
            first = first_id + i * per_tick + lo
            now = datetime.now(UTC)
            rows = [Trade(SYMBOL, first + k, Decimal("1.00000001"), Decimal("0.5"), Decimal("0.500000005"), now,
                          False) for k in range(n)]
            if write == "loader":
                load(conn, "recent_trades", rows)
            else:
                insert_rows(conn, rows)
            commits.append((first, first + n - 1, time.time()))
    conn.close()
    out.put(commits)


def _hours() -> list[datetime]:
    """The hour partitions (recent_trades' buckets) a trade written in the last minute may be in."""
    now = datetime.now(UTC)
    return sorted({(now - timedelta(minutes=m)).replace(minute=0, second=0, microsecond=0) for m in (0, 1)})


def poller(s: dict[str, str], first_id: int, last_id: int, deadline: float, out: mp.Queue) -> None:
    """Every 50 ms, read the ids newly visible in Cassandra; report id -> first time seen. A poll that
    Cassandra times out (an overloaded node) is counted and made again at the next tick: the ids it
    would have seen are seen then, later, which the latencies show."""
    from cassandra import OperationTimedOut, ReadTimeout

    cluster, session = cassandra(s)
    stmt = session.prepare("SELECT trade_id FROM recent_trades WHERE symbol = ? AND bucket = ? AND trade_id >= ?")
    stmt.fetch_size = 20000
    seen: dict[int, float] = {}
    low = first_id
    timed_out = 0
    read = polls = 0
    while time.time() < deadline and low <= last_id:
        now = time.time()
        try:
            ids = [r.trade_id for hour in _hours() for r in session.execute(stmt, (SYMBOL, hour, low))]
        except (ReadTimeout, OperationTimedOut) as exc:
            timed_out += 1
            print(f"poll {timed_out} timed out, polling again: {exc}", file=sys.stderr, flush=True)
            ids = []
        read += len(ids)
        polls += 1
        for trade_id in ids:
            if trade_id not in seen and trade_id <= last_id:
                seen[trade_id] = now
        while low in seen:
            low += 1
        time.sleep(0.05)
    cluster.shutdown()
    print(f"poller: {polls} polls, {read} rows read", file=sys.stderr, flush=True)
    out.put(seen)


def start_stream(s: dict[str, str], checkpoint: Path, trigger: float) -> subprocess.Popen:
    from cdc_stream_operator import spark_jars, stream_args, stream_env

    env = dict(os.environ, **stream_env(s["CASSANDRA_HOST"], s["CASSANDRA_PORT"], s["CASSANDRA_USERNAME"],
                                        s["CASSANDRA_PASSWORD"]))
    argv = [str(REPO / ".cache" / "bin" / "spark-submit"), "--master", "local[2]", "--driver-memory", "1g",
            "--jars", spark_jars(), str(REPO / "spark" / "cdc_stream.py"),
            *stream_args(s["KAFKA_BOOTSTRAP_SERVERS"], s["CASSANDRA_KEYSPACE"], str(checkpoint)),
            "--trigger-seconds", str(trigger), "--starting-offsets", "latest"]
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
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def stream_batches(s: dict[str, str], since: datetime, until: datetime) -> list[tuple[datetime, int, int]]:
    """The micro-batches of the `cdc_stream` query (whichever stream runs it) that finished in the
    window: (finished_at, input rows, processing ms), from stream_progress."""
    from include.names import STREAM_QUERY_NAME

    cluster, session = cassandra(s)
    try:
        hours, hour = [], since.replace(minute=0, second=0, microsecond=0)
        while hour <= until:
            hours.append(hour)
            hour += timedelta(hours=1)
        out = []
        for h in hours:
            out += [(r.finished_at.replace(tzinfo=UTC), r.input_rows, r.processing_ms) for r in session.execute(
                "SELECT finished_at, input_rows, processing_ms FROM stream_progress WHERE query_name = %s AND "
                "hour = %s AND finished_at >= %s AND finished_at <= %s", (STREAM_QUERY_NAME, h, since, until))]
        return sorted(out)
    finally:
        cluster.shutdown()


def deployed_stream_running(s: dict[str, str]) -> bool:
    now = datetime.now(UTC)
    return bool(stream_batches(s, now - timedelta(seconds=30), now + timedelta(seconds=5)))


def receive(q: mp.Queue, procs: list[mp.Process], what: str) -> list:
    """One report from each of `procs` through `q`. A process that ended without reporting (an
    error, a kill) raises SystemExit naming it and its exit code, rather than the bench waiting for
    ever; its traceback, if any, is on stderr above."""
    reports: list = []
    all_ended = False
    while len(reports) < len(procs):
        try:
            reports.append(q.get(timeout=1.0))
        except queue.Empty:
            failed = [proc for proc in procs if proc.exitcode not in (None, 0)]
            # a process flushes what it put before it exits: once all have ended, one more wait
            # empties the queue
            if failed or all_ended:
                ended = ", ".join(f"PID {proc.pid} exit code {proc.exitcode}" for proc in failed or procs)
                raise SystemExit(f"the bench's {what} process ended without reporting its results ({ended}); "
                                 "this round is not measured") from None
            all_ended = all(proc.exitcode is not None for proc in procs)
    return reports


def run_rate(s: dict[str, str], rate: int, seconds: float, commit_rows: int, first_id: int,
             connections: int = 1, write: str = "insert", nice: int = 0) -> tuple[dict, int]:
    rows = int(rate * TICK) * int(seconds / TICK)
    last_id = first_id + rows - 1
    start_offsets = kafka_positions(s)
    q_w, q_p = mp.Queue(), mp.Queue()
    deadline = time.time() + seconds + 60
    p = mp.Process(target=poller, args=(s, first_id, last_id, deadline, q_p))
    # the writers' first tick, late enough for each to have connected
    start = time.time() + 1.0
    writers = [mp.Process(target=writer, args=(s, first_id, rate, seconds, commit_rows, q_w, start, k, connections,
                                                      write, nice))
               for k in range(connections)]
    began = datetime.now(UTC)
    p.start()
    for w in writers:
        w.start()
    try:
        commits = sorted((c for part in receive(q_w, writers, "writer") for c in part), key=lambda c: c[2])
        seen = receive(q_p, [p], "poller")[0]
    except BaseException:
        for proc in (p, *writers):
            if proc.is_alive():
                proc.terminate()
        raise
    for w in writers:
        w.join()
    p.join()
    latencies, missing = [], 0
    by_window: dict[int, list[float]] = {}
    for lo, hi, committed in commits:
        for tid in range(lo, hi + 1):
            if tid in seen:
                latency = seen[tid] - committed
                latencies.append(latency)
                by_window.setdefault(int(committed % 60) // 10 * 10, []).append(latency)
            else:
                missing += 1
    # backlog (committed but not yet visible) at the middle and at the end of the writing window
    t_start = commits[0][2]

    def backlog(at: float) -> int:
        done = sum(hi - lo + 1 for lo, hi, c in commits if c <= at)
        vis = sum(1 for tid, t in seen.items() if t <= at)
        return done - vis

    mid, end = backlog(t_start + seconds / 2), backlog(t_start + seconds)
    trend = backlog_trend(commits, seen, t_start + seconds / 4, t_start + seconds)
    dbz = debezium_lags(s, start_offsets, first_id, last_id)
    batches = stream_batches(s, began, datetime.now(UTC))
    gaps = [(b[0] - a[0]).total_seconds() for a, b in zip(batches, batches[1:], strict=False)]
    result = {
        "rate": rate, "commit_rows": commit_rows, "write": write, "rows": rows, "transactions": len(commits),
        "batches": len(batches), "batch_ms_p50": pct([b[2] for b in batches], 50), "gap_p50": pct(gaps, 50),
        "achieved": round(rows / (commits[-1][2] - t_start + TICK)),
        "p50": pct(latencies, 50), "p95": pct(latencies, 95), "p99": pct(latencies, 99),
        "max": max(latencies) if latencies else float("nan"), "missing": missing,
        "backlog_mid": mid, "backlog_end": end, "backlog_trend": trend,
        "dbz_p50": pct(dbz, 50) if dbz else float("nan"), "dbz_p99": pct(dbz, 99) if dbz else float("nan"),
        "flat": missing == 0 and is_flat(trend, rate, mid, end),
        "windows": {w: (pct(v, 50), pct(v, 99), len(v)) for w, v in sorted(by_window.items())},
    }
    return result, last_id + 1


def is_flat(trend: float, rate: int, mid: int, end: int) -> bool:
    """The lag stayed flat: the backlog's trend grew by at most 1 % of the rate or 20 rows/s (a
    stream 2 % short of the rate grows by 2 % of it; rounds of 45 s at 1,000 rows/s that kept up
    had trends of -12 to +11 rows/s). Without a trend (a run of under 3 s), the backlog at the end
    no larger than 1.5 times the middle's or a second's rows: two instants, each moved by a whole
    micro-batch."""
    if trend == trend:
        return trend <= max(0.01 * rate, 20)
    return end <= max(mid * 1.5, rate)


def backlog_trend(commits: list[tuple[int, int, float]], seen: dict[int, float], t_from: float, t_to: float) -> float:
    """How fast the backlog (rows committed, not yet visible) grew from t_from to t_to, in rows/s:
    the least-squares slope of the backlog sampled every second. Two samples (mid and end) move by a
    whole micro-batch as it lands; the slope over every second is what a stream falling behind, or
    catching up, shows. NaN for fewer than 3 samples."""
    committed_at = sorted((c, hi - lo + 1) for lo, hi, c in commits)
    times = [c for c, _ in committed_at]
    totals = list(itertools.accumulate(n for _, n in committed_at))
    visible = sorted(seen.values())
    samples = []
    t = t_from
    while t <= t_to:
        i = bisect.bisect_right(times, t)
        samples.append((t, (totals[i - 1] if i else 0) - bisect.bisect_right(visible, t)))
        t += 1.0
    if len(samples) < 3:
        return float("nan")
    mean_t = sum(t for t, _ in samples) / len(samples)
    mean_b = sum(b for _, b in samples) / len(samples)
    spread = sum((t - mean_t) ** 2 for t, _ in samples)
    return sum((t - mean_t) * (b - mean_b) for t, b in samples) / spread


def print_row(label: str, r: dict) -> None:
    print(f"{label:>9} {r['rate']:>6} {r['commit_rows'] or 'tick':>6} {r['write']:>6} {r['rows']:>6} "
          f"{r['achieved']:>8} {r['p50']:6.2f} {r['p95']:6.2f} {r['p99']:6.2f} {r['max']:6.2f} {r['missing']:>7} "
          f"{r['backlog_mid']:>7}/{r['backlog_end']:<7} {r['backlog_trend']:>7.0f} "
          f"{r['dbz_p50']:>6.2f}/{r['dbz_p99']:<6.2f} "
          f"{r['batches']:>7} {r['batch_ms_p50']:>8.0f} {r['gap_p50']:>6.2f}  {'flat' if r['flat'] else 'GROWING'}",
          flush=True)


HEADER = (f"{'stream':>9} {'rate/s':>6} {'rows/tx':>6} {'write':>6} {'rows':>6} {'achieved':>8} {'p50 s':>6} "
          f"{'p95 s':>6} {'p99 s':>6} {'max s':>6} {'missing':>7} {'backlog mid/end':>15} {'trend/s':>7} "
          f"{'kafka p50/p99':>13} {'batches':>7} "
          f"{'batch ms':>8} {'gap s':>6}  lag")


def print_windows(r: dict) -> None:
    for w, (p50, p99, n) in r["windows"].items():
        print(f"{'':>9} second {w:>2}-{w + 9:<2} of the minute: p50 {p50:5.2f} p99 {p99:5.2f} ({n} rows)", flush=True)


def run_all(s: dict[str, str], label: str, rates: list[int], commit_rows: list[int], rounds: int, seconds: float,
            next_id: int, by_second: bool = False, connections: int = 1, writes: tuple[str, ...] = ("insert",),
            nice: int = 0) -> int:
    print(HEADER)
    for rate in rates:
        for size in commit_rows:
            for _ in range(rounds):
                for write in writes:
                    r, next_id = run_rate(s, rate, seconds, size, next_id, connections, write, nice)
                    print_row(label, r)
                    if by_second:
                        print_windows(r)
                    time.sleep(3)
    return next_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stream", choices=("deployed", "own"), default="deployed")
    parser.add_argument("--rates", default="200,1000,3000,5000")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--commit-rows", default="1,0",
                        help="rows per transaction, comma-separated (0: a 100-ms tick's rows in one)")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each rate and transaction size")
    parser.add_argument("--trigger", type=float, default=0.5, help="--stream own: the stream's trigger, seconds")
    parser.add_argument("--connections", type=int, default=1,
                        help="Postgres connections committing the rows, each its share of a tick's transactions "
                             "(one connection commits about 1,000 single-row transactions a second here with "
                             "--write insert, 700-850 with loader)")
    parser.add_argument("--write", default="insert",
                        help="how a transaction writes its rows, comma-separated: insert (one INSERT statement), "
                             "loader (the DAGs' include.loader.load)")
    parser.add_argument("--nice", type=int, default=0,
                        help="run the writers and their Postgres backends at this niceness (1-19), the "
                             "pipeline first when both want the CPU (needs the right to renice Postgres's "
                             "processes: root, or the postgres user)")
    parser.add_argument("--by-second", action="store_true",
                        help="also print p50/p99 by the 10-s window of the minute the rows were committed in")
    args = parser.parse_args()
    if args.connections < 1:
        parser.error(f"--connections must be at least 1, got {args.connections}")
    if not 0 <= args.nice <= 19:
        parser.error(f"--nice must be 0-19, got {args.nice}")
    writes = tuple(args.write.split(","))
    if unknown := [w for w in writes if w not in WRITES]:
        parser.error(f"--write: unknown {', '.join(unknown)} (choose from {', '.join(WRITES)})")
    rates = [int(r) for r in args.rates.split(",")]
    commit_rows = [int(n) for n in args.commit_rows.split(",")]
    s = load_env()
    if args.nice:
        # a writer that cannot renice would fail in its own process; find out here, before any round
        conn = pg_connect(s)
        try:
            yield_cpu(conn, 0)
        finally:
            conn.close()
    next_id = int(time.time()) * 1000
    try:
        if args.stream == "deployed":
            if not deployed_stream_running(s):
                raise SystemExit("no micro-batch of the deployed stream finished in the last 30 s: start it with "
                                 "`make demo OFFLINE=1` (the cdc_stream DAG), or use --stream own")
            print("measuring the deployed stream (the cdc_stream DAG's); warming up")
            next_id = wait_visible(s, next_id, timeout=180)
            run_all(s, "deployed", rates, commit_rows, args.rounds, args.seconds, next_id, args.by_second,
                    args.connections, writes, args.nice)
            return
        tmp = Path(tempfile.mkdtemp(prefix="bench-cdc-", dir=REPO / ".run"))
        stream = start_stream(s, tmp / "checkpoint", args.trigger)
        try:
            print(f"stream of its own starting (trigger {args.trigger}s, log {tmp / 'stream.log'}); warming up")
            time.sleep(5)
            next_id = wait_visible(s, next_id, timeout=180)
            run_all(s, "own", rates, commit_rows, args.rounds, args.seconds, next_id, args.by_second,
                    args.connections, writes, args.nice)
        finally:
            os.killpg(stream.pid, signal.SIGTERM)
            try:
                stream.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(stream.pid, signal.SIGKILL)
            print(f"stream log: {tmp / 'stream.log'}")
    finally:
        conn = pg_connect(s)
        with conn.cursor() as cur:
            cur.execute("DELETE FROM binance.recent_trades WHERE symbol = %s", (SYMBOL,))
        conn.commit()
        conn.close()


if __name__ == "__main__":
    main()
