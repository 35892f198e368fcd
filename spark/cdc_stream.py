"""Apply the Debezium change events of schema `binance` to Cassandra, exactly.

Usage:
  spark-submit --jars <spark-sql-kafka jars> spark/cdc_stream.py \\
      --bootstrap-servers 127.0.0.1:9092 --keyspace binance_test \\
      --checkpoint .run/spark/checkpoints/cdc_stream [--available-now] [--trigger-seconds 1]

Cassandra contact points, credentials and TLS files come from the environment (CDC_CASSANDRA_HOSTS,
CDC_CASSANDRA_PORT, CDC_CASSANDRA_USERNAME, CDC_CASSANDRA_PASSWORD, CDC_CASSANDRA_SSL_CA_CERTS,
CDC_CASSANDRA_SSL_CERTFILE, CDC_CASSANDRA_SSL_KEYFILE, CDC_CASSANDRA_SSL_CHECK_HOSTNAME), and the
Kafka client's security settings from CDC_KAFKA_CLIENT_CONFIG (the `kafka_default` connection's
librdkafka extra as JSON, translated by include.connections.kafka_java_config), never from the
command line, which other users of the machine can read. Spark's executors write to Cassandra too:
the job hands them the CDC_CASSANDRA_* variables it was given (`spark.executorEnv.<NAME>`, set
in-process, over any set in the Spark conf); the files those name, and this repository (on
PYTHONPATH, or shipped with --py-files) must be at the same paths on every host. The process time
zone does not matter: times reach Python as epoch microseconds.

One streaming query reads every `binance.binance.*` topic; each micro-batch is routed per table:
snapshot reads, inserts and updates upsert `after`, deletes remove the key from `before`,
tombstones are skipped, several events on one key collapse to the last in source order (LSN, then
Kafka position). Rows are keyed in Cassandra by a time bucket of their time column too. Every
Cassandra write carries the change's source commit time as its write timestamp (an initial
snapshot's rows 10 s below it, an incremental snapshot's rows at their window's time;
include.cdc.events.write_time), so replays after a restart can never make a row older than it is.
The signal table's topic is not applied: its events (snapshot signals, window markers) are
recorded in `snapshot_windows` first, and give each incremental snapshot read its window's time.
Rows are written with a TTL that ends when the table's retention (`sink_retention`) has passed
their time; changes to rows already past it are not written.
Messages that cannot be applied go to `dead_letters`; the stream carries on. `--available-now`
processes what is in Kafka and exits (catch-up runs, tests); otherwise the query runs until it
fails, and fails loudly.

Every key written is logged in `changed_rows` under a minute the driver picks when the batch starts
(never earlier than the last finished batch's, `stream_position`); after the batch the driver
records `stream_offsets`, `stream_progress` and then `stream_position`.

Two ways to apply a micro-batch, with the same result, both writing through spark/writer.py: a
batch of at most `--driver-max-events` events is collected in one Spark job and decided on the
driver in plain Python (spark/python_events.py; low latency at ordinary rates), a bigger one is
decided by Spark transforms (spark/envelope.py) and written by Spark tasks, one Spark job per
table (throughput when catching up).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from functools import partial
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from include.cdc.events import DELETE, signal_marker
from include.connections import CassandraSettings, ConnectionSettingsError, kafka_java_config_from_env
from include.names import CDC_TOPIC_PREFIX, SIGNAL_TABLE, STREAM_QUERY_NAME, topic_for
from include.tables import Table
from include.times import from_epoch_ms
from spark import python_events
from spark.envelope import (
    batch_summary,
    check_topics,
    collapse_last,
    drop_unplaced_reads,
    incremental_read_lsns,
    known_tables,
    parse_envelope,
)
from spark.writer import BatchContext, CassandraWriter, Offset, cassandra_unreachable, write_partition

log = logging.getLogger("cdc_stream")

# Debezium's signal table's topic: nothing of it is applied, its events only place incremental
# snapshot windows in time (include.cdc.events.write_time)
SIGNAL_TOPIC = topic_for(SIGNAL_TABLE)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bootstrap-servers", required=True)
    p.add_argument("--keyspace", required=True)
    p.add_argument("--checkpoint", required=True, help="durable checkpoint folder (HDFS/S3/local path)")
    p.add_argument("--topic-pattern", default=CDC_TOPIC_PREFIX.replace(".", r"\.") + ".*")
    p.add_argument("--available-now", action="store_true", help="process what is there, then exit")
    p.add_argument("--trigger-seconds", type=float, default=0.5)
    p.add_argument("--max-offsets-per-trigger", type=int, default=20000)
    p.add_argument("--driver-max-events", type=int, default=int(os.environ.get("CDC_DRIVER_MAX_EVENTS", "20000")),
                   help="batches up to this many events are applied from the driver (0: always by Spark "
                        "tasks); default from CDC_DRIVER_MAX_EVENTS, else 20000")
    p.add_argument("--starting-offsets", default="earliest")
    p.add_argument("--cassandra-outage-seconds", type=float,
                   default=float(os.environ.get("CDC_CASSANDRA_OUTAGE_SECONDS", "300")),
                   help="how long a batch is applied again while Cassandra cannot be reached before the stream "
                        "fails; default from CDC_CASSANDRA_OUTAGE_SECONDS, else 300")
    p.add_argument("--query-name", default=STREAM_QUERY_NAME)
    return p.parse_args(argv)


class MicroBatches:
    """foreachBatch: applies each micro-batch on the driver or through Spark tasks, then records the
    stream's progress. Every Cassandra write goes through a CassandraWriter.

    The change-log minute of a batch is chosen here, once, when the batch starts: the minute of the
    driver's clock, but never earlier than the last finished batch's (read from `stream_position`
    once, then kept), so the bridge, which reads the log up to stream_position's minute, never
    misses a key even if the driver's clock steps back or the stream moves to another host."""

    def __init__(self, writer: CassandraWriter, query_name: str, driver_max_events: int = 0,
                 task_writer: Callable[[str], CassandraWriter] = CassandraWriter.open,
                 outage_seconds: float = 300.0, sleep: Callable[[float], None] = time.sleep) -> None:
        self.writer = writer
        # how long a batch is applied again while Cassandra cannot be reached, before the stream fails
        self.outage_seconds = outage_seconds
        self.sleep = sleep
        # how each Spark task opens its writer, from the keyspace (from the environment by default)
        self.task_writer = task_writer
        self.query_name = query_name
        self.driver_max_events = driver_max_events
        self.tables = known_tables()
        self.last_changelog_bucket: datetime | None = writer.last_changelog_bucket(query_name)

    def start_batch(self) -> BatchContext:
        """What every writer of the batch shares: its change-log minute and each table's retention."""
        minute = self.writer.now().replace(second=0, microsecond=0)
        if self.last_changelog_bucket is not None:
            minute = max(minute, self.last_changelog_bucket.replace(second=0, microsecond=0))
        return BatchContext(minute, self.writer.retention())

    def write_batch(self, batch: DataFrame, batch_id: int) -> None:
        """Apply a micro-batch. One that fails because Cassandra cannot be reached (a node or the
        cluster restarting) is applied again, every write being idempotent, for up to
        outage_seconds: the stream rides out the outage instead of ending and waiting for Airflow
        to start it again. Any other failure ends the stream at once."""
        first_failure = None
        attempt = 0
        while True:
            try:
                self._write_batch(batch, batch_id)
                return
            except Exception as exc:
                now = time.monotonic()
                first_failure = first_failure or now
                if not cassandra_unreachable(exc) or now - first_failure >= self.outage_seconds:
                    raise
                attempt += 1
                wait = min(0.5 * 2 ** (attempt - 1), 5.0)
                log.warning("batch %d: Cassandra unreachable (%s: %s); applying it again in %.1fs (attempt %d, "
                            "%.0fs of %.0fs)", batch_id, type(exc).__name__, str(exc).splitlines()[0][:200], wait,
                            attempt + 1, now - first_failure, self.outage_seconds)
                self.sleep(wait)

    def _write_batch(self, batch: DataFrame, batch_id: int) -> None:
        started = time.monotonic()
        context = self.start_batch()
        if self.driver_max_events > 0:
            # one job reads the batch (every Kafka partition at once: spark.sql.limit.initialNumPartitions)
            records = batch.limit(self.driver_max_events + 1).collect()
            if len(records) <= self.driver_max_events:
                check_topics({r.topic for r in records}, self.tables)
                self.record_windows([r.value for r in records if r.topic == SIGNAL_TOPIC])
                self._apply_on_driver(records, batch_id, context)
                self._record_progress(batch_id, python_events.summarize(records), time.monotonic() - started,
                                      context)
                return
        batch = batch.persist()
        try:
            # one small job: which topics are in the batch, and what to report as progress
            parts = batch_summary(batch).collect()
            topics = {p.topic for p in parts}
            check_topics(topics, self.tables)
            if SIGNAL_TOPIC in topics:
                self.record_windows([r.value for r in batch.where(F.col("topic") == SIGNAL_TOPIC).collect()])
            if topics & set(self.tables):
                # another small job: the LSNs of the batch's incremental snapshot reads, placed in time
                lsns = [r.lsn for r in incremental_read_lsns(batch).collect()]
                context = replace(context, windows=self.writer.window_times(SIGNAL_TOPIC, lsns) if lsns else {})
                if len(context.windows) < len(lsns):
                    log.warning("batch %d: %d incremental snapshot window(s) not placed in time (no signal-table "
                                "event at or below their LSN yet): their reads are not applied",
                                batch_id, len(lsns) - len(context.windows))
            for topic in sorted(topics):
                table = self.tables.get(topic)
                if table is None:
                    # the heartbeat and signal tables (check_topics refused tables the sink should keep)
                    continue
                self._apply_on_executors(batch.where(F.col("topic") == topic), table, topic, batch_id, context)
        finally:
            batch.unpersist()
        self._record_progress(batch_id, parts, time.monotonic() - started, context)

    def record_windows(self, values: Sequence[str | None]) -> None:
        """The signal table's events of the batch (LSN and commit time each) into snapshot_windows,
        before anything of the batch is applied."""
        markers = [m for v in values if (m := signal_marker(v)) is not None]
        if markers:
            self.writer.record_windows(SIGNAL_TOPIC, markers)
            log.info("recorded %d signal-table event(s) for incremental snapshot windows", len(markers))

    def _apply_on_driver(self, records: list[Any], batch_id: int, context: BatchContext) -> None:
        """The batch decided in plain Python, per table collapsed to the last event per key, and
        written by the driver's writer in one go."""
        t0 = time.monotonic()
        by_topic: dict[str, list[Any]] = {}
        for r in records:
            by_topic.setdefault(r.topic, []).append(r)
        parsed = {}
        for topic, rows in sorted(by_topic.items()):
            table = self.tables.get(topic)
            if table is not None:
                parsed[topic] = [e for r in rows if (e := python_events.parse_event(table, r.partition, r.offset,
                                                                                     r.value))]
        lsns = {e.cdc_lsn for events in parsed.values() for e in events if e.incremental_read}
        if lsns:
            context = replace(context, windows=self.writer.window_times(SIGNAL_TOPIC, lsns))
        changes, dead, counts = [], [], []
        for topic, events in parsed.items():
            table = self.tables[topic]
            events, unplaced = python_events.drop_unplaced_reads(events, context.windows)
            winners, bad = python_events.collapse(table, events)
            dead += [e.dead_letter(topic) for e in bad]
            changes += [e.change(table, context.windows) for e in winners]
            n_deletes = sum(1 for w in winners if w.cdc_op == DELETE)
            dead_count = f" {len(bad)} dead" if bad else ""
            unplaced_count = f" {unplaced} incremental read(s) not placed in time, not applied" if unplaced else ""
            counts.append(f"{table.name} {len(winners) - n_deletes}+{n_deletes}d{dead_count}{unplaced_count}")
        t1 = time.monotonic()
        written = self.writer.write(context, changes, dead)
        log.info("batch %d on the driver: %d records; %s; %d skipped outside retention (parse+collapse %.3fs, "
                 "writes+change log %.3fs)", batch_id, len(records), ", ".join(counts) or "nothing to apply",
                 written.skipped, t1 - t0, time.monotonic() - t1)

    def _apply_on_executors(self, rows: DataFrame, table: Table, topic: str, batch_id: int,
                            context: BatchContext) -> None:
        """One table's events in one Spark job: parsed and ranked by Spark, each task writing its
        partition's dead letters, rows and change log through a writer of its own, with the batch's
        context (change-log minute, retention, incremental snapshot windows) from the driver."""
        t0 = time.monotonic()
        sc = rows.sparkSession.sparkContext
        counters = (sc.accumulator(0), sc.accumulator(0), sc.accumulator(0), sc.accumulator(0))
        applied = collapse_last(drop_unplaced_reads(parse_envelope(rows, table), context.windows), table)
        applied.foreachPartition(partial(write_partition, self.writer.keyspace, table.name, topic, counters,
                                         context, open_writer=self.task_writer))
        upserts, deletes, dead, skipped = (c.value for c in counters)
        log.info("batch %d %s by Spark tasks: %d upserts, %d deletes, %d dead-lettered, %d skipped outside "
                 "retention (parse+rank+write %.2fs)", batch_id, table.name, upserts, deletes, dead, skipped,
                 time.monotonic() - t0)

    def _record_progress(self, batch_id: int, parts: list[Any], seconds: float, context: BatchContext) -> None:
        """After the batch is applied: per topic partition the next offset to read with the newest
        source commit applied (for tables the sink keeps), a stream_progress row, then the query's
        stream_position; the batch's change-log minute is the floor of the next batch's."""
        now = self.writer.now()
        offsets = [Offset(p.topic, p.partition, p.next_offset,
                          from_epoch_ms(p.newest_source_ms) if p.newest_source_ms and p.topic in self.tables else None)
                   for p in parts]
        newest = max((o.newest_source_ts for o in offsets if o.newest_source_ts), default=None)
        rows = sum(p.events for p in parts)
        self.writer.record_progress(self.query_name, batch_id, rows, int(seconds * 1000), newest, offsets,
                                    context.changelog_bucket, socket.gethostname(), os.getpid(), now)
        self.last_changelog_bucket = context.changelog_bucket
        lag_ms = (now - newest).total_seconds() * 1000 if newest else None
        log.info("batch %d done: %d events from %d partition(s) in %.2fs; newest source commit %s%s", batch_id,
                 rows, len(parts), seconds, newest.isoformat() if newest else "-",
                 f" ({lag_ms:.0f} ms ago)" if lag_ms is not None else "")


def kafka_source_options(args: argparse.Namespace, security: Mapping[str, str]) -> dict[str, str]:
    """The Kafka source's options: what to read and how fast, and the client's `security` options
    (kafka_java_config: protocol, SASL login, truststore)."""
    return {
        "kafka.bootstrap.servers": args.bootstrap_servers,
        "subscribePattern": args.topic_pattern,
        "startingOffsets": args.starting_offsets,
        "maxOffsetsPerTrigger": str(args.max_offsets_per_trigger),
        # Kafka retention deleting events the stream has not applied yet is an outage, not noise
        "failOnDataLoss": "true",
        **security,
    }


# besides the Cassandra settings: where the executors' Python workers import this job's modules
# from (spark.writer, include) and their time zone
EXECUTOR_ENV = ("PYTHONPATH", "TZ")


def executor_env(env: Mapping[str, str]) -> dict[str, str]:
    """The Spark conf that hands the executors the Cassandra settings, PYTHONPATH and TZ the driver
    was given: on a cluster they do not inherit its environment. Set in-process, never on a command
    line; Spark's UI and event log redact the password's entry (spark.redaction.regex matches its name)."""
    names = (*CassandraSettings.env_names(), *EXECUTOR_ENV)
    return {f"spark.executorEnv.{name}": env[name] for name in names if env.get(name)}


def build_stream(spark: SparkSession, args: argparse.Namespace, batches: MicroBatches,
                 kafka_security: Mapping[str, str] | None = None) -> Any:
    source = (
        spark.readStream.format("kafka")
        .options(**kafka_source_options(args, kafka_security or {}))
        .load()
        .select("topic", "partition", "offset", F.col("value").cast("string").alias("value"))
    )
    writer = (
        source.writeStream.queryName(args.query_name)
        .option("checkpointLocation", args.checkpoint)
        .foreachBatch(batches.write_batch)
    )
    if args.available_now:
        writer = writer.trigger(availableNow=True)
    else:
        writer = writer.trigger(processingTime=f"{args.trigger_seconds} seconds")
    return writer.start()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        # checked before Spark starts: the executors' writers read the same variables
        CassandraSettings.from_env(args.keyspace)
        kafka_security = kafka_java_config_from_env()
    except ConnectionSettingsError as e:
        raise SystemExit(f"cdc_stream: {e}") from e
    log.info("Kafka client: %s", ", ".join(f"{k.removeprefix('kafka.')}={v}" for k, v in kafka_security.items()
                                           if k != "kafka.sasl.jaas.config"))
    builder = SparkSession.builder.appName("binance-cdc-stream").config("spark.sql.session.timeZone", "UTC")
    for key, value in executor_env(os.environ).items():
        builder = builder.config(key, value)
    # batches are small and frequent: one shuffle partition avoids a task per empty partition
    builder = builder.config("spark.sql.shuffle.partitions", os.environ.get("CDC_SHUFFLE_PARTITIONS", "1"))
    builder = builder.config("spark.ui.enabled", "false")
    # the driver path's collect(limit) reads every Kafka partition of the batch in one job
    builder = builder.config("spark.sql.limit.initialNumPartitions", "1024")
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    writer = CassandraWriter.open(args.keyspace)
    try:
        batches = MicroBatches(writer, args.query_name, args.driver_max_events,
                               outage_seconds=args.cassandra_outage_seconds)
        query = build_stream(spark, args, batches, kafka_security)
        log.info("stream %s started (%s), checkpoint %s", args.query_name,
                 "availableNow" if args.available_now else f"every {args.trigger_seconds}s", args.checkpoint)
        # any query dying ends the job with its error, so the supervisor (Airflow) restarts it
        spark.streams.awaitAnyTermination()
        if query.exception() is not None:
            raise query.exception()
        log.info("stream %s finished: %s", args.query_name, json.dumps(query.lastProgress or {})[:500])
    finally:
        writer.close()
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
