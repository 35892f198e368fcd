"""Opening connections, in one place: Postgres, Cassandra, Kafka Connect and Kafka.

Two layers. `CassandraSettings` and `cassandra_session` need only the Cassandra driver: the Spark
job and the local stack's status report use them with settings of their own. The context managers
`postgres`, `cassandra`, `http` and `kafka_admin` resolve an Airflow Connection by id
(through the provider hooks) and close what they opened; they import Airflow only when called, so
this module stays importable without it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from include.names import CASSANDRA_CONN_ID, KAFKA_CONN_ID, KAFKA_CONNECT_CONN_ID, POSTGRES_CONN_ID


class ConnectionSettingsError(ValueError):
    """A connection lacks something the pipeline needs (the message names the connection and the field)."""


@dataclass(frozen=True)
class CassandraSettings:
    hosts: tuple[str, ...]
    port: int
    username: str | None
    password: str | None
    keyspace: str
    # the read consistency level the bridge uses (the connection's extra `consistency`); None: chosen by replication
    consistency: str | None = None

    @classmethod
    def from_connection(cls, conn: Any) -> CassandraSettings:
        """From an Airflow Connection: host lists the contact points (comma-separated), schema is the keyspace,
        the extra may hold `consistency`."""
        if not conn.schema:
            raise ConnectionSettingsError(f"connection {conn.conn_id} names no keyspace (its schema field)")
        hosts = tuple(h.strip() for h in (conn.host or "127.0.0.1").split(",") if h.strip())
        consistency = (getattr(conn, "extra_dejson", None) or {}).get("consistency") or None
        return cls(hosts, int(conn.port or 9042), conn.login, conn.password, conn.schema, consistency)

    # what the Spark job reads from its environment (plugins/cdc_stream_operator.py sets it):
    # secrets stay off the command line, which other users of the machine can read
    ENV_HOSTS = "CDC_CASSANDRA_HOSTS"
    ENV_PORT = "CDC_CASSANDRA_PORT"
    ENV_USERNAME = "CDC_CASSANDRA_USERNAME"
    ENV_PASSWORD = "CDC_CASSANDRA_PASSWORD"

    @classmethod
    def from_env(cls, keyspace: str, env: Mapping[str, str] = os.environ) -> CassandraSettings:
        missing = [k for k in (cls.ENV_HOSTS, cls.ENV_USERNAME, cls.ENV_PASSWORD) if not env.get(k)]
        if missing:
            raise ConnectionSettingsError(f"environment variable(s) {', '.join(missing)} not set")
        hosts = tuple(h.strip() for h in env[cls.ENV_HOSTS].split(",") if h.strip())
        return cls(hosts, int(env.get(cls.ENV_PORT) or 9042), env[cls.ENV_USERNAME], env[cls.ENV_PASSWORD], keyspace)


def open_cassandra(settings: CassandraSettings, keyspace: str | None = None) -> tuple[Any, Any]:
    """A (cluster, session) pair, token- and DC-aware, protocol v5; the caller shuts the cluster down."""
    from cassandra.auth import PlainTextAuthProvider
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy

    auth = PlainTextAuthProvider(settings.username, settings.password) if settings.username else None
    profile = ExecutionProfile(load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy()),
                               request_timeout=30)
    cluster = Cluster(list(settings.hosts), port=settings.port, auth_provider=auth, protocol_version=5,
                      execution_profiles={EXEC_PROFILE_DEFAULT: profile}, connect_timeout=10)
    return cluster, cluster.connect(keyspace)


@contextmanager
def cassandra_session(settings: CassandraSettings, keyspace: str | None = None) -> Iterator[Any]:
    """A Cassandra session for the duration of the block."""
    cluster, session = open_cassandra(settings, keyspace)
    try:
        yield session
    finally:
        cluster.shutdown()


# --------------------------------------------------------------------------- through Airflow Connections


def cassandra_settings(conn_id: str = CASSANDRA_CONN_ID) -> CassandraSettings:
    from airflow.sdk import BaseHook

    return CassandraSettings.from_connection(BaseHook.get_connection(conn_id))


@contextmanager
def cassandra(conn_id: str = CASSANDRA_CONN_ID) -> Iterator[tuple[Any, str]]:
    """(session, keyspace) of an Airflow Cassandra connection (the keyspace is its schema field)."""
    settings = cassandra_settings(conn_id)
    with cassandra_session(settings) as session:
        yield session, settings.keyspace


@contextmanager
def postgres(conn_id: str = POSTGRES_CONN_ID) -> Iterator[Any]:
    """A DB-API connection of an Airflow Postgres connection, closed after the block (not committed:
    the code inside commits what it means to)."""
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    conn = PostgresHook(postgres_conn_id=conn_id).get_conn()
    try:
        yield conn
    finally:
        conn.close()


@contextmanager
def http(conn_id: str = KAFKA_CONNECT_CONN_ID) -> Iterator[tuple[str, Any]]:
    """(base URL, requests session) of an Airflow HTTP connection: scheme, host, port, auth and
    headers as HttpHook builds them (include.cdc.kafka_connect.client() wraps Kafka Connect's)."""
    from airflow.providers.http.hooks.http import HttpHook

    hook = HttpHook(method="GET", http_conn_id=conn_id)
    session = hook.get_conn()
    try:
        yield hook.base_url, session
    finally:
        session.close()


@contextmanager
def kafka_admin(conn_id: str = KAFKA_CONN_ID) -> Iterator[Any]:
    """A confluent-kafka AdminClient of an Airflow Kafka connection (its extra holds the client config)."""
    from airflow.providers.apache.kafka.hooks.client import KafkaAdminClientHook

    yield KafkaAdminClientHook(kafka_config_id=conn_id).get_conn
