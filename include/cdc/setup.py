"""What the `cdc_setup` DAG does, free of Airflow: the source side (publication, heartbeat and
signal grants, replica identities), the connector's configuration, and the re-snapshot.

The publication's table list, the connector's table.include.list and its signal table are derived
here from include/tables.py and include/names.py; connectors/<name>.json keeps the rest of the
connector's configuration.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from include.cdc import signals
from include.cdc.events import SNAPSHOT_MARGIN_US
from include.cdc.kafka_connect import ConnectError, load_connector
from include.names import (
    BRIDGE_SCHEMA,
    HEARTBEAT_TABLE,
    PUBLICATION,
    SIGNAL_TABLE,
    SLOT,
    SOURCE_SCHEMA,
    TOPIC_PREFIX,
)
from include.partitions import partitions
from include.schema.postgres import apply
from include.tables import TABLES, qualified

log = logging.getLogger(__name__)


def captured_tables() -> list[str]:
    """Every table whose changes Debezium captures, schema-qualified: the source tables, the
    heartbeat table (its row changes every heartbeat, so the slot advances when nothing else does)
    and the signal table (Debezium reads its signals and snapshot-window markers from the change
    stream; with publication.autocreate.mode disabled the publication must carry it)."""
    return [qualified(t) for t in (*TABLES, HEARTBEAT_TABLE, SIGNAL_TABLE)]


# what an incremental re-snapshot registers the connector with, once, after its offsets and slot
# were dropped: a new slot and streaming at once, no initial snapshot (the rows come back through
# an incremental snapshot instead, include/cdc/tasks.py)
STREAM_ONLY = "no_data"


def derived_connector_config() -> dict[str, str]:
    """The connector settings that follow from the table definitions and the shared names."""
    heartbeat = qualified(HEARTBEAT_TABLE)
    return {
        "topic.prefix": TOPIC_PREFIX,
        "schema.include.list": SOURCE_SCHEMA,
        "table.include.list": ",".join(captured_tables()),
        "publication.name": PUBLICATION,
        "slot.name": SLOT,
        "heartbeat.action.query": f"INSERT INTO {heartbeat} (id, beat_at) VALUES (1, now()) "
                                  "ON CONFLICT (id) DO UPDATE SET beat_at = EXCLUDED.beat_at",
        "signal.data.collection": qualified(SIGNAL_TABLE),
    }


def connector_config(name: str, snapshot_mode: str | None = None) -> dict[str, str]:
    """connectors/<name>.json completed with the derived settings (which the file must not set).
    `snapshot_mode` replaces the file's snapshot.mode (the incremental re-snapshot's STREAM_ONLY)."""
    config = load_connector(name)
    derived = derived_connector_config()
    clash = sorted(set(config) & set(derived))
    if clash:
        raise ConnectError(f"connectors/{name}.json sets {clash}, which cdc_setup derives from include/tables.py "
                           "and include/names.py: remove them from the file")
    out = {**config, **derived}
    if snapshot_mode is not None:
        out["snapshot.mode"] = snapshot_mode
    return out


def ensure_publication(cur: Any) -> dict[str, list[str]]:
    """The publication covers exactly captured_tables(): created if missing, tables added or dropped."""
    wanted = set(captured_tables())
    cur.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (PUBLICATION,))
    if cur.fetchone() is None:
        tables = ", ".join(f'"{SOURCE_SCHEMA}"."{t.split(".", 1)[1]}"' for t in captured_tables())
        cur.execute(f"CREATE PUBLICATION {PUBLICATION} FOR TABLE {tables}")
        log.info("created publication %s for %s", PUBLICATION, ", ".join(captured_tables()))
        return {"added": captured_tables(), "dropped": []}
    cur.execute("SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = %s",
                (PUBLICATION,))
    published = {r[0] for r in cur.fetchall()}
    added, dropped = sorted(wanted - published), sorted(published - wanted)
    for table in added:
        schema, name = table.split(".")
        cur.execute(f'ALTER PUBLICATION {PUBLICATION} ADD TABLE "{schema}"."{name}"')
        log.info("added %s to publication %s", table, PUBLICATION)
    for table in dropped:
        schema, name = table.split(".")
        cur.execute(f'ALTER PUBLICATION {PUBLICATION} DROP TABLE "{schema}"."{name}"')
        log.info("dropped %s from publication %s: include/tables.py no longer defines it", table, PUBLICATION)
    return {"added": added, "dropped": dropped}


def ensure_postgres_side(conn: Any, debezium_role: str) -> dict[str, Any]:
    """Tables, the heartbeat and signal tables from the migrations, then what follows from the
    definitions and the configuration: the publication, the Debezium role's grants on the heartbeat
    table (it writes a beat) and on the signal table (it inserts and deletes each snapshot window's
    marker); checks the replica identities Debezium's deletes depend on."""
    applied = apply(conn, SOURCE_SCHEMA)
    with conn.cursor() as cur:
        cur.execute(f'GRANT SELECT, INSERT, UPDATE ON "{SOURCE_SCHEMA}"."{HEARTBEAT_TABLE}" TO "{debezium_role}"')
        cur.execute(f'GRANT SELECT, INSERT, DELETE ON "{SOURCE_SCHEMA}"."{SIGNAL_TABLE}" TO "{debezium_role}"')
        publication = ensure_publication(cur)
        cur.execute("SELECT c.relname, c.relreplident FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = %s AND c.relname = ANY(%s)", (SOURCE_SCHEMA, list(TABLES)))
        identities = dict(cur.fetchall())
    conn.commit()
    for name, table in TABLES.items():
        expected = {"DEFAULT": "d", "FULL": "f"}[table.replica_identity]
        if identities.get(name) != expected:
            raise RuntimeError(f"{SOURCE_SCHEMA}.{name} has replica identity {identities.get(name)!r}, expected "
                               f"{table.replica_identity}: Debezium's deletes would lack the sink's key")
    return {"migrations_applied": applied, "publication_tables_added": publication["added"],
            "publication_tables_dropped": publication["dropped"]}


# --------------------------------------------------------------------------- re-snapshot

def drop_slot(replication_conn: Any, slot: str = SLOT, timeout: float = 60.0) -> bool:
    """Drop the connector's replication slot once no walsender uses it; False if there was none.
    Needs a role with REPLICATION (the Debezium role), the pipeline's owner role has none."""
    deadline = time.monotonic() + timeout
    while True:
        with replication_conn.cursor() as cur:
            cur.execute("SELECT active, wal_status FROM pg_replication_slots WHERE slot_name = %s", (slot,))
            row = cur.fetchone()
            if row is None:
                replication_conn.commit()
                log.info("replication slot %s does not exist: nothing to drop", slot)
                return False
            if not row[0]:
                cur.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
                replication_conn.commit()
                log.info("dropped replication slot %s (wal_status was %s)", slot, row[1])
                return True
        replication_conn.commit()
        if time.monotonic() > deadline:
            raise RuntimeError(f"replication slot {slot} is still in use after {timeout:.0f}s although the "
                               "connector is stopped: another consumer holds it (see pg_stat_replication)")
        time.sleep(1)


def source_clock_us(pg: Any) -> int:
    """The source database's clock, in microseconds since the epoch: the time base of the sink's
    write timestamps (a change is written at its source commit time, include/cdc/events.write_time)."""
    with pg.cursor() as cur:
        cur.execute("SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint")
        now_us = cur.fetchone()[0]
    pg.rollback()
    return now_us


def reset_sink(session: Any, keyspace: str, pg: Any, bridge_schema: str = BRIDGE_SCHEMA,
               sleep: Callable[[float], None] = time.sleep) -> int:
    """Empty the Cassandra copy for a new snapshot, and make the bridge copy every table whole on
    its next run, so rows deleted while changes were lost do not survive.

    Every partition that may hold rows (worked out from Postgres: the source and the bridge's
    copy, include/partitions.py) is deleted with a write timestamp of now on the source's clock,
    not truncated: an older change event still in Kafka, applied later, stays shadowed. The new
    snapshot's rows are written 10 s below their snapshot's time (SNAPSHOT_MARGIN_US): this waits
    until that margin has passed, so they land above the deletes. Returns the delete timestamp."""
    from cassandra.concurrent import execute_concurrent_with_args

    below = source_clock_us(pg)
    now = datetime.now(UTC)
    for name, table in TABLES.items():
        with pg.cursor() as cur:
            keys = partitions(cur, table, (SOURCE_SCHEMA, bridge_schema), None, now)
        pg.rollback()
        where = " AND ".join(f'"{c}" = ?' for c in table.cassandra_partition)
        stmt = session.prepare(f'DELETE FROM "{keyspace}"."{name}" USING TIMESTAMP ? WHERE {where}')
        results = execute_concurrent_with_args(session, stmt, [(below, *k) for k in keys], concurrency=32,
                                               raise_on_first_error=True)
        log.info("Cassandra %s.%s: %d partition(s) deleted below write time %d", keyspace, name,
                 sum(1 for r in results if r.success), below)
    session.execute(f'TRUNCATE "{keyspace}".changed_rows', timeout=120)
    with pg.cursor() as cur:
        cur.execute("SELECT to_regclass(%s)", (f"{bridge_schema}.bridge_watermarks",))
        if cur.fetchone()[0] is not None:
            cur.execute(f'DELETE FROM "{bridge_schema}".bridge_watermarks')
            log.info("bridge watermarks cleared (%d): the next cassandra_bridge run copies every table whole",
                     cur.rowcount)
    pg.commit()
    wait_s = (below + SNAPSHOT_MARGIN_US - source_clock_us(pg)) / 1e6 + 1
    if wait_s > 0:
        log.info("waiting %.1fs so that the new snapshot's rows are written above the deletes", wait_s)
        sleep(wait_s)
    return below


# a re-snapshot: incremental (the sink kept and served, rows re-emitted through Debezium's
# incremental snapshot) or from scratch (the sink emptied, a new initial snapshot)
INCREMENTAL, FROM_SCRATCH = "incremental", "from_scratch"


def restart_capture(client: Any, connector: str, replication_conn: Any) -> bool:
    """Stop the connector, forget its offsets, drop its slot (what was in it is lost anyway);
    returns whether there was a slot."""
    client.stop(connector)
    client.reset_offsets(connector)
    return drop_slot(replication_conn)


def resnapshot(client: Any, connector: str, replication_conn: Any, session: Any, keyspace: str, pg: Any) -> dict:
    """From scratch: stop the connector, forget its offsets, drop its slot, empty the sink;
    registering and resuming the connector afterwards takes a new initial snapshot of every table.
    For a source rebuilt from scratch, and a migration that creates the sink's tables again (README,
    Guarantees and Upgrading)."""
    dropped = restart_capture(client, connector, replication_conn)
    below = reset_sink(session, keyspace, pg)
    return {"connector": connector, "mode": FROM_SCRATCH, "slot_dropped": dropped,
            "sink_deleted_below_write_time": below}


def resnapshot_incremental(client: Any, connector: str, replication_conn: Any,
                           offsets_timeout: float = 180.0) -> dict:
    """Incremental: stop the connector, forget its offsets, drop its slot, then run it once with
    snapshot.mode STREAM_ONLY (no_data): a new slot, streaming at once, no initial snapshot, the
    sink kept and served. Returns once the connector has committed offsets, so registering the
    usual configuration (snapshot.mode initial) resumes streaming instead of snapshotting; then
    `request_incremental_snapshot` asks Debezium for every table again. The recovery when changes
    were lost (an invalidated slot, a Kafka outage past retention): rows the lost changes would
    have updated or inserted come back with the incremental snapshot; rows they would have deleted
    are found by the reconciliation (pipeline_health) and deleted downstream."""
    dropped = restart_capture(client, connector, replication_conn)
    client.ensure(connector, connector_config(connector, STREAM_ONLY))
    client.resume(connector)
    client.wait_running(connector)
    client.wait_offsets(connector, timeout=offsets_timeout)
    return {"connector": connector, "mode": INCREMENTAL, "slot_dropped": dropped}


def request_incremental_snapshot(pg: Any, timeout: float = 120.0, sleep: Callable[[float], None] = time.sleep,
                                 now: datetime | None = None) -> list[str]:
    """Ask Debezium for an incremental snapshot of every table (one signal each), once its slot
    exists: a signal written before it would never be read. Returns the signals' ids; their first
    word (signals.RESNAPSHOT) tells the reconciliation to start a full pass."""
    deadline = time.monotonic() + timeout
    while True:
        with pg.cursor() as cur:
            cur.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (SLOT,))
            row = cur.fetchone()
        pg.rollback()
        if row is not None:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"replication slot {SLOT} does not exist {timeout:.0f}s after the connector started: "
                               "an incremental snapshot signal would not be read; see the Kafka Connect log")
        sleep(2)
    ids = signals.insert(pg, signals.whole_table_signals(list(TABLES)), signals.RESNAPSHOT, now)
    log.warning("incremental snapshot of every table requested from Debezium (signals %s): Cassandra is kept and "
                "served meanwhile; the reconciliation's full pass deletes downstream what the source lost",
                ", ".join(ids))
    return ids
