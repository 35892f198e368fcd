"""Opening connections, in one place: Postgres, Cassandra, Kafka Connect and Kafka.

Two layers. `CassandraSettings` (TLS included) and `cassandra_session` need only the Cassandra
driver, and `kafka_java_config` translates the Kafka connection's librdkafka security settings
for the Java client: the Spark job and the local stack's status report use them with settings of
their own (the job's come from its environment). The context managers
`postgres`, `cassandra`, `http` and `kafka_admin` resolve an Airflow Connection by id
(through the provider hooks) and close what they opened; they import Airflow only when called, so
this module stays importable without it.
"""

from __future__ import annotations

import json
import os
import ssl
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from include.names import CASSANDRA_CONN_ID, KAFKA_CONN_ID, KAFKA_CONNECT_CONN_ID, POSTGRES_CONN_ID


class ConnectionSettingsError(ValueError):
    """A connection lacks something the pipeline needs (the message names the connection and the field)."""


def _boolean(value: Any, name: str) -> bool:
    """A JSON boolean, or the text true/false (any case: environment variables are text)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ConnectionSettingsError(f"{name} must be true or false, got {value!r}")


def _port(value: Any, name: str) -> int:
    """A TCP port number (1-65535), from an int or its text."""
    try:
        port = int(str(value).strip())
    except ValueError:
        port = 0
    if not 0 < port < 65536:
        raise ConnectionSettingsError(f"{name} must be a port number (1-65535), got {value!r}")
    return port


@dataclass(frozen=True)
class CassandraSettings:
    hosts: tuple[str, ...]
    port: int
    username: str | None
    password: str | None
    keyspace: str
    # the read consistency level the bridge uses (the connection's extra `consistency`); None: chosen by replication
    consistency: str | None = None
    # TLS, on when a CA file is set: the CA that signed the nodes' certificates, and for mutual TLS
    # the client's certificate (PEM; with its key unless `ssl_keyfile` holds it)
    ssl_ca_certs: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    # whether each node's certificate must name the address the driver connects to
    ssl_check_hostname: bool = True

    @classmethod
    def from_connection(cls, conn: Any) -> CassandraSettings:
        """From an Airflow Connection: host lists the contact points (comma-separated), schema is the keyspace,
        the extra may hold `consistency` and the TLS settings (`ssl_ca_certs`, `ssl_certfile`,
        `ssl_keyfile`, `ssl_check_hostname`), checked here: the files must load."""
        if not conn.schema:
            raise ConnectionSettingsError(f"connection {conn.conn_id} names no keyspace (its schema field)")
        hosts = tuple(h.strip() for h in (conn.host or "127.0.0.1").split(",") if h.strip())
        extra = getattr(conn, "extra_dejson", None) or {}

        def name(field: str) -> str:
            return f"extra field {field} of connection {conn.conn_id}"

        settings = cls(hosts, int(conn.port or 9042), conn.login, conn.password, conn.schema,
                       extra.get("consistency") or None, **cls._tls_fields(extra, name))
        settings.ssl_context(name)
        return settings

    # what the Spark job reads from its environment (plugins/cdc_stream_operator.py sets it):
    # secrets stay off the command line, which other users of the machine can read
    ENV_HOSTS = "CDC_CASSANDRA_HOSTS"
    ENV_PORT = "CDC_CASSANDRA_PORT"
    ENV_USERNAME = "CDC_CASSANDRA_USERNAME"
    ENV_PASSWORD = "CDC_CASSANDRA_PASSWORD"
    # the TLS fields, each from the variable of the connection's extra field of the same name
    ENV_TLS = {"ssl_ca_certs": "CDC_CASSANDRA_SSL_CA_CERTS", "ssl_certfile": "CDC_CASSANDRA_SSL_CERTFILE",
               "ssl_keyfile": "CDC_CASSANDRA_SSL_KEYFILE", "ssl_check_hostname": "CDC_CASSANDRA_SSL_CHECK_HOSTNAME"}

    @classmethod
    def env_names(cls) -> tuple[str, ...]:
        """Every variable from_env reads (the Spark job passes them on to its executors)."""
        return (cls.ENV_HOSTS, cls.ENV_PORT, cls.ENV_USERNAME, cls.ENV_PASSWORD, *cls.ENV_TLS.values())

    @classmethod
    def from_env(cls, keyspace: str, env: Mapping[str, str] = os.environ) -> CassandraSettings:
        """From the CDC_CASSANDRA_* variables, checked like from_connection (TLS files must load)."""
        missing = [k for k in (cls.ENV_HOSTS, cls.ENV_USERNAME, cls.ENV_PASSWORD) if not env.get(k)]
        if missing:
            raise ConnectionSettingsError(f"environment variable(s) {', '.join(missing)} not set")
        hosts = tuple(h.strip() for h in env[cls.ENV_HOSTS].split(",") if h.strip())
        tls = {field: env[var] for field, var in cls.ENV_TLS.items() if env.get(var)}

        def name(field: str) -> str:
            return f"environment variable {cls.ENV_TLS[field]}"

        port = _port(env.get(cls.ENV_PORT) or 9042, f"environment variable {cls.ENV_PORT}")
        settings = cls(hosts, port, env[cls.ENV_USERNAME], env[cls.ENV_PASSWORD],
                       keyspace, **cls._tls_fields(tls, name))
        settings.ssl_context(name)
        return settings

    @staticmethod
    def _tls_fields(extra: Mapping[str, Any], name: Callable[[str], str]) -> dict[str, Any]:
        """The TLS fields of a connection's extra (or of the environment, by field name), checked for
        shape; `name(field)` says where a field was set, for the error."""
        fields: dict[str, Any] = {f: extra[f] for f in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
                                  if extra.get(f) not in (None, "")}
        for f, value in fields.items():
            if not isinstance(value, str):
                raise ConnectionSettingsError(f"{name(f)} must be a file path, got {value!r}")
        if "ssl_check_hostname" in extra:
            fields["ssl_check_hostname"] = _boolean(extra["ssl_check_hostname"], name("ssl_check_hostname"))
        if "ssl_ca_certs" not in fields:
            stray = [f for f in ("ssl_certfile", "ssl_keyfile", "ssl_check_hostname") if f in fields]
            if stray:
                raise ConnectionSettingsError(f"{name(stray[0])} is set but ssl_ca_certs is not: TLS to Cassandra "
                                              "is on only with the CA file that signed the nodes' certificates")
        if "ssl_keyfile" in fields and "ssl_certfile" not in fields:
            raise ConnectionSettingsError(f"{name('ssl_keyfile')} is set without ssl_certfile (the client "
                                          "certificate it is the key of)")
        return fields

    def ssl_context(self, name: Callable[[str], str] | None = None) -> ssl.SSLContext | None:
        """The driver's TLS context (None: no TLS): the nodes' certificates verified against
        `ssl_ca_certs`, their names against the address connected to unless `ssl_check_hostname`
        is false, and the client certificate presented for mutual TLS. A file that does not load
        raises ConnectionSettingsError naming the field (`name(field)` says where it was set)."""
        if not self.ssl_ca_certs:
            return None
        where = name or (lambda f: f"Cassandra setting {f}")
        # TLS_CLIENT: certificates required, TLS 1.2 at least, host names checked unless switched off
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = self.ssl_check_hostname
        try:
            context.load_verify_locations(cafile=self.ssl_ca_certs)
        except (OSError, ssl.SSLError) as e:
            raise ConnectionSettingsError(f"{where('ssl_ca_certs')}: no CA certificate could be loaded from "
                                          f"{self.ssl_ca_certs!r} ({e})") from e
        if self.ssl_certfile:
            try:
                context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile)
            except (OSError, ssl.SSLError) as e:
                fields, files = where("ssl_certfile"), repr(self.ssl_certfile)
                if self.ssl_keyfile:
                    fields, files = f"{fields} with {where('ssl_keyfile')}", f"{files} and {self.ssl_keyfile!r}"
                raise ConnectionSettingsError(f"{fields}: no client certificate and key could be loaded from "
                                              f"{files} ({e})") from e
        return context


# the driver's default reconnection backs off up to 10 minutes: a node back after a restart would
# wait that long before a session used it again; these delays stay within seconds, for ever
RECONNECT_BASE_SECONDS = 0.5
RECONNECT_MAX_SECONDS = 5.0


def cassandra_cluster(settings: CassandraSettings, schema_agreement_wait: float | None = None) -> Any:
    """A Cluster (not yet connected): token- and DC-aware, protocol v5, LOCAL_QUORUM unless a statement
    sets its own level, TLS and authentication as the settings say, reconnecting within seconds.
    `schema_agreement_wait`: how long a schema change waits for every node to report the same schema
    version before it returns (the driver's default, 10 s, when None)."""
    from cassandra import ConsistencyLevel
    from cassandra.auth import PlainTextAuthProvider
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import DCAwareRoundRobinPolicy, ExponentialReconnectionPolicy, TokenAwarePolicy

    auth = PlainTextAuthProvider(settings.username, settings.password) if settings.username else None
    # explicit, not the driver's LOCAL_ONE: what statements without a level of their own use (the
    # retention's deletes and sink_retention, the health checks' reads, schema migrations)
    profile = ExecutionProfile(load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy()),
                               request_timeout=30, consistency_level=ConsistencyLevel.LOCAL_QUORUM)
    reconnect = ExponentialReconnectionPolicy(RECONNECT_BASE_SECONDS, RECONNECT_MAX_SECONDS, max_attempts=None)
    agreement = {} if schema_agreement_wait is None else {"max_schema_agreement_wait": schema_agreement_wait}
    return Cluster(list(settings.hosts), port=settings.port, auth_provider=auth, protocol_version=5,
                   execution_profiles={EXEC_PROFILE_DEFAULT: profile}, connect_timeout=10,
                   ssl_context=settings.ssl_context(), reconnection_policy=reconnect, **agreement)


def open_cassandra(settings: CassandraSettings, keyspace: str | None = None,
                   schema_agreement_wait: float | None = None) -> tuple[Any, Any]:
    """A (cluster, session) pair of cassandra_cluster; the caller shuts the cluster down."""
    cluster = cassandra_cluster(settings, schema_agreement_wait)
    return cluster, cluster.connect(keyspace)


@contextmanager
def cassandra_session(settings: CassandraSettings, keyspace: str | None = None,
                      schema_agreement_wait: float | None = None) -> Iterator[Any]:
    """A Cassandra session for the duration of the block."""
    cluster, session = open_cassandra(settings, keyspace, schema_agreement_wait)
    try:
        yield session
    finally:
        cluster.shutdown()


# --------------------------------------------------------------------------- Kafka for the Spark job

# The `kafka_default` connection's extra is a confluent-kafka (librdkafka) config: the health checks'
# AdminClient takes it as it is. The Spark job's Kafka source is the Java client, whose names differ:
# the cdc_stream operator passes the extra in this variable (JSON; secrets never on the command
# line) and the job translates its security settings with kafka_java_config.
KAFKA_CLIENT_CONFIG_ENV = "CDC_KAFKA_CLIENT_CONFIG"

KAFKA_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
# the SASL mechanisms a user name and password log in with, and the Java client's login module of each
KAFKA_LOGIN_MODULES = {
    "PLAIN": "org.apache.kafka.common.security.plain.PlainLoginModule",
    "SCRAM-SHA-256": "org.apache.kafka.common.security.scram.ScramLoginModule",
    "SCRAM-SHA-512": "org.apache.kafka.common.security.scram.ScramLoginModule",
}
# security settings translated; any other ssl.* or sasl.* setting (client certificates, Kerberos,
# OAuth) and these librdkafka-only switches are refused rather than dropped, so the stream never
# connects with less than the connection asks for
_KAFKA_TRANSLATED = frozenset({"security.protocol", "sasl.mechanism", "sasl.mechanisms", "sasl.username",
                               "sasl.password", "ssl.ca.location", "ssl.endpoint.identification.algorithm"})
_KAFKA_REFUSED = frozenset({"enable.ssl.certificate.verification", "oauth_cb"})


def _jaas_quoted(value: str) -> str:
    """A value for a JAAS config, in double quotes (its parser reads backslash escapes there)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def kafka_java_config(extra: Mapping[str, Any], where: str = "the Kafka connection's extra") -> dict[str, str]:
    """The Spark Kafka source's security options (the Java client's names, `kafka.`-prefixed) for the
    librdkafka settings of `extra`: security.protocol; sasl.mechanism(s) PLAIN or SCRAM-SHA-256/512
    with sasl.username and sasl.password (a JAAS config); ssl.ca.location (a PEM truststore);
    ssl.endpoint.identification.algorithm. Settings that are not about security (bootstrap.servers,
    client tuning) are the AdminClient's and are left out. Anything it cannot translate raises
    ConnectionSettingsError naming the setting and `where` it was set."""
    untranslated = sorted(k for k in extra if (k.startswith(("ssl.", "sasl.")) and k not in _KAFKA_TRANSLATED)
                          or k in _KAFKA_REFUSED)
    if untranslated:
        raise ConnectionSettingsError(
            f"{where}: {', '.join(untranslated)} cannot be passed on to the Spark job's Kafka client (it takes "
            f"{', '.join(sorted(_KAFKA_TRANSLATED))})")
    protocol = str(extra.get("security.protocol") or "PLAINTEXT").strip().upper()
    if protocol not in KAFKA_PROTOCOLS:
        raise ConnectionSettingsError(f"{where}: security.protocol {extra.get('security.protocol')!r} is not one of "
                                      f"{', '.join(KAFKA_PROTOCOLS)}")
    out = {"kafka.security.protocol": protocol}
    sasl = [k for k in ("sasl.mechanism", "sasl.mechanisms", "sasl.username", "sasl.password") if extra.get(k)]
    if protocol.startswith("SASL_"):
        out.update(_kafka_sasl(extra, where))
    elif sasl:
        raise ConnectionSettingsError(f"{where}: {', '.join(sasl)} set but security.protocol is {protocol} "
                                      "(SASL needs SASL_SSL or SASL_PLAINTEXT)")
    ca = extra.get("ssl.ca.location")
    if ca:
        if not protocol.endswith("SSL"):
            raise ConnectionSettingsError(f"{where}: ssl.ca.location set but security.protocol is {protocol} "
                                          "(TLS needs SSL or SASL_SSL)")
        if not isinstance(ca, str) or ca.strip().lower() == "probe":
            raise ConnectionSettingsError(f"{where}: ssl.ca.location must be the path of a PEM file of CA "
                                          f"certificates, got {ca!r}")
        out["kafka.ssl.truststore.type"] = "PEM"
        out["kafka.ssl.truststore.location"] = ca
    if "ssl.endpoint.identification.algorithm" in extra:
        algorithm = str(extra["ssl.endpoint.identification.algorithm"]).strip().lower()
        if algorithm not in ("https", "none"):
            raise ConnectionSettingsError(f"{where}: ssl.endpoint.identification.algorithm must be https or none, "
                                          f"got {extra['ssl.endpoint.identification.algorithm']!r}")
        # the Java client switches the check off with an empty value
        out["kafka.ssl.endpoint.identification.algorithm"] = "https" if algorithm == "https" else ""
    return out


def _kafka_sasl(extra: Mapping[str, Any], where: str) -> dict[str, str]:
    """The SASL options of kafka_java_config: the mechanism and its JAAS login."""
    given = {k: str(extra[k]).strip().upper() for k in ("sasl.mechanism", "sasl.mechanisms") if extra.get(k)}
    if len(set(given.values())) > 1:
        raise ConnectionSettingsError(f"{where}: sasl.mechanism {extra['sasl.mechanism']!r} and sasl.mechanisms "
                                      f"{extra['sasl.mechanisms']!r} differ")
    if not given:
        raise ConnectionSettingsError(f"{where}: security.protocol is SASL but sasl.mechanism is not set (the "
                                      f"clients' default, GSSAPI, is not supported; use one of "
                                      f"{', '.join(KAFKA_LOGIN_MODULES)})")
    key, mechanism = next(iter(given.items()))
    if mechanism not in KAFKA_LOGIN_MODULES:
        raise ConnectionSettingsError(f"{where}: {key} {extra[key]!r} is not supported for the Spark job "
                                      f"(supported: {', '.join(KAFKA_LOGIN_MODULES)})")
    missing = [k for k in ("sasl.username", "sasl.password") if not extra.get(k)]
    if missing:
        raise ConnectionSettingsError(f"{where}: {mechanism} needs {' and '.join(missing)}")
    login = (f"{KAFKA_LOGIN_MODULES[mechanism]} required username={_jaas_quoted(str(extra['sasl.username']))} "
             f"password={_jaas_quoted(str(extra['sasl.password']))};")
    return {"kafka.sasl.mechanism": mechanism, "kafka.sasl.jaas.config": login}


def kafka_java_config_from_env(env: Mapping[str, str] = os.environ) -> dict[str, str]:
    """kafka_java_config of the JSON object in CDC_KAFKA_CLIENT_CONFIG (unset: a PLAINTEXT client)."""
    raw = env.get(KAFKA_CLIENT_CONFIG_ENV)
    if not raw:
        return kafka_java_config({}, f"environment variable {KAFKA_CLIENT_CONFIG_ENV}")
    try:
        extra = json.loads(raw)
    except ValueError as e:
        # the value is not quoted back: it may hold a password
        raise ConnectionSettingsError(f"environment variable {KAFKA_CLIENT_CONFIG_ENV} is not JSON ({e})") from e
    if not isinstance(extra, dict):
        raise ConnectionSettingsError(f"environment variable {KAFKA_CLIENT_CONFIG_ENV} must hold a JSON object "
                                      f"(the Kafka connection's extra), got a {type(extra).__name__}")
    return kafka_java_config(extra, f"environment variable {KAFKA_CLIENT_CONFIG_ENV} (the Kafka connection's extra)")


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


def http_base_urls(conn_id: str, host: str | None, schema: str | None, port: int | None) -> list[str]:
    """The base URL of each comma-separated host of an HTTP connection, each built as HttpHook builds
    its one: a host holding `://` is a URL as it stands, any other is `schema://host` (schema http by
    default); the connection's port, if set, is appended to each."""
    hosts = [h.strip() for h in (host or "").split(",")]
    if not any(hosts) or not all(hosts):
        raise ConnectionSettingsError(f"connection {conn_id}: host {host!r} names no host, or an empty one "
                                      "between commas (one host, or several separated by commas)")
    urls = [h if "://" in h else f"{schema or 'http'}://{h}" for h in hosts]
    return [f"{u}:{port}" if port else u for u in urls]


@contextmanager
def http(conn_id: str = KAFKA_CONNECT_CONN_ID) -> Iterator[tuple[list[str], Any]]:
    """(base URLs, requests session) of an Airflow HTTP connection: scheme, host, port, auth and
    headers as HttpHook builds them; a base URL per comma-separated host (`http_base_urls`), e.g. the
    workers of a Kafka Connect group (include.cdc.kafka_connect.client() tries them in turn)."""
    from airflow.providers.http.hooks.http import HttpHook

    hook = HttpHook(method="GET", http_conn_id=conn_id)
    conn = hook.get_connection(conn_id)
    urls = http_base_urls(conn_id, conn.host, conn.schema, conn.port)
    session = hook.get_conn()
    try:
        yield urls, session
    finally:
        session.close()


@contextmanager
def kafka_admin(conn_id: str = KAFKA_CONN_ID) -> Iterator[Any]:
    """A confluent-kafka AdminClient of an Airflow Kafka connection (its extra holds the client config)."""
    from airflow.providers.apache.kafka.hooks.client import KafkaAdminClientHook

    yield KafkaAdminClientHook(kafka_config_id=conn_id).get_conn
