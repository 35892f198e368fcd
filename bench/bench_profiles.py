"""Benchmark: throughput of the deployed pipeline on the single-node and the cluster profile, side by
side in one run on this machine.

Usage: python bench/bench_profiles.py [--profiles single,cluster] [--rows 40000] [--rounds 3]
                                      [--transaction 2000]

For each profile in turn: `python -m stack up --profile <p> --offline`, `cdc_setup`, only `cdc_stream`
unpaused (the other DAGs paused, so the stream has the machine), then `--rounds` times: `--rows`
trades of a bench-only symbol committed to binance.recent_trades as fast as one connection can
(`--transaction` rows per transaction), and the time from the first commit until Cassandra holds
every one of them (counted per hour partition every 0.5 s). Prints rows/s end to end per round, the
median and spread per profile, and the stream's own figures from `stream_progress` (events and
processing time of the batches meanwhile). Loopback only; bounded by rows x rounds; the bench rows
are deleted at the end of each round. Leaves the stack on the last profile measured.

On 2 cores the cluster profile runs three times the JVMs on the same CPUs: it measures the
overhead of replication (3 replicas written, acks from 2 of 3 brokers), not a speed-up.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from bench_cdc_latency import cassandra, pg_connect  # noqa: E402

from include.binance.models import Trade  # noqa: E402
from include.loader import load  # noqa: E402
from stack import localstack as ls  # noqa: E402
from stack.demo import _api, _token, _unpause, run_cdc_setup  # noqa: E402

OTHER_DAGS = ("binance_extract", "cassandra_bridge", "pipeline_health", "retention", "binance_archive")


def switch(profile: str) -> tuple[dict[str, str], float]:
    """The stack on `profile`, cdc_setup run, only the stream unpaused and running; seconds it took."""
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "stack", "up", "--offline", "--profile", profile], cwd=REPO, check=True)
    s = ls.load_env()
    token = _token(s)
    for dag in OTHER_DAGS:
        _api(s, "PATCH", f"/api/v2/dags/{dag}", {"is_paused": True}, token)
    run_cdc_setup(s)
    _unpause(s, "cdc_stream")
    return s, time.monotonic() - t0


def visible(session, symbol: str, hours: list[datetime]) -> int:
    """Rows of `symbol` in Cassandra. A read refused by an overloaded node (a timeout, or its
    login check timing out) is tried again: the bench measures the pipeline, not this read."""
    from cassandra import OperationTimedOut, ReadTimeout, Unauthorized

    for attempt in range(10):
        try:
            return sum(session.execute("SELECT count(*) FROM recent_trades WHERE symbol = %s AND bucket = %s",
                                       (symbol, h), timeout=60).one()[0] for h in hours)
        except (OperationTimedOut, ReadTimeout, Unauthorized) as exc:
            print(f"  count read failed ({type(exc).__name__}), trying again", flush=True)
            time.sleep(2 + attempt)
    raise SystemExit(f"Cassandra refused to count {symbol}'s rows 10 times in a row")


def wait_stream(s: dict[str, str], session, timeout: float = 600) -> None:
    """One trade committed until the stream applies it: the stream runs and has caught up."""
    symbol = f"WARM{int(time.time()) % 10**6}USDT"
    conn = pg_connect(s)
    deadline = time.monotonic() + timeout
    try:
        trade_id = 1
        while time.monotonic() < deadline:
            now = datetime.now(UTC)
            load(conn, "recent_trades", [Trade(symbol, trade_id, Decimal(1), Decimal(1), Decimal(1), now, True)])
            hour = now.replace(minute=0, second=0, microsecond=0)
            for _ in range(20):
                if visible(session, symbol, [hour]):
                    cleanup(conn, symbol)
                    return
                time.sleep(1)
            trade_id += 1
    finally:
        conn.close()
    raise SystemExit(f"the stream applied nothing within {timeout:.0f}s")


def cleanup(conn, symbol: str) -> None:
    with conn.cursor() as cur:
        cur.execute("DELETE FROM binance.recent_trades WHERE symbol = %s", (symbol,))
    conn.commit()


def stream_figures(session, since: datetime) -> tuple[int, float]:
    """(events, seconds of batch processing) of the stream's batches finished since `since`."""
    from include.names import STREAM_QUERY_NAME

    now = datetime.now(UTC)
    hours = sorted({since.replace(minute=0, second=0, microsecond=0), now.replace(minute=0, second=0, microsecond=0)})
    done = [r for hour in hours for r in session.execute(
        "SELECT input_rows, processing_ms FROM stream_progress WHERE query_name = %s AND hour = %s "
        "AND finished_at >= %s", (STREAM_QUERY_NAME, hour, since), timeout=60)]
    return sum(r.input_rows or 0 for r in done), sum(r.processing_ms or 0 for r in done) / 1000


def one_round(s: dict[str, str], session, rows: int, per_transaction: int) -> dict[str, float]:
    symbol = f"TPUT{int(time.time() * 10) % 10**7}USDT"
    conn = pg_connect(s)
    started_at = datetime.now(UTC)
    t0 = time.monotonic()
    hours: set[datetime] = set()
    for first in range(0, rows, per_transaction):
        now = datetime.now(UTC)
        hours.add(now.replace(minute=0, second=0, microsecond=0))
        load(conn, "recent_trades", [Trade(symbol, first + k, Decimal("1.00000001"), Decimal("0.5"),
                                           Decimal("0.500000005"), now, False)
                                     for k in range(min(per_transaction, rows - first))])
    committed = time.monotonic() - t0
    deadline = time.monotonic() + 900
    seen = 0
    while (seen := visible(session, symbol, sorted(hours))) < rows:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {seen} of {rows} rows reached Cassandra in 15 minutes")
        time.sleep(0.5)
    total = time.monotonic() - t0
    events, busy = stream_figures(session, started_at - timedelta(seconds=1))
    cleanup(conn, symbol)
    conn.close()
    return {"rows/s": rows / total, "commit s": committed, "end-to-end s": total,
            "stream events/s busy": events / busy if busy else float("nan")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profiles", default="single,cluster")
    ap.add_argument("--rows", type=int, default=40000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--transaction", type=int, default=2000)
    args = ap.parse_args()
    results: dict[str, list[dict[str, float]]] = {}
    for profile in args.profiles.split(","):
        s, took = switch(profile)
        print(f"{profile}: stack up, cdc_setup run and the stream started in {took:.0f}s")
        cluster, session = cassandra(s)
        try:
            wait_stream(s, session)
            for r in range(args.rounds):
                out = one_round(s, session, args.rows, args.transaction)
                results.setdefault(profile, []).append(out)
                print(f"  {profile} round {r + 1}: " + ", ".join(f"{k} {v:.1f}" for k, v in out.items()), flush=True)
        finally:
            cluster.shutdown()
    print(f"\n{args.rows} trades per round, {args.transaction} per transaction, {args.rounds} rounds per profile")
    print(f"{'profile':<10}{'rows/s median':>15}{'min':>9}{'max':>9}{'stream events/s busy':>23}")
    for profile, rounds in results.items():
        rates = [r["rows/s"] for r in rounds]
        busy = statistics.median(r["stream events/s busy"] for r in rounds)
        print(f"{profile:<10}{statistics.median(rates):>15.0f}{min(rates):>9.0f}{max(rates):>9.0f}{busy:>23.0f}")


if __name__ == "__main__":
    main()
