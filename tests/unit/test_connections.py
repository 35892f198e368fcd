"""include/connections.py's settings for secured clusters, without the clusters: Cassandra's TLS
context from generated certificates (checked by real TLS handshakes with a local server), its
session defaults, and every bad value refused naming the connection and the field."""

from __future__ import annotations

import datetime as dt
import ipaddress
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

from include.connections import CassandraSettings, ConnectionSettingsError, cassandra_cluster

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
