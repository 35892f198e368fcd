"""Cassandra side of the pipeline: sessions from connection settings, keyspace and CQL migrations.

Migrations are `include/cql/binance_cdc/V<NNN>__<name>.cql`, applied once each and recorded in
`<keyspace>.schema_migrations`; the keyspace's replication comes from configuration
(SimpleStrategy RF 1 on one node, NetworkTopologyStrategy on a cluster).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CQL_ROOT = Path(__file__).resolve().parent / "cql" / "binance_cdc"
_NAME = re.compile(r"^V(\d{3,})__([a-z0-9_]+)\.cql$")
_IDENT = re.compile(r"^[a-z][a-z0-9_]{0,47}$")
DEFAULT_REPLICATION = {"class": "SimpleStrategy", "replication_factor": 1}


class CassandraSchemaError(RuntimeError):
    """A keyspace or CQL migration problem, with what to do about it."""


@dataclass(frozen=True)
class CassandraSettings:
    hosts: tuple[str, ...]
    port: int
    username: str | None
    password: str | None
    keyspace: str

    @classmethod
    def from_connection(cls, conn: Any) -> CassandraSettings:
        """From an Airflow Connection (host may list several contact points, comma-separated)."""
        if not conn.schema:
            raise CassandraSchemaError(f"connection {conn.conn_id} names no keyspace (its schema field)")
        hosts = tuple(h.strip() for h in (conn.host or "127.0.0.1").split(",") if h.strip())
        return cls(hosts, int(conn.port or 9042), conn.login, conn.password, conn.schema)


def connect(settings: CassandraSettings, keyspace: str | None = None) -> tuple[Any, Any]:
    """A (cluster, session) pair; the caller shuts the cluster down."""
    from cassandra.auth import PlainTextAuthProvider
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy

    auth = PlainTextAuthProvider(settings.username, settings.password) if settings.username else None
    profile = ExecutionProfile(load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy()),
                               request_timeout=30)
    cluster = Cluster(list(settings.hosts), port=settings.port, auth_provider=auth, protocol_version=5,
                      execution_profiles={EXEC_PROFILE_DEFAULT: profile}, connect_timeout=10)
    return cluster, cluster.connect(keyspace)


def replication_cql(replication: dict[str, Any]) -> str:
    strategy = replication.get("class")
    if strategy not in ("SimpleStrategy", "NetworkTopologyStrategy"):
        raise CassandraSchemaError(
            f"replication class must be SimpleStrategy or NetworkTopologyStrategy, got {replication}"
        )
    return json.dumps({k: str(v) if k != "class" else v for k, v in replication.items()}).replace('"', "'")


def statements(cql: str) -> list[str]:
    """Split a CQL file into statements, dropping `--` comments."""
    lines = [line.split("--", 1)[0] for line in cql.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def ensure_schema(settings: CassandraSettings, replication: dict[str, Any] | None = None) -> list[str]:
    """Create the keyspace if missing, then apply pending CQL migrations; return what was applied."""
    keyspace = settings.keyspace
    if not _IDENT.match(keyspace):
        raise CassandraSchemaError(f"keyspace name {keyspace!r} is not a plain lower-case CQL identifier")
    cluster, session = connect(settings)
    applied: list[str] = []
    try:
        session.execute(
            f"CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = "
            f"{replication_cql(replication or DEFAULT_REPLICATION)}"
        )
        session.set_keyspace(keyspace)
        session.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version int PRIMARY KEY, name text, "
                        "checksum text, applied_at timestamp)")
        done = {r.version: r.checksum for r in session.execute("SELECT version, checksum FROM schema_migrations")}
        for path in sorted(CQL_ROOT.glob("*.cql")):
            m = _NAME.match(path.name)
            if not m:
                raise CassandraSchemaError(f"{path}: CQL migrations are named V<NNN>__<name>.cql")
            version, checksum = int(m.group(1)), hashlib.sha256(path.read_bytes()).hexdigest()
            if version in done:
                if done[version] != checksum:
                    raise CassandraSchemaError(f"{path.name} changed after it was applied; add a new version instead")
                continue
            log.info("applying CQL migration %s to keyspace %s", path.name, keyspace)
            for stmt in statements(path.read_text()):
                session.execute(stmt)
            session.execute("INSERT INTO schema_migrations (version, name, checksum, applied_at) "
                            "VALUES (%s, %s, %s, toTimestamp(now()))", (version, m.group(2), checksum))
            applied.append(path.name)
    finally:
        cluster.shutdown()
    if not applied:
        log.info("keyspace %s is up to date", keyspace)
    return applied
