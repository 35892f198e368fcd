"""Runs a short stream (Spark's rate source, foreachBatch) checkpointed in a local folder, in a fresh
process, with the checkpoint manager spark/cdc_stream.py gives a local checkpoint or with Spark's
defaults, and writes as JSON the batch ids it ran and the manager it used. For test_checkpoint.py.

Usage: python -m tests.spark.checkpoint_probe CHECKPOINT OUT.json stream|defaults BATCHES
"""

from __future__ import annotations

import json
import sys
import time

from pyspark.sql import SparkSession

from spark.cdc_stream import CHECKPOINT_MANAGER, use_local_checkpoint_manager


def main(checkpoint: str, out: str, conf_name: str, batches: int) -> None:
    spark = (SparkSession.builder.master("local[1]").appName("cdc-checkpoint-probe")
             .config("spark.ui.enabled", "false").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    if conf_name == "stream":
        use_local_checkpoint_manager(spark, checkpoint)
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
        result = {"batches": ran, "manager": spark.conf.get(CHECKPOINT_MANAGER[0], None)}
    finally:
        spark.stop()
    with open(out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
