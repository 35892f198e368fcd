"""Runs a short stream (Spark's rate source, foreachBatch) checkpointed in a local folder, in a fresh
process (a fresh JVM: Hadoop's file systems are chosen when the first one is made), with the conf
spark/cdc_stream.py gives a local checkpoint or with Spark's defaults, and writes as JSON the batch
ids it ran and the class Hadoop uses for file: paths. For test_checkpoint.py.

Usage: python -m tests.spark.checkpoint_probe CHECKPOINT OUT.json stream|defaults BATCHES
"""

from __future__ import annotations

import json
import sys
import time

from pyspark import SparkConf
from pyspark.sql import SparkSession

from spark.cdc_stream import local_checkpoint_conf


def main(checkpoint: str, out: str, conf_name: str, batches: int) -> None:
    builder = (SparkSession.builder.master("local[1]").appName("cdc-checkpoint-probe")
               .config("spark.ui.enabled", "false"))
    if conf_name == "stream":
        for key, value in local_checkpoint_conf(checkpoint, SparkConf()).items():
            builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    ran: list[int] = []
    try:
        source = spark.readStream.format("rate").option("rowsPerSecond", 20).load()
        query = (source.writeStream.option("checkpointLocation", checkpoint)
                 .foreachBatch(lambda df, batch_id: ran.append(batch_id))
                 .trigger(processingTime="200 milliseconds").start())
        deadline = time.monotonic() + 120
        while len(ran) < batches and time.monotonic() < deadline:
            time.sleep(0.05)
        query.stop()
        jvm = spark.sparkContext._jvm
        file_system = jvm.org.apache.hadoop.fs.FileSystem.get(jvm.java.net.URI("file:///"),
                                                             spark.sparkContext._jsc.hadoopConfiguration())
        result = {"batches": ran, "file_system": file_system.getClass().getName()}
    finally:
        spark.stop()
    with open(out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
