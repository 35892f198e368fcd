"""Benchmark: the stream's Cassandra writer (spark/writer.py) by batch size, side by side in one run.

Usage: python bench/bench_writer.py [--rows 20000] [--sizes 100,500] [--rounds 4] [--events]

What one Spark task does with a busy Kafka partition: `CassandraWriter.write` of N trade changes of
one symbol and hour (one Cassandra partition, as a busy symbol is), their rows then their change-log
entries, as single-partition unlogged batches of each size in turn, R rounds, each round and size
on trades of its own. With --events, the task's whole path from the Kafka records instead
(spark.apply.apply_partition: N Debezium insert events of those trades, as the connector writes
them, parsed, collapsed and written), with the time it spent parsing and writing. Prints per size
the rows written per second, the CPU this process used (the client's: parsing with --events,
converting, binding, sending) and, when Cassandra runs on this machine, the CPU its process used
meanwhile (all its nodes on this machine, summed), with the spread over the rounds.

In a scratch keyspace (`bench_writer`, same CQL as the sink), dropped at the end. Needs the local
stack (`make up`). Figures and machine in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from include.connections import CassandraSettings, open_cassandra  # noqa: E402
from include.names import topic_for  # noqa: E402
from include.schema.cassandra import ensure_schema  # noqa: E402
from include.tables import TABLES  # noqa: E402
from spark.apply import apply_partition, known_tables  # noqa: E402
from spark.writer import BatchContext, CassandraWriter, Change, epoch_us  # noqa: E402
from stack import supervisor, topology  # noqa: E402
from stack.localstack import load_env  # noqa: E402

KEYSPACE = "bench_writer"
SYMBOL = "BENCHWRITERUSDT"
TRADES = TABLES["recent_trades"]


def changes(n: int, first_id: int, at: datetime) -> list[Change]:
    """N new trades of SYMBOL at `at` (one hour bucket), as the stream's parse hands them over."""
    out = []
    for i in range(n):
        row = {"symbol": SYMBOL, "trade_id": first_id + i, "price": "64369.75000000", "qty": "0.01597000",
               "quote_qty": "1027.98490750", "time": at, "is_buyer_maker": i % 2 == 0}
        out.append(Change(TRADES, "c", first_id + i, at, epoch_us(at) + i, row))
    return out


class KafkaRecord(NamedTuple):
    """A Kafka record as the stream's tasks read it."""

    topic: str
    partition: int
    offset: int
    value: str


def events(n: int, first_id: int, at: datetime) -> list[KafkaRecord]:
    """The same N trades as Debezium insert events on their topic (fields as the connector writes
    them: decimals as text, times as ISO-8601 UTC, the source block of a streamed change)."""
    topic = topic_for(TRADES.name)
    commit_us = epoch_us(at)
    out = []
    for i, change in enumerate(changes(n, first_id, at)):
        after = {**change.row, "time": at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")}
        lsn = 10_000_000 + first_id + i
        source = {"version": "3.7.0.Final", "connector": "postgresql", "name": "binance",
                  "ts_ms": commit_us // 1000, "snapshot": "false", "db": "binance",
                  "sequence": json.dumps([str(lsn - 1), str(lsn)]), "ts_us": commit_us, "ts_ns": commit_us * 1000,
                  "schema": "binance", "table": TRADES.name, "txId": lsn, "lsn": lsn, "xmin": None,
                  "origin": None, "origin_lsn": None}
        value = {"before": None, "after": after, "source": source, "transaction": None, "op": "c",
                 "ts_ms": commit_us // 1000 + 90, "ts_us": commit_us + 90_000, "ts_ns": (commit_us + 90_000) * 1000}
        out.append(KafkaRecord(topic, 0, first_id + i, json.dumps(value, separators=(",", ":"))))
    return out


def local_cassandra(s: dict[str, str]) -> list[psutil.Process]:
    """The profile's Cassandra nodes that supervisord runs here (one, or the cluster profile's three)."""
    pids = (supervisor.pid(node.name) for node in topology.of(s, "cassandra"))
    return [psutil.Process(p) for p in pids if p is not None]


def cpu_seconds(nodes: list[psutil.Process]) -> float:
    """CPU seconds the nodes used so far, summed (NaN without a local node)."""
    if not nodes:
        return float("nan")
    return sum(t.user + t.system for t in (p.cpu_times() for p in nodes))


def spread(values: list[float], fmt: str) -> str:
    return f"{format(statistics.median(values), fmt)} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20_000, help="trade changes per write")
    parser.add_argument("--sizes", default="100,500", help="statements per batch, comma-separated")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--events", action="store_true",
                        help="the task's whole path from Debezium records (parse, collapse, write), not only the write")
    args = parser.parse_args()
    try:
        sizes = [int(v) for v in args.sizes.split(",")]
    except ValueError:
        raise SystemExit(f"--sizes must be whole numbers, comma-separated: got {args.sizes!r}") from None
    if args.rows < 1 or args.rounds < 1 or min(sizes) < 1:
        raise SystemExit("--rows, --rounds and every --sizes value must be at least 1")
    s = load_env()
    settings = CassandraSettings((s["CASSANDRA_HOST"],), int(s["CASSANDRA_PORT"]), s["CASSANDRA_USERNAME"],
                                 s["CASSANDRA_PASSWORD"], KEYSPACE)
    ensure_schema(settings)
    cluster, session = open_cassandra(settings)
    cassandra = local_cassandra(s)
    what = "events applied" if args.events else "changes"
    print(f"{args.rows:,} trade {what} per write, {args.rounds} rounds; Cassandra's CPU "
          f"{f'from its {len(cassandra)} local process(es)' if cassandra else 'not measured (no local node)'}")
    writer = CassandraWriter(session, KEYSPACE)
    at = datetime.now(UTC).replace(microsecond=0)
    context = BatchContext(at.replace(second=0), {})
    next_id = 1
    writer.write(context, changes(100, next_id, at))  # statements prepared, connections warm
    next_id += 100
    tables = known_tables()
    figures: dict[int, list[tuple[float, float, float]]] = {size: [] for size in sizes}
    try:
        for r in range(args.rounds):
            for size in sizes:
                batch = events(args.rows, next_id, at) if args.events else changes(args.rows, next_id, at)
                next_id += args.rows
                writer.batch_size = size
                server, client, started = cpu_seconds(cassandra), time.process_time(), time.perf_counter()
                if args.events:
                    done = apply_partition(writer, context, tables, batch[0].topic, 0,
                                           [(r.offset, r.value) for r in batch])
                    if done.upserts != args.rows:
                        raise SystemExit(f"{args.rows} events applied as {done.upserts} upserts: {done}")
                    phases = f" (parse {done.parse_ms:,.0f} ms, write {done.write_ms:,.0f} ms)"
                else:
                    writer.write(context, batch)
                    phases = ""
                wall = time.perf_counter() - started
                row = (args.rows / wall, (time.process_time() - client) * 10_000 / args.rows,
                       (cpu_seconds(cassandra) - server) * 10_000 / args.rows)
                figures[size].append(row)
                print(f"round {r + 1} size {size:>4}: {row[0]:8,.0f} rows/s, client CPU {row[1]:.2f} s and "
                      f"Cassandra CPU {row[2]:.2f} s per 10,000 rows{phases} (load average "
                      f"{psutil.getloadavg()[0]:.1f})", flush=True)
        print("\nsize  rows/s median (min-max)   client CPU s / 10k rows   Cassandra CPU s / 10k rows")
        for size, rows in figures.items():
            print(f"{size:>4}  {spread([f[0] for f in rows], ',.0f'):>24}   {spread([f[1] for f in rows], '.2f'):>22}"
                  f"   {spread([f[2] for f in rows], '.2f'):>24}")
    finally:
        session.execute(f"DROP KEYSPACE IF EXISTS {KEYSPACE}", timeout=120)
        cluster.shutdown()


if __name__ == "__main__":
    main()
