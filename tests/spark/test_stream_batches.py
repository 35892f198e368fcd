"""spark/cdc_stream.py's foreachBatch on a recorded writer: a batch applied on the driver and the same
batch applied by Spark tasks make the same writes, and the same progress rows."""

from __future__ import annotations

from functools import partial

from spark.cdc_stream import MicroBatches
from tests.spark.fakes import RecordingWriter, read_records
from tests.spark.test_both_paths import CORPUS


def _batch(spark):
    rows = [(f"binance.binance.{table.name}", p, offset, value)
            for p, table in enumerate(CORPUS) for offset, value in enumerate(CORPUS[table])]
    # a topic the sink does not keep is only reported
    rows.append(("binance.binance.debezium_heartbeat", 0, 5, '{"op": "u", "source": {"lsn": 1, "ts_ms": 2}}'))
    return spark.createDataFrame(rows, "topic string, partition int, offset long, value string")


def _progress(records):
    """The progress row without processing_ms (a duration), then the offsets rows in order."""
    rows = [(cql, args) for what, cql, args in records if what == "execute_async"]
    (cql, args), offsets = rows[0], rows[1:]
    assert "stream_progress" in cql
    return [(cql, args[:4] + args[5:]), *sorted(offsets, key=lambda r: r[1][1:3])]


def test_driver_and_spark_tasks_write_a_batch_the_same(spark, tmp_path):
    by_driver = RecordingWriter()
    MicroBatches(by_driver, "q", driver_max_events=1000).write_batch(_batch(spark), 7)

    path = tmp_path / "tasks.pickle"
    on_driver = RecordingWriter()
    MicroBatches(on_driver, "q", driver_max_events=0,
                 task_writer=partial(RecordingWriter.to_file, str(path))).write_batch(_batch(spark), 7)
    by_tasks = read_records(path)

    writes = [r for r in by_driver.records if r[0] != "execute_async"]
    assert writes and not [r for r in on_driver.records if r[0] != "execute_async"]
    assert sorted(map(repr, writes)) == sorted(map(repr, by_tasks))
    assert _progress(by_driver.records) == _progress(on_driver.records)
    progress = _progress(by_driver.records)
    assert len(progress) == 1 + len(CORPUS) + 1 and progress[0][1][2] == 7
    # the heartbeat's partition is reported without a source time
    heartbeat = [args for _, args in progress if args[1] == "binance.binance.debezium_heartbeat"]
    assert heartbeat == [("q", "binance.binance.debezium_heartbeat", 0, 6, by_driver.now(), 6)]
