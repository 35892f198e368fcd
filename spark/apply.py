"""What a Spark task does with the Kafka partitions it reads in a micro-batch: the stream's one way
to apply changes, on the executors, in parallel per Kafka partition.

Debezium keys every event by its row's primary key, so all events of a row are in one partition of
its topic, in source order, and the Kafka source reads each topic partition of a micro-batch as one
Spark partition (the stream sets neither `minPartitions` nor `maxRecordsPerPartition`, which would
split one). A task therefore decides alone what its partitions change: it parses their events and
collapses them to the last per Cassandra key (spark/python_events.py), then writes dead letters,
rows and change log through the Cassandra writer of its Python worker (`shared_writer`: one session
per worker process, kept from batch to batch). It hands the driver one small `PartitionResult` per
Kafka partition: nothing proportional to the batch reaches the driver.

The signal table's partition records its events in `snapshot_windows` (before the task's other
partitions); an incremental snapshot read is written at its window's time, which the task reads
there (include.cdc.events.window_time). A window recorded by another task of the same batch may not
be there yet when a read looks for it: the read is not applied and is counted in `unplaced`, and the
driver applies that partition again once the batch's signal events are recorded (spark/cdc_stream.py).
"""

from __future__ import annotations

import atexit
import sys
import time
import zipimport
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from typing import Any

from include.cdc.events import signal_marker
from include.names import HEARTBEAT_TABLE, SIGNAL_TABLE, table_of_topic, topic_for
from include.tables import TABLES, Table
from spark import python_events
from spark.writer import BatchContext, CassandraWriter

# the signal table's topic: nothing of it is applied, its events place incremental snapshot windows in time
SIGNAL_TOPIC = topic_for(SIGNAL_TABLE)
# the Kafka source's columns the stream selects (the value as text), in the order the tasks unpack them
KAFKA_COLUMNS = ("topic", "partition", "offset", "value")


def known_tables() -> dict[str, Table]:
    """Every table the sink keeps, by its change topic."""
    return {topic_for(name): t for name, t in TABLES.items()}


class UnknownTableError(RuntimeError):
    """A change topic of a source table this code does not define (a table added to the capture while
    a stream started before it runs)."""


def check_topics(topics: Iterable[str], tables: dict[str, Table]) -> None:
    """Fail the batch on a change topic of a table the stream does not know: skipping it would move
    the offsets past changes never applied. The heartbeat's and the signal table's topics and topics
    of other prefixes are only reported. Restarted with code that defines the table (Airflow restarts
    the stream), the stream applies the batch again, whole."""
    kept_out = (None, HEARTBEAT_TABLE, SIGNAL_TABLE)
    unknown = sorted({t for t in topics if t not in tables and table_of_topic(t) not in kept_out})
    if unknown:
        raise UnknownTableError(f"change topics of tables this stream does not define: {unknown}; run the stream "
                                "with the code that defines them (include/tables.py): restart it")


@dataclass(frozen=True)
class PartitionResult:
    """What a task did with one Kafka partition of the batch: its events, the next offset to read,
    the newest source commit among them (epoch ms; None for only tombstones or unparseable values),
    and what was written: rows upserted and deleted, dead letters, changes skipped outside retention,
    incremental reads not applied for want of their window (`unplaced`), signal events recorded
    (`markers`); and where the task's time went: parsing and collapsing (`parse_ms`), writing
    (`write_ms`); and, on the first result of each task, reading the task's rows from Spark
    (`read_ms`) and getting its writer (`open_ms`: more than a few ms means a session was opened).
    A partition of a topic the sink does not keep is only counted."""

    topic: str
    partition: int
    events: int
    next_offset: int
    newest_source_ms: int | None
    upserts: int = 0
    deletes: int = 0
    dead: int = 0
    skipped: int = 0
    unplaced: int = 0
    markers: int = 0
    parse_ms: float = 0.0
    write_ms: float = 0.0
    read_ms: float = 0.0
    open_ms: float = 0.0

    @property
    def key(self) -> tuple[str, int]:
        return (self.topic, self.partition)


_SHARED: dict[str, CassandraWriter] = {}


@contextmanager
def shared_writer(keyspace: str) -> Iterator[CassandraWriter]:
    """The writer of this process (a Spark Python worker, reused from task to task): opened from the
    CDC_CASSANDRA_* environment on first use, then kept, since opening a session costs more than a
    small batch's writes; closed when the process exits. A session whose nodes went away reconnects
    by itself (include.connections' reconnection policy)."""
    writer = _SHARED.get(keyspace)
    if writer is None:
        writer = _SHARED[keyspace] = CassandraWriter.open(keyspace)
        atexit.register(writer.close)
    yield writer


def forget_archive_importers() -> int:
    """Drop the zip importers from this process's import cache; returns how many.

    PySpark's worker calls importlib.invalidate_caches() before every task, and on Python 3.11 that
    makes each cached zip importer read its archive's whole directory again. Spark puts its
    spark-core jar (5,221 entries) and pyspark.zip on the workers' PYTHONPATH, so every task spent
    63-289 ms (median 90 ms, load average 4) there before it read a record (bench/RESULTS.md, "The
    import cache"). Modules already imported keep their loaders; a later import through an archive
    makes an importer again from the directory zipimport keeps in memory, and the next task's
    end drops it."""
    archives = [path for path, finder in sys.path_importer_cache.items() if isinstance(finder, zipimport.zipimporter)]
    for path in archives:
        sys.path_importer_cache.pop(path, None)
    return len(archives)


def _newest_ms(values: Iterable[int | None]) -> int | None:
    return max((v for v in values if v is not None), default=None)


def apply_partition(writer: CassandraWriter, context: BatchContext, tables: dict[str, Table], topic: str,
                    partition: int, records: list[tuple[int, str | None]]) -> PartitionResult:
    """One Kafka partition's records ((offset, value) pairs, in offset order) applied:
    the signal table's events recorded, a table's events parsed, collapsed and written under the
    batch's context with the windows of its incremental reads; anything else only counted."""
    started = time.perf_counter()
    next_offset = max(offset for offset, _ in records) + 1
    table = tables.get(topic)
    if table is None:
        markers = [m for _, v in records if (m := signal_marker(v)) is not None] if topic == SIGNAL_TOPIC else []
        writer.record_windows(topic, markers)
        return PartitionResult(topic, partition, len(records), next_offset,
                               _newest_ms(python_events.source_ts_ms(v) for _, v in records), markers=len(markers),
                               write_ms=_ms_since(started))
    events = [e for offset, v in records if (e := python_events.parse_event(table, partition, offset, v))]
    newest = _newest_ms(e.source["ts_ms"] for e in events)
    lsns = {e.cdc_lsn for e in events if e.incremental_read}
    windows = writer.window_times(SIGNAL_TOPIC, lsns) if lsns else {}
    events, unplaced = python_events.drop_unplaced_reads(events, windows)
    winners, bad = python_events.collapse(table, events)
    changes = [e.change(table, windows) for e in winners]
    parsed = time.perf_counter()
    written = writer.write(replace(context, windows=windows), changes, [e.dead_letter(topic) for e in bad])
    return PartitionResult(topic, partition, len(records), next_offset, newest, written.upserts, written.deletes,
                           len(bad), written.skipped, unplaced, parse_ms=(parsed - started) * 1000,
                           write_ms=_ms_since(parsed))


def _ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000


def apply_partitions(keyspace: str, context: BatchContext, rows: Iterable[Any],
                     open_writer: Callable[[str], AbstractContextManager[CassandraWriter]] = shared_writer,
                     only: Collection[tuple[str, int]] | None = None) -> list[PartitionResult]:
    """mapPartitions of a micro-batch's raw Kafka rows (KAFKA_COLUMNS): each Kafka partition in the
    task's rows (all of them, or those in `only`) applied by `apply_partition`, the signal table's
    first, so that reads of a window opened in this task find it."""
    try:
        read_started = time.perf_counter()
        groups: dict[tuple[str, int], list[tuple[int, str | None]]] = {}
        # rows as the stream selects them (KAFKA_COLUMNS), unpacked: a Row's fields by name cost a
        # search of its field names each
        for topic, partition, offset, value in rows:
            if only is None or (topic, partition) in only:
                groups.setdefault((topic, partition), []).append((offset, value))
        if not groups:
            return []
        tables = known_tables()
        read_ms = _ms_since(read_started)
        started = time.perf_counter()
        with open_writer(keyspace) as writer:
            open_ms = _ms_since(started)
            results = [apply_partition(writer, context, tables, topic, partition, records)
                       for (topic, partition), records in sorted(groups.items(),
                                                                 key=lambda g: (g[0][0] != SIGNAL_TOPIC, g[0]))]
        return [replace(results[0], read_ms=read_ms, open_ms=open_ms), *results[1:]]
    finally:
        # the worker's next task starts by invalidating the import caches
        forget_archive_importers()


def table_counts(results: Iterable[PartitionResult], tables: dict[str, Table]) -> str:
    """Per table what a batch wrote, for the stream's log: upserts+deletes, dead letters, skips."""
    totals: dict[str, list[int]] = {}
    for r in results:
        if r.topic in tables:
            t = totals.setdefault(tables[r.topic].name, [0, 0, 0, 0, 0])
            for i, n in enumerate((r.upserts, r.deletes, r.dead, r.skipped, r.unplaced)):
                t[i] += n
    parts = []
    for name, (upserts, deletes, dead, skipped, unplaced) in sorted(totals.items()):
        text = f"{name} {upserts}+{deletes}d"
        text += f" {dead} dead" if dead else ""
        text += f" {skipped} outside retention" if skipped else ""
        text += f" {unplaced} incremental read(s) not placed in time, not applied" if unplaced else ""
        parts.append(text)
    return ", ".join(parts) or "nothing to apply"

