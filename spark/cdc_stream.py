"""Apply the Debezium change events of schema `binance` to Cassandra, exactly.

Usage:
  spark-submit --jars <spark-sql-kafka and Cassandra connector jars> spark/cdc_stream.py \\
      --bootstrap-servers 127.0.0.1:9092 --keyspace binance_test \\
      --checkpoint .run/spark/checkpoints/cdc_stream [--available-now] [--trigger-seconds 1]

Cassandra contact points and credentials come from the environment (CDC_CASSANDRA_HOSTS,
CDC_CASSANDRA_PORT, CDC_CASSANDRA_USERNAME, CDC_CASSANDRA_PASSWORD), never from the command line,
which other users of the machine can read.

One streaming query reads every `binance.binance.*` topic; each micro-batch is routed per table:
snapshot reads, inserts and updates upsert `after`, deletes remove the key from `before`,
tombstones are skipped, several events on one key collapse to the last in source order. Every
Cassandra write carries the event's source LSN as its write timestamp, so replays after a restart
can never make a row older than it is (last write wins by source order). Messages that cannot be
applied go to `dead_letters`; the stream carries on. `--available-now` processes what is in Kafka
and exits (catch-up runs, tests); otherwise the query runs until it fails, and fails loudly.

Two ways to write a micro-batch, with the same result: a batch of at most `--driver-max-events`
events is collected in one Spark job and applied from the driver through the Cassandra driver
(spark/driver_sink.py; low latency at ordinary rates), a bigger one by Spark jobs per table
through the Spark Cassandra Connector (throughput when catching up).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from include.tables import Table
from spark import driver_sink
from spark.envelope import (
    TOPIC_PREFIX,
    batch_summary,
    key_json,
    known_tables,
    parse_envelope,
    rank_events,
    sink_rows,
)

log = logging.getLogger("cdc_stream")
CASSANDRA_FORMAT = "org.apache.spark.sql.cassandra"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bootstrap-servers", required=True)
    p.add_argument("--keyspace", required=True)
    p.add_argument("--checkpoint", required=True, help="durable checkpoint folder (HDFS/S3/local path)")
    p.add_argument("--topic-pattern", default=TOPIC_PREFIX.replace(".", r"\.") + ".*")
    p.add_argument("--available-now", action="store_true", help="process what is there, then exit")
    p.add_argument("--trigger-seconds", type=float, default=0.5)
    p.add_argument("--max-offsets-per-trigger", type=int, default=20000)
    p.add_argument("--driver-max-events", type=int, default=int(os.environ.get("CDC_DRIVER_MAX_EVENTS", "20000")),
                   help="batches up to this many events are applied from the driver (0: always through Spark "
                        "jobs); default from CDC_DRIVER_MAX_EVENTS, else 20000")
    p.add_argument("--starting-offsets", default="earliest")
    p.add_argument("--query-name", default="binance_cdc_to_cassandra")
    return p.parse_args(argv)


def cassandra_settings() -> dict[str, str]:
    env = os.environ
    missing = [k for k in ("CDC_CASSANDRA_HOSTS", "CDC_CASSANDRA_USERNAME", "CDC_CASSANDRA_PASSWORD") if not env.get(k)]
    if missing:
        raise SystemExit(f"cdc_stream: environment variable(s) {', '.join(missing)} not set")
    return {
        "spark.cassandra.connection.host": env["CDC_CASSANDRA_HOSTS"],
        "spark.cassandra.connection.port": env.get("CDC_CASSANDRA_PORT", "9042"),
        "spark.cassandra.auth.username": env["CDC_CASSANDRA_USERNAME"],
        "spark.cassandra.auth.password": env["CDC_CASSANDRA_PASSWORD"],
    }


class Sink:
    """Writes one micro-batch: upserts through the Spark Cassandra Connector (JVM, batched),
    deletes, the change log and dead letters through the Python driver on the driver node."""

    def __init__(self, spark: SparkSession, keyspace: str, settings: dict[str, str], query_name: str,
                 driver_max_events: int = 0) -> None:
        from cassandra.auth import PlainTextAuthProvider
        from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
        from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy

        self.spark = spark
        self.keyspace = keyspace
        self.query_name = query_name
        self.driver_max_events = driver_max_events
        self.tables = known_tables()
        self.cluster = Cluster(
            settings["spark.cassandra.connection.host"].split(","),
            port=int(settings["spark.cassandra.connection.port"]),
            auth_provider=PlainTextAuthProvider(settings["spark.cassandra.auth.username"],
                                                settings["spark.cassandra.auth.password"]),
            protocol_version=5,
            execution_profiles={EXEC_PROFILE_DEFAULT: ExecutionProfile(
                load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy()), request_timeout=30)},
        )
        self.session = self.cluster.connect()
        self._prepared: dict[str, Any] = {}

    def close(self) -> None:
        self.cluster.shutdown()

    def _prepare(self, cql: str) -> Any:
        if cql not in self._prepared:
            self._prepared[cql] = self.session.prepare(cql)
        return self._prepared[cql]

    def write_batch(self, batch: DataFrame, batch_id: int) -> None:
        started = time.monotonic()
        if self.driver_max_events > 0:
            # one job reads the batch (every Kafka partition at once: spark.sql.limit.initialNumPartitions)
            records = batch.limit(self.driver_max_events + 1).collect()
            if len(records) <= self.driver_max_events:
                parts = self._apply_on_driver(records, batch_id)
                self._record_progress(batch_id, parts, time.monotonic() - started)
                return
        batch = batch.persist()
        try:
            # one small job: which topics are in the batch, and what to report as progress
            parts = batch_summary(batch).collect()
            for topic in sorted({p.topic for p in parts}):
                table = self.tables.get(topic)
                if table is None:
                    # the heartbeat table and anything else in the schema that the sink does not keep
                    continue
                self._apply_table(batch.where(F.col("topic") == topic), table, topic, batch_id)
        finally:
            batch.unpersist()
        self._record_progress(batch_id, parts, time.monotonic() - started)

    def _apply_on_driver(self, records: list[Any], batch_id: int) -> list[driver_sink.PartitionSummary]:
        """The batch's events applied with the Cassandra driver: per table collapsed to the last
        event per key, dead letters first, then upserts and deletes (LSN as write time), then the
        change log, so a logged key is always already applied."""
        from cassandra.concurrent import execute_concurrent

        t0 = time.monotonic()
        now = datetime.now(UTC)
        now = now.replace(microsecond=now.microsecond // 1000 * 1000)
        bucket = now.replace(second=0, microsecond=0)
        by_topic: dict[str, list[Any]] = {}
        for r in records:
            by_topic.setdefault(r.topic, []).append(r)
        # (Cassandra partition, statement, values): written as single-partition unlogged batches
        writes: list[tuple[tuple, Any, tuple]] = []
        logged: list[tuple] = []
        counts = []
        for topic, rows in sorted(by_topic.items()):
            table = self.tables.get(topic)
            if table is None:
                continue
            events = [e for r in rows if (e := driver_sink.parse_event(table, r.partition, r.offset, r.value))]
            winners, bad = driver_sink.collapse(table, events)
            if bad:
                self._dead_letters(topic, bad)
            upsert, delete = self._driver_statements(table)
            n_deletes = 0
            for w in winners:
                partition = (table.name, *[w.row[k] for k in table.cassandra_partition_key])
                if w.cdc_op == "d":
                    n_deletes += 1
                    writes.append((partition, delete, (w.cdc_lsn, *[w.row[k] for k in table.cassandra_key])))
                else:
                    writes.append((partition, upsert, (*[w.row[c] for c in table.column_names], w.cdc_op,
                                                       w.cdc_source_ts, w.cdc_lsn, now, w.cdc_lsn)))
                logged.append((table.name, bucket, driver_sink.key_json(table, w), w.cdc_lsn))
            dead = f" {len(bad)} dead" if bad else ""
            counts.append(f"{table.name} {len(winners) - n_deletes}+{n_deletes}d{dead}")
        t1 = time.monotonic()
        _raise_failures(execute_concurrent(self.session, _partition_batches(writes), concurrency=32,
                                           raise_on_first_error=False), "upsert/delete", "the sink tables")
        t2 = time.monotonic()
        log_stmt = self._prepare(f'INSERT INTO "{self.keyspace}".changed_rows (table_name, bucket, key, cdc_lsn) '
                                 "VALUES (?, ?, ?, ?)")
        changes = [((args[0], args[1]), log_stmt, args) for args in logged]
        _raise_failures(execute_concurrent(self.session, _partition_batches(changes), concurrency=32,
                                           raise_on_first_error=False), "change log", "changed_rows")
        t3 = time.monotonic()
        log.info("batch %d on the driver: %d records; %s (parse+collapse %.3fs, writes %.3fs, change log %.3fs)",
                 batch_id, len(records), ", ".join(counts) or "nothing to apply", t1 - t0, t2 - t1, t3 - t2)
        return driver_sink.summarize(records)

    def _driver_statements(self, table: Table) -> tuple[Any, Any]:
        ks, name = self.keyspace, table.name
        columns = [*table.column_names, "cdc_op", "cdc_source_ts", "cdc_lsn", "cdc_written_at"]
        quoted = ", ".join(f'"{c}"' for c in columns)
        marks = ", ".join("?" * len(columns))
        upsert = self._prepare(f'INSERT INTO "{ks}"."{name}" ({quoted}) VALUES ({marks}) USING TIMESTAMP ?')
        where = " AND ".join(f'"{k}" = ?' for k in table.cassandra_key)
        delete = self._prepare(f'DELETE FROM "{ks}"."{name}" USING TIMESTAMP ? WHERE {where}')
        return upsert, delete

    def _record_progress(self, batch_id: int, parts: list[Any], seconds: float) -> None:
        """After the batch is applied: one stream_progress row, and per topic partition the next
        offset to read (pipeline_health's lag check) with the newest source commit applied."""
        now = datetime.now(UTC)
        newest_ms = max((p.newest_source_ms for p in parts if p.topic in self.tables and p.newest_source_ms),
                        default=None)
        newest = datetime.fromtimestamp(newest_ms / 1000, UTC) if newest_ms else None
        rows = sum(p.events for p in parts)
        ks = self.keyspace
        progress = self._prepare(
            f'INSERT INTO "{ks}".stream_progress (query_name, finished_at, batch_id, input_rows, processing_ms, '
            "newest_source_ts, driver_host, driver_pid) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
        futures = [self.session.execute_async(progress, (
            self.query_name, now, batch_id, rows, int(seconds * 1000), newest, socket.gethostname(), os.getpid()))]
        # the offset is the write time: a replayed or slower stream can never move it backwards
        with_ts = self._prepare(
            f'INSERT INTO "{ks}".stream_offsets (query_name, topic, partition, next_offset, newest_source_ts, '
            "updated_at) VALUES (?, ?, ?, ?, ?, ?) USING TIMESTAMP ?")
        without_ts = self._prepare(
            f'INSERT INTO "{ks}".stream_offsets (query_name, topic, partition, next_offset, updated_at) '
            "VALUES (?, ?, ?, ?, ?) USING TIMESTAMP ?")
        for p in parts:
            if p.newest_source_ms and p.topic in self.tables:
                args = (self.query_name, p.topic, p.partition, p.next_offset,
                        datetime.fromtimestamp(p.newest_source_ms / 1000, UTC), now, p.next_offset)
                futures.append(self.session.execute_async(with_ts, args))
            else:
                futures.append(self.session.execute_async(
                    without_ts, (self.query_name, p.topic, p.partition, p.next_offset, now, p.next_offset)))
        for f in futures:
            f.result()
        lag_ms = (now - newest).total_seconds() * 1000 if newest else None
        log.info("batch %d done: %d events from %d partition(s) in %.2fs; newest source commit %s%s", batch_id,
                 rows, len(parts), seconds, newest.isoformat() if newest else "-",
                 f" ({lag_ms:.0f} ms ago)" if lag_ms is not None else "")

    def _apply_table(self, rows: DataFrame, table: Table, topic: str, batch_id: int) -> None:
        """All of one table's events in this batch in three Spark jobs on cached data; the Python
        driver only handles dead letters and deletes (both rare)."""
        t0 = time.monotonic()
        ranked = rank_events(parse_envelope(rows, table), table).persist()
        try:
            # 1: what the driver must handle itself
            rare = ranked.where(F.col("error").isNotNull() | ((F.col("_rank") == 1) & (F.col("cdc_op") == "d")))
            rare = rare.select("error", "kafka_partition", "kafka_offset", "raw_value", "cdc_lsn",
                               *[F.col(k).alias(f"_k_{k}") for k in table.cassandra_key]).collect()
            t1 = time.monotonic()
            bad = [r for r in rare if r.error is not None]
            if bad:
                self._dead_letters(topic, bad)
            winners = ranked.where(F.col("error").isNull() & (F.col("_rank") == 1))
            # 2: upserts, LSN as write time
            self._save(sink_rows(winners, table), table.name, writetime="cdc_writetime")
            t2 = time.monotonic()
            deletes = [r for r in rare if r.error is None]
            if deletes:
                self._delete(table, deletes)
            # 3: the bridge's change log, written last: a logged key is always already applied
            self._save(winners.select(
                F.lit(table.name).alias("table_name"),
                F.date_trunc("minute", F.current_timestamp()).alias("bucket"),
                key_json(table).alias("key"), "cdc_lsn"), "changed_rows")
        finally:
            ranked.unpersist()
        t3 = time.monotonic()
        log.info("batch %d %s: %d deletes, %d dead-lettered (parse+rank %.2fs, upserts %.2fs, deletes+log %.2fs)",
                 batch_id, table.name, len(deletes), len(bad), t1 - t0, t2 - t1, t3 - t2)

    def _save(self, df: DataFrame, table: str, **options: str) -> None:
        (df.write.format(CASSANDRA_FORMAT).options(keyspace=self.keyspace, table=table, **options)
         .mode("append").save())

    def _delete(self, table: Table, rows: list[Any]) -> None:
        from cassandra.concurrent import execute_concurrent_with_args

        where = " AND ".join(f'"{k}" = ?' for k in table.cassandra_key)
        stmt = self._prepare(f'DELETE FROM "{self.keyspace}"."{table.name}" USING TIMESTAMP ? WHERE {where}')
        args = [(r.cdc_lsn, *[_cql_value(table, k, r[f"_k_{k}"]) for k in table.cassandra_key]) for r in rows]
        _raise_failures(execute_concurrent_with_args(self.session, stmt, args, concurrency=64,
                                                     raise_on_first_error=False), "delete", table.name)

    def _dead_letters(self, topic: str, rows: list[Any]) -> None:
        stmt = self._prepare(f'INSERT INTO "{self.keyspace}".dead_letters (topic, partition, offset, raw_value, error, '
                             "recorded_at) "
                             "VALUES (?, ?, ?, ?, ?, ?)")
        now = datetime.now(UTC)
        for r in rows:
            self.session.execute(stmt, (topic, r.kafka_partition, r.kafka_offset, r.raw_value, r.error, now))
            log.warning("dead letter %s[%d]@%d: %s", topic, r.kafka_partition, r.kafka_offset, r.error)


def _cql_value(table: Table, name: str, value: Any) -> Any:
    kind = table.column(name).type
    if value is None:
        return None
    if kind == "numeric":
        return Decimal(value)
    if kind == "timestamptz" and isinstance(value, datetime):
        # Spark hands back naive local datetimes; the session and the driver run in UTC
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value
    return value


def _partition_batches(writes: list[tuple[tuple, Any, tuple]], size: int = 100) -> list[tuple[Any, None]]:
    """Statements grouped by Cassandra partition into unlogged batches of up to `size`: one request
    per batch, applied atomically within its partition; each statement keeps its own write time."""
    from cassandra.query import BatchStatement, BatchType

    by_partition: dict[tuple, list[tuple[Any, tuple]]] = {}
    for partition, stmt, values in writes:
        by_partition.setdefault(partition, []).append((stmt, values))
    out: list[tuple[Any, None]] = []
    for statements in by_partition.values():
        for start in range(0, len(statements), size):
            batch = BatchStatement(batch_type=BatchType.UNLOGGED)
            for stmt, values in statements[start:start + size]:
                batch.add(stmt, values)
            out.append((batch, None))
    return out


def _raise_failures(results: Any, what: str, table: str) -> None:
    failed = [r.result_or_exc for r in results if not r.success]
    if failed:
        raise RuntimeError(f"{len(failed)} {what} write(s) to {table} failed; first: {failed[0]!r}")


def build_stream(spark: SparkSession, args: argparse.Namespace, sink: Sink) -> Any:
    source = (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", args.bootstrap_servers)
        .option("subscribePattern", args.topic_pattern)
        .option("startingOffsets", args.starting_offsets)
        .option("maxOffsetsPerTrigger", str(args.max_offsets_per_trigger))
        # Kafka retention deleting events the stream has not applied yet is an outage, not noise
        .option("failOnDataLoss", "true")
        .load()
        .select("topic", "partition", "offset", F.col("value").cast("string").alias("value"))
    )
    writer = (
        source.writeStream.queryName(args.query_name)
        .option("checkpointLocation", args.checkpoint)
        .foreachBatch(sink.write_batch)
    )
    if args.available_now:
        writer = writer.trigger(availableNow=True)
    else:
        writer = writer.trigger(processingTime=f"{args.trigger_seconds} seconds")
    return writer.start()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    settings = cassandra_settings()
    builder = SparkSession.builder.appName("binance-cdc-stream").config("spark.sql.session.timeZone", "UTC")
    builder = builder.config("spark.sql.extensions", "com.datastax.spark.connector.CassandraSparkExtensions")
    # batches are small and frequent: one shuffle partition avoids a task per empty partition
    builder = builder.config("spark.sql.shuffle.partitions", os.environ.get("CDC_SHUFFLE_PARTITIONS", "1"))
    builder = builder.config("spark.ui.enabled", "false")
    # the driver path's collect(limit) reads every Kafka partition of the batch in one job
    builder = builder.config("spark.sql.limit.initialNumPartitions", "1024")
    for key, value in settings.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    sink = Sink(spark, args.keyspace, settings, args.query_name, args.driver_max_events)
    try:
        query = build_stream(spark, args, sink)
        log.info("stream %s started (%s), checkpoint %s", args.query_name,
                 "availableNow" if args.available_now else f"every {args.trigger_seconds}s", args.checkpoint)
        # any query dying ends the job with its error, so the supervisor (Airflow) restarts it
        spark.streams.awaitAnyTermination()
        if query.exception() is not None:
            raise query.exception()
        log.info("stream %s finished: %s", args.query_name, json.dumps(query.lastProgress or {})[:500])
    finally:
        sink.close()
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
