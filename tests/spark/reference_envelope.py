"""A second, independent implementation of the stream's decisions, as Spark DataFrame transforms: the
reference tests/spark/test_reference.py checks spark/python_events.py and spark/apply.py against,
event for event (the stream itself parses and collapses in plain Python, per Kafka partition, on
the executors: all events of a row are in one partition, so it needs no shuffle).

The Spark schema of each envelope is derived from include/tables.py, the same definitions the
Postgres DDL and the Cassandra DDL follow. Messages come from Debezium's JsonConverter without
embedded schemas, with `decimal.handling.mode=string` (exact decimal text) and timestamptz as
ISO-8601 strings. Times leave these transforms as epoch microseconds (longs), never as Spark
timestamps (PySpark would hand them to Python as naive local times); `spark_rows` makes them aware
UTC datetimes.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from datetime import timedelta
from typing import Any

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from include.cdc.events import (
    DECIMAL_TEXT,
    DELETE,
    DELETE_WITHOUT_BEFORE,
    INCREMENTAL,
    NO_AFTER,
    NO_LSN,
    NO_SOURCE_TS,
    NOT_AN_EVENT,
    OPS,
    READ,
    UNKNOWN_OP_PREFIX,
    is_incremental_read,
    key_column_missing,
    key_sources,
    not_a_decimal,
    not_a_timestamp,
    source_time_us,
    write_time,
)
from include.tables import BUCKET, Table
from spark.writer import Change, DeadLetter, from_epoch_us

_MICROSECOND = timedelta(microseconds=1)

# how each logical type arrives in the JSON; decimals and times are converted after parsing
_WIRE_TYPES: dict[str, T.DataType] = {
    "text": T.StringType(),
    "numeric": T.StringType(),
    "timestamptz": T.StringType(),
    "bigint": T.LongType(),
    "boolean": T.BooleanType(),
}


def row_schema(table: Table) -> T.StructType:
    return T.StructType([T.StructField(c.name, _WIRE_TYPES[c.type]) for c in table.columns])


def envelope_schema(table: Table) -> T.StructType:
    source = T.StructType([
        T.StructField("lsn", T.LongType()),
        T.StructField("ts_ms", T.LongType()),
        T.StructField("ts_us", T.LongType()),
        T.StructField("txId", T.LongType()),
        T.StructField("snapshot", T.StringType()),
        T.StructField("sequence", T.StringType()),
        T.StructField("table", T.StringType()),
    ])
    return T.StructType([
        T.StructField("before", row_schema(table)),
        T.StructField("after", row_schema(table)),
        T.StructField("source", source),
        T.StructField("op", T.StringType()),
        T.StructField("ts_ms", T.LongType()),
    ])


def _typed(table: Table, row: Column) -> list[Column]:
    out = []
    for col in table.columns:
        raw = row[col.name]
        if col.type == "timestamptz":
            # parsed with the session time zone (UTC) where the text has no offset, then epoch µs
            out.append(F.unix_micros(raw.cast("timestamp")).alias(col.name))
        else:
            # decimals stay exact text: spark/writer.py turns them into Decimal as written
            out.append(raw.alias(col.name))
    return out


def _problems(table: Table, env: Column, row: Column) -> Column:
    """Why a message cannot be applied, or null. Every check names what failed."""
    key = key_sources(table)
    source = env["source"]
    checks = [
        (env.isNull() | env["op"].isNull(), F.lit(NOT_AN_EVENT)),
        (~env["op"].isin(*OPS), F.concat(F.lit(UNKNOWN_OP_PREFIX), env["op"])),
        (_lsn(source["lsn"], source["snapshot"], source["sequence"]).isNull(), F.lit(NO_LSN)),
        (source["ts_us"].isNull() & source["ts_ms"].isNull(), F.lit(NO_SOURCE_TS)),
        (row.isNull(), F.when(env["op"] == DELETE, F.lit(DELETE_WITHOUT_BEFORE)).otherwise(F.lit(NO_AFTER))),
    ]
    for name in key:
        checks.append((row[name].isNull(), F.lit(key_column_missing(name))))
    for col in table.columns:
        if col.type == "timestamptz":
            bad = row[col.name].isNotNull() & row[col.name].cast("timestamp").isNull()
            checks.append((bad, F.lit(not_a_timestamp(col.name))))
        elif col.type == "numeric":
            bad = row[col.name].isNotNull() & ~row[col.name].rlike(DECIMAL_TEXT)
            checks.append((bad, F.lit(not_a_decimal(col.name))))
    problem = F.lit(None).cast("string")
    for cond, message in reversed(checks):
        problem = F.when(F.coalesce(cond, F.lit(False)), message).otherwise(problem)
    return problem


def parse_envelope(df: DataFrame, table: Table) -> DataFrame:
    """Kafka rows of one table's topic -> one typed row per change event.

    In: topic, partition, offset, value (string; null for tombstones). Out: the table's columns
    (decimals as their text, times as epoch microseconds), then cdc_op, cdc_lsn, source_ts_us,
    source_ts_ms, source_snapshot (what include.cdc.events.write_time needs), kafka_partition,
    kafka_offset, raw_value, error. The row is `after` for r/c/u and `before` (which carries the
    key) for d. Tombstones are dropped; anything that cannot be applied keeps error != null and goes
    to dead letters.
    """
    env = F.from_json(F.col("value"), envelope_schema(table), {"mode": "PERMISSIVE"})
    parsed = df.where(F.col("value").isNotNull()).select(
        "partition", "offset", F.col("value").alias("raw_value"), env.alias("env")
    )
    row = F.when(F.col("env.op") == DELETE, F.col("env.before")).otherwise(F.col("env.after"))
    return parsed.select(
        *_typed(table, row),
        F.col("env.op").alias("cdc_op"),
        _lsn(F.col("env.source.lsn"), F.col("env.source.snapshot"), F.col("env.source.sequence")).alias("cdc_lsn"),
        F.col("env.source.ts_us").alias("source_ts_us"),
        F.col("env.source.ts_ms").alias("source_ts_ms"),
        F.col("env.source.snapshot").alias("source_snapshot"),
        F.col("partition").alias("kafka_partition"),
        F.col("offset").alias("kafka_offset"),
        "raw_value",
        _problems(table, F.col("env"), row).alias("error"),
    )


def _lsn(lsn: Column, snapshot: Column, sequence: Column) -> Column:
    """include.cdc.events.event_lsn in Spark: `source.lsn`, or for an incremental snapshot read
    without one the last LSN of its `source.sequence` (a JSON text of decimal strings)."""
    last = F.element_at(F.from_json(sequence, T.ArrayType(T.StringType())), -1)
    from_sequence = F.when(last.rlike("^[0-9]+$"), last.cast("long"))
    return F.coalesce(lsn, F.when(snapshot == INCREMENTAL, from_sequence))


def _incremental_read(op: Column, snapshot: Column) -> Column:
    return F.coalesce((op == READ) & (snapshot == INCREMENTAL), F.lit(False))


def drop_unplaced_reads(df: DataFrame, placed: Collection[int]) -> DataFrame:
    """parse_envelope's rows without the incremental snapshot reads whose LSN is not in `placed`
    (no window time is known for them: include.cdc.events.write_time). Dropped before the collapse,
    so such a read never hides an earlier change of its key in the batch; the reconciliation finds
    a row left behind and asks for it again."""
    known = F.col("cdc_lsn").isin(*sorted(placed)) if placed else F.lit(False)
    return df.where(~(_incremental_read(F.col("cdc_op"), F.col("source_snapshot")) & ~F.coalesce(known, F.lit(False))))


def incremental_read_lsns(df: DataFrame) -> DataFrame:
    """The distinct LSNs of the incremental snapshot reads in a raw Kafka batch (one column, `lsn`):
    the driver looks up their window times before the tables are applied."""
    op = F.get_json_object(F.col("value"), "$.op")
    snapshot = F.get_json_object(F.col("value"), "$.source.snapshot")
    lsn = _lsn(F.get_json_object(F.col("value"), "$.source.lsn").cast("long"), snapshot,
               F.get_json_object(F.col("value"), "$.source.sequence"))
    return df.where(_incremental_read(op, snapshot) & lsn.isNotNull()).select(lsn.alias("lsn")).distinct()


def _floor(micros: Column, step_us: int) -> Column:
    """Epoch microseconds floored to a multiple of `step_us` (pmod: right for times before 1970 too)."""
    return micros - F.pmod(micros, F.lit(step_us))


def sink_key(table: Table) -> list[Column]:
    """The Cassandra key of parse_envelope's rows, as the writer binds it (spark/writer.py cql_row's key columns):
    times at Cassandra's millisecond precision, `bucket` the start of time_column's hour or day
    (Table.bucket_of, in epoch arithmetic, so the session time zone plays no part)."""
    out = []
    for name in table.cassandra_key:
        if name == BUCKET.name:
            out.append(_floor(F.col(table.time_column), table.bucket_span // _MICROSECOND))
        elif table.column(name).type == "timestamptz":
            out.append(_floor(F.col(name), 1000))
        else:
            out.append(F.col(name))
    return out


def rank_events(df: DataFrame, table: Table) -> DataFrame:
    """Add `_rank`: 1 for the last event per sink key in source order (LSN, then Kafka position).
    Events that cannot be applied (error set, key possibly null) each rank alone."""
    own_group = F.when(F.col("error").isNotNull(), F.concat_ws(":", "kafka_partition", "kafka_offset"))
    window = Window.partitionBy(own_group, *sink_key(table)).orderBy(
        F.col("cdc_lsn").desc_nulls_last(), F.col("kafka_partition").desc(), F.col("kafka_offset").desc()
    )
    return df.withColumn("_rank", F.row_number().over(window))


def collapse_last(df: DataFrame, table: Table) -> DataFrame:
    """Keep, per sink key, only the last event in source order (LSN, then Kafka offset): what a batch
    applies. Every event that cannot be applied stays too (it ranks alone): a dead letter each."""
    return rank_events(df, table).where("_rank = 1").drop("_rank")


def batch_summary(df: DataFrame) -> DataFrame:
    """Per topic partition of a raw Kafka batch: events, the next offset to read (last + 1), and
    the newest source commit time (epoch ms; null when the partition held only tombstones or
    unparseable values). One small aggregate the stream reports as its progress."""
    source_ms = F.get_json_object(F.col("value"), "$.source.ts_ms").cast("long")
    return df.groupBy("topic", "partition").agg(
        F.count(F.lit(1)).alias("events"),
        (F.max("offset") + 1).alias("next_offset"),
        F.max(source_ms).alias("newest_source_ms"),
    )


def spark_rows(table: Table, topic: str, rows: Iterable[Any],
               windows: Mapping[int, int] | None = None) -> tuple[list[Change], list[DeadLetter]]:
    """Rows of parse_envelope (each event that cannot be applied, and the last event per key) as
    the writer's changes and dead letters, times made aware UTC datetimes; an incremental snapshot
    read at its window's time, `windows[lsn]`."""
    windows = windows or {}
    times = [c.name for c in table.columns if c.type == "timestamptz"]
    changes, letters = [], []
    for r in rows:
        if r.error is not None:
            letters.append(DeadLetter(topic, r.kafka_partition, r.kafka_offset, r.raw_value, r.error))
            continue
        row = r.asDict()
        for name in times:
            if row[name] is not None:
                row[name] = from_epoch_us(row[name])
        source = {"ts_us": r.source_ts_us, "ts_ms": r.source_ts_ms, "snapshot": r.source_snapshot}
        commit = source_time_us(source)
        window = windows.get(r.cdc_lsn) if is_incremental_read(r.cdc_op, source) else None
        changes.append(Change(table, r.cdc_op, r.cdc_lsn, None if commit is None else from_epoch_us(commit),
                              write_time(r.cdc_op, source, window), row))
    return changes, letters
