"""Soak: the volume of SOAK_DAYS (default 30) days of default operation for SOAK_SYMBOLS (default 3)
symbols, pushed through the real pipeline time-compressed, with retention running.

Default operation, per symbol and minute: an order book snapshot of 100 bids and 100 asks, 500 new
trades (the extraction's default limit), a latest price, a 24 h ticker; a 30m candle every half
hour. That is 703 rows a minute, about a million a day per symbol. The rows are generated oldest
first with the times they would have had, an hour at a time per table, and loaded through the
project's loader into Postgres `binance`; Debezium, Kafka, the Spark stream (spark-submit of
spark/cdc_stream.py, as cdc_stream runs it), Cassandra, the retention policy (default windows) and
the bridge do the rest. Generation waits whenever Debezium or the stream falls behind, so WAL and
Kafka stay bounded (the CDC topics keep 20 minutes meanwhile).

Then: every read the pipeline and the dashboards make succeeds under Cassandra's default thresholds
(the bridge, incremental and a full copy; `make status`'s stages; the health checks; every Grafana
panel's SQL); the largest partition is within the README's bound (nodetool tablehistograms after a
flush); Cassandra and the bridge are exact against Postgres over what each store keeps. Prints the
figures: rows, largest partition, most tombstones read by one query (nodetool tablestats), duration.

Run: `make test-soak` (full scale; README), or `make test-soak SOAK_DAYS=0.0625` (CI: an hour and a half).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from include.binance.models import DailyTicker, Kline, LatestPrice, OrderBookLevel, Trade
from include.bridge.sync import sync_table
from include.health import checks
from include.loader import load
from include.names import BRIDGE_SCHEMA, SOURCE_SCHEMA, topic_for
from include.retention.policy import Retention
from include.retention.prune import prune_postgres, publish_cassandra_window
from include.tables import TABLES
from stack import localstack as ls
from tests.faults.conftest import pg_connect

pytestmark = pytest.mark.soak

DAYS = float(os.environ.get("SOAK_DAYS", "30"))
SYMBOLS = tuple(f"SOAK{i}USDT" for i in range(int(os.environ.get("SOAK_SYMBOLS", "3"))))
REPO = Path(__file__).resolve().parents[2]
# generation waits while Debezium has more WAL than this to confirm, or the stream this many events to apply
MAX_UNCONFIRMED_WAL = 512 * 1024 * 1024
MAX_STREAM_LAG = 400_000
# the README's bound for one Cassandra partition
MAX_PARTITION_ROWS = 100_000
MAX_PARTITION_BYTES = 100 * 1024 * 1024
TOMBSTONE_FAILURE_THRESHOLD = 100_000
TOPIC_RETENTION_MS = 20 * 60 * 1000


# --------------------------------------------------------------------------- the data


def hour_of_data(symbol_index: int, symbol: str, hour: datetime, seq: dict[str, int]) -> dict[str, list]:
    """One hour of default operation for one symbol, as the extraction would have stored it."""
    base = Decimal(100 + symbol_index * 1000)
    out: dict[str, list] = {t: [] for t in TABLES}
    for minute in range(60):
        at = hour + timedelta(minutes=minute)
        price = base + Decimal((int(at.timestamp()) // 60) % 997) / 100
        out["latest_prices"].append(LatestPrice(symbol, price, at))
        out["daily_ticker"].append(DailyTicker(symbol, price - 1, price + 2, price - 2, price, Decimal("1234.5"),
                                               Decimal("123450.25"), at - timedelta(days=1), at, seq["trade"] - 10_000,
                                               seq["trade"], 10_000))
        seq["book"] += 1
        out["order_book"] += [OrderBookLevel(seq["book"], symbol, side, price + (d if side == "ask" else -d),
                                             Decimal("0.5") + d, at)
                              for side in ("bid", "ask") for d in (Decimal(n) / 100 for n in range(1, 101))]
        for n in range(500):
            seq["trade"] += 1
            out["recent_trades"].append(Trade(symbol, seq["trade"], price, Decimal("0.01"), price / 100,
                                              at + timedelta(microseconds=n * 119_000), n % 2 == 0))
    for half in (0, 30):
        open_time = hour + timedelta(minutes=half)
        out["klines"].append(Kline(symbol, "30m", open_time, base, base + 5, base - 5, base + 1, Decimal("42.5"),
                                   open_time + timedelta(minutes=30, milliseconds=-1), Decimal("4250"), 1500))
    return out


# --------------------------------------------------------------------------- pacing


def _unconfirmed_wal(pg) -> int:
    with pg.cursor() as cur:
        cur.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint "
                    "FROM pg_replication_slots WHERE slot_name = 'binance_cdc'")
        row = cur.fetchone()
    pg.commit()
    return row[0] or 0 if row else 0


def _stream_lag(admin, session, keyspace: str) -> int:
    """Events of the tables' topics the stream has not applied (the heartbeat topic left out)."""
    data = {topic_for(t) for t in TABLES}
    end = checks.kafka_end_offsets(admin, timeout=10)
    done = checks.processed_offsets(session, keyspace)
    return sum(max(n - (done[k].next_offset if k in done else 0), 0) for k, n in end.items() if k[0] in data)


def _wait_drained(pg, admin, session, keyspace: str, lsn: str, timeout: float = 1800) -> float:
    """Seconds until Debezium has confirmed the WAL up to `lsn` (the last load's) and the stream has
    applied every event of the tables' topics. Not "no WAL unconfirmed": the cluster's WAL also
    carries Airflow's writes, which Debezium confirms only now and then."""
    started = time.monotonic()
    while True:
        with pg.cursor() as cur:
            cur.execute("SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots "
                        "WHERE slot_name = 'binance_cdc'", (lsn,))
            row = cur.fetchone()
        pg.commit()
        if row and row[0] and _stream_lag(admin, session, keyspace) == 0:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"the pipeline did not drain within {timeout:.0f}s (slot confirmed past {lsn}: "
                                 f"{bool(row and row[0])}, stream lag {_stream_lag(admin, session, keyspace)})")
        time.sleep(2)


def _wait_below(pg, admin, session, keyspace: str, wal: int, lag: int, timeout: float = 3600) -> float:
    """Seconds waited until Debezium and the stream are within the bounds (0, 0: drained)."""
    started = time.monotonic()
    while _unconfirmed_wal(pg) > wal or _stream_lag(admin, session, keyspace) > lag:
        if time.monotonic() - started > timeout:
            raise AssertionError(f"the pipeline did not catch up within {timeout:.0f}s (unconfirmed WAL "
                                 f"{_unconfirmed_wal(pg)}, stream lag {_stream_lag(admin, session, keyspace)})")
        time.sleep(2)
    return time.monotonic() - started


# --------------------------------------------------------------------------- the checks


def _digest(rows) -> tuple[int, str]:
    h = hashlib.sha256()
    n = 0
    for row in rows:
        h.update(repr(row).encode())
        n += 1
    return n, h.hexdigest()


def _norm(value):
    if isinstance(value, datetime):
        value = value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
        return value.replace(microsecond=value.microsecond // 1000 * 1000)
    if isinstance(value, Decimal):
        return value.normalize()
    return value


def compare_cassandra(pg, session, table_name: str, since: datetime) -> tuple[dict, int]:
    """Per partition of the soak's symbols from the bucket after `since`'s: (count, digest) in
    Postgres `binance` and in Cassandra, rows in key order; returns the partitions that differ and
    the most rows one partition holds."""
    from include.partitions import buckets

    table = TABLES[table_name]
    now = datetime.now(UTC)
    first = table.bucket_of(since) + table.bucket_span
    order = ", ".join(table.cassandra_clustering)
    prefix_cols = table.cassandra_partition_key
    where = " AND ".join(f"{c} = ?" for c in table.cassandra_partition)
    stmt = session.prepare(f"SELECT {', '.join(table.column_names)} FROM {table_name} WHERE {where}")
    stmt.fetch_size = 5000
    with pg.cursor() as cur:
        cur.execute(f"SELECT DISTINCT {', '.join(prefix_cols)} FROM binance.{table_name} WHERE symbol = ANY(%s)",
                    (list(SYMBOLS),))
        prefixes = [tuple(r) for r in cur.fetchall()]
    pg.commit()
    differ, largest = {}, 0
    for prefix in prefixes:
        for bucket in buckets(table, first, now):
            cond = " AND ".join(f"{c} = %s" for c in prefix_cols)
            with pg.cursor(name="soak_compare") as cur:
                cur.itersize = 5000
                cur.execute(f"SELECT {', '.join(table.column_names)} FROM binance.{table_name} WHERE {cond} "
                            f"AND {table.time_column} >= %s AND {table.time_column} < %s ORDER BY {order}",
                            (*prefix, bucket, bucket + table.bucket_span))
                want = _digest(tuple(_norm(v) for v in r) for r in cur)
            pg.commit()
            got_rows = sorted((tuple(_norm(v) for v in r) for r in session.execute(stmt, (*prefix, bucket))),
                              key=lambda r: tuple(r[table.column_names.index(c)] for c in table.cassandra_clustering))
            got = _digest(got_rows)
            largest = max(largest, got[0])
            if want != got:
                differ[(*prefix, bucket)] = (want[0], got[0])
    return differ, largest


def compare_bridge(pg, table_name: str, since: datetime) -> int:
    """Rows that differ between Postgres `binance` and the bridge, for the soak's symbols after `since`."""
    table = TABLES[table_name]
    cols = ", ".join(table.column_names)
    cond = f"symbol = ANY(%s) AND {table.time_column} >= %s"
    with pg.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM ((SELECT {cols} FROM binance.{table_name} WHERE {cond} EXCEPT "
                    f"SELECT {cols} FROM cassandra.{table_name} WHERE {cond}) UNION ALL "
                    f"(SELECT {cols} FROM cassandra.{table_name} WHERE {cond} EXCEPT "
                    f"SELECT {cols} FROM binance.{table_name} WHERE {cond})) d",
                    (list(SYMBOLS), since) * 4)
        n = cur.fetchone()[0]
    pg.commit()
    return n


def _histograms(settings, keyspace: str, table: str) -> tuple[int, int]:
    """(largest partition in bytes, most cells in one partition) from nodetool tablehistograms."""
    out = ls.nodetool(settings, "tablehistograms", keyspace, table)
    for line in out.splitlines():
        if line.startswith("Max"):
            parts = line.split()
            return int(float(parts[-2])), int(float(parts[-1]))
    return 0, 0


def _most_tombstones(settings, keyspace: str, table: str) -> int:
    """Most tombstones one read met in the last five minutes (nodetool tablestats: the pipeline's
    Cassandra role may not read system_views)."""
    out = ls.nodetool(settings, "tablestats", f"{keyspace}.{table}")
    for line in out.splitlines():
        if "Maximum tombstones per slice" in line:
            return int(float(line.rsplit(":", 1)[1].strip() or 0))
    return 0


# --------------------------------------------------------------------------- the test


def _set_topic_retention(settings, ms: int | None) -> None:
    from confluent_kafka.admin import AdminClient, ConfigResource

    admin = AdminClient({"bootstrap.servers": settings["KAFKA_BOOTSTRAP_SERVERS"]})
    resources = []
    for table in TABLES:
        res = ConfigResource(ConfigResource.Type.TOPIC, topic_for(table))
        if ms is None:
            res.set_config("retention.ms", "604800000")
        else:
            res.set_config("retention.ms", str(ms))
        resources.append(res)
    for future in admin.alter_configs(resources).values():
        future.result()


def _start_stream(settings, checkpoint: Path) -> subprocess.Popen:
    from cdc_stream_operator import spark_jars, stream_args, stream_env

    env = dict(os.environ, **stream_env(settings["CASSANDRA_HOST"], settings["CASSANDRA_PORT"],
                                        settings["CASSANDRA_USERNAME"], settings["CASSANDRA_PASSWORD"]))
    argv = [str(REPO / ".cache" / "bin" / "spark-submit"), "--master", "local[2]", "--driver-memory", "1g",
            "--conf", "spark.ui.enabled=false", "--jars", spark_jars(), str(REPO / "spark" / "cdc_stream.py"),
            *stream_args(settings["KAFKA_BOOTSTRAP_SERVERS"], settings["CASSANDRA_KEYSPACE"], str(checkpoint)),
            "--starting-offsets", "latest"]
    log = open(checkpoint.parent / "stream.log", "ab")  # noqa: SIM115 - owned by the child
    return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_first_batch(session, keyspace: str, after: datetime, stream: subprocess.Popen,
                      timeout: float = 300) -> None:
    """Wait until a micro-batch finished after `after` (the stream's offsets are then fixed)."""
    deadline = time.monotonic() + timeout
    while True:
        row = checks.last_batch(session, keyspace)
        if row is not None and row.finished_at.replace(tzinfo=UTC) > after:
            return
        if stream.poll() is not None:
            raise AssertionError(f"the soak's stream exited with {stream.returncode} before its first batch "
                                 "(.run/soak/stream.log)")
        if time.monotonic() > deadline:
            raise AssertionError(f"the soak's stream finished no batch within {timeout:.0f}s (.run/soak/stream.log)")
        time.sleep(1)


def test_soak(settings, cdc_ready, cassandra):
    from confluent_kafka.admin import AdminClient

    keyspace = settings["CASSANDRA_KEYSPACE"]
    pg = pg_connect(settings)
    admin = AdminClient({"bootstrap.servers": settings["KAFKA_BOOTSTRAP_SERVERS"], "log_level": 2})
    policy = Retention.from_json(None)
    publish_cassandra_window(cassandra, keyspace, policy, pg)
    _set_topic_retention(settings, TOPIC_RETENTION_MS)
    checkpoint = REPO / ".run" / "soak" / "checkpoint"
    shutil.rmtree(checkpoint.parent, ignore_errors=True)
    checkpoint.parent.mkdir(parents=True)
    launched = datetime.now(UTC)
    stream = _start_stream(settings, checkpoint)
    # the stream starts at the topics' latest offsets: rows an earlier, interrupted soak left are
    # deleted only once it has finished a batch, so their deletes reach Cassandra through it
    try:
        _wait_first_batch(cassandra, keyspace, launched, stream)
    except BaseException:
        os.killpg(stream.pid, signal.SIGKILL)
        raise
    with pg.cursor() as cur:
        for table in TABLES:
            cur.execute(f"DELETE FROM binance.{table} WHERE symbol = ANY(%s)", (list(SYMBOLS),))
    pg.commit()

    started = time.monotonic()
    now = datetime.now(UTC)
    first_hour = (now - timedelta(days=DAYS)).replace(minute=0, second=0, microsecond=0)
    hours = int((now.replace(minute=0, second=0, microsecond=0) - first_hour) / timedelta(hours=1))
    seq = {"book": 0, "trade": 0}
    generated = dict.fromkeys(TABLES, 0)
    waited = 0.0
    try:
        for h in range(hours):
            hour = first_hour + timedelta(hours=h)
            batch: dict[str, list] = {t: [] for t in TABLES}
            for i, symbol in enumerate(SYMBOLS):
                for table, rows in hour_of_data(i, symbol, hour, seq).items():
                    batch[table] += rows
            for table, rows in batch.items():
                load(pg, table, rows)
                generated[table] += len(rows)
            waited += _wait_below(pg, admin, cassandra, keyspace, MAX_UNCONFIRMED_WAL, MAX_STREAM_LAG)
            if h % 6 == 5 or h == hours - 1:
                # what the retention DAG does every minute, at this compressed pace every six generated hours
                prune_postgres(pg, SOURCE_SCHEMA, "binance", policy)
                prune_postgres(pg, BRIDGE_SCHEMA, "bridge", policy)
                for table in TABLES:
                    sync_table(pg, cassandra, keyspace, table)
            if h % 24 == 23:
                print(f"soak: day {(h + 1) // 24} of {DAYS:g} generated ({sum(generated.values()):,} rows, "
                      f"{time.monotonic() - started:.0f}s, {waited:.0f}s waiting for the pipeline)", flush=True)
        # the end: retention once more, the pipeline drained, the bridge caught up
        prune_postgres(pg, SOURCE_SCHEMA, "binance", policy)
        with pg.cursor() as cur:
            cur.execute("SELECT pg_current_wal_lsn()::text")
            last_lsn = cur.fetchone()[0]
        pg.commit()
        drained = _wait_drained(pg, admin, cassandra, keyspace, last_lsn)
        for table in TABLES:
            sync_table(pg, cassandra, keyspace, table)
        prune_postgres(pg, BRIDGE_SCHEMA, "bridge", policy)
        duration = time.monotonic() - started

        # every read the pipeline and dashboards make, under Cassandra's default thresholds
        full = sync_table(pg, cassandra, keyspace, "recent_trades", full=True)
        from stack.status import stages

        for stage in stages(settings):
            assert stage.error is None, f"make status cannot read {stage.name}: {stage.error}"
        th = checks.Thresholds()
        lag, _ = checks.measure_stream_lag(admin, cassandra, keyspace, th)
        assert lag.ok, lag.message
        assert checks.stream_batches_since(cassandra, keyspace, None, th)
        freshness = checks.measure_freshness(pg, cassandra, keyspace, th)

        # exact, over what each store keeps (the bucket at the horizon left out: rows in it leave the
        # stores by the minute, at their own pace)
        report = []
        for table in TABLES:
            keep = policy.keep[table]["cassandra"]
            since = (now - keep) if keep else first_hour
            differ, largest_rows = compare_cassandra(pg, cassandra, table, since)
            assert not differ, f"Cassandra {table} differs from Postgres in {len(differ)} partition(s): " \
                               f"{dict(list(differ.items())[:5])}"
            assert compare_bridge(pg, table, since + TABLES[table].bucket_span) == 0, f"bridge {table} differs"
            ls.nodetool(settings, "flush", keyspace, table)
            size, cells = _histograms(settings, keyspace, table)
            tombstones = _most_tombstones(settings, keyspace, table)
            assert largest_rows <= MAX_PARTITION_ROWS and size <= MAX_PARTITION_BYTES, (table, largest_rows, size)
            assert tombstones < TOMBSTONE_FAILURE_THRESHOLD, (table, tombstones)
            with pg.cursor() as cur:
                cur.execute(f"SELECT count(*) FROM binance.{table} WHERE symbol = ANY(%s)", (list(SYMBOLS),))
                kept = cur.fetchone()[0]
            pg.commit()
            report.append(f"  {table:<14} generated {generated[table]:>12,}  kept {kept:>10,}  largest partition "
                          f"{largest_rows:>7,} rows, {size / 1024 / 1024:6.2f} MB ({cells:,} cells)  most tombstones "
                          f"in one read {tombstones:,}")
        print(f"\nsoak: {DAYS:g} days x {len(SYMBOLS)} symbols of default operation, "
              f"{sum(generated.values()):,} rows through the pipeline in {duration:.0f}s "
              f"({sum(generated.values()) / duration:,.0f} rows/s; {waited:.0f}s of it waiting for the pipeline, "
              f"{drained:.0f}s draining at the end); exact in Cassandra and the bridge; bridge full copy of "
              f"recent_trades {full.upserted + full.deleted} rows changed; freshness: {freshness.message[:120]}")
        print("\n".join(report))
    finally:
        os.killpg(stream.pid, signal.SIGTERM)
        try:
            stream.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(stream.pid, signal.SIGKILL)
        _set_topic_retention(settings, None)
        with pg.cursor() as cur:
            for table in TABLES:
                cur.execute(f"DELETE FROM binance.{table} WHERE symbol = ANY(%s)", (list(SYMBOLS),))
        pg.commit()
        pg.close()
