"""spark/cdc_stream.py's settings from its environment: the Kafka connection's security settings in
the Kafka source's options, the Cassandra settings handed to the executors, and bad values
stopping the job before Spark starts, naming the variable; and the log of Spark's own times per batch."""

from __future__ import annotations

import json
import logging
import time

import pytest

from include.connections import kafka_java_config
from spark.cdc_stream import executor_env, kafka_source_options, main, parse_args

ARGS = ["--bootstrap-servers", "b1:9092,b2:9092", "--keyspace", "binance", "--checkpoint", "s3a://bucket/cdc"]
CASSANDRA_ENV = {"CDC_CASSANDRA_HOSTS": "10.0.0.1,10.0.0.2", "CDC_CASSANDRA_PORT": "9142",
                 "CDC_CASSANDRA_USERNAME": "pipeline", "CDC_CASSANDRA_PASSWORD": "s3cret"}
SASL_SSL = {"bootstrap.servers": "b1:9092,b2:9092", "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": "pipeline", "sasl.password": "kafka-s3cret", "ssl.ca.location": "/etc/kafka/ca.pem"}


def test_the_kafka_source_reads_with_the_connections_security():
    options = kafka_source_options(parse_args(ARGS), kafka_java_config(SASL_SSL))
    assert options["kafka.bootstrap.servers"] == "b1:9092,b2:9092" and options["failOnDataLoss"] == "true"
    assert options["kafka.security.protocol"] == "SASL_SSL" and options["kafka.sasl.mechanism"] == "SCRAM-SHA-512"
    assert options["kafka.sasl.jaas.config"].startswith("org.apache.kafka.common.security.scram.ScramLoginModule ")
    assert options["kafka.ssl.truststore.type"] == "PEM"
    assert options["kafka.ssl.truststore.location"] == "/etc/kafka/ca.pem"


def test_a_plaintext_source_has_the_options_it_always_had():
    options = kafka_source_options(parse_args(ARGS), kafka_java_config({}))
    assert options == {"kafka.bootstrap.servers": "b1:9092,b2:9092", "subscribePattern": r"binance\.binance\..*",
                       "startingOffsets": "earliest", "maxOffsetsPerTrigger": "20000", "failOnDataLoss": "true",
                       "kafka.fetch.max.wait.ms": "10", "kafka.request.timeout.ms": "10000",
                       "kafka.default.api.timeout.ms": "10000", "fetchOffset.numRetries": "18",
                       "fetchOffset.retryIntervalMs": "1000", "kafka.security.protocol": "PLAINTEXT"}


def test_executors_get_the_cassandra_settings_and_python_path_the_driver_was_given():
    env = {**CASSANDRA_ENV, "CDC_CASSANDRA_SSL_CA_CERTS": "/etc/cassandra/ca.pem",
           "CDC_CASSANDRA_SSL_CHECK_HOSTNAME": "false", "CDC_KAFKA_CLIENT_CONFIG": json.dumps(SASL_SSL),
           "HOME": "/home/airflow", "CDC_CASSANDRA_SSL_KEYFILE": "", "PYTHONPATH": "/opt/pipeline", "TZ": "UTC"}
    assert executor_env(env) == {
        "spark.executorEnv.PYTHONPATH": "/opt/pipeline", "spark.executorEnv.TZ": "UTC",
        "spark.executorEnv.CDC_CASSANDRA_HOSTS": "10.0.0.1,10.0.0.2", "spark.executorEnv.CDC_CASSANDRA_PORT": "9142",
        "spark.executorEnv.CDC_CASSANDRA_USERNAME": "pipeline", "spark.executorEnv.CDC_CASSANDRA_PASSWORD": "s3cret",
        "spark.executorEnv.CDC_CASSANDRA_SSL_CA_CERTS": "/etc/cassandra/ca.pem",
        "spark.executorEnv.CDC_CASSANDRA_SSL_CHECK_HOSTNAME": "false"}


@pytest.mark.parametrize(("env", "message"), [
    ({"CDC_KAFKA_CLIENT_CONFIG": "security.protocol=SASL_SSL"}, "CDC_KAFKA_CLIENT_CONFIG is not JSON"),
    ({"CDC_KAFKA_CLIENT_CONFIG": json.dumps({"security.protocol": "SASL_SSL", "sasl.mechanism": "GSSAPI"})},
     "sasl.mechanism 'GSSAPI' is not supported"),
    ({"CDC_CASSANDRA_SSL_CA_CERTS": "/nonexistent/ca.pem"}, "environment variable CDC_CASSANDRA_SSL_CA_CERTS"),
    ({"CDC_CASSANDRA_PORT": "90x2"}, "environment variable CDC_CASSANDRA_PORT must be a port number"),
])
def test_bad_settings_stop_the_job_before_spark_starts(monkeypatch, env, message):
    for name, value in {**CASSANDRA_ENV, **env}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit, match=f"cdc_stream: .*{message}"):
        main(ARGS)


def test_each_batch_logs_where_spark_says_its_time_went(spark, caplog):
    """SparkTimes on a real query, fed as the stream feeds it (at the start of each foreachBatch
    call): every batch with input logs Spark's own durations, the batch's foreachBatch call
    (addBatch) included, each batch once, in order."""
    from spark.cdc_stream import SparkTimes

    times = SparkTimes()
    source = spark.readStream.format("rate").option("rowsPerSecond", 50).load()
    seen: list[int] = []

    def each_batch(df, batch_id):
        times.log_last()
        if df.count():  # a batch's input rows are counted as it is read
            seen.append(batch_id)

    query = source.writeStream.foreachBatch(each_batch).trigger(processingTime="200 milliseconds").start()
    times.query = query
    try:
        with caplog.at_level(logging.INFO, logger="cdc_stream"):
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and sum(1 for r in caplog.records if "Spark's times" in r.message) < 3:
                time.sleep(0.1)
    finally:
        query.stop()
    lines = [r.message for r in caplog.records if "Spark's times" in r.message]
    assert len(lines) >= 3, (lines, seen)
    assert all("addBatch" in line and "triggerExecution" in line and "walCommit" in line for line in lines)
    logged = [int(line.split()[1].rstrip(":")) for line in lines]
    # batches that read input, each once, in order (the first ones may precede `times.query`)
    assert logged == sorted(set(logged)) and set(logged) <= set(seen)
    assert logged == list(range(logged[0], logged[0] + len(logged)))
    # from the second batch on, the wait since the batch before is reported
    assert "idle before it" in lines[-1]


def test_a_trigger_without_data_is_not_logged_and_does_not_hide_the_batch_after_it(caplog):
    """Spark reports progress for a trigger that found no data under the id of the batch still to
    run: that batch is still logged once it has run, with the wait since the batch before it; after
    a batch that was not seen, no wait is reported."""
    from spark.cdc_stream import SparkTimes

    def progress(batch_id, at, rows, trigger):
        return {"batchId": batch_id, "timestamp": f"2026-12-06T03:00:{at}Z", "numInputRows": rows,
                "durationMs": {"addBatch": trigger - 50, "triggerExecution": trigger}}

    times = SparkTimes()
    with caplog.at_level(logging.INFO, logger="cdc_stream"):
        for p in (None, progress(7, "00.000", 40, 400), progress(7, "00.000", 40, 400),
                  progress(8, "10.000", 0, 1), progress(8, "12.500", 5, 150),
                  progress(11, "40.000", 9, 200)):
            times.log(p)
    lines = [r.message for r in caplog.records if "Spark's times" in r.message]
    assert lines == ["batch 7: Spark's times (ms): addBatch 350, triggerExecution 400",
                     "batch 8: Spark's times (ms): addBatch 100, triggerExecution 150, idle before it 12100",
                     "batch 11: Spark's times (ms): addBatch 150, triggerExecution 200"]


def test_a_progress_that_cannot_be_read_is_logged_and_the_batch_goes_on(caplog):
    """log_last never raises into the batch: an unreachable JVM or a progress without its fields is a warning."""
    from spark.cdc_stream import SparkTimes

    class Unreachable:
        @property
        def lastProgress(self):  # noqa: N802 - PySpark's name
            raise RuntimeError("py4j: connection reset")

    class Malformed:
        lastProgress = {"batchId": 3, "numInputRows": 1}  # noqa: N815 - PySpark's name; no timestamp

    times = SparkTimes()
    with caplog.at_level(logging.WARNING, logger="cdc_stream"):
        for query in (Unreachable(), Malformed()):
            times.query = query
            times.log_last()
    assert "Spark's times of the last batch not logged: RuntimeError: py4j: connection reset" in caplog.text
    assert "Spark's times of the last batch not logged: KeyError: 'timestamp'" in caplog.text
