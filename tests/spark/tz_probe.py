"""Runs the stream's micro-batch (spark/cdc_stream.py's MicroBatches, Spark tasks writing) on the
corpus of test_reference.py in a fresh process (a fresh JVM), and pickles what it bound, for
test_time_zone.py, which starts it under several TZ values: the JVM and PySpark read the time zone
once, when they start.

Usage: TZ=Asia/Kolkata python -m tests.spark.tz_probe OUT.pickle
"""

from __future__ import annotations

import os
import pickle
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

from pyspark.sql import SparkSession

from spark.cdc_stream import MicroBatches
from tests.spark.fakes import RecordingWriter, read_records
from tests.spark.test_reference import CORPUS, RETENTION


def _without_durations(records: list) -> list:
    """Progress rows without processing_ms, driver_host and driver_pid (they differ from run to run)."""
    out = []
    for what, cql, args in records:
        if "stream_progress" in cql:
            args = args[:5] + args[6:8]
        elif "stream_position" in cql:
            args = args[:5] + args[6:7]
        out.append((what, cql, args))
    return out


def main(out: str) -> None:
    spark = (SparkSession.builder.master("local[1]").appName("cdc-tz-probe")
             .config("spark.sql.session.timeZone", "UTC").config("spark.ui.enabled", "false")
             .getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    try:
        rows = [(f"binance.binance.{table.name}", p, offset, value)
                for p, table in enumerate(CORPUS) for offset, value in enumerate(CORPUS[table])]
        batch = spark.createDataFrame(rows, "topic string, partition int, offset long, value string")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "tasks.pickle"
            on_driver = RecordingWriter(retention=RETENTION)
            MicroBatches(on_driver, "q", task_writer=partial(RecordingWriter.to_file, str(path))).write_batch(batch, 1)
            by_tasks = read_records(path)
        result = {
            "jvm_time_zone": spark.sparkContext._jvm.java.util.TimeZone.getDefault().getID(),
            "python_utc_offset": time.localtime().tm_gmtoff,
            "tz": os.environ.get("TZ"),
            "tasks": by_tasks,
            "tasks_progress": _without_durations(on_driver.records),
        }
    finally:
        spark.stop()
    with open(out, "wb") as f:
        pickle.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1])
