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

One streaming query reads every `binance.binance.*` topic. Each micro-batch is applied by the Spark
tasks that read it, each Kafka partition by the task reading it (spark/apply.py): all events of a
row are in one partition, so a task decides alone. Per table, snapshot reads, inserts and updates
upsert `after`, deletes remove the key from `before`, tombstones are skipped, several events on one
key collapse to the last in source order (LSN, then Kafka position). Rows are keyed in Cassandra by
a time bucket of their time column too. Every Cassandra write carries the change's source commit
time as its write timestamp (an initial snapshot's rows 10 s below it, an incremental snapshot's
rows at their window's time; include.cdc.events.write_time), so replays after a restart can never
make a row older than it is. The signal table's topic is not applied: its events (snapshot signals,
window markers) are recorded in `snapshot_windows`, and give each incremental snapshot read its
window's time. Rows are written with a TTL that ends when the table's retention (`sink_retention`)
has passed their time; changes to rows already past it are not written. Messages that cannot be
applied go to `dead_letters`; the stream carries on. `--available-now` processes what is in Kafka
and exits (catch-up runs, tests); otherwise the query runs until it fails, and fails loudly.

Every key written is logged in `changed_rows` under a minute the driver picks when the batch starts
(never earlier than the last finished batch's, `stream_position`); after the batch the driver
records `stream_offsets`, `stream_progress` and then `stream_position` from the tasks' results,
one small record per Kafka partition: nothing proportional to a batch is collected to the driver,
and the write rate grows with the executors and the topics' partitions.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from functools import partial
from typing import Any
from urllib.parse import urlparse

from pyspark import SparkConf
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from include.connections import CassandraSettings, ConnectionSettingsError, kafka_java_config_from_env
from include.names import CDC_TOPIC_PREFIX, STREAM_QUERY_NAME
from include.times import from_epoch_ms
from spark.apply import (
    KAFKA_COLUMNS,
    PartitionResult,
    apply_partitions,
    check_topics,
    known_tables,
    shared_writer,
    table_counts,
)
from spark.writer import BatchContext, CassandraWriter, Offset, cassandra_unreachable

log = logging.getLogger("cdc_stream")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bootstrap-servers", required=True)
    p.add_argument("--keyspace", required=True)
    p.add_argument("--checkpoint", required=True, help="durable checkpoint folder (HDFS/S3/local path)")
    p.add_argument("--topic-pattern", default=CDC_TOPIC_PREFIX.replace(".", r"\.") + ".*")
    p.add_argument("--available-now", action="store_true", help="process what is there, then exit")
    p.add_argument("--trigger-seconds", type=float, default=0.5)
    p.add_argument("--max-offsets-per-trigger", type=int, default=20000)
    p.add_argument("--starting-offsets", default="earliest")
    p.add_argument("--cassandra-outage-seconds", type=float,
                   default=float(os.environ.get("CDC_CASSANDRA_OUTAGE_SECONDS", "300")),
                   help="how long a batch is applied again while Cassandra cannot be reached before the stream "
                        "fails; default from CDC_CASSANDRA_OUTAGE_SECONDS, else 300")
    p.add_argument("--query-name", default=STREAM_QUERY_NAME)
    return p.parse_args(argv)


class MicroBatches:
    """foreachBatch: has each micro-batch applied by the Spark tasks reading it, then records the
    stream's progress with the driver's own writer. Every Cassandra write goes through a CassandraWriter.

    The change-log minute of a batch is chosen here, once, when the batch starts: the minute of the
    driver's clock, but never earlier than the last finished batch's (read from `stream_position`
    once, then kept), so the bridge, which reads the log up to stream_position's minute, never
    misses a key even if the driver's clock steps back or the stream moves to another host."""

    def __init__(self, writer: CassandraWriter, query_name: str,
                 task_writer: Callable[[str], AbstractContextManager[CassandraWriter]] = shared_writer,
                 outage_seconds: float = 300.0, sleep: Callable[[float], None] = time.sleep) -> None:
        self.writer = writer
        # how long a batch is applied again while Cassandra cannot be reached, before the stream fails
        self.outage_seconds = outage_seconds
        self.sleep = sleep
        # how each Spark task gets its writer, from the keyspace (its worker's, from the environment, by default)
        self.task_writer = task_writer
        self.query_name = query_name
        self.tables = known_tables()
        self.last_changelog_bucket: datetime | None = writer.last_changelog_bucket(query_name)
        # where Spark says the previous batch's time went, logged as each batch starts
        self.spark_times = SparkTimes()

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
        self.spark_times.log_last()
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
        results = self._apply(batch, context)
        pending = {r.key for r in results if r.unplaced}
        if pending and any(r.markers for r in results):
            # reads of a window whose signal event another task of this batch recorded while they looked
            # for it: applied again (every write is idempotent), now that it is recorded
            log.info("batch %d: applying %d partition(s) again for incremental reads of this batch's windows",
                     batch_id, len(pending))
            again = self._apply(batch, context, only=frozenset(pending))
            results = [r for r in results if r.key not in pending] + again
        check_topics({r.topic for r in results}, self.tables)
        if len({r.key for r in results}) < len(results):
            # each Kafka partition's events must be decided by one task: they are collapsed per key there
            raise RuntimeError(f"batch {batch_id}: a Kafka partition was read by more than one Spark task; the "
                               "Kafka source must not split one (leave minPartitions and maxRecordsPerPartition unset)")
        unplaced = sum(r.unplaced for r in results)
        if unplaced:
            log.warning("batch %d: %d incremental snapshot read(s) not placed in time (no signal-table event at or "
                        "below their LSN): not applied", batch_id, unplaced)
        log.info("batch %d: %d Kafka partition(s) applied by Spark tasks: %s (%.0f ms; in the tasks: read "
                 "%.0f ms, parse %.0f ms, write %.0f ms, writer %.0f ms)", batch_id, len(results),
                 table_counts(results, self.tables), (time.monotonic() - started) * 1000,
                 *(sum(getattr(r, f) for r in results) for f in ("read_ms", "parse_ms", "write_ms", "open_ms")))
        self._record_progress(batch_id, results, time.monotonic() - started, context)

    def _apply(self, batch: DataFrame, context: BatchContext,
               only: frozenset[tuple[str, int]] | None = None) -> list[PartitionResult]:
        """One Spark job: every Kafka partition of the batch (or those in `only`) applied by the task
        reading it (spark/apply.py), the batch's context in the task's closure; one small result per
        Kafka partition comes back. The Kafka source plans one Spark partition per Kafka partition
        with records in the batch (it drops empty ones), and they are not merged. Merged into one
        task per core (coalesce, which in local mode groups neighbours in the order the source lists
        them, an order that changes from one start to the next), both partitions of a busy table
        shared one task in most batches with a third partition on some starts, and were applied one
        after the other (bench/RESULTS.md, "One task per Kafka partition")."""
        task = partial(apply_partitions, self.writer.keyspace, context, open_writer=self.task_writer, only=only)
        return batch.rdd.mapPartitions(task).collect()

    def _record_progress(self, batch_id: int, parts: list[PartitionResult], seconds: float,
                         context: BatchContext) -> None:
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


class SparkTimes:
    """Logs, per micro-batch with input, where Spark says its time went (`durationMs`): asking Kafka
    for the latest offsets, writing the offsets log, planning, the batch itself (`addBatch`, the
    MicroBatches call above), committing; `triggerExecution` is the whole, and the gap since the
    previous batch ended is the trigger's wait.

    A batch's times are logged when the next batch starts (MicroBatches calls `log_last`), from the
    query's `lastProgress`: two calls into the JVM. The last batch before a stop, or before 10 s
    without data, is not logged. A Python StreamingQueryListener, which this replaced, had every
    progress event (one a batch) converted into Python objects by PySpark, whose lookups of py4j
    classes by name made the JVM search Spark's 252 jars: 43 % of the driver JVM's sampled CPU at
    1,000 rows/s (bench/RESULTS.md)."""

    def __init__(self) -> None:
        self.query: Any = None  # set once the query has started
        self.logged: int | None = None
        self.last_end: datetime | None = None

    def log_last(self) -> None:
        """Log the query's last finished batch, if it had input and is not logged yet. A failure
        here is logged and the batch goes on: these times are for reading, not for the stream."""
        if self.query is None:
            return
        try:
            self.log(self.query.lastProgress)
        except Exception as exc:  # noqa: BLE001 - never let the log of times stop a batch
            log.warning("Spark's times of the last batch not logged: %s: %s", type(exc).__name__, exc)

    def log(self, progress: Mapping[str, Any] | None) -> None:
        # a trigger that found no data (reported after 10 s without any) ran no batch: nothing to log;
        # it does replace lastProgress, so the batch before such a pause is not logged
        if not progress or not progress.get("numInputRows") or progress.get("batchId") == self.logged:
            return
        batch_id = progress["batchId"]
        times = progress.get("durationMs") or {}
        started = datetime.fromisoformat(progress["timestamp"].replace("Z", "+00:00"))
        # the trigger's wait, when the batch before is the one logged last
        idle = "" if self.last_end is None or self.logged != batch_id - 1 else \
            f", idle before it {max(0.0, (started - self.last_end).total_seconds() * 1000):.0f}"
        self.logged = batch_id
        self.last_end = started + timedelta(milliseconds=times.get("triggerExecution", 0))
        spent = ", ".join(f"{k} {v}" for k, v in sorted(times.items()))
        log.info("batch %d: Spark's times (ms): %s%s", batch_id, spent, idle)


# how long the broker may hold a fetch of the stream's consumers that finds no new record (ms)
FETCH_MAX_WAIT_MS = 10
# Before each batch the driver asks the partitions' leaders for their latest offsets (Kafka's admin
# client). A broker lost while it led a partition pins that request to it: the admin client waits
# for the broker to reappear in its metadata, up to default.api.timeout.ms (60 s), and every table
# waits with it, although another replica leads within the broker session timeout (9 s). A lookup
# is given up after OFFSET_LOOKUP_TIMEOUT_MS and Spark retries it with a new admin client, which
# finds the new leader; OFFSET_LOOKUP_ATTEMPTS keep a Kafka cluster wholly unreachable for about
# 3 minutes from failing the query, as Spark's defaults (3 attempts of 60 s) did.
OFFSET_LOOKUP_TIMEOUT_MS = 10_000
OFFSET_LOOKUP_RETRY_MS = 1_000
OFFSET_LOOKUP_ATTEMPTS = 18


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
        # a batch's task seeks its cached consumer, whose last fetch the broker holds open until
        # data arrives or this much time passes (Kafka's default 500 ms): on a quiet topic every
        # small batch waited for it before reading a record
        "kafka.fetch.max.wait.ms": str(FETCH_MAX_WAIT_MS),
        # the admin client refuses a default.api.timeout.ms below its request.timeout.ms (30 s)
        "kafka.request.timeout.ms": str(OFFSET_LOOKUP_TIMEOUT_MS),
        "kafka.default.api.timeout.ms": str(OFFSET_LOOKUP_TIMEOUT_MS),
        "fetchOffset.numRetries": str(OFFSET_LOOKUP_ATTEMPTS),
        "fetchOffset.retryIntervalMs": str(OFFSET_LOOKUP_RETRY_MS),
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


# Spark's default checkpoint manager renames each offsets and commits file through Hadoop's
# FileContext API, which asks for the destination's link status first; Hadoop's local file system,
# without the native library Spark's jars lack, forks a `readlink` for that (twice a rename, for the
# file and its .crc checksum), besides a `chmod` for each file it creates: about 9 processes per
# micro-batch on the query's one thread, 150 ms of a 550 ms batch at 1,000 rows/s
# (bench/RESULTS.md). Spark's FileSystem-based manager renames with FileSystem.rename, a Java rename
# on the local file system: the `chmod`s remain. A POSIX rename is atomic, as the manager needs.
CHECKPOINT_MANAGER = ("spark.sql.streaming.checkpointFileManagerClass",
                      "org.apache.spark.sql.execution.streaming.FileSystemBasedCheckpointFileManager")


def use_local_checkpoint_manager(spark: SparkSession, checkpoint: str) -> bool:
    """Have a checkpoint that is a path or a file: URI written by the FileSystem-based manager,
    unless the session's conf (spark-submit's --conf, spark-defaults.conf) names a manager already.
    hdfs:, s3a: and other schemes keep Spark's default. A path is taken as local; were Hadoop's
    default file system HDFS, the FileSystem-based manager is correct there too (an HDFS rename is
    atomic). Returns whether the manager was set."""
    key, manager = CHECKPOINT_MANAGER
    if urlparse(checkpoint).scheme not in ("", "file") or spark.conf.get(key, None) is not None:
        return False
    spark.conf.set(key, manager)
    return True


def build_stream(spark: SparkSession, args: argparse.Namespace, batches: MicroBatches,
                 kafka_security: Mapping[str, str] | None = None) -> Any:
    source = (
        spark.readStream.format("kafka")
        .options(**kafka_source_options(args, kafka_security or {}))
        .load()
        .select(*(F.col(c).cast("string").alias(c) if c == "value" else F.col(c) for c in KAFKA_COLUMNS))
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
    builder = builder.config("spark.ui.enabled", "false")
    # the Kafka source asks for the executor that cached each partition's consumer; a batch's tasks
    # start on any free core at once rather than wait up to 3 s (Spark's default) for that one,
    # unless spark-submit's conf says otherwise
    if not SparkConf().contains("spark.locality.wait"):
        builder = builder.config("spark.locality.wait", "0s")
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    use_local_checkpoint_manager(spark, args.checkpoint)
    writer = CassandraWriter.open(args.keyspace)
    try:
        batches = MicroBatches(writer, args.query_name, outage_seconds=args.cassandra_outage_seconds)
        query = build_stream(spark, args, batches, kafka_security)
        batches.spark_times.query = query
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
