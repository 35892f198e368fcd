"""Cassandra's schema: the keyspace and the CQL migrations.

Migrations are `include/schema/cql/binance_cdc/V<NNN>__<name>.cql`, applied once each and
recorded in `<keyspace>.schema_migrations` (see include/schema/versions.py); the keyspace's
replication comes from configuration (SimpleStrategy RF 1 on one node, NetworkTopologyStrategy on
a cluster).
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path
from typing import Any

from include.connections import CassandraSettings, cassandra_session
from include.schema.versions import Migration, discover, statements

log = logging.getLogger(__name__)

CQL_ROOT = Path(__file__).resolve().parent / "cql" / "binance_cdc"
_IDENT = re.compile(r"^[a-z][a-z0-9_]{0,47}$")
DEFAULT_REPLICATION = {"class": "SimpleStrategy", "replication_factor": 1}
# A schema change returns once its coordinator applied it; the other nodes learn it through gossip. On
# a cluster the next statement may reach a node that has not: a CREATE TABLE IF NOT EXISTS there, after
# a DROP it has not seen, is a no-op, and the table is then dropped. So every schema change waits until
# all nodes report one schema version, for up to this long (the driver's default is 10 s, which three
# nodes starting on two cores can exceed), and a change still not agreed stops the migration.
SCHEMA_AGREEMENT_S = 120.0
# a schema change's own timeout: its coordinator flushes and snapshots (a DROP), slow on a busy node
DDL_TIMEOUT_S = 120.0
# A node starting on a busy machine can stall long enough for the driver to drop its connection
# ("Connection defunct by heartbeat") or time the change out. Every statement of the migrations is
# idempotent (IF [NOT] EXISTS, ALTER ... WITH), so such a change is sent again, this many times in all.
SCHEMA_CHANGE_ATTEMPTS = 4
SCHEMA_CHANGE_PAUSE_S = 5.0


class CassandraSchemaError(RuntimeError):
    """A keyspace or CQL migration problem, with what to do about it."""


def replication_cql(replication: dict[str, Any]) -> str:
    strategy = replication.get("class")
    if strategy not in ("SimpleStrategy", "NetworkTopologyStrategy"):
        raise CassandraSchemaError(
            f"replication class must be SimpleStrategy or NetworkTopologyStrategy, got {replication}"
        )
    return json.dumps({k: str(v) if k != "class" else v for k, v in replication.items()}).replace('"', "'")


def schema_change(session: Any, statement: str, where: str = "") -> None:
    """Execute a schema change and wait until every node has it (the session's cluster sets how long);
    a change that times out or finds no node is sent again (SCHEMA_CHANGE_ATTEMPTS). A
    CassandraSchemaError names the statement when it never went through or the nodes still disagree."""
    from cassandra import OperationTimedOut
    from cassandra.cluster import NoHostAvailable

    first = " ".join(statement.split())[:120]
    for attempt in range(1, SCHEMA_CHANGE_ATTEMPTS + 1):
        try:
            result = session.execute(statement, timeout=DDL_TIMEOUT_S)
            break
        except (OperationTimedOut, NoHostAvailable) as exc:
            if attempt == SCHEMA_CHANGE_ATTEMPTS:
                raise CassandraSchemaError(
                    f"Cassandra did not apply {first!r}{f' ({where})' if where else ''} in "
                    f"{SCHEMA_CHANGE_ATTEMPTS} attempts, the last failing with {exc}: check that every "
                    "node is up (`nodetool status`), then run cdc_setup again (migrations are re-runnable)"
                ) from exc
            log.warning("schema change %r failed (attempt %d of %d: %s); sending it again in %.0f s",
                        first, attempt, SCHEMA_CHANGE_ATTEMPTS, exc, SCHEMA_CHANGE_PAUSE_S)
            time.sleep(SCHEMA_CHANGE_PAUSE_S)
    if not result.response_future.is_schema_agreed:
        raise CassandraSchemaError(
            f"the Cassandra nodes did not agree on the schema after {first!r}{f' ({where})' if where else ''}: "
            "check that every node is up and `nodetool describecluster` shows one schema version, then run "
            "cdc_setup again (migrations are re-runnable)")


def migrations() -> list[Migration]:
    return discover(CQL_ROOT, "cql")


def ensure_schema(settings: CassandraSettings, replication: dict[str, Any] | None = None) -> list[str]:
    """Create the keyspace if missing, then apply pending CQL migrations; return what was applied."""
    keyspace = settings.keyspace
    if not _IDENT.match(keyspace):
        raise CassandraSchemaError(f"keyspace name {keyspace!r} is not a plain lower-case CQL identifier")
    applied: list[str] = []
    with cassandra_session(settings, schema_agreement_wait=SCHEMA_AGREEMENT_S) as session:
        schema_change(session, f"CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = "
                               f"{replication_cql(replication or DEFAULT_REPLICATION)}")
        session.set_keyspace(keyspace)
        schema_change(session, "CREATE TABLE IF NOT EXISTS schema_migrations (version int PRIMARY KEY, name text, "
                               "checksum text, applied_at timestamp)")
        done = {r.version: r.checksum for r in session.execute("SELECT version, checksum FROM schema_migrations")}
        for mig in migrations():
            if mig.version in done:
                mig.check_unchanged(done[mig.version])
                continue
            log.info("applying CQL migration %s to keyspace %s", mig.path.name, keyspace)
            for stmt in statements(mig.text):
                schema_change(session, stmt, mig.path.name)
            session.execute("INSERT INTO schema_migrations (version, name, checksum, applied_at) "
                            "VALUES (%s, %s, %s, toTimestamp(now()))", (mig.version, mig.name, mig.checksum))
            applied.append(mig.path.name)
    if not applied:
        log.info("keyspace %s is up to date", keyspace)
    return applied
