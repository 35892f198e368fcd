"""Pipeline health checks, free of Airflow: connector, replication slot, stream lag, freshness.

Each check measures, stores its measurements in Postgres schema `pipeline_health` (one
transaction, with its verdict in `pipeline_health.checks`) and returns a `CheckResult`; the
`pipeline_health` DAG fails the check's task when it is not ok, with the message, which says
what is wrong and what to do. `make status` runs the same measurements without storing them or
restarting anything.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any

from include.cdc.kafka_connect import ConnectError, KafkaConnectClient, failures
from include.names import (
    BRIDGE_SCHEMA,
    CDC_TOPIC_PREFIX,
    CONNECTOR,
    HEALTH_SCHEMA,
    SLOT,
    SOURCE_SCHEMA,
    STREAM_QUERY_NAME,
    table_of_topic,
)
from include.tables import BRIDGE_TABLES, TABLES
from include.times import as_utc

log = logging.getLogger(__name__)

STAGES = (f"postgres {SOURCE_SCHEMA}", "cassandra", f"postgres {BRIDGE_SCHEMA}")
RESNAPSHOT_HINT = ('trigger the cdc_setup DAG with {"resnapshot": true}: it drops the connector\'s slot and '
                   "offsets, re-registers the connector and copies every table again (see README, Guarantees)")


class HealthCheckFailed(RuntimeError):
    """A check found the pipeline unhealthy; the message says what is wrong and what to do."""


@dataclass(frozen=True)
class Thresholds:
    """Limits of the checks, from the Variable `pipeline_health_thresholds` (JSON, any subset)."""

    # WAL the slot may hold back before the check fails; Postgres invalidates it at max_slot_wal_keep_size
    max_retained_wal_bytes: int = 512 * 1024 * 1024
    # change events in Kafka the stream has not applied yet
    max_stream_lag: int = 20_000
    # a stream with lag that has not finished a batch for this long is stalled
    max_stream_idle_seconds: float = 120
    # newest market data in Postgres `binance`
    max_source_age_seconds: float = 600
    # how far Cassandra may be behind Postgres `binance`, and the bridge behind Cassandra
    max_cassandra_delay_seconds: float = 180
    max_bridge_delay_seconds: float = 300
    connector_restart_attempts: int = 3
    connector_restart_backoff_seconds: float = 5
    history_days: float = 7
    # after the pipeline (re)starts, or a stage first receives data, the stages after it may be empty
    # or behind this long: the freshness and lag checks pass as "warming up" meanwhile (WarmUp)
    warmup_seconds: float = 600

    @classmethod
    def from_json(cls, raw: str | dict | None) -> Thresholds:
        if raw in (None, ""):
            return cls()
        try:
            values = json.loads(raw) if isinstance(raw, str) else dict(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"pipeline_health_thresholds is not valid JSON ({exc}): {str(raw)[:100]!r}") from exc
        known = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"pipeline_health_thresholds has unknown keys {unknown}; known: {sorted(known)}")
        defaults = cls()
        out = {}
        for name, value in values.items():
            kind = type(getattr(defaults, name))
            try:
                out[name] = kind(value)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"pipeline_health_thresholds.{name} must be a number, got {value!r}") from exc
        return cls(**out)


@dataclass
class CheckResult:
    name: str
    ok: bool
    message: str
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def raise_if_failed(self) -> CheckResult:
        if not self.ok:
            raise HealthCheckFailed(f"{self.name}: {self.message}")
        return self


def _now() -> datetime:
    return datetime.now(UTC)


def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1024 / 1024:.1f} MB"


# --------------------------------------------------------------------------- connector


def _state_rows(status: dict[str, Any], restarts: int, at: datetime) -> list[dict[str, Any]]:
    conn = status.get("connector", {})
    rows = [{"checked_at": at, "connector": status.get("name", CONNECTOR), "task_id": -1,
             "state": conn.get("state", "UNKNOWN"), "worker_id": conn.get("worker_id"), "restarts": restarts,
             "trace": (conn.get("trace") or "")[:4000] or None}]
    for t in status.get("tasks", []):
        rows.append({"checked_at": at, "connector": status.get("name", CONNECTOR), "task_id": int(t.get("id", 0)),
                     "state": t.get("state", "UNKNOWN"), "worker_id": t.get("worker_id"), "restarts": restarts,
                     "trace": (t.get("trace") or "")[:4000] or None})
    return rows


def _all_running(status: dict[str, Any]) -> bool:
    tasks = status.get("tasks", [])
    return status.get("connector", {}).get("state") == "RUNNING" and bool(tasks) and all(
        t.get("state") == "RUNNING" for t in tasks)


def check_connector(client: KafkaConnectClient, th: Thresholds, name: str = CONNECTOR, heal: bool = True,
                    sleep: Callable[[float], None] = time.sleep, settle_seconds: float = 30) -> CheckResult:
    """States of the connector and its tasks. A FAILED one is restarted through the REST API
    (bounded attempts, exponential backoff); the check fails if it stays FAILED, or is PAUSED."""
    check = "connector"
    try:
        status = client.status(name)
    except ConnectError as exc:
        if "HTTP 404" in str(exc):
            return CheckResult(check, False, f"connector {name} is not registered on Kafka Connect: run cdc_setup")
        return CheckResult(check, False, f"Kafka Connect did not answer ({exc}): is it running? (`make status`)")
    except OSError as exc:
        return CheckResult(check, False, f"Kafka Connect unreachable ({exc}): is it running? (`make up` locally)")
    restarts = 0
    if heal:
        while failures(status) and restarts < th.connector_restart_attempts:
            restarts += 1
            log.warning("connector %s has FAILED parts, restart %d/%d:\n%s", name, restarts,
                        th.connector_restart_attempts, "\n".join(f[:300] for f in failures(status)))
            client.restart(name, include_tasks=True, only_failed=True)
            sleep(th.connector_restart_backoff_seconds * 2 ** (restarts - 1))
            status = _settle(client, name, settle_seconds, sleep)
    rows = {"connector_states": _state_rows(status, restarts, _now())}
    states = ", ".join(f"{r['task_id'] if r['task_id'] >= 0 else 'connector'}={r['state']}"
                       for r in rows["connector_states"])
    failed = failures(status)
    if failed:
        done = f" after {restarts} restart(s)" if restarts else ""
        return CheckResult(check, False, f"connector {name} is FAILED{done} ({states}). Fix the cause in the trace, "
                           f"then restart it: POST /connectors/{name}/restart?includeTasks=true&onlyFailed=true "
                           f"(or let the next pipeline_health run do it). Trace:\n" + "\n".join(failed)[:3000], rows)
    if status.get("connector", {}).get("state") == "PAUSED" or any(
            t.get("state") == "PAUSED" for t in status.get("tasks", [])):
        return CheckResult(check, False, f"connector {name} is PAUSED ({states}): the replication slot retains WAL "
                           f"while it is; resume it with PUT /connectors/{name}/resume", rows)
    if not _all_running(status):
        return CheckResult(check, False, f"connector {name} is not RUNNING ({states}): look at the Kafka Connect "
                           "log; a worker that lost its tasks is rebalancing", rows)
    healed = f", after {restarts} restart(s)" if restarts else ""
    return CheckResult(check, True, f"connector {name} RUNNING ({states}){healed}", rows)


def _settle(client: KafkaConnectClient, name: str, timeout: float, sleep: Callable[[float], None]) -> dict[str, Any]:
    """Poll /status until every part is RUNNING or one is FAILED again, or the timeout passes."""
    deadline = time.monotonic() + timeout
    status = client.status(name)
    while time.monotonic() < deadline and not _all_running(status) and not failures(status):
        sleep(2)
        status = client.status(name)
    return status


# --------------------------------------------------------------------------- replication slot


def measure_slot(pg: Any, slot: str = SLOT) -> dict[str, Any]:
    with pg.cursor() as cur:
        cur.execute(
            "SELECT active, wal_status, pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint, "
            "pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint, safe_wal_size "
            "FROM pg_replication_slots WHERE slot_name = %s", (slot,))
        row = cur.fetchone()
    pg.rollback()
    if row is None:
        return {"slot_name": slot, "present": False, "active": None, "wal_status": None,
                "retained_wal_bytes": None, "unconfirmed_bytes": None, "safe_wal_size_bytes": None}
    active, wal_status, retained, unconfirmed, safe = row
    return {"slot_name": slot, "present": True, "active": active, "wal_status": wal_status,
            "retained_wal_bytes": retained, "unconfirmed_bytes": unconfirmed, "safe_wal_size_bytes": safe}


def check_slot(pg: Any, th: Thresholds, slot: str = SLOT) -> CheckResult:
    """Active or not, WAL retained behind restart_lsn, wal_status; an invalidated slot is reported
    with the recovery path."""
    m = measure_slot(pg, slot)
    rows = {"slot_states": [{"checked_at": _now(), **m}]}
    if not m["present"]:
        return CheckResult("replication_slot", False, f"replication slot {slot} does not exist: changes made since it "
                           f"went are not captured. Recover: {RESNAPSHOT_HINT}", rows)
    desc = (f"slot {slot} {'active' if m['active'] else 'INACTIVE'}, wal_status {m['wal_status']}, retains "
            f"{_mb(m['retained_wal_bytes'])} of WAL ({_mb(m['unconfirmed_bytes'])} not yet confirmed by Debezium)")
    if m["wal_status"] == "lost":
        return CheckResult("replication_slot", False, f"{desc}: the slot was INVALIDATED (its WAL exceeded "
                           f"max_slot_wal_keep_size and was removed), so changes were lost. Recover: {RESNAPSHOT_HINT}",
                           rows)
    retained = m["retained_wal_bytes"] or 0
    if retained > th.max_retained_wal_bytes or m["wal_status"] == "unreserved":
        left = f"; {_mb(m['safe_wal_size_bytes'])} left before Postgres invalidates it" \
            if m["safe_wal_size_bytes"] is not None else ""
        return CheckResult("replication_slot", False, f"{desc}, above the threshold of "
                           f"{_mb(th.max_retained_wal_bytes)}{left}. The connector is not confirming: check the "
                           "connector check (PAUSED/FAILED), Kafka Connect and Kafka", rows)
    return CheckResult("replication_slot", True, desc, rows)


# --------------------------------------------------------------------------- warming up

# pipeline_health's own history with no check for this long: the pipeline (or its monitoring) was down
RESTART_GAP = timedelta(minutes=5)


@dataclass(frozen=True)
class WarmUp:
    """When the pipeline last (re)started and when each stage began holding data, read from the
    freshness checks' history: `started_at` is the first check after the newest gap of more than
    RESTART_GAP between checks (now, with no history: a first run), `first_data[stage]` the first
    check of the stage's current run of checks that found data in it (None: none now)."""

    now: datetime
    started_at: datetime
    first_data: dict[str, datetime | None]
    warmup_seconds: float

    @property
    def restarted(self) -> bool:
        """The pipeline started less than warmup_seconds ago."""
        return (self.now - self.started_at).total_seconds() < self.warmup_seconds

    def fresh(self, stage: str) -> bool:
        """`stage` began holding data less than warmup_seconds ago (the stage after it may still be empty)."""
        since = self.first_data.get(stage)
        return since is not None and (self.now - since).total_seconds() < self.warmup_seconds

    def after(self, stage: str) -> bool:
        """The stage after `stage` is still warming up: just (re)started, or `stage` just got data."""
        return self.restarted or self.fresh(stage)


def warm_up(history: Iterable[tuple[datetime, str, datetime | None]], current: dict[str, datetime | None],
            th: Thresholds, now: datetime | None = None) -> WarmUp:
    """WarmUp from the freshness rows of the last warmup_seconds + RESTART_GAP (checked_at, stage,
    newest_source_ts) and the stages' newest data measured now (`current`)."""
    now = now or _now()
    rows = sorted(((as_utc(at), stage, ts) for at, stage, ts in history), reverse=True)
    started = now
    for at in sorted({at for at, _, _ in rows}, reverse=True):
        if started - at > RESTART_GAP:
            break
        started = at
    first: dict[str, datetime | None] = {}
    for stage in STAGES:
        if current.get(stage) is None:
            first[stage] = None
            continue
        since = now
        for at, name, ts in rows:
            if name != stage:
                continue
            if ts is None or since - at > RESTART_GAP:
                break
            since = at
        first[stage] = since
    return WarmUp(now, started, first, th.warmup_seconds)


def freshness_history(pg: Any, th: Thresholds) -> list[tuple[datetime, str, datetime | None]]:
    """The freshness checks' rows of the last warmup_seconds + RESTART_GAP, for `warm_up`."""
    window = timedelta(seconds=th.warmup_seconds) + RESTART_GAP
    with pg.cursor() as cur:
        cur.execute("SELECT to_regclass(%s)", (f"{HEALTH_SCHEMA}.freshness",))
        if cur.fetchone()[0] is None:
            pg.rollback()
            return []
        cur.execute(f"SELECT checked_at, stage, newest_source_ts FROM {HEALTH_SCHEMA}.freshness "
                    "WHERE checked_at > %s", (_now() - window,))
        rows = cur.fetchall()
    pg.rollback()
    return rows


# --------------------------------------------------------------------------- stream lag


def kafka_end_offsets(admin: Any, prefix: str = CDC_TOPIC_PREFIX, timeout: float = 15) -> dict[tuple[str, int], int]:
    """Newest offset per partition of every CDC topic, through a confluent-kafka AdminClient."""
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import OffsetSpec

    meta = admin.list_topics(timeout=timeout)
    wanted = [TopicPartition(name, p) for name, t in meta.topics.items() if name.startswith(prefix)
              for p in t.partitions]
    if not wanted:
        return {}
    futures = admin.list_offsets({tp: OffsetSpec.latest() for tp in wanted}, request_timeout=timeout)
    return {(tp.topic, tp.partition): f.result().offset for tp, f in futures.items()}


def processed_offsets(session: Any, keyspace: str, query_name: str = STREAM_QUERY_NAME) -> dict[tuple[str, int], Any]:
    rows = session.execute(f'SELECT topic, partition, next_offset, newest_source_ts, updated_at FROM "{keyspace}".'
                           "stream_offsets WHERE query_name = %s", (query_name,))
    return {(r.topic, r.partition): r for r in rows}


def last_batch(session: Any, keyspace: str, query_name: str = STREAM_QUERY_NAME) -> Any:
    """The stream's last finished micro-batch (`stream_position`, one row per query), or None."""
    return session.execute(f'SELECT * FROM "{keyspace}".stream_position WHERE query_name = %s',
                           (query_name,)).one()


def check_stream_lag(end: dict[tuple[str, int], int], done: dict[tuple[str, int], Any], last: Any,
                     th: Thresholds, warm: WarmUp | None = None) -> CheckResult:
    """Kafka end offsets minus the offsets the stream has applied, per topic partition. While the
    pipeline warms up (`warm`: just started, or Cassandra just began receiving data, as when an
    initial snapshot streams through) lag above the threshold and a stream that has not reported a
    batch yet pass as "warming up"; after warmup_seconds they fail as usual."""
    at = _now()
    rows = []
    per_topic: dict[str, int] = {}
    for (topic, partition), end_offset in sorted(end.items()):
        seen = done.get((topic, partition))
        processed = seen.next_offset if seen is not None else None
        lag = max(end_offset - (processed or 0), 0)
        rows.append({"checked_at": at, "topic": topic, "partition": partition, "end_offset": end_offset,
                     "processed_offset": processed, "lag": lag})
        per_topic[topic] = per_topic.get(topic, 0) + lag
    total = sum(per_topic.values())
    idle = None
    if last is not None and last.finished_at is not None:
        idle = (at - last.finished_at.replace(tzinfo=UTC)).total_seconds()
    lags = ", ".join(f"{table_of_topic(t) or t}={n}" for t, n in per_topic.items() if n) or "none"
    where = f"last batch {idle:.0f}s ago" if idle is not None else "the stream has never reported a batch"
    desc = f"stream lag {total} event(s) ({lags}); {where}"
    todo = ("is the cdc_stream DAG unpaused and its run_cdc_stream task running? Its log says why it stopped; "
            "Airflow restarts it (retries, @continuous)")
    problem = None
    if total > th.max_stream_lag:
        problem = f"{desc}, above the threshold of {th.max_stream_lag}: {todo}"
    elif total > 0 and (idle is None or idle > th.max_stream_idle_seconds):
        problem = f"{desc}: the stream is not making progress; {todo}"
    if problem is not None and warm is not None and (warm.after(STAGES[0]) or warm.fresh(STAGES[1])):
        reason = _warm_reason(warm, STAGES[0] if warm.after(STAGES[0]) else STAGES[1])
        return CheckResult("stream_lag", True, f"warming up: {desc} ({reason})", {"stream_lag": rows})
    if problem is not None:
        return CheckResult("stream_lag", False, problem, {"stream_lag": rows})
    return CheckResult("stream_lag", True, desc, {"stream_lag": rows})


def measure_stream_lag(admin: Any, session: Any, keyspace: str, th: Thresholds,
                       timeout: float = 15, pg: Any | None = None) -> tuple[CheckResult, Any]:
    """check_stream_lag on the live figures: Kafka's end offsets (an AdminClient) against the offsets
    the stream reported in Cassandra; with `pg`, judged with the pipeline's warm-up (its freshness
    history). Also returns the stream's last batch (None before the first)."""
    end = kafka_end_offsets(admin, timeout=timeout)
    done = processed_offsets(session, keyspace)
    last = last_batch(session, keyspace)
    warm = None
    if pg is not None:
        current = dict(zip(STAGES, (newest_in_postgres(pg, SOURCE_SCHEMA), newest_in_cassandra(done),
                                    newest_in_postgres(pg, BRIDGE_SCHEMA)), strict=True))
        warm = warm_up(freshness_history(pg, th), current, th)
    return check_stream_lag(end, done, last, th, warm), last


def stream_batches_since(session: Any, keyspace: str, since: datetime | None, th: Thresholds | None = None,
                         query_name: str = STREAM_QUERY_NAME, now: datetime | None = None) -> list[dict[str, Any]]:
    """The stream's batches finished after `since` (at most `history_days` back), as rows of
    pipeline_health.stream_batches: one read per hour partition of `stream_progress`."""
    now = now or _now()
    oldest = now - timedelta(days=(th or Thresholds()).history_days)
    since = (max(since, oldest) if since is not None else oldest).astimezone(UTC)
    stmt = session.prepare(f'SELECT * FROM "{keyspace}".stream_progress WHERE query_name = ? AND hour = ? '
                           "AND finished_at > ?")
    hour = since.replace(minute=0, second=0, microsecond=0)
    rows = []
    while hour <= now:
        rows.extend(session.execute(stmt, (query_name, hour, since)))
        hour += timedelta(hours=1)
    out = []
    for r in rows:
        finished = r.finished_at.replace(tzinfo=UTC)
        newest = r.newest_source_ts.replace(tzinfo=UTC) if r.newest_source_ts else None
        out.append({"query_name": r.query_name, "finished_at": finished, "batch_id": r.batch_id,
                    "input_rows": r.input_rows or 0, "processing_ms": r.processing_ms or 0,
                    "newest_source_ts": newest,
                    "latency_ms": int((finished - newest).total_seconds() * 1000) if newest else None})
    return out


# --------------------------------------------------------------------------- freshness


def newest_in_postgres(pg: Any, schema: str) -> datetime | None:
    """Newest observation in `binance` (tables with an observation time), or newest source commit
    in the bridge (`cassandra`, cdc_source_ts is indexed)."""
    tables = TABLES if schema == SOURCE_SCHEMA else BRIDGE_TABLES
    parts = [f"(SELECT max({t.freshness_column}) FROM {schema}.{name})" for name, t in tables.items()
             if t.freshness_column]
    with pg.cursor() as cur:
        cur.execute("SELECT to_regclass(%s)", (f"{schema}.{next(iter(TABLES))}",))
        if cur.fetchone()[0] is None:
            pg.rollback()
            return None
        cur.execute(f"SELECT greatest({', '.join(parts)})")
        newest = cur.fetchone()[0]
    pg.rollback()
    return newest


def newest_in_cassandra(done: dict[tuple[str, int], Any]) -> datetime | None:
    times = [r.newest_source_ts.replace(tzinfo=UTC) for (topic, _), r in done.items()
             if r.newest_source_ts is not None and table_of_topic(topic) in TABLES]
    return max(times, default=None)


def _warm_reason(warm: WarmUp, stage: str) -> str:
    if warm.restarted:
        return f"the pipeline started {(warm.now - warm.started_at).total_seconds():.0f}s ago"
    since = warm.first_data.get(stage)
    return f"{stage} has held data for {(warm.now - since).total_seconds():.0f}s" if since else "starting"


def check_freshness(newest: dict[str, datetime | None], th: Thresholds, warm: WarmUp | None = None) -> CheckResult:
    """Per stage, now minus its newest source time; each stage is judged against the one before it,
    so the message names the stage where data stops. While the pipeline warms up (`warm`), a stage
    that is empty or behind passes as "warming up" when the pipeline started less than
    warmup_seconds ago, or the stage before it began holding data less than that ago; after that
    it fails as usual."""
    at = _now()
    rows = [{"checked_at": at, "stage": stage, "newest_source_ts": newest.get(stage),
             "age_seconds": (at - newest[stage]).total_seconds() if newest.get(stage) else None} for stage in STAGES]
    ages = ", ".join(f"{r['stage']} " + ("-" if r["age_seconds"] is None else f"{r['age_seconds']:.0f}s")
                     for r in rows)
    desc = f"age of the newest data: {ages}"
    src, cas, bridge = (newest.get(s) for s in STAGES)
    # (problem, warming up): each stage's own grace is the stage before it having just begun
    problems: list[tuple[str, str | None]] = []

    def grace(condition: bool, stage: str) -> str | None:
        return _warm_reason(warm, stage) if condition and warm is not None else None

    if src is None or (at - src).total_seconds() > th.max_source_age_seconds:
        problems.append((f"no market data in Postgres {SOURCE_SCHEMA} for more than {th.max_source_age_seconds:.0f}s: "
                         "is binance_extract unpaused and succeeding? (its task logs name the failing call)",
                         grace(warm is not None and warm.restarted, STAGES[0])))
    if src is not None and (cas is None or (src - cas).total_seconds() > th.max_cassandra_delay_seconds):
        behind = "holds nothing" if cas is None else f"is {(src - cas).total_seconds():.0f}s behind Postgres"
        problems.append((f"Cassandra {behind} (threshold {th.max_cassandra_delay_seconds:.0f}s): check the "
                         "connector, replication_slot and stream_lag checks (paused/failed connector, stopped stream)",
                         grace(warm is not None and warm.after(STAGES[0]), STAGES[0])))
    if cas is not None and (bridge is None or (cas - bridge).total_seconds() > th.max_bridge_delay_seconds):
        behind = "holds nothing" if bridge is None else f"is {(cas - bridge).total_seconds():.0f}s behind Cassandra"
        problems.append((f"the bridge (Postgres {BRIDGE_SCHEMA}) {behind} (threshold "
                         f"{th.max_bridge_delay_seconds:.0f}s): is cassandra_bridge unpaused and succeeding?",
                         grace(warm is not None and warm.after(STAGES[1]), STAGES[1])))
    real = [p for p, warming in problems if warming is None]
    warming = [f"{p.split(':')[0]} ({why})" for p, why in problems if why is not None]
    if real:
        also = f" Warming up: {'; '.join(warming)}." if warming else ""
        return CheckResult("freshness", False, f"{desc}. " + " ".join(real) + also, {"freshness": rows})
    if warming:
        return CheckResult("freshness", True, f"warming up: {'; '.join(warming)}. {desc}", {"freshness": rows})
    return CheckResult("freshness", True, desc, {"freshness": rows})


def measure_freshness(pg: Any, session: Any, keyspace: str, th: Thresholds, warming: bool = True) -> CheckResult:
    """check_freshness on the live figures: the newest source time in each stage, judged with the
    pipeline's warm-up (its freshness history) unless `warming` is False."""
    newest = dict(zip(STAGES, (newest_in_postgres(pg, SOURCE_SCHEMA),
                               newest_in_cassandra(processed_offsets(session, keyspace)),
                               newest_in_postgres(pg, BRIDGE_SCHEMA)), strict=True))
    warm = warm_up(freshness_history(pg, th), newest, th) if warming else None
    return check_freshness(newest, th, warm)


# --------------------------------------------------------------------------- the bridge


FORCED = ("first run", "requested")


def check_bridge(states: list[dict[str, Any]], since: datetime | None) -> CheckResult:
    """A table the bridge had to copy whole by itself since the previous check (its watermark was
    older than the change log keeps: it was paused or failing for that long) is reported, once:
    the copy restored it, but someone should know why it fell behind."""
    forced = [s for s in states if s.get("full_copy_at") is not None and s.get("full_copy_reason") not in FORCED
              and (since is None or s["full_copy_at"] > since)]
    modes = ", ".join(f"{s['table']} {s.get('mode') or '-'}" for s in states) or "no table synced yet"
    if forced:
        what = "; ".join(f"{s['table']} at {s['full_copy_at']:%Y-%m-%d %H:%M:%S} ({s['full_copy_reason']})"
                         for s in forced)
        return CheckResult("bridge", False, f"cassandra_bridge copied whole by itself: {what}. Its watermark was older "
                           "than the change log keeps, so it copied the table instead of the changes: nothing is "
                           "missing now, but the bridge was paused or failing for that long; its run history says "
                           "why", {})
    return CheckResult("bridge", True, f"bridge: {modes}" + (f"; checked since {since:%H:%M:%S}" if since else ""), {})


def previous_check(pg: Any, name: str) -> datetime | None:
    """When the check `name` last stored a verdict (None: never)."""
    with pg.cursor() as cur:
        cur.execute(f"SELECT max(checked_at) FROM {HEALTH_SCHEMA}.checks WHERE check_name = %s", (name,))
        at = cur.fetchone()[0]
    pg.rollback()
    return at


# --------------------------------------------------------------------------- storage


_COLUMNS = {
    "connector_states": ("checked_at", "connector", "task_id", "state", "worker_id", "restarts", "trace"),
    "slot_states": ("checked_at", "slot_name", "present", "active", "wal_status", "retained_wal_bytes",
                    "unconfirmed_bytes", "safe_wal_size_bytes"),
    "stream_lag": ("checked_at", "topic", "partition", "end_offset", "processed_offset", "lag"),
    "freshness": ("checked_at", "stage", "newest_source_ts", "age_seconds"),
    "stream_batches": ("query_name", "finished_at", "batch_id", "input_rows", "processing_ms", "newest_source_ts",
                       "latency_ms"),
}


# every table of schema pipeline_health (include/sql/pipeline_health), for Grafana; and the time
# column by which each table holding measurements is pruned (the reconciliation's cursor is state)
HEALTH_TABLES = ("checks", *_COLUMNS, "reconciliation", "reconciliation_runs", "reconciliation_cursor")
_PRUNED_BY = {**{t: "checked_at" for t in HEALTH_TABLES if t != "reconciliation_cursor"},
              "stream_batches": "finished_at"}


def _insert(cur: Any, table: str, rows: Iterable[dict[str, Any]]) -> int:
    cols = _COLUMNS[table]
    values = [tuple(r[c] for c in cols) for r in rows]
    if not values:
        return 0
    placeholders = ", ".join(["%s"] * len(cols))
    cur.executemany(f"INSERT INTO {HEALTH_SCHEMA}.{table} ({', '.join(cols)}) VALUES ({placeholders}) "
                    "ON CONFLICT DO NOTHING", values)
    return len(values)


def store(pg: Any, result: CheckResult) -> None:
    """The check's measurements and its verdict, in one transaction."""
    with pg.cursor() as cur:
        for table, rows in result.rows.items():
            _insert(cur, table, rows)
        cur.execute(f"INSERT INTO {HEALTH_SCHEMA}.checks (checked_at, check_name, ok, message) VALUES "
                    "(%s, %s, %s, %s) ON CONFLICT DO NOTHING", (_now(), result.name, result.ok, result.message))
    pg.commit()
    (log.info if result.ok else log.error)("%s: %s", result.name, result.message)


def store_stream_batches(pg: Any, session: Any, keyspace: str, query_name: str = STREAM_QUERY_NAME) -> int:
    """Copy the stream's batches newer than those already in Postgres (Grafana's latency panels)."""
    with pg.cursor() as cur:
        cur.execute(f"SELECT max(finished_at) FROM {HEALTH_SCHEMA}.stream_batches WHERE query_name = %s",
                    (query_name,))
        since = cur.fetchone()[0]
        rows = stream_batches_since(session, keyspace, since, query_name=query_name)
        n = _insert(cur, "stream_batches", rows)
    pg.commit()
    log.info("copied %d stream batch(es) finished after %s", n, since)
    return n


def prune(pg: Any, th: Thresholds) -> dict[str, int]:
    """Delete measurements older than `history_days`."""
    out = {}
    with pg.cursor() as cur:
        for table, col in _PRUNED_BY.items():
            cur.execute(f"DELETE FROM {HEALTH_SCHEMA}.{table} WHERE {col} < now() - %s * interval '1 day'",
                        (th.history_days,))
            out[table] = cur.rowcount
    pg.commit()
    return out
