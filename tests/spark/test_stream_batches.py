"""spark/cdc_stream.py's foreachBatch on a recorded writer: a batch applied on the driver and the same
batch applied by Spark tasks make the same writes under the same change-log minute, chosen by the
driver when the batch starts, and the same progress rows; both record the signal table's events
first and write each incremental snapshot read at its window's time."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from functools import partial

import pytest

from spark.cdc_stream import MicroBatches
from spark.writer import cassandra_unreachable
from tests.spark.fakes import NOW, NOW_MINUTE, RecordingWriter, read_records
from tests.spark.test_both_paths import CORPUS, RETENTION
from tests.spark.test_envelope import SOURCE_US

# a window's open marker in the signal table, committed 2 s before the reads' emission stamp
MARKER_LSN, MARKER_US = 170, SOURCE_US - 2_000_000
MARKER = json.dumps({"before": None, "after": {"id": "w1-open", "type": "snapshot-window-open", "data": None},
                     "op": "c", "source": {"lsn": MARKER_LSN, "ts_us": MARKER_US, "ts_ms": MARKER_US // 1000}})


def _batch(spark):
    rows = [(f"binance.binance.{table.name}", p, offset, value)
            for p, table in enumerate(CORPUS) for offset, value in enumerate(CORPUS[table])]
    # topics the sink does not keep are only reported; the signal table's events place windows in time
    rows.append(("binance.binance.debezium_heartbeat", 0, 5, '{"op": "u", "source": {"lsn": 1, "ts_ms": 2}}'))
    rows.append(("binance.binance.debezium_signal", 0, 3, MARKER))
    return spark.createDataFrame(rows, "topic string, partition int, offset long, value string")


def _progress(records):
    """The offsets rows in order, then the progress and position rows without processing_ms (a duration)."""
    rows = [(cql, args) for what, cql, args in records if what == "execute_async" and "snapshot_windows" not in cql]
    *offsets, (progress_cql, progress), (position_cql, position) = rows
    assert "stream_progress" in progress_cql and "stream_position" in position_cql
    assert all("stream_offsets" in cql for cql, _ in offsets)
    return [*sorted(offsets, key=lambda r: r[1][1:3]), (progress_cql, progress[:5] + progress[6:]),
            (position_cql, position[:5] + position[6:])]


def test_driver_and_spark_tasks_write_a_batch_the_same(spark, tmp_path):
    by_driver = RecordingWriter(retention=RETENTION)
    MicroBatches(by_driver, "q", driver_max_events=1000).write_batch(_batch(spark), 7)

    path = tmp_path / "tasks.pickle"
    on_driver = RecordingWriter(retention=RETENTION)
    MicroBatches(on_driver, "q", driver_max_events=0,
                 task_writer=partial(RecordingWriter.to_file, str(path))).write_batch(_batch(spark), 7)
    by_tasks = read_records(path)

    writes = [r for r in by_driver.records if r[0] != "execute_async"]
    assert writes and not [r for r in on_driver.records if r[0] != "execute_async"]
    assert sorted(map(repr, writes)) == sorted(map(repr, by_tasks))
    assert {args[1] for what, _, args in by_tasks if what == "change log"} == {NOW_MINUTE}
    # some changes were outside retention: written by neither
    assert len([w for w in writes if w[0] == "change log"]) < sum(len(v) for v in CORPUS.values()) - 10
    assert _progress(by_driver.records) == _progress(on_driver.records)
    progress = _progress(by_driver.records)
    assert len(progress) == len(CORPUS) + 2 + 2
    # the heartbeat's and the signal table's partitions are reported without a source time
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


def test_both_ways_record_the_windows_first_and_write_incremental_reads_at_their_time(spark, tmp_path):
    by_driver = RecordingWriter(retention=RETENTION)
    MicroBatches(by_driver, "q", driver_max_events=1000).write_batch(_batch(spark), 7)
    path = tmp_path / "tasks.pickle"
    on_driver = RecordingWriter(retention=RETENTION)
    MicroBatches(on_driver, "q", driver_max_events=0,
                 task_writer=partial(RecordingWriter.to_file, str(path))).write_batch(_batch(spark), 7)
    for writer in (by_driver, on_driver):
        # the marker is recorded before anything of the batch is written
        assert _window_writes(writer.records) == [("binance.binance.debezium_signal", MARKER_LSN, MARKER_US, NOW)]
        assert writer.records.index(next(r for r in writer.records if "snapshot_windows" in r[1])) == 0
    for records in (by_driver.records, read_records(path)):
        upserts = [args for what, cql, args in records if what == "upsert/delete" and "INSERT" in cql]
        # the klines read at LSN 180 (interval 3m) is written at the marker's time, not at its emission stamp
        [read] = [args for args in upserts if args[1] == "3m"]
        assert read[-2] == MARKER_US
        # the trade read at LSN 25 has no marker at or below it: not applied
        assert not [args for args in upserts if args[0] == "BTCUSDT" and args[1] == 4]


def _logged_minutes(writer: RecordingWriter, since: int = 0) -> set[datetime]:
    return {args[1] for what, _, args in writer.records[since:] if what == "change log"}


def test_the_changelog_minute_is_the_drivers_and_never_goes_back(spark, tmp_path):
    later = NOW_MINUTE + timedelta(minutes=3)
    # the last finished batch (another driver, a clock ahead) logged under a later minute: start from it
    writer = RecordingWriter(retention=RETENTION, position={"q": later.replace(tzinfo=None)})
    path = tmp_path / "tasks.pickle"
    batches = MicroBatches(writer, "q", driver_max_events=0, task_writer=partial(RecordingWriter.to_file, str(path)))
    assert batches.start_batch().changelog_bucket == later
    batches.write_batch(_batch(spark), 1)
    # the executors' writers, on their own clocks, log under the driver's minute
    assert {args[1] for what, _, args in read_records(path) if what == "change log"} == {later}
    position = writer.records[-1][2]
    assert position[:4] == ("q", 1, NOW, later)

    # the driver's clock passes it: its own minute
    writer.clock = NOW + timedelta(minutes=5, seconds=30)
    batches.driver_max_events = 1000
    mark = len(writer.records)
    batches.write_batch(_batch(spark), 2)
    assert _logged_minutes(writer, mark) == {NOW_MINUTE + timedelta(minutes=5)}
    # then steps back: the minute stays
    writer.clock = NOW
    mark = len(writer.records)
    batches.write_batch(_batch(spark), 3)
    assert _logged_minutes(writer, mark) == {NOW_MINUTE + timedelta(minutes=5)}
    assert writer.records[-1][2][3] == NOW_MINUTE + timedelta(minutes=5)
    # stream_position is read once, at startup
    assert [cql for cql, _ in writer.session.reads if "stream_position" in cql] == [
        'SELECT changelog_bucket FROM "ks".stream_position WHERE query_name = ?']


def test_a_new_stream_starts_from_its_clocks_minute():
    batches = MicroBatches(RecordingWriter(retention=RETENTION), "q")
    context = batches.start_batch()
    assert context.changelog_bucket == NOW_MINUTE and context.keep_seconds == RETENTION


def test_a_change_topic_of_a_table_the_stream_does_not_define_fails_the_batch_before_any_write(spark, tmp_path):
    """A table added to the capture while an older stream runs: skipping its topic would commit the
    offsets past changes never applied. The batch fails on both paths, having written nothing."""
    import pytest

    from spark.envelope import UnknownTableError

    rows = _batch(spark).union(spark.createDataFrame(
        [("binance.binance.table_added_later", 0, 0, '{"op": "c", "source": {"lsn": 1, "ts_ms": 2}}')],
        "topic string, partition int, offset long, value string"))
    for driver_max_events in (1000, 0):
        writer = RecordingWriter(retention=RETENTION)
        path = tmp_path / f"tasks-{driver_max_events}.pickle"
        batches = MicroBatches(writer, "q", driver_max_events=driver_max_events,
                               task_writer=partial(RecordingWriter.to_file, str(path)))
        with pytest.raises(UnknownTableError, match="table_added_later"):
            batches.write_batch(rows, 8)
        assert [r for r in writer.records if r[0] != "execute_async"] == [] and not path.exists()


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
