"""The health checks' verdicts and messages, from measurements given by hand.

What the checks read from Kafka Connect, Postgres, Kafka and Cassandra is exercised against the
real stack in tests/integration/test_health.py; here only the decisions are.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from include import names
from include.cdc.kafka_connect import ConnectError
from include.health import checks as health

NOW = datetime.now(UTC)


@pytest.fixture(autouse=True)
def _clock(monkeypatch):
    """The checks' clock stands at NOW: the suite may run these tests minutes after importing them."""
    monkeypatch.setattr(health, "_now", lambda: NOW)
TOPIC = names.CDC_TOPIC_PREFIX + "latest_prices"


# --------------------------------------------------------------------------- thresholds


def test_thresholds_default_when_the_variable_is_unset():
    assert health.Thresholds.from_json(None) == health.Thresholds()
    assert health.Thresholds.from_json("") == health.Thresholds()


def test_thresholds_take_any_subset_and_keep_types():
    th = health.Thresholds.from_json('{"max_stream_lag": "500", "max_source_age_seconds": 30}')
    assert th.max_stream_lag == 500 and isinstance(th.max_stream_lag, int)
    assert th.max_source_age_seconds == 30.0
    assert th.max_retained_wal_bytes == health.Thresholds().max_retained_wal_bytes


@pytest.mark.parametrize(("raw", "named"), [
    ("{not json", "not valid JSON"),
    ('{"max_lag": 5}', "unknown keys ['max_lag']"),
    ('{"max_stream_lag": "many"}', "pipeline_health_thresholds.max_stream_lag must be a number"),
])
def test_bad_thresholds_name_what_is_wrong(raw, named):
    with pytest.raises(ValueError, match="pipeline_health_thresholds") as err:
        health.Thresholds.from_json(raw)
    assert named in str(err.value)


# --------------------------------------------------------------------------- connector


class ScriptedConnect:
    """Answers /status from a script, one entry per call (the last one repeats); records restarts."""

    def __init__(self, *statuses: dict | Exception) -> None:
        self.statuses = list(statuses)
        self.restarts: list[tuple[str, bool, bool]] = []

    def status(self, name: str) -> dict:
        answer = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def restart(self, name: str, include_tasks: bool = True, only_failed: bool = True) -> None:
        self.restarts.append((name, include_tasks, only_failed))


def _status(connector: str = "RUNNING", *tasks: str) -> dict:
    return {"name": names.CONNECTOR, "connector": {"state": connector, "worker_id": "127.0.0.1:8083"},
            "tasks": [{"id": i, "state": s, "worker_id": "127.0.0.1:8083",
                       **({"trace": "org.postgresql.util.PSQLException: must be replication"} if s == "FAILED" else {})}
                      for i, s in enumerate(tasks or ("RUNNING",))]}


def _check(client: ScriptedConnect, **th) -> health.CheckResult:
    sleeps: list[float] = []
    result = health.check_connector(client, health.Thresholds(**th), sleep=sleeps.append, settle_seconds=0)
    result.sleeps = sleeps
    return result


def test_a_running_connector_passes_and_is_recorded_per_task():
    result = _check(ScriptedConnect(_status("RUNNING", "RUNNING", "RUNNING")))
    assert result.ok and "RUNNING" in result.message
    rows = result.rows["connector_states"]
    assert [(r["task_id"], r["state"]) for r in rows] == [(-1, "RUNNING"), (0, "RUNNING"), (1, "RUNNING")]


def test_a_failed_task_is_restarted_with_backoff_and_passes_once_running():
    client = ScriptedConnect(_status("RUNNING", "FAILED"), _status("RUNNING", "FAILED"), _status("RUNNING", "RUNNING"))
    result = _check(client, connector_restart_backoff_seconds=5)
    assert result.ok, result.message
    assert "after 2 restart(s)" in result.message
    assert client.restarts == [(names.CONNECTOR, True, True)] * 2
    assert result.sleeps == [5, 10]
    assert {r["restarts"] for r in result.rows["connector_states"]} == {2}


def test_a_task_that_stays_failed_fails_the_check_with_its_trace_and_what_to_do():
    client = ScriptedConnect(_status("RUNNING", "FAILED"))
    result = _check(client, connector_restart_attempts=3)
    assert not result.ok
    assert len(client.restarts) == 3
    assert "FAILED after 3 restart(s)" in result.message
    assert "must be replication" in result.message
    assert "/restart?includeTasks=true&onlyFailed=true" in result.message
    with pytest.raises(health.HealthCheckFailed, match="^connector: connector binance-postgres is FAILED"):
        result.raise_if_failed()


def test_a_paused_connector_fails_the_check_and_is_not_restarted():
    client = ScriptedConnect(_status("PAUSED", "PAUSED"))
    result = _check(client)
    assert not result.ok and "PAUSED" in result.message and "/resume" in result.message
    assert client.restarts == []


def test_an_unregistered_or_unreachable_connector_says_what_to_do():
    missing = _check(ScriptedConnect(ConnectError("GET http://x/connectors/binance-postgres/status -> HTTP 404: no")))
    assert not missing.ok and "not registered" in missing.message and "cdc_setup" in missing.message
    down = _check(ScriptedConnect(ConnectionRefusedError("refused")))
    assert not down.ok and "unreachable" in down.message


def test_without_healing_nothing_is_restarted():
    client = ScriptedConnect(_status("RUNNING", "FAILED"))
    result = health.check_connector(client, health.Thresholds(), heal=False, sleep=lambda s: None)
    assert not result.ok and client.restarts == []


# --------------------------------------------------------------------------- stream lag


def _done(next_offset: int) -> SimpleNamespace:
    return SimpleNamespace(next_offset=next_offset, newest_source_ts=NOW, updated_at=NOW)


def _batch(seconds_ago: float) -> SimpleNamespace:
    return SimpleNamespace(finished_at=(NOW - timedelta(seconds=seconds_ago)).replace(tzinfo=None))


def test_lag_is_end_minus_processed_per_partition_and_summed_per_topic():
    end = {(TOPIC, 0): 120, (TOPIC, 1): 80, (names.CDC_TOPIC_PREFIX + "klines", 0): 10}
    done = {(TOPIC, 0): _done(100), (TOPIC, 1): _done(80)}
    result = health.check_stream_lag(end, done, _batch(3), health.Thresholds())
    assert result.ok, result.message
    assert {(r["topic"], r["partition"]): r["lag"] for r in result.rows["stream_lag"]} == {
        (TOPIC, 0): 20, (TOPIC, 1): 0, (names.CDC_TOPIC_PREFIX + "klines", 0): 10}
    assert "stream lag 30 event(s)" in result.message and "latest_prices=20" in result.message
    # a partition the stream never read counts in full; no processed offset is recorded for it
    klines = next(r for r in result.rows["stream_lag"] if r["topic"].endswith("klines"))
    assert klines["processed_offset"] is None


def test_lag_above_the_threshold_fails():
    result = health.check_stream_lag({(TOPIC, 0): 5000}, {(TOPIC, 0): _done(10)}, _batch(1),
                                     health.Thresholds(max_stream_lag=1000))
    assert not result.ok and "above the threshold of 1000" in result.message and "cdc_stream" in result.message


def test_a_stream_with_lag_and_no_recent_batch_is_stalled():
    stalled = health.check_stream_lag({(TOPIC, 0): 15}, {(TOPIC, 0): _done(10)}, _batch(500), health.Thresholds())
    assert not stalled.ok and "not making progress" in stalled.message
    assert "last batch 500s ago" in stalled.message, stalled.message
    never = health.check_stream_lag({(TOPIC, 0): 15}, {}, None, health.Thresholds())
    assert not never.ok and "never reported a batch" in never.message


def test_an_idle_stream_with_nothing_to_do_is_healthy():
    result = health.check_stream_lag({(TOPIC, 0): 10}, {(TOPIC, 0): _done(10)}, _batch(3600), health.Thresholds())
    assert result.ok, result.message


# --------------------------------------------------------------------------- freshness


def _ages(source: float | None, cassandra: float | None, bridge: float | None) -> dict:
    def at(seconds):
        return None if seconds is None else NOW - timedelta(seconds=seconds)

    return {"postgres binance": at(source), "cassandra": at(cassandra), "postgres cassandra": at(bridge)}


def test_fresh_stages_pass_and_every_stage_is_recorded():
    result = health.check_freshness(_ages(20, 22, 60), health.Thresholds())
    assert result.ok, result.message
    assert [r["stage"] for r in result.rows["freshness"]] == list(health.STAGES)
    assert all(r["age_seconds"] >= 20 for r in result.rows["freshness"])


def test_each_stage_is_judged_against_the_one_before_it():
    th = health.Thresholds(max_cassandra_delay_seconds=60, max_bridge_delay_seconds=120)
    # Cassandra stopped: its delay is against Postgres; the bridge, level with Cassandra, is not blamed
    stuck = health.check_freshness(_ages(10, 400, 410), th)
    assert not stuck.ok
    assert "Cassandra is 390s behind Postgres" in stuck.message and "bridge" not in stuck.message.split(". ", 1)[1]
    # the bridge stopped only
    bridge = health.check_freshness(_ages(10, 12, 900), th)
    assert not bridge.ok and "is 888s behind Cassandra" in bridge.message and "cassandra_bridge" in bridge.message


def test_no_market_data_and_empty_stages_are_named():
    result = health.check_freshness(_ages(None, None, None), health.Thresholds())
    assert not result.ok and "no market data in Postgres binance" in result.message
    empty = health.check_freshness(_ages(10, None, None), health.Thresholds())
    assert "Cassandra holds nothing" in empty.message
    stale = health.check_freshness(_ages(4000, 4000, 4000), health.Thresholds(max_source_age_seconds=600))
    assert not stale.ok and "binance_extract" in stale.message


def test_newest_in_cassandra_ignores_topics_that_are_not_pipeline_tables():
    older, newer = NOW - timedelta(seconds=30), NOW - timedelta(seconds=5)
    done = {(TOPIC, 0): SimpleNamespace(newest_source_ts=older.replace(tzinfo=None)),
            (names.CDC_TOPIC_PREFIX + "heartbeat", 0): SimpleNamespace(newest_source_ts=NOW.replace(tzinfo=None)),
            (names.CDC_TOPIC_PREFIX + "klines", 0): SimpleNamespace(newest_source_ts=newer.replace(tzinfo=None)),
            (names.CDC_TOPIC_PREFIX + "order_book", 0): SimpleNamespace(newest_source_ts=None)}
    assert health.newest_in_cassandra(done) == newer
    assert health.newest_in_cassandra({}) is None


def _state(table, reason=None, at=None, mode="incremental"):
    return {"table": table, "mode": mode, "full_copy_reason": reason, "full_copy_at": at}


def test_a_full_copy_the_bridge_forced_itself_into_is_reported_once():
    copied = NOW - timedelta(minutes=2)
    states = [_state("klines"), _state("recent_trades", "change log expired past the watermark", copied, "full")]
    failed = health.check_bridge(states, since=NOW - timedelta(minutes=3))
    assert not failed.ok and "recent_trades" in failed.message and "change log expired" in failed.message
    # the next check, a minute later, has nothing new to say
    assert health.check_bridge(states, since=NOW - timedelta(minutes=1)).ok


def test_first_runs_and_requested_copies_are_not_alerts():
    states = [_state("klines", "first run", NOW, "full"), _state("order_book", "requested", NOW, "full")]
    assert health.check_bridge(states, since=None).ok


# --------------------------------------------------------------------------- warming up


def _history(minutes_back: range, source: bool = True, cassandra: bool = True, bridge: bool = True) -> list:
    """Freshness rows, one check a minute at each of `minutes_back` minutes ago, with data in the
    stages asked for."""
    rows = []
    for m in minutes_back:
        at = NOW - timedelta(minutes=m)
        for stage, has in zip(health.STAGES, (source, cassandra, bridge), strict=True):
            rows.append((at, stage, at - timedelta(seconds=5) if has else None))
    return rows


def _warm(history, source=10, cassandra=None, bridge=None):
    current = _ages(source, cassandra, bridge)
    return health.warm_up(history, current, health.Thresholds(), now=NOW), current


def test_the_first_run_after_the_pipeline_starts_is_warming_up_not_failing():
    # make demo on a fresh stack: no history, market data just arrived, nothing downstream yet
    warm, current = _warm([], source=10)
    assert warm.restarted and warm.started_at == NOW
    result = health.check_freshness(current, health.Thresholds(), warm)
    assert result.ok and result.message.startswith("warming up: Cassandra holds nothing")
    assert "the pipeline started 0s ago" in result.message
    # not even market data yet: binance_extract's first run is still going
    warm, current = _warm([], source=None)
    assert health.check_freshness(current, health.Thresholds(), warm).ok
    lag = health.check_stream_lag({(TOPIC, 0): 50_000}, {}, None, health.Thresholds(), warm)
    assert lag.ok and lag.message.startswith("warming up: stream lag 50000 event(s)")


def test_a_real_stall_is_still_reported_after_the_warm_up():
    # the pipeline has run for an hour (checks every minute, all stages with data); Cassandra empty now
    warm, current = _warm(_history(range(1, 16)), source=10, cassandra=None)
    assert not warm.restarted and not warm.fresh("postgres binance")
    result = health.check_freshness(current, health.Thresholds(), warm)
    assert not result.ok and "Cassandra holds nothing" in result.message and "warming" not in result.message
    # a stream that stopped is not hidden either
    lag = health.check_stream_lag({(TOPIC, 0): 15}, {(TOPIC, 0): _done(10)}, _batch(500), health.Thresholds(), warm)
    assert not lag.ok and "not making progress" in lag.message


def test_a_restart_after_a_gap_warms_up_for_warmup_seconds_then_judges_as_usual():
    th = health.Thresholds(warmup_seconds=600)
    # checks stopped 3 hours ago (make down), then resumed 4 minutes ago
    history = _history(range(180, 200)) + _history(range(1, 5), cassandra=False, bridge=False)
    warm = health.warm_up(history, _ages(10, None, None), th, now=NOW)
    assert warm.restarted and warm.started_at == NOW - timedelta(minutes=4)
    assert health.check_freshness(_ages(10, None, None), th, warm).ok
    # eleven minutes after the restart the same state fails
    later = NOW + timedelta(minutes=7)
    history += _history(range(-6, 1), cassandra=False, bridge=False)
    warm = health.warm_up(history, _ages(10, None, None), th, now=later)
    assert not warm.restarted
    result = health.check_freshness(_ages(10, None, None), th, warm)
    assert not result.ok and "Cassandra holds nothing" in result.message


def test_a_stage_after_one_that_just_got_data_is_warming_up():
    # running for an hour: the source had data all along, Cassandra got its first data 2 minutes ago
    history = _history(range(3, 16), cassandra=False, bridge=False) + _history(range(1, 3), bridge=False)
    warm = health.warm_up(history, _ages(10, 12, None), health.Thresholds(), now=NOW)
    assert not warm.restarted and warm.fresh("cassandra") and not warm.fresh("postgres binance")
    result = health.check_freshness(_ages(10, 12, None), health.Thresholds(), warm)
    assert result.ok and "the bridge (Postgres cassandra) holds nothing" in result.message
    assert "cassandra has held data for 120s" in result.message
    # but Cassandra itself, behind a source that has had data for an hour, is judged
    warm = health.warm_up(history, _ages(10, 400, None), health.Thresholds(), now=NOW)
    result = health.check_freshness(_ages(10, 400, None), health.Thresholds(max_cassandra_delay_seconds=60), warm)
    assert not result.ok and "Cassandra is 390s behind Postgres" in result.message
    assert "Warming up: the bridge (Postgres cassandra) holds nothing" in result.message


def test_the_stream_catching_up_after_cassandra_first_got_data_is_warming_up():
    history = _history(range(3, 16), cassandra=False, bridge=False) + _history(range(1, 3), bridge=False)
    warm = health.warm_up(history, _ages(10, 12, None), health.Thresholds(), now=NOW)
    lag = health.check_stream_lag({(TOPIC, 0): 90_000}, {(TOPIC, 0): _done(10)}, _batch(1), health.Thresholds(), warm)
    assert lag.ok and "warming up" in lag.message and "cassandra has held data" in lag.message
