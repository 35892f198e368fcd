"""SparkSubmitOperator for the CDC stream: arguments and secrets resolved from Connections at run time."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

REPO = Path(__file__).resolve().parent.parent


def spark_jars(folder: str | None = None) -> str:
    """The Kafka source and Cassandra connector jars, as local paths (resolved by Maven at install)."""
    path = Path(folder or os.environ.get("SPARK_JARS_DIR") or REPO / ".cache" / "jvm" / "spark-jars")
    jars = sorted(str(p) for p in path.glob("*.jar"))
    if not jars:
        raise FileNotFoundError(f"no jars in {path}: run `make install`, or set SPARK_JARS_DIR")
    return ",".join(jars)


def stream_env(hosts: str, port: str | int, username: str, password: str) -> dict[str, str]:
    """What spark/cdc_stream.py reads from its environment (secrets stay off the command line)."""
    return {
        "PYTHONPATH": str(REPO),
        "TZ": "UTC",
        "CDC_CASSANDRA_HOSTS": hosts,
        "CDC_CASSANDRA_PORT": str(port),
        "CDC_CASSANDRA_USERNAME": username,
        "CDC_CASSANDRA_PASSWORD": password,
    }


def stream_args(brokers: str, keyspace: str, checkpoint: str, available_now: bool = False) -> list[str]:
    """spark/cdc_stream.py's arguments."""
    return ["--bootstrap-servers", brokers, "--keyspace", keyspace, "--checkpoint", checkpoint,
            *(["--available-now"] if available_now else [])]


class CdcStreamSubmitOperator(SparkSubmitOperator):
    """Submits spark/cdc_stream.py. Kafka brokers come from `kafka_conn_id`, Cassandra from
    `cassandra_conn_id` (contact points and credentials passed through the environment, never on
    the command line); `mode` is `continuous` or `available_now`."""

    template_fields = (*SparkSubmitOperator.template_fields, "mode", "checkpoint")

    def __init__(self, *, mode: str = "continuous", checkpoint: str = "", kafka_conn_id: str = "kafka_default",
                 cassandra_conn_id: str = "cassandra_default", **kwargs: Any) -> None:
        kwargs.setdefault("application", str(REPO / "spark" / "cdc_stream.py"))
        kwargs.setdefault("name", "binance-cdc-stream")
        super().__init__(**kwargs)
        self.mode = mode
        self.checkpoint = checkpoint
        self.kafka_conn_id = kafka_conn_id
        self.cassandra_conn_id = cassandra_conn_id

    def execute(self, context: Any) -> None:
        from airflow.sdk import BaseHook

        if self.mode not in ("continuous", "available_now"):
            raise ValueError(f"mode must be continuous or available_now, got {self.mode!r}")
        kafka = BaseHook.get_connection(self.kafka_conn_id)
        brokers = kafka.extra_dejson.get("bootstrap.servers")
        if not brokers:
            raise ValueError(f"connection {self.kafka_conn_id} has no bootstrap.servers in its extra")
        cass = BaseHook.get_connection(self.cassandra_conn_id)
        if not cass.schema:
            raise ValueError(f"connection {self.cassandra_conn_id} names no keyspace (schema)")
        checkpoint = self.checkpoint or os.environ.get("CDC_CHECKPOINT_DIR") or str(
            REPO / ".run" / "spark" / "checkpoints" / "cdc_stream")
        self.jars = self.jars or spark_jars()
        self.application_args = stream_args(brokers, cass.schema, checkpoint, self.mode == "available_now")
        secrets_env = stream_env(cass.host or "127.0.0.1", cass.port or 9042, cass.login or "", cass.password or "")
        self.env_vars = {**(self.env_vars or {}), **secrets_env}
        self.log.info("submitting the CDC stream (%s) from %s to keyspace %s, checkpoint %s", self.mode, brokers,
                      cass.schema, checkpoint)
        super().execute(context)
