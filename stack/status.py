"""`make status`: the services, the rows per stage, and the health figures, read-only.

One line per service (up/down, port, PID, log); then per stage (Postgres `binance`, Kafka topics,
Cassandra, Postgres `cassandra`) the row counts per table and the freshest source time; then what
the pipeline_health DAG checks, measured now through the same functions (include.health.checks),
without storing or restarting anything; and the reconciliation's last verdict and the differences
still open (as the DAG recorded them: comparing the stores is the DAG's job, not a status probe's).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from include.connections import CassandraSettings, cassandra_session
from include.health import checks
from include.names import BRIDGE_SCHEMA, HEALTH_SCHEMA, SOURCE_SCHEMA, topic_for
from include.partitions import prefixes
from include.tables import BRIDGE_TABLES, TABLES
from stack import localstack as ls
from stack import topology


@dataclass
class Stage:
    name: str
    counts: dict[str, int | None]
    freshest: datetime | None
    error: str | None = None

    @property
    def rows(self) -> int:
        return sum(v for v in self.counts.values() if v)


@contextmanager
def postgres(s: dict[str, str]) -> Iterator[Any]:
    """The pipeline's database as the stack's .env describes it."""
    import psycopg2

    conn = psycopg2.connect(host=s["POSTGRES_HOST"], port=s["POSTGRES_PORT"], dbname=s["POSTGRES_DB"],
                            user=s["POSTGRES_USER"], password=s["POSTGRES_PASSWORD"], connect_timeout=5)
    try:
        yield conn
    finally:
        conn.close()


@contextmanager
def cassandra(s: dict[str, str]) -> Iterator[tuple[Any, str]]:
    """(session, keyspace) of the pipeline's Cassandra role, as the stack's .env describes it."""
    hosts = tuple(s.get("CASSANDRA_HOSTS", s["CASSANDRA_HOST"]).split(","))
    settings = CassandraSettings(hosts, int(s["CASSANDRA_PORT"]), s["CASSANDRA_USERNAME"],
                                 s["CASSANDRA_PASSWORD"], s["CASSANDRA_KEYSPACE"])
    with cassandra_session(settings) as session:
        yield session, settings.keyspace


def _pg_stage(s: dict[str, str], schema: str) -> Stage:
    tables = TABLES if schema == SOURCE_SCHEMA else BRIDGE_TABLES
    counts: dict[str, int | None] = {}
    newest: list[datetime] = []
    with postgres(s) as conn, conn.cursor() as cur:
        for name, table in tables.items():
            cur.execute("SELECT to_regclass(%s)", (f"{schema}.{name}",))
            if cur.fetchone()[0] is None:
                counts[name] = None
                continue
            cur.execute(f"SELECT count(*), max({table.freshness_column or table.time_column}) FROM {schema}.{name}")
            n, latest = cur.fetchone()
            counts[name] = n
            if latest:
                newest.append(latest)
    return Stage(f"postgres {schema}", counts, max(newest) if newest else None)


def _kafka_stage(s: dict[str, str]) -> Stage:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": s["KAFKA_BOOTSTRAP_SERVERS"], "group.id": "stack-status",
                         "log_level": 2})
    counts: dict[str, int | None] = {}
    try:
        topics = consumer.list_topics(timeout=5).topics
        for t in TABLES:
            name = topic_for(t)
            if name not in topics:
                counts[t] = None
                continue
            total = 0
            for p in topics[name].partitions:
                low, high = consumer.get_watermark_offsets(TopicPartition(name, p), timeout=5)
                total += high - low
            # events kept in the topic (inserts, updates, deletes and tombstones), not rows
            counts[t] = total
    finally:
        consumer.close()
    return Stage("kafka topics", counts, None)


def _cassandra_stage(s: dict[str, str]) -> Stage:
    """Rows in each table's current bucket (one partition read per symbol: never a table scan),
    and the newest source commit the stream applied (stream_offsets)."""
    counts: dict[str, int | None] = {}
    now = datetime.now(UTC)
    with postgres(s) as pg, cassandra(s) as (session, keyspace):
        known = {r.table_name for r in session.execute(
            "SELECT table_name FROM system_schema.tables WHERE keyspace_name = %s", (keyspace,))}
        for name, table in TABLES.items():
            if name not in known:
                counts[name] = None
                continue
            where = " AND ".join(f'"{c}" = ?' for c in table.cassandra_partition)
            stmt = session.prepare(f'SELECT count(*) AS n FROM "{keyspace}"."{name}" WHERE {where}')
            bucket = table.bucket_of(now)
            with pg.cursor() as cur:
                held = prefixes(cur, table, (SOURCE_SCHEMA,))
            pg.rollback()
            counts[name] = sum(session.execute(stmt, (*prefix, bucket), timeout=30).one().n for prefix in held)
        newest = checks.newest_in_cassandra(checks.processed_offsets(session, keyspace))
    return Stage("cassandra", counts, newest)


def stages(s: dict[str, str]) -> list[Stage]:
    out = []
    probes: tuple[tuple[str, Callable[[], Stage]], ...] = (
        (f"postgres {SOURCE_SCHEMA}", lambda: _pg_stage(s, SOURCE_SCHEMA)), ("kafka topics", lambda: _kafka_stage(s)),
        ("cassandra", lambda: _cassandra_stage(s)), (f"postgres {BRIDGE_SCHEMA}", lambda: _pg_stage(s, BRIDGE_SCHEMA)))
    for name, probe in probes:
        try:
            out.append(probe())
        except Exception as exc:  # noqa: BLE001 - a stage that cannot be read is reported, not fatal
            out.append(Stage(name, {}, None, f"{type(exc).__name__}: {str(exc)[:120]}"))
    return out


def print_services(s: dict[str, str]) -> None:
    print(f"profile: {topology.profile()}")
    for svc in ls.services(s):
        pid = ls.read_pid(svc.name)
        state = "up" if pid is not None else "down"
        note = "  (offline demo only)" if svc.name == "binance-api" and ls.binance_mode() == "online" else ""
        where = svc.address or "-"
        print(f"{svc.name:<22} {state:<5} {where:<16} pid {pid or '-':<8} log {ls.log_file(svc.name)}{note}")


def print_stages(s: dict[str, str]) -> None:
    print("\npipeline (rows per table, Cassandra: in the current hour or day bucket; freshest source time)")
    header = "  " + f"{'stage':<20}" + "".join(f"{t:>14}" for t in TABLES) + "   freshest"
    print(header)
    now = datetime.now(UTC)
    for st in stages(s):
        if st.error:
            print(f"  {st.name:<20} unavailable: {st.error}")
            continue
        cells = "".join(f"{('-' if st.counts.get(t) is None else st.counts[t]):>14}" for t in TABLES)
        fresh = "-"
        if st.freshest:
            age = (now - st.freshest).total_seconds()
            fresh = f"{st.freshest.astimezone(UTC):%Y-%m-%d %H:%M:%S}Z ({age:.0f}s ago)"
        print(f"  {st.name:<20}{cells}   {fresh}")


def _ago(at: datetime | None, now: datetime) -> str:
    if at is None:
        return "-"
    return f"{(now - at.replace(tzinfo=at.tzinfo or UTC)).total_seconds():.0f}s ago"


def health_lines(s: dict[str, str]) -> list[str]:
    """What the pipeline_health DAG measures, measured now: read-only (nothing is restarted or stored),
    judged with the thresholds of AIRFLOW_VAR_PIPELINE_HEALTH_THRESHOLDS or the defaults."""
    from include.cdc.kafka_connect import KafkaConnectClient

    th = checks.Thresholds.from_json(os.environ.get("AIRFLOW_VAR_PIPELINE_HEALTH_THRESHOLDS"))
    now = datetime.now(UTC)
    lines: list[str] = []

    def verdict(result: checks.CheckResult) -> str:
        return "ok    " if result.ok else "FAILED"

    def probe(name: str, fn: Callable[[], list[str]]) -> None:
        try:
            lines.extend(fn())
        except Exception as exc:  # noqa: BLE001 - one unreadable part is reported, the others still shown
            lines.append(f"  {name:<17} unavailable: {type(exc).__name__}: {str(exc)[:120]}")

    def connector() -> list[str]:
        r = checks.check_connector(KafkaConnectClient(topology.connect_urls(s)), th, heal=False)
        return [f"  {'connector':<17} {verdict(r)} {r.message.splitlines()[0][:160]}"]

    def slot() -> list[str]:
        with postgres(s) as conn:
            r = checks.check_slot(conn, th)
        return [f"  {'replication slot':<17} {verdict(r)} {r.message.split('. Recover')[0][:200]}"]

    def stream() -> list[str]:
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": s["KAFKA_BOOTSTRAP_SERVERS"], "log_level": 2})
        with cassandra(s) as (session, keyspace), postgres(s) as pg:
            r, last = checks.measure_stream_lag(admin, session, keyspace, th, timeout=5, pg=pg)
            f = checks.measure_freshness(pg, session, keyspace, th)
        out = [f"  {'stream lag':<17} {verdict(r)} {r.message[:200]}"]
        if last is not None:
            finished = last.finished_at.replace(tzinfo=UTC)
            latency = "-" if last.newest_source_ts is None else \
                f"{(finished - last.newest_source_ts.replace(tzinfo=UTC)).total_seconds():.1f}s"
            out.append(f"  {'latest batch':<17}        #{last.batch_id}, {last.input_rows} row(s) in "
                       f"{last.processing_ms} ms, {_ago(finished, now)}; newest commit -> Cassandra {latency}")
        out.append(f"  {'freshness':<17} {verdict(f)} {f.message[:300]}")
        return out

    def reconciliation() -> list[str]:
        from include.health.reconcile_io import open_differences

        with postgres(s) as conn, conn.cursor() as cur:
            cur.execute("SELECT to_regclass(%s)", (f"{HEALTH_SCHEMA}.reconciliation_runs",))
            if cur.fetchone()[0] is None:
                return [f"  {'reconciliation':<17}        no run yet (pipeline_health's check_reconciliation)"]
            cur.execute(f"SELECT checked_at, ok, differences, repairs, run_seconds, cpu_seconds, message "
                        f"FROM {HEALTH_SCHEMA}.reconciliation_runs ORDER BY checked_at DESC LIMIT 1")
            last = cur.fetchone()
            conn.rollback()
            still = open_differences(conn)
        if last is None:
            return [f"  {'reconciliation':<17}        no run yet (pipeline_health's check_reconciliation)"]
        at, ok, diffs, repairs, run_s, cpu_s, message = last
        verdict = "ok    " if ok else "FAILED"
        compared = "not compared: " + message.split(": ", 1)[1].split(". ")[0] if message.startswith("not compared") \
            else f"{diffs} bucket(s) differed, {repairs} repaired"
        where = ", ".join(sorted({f"{t} {p} {b:%Y-%m-%d %H:%M} ({st})" for t, p, b, st in still})[:3])
        opened = f"{len(still)} open difference(s)" + (f": {where}" + (" ..." if len(still) > 3 else "")
                                                        if still else "")
        return [f"  {'reconciliation':<17} {verdict} last run {_ago(at, now)}: {compared}; {opened} "
                f"(run {run_s:.1f}s, CPU {cpu_s:.1f}s)"[:300]]

    def dag_verdicts() -> list[str]:
        with postgres(s) as conn, conn.cursor() as cur:
            cur.execute("SELECT to_regclass(%s)", (f"{HEALTH_SCHEMA}.checks",))
            rows = []
            if cur.fetchone()[0] is not None:
                cur.execute(f"SELECT DISTINCT ON (check_name) check_name, ok, checked_at FROM {HEALTH_SCHEMA}.checks "
                            "ORDER BY check_name, checked_at DESC")
                rows = cur.fetchall()
        if not rows:
            return [f"  {'pipeline_health':<17}        no run yet (unpause the pipeline_health DAG)"]
        verdicts = ", ".join(f"{name} {'ok' if ok else 'FAILED'} ({_ago(at, now)})" for name, ok, at in rows)
        return [f"  {'pipeline_health':<17}        last DAG verdicts: {verdicts}"]

    for name, fn in (("connector", connector), ("replication slot", slot), ("stream", stream),
                     ("reconciliation", reconciliation), ("pipeline_health", dag_verdicts)):
        probe(name, fn)
    return lines


def print_health(s: dict[str, str]) -> None:
    print("\nhealth (measured now, read-only; the pipeline_health DAG does the same every minute)")
    for line in health_lines(s):
        print(line)


def report(s: dict[str, str], pipeline: bool = True) -> None:
    """Everything `make status` prints."""
    print_services(s)
    if pipeline:
        print_stages(s)
        print_health(s)
