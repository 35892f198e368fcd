"""spark/cdc_stream.py's foreachBatch on recorded writers: a batch is applied by the Spark tasks that
read it, under the change-log minute the driver chose when the batch started, and the driver
records nothing but the progress, from the tasks' small per-partition results; the signal table's
events are recorded before the reads of their windows are written, also when another task of the
batch records them."""

from __future__ import annotations

import json
import pickle
from datetime import UTC, datetime, timedelta
from functools import partial

import pytest

from spark.apply import UnknownTableError, apply_partitions
from spark.cdc_stream import MicroBatches
from spark.writer import cassandra_unreachable
from tests.spark.fakes import NOW, NOW_MINUTE, KafkaRow, RecordingWriter, read_records
from tests.spark.test_envelope import SOURCE_US
from tests.spark.test_reference import CORPUS, RETENTION

# a window's open marker in the signal table, committed 2 s before the reads' emission stamp
MARKER_LSN, MARKER_US = 170, SOURCE_US - 2_000_000
MARKER = json.dumps({"before": None, "after": {"id": "w1-open", "type": "snapshot-window-open", "data": None},
                     "op": "c", "source": {"lsn": MARKER_LSN, "ts_us": MARKER_US, "ts_ms": MARKER_US // 1000}})
SCHEMA = "topic string, partition int, offset long, value string"


def _rows() -> list[tuple]:
    rows = [(f"binance.binance.{table.name}", p, offset, value)
            for p, table in enumerate(CORPUS) for offset, value in enumerate(CORPUS[table])]
    # topics the sink does not keep are only reported; the signal table's events place windows in time
    rows.append(("binance.binance.debezium_heartbeat", 0, 5, '{"op": "u", "source": {"lsn": 1, "ts_ms": 2}}'))
    rows.append(("binance.binance.debezium_signal", 0, 3, MARKER))
    return rows


def _batch(spark, tasks: int = 1):
    """The batch as one Spark partition, or as two with the signal table's event alone in the second:
    each Kafka partition in one Spark partition, as the Kafka source reads them."""
    rows = _rows()
    if tasks == 1:
        return spark.createDataFrame(rows, SCHEMA).coalesce(1)
    return spark.createDataFrame(rows[:-1], SCHEMA).coalesce(1).union(spark.createDataFrame(rows[-1:], SCHEMA))


def _progress(records):
    """The offsets rows in order, then the progress and position rows without processing_ms (a duration)."""
    rows = [(cql, args) for what, cql, args in records if what == "execute_async" and "snapshot_windows" not in cql]
    *offsets, (progress_cql, progress), (position_cql, position) = rows
    assert "stream_progress" in progress_cql and "stream_position" in position_cql
    assert all("stream_offsets" in cql for cql, _ in offsets)
    return [*sorted(offsets, key=lambda r: r[1][1:3]), (progress_cql, progress[:5] + progress[6:]),
            (position_cql, position[:5] + position[6:])]


def _apply(spark, tmp_path, tasks: int = 1, name: str = "tasks") -> tuple[RecordingWriter, list]:
    """A batch through MicroBatches: (the driver's writer, what the tasks' writers wrote)."""
    path = tmp_path / f"{name}.pickle"
    on_driver = RecordingWriter(retention=RETENTION)
    MicroBatches(on_driver, "q", task_writer=partial(RecordingWriter.to_file, str(path))).write_batch(
        _batch(spark, tasks), 7)
    return on_driver, read_records(path)


def test_the_tasks_apply_a_batch_and_the_driver_records_its_progress(spark, tmp_path):
    on_driver, by_tasks = _apply(spark, tmp_path)
    # what one process applying the same rows writes (spark/apply.py without Spark)
    alone = RecordingWriter(retention=RETENTION)
    apply_partitions("ks", alone.context(), [KafkaRow(*r) for r in _rows()], open_writer=lambda ks: alone)
    assert by_tasks and sorted(map(repr, by_tasks)) == sorted(map(repr, alone.records))
    # the driver wrote nothing but progress
    assert {what for what, _, _ in on_driver.records} == {"execute_async"}
    assert not [cql for _, cql, _ in on_driver.records if "snapshot_windows" in cql]
    assert {args[1] for what, _, args in by_tasks if what == "change log"} == {NOW_MINUTE}
    # some changes were outside retention: not written
    assert sum(len(args[4]) for what, _, args in by_tasks if what == "change log") < \
        sum(len(v) for v in CORPUS.values()) - 10
    progress = _progress(on_driver.records)
    assert len(progress) == len(CORPUS) + 2 + 2
    # per partition the next offset (last + 1); the heartbeat's and the signal table's without a source time
    tables = [args[1:4] for _, args in progress[:-2] if "debezium" not in args[1]]
    assert tables == [(f"binance.binance.{t.name}", p, len(CORPUS[t])) for p, t in enumerate(CORPUS)]
    heartbeat = [args for _, args in progress if args[1] == "binance.binance.debezium_heartbeat"]
    assert heartbeat == [("q", "binance.binance.debezium_heartbeat", 0, 6, NOW, 6)]
    assert [args for _, args in progress if args[1] == "binance.binance.debezium_signal"] == [
        ("q", "binance.binance.debezium_signal", 0, 4, NOW, 4)]
    rows = sum(len(v) for v in CORPUS.values()) + 2
    newest = datetime(2026, 1, 2, 3, 4, 4, 123000, tzinfo=UTC)
    hour = datetime(2026, 1, 2, 3, tzinfo=UTC)
    assert progress[-2][1] == ("q", hour, NOW, 7, rows, newest, NOW_MINUTE, progress[-2][1][7], progress[-2][1][8])
    assert progress[-1][1] == ("q", 7, NOW, NOW_MINUTE, rows, newest, progress[-1][1][6], progress[-1][1][7])


def _window_writes(records) -> list[tuple]:
    return [args for what, cql, args in records if "snapshot_windows" in cql]


def _reads(records) -> tuple[list[tuple], list[tuple]]:
    """(the klines read at LSN 180 as written, the trade read at LSN 25 as written)."""
    upserts = [args for what, cql, args in records if what == "upsert/delete" and "INSERT" in cql]
    return [a for a in upserts if a[1] == "3m"], [a for a in upserts if a[0] == "BTCUSDT" and a[1] == 4]


def test_the_windows_are_recorded_before_the_reads_and_place_them_in_time(spark, tmp_path):
    _, by_tasks = _apply(spark, tmp_path)
    # the marker is recorded before anything of the batch is written
    assert _window_writes(by_tasks) == [("binance.binance.debezium_signal", MARKER_LSN, MARKER_US, NOW)]
    assert by_tasks.index(next(r for r in by_tasks if "snapshot_windows" in r[1])) == 0
    klines_read, trade_read = _reads(by_tasks)
    # the klines read at LSN 180 (interval 3m) is written at the marker's time, not at its emission stamp
    assert [read[-2] for read in klines_read] == [MARKER_US]
    # the trade read at LSN 25 has no marker at or below it: not applied
    assert trade_read == []


def test_reads_of_a_window_another_task_records_are_applied_again_once_it_is(spark, tmp_path):
    """Two tasks, the signal table's event read by the second: the first finds no window for its
    reads, reports them, and the driver has its partitions applied again after the job."""
    on_driver, by_tasks = _apply(spark, tmp_path, tasks=2)
    klines_read, trade_read = _reads(by_tasks)
    assert [read[-2] for read in klines_read] == [MARKER_US] and trade_read == []
    # the batch counted once in the progress, every partition reported once
    progress = _progress(on_driver.records)
    assert len(progress) == len(CORPUS) + 2 + 2
    assert progress[-1][1][4] == sum(len(v) for v in CORPUS.values()) + 2


def test_a_kafka_partition_split_between_tasks_fails_the_batch(spark, tmp_path):
    """Its events would be collapsed in two places, the older winning in one: refused, not guessed."""
    rows = _rows()[:len(CORPUS[next(iter(CORPUS))])]
    first, second = (spark.createDataFrame(part, SCHEMA).coalesce(1) for part in (rows[:5], rows[5:]))
    split = first.union(second)
    writer = RecordingWriter(retention=RETENTION)
    batches = MicroBatches(writer, "q", task_writer=partial(RecordingWriter.to_file, str(tmp_path / "t.pickle")))
    with pytest.raises(RuntimeError, match="read by more than one Spark task"):
        batches.write_batch(split, 9)
    assert writer.records == []


def test_each_kafka_partition_is_applied_by_a_task_of_its_own(spark, tmp_path):
    """Four Kafka partitions, each its own Spark partition as the Kafka source reads them, on fewer
    cores: four tasks (four writers), none merged with another (two busy partitions merged into one
    task are applied one after the other), every partition reported once."""
    rows = _rows()[:-1]  # without the signal table's event, which would have reads applied again
    by_partition = {}
    for r in rows:
        by_partition.setdefault(r[:2], []).append(r)
    frames = [spark.createDataFrame(part, SCHEMA).coalesce(1) for part in by_partition.values()]
    batch = frames[0]
    for f in frames[1:]:
        batch = batch.union(f)
    assert batch.rdd.getNumPartitions() == len(by_partition) == 4
    path = tmp_path / "tasks.pickle"
    on_driver = RecordingWriter(retention=RETENTION)
    MicroBatches(on_driver, "q", task_writer=partial(RecordingWriter.to_file, str(path))).write_batch(batch, 7)
    with path.open("rb") as f:
        writers = 0
        while True:
            try:
                pickle.load(f)
                writers += 1
            except EOFError:
                break
    assert writers == 4
    progress = _progress(on_driver.records)
    assert sorted(args[1:3] for _, args in progress[:-2]) == sorted(by_partition)
    assert progress[-1][1][4] == len(rows)


def _logged_minutes(records) -> set[datetime]:
    return {args[1] for what, _, args in records if what == "change log"}


def test_the_changelog_minute_is_the_drivers_and_never_goes_back(spark, tmp_path):
    later = NOW_MINUTE + timedelta(minutes=3)
    # the last finished batch (another driver, a clock ahead) logged under a later minute: start from it
    writer = RecordingWriter(retention=RETENTION, position={"q": later.replace(tzinfo=None)})
    paths = [tmp_path / f"tasks-{n}.pickle" for n in range(3)]
    batches = MicroBatches(writer, "q", task_writer=partial(RecordingWriter.to_file, str(paths[0])))
    assert batches.start_batch().changelog_bucket == later
    batches.write_batch(_batch(spark), 1)
    # the executors' writers, on their own clocks, log under the driver's minute
    assert _logged_minutes(read_records(paths[0])) == {later}
    position = writer.records[-1][2]
    assert position[:4] == ("q", 1, NOW, later)

    # the driver's clock passes it: its own minute
    writer.clock = NOW + timedelta(minutes=5, seconds=30)
    batches.task_writer = partial(RecordingWriter.to_file, str(paths[1]))
    batches.write_batch(_batch(spark), 2)
    assert _logged_minutes(read_records(paths[1])) == {NOW_MINUTE + timedelta(minutes=5)}
    # then steps back: the minute stays
    writer.clock = NOW
    batches.task_writer = partial(RecordingWriter.to_file, str(paths[2]))
    batches.write_batch(_batch(spark), 3)
    assert _logged_minutes(read_records(paths[2])) == {NOW_MINUTE + timedelta(minutes=5)}
    assert writer.records[-1][2][3] == NOW_MINUTE + timedelta(minutes=5)
    # stream_position is read once, at startup
    assert [cql for cql, _ in writer.session.reads if "stream_position" in cql] == [
        'SELECT changelog_bucket FROM "ks".stream_position WHERE query_name = ?']


def test_a_new_stream_starts_from_its_clocks_minute():
    batches = MicroBatches(RecordingWriter(retention=RETENTION), "q")
    context = batches.start_batch()
    assert context.changelog_bucket == NOW_MINUTE and context.keep_seconds == RETENTION


def test_a_change_topic_of_a_table_the_stream_does_not_define_fails_the_batch(spark, tmp_path):
    """A table added to the capture while an older stream runs: skipping its topic would commit the
    offsets past changes never applied. Nothing of that topic is written, the batch fails, and no
    progress is recorded: the stream, restarted with code that defines the table, applies it again."""
    rows = _batch(spark).union(spark.createDataFrame(
        [("binance.binance.table_added_later", 0, 0, '{"op": "c", "source": {"lsn": 1, "ts_ms": 2}}')], SCHEMA))
    writer = RecordingWriter(retention=RETENTION)
    path = tmp_path / "tasks.pickle"
    batches = MicroBatches(writer, "q", task_writer=partial(RecordingWriter.to_file, str(path)))
    with pytest.raises(UnknownTableError, match="table_added_later"):
        batches.write_batch(rows, 8)
    assert writer.records == []
    assert not [args for _, cql, args in read_records(path) if "table_added_later" in cql or
                "table_added_later" in repr(args)]


def test_cassandra_unreachable_is_told_from_other_failures():
    from cassandra import OperationTimedOut
    from cassandra.cluster import NoHostAvailable

    assert cassandra_unreachable(NoHostAvailable("Unable to connect to any servers", {}))
    assert cassandra_unreachable(OperationTimedOut("errors={}, last_host=127.0.0.4:9042"))
    try:
        try:
            raise NoHostAvailable("down", {})
        except NoHostAvailable as inner:
            raise RuntimeError("the batch failed") from inner
    except RuntimeError as outer:
        assert cassandra_unreachable(outer)
    # a Spark task's failure reaches the driver as text only
    assert cassandra_unreachable(Exception("Traceback ...\ncassandra.cluster.NoHostAvailable: ('Unable to connect')"))
    # the writer's own summary of failed concurrent writes, as a Spark task relays it
    assert cassandra_unreachable(Exception("RuntimeError: 20 upsert/delete write(s) to the sink tables failed; "
                                           "first: NoHostAvailable('Unable to complete the operation', {})"))
    assert not cassandra_unreachable(ValueError("batch 3: topic binance.binance.trades has no table"))
    assert not cassandra_unreachable(Exception("InvalidRequest: Error from server: code=2200"))


def _failing(batches: MicroBatches, failures: list[BaseException]) -> list[int]:
    """Make the batch's work raise `failures` one after the other, then succeed; the calls made."""
    calls: list[int] = []

    def attempt(batch, batch_id):
        calls.append(batch_id)
        if failures:
            raise failures.pop(0)

    batches._write_batch = attempt
    return calls


def test_a_batch_is_applied_again_while_cassandra_is_unreachable_then_the_stream_goes_on():
    from cassandra.cluster import NoHostAvailable

    slept: list[float] = []
    batches = MicroBatches(RecordingWriter(retention=RETENTION), "q", outage_seconds=300, sleep=slept.append)
    calls = _failing(batches, [NoHostAvailable("down", {}) for _ in range(5)])
    batches.write_batch(None, 4)
    assert calls == [4] * 6
    assert slept == [0.5, 1.0, 2.0, 4.0, 5.0]


def test_a_longer_outage_or_another_failure_ends_the_stream():
    from cassandra.cluster import NoHostAvailable

    batches = MicroBatches(RecordingWriter(retention=RETENTION), "q", outage_seconds=0, sleep=lambda s: None)
    _failing(batches, [NoHostAvailable("down", {})])
    with pytest.raises(NoHostAvailable):
        batches.write_batch(None, 4)
    batches = MicroBatches(RecordingWriter(retention=RETENTION), "q", outage_seconds=300, sleep=lambda s: None)
    calls = _failing(batches, [ValueError("a bug")])
    with pytest.raises(ValueError, match="a bug"):
        batches.write_batch(None, 4)
    assert calls == [4]
