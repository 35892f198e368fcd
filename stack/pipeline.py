"""The pipeline on top of the local stack: `make demo` and the per-stage part of `make status`.

demo: brings the stack up (offline: with the bundled Binance-compatible server as `binance_api`),
runs cdc_setup, unpauses binance_extract, cdc_stream, cassandra_bridge and pipeline_health, and
waits until data has reached every stage. Safe to run again. `make status` prints the per-stage
counts and the health figures (print_stages, print_health).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime

from include.tables import TABLES
from stack import localstack as ls

# the column that says how fresh a source row is
TIME_COLUMN = {"latest_prices": "time", "daily_ticker": "close_time", "klines": "open_time",
               "recent_trades": "time", "order_book": "captured_at"}
DEMO_DAGS = ("binance_extract", "cdc_stream", "cassandra_bridge", "pipeline_health")


@dataclass
class Stage:
    name: str
    counts: dict[str, int | None]
    freshest: datetime | None
    error: str | None = None

    @property
    def rows(self) -> int:
        return sum(v for v in self.counts.values() if v)


def _pg(s: dict[str, str]):
    import psycopg2

    return psycopg2.connect(host=s["POSTGRES_HOST"], port=s["POSTGRES_PORT"], dbname=s["POSTGRES_DB"],
                            user=s["POSTGRES_USER"], password=s["POSTGRES_PASSWORD"], connect_timeout=5)


def _pg_stage(s: dict[str, str], schema: str) -> Stage:
    counts: dict[str, int | None] = {}
    newest: list[datetime] = []
    conn = _pg(s)
    try:
        with conn.cursor() as cur:
            for t in TABLES:
                col = TIME_COLUMN[t] if schema == "binance" else "cdc_source_ts"
                cur.execute("SELECT to_regclass(%s)", (f"{schema}.{t}",))
                if cur.fetchone()[0] is None:
                    counts[t] = None
                    continue
                cur.execute(f"SELECT count(*), max({col}) FROM {schema}.{t}")
                n, latest = cur.fetchone()
                counts[t] = n
                if latest:
                    newest.append(latest)
    finally:
        conn.close()
    return Stage(f"postgres {schema}", counts, max(newest) if newest else None)


def _kafka_stage(s: dict[str, str]) -> Stage:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": s["KAFKA_BOOTSTRAP_SERVERS"], "group.id": "stack-status",
                         "log_level": 2})
    counts: dict[str, int | None] = {}
    newest = None
    try:
        topics = consumer.list_topics(timeout=5).topics
        for t in TABLES:
            name = f"binance.binance.{t}"
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
    return Stage("kafka topics", counts, newest)


def _cassandra_stage(s: dict[str, str]) -> Stage:
    cluster, session, keyspace = _cassandra(s)
    counts: dict[str, int | None] = {}
    newest: list[datetime] = []
    try:
        known = {r.table_name for r in session.execute(
            "SELECT table_name FROM system_schema.tables WHERE keyspace_name = %s", (keyspace,))}
        for t in TABLES:
            if t not in known:
                counts[t] = None
                continue
            # a full scan: fine at demo sizes, and bounded by the request timeout
            row = session.execute(f"SELECT count(*) AS n, max(cdc_source_ts) AS latest FROM {keyspace}.{t}",
                                  timeout=30).one()
            counts[t] = row.n
            if row.latest:
                newest.append(row.latest.replace(tzinfo=UTC))
    finally:
        cluster.shutdown()
    return Stage("cassandra", counts, max(newest) if newest else None)


def stages(s: dict[str, str]) -> list[Stage]:
    out = []
    probes = (("postgres binance", lambda: _pg_stage(s, "binance")), ("kafka topics", lambda: _kafka_stage(s)),
              ("cassandra", lambda: _cassandra_stage(s)), ("postgres cassandra", lambda: _pg_stage(s, "cassandra")))
    for name, probe in probes:
        try:
            out.append(probe())
        except Exception as exc:  # noqa: BLE001 - a stage that cannot be read is reported, not fatal
            out.append(Stage(name, {}, None, f"{type(exc).__name__}: {str(exc)[:120]}"))
    return out


def print_stages(s: dict[str, str]) -> None:
    print("\npipeline (rows per table; freshest source time)")
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


def _cassandra(s: dict[str, str]):
    from include.cassandra_schema import CassandraSettings, connect

    cs = CassandraSettings((s["CASSANDRA_HOST"],), int(s["CASSANDRA_PORT"]), s["CASSANDRA_USERNAME"],
                           s["CASSANDRA_PASSWORD"], s["CASSANDRA_KEYSPACE"])
    cluster, session = connect(cs)
    return cluster, session, cs.keyspace


def _ago(at: datetime | None, now: datetime) -> str:
    if at is None:
        return "-"
    return f"{(now - at.replace(tzinfo=at.tzinfo or UTC)).total_seconds():.0f}s ago"


def health_lines(s: dict[str, str]) -> list[str]:
    """What the pipeline_health DAG measures, measured now: read-only (nothing is restarted or stored),
    judged with the thresholds of AIRFLOW_VAR_PIPELINE_HEALTH_THRESHOLDS or the defaults."""
    import os

    from include import health
    from include.kafka_connect import KafkaConnectClient

    th = health.Thresholds.from_json(os.environ.get("AIRFLOW_VAR_PIPELINE_HEALTH_THRESHOLDS"))
    now = datetime.now(UTC)
    lines: list[str] = []

    def verdict(result: health.CheckResult) -> str:
        return "ok    " if result.ok else "FAILED"

    def probe(name: str, fn) -> None:
        try:
            lines.extend(fn())
        except Exception as exc:  # noqa: BLE001 - one unreadable part is reported, the others still shown
            lines.append(f"  {name:<17} unavailable: {type(exc).__name__}: {str(exc)[:120]}")

    def connector() -> list[str]:
        r = health.check_connector(KafkaConnectClient(s["KAFKA_CONNECT_URL"]), th, heal=False)
        return [f"  {'connector':<17} {verdict(r)} {r.message.splitlines()[0][:160]}"]

    def slot() -> list[str]:
        conn = _pg(s)
        try:
            r = health.check_slot(conn, th)
        finally:
            conn.close()
        return [f"  {'replication slot':<17} {verdict(r)} {r.message.split('. Recover')[0][:200]}"]

    def stream() -> list[str]:
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": s["KAFKA_BOOTSTRAP_SERVERS"], "log_level": 2})
        end = health.kafka_end_offsets(admin, timeout=5)
        cluster, session, keyspace = _cassandra(s)
        try:
            done = health.processed_offsets(session, keyspace)
            last = health.last_batch(session, keyspace)
        finally:
            cluster.shutdown()
        r = health.check_stream_lag(end, done, last, th)
        out = [f"  {'stream lag':<17} {verdict(r)} {r.message[:200]}"]
        if last is not None:
            finished = last.finished_at.replace(tzinfo=UTC)
            latency = "-" if last.newest_source_ts is None else \
                f"{(finished - last.newest_source_ts.replace(tzinfo=UTC)).total_seconds():.1f}s"
            out.append(f"  {'latest batch':<17}        #{last.batch_id}, {last.input_rows} row(s) in "
                       f"{last.processing_ms} ms, {_ago(finished, now)}; newest commit -> Cassandra {latency}")
        conn = _pg(s)
        try:
            newest = {"postgres binance": health.newest_in_postgres(conn, "binance"),
                      "cassandra": health.newest_in_cassandra(done),
                      "postgres cassandra": health.newest_in_postgres(conn, "cassandra")}
        finally:
            conn.close()
        f = health.check_freshness(newest, th)
        out.append(f"  {'freshness':<17} {verdict(f)} {f.message[:300]}")
        return out

    def dag_verdicts() -> list[str]:
        conn = _pg(s)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT to_regclass('pipeline_health.checks')")
                if cur.fetchone()[0] is None:
                    return [f"  {'pipeline_health':<17}        no run yet (unpause the pipeline_health DAG)"]
                cur.execute("SELECT DISTINCT ON (check_name) check_name, ok, checked_at FROM pipeline_health.checks "
                            "ORDER BY check_name, checked_at DESC")
                rows = cur.fetchall()
        finally:
            conn.close()
        if not rows:
            return [f"  {'pipeline_health':<17}        no run yet (unpause the pipeline_health DAG)"]
        verdicts = ", ".join(f"{name} {'ok' if ok else 'FAILED'} ({_ago(at, now)})" for name, ok, at in rows)
        return [f"  {'pipeline_health':<17}        last DAG verdicts: {verdicts}"]

    for name, fn in (("connector", connector), ("replication slot", slot), ("stream", stream),
                     ("pipeline_health", dag_verdicts)):
        probe(name, fn)
    return lines


def print_health(s: dict[str, str]) -> None:
    print("\nhealth (measured now, read-only; the pipeline_health DAG does the same every minute)")
    for line in health_lines(s):
        print(line)


# --------------------------------------------------------------------------- demo


def _api(s: dict[str, str], method: str, path: str, body: dict | None = None, token: str | None = None) -> dict:
    req = urllib.request.Request(f"{s['AIRFLOW_URL']}{path}", method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json",
                                          **({"Authorization": f"Bearer {token}"} if token else {})})
    with urllib.request.urlopen(req, timeout=15) as resp:  # noqa: S310 - loopback URL from .env
        return json.loads(resp.read() or b"{}")


def _token(s: dict[str, str]) -> str:
    return _api(s, "POST", "/auth/token", {"username": s["AIRFLOW_ADMIN_USER"],
                                           "password": s["AIRFLOW_ADMIN_PASSWORD"]})["access_token"]


def _unpause(s: dict[str, str], dag_id: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            token = _token(s)
            _api(s, "PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False}, token)
            print(f"  unpaused {dag_id}")
            return
        except urllib.error.HTTPError as exc:
            # 404 until the dag-processor has parsed the file
            if exc.code != 404 or time.monotonic() > deadline:
                raise ls.StackError(f"could not unpause {dag_id}: HTTP {exc.code} {exc.read()[:200]!r}") from exc
            time.sleep(3)


def run_cdc_setup(s: dict[str, str]) -> None:
    print("  running cdc_setup (connector, publication, keyspace)")
    r = subprocess.run([str(ls.VENV_BIN / "airflow"), "dags", "test", "cdc_setup"], env=ls.service_env(s),
                       capture_output=True, text=True, check=False, cwd=str(ls.REPO))
    out = r.stdout + r.stderr
    if r.returncode != 0 or "state=failed" in out or "DagRunState.FAILED" in out:
        raise ls.StackError(f"cdc_setup failed:\n{out[-4000:]}")


def wait_for_flow(s: dict[str, str], since: datetime, timeout: float) -> list[Stage]:
    """Wait until data committed after `since` is in every stage (every table non-empty, and each
    stage's freshest source time, or Kafka's event count, moved on), printing progress."""
    deadline = time.monotonic() + timeout
    baseline = {st.name: st.rows for st in stages(s)}
    last = ""
    while True:
        current = stages(s)
        summary = ", ".join(f"{st.name}: {'?' if st.error else st.rows}" for st in current)
        if summary != last:
            print(f"  {summary}")
            last = summary

        def arrived(st: Stage) -> bool:
            if st.error or not all((st.counts.get(t) or 0) > 0 for t in TABLES):
                return False
            if st.name == "kafka topics":
                return st.rows > baseline.get(st.name, 0)
            return st.freshest is not None and st.freshest >= since

        if all(arrived(st) for st in current):
            return current
        if time.monotonic() > deadline:
            raise ls.StackError(
                f"data has not reached every stage after {timeout:.0f}s ({summary}). Look at the DAG runs in "
                f"Airflow ({s['AIRFLOW_URL']}) and the logs in {ls.LOGS}; online mode needs Binance to be reachable "
                "(use `make demo OFFLINE=1` without it)")
        time.sleep(10)


def demo(offline: bool, timeout: float) -> None:
    ls.RUN.mkdir(parents=True, exist_ok=True)
    ls.MODE_FILE.write_text("offline\n" if offline else "online\n")
    if ls.main(["up"]) != 0:
        raise ls.StackError("the local stack did not come up (see above)")
    s = ls.load_env()
    print(f"pipeline ({'offline: bundled Binance-compatible server' if offline else 'online: Binance API'})")
    started = datetime.now(UTC)
    run_cdc_setup(s)
    for dag_id in DEMO_DAGS:
        _unpause(s, dag_id)
    print("  waiting for data in every stage (extract every minute, stream continuous, bridge every minute)")
    wait_for_flow(s, started, timeout)
    print_stages(s)
    print_health(s)
    print(f"""
Airflow:  {s['AIRFLOW_URL']}   login: {s['AIRFLOW_ADMIN_USER']} / {s['AIRFLOW_ADMIN_PASSWORD']}
Status:   make status
Grafana:  with Docker, `docker compose up -d grafana` (uses this .env; dashboards in grafana/dashboards),
          then open http://127.0.0.1:3000 ; it reads Postgres schemas cassandra (dashboard "Binance market")
          and pipeline_health (dashboard "Pipeline health") as {s['GRAFANA_DB_USER']}.""")


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--offline", action="store_true")
    p.add_argument("--timeout", type=float, default=480)
    args = p.parse_args(argv)
    try:
        demo(args.offline, args.timeout)
    except ls.StackError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
