"""include/connections.py's settings for secured clusters, without the clusters: Cassandra's TLS
context from generated certificates (checked by real TLS handshakes with a local server), its
session defaults, the Kafka connection's security settings translated for the Spark job's Java
client, and every bad value refused naming the connection (or variable) and the field."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import re
import socket
import ssl
import threading
from itertools import islice
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from include.connections import (
    KAFKA_CLIENT_CONFIG_ENV,
    CassandraSettings,
    ConnectionSettingsError,
    cassandra_cluster,
    kafka_java_config,
    kafka_java_config_from_env,
)

# ------------------------------------------------------------------ certificates, generated per test session


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _certificate(cn: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
                 addresses: tuple[str, ...] = ()) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A key and its certificate: a CA's (self-signed) without `issuer`, else one it signs for `addresses`."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(cn)).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(days=1)))
    if issuer is None:
        builder = builder.issuer_name(_name(cn)).add_extension(x509.BasicConstraints(ca=True, path_length=None),
                                                               critical=True)
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
            decipher_only=False), critical=True)
        builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        return builder.sign(key, hashes.SHA256()), key
    ca_cert, ca_key = issuer
    sans = [x509.IPAddress(ipaddress.ip_address(a)) if a[0].isdigit() else x509.DNSName(a) for a in addresses]
    builder = builder.issuer_name(ca_cert.subject).add_extension(
        x509.BasicConstraints(ca=False, path_length=None), critical=True)
    builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                                    critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def _write(folder: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[str, str]:
    cert_path, key_path = folder / f"{stem}.pem", folder / f"{stem}-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> SimpleNamespace:
    """A CA; a node certificate it signed for 127.0.0.1 and localhost; a client certificate it signed;
    another CA that signed nothing here."""
    folder = tmp_path_factory.mktemp("pki")
    ca = _certificate("test CA")
    ca_file, _ = _write(folder, "ca", *ca)
    node_file, node_key = _write(folder, "node", *_certificate("cassandra node", ca, ("127.0.0.1", "localhost")))
    client_file, client_key = _write(folder, "client", *_certificate("pipeline", ca))
    other_ca_file, _ = _write(folder, "other-ca", *_certificate("another CA"))
    return SimpleNamespace(folder=folder, ca=ca_file, node=node_file, node_key=node_key, client=client_file,
                           client_key=client_key, other_ca=other_ca_file)


def _conn(extra: dict | None = None, **fields) -> SimpleNamespace:
    """An Airflow Connection as CassandraSettings.from_connection reads it."""
    base = {"conn_id": "cassandra_default", "host": "10.0.0.1, 10.0.0.2", "port": 9142, "login": "pipeline",
            "password": "s3cret", "schema": "binance"}
    return SimpleNamespace(**{**base, **fields, "extra_dejson": extra or {}})


class _TlsServer:
    """A one-connection TLS server on 127.0.0.1 presenting the node certificate; with `client_ca` it
    requires a client certificate signed by it. `peer` is the client certificate it saw."""

    def __init__(self, pki: SimpleNamespace, client_ca: str | None = None) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(pki.node, pki.node_key)
        if client_ca:
            self.context.verify_mode = ssl.CERT_REQUIRED
            self.context.load_verify_locations(client_ca)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(10)
        self.port = self.listener.getsockname()[1]
        self.peer: dict | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        with conn:
            try:
                with self.context.wrap_socket(conn, server_side=True) as tls:
                    self.peer = tls.getpeercert()
                    tls.sendall(b"ok")
            except (OSError, ssl.SSLError):
                pass

    def handshake(self, context: ssl.SSLContext, server_hostname: str) -> bytes:
        """What a client with `context` reads after its handshake, as the driver wraps its socket."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as raw, \
                context.wrap_socket(raw, server_hostname=server_hostname) as tls:
            return tls.recv(2)

    def close(self) -> None:
        self.listener.close()
        self.thread.join(timeout=10)


@pytest.fixture
def server(pki):
    servers: list[_TlsServer] = []

    def start(client_ca: str | None = None) -> _TlsServer:
        servers.append(_TlsServer(pki, client_ca))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


# ------------------------------------------------------------------ Cassandra: TLS


def test_no_tls_without_a_ca_file():
    settings = CassandraSettings.from_connection(_conn())
    assert settings.hosts == ("10.0.0.1", "10.0.0.2") and settings.port == 9142 and settings.keyspace == "binance"
    assert settings.ssl_context() is None


def test_the_tls_context_trusts_the_connections_ca_and_checks_names(pki, server):
    settings = CassandraSettings.from_connection(_conn({"ssl_ca_certs": pki.ca}))
    context = settings.ssl_context()
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "test CA"),),)]
    assert server().handshake(context, "127.0.0.1") == b"ok"
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        server().handshake(context, "10.9.9.9")


def test_a_node_signed_by_another_ca_is_refused(pki, server):
    context = CassandraSettings.from_connection(_conn({"ssl_ca_certs": pki.other_ca})).ssl_context()
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        server().handshake(context, "127.0.0.1")


@pytest.mark.parametrize("value", [False, "false", "FALSE"])
def test_ssl_check_hostname_false_still_verifies_the_ca(pki, server, value):
    context = CassandraSettings.from_connection(
        _conn({"ssl_ca_certs": pki.ca, "ssl_check_hostname": value})).ssl_context()
    assert context.verify_mode == ssl.CERT_REQUIRED and not context.check_hostname
    assert server().handshake(context, "10.9.9.9") == b"ok"
    other = CassandraSettings.from_connection(
        _conn({"ssl_ca_certs": pki.other_ca, "ssl_check_hostname": value})).ssl_context()
    with pytest.raises(ssl.SSLCertVerificationError):
        server().handshake(other, "127.0.0.1")


def test_mutual_tls_presents_the_client_certificate(pki, server):
    settings = CassandraSettings.from_connection(
        _conn({"ssl_ca_certs": pki.ca, "ssl_certfile": pki.client, "ssl_keyfile": pki.client_key}))
    tls = server(client_ca=pki.ca)
    assert tls.handshake(settings.ssl_context(), "127.0.0.1") == b"ok"
    tls.thread.join(timeout=10)
    assert tls.peer is not None and dict(x[0] for x in tls.peer["subject"])["commonName"] == "pipeline"


def test_the_client_certificate_and_key_may_share_one_file(pki):
    both = pki.folder / "client-both.pem"
    both.write_text(Path(pki.client).read_text() + Path(pki.client_key).read_text())
    settings = CassandraSettings.from_connection(_conn({"ssl_ca_certs": pki.ca, "ssl_certfile": str(both)}))
    assert settings.ssl_context() is not None


@pytest.mark.parametrize(("extra", "field", "why"), [
    ({"ssl_ca_certs": "/nonexistent/ca.pem"}, "ssl_ca_certs", "No such file"),
    ({"ssl_ca_certs": "{folder}"}, "ssl_ca_certs", ""),
    ({"ssl_ca_certs": "{garbage}"}, "ssl_ca_certs", ""),
    ({"ssl_ca_certs": "{ca}", "ssl_check_hostname": "maybe"}, "ssl_check_hostname", "must be true or false"),
    ({"ssl_ca_certs": "{ca}", "ssl_check_hostname": 1}, "ssl_check_hostname", "must be true or false"),
    ({"ssl_ca_certs": ["{ca}"]}, "ssl_ca_certs", "must be a file path"),
    ({"ssl_certfile": "{client}"}, "ssl_certfile", "ssl_ca_certs is not"),
    ({"ssl_check_hostname": False}, "ssl_check_hostname", "ssl_ca_certs is not"),
    ({"ssl_ca_certs": "{ca}", "ssl_keyfile": "{client_key}"}, "ssl_keyfile", "without ssl_certfile"),
    ({"ssl_ca_certs": "{ca}", "ssl_certfile": "{client}"}, "ssl_certfile", "no client certificate and key"),
    ({"ssl_ca_certs": "{ca}", "ssl_certfile": "{client}", "ssl_keyfile": "{node_key}"}, "ssl_keyfile",
     "no client certificate and key"),
    ({"ssl_ca_certs": "{ca}", "ssl_certfile": "/nonexistent/c.pem", "ssl_keyfile": "{client_key}"},
     "ssl_certfile", "No such file"),
])
def test_bad_tls_settings_name_the_connection_and_the_field(pki, extra, field, why):
    garbage = pki.folder / "garbage.pem"
    garbage.write_text("not a certificate\n")
    paths = {**vars(pki), "folder": str(pki.folder), "garbage": str(garbage)}
    extra = {k: (v.format(**paths) if isinstance(v, str) else [x.format(**paths) for x in v]
                 if isinstance(v, list) else v) for k, v in extra.items()}
    with pytest.raises(ConnectionSettingsError, match=f"extra field {field} of connection cassandra_default") as e:
        CassandraSettings.from_connection(_conn(extra))
    assert why in str(e.value)


def test_the_environment_carries_tls_like_the_connection(pki):
    env = {"CDC_CASSANDRA_HOSTS": "10.0.0.1", "CDC_CASSANDRA_USERNAME": "pipeline",
           "CDC_CASSANDRA_PASSWORD": "s3cret", "CDC_CASSANDRA_SSL_CA_CERTS": pki.ca,
           "CDC_CASSANDRA_SSL_CERTFILE": pki.client, "CDC_CASSANDRA_SSL_KEYFILE": pki.client_key,
           "CDC_CASSANDRA_SSL_CHECK_HOSTNAME": "false"}
    settings = CassandraSettings.from_env("binance", env)
    assert (settings.ssl_ca_certs, settings.ssl_certfile, settings.ssl_keyfile, settings.ssl_check_hostname) == (
        pki.ca, pki.client, pki.client_key, False)
    with pytest.raises(ConnectionSettingsError, match="environment variable CDC_CASSANDRA_SSL_CHECK_HOSTNAME must "
                                                      "be true or false, got 'no'"):
        CassandraSettings.from_env("binance", {**env, "CDC_CASSANDRA_SSL_CHECK_HOSTNAME": "no"})
    with pytest.raises(ConnectionSettingsError, match="environment variable CDC_CASSANDRA_SSL_CA_CERTS: no CA"):
        CassandraSettings.from_env("binance", {**env, "CDC_CASSANDRA_SSL_CA_CERTS": pki.client_key})


# ------------------------------------------------------------------ Cassandra: the session's defaults


def test_sessions_default_to_local_quorum_and_reconnect_within_seconds(pki):
    from cassandra import ConsistencyLevel
    from cassandra.auth import PlainTextAuthProvider
    from cassandra.cluster import EXEC_PROFILE_DEFAULT

    cluster = cassandra_cluster(CassandraSettings.from_connection(_conn({"ssl_ca_certs": pki.ca})))
    try:
        profile = cluster.profile_manager.profiles[EXEC_PROFILE_DEFAULT]
        assert profile.consistency_level == ConsistencyLevel.LOCAL_QUORUM
        delays = list(islice(cluster.reconnection_policy.new_schedule(), 1000))
        # for ever (the driver's default gives up after 64 tries), never more than 5 s apart
        assert len(delays) == 1000 and delays[0] <= 0.6 and max(delays) == 5.0
        assert isinstance(cluster.auth_provider, PlainTextAuthProvider) and cluster.port == 9142
        assert cluster.ssl_context is not None and cluster.ssl_context.check_hostname
    finally:
        cluster.shutdown()


def test_no_credentials_no_tls_gives_a_plain_cluster():
    cluster = cassandra_cluster(CassandraSettings(("127.0.0.1",), 9042, None, None, "binance"))
    try:
        assert cluster.auth_provider is None and cluster.ssl_context is None
    finally:
        cluster.shutdown()


# ------------------------------------------------------------------ Kafka: the Spark job's client settings

PLAIN_LOGIN = "org.apache.kafka.common.security.plain.PlainLoginModule"
SCRAM_LOGIN = "org.apache.kafka.common.security.scram.ScramLoginModule"


def test_a_plaintext_connection_stays_plaintext():
    assert kafka_java_config({"bootstrap.servers": "127.0.0.1:9092"}) == {"kafka.security.protocol": "PLAINTEXT"}
    assert kafka_java_config({}) == {"kafka.security.protocol": "PLAINTEXT"}


def test_tls_with_a_ca_file_becomes_a_pem_truststore():
    extra = {"bootstrap.servers": "b1:9093", "security.protocol": "ssl", "ssl.ca.location": "/etc/kafka/ca.pem",
             "ssl.endpoint.identification.algorithm": "none"}
    assert kafka_java_config(extra) == {
        "kafka.security.protocol": "SSL", "kafka.ssl.truststore.type": "PEM",
        "kafka.ssl.truststore.location": "/etc/kafka/ca.pem", "kafka.ssl.endpoint.identification.algorithm": ""}


def test_sasl_ssl_plain_as_on_confluent_cloud():
    extra = {"bootstrap.servers": "pkc-xxxxx.eu-west-1.aws.confluent.cloud:9092", "security.protocol": "SASL_SSL",
             "sasl.mechanisms": "PLAIN", "sasl.username": "APIKEY", "sasl.password": "se\"cr\\et",
             "session.timeout.ms": 45000, "client.id": "airflow"}
    assert kafka_java_config(extra) == {
        "kafka.security.protocol": "SASL_SSL", "kafka.sasl.mechanism": "PLAIN",
        # the JAAS parser reads backslash escapes inside double quotes
        "kafka.sasl.jaas.config": f'{PLAIN_LOGIN} required username="APIKEY" password="se\\"cr\\\\et";'}


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "scram-sha-512"])
def test_sasl_scram_logs_in_with_the_scram_module(mechanism):
    extra = {"security.protocol": "SASL_SSL", "sasl.mechanism": mechanism, "sasl.username": "pipeline",
             "sasl.password": "pw", "ssl.ca.location": "/ca.pem"}
    assert kafka_java_config(extra) == {
        "kafka.security.protocol": "SASL_SSL", "kafka.sasl.mechanism": mechanism.upper(),
        "kafka.sasl.jaas.config": f'{SCRAM_LOGIN} required username="pipeline" password="pw";',
        "kafka.ssl.truststore.type": "PEM", "kafka.ssl.truststore.location": "/ca.pem"}


def test_sasl_plaintext_is_passed_on_too():
    extra = {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "PLAIN", "sasl.mechanisms": "plain",
             "sasl.username": "u", "sasl.password": "p"}
    assert kafka_java_config(extra)["kafka.sasl.mechanism"] == "PLAIN"


@pytest.mark.parametrize(("extra", "message"), [
    ({"security.protocol": "SASL_SSL", "sasl.mechanism": "GSSAPI"}, "sasl.mechanism 'GSSAPI' is not supported"),
    ({"security.protocol": "SASL_SSL", "sasl.mechanisms": "OAUTHBEARER", "sasl.username": "u", "sasl.password": "p"},
     "sasl.mechanisms 'OAUTHBEARER' is not supported"),
    ({"security.protocol": "SASL_SSL", "sasl.username": "u", "sasl.password": "p"}, "sasl.mechanism is not set"),
    ({"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN", "sasl.username": "u"}, "PLAIN needs sasl.password"),
    ({"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN", "sasl.mechanisms": "SCRAM-SHA-256"}, "differ"),
    ({"security.protocol": "SSL", "sasl.username": "u"}, "sasl.username set but security.protocol is SSL"),
    ({"security.protocol": "TLS"}, "security.protocol 'TLS' is not one of"),
    ({"ssl.ca.location": "/ca.pem"}, "ssl.ca.location set but security.protocol is PLAINTEXT"),
    ({"security.protocol": "SSL", "ssl.ca.location": "probe"}, "must be the path of a PEM file"),
    ({"security.protocol": "SSL", "ssl.certificate.location": "/c.pem", "ssl.key.location": "/k.pem"},
     "ssl.certificate.location, ssl.key.location cannot be passed on"),
    ({"security.protocol": "SSL", "enable.ssl.certificate.verification": False},
     "enable.ssl.certificate.verification cannot be passed on"),
    ({"security.protocol": "SASL_SSL", "sasl.oauthbearer.config": "x"}, "sasl.oauthbearer.config cannot be passed"),
    ({"security.protocol": "SSL", "ssl.endpoint.identification.algorithm": "dns"}, "must be https or none"),
])
def test_what_cannot_be_translated_is_refused_naming_it(extra, message):
    with pytest.raises(ConnectionSettingsError, match=f"connection kafka_default's extra: .*{re.escape(message)}"):
        kafka_java_config(extra, "connection kafka_default's extra")


def test_the_environment_carries_the_connections_extra_as_json():
    extra = {"bootstrap.servers": "b:9092", "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
             "sasl.username": "u", "sasl.password": "p"}
    assert kafka_java_config_from_env({KAFKA_CLIENT_CONFIG_ENV: json.dumps(extra)}) == kafka_java_config(extra)
    assert kafka_java_config_from_env({}) == {"kafka.security.protocol": "PLAINTEXT"}


@pytest.mark.parametrize(("value", "message"), [
    ("{security.protocol: SASL_SSL, sasl.password: hunter2}", "is not JSON"),
    ('["SASL_SSL"]', "must hold a JSON object"),
])
def test_a_bad_environment_value_is_named_and_not_echoed(value, message):
    with pytest.raises(ConnectionSettingsError, match=f"environment variable CDC_KAFKA_CLIENT_CONFIG.*{message}") as e:
        kafka_java_config_from_env({KAFKA_CLIENT_CONFIG_ENV: value})
    assert "hunter2" not in str(e.value)


def test_a_refused_setting_from_the_environment_names_the_variable():
    value = json.dumps({"security.protocol": "SASL_SSL", "sasl.mechanism": "GSSAPI"})
    with pytest.raises(ConnectionSettingsError, match="environment variable CDC_KAFKA_CLIENT_CONFIG .*GSSAPI"):
        kafka_java_config_from_env({KAFKA_CLIENT_CONFIG_ENV: value})


# ------------------------------------------------------------------ through the cdc_stream operator to the job


KAFKA_SASL_SSL = {"bootstrap.servers": "b1:9092,b2:9092", "security.protocol": "SASL_SSL",
                  "sasl.mechanisms": "PLAIN", "sasl.username": "KEY", "sasl.password": "kafka-s3cret"}


def test_the_operators_variable_names_are_the_jobs():
    import cdc_stream_operator

    assert cdc_stream_operator.CASSANDRA_TLS_ENV == CassandraSettings.ENV_TLS
    assert cdc_stream_operator.KAFKA_CLIENT_CONFIG_ENV == KAFKA_CLIENT_CONFIG_ENV


@pytest.mark.parametrize("tls", [{}, {"ssl_check_hostname": False}, {"ssl_check_hostname": True},
                                 {"ssl_certfile": "client", "ssl_keyfile": "client_key"}])
def test_connections_reach_the_job_through_the_environment_unchanged(pki, tls):
    """from_connection, then the operator's environment, then from_env in the job: the same settings
    (but the bridge's read consistency, which the stream does not use), the same Kafka options."""
    from dataclasses import replace

    from cdc_stream_operator import stream_env

    extra = {"ssl_ca_certs": pki.ca, "consistency": "LOCAL_QUORUM",
             **{k: getattr(pki, v) if isinstance(v, str) else v for k, v in tls.items()}}
    conn = _conn(extra)
    expected = CassandraSettings.from_connection(conn)
    env = stream_env(conn.host, conn.port, conn.login, conn.password, conn.extra_dejson, KAFKA_SASL_SSL)
    assert CassandraSettings.from_env(conn.schema, env) == replace(expected, consistency=None)
    assert kafka_java_config_from_env(env) == kafka_java_config(KAFKA_SASL_SSL)


def test_without_tls_or_kafka_security_the_environment_is_as_before():
    from cdc_stream_operator import stream_env

    env = stream_env("127.0.0.1", 9042, "pipeline", "pw")
    assert set(env) == {"PYTHONPATH", "TZ", "CDC_CASSANDRA_HOSTS", "CDC_CASSANDRA_PORT", "CDC_CASSANDRA_USERNAME",
                        "CDC_CASSANDRA_PASSWORD"}
    assert CassandraSettings.from_env("binance", env).ssl_context() is None
    assert kafka_java_config_from_env(env) == {"kafka.security.protocol": "PLAINTEXT"}


def test_the_operator_keeps_every_secret_off_the_command_line(pki, monkeypatch, capsys):
    from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
    from airflow.sdk import BaseHook
    from cdc_stream_operator import CdcStreamSubmitOperator

    conns = {
        "cassandra_default": _conn({"ssl_ca_certs": pki.ca}),
        "kafka_default": SimpleNamespace(conn_id="kafka_default", extra_dejson=KAFKA_SASL_SSL),
        "spark_default": SimpleNamespace(conn_id="spark_default", host="spark://master.example", port=7077,
                                         extra_dejson={}),
    }
    monkeypatch.setattr(BaseHook, "get_connection", classmethod(lambda cls, conn_id: conns[conn_id]))
    submitted = []
    monkeypatch.setattr(SparkSubmitOperator, "execute", lambda self, context: submitted.append(self))
    op = CdcStreamSubmitOperator(task_id="run_cdc_stream", conn_id="spark_default", jars="x.jar",
                                 checkpoint="/var/lib/cdc/checkpoint")
    op.execute({})
    assert submitted == [op]
    command_line = " ".join([*op.application_args, *(f"{k}={v}" for k, v in (op.conf or {}).items())])
    assert "--bootstrap-servers b1:9092,b2:9092" in command_line
    assert "s3cret" not in command_line and "KEY" not in command_line
    assert op.env_vars["CDC_CASSANDRA_PASSWORD"] == "s3cret"
    assert op.env_vars["CDC_CASSANDRA_SSL_CA_CERTS"] == pki.ca
    assert json.loads(op.env_vars["CDC_KAFKA_CLIENT_CONFIG"]) == KAFKA_SASL_SSL
    # a local checkpoint with a cluster's master is worth a warning (Airflow's task logger prints it)
    assert "is a local path but the Spark master is spark://master.example" in capsys.readouterr().out
