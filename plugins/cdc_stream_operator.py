"""SparkSubmitOperator for the CDC stream: arguments and secrets resolved from Connections at run time."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
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


# What spark/cdc_stream.py reads besides the contact points and credentials: the names are
# include.connections' (CassandraSettings.ENV_TLS, KAFKA_CLIENT_CONFIG_ENV), repeated here because
# plugins import nothing of the project; tests/unit/test_connections.py checks that they agree.
CASSANDRA_TLS_ENV = {"ssl_ca_certs": "CDC_CASSANDRA_SSL_CA_CERTS", "ssl_certfile": "CDC_CASSANDRA_SSL_CERTFILE",
                     "ssl_keyfile": "CDC_CASSANDRA_SSL_KEYFILE",
                     "ssl_check_hostname": "CDC_CASSANDRA_SSL_CHECK_HOSTNAME"}
KAFKA_CLIENT_CONFIG_ENV = "CDC_KAFKA_CLIENT_CONFIG"


def stream_env(hosts: str, port: str | int, username: str, password: str,
               cassandra_extra: Mapping[str, object] | None = None,
               kafka_extra: Mapping[str, object] | None = None) -> dict[str, str]:
    """What spark/cdc_stream.py reads from its environment (secrets stay off the command line): the
    Cassandra connection's contact points, credentials and TLS fields of its extra, and the Kafka
    connection's extra as JSON (the job translates its security settings for the Java client and
    checks both)."""
    env = {
        "PYTHONPATH": str(REPO),
        "TZ": "UTC",
        "CDC_CASSANDRA_HOSTS": hosts,
        "CDC_CASSANDRA_PORT": str(port),
        "CDC_CASSANDRA_USERNAME": username,
        "CDC_CASSANDRA_PASSWORD": password,
    }
    for field, name in CASSANDRA_TLS_ENV.items():
        value = (cassandra_extra or {}).get(field)
        if value is not None and value != "":
            env[name] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    if kafka_extra:
        env[KAFKA_CLIENT_CONFIG_ENV] = json.dumps(dict(kafka_extra))
    return env


def stream_args(brokers: str, keyspace: str, checkpoint: str, available_now: bool = False) -> list[str]:
    """spark/cdc_stream.py's arguments."""
    return ["--bootstrap-servers", brokers, "--keyspace", keyspace, "--checkpoint", checkpoint,
            *(["--available-now"] if available_now else [])]


class CdcStreamSubmitOperator(SparkSubmitOperator):
    """Submits spark/cdc_stream.py. Kafka brokers come from `kafka_conn_id`, Cassandra from
    `cassandra_conn_id` (contact points, credentials, TLS and the Kafka client's security settings
    passed through the environment, never on the command line); `mode` is `continuous` or
    `available_now`."""

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
        master = BaseHook.get_connection(self._conn_id).host or ""
        if not master.startswith("local") and "://" not in checkpoint:
            self.log.warning("checkpoint %s is a local path but the Spark master is %s: unless every host that may "
                             "run the driver mounts it, point CDC_CHECKPOINT_DIR (or the DAG's checkpoint param) "
                             "at shared storage (hdfs://, s3a://)", checkpoint, master)
        self.application_args = stream_args(brokers, cass.schema, checkpoint, self.mode == "available_now")
        secrets_env = stream_env(cass.host or "127.0.0.1", cass.port or 9042, cass.login or "", cass.password or "",
                                 cass.extra_dejson, kafka.extra_dejson)
        self.env_vars = {**(self.env_vars or {}), **secrets_env}
        self.log.info("submitting the CDC stream (%s) from %s to keyspace %s, checkpoint %s", self.mode, brokers,
                      cass.schema, checkpoint)
        super().execute(context)
