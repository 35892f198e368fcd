"""binance_extract loads its own data interval: klines paged by startTime/endTime (1,000 a call, the
candle open at the start re-read), aggregate trades in windows of at most an hour paged by fromId,
the "now" datasets skipped for an interval long past; and its timetable gives runs real intervals.
Against the bundled server, on a fixed clock; no database (fetch only)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import lazy_object_proxy
import pytest

from include.binance.client import BinanceClient
from include.binance.extract import (
    HISTORICAL,
    MAX_CATCH_UP,
    MAX_OBSERVATION_DELAY,
    NOW_ONLY,
    ExtractSettings,
    catch_up_start,
    datasets_for_interval,
    extract,
    fetch,
    fetch_agg_trades,
    fetch_klines,
    skip_reason,
)
from include.tables import TABLES
from include.times import to_epoch_ms
from stack.exchange import BinanceTestServer

# 2026-01-09T13:47:25Z; the server's market is frozen there
NOW = datetime(2026, 1, 9, 13, 47, 25, tzinfo=UTC)
DAGS = Path(__file__).resolve().parents[2] / "dags"


@pytest.fixture
def server() -> Iterator[BinanceTestServer]:
    with BinanceTestServer(seed=9, clock=lambda: NOW.timestamp()) as srv:
        srv.freeze()
        yield srv


def calls(server: BinanceTestServer, path: str) -> list[dict]:
    return [c for c in server.calls() if c["path"] == path]


def minutes(n: int) -> timedelta:
    return timedelta(minutes=n)


# -- klines ---------------------------------------------------------------------------------------


def test_klines_of_an_interval_are_the_candles_opening_in_it_paged_by_start_and_end(server) -> None:
    start, end = datetime(2026, 1, 8, 9, tzinfo=UTC), datetime(2026, 1, 8, 12, tzinfo=UTC)
    with BinanceClient(server.url) as client:
        klines = fetch_klines(client, "BTCUSDT", "1m", start, end, page=50)
    opens = [k.open_time for k in klines]
    assert opens == [start + minutes(i) for i in range(180)]
    made = calls(server, "/api/v3/klines")
    assert len(made) == 4  # 50 + 50 + 50 + 30
    assert [int(c["params"]["startTime"]) for c in made] == [to_epoch_ms(start + minutes(50 * i)) for i in range(4)]
    assert {c["params"]["endTime"] for c in made} == {str(to_epoch_ms(end) - 1)}  # inclusive on Binance
    assert {c["params"]["limit"] for c in made} == {"50"}


def test_a_full_last_page_ends_the_paging_without_an_empty_call(server) -> None:
    start = datetime(2026, 1, 8, tzinfo=UTC)
    with BinanceClient(server.url) as client:
        klines = fetch_klines(client, "ETHUSDT", "1m", start, start + minutes(1000), page=1000)
    assert len(klines) == 1000 and len(calls(server, "/api/v3/klines")) == 1


def test_the_candle_open_at_the_start_is_re_read(server) -> None:
    """A 30m candle opened at 13:30 spans the runs of 13:31 ... 13:59: each reads it again, so it is
    updated in place until it closes; the run of [13:46, 13:47) reads it and nothing else."""
    start, end = NOW.replace(minute=46, second=0), NOW.replace(minute=47, second=0)
    settings = ExtractSettings(symbols=("BTCUSDT", "SOLUSDT"), kline_interval="30m")
    with BinanceClient(server.url) as client:
        klines = fetch("klines", client, settings, start, end)
    assert [(k.symbol, k.open_time) for k in klines] == [("BTCUSDT", NOW.replace(minute=30, second=0)),
                                                         ("SOLUSDT", NOW.replace(minute=30, second=0))]


def test_the_open_candle_changes_between_runs_and_is_read_again(server: BinanceTestServer) -> None:
    server.freeze(False)  # a moving market
    start, end = NOW.replace(minute=46, second=0), NOW.replace(minute=47, second=0)
    with BinanceClient(server.url) as client:
        (first,) = fetch_klines(client, "BTCUSDT", "1h", start, end)
        client.trades("BTCUSDT", limit=1)  # the market trades between the runs
        (again,) = fetch_klines(client, "BTCUSDT", "1h", start, end)
    assert first.open_time == again.open_time == NOW.replace(minute=0, second=0)
    assert (first.volume, first.num_trades) != (again.volume, again.num_trades)


def test_klines_need_a_real_interval(server) -> None:
    settings = ExtractSettings(symbols=("BTCUSDT",), kline_interval="1m")
    with BinanceClient(server.url) as client, pytest.raises(ValueError, match="CronDataIntervalTimetable"):
        fetch("klines", client, settings, NOW, NOW)
    assert server.calls() == []


# -- aggregate trades -----------------------------------------------------------------------------


def test_agg_trades_of_an_interval_come_in_windows_of_at_most_an_hour(server) -> None:
    start, end = datetime(2026, 1, 8, 9, 30, tzinfo=UTC), datetime(2026, 1, 8, 12, 10, tzinfo=UTC)
    with BinanceClient(server.url) as client:
        trades = fetch_agg_trades(client, "BTCUSDT", start, end)
    tape = list(server.market.tape("BTCUSDT").between(to_epoch_ms(start) * 1000, to_epoch_ms(end) * 1000 - 1))
    assert [a.agg_trade_id for a in trades] == [a.id for a in tape]  # exactly the interval, in order
    assert all(start <= a.time < end for a in trades)
    windows = [(int(c["params"]["startTime"]), int(c["params"]["endTime"])) for c in calls(server, "/api/v3/aggTrades")]
    assert windows == [(to_epoch_ms(start + minutes(60 * i)), to_epoch_ms(min(start + minutes(60 * (i + 1)), end)) - 1)
                       for i in range(3)]
    assert all(last - first < 3_600_000 for first, last in windows)


def test_a_full_page_goes_on_by_from_id_and_stops_at_the_window_end(server) -> None:
    start, end = datetime(2026, 1, 8, 9, tzinfo=UTC), datetime(2026, 1, 8, 10, tzinfo=UTC)
    with BinanceClient(server.url) as client:
        trades = fetch_agg_trades(client, "BTCUSDT", start, end, page=100)
    tape = list(server.market.tape("BTCUSDT").between(to_epoch_ms(start) * 1000, to_epoch_ms(end) * 1000 - 1))
    assert [a.agg_trade_id for a in trades] == [a.id for a in tape] and len(tape) > 300
    made = calls(server, "/api/v3/aggTrades")
    assert set(made[0]["params"]) == {"symbol", "limit", "startTime", "endTime"}
    paged = [c["params"] for c in made[1:]]
    assert paged and all(set(p) == {"symbol", "limit", "fromId"} for p in paged)
    assert int(paged[0]["fromId"]) == tape[99].id + 1
    assert len(made) == len(tape) // 100 + 1  # the last page reaches past the window's end and stops


# -- "now" datasets, skipped for a past interval ----------------------------------------------------


def test_only_klines_and_agg_trades_are_historical() -> None:
    assert set(HISTORICAL) | set(NOW_ONLY) == set(TABLES) and not set(HISTORICAL) & set(NOW_ONLY)


def test_now_datasets_are_skipped_for_an_interval_long_past_with_the_reason() -> None:
    recent = datasets_for_interval(NOW - minutes(1), now=NOW)
    assert recent == dict.fromkeys(TABLES)
    past = datasets_for_interval(NOW - MAX_OBSERVATION_DELAY - minutes(1), now=NOW)
    assert {d for d, why in past.items() if why is None} == set(HISTORICAL)
    assert "exists only as the current state" in (past["recent_trades"] or "")
    assert skip_reason("order_book", None, now=NOW) is None  # no interval: a plain "now" call
    with pytest.raises(ValueError, match="unknown dataset"):
        skip_reason("nothing", NOW, now=NOW)


@pytest.mark.parametrize("dataset", NOW_ONLY)
def test_a_skipped_dataset_calls_nothing_and_writes_nothing(server, dataset: str) -> None:
    settings = ExtractSettings(symbols=("BTCUSDT",), kline_interval="1m")
    end = datetime.now(UTC) - timedelta(hours=3)
    with BinanceClient(server.url) as client:
        result = extract(dataset, client, None, settings, end - minutes(1), end)  # no connection needed
    assert (result.received, result.inserted, result.updated) == (0, 0, 0)
    assert server.calls() == []


def test_the_branch_runs_every_load_for_a_recent_interval_and_says_why_it_skips(monkeypatch) -> None:
    import logging

    import airflow.sdk

    from include.binance import tasks

    pushed: dict[str, object] = {}
    logged: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: logged.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger(tasks.__name__).addHandler(handler)
    monkeypatch.setattr(logging.getLogger(tasks.__name__), "level", logging.INFO)

    class TaskInstance:
        def xcom_push(self, key: str, value: object) -> None:
            pushed[key] = value

    monkeypatch.setattr(airflow.sdk, "get_current_context", lambda: {"ti": TaskInstance()})
    end = datetime.now(UTC).replace(second=0, microsecond=0)
    assert tasks.choose_datasets(end - minutes(1), end) == [f"load_{d}" for d in TABLES]
    assert pushed == {"skipped": {}}
    old = end - timedelta(hours=5)
    assert tasks.choose_datasets(old - minutes(1), old) == [f"load_{d}" for d in TABLES if d in HISTORICAL]
    logging.getLogger(tasks.__name__).removeHandler(handler)
    assert any("skipping load_order_book" in m and "exists only as the current state" in m for m in logged)
    assert set(pushed["skipped"]) == set(NOW_ONLY)
    assert "exists only as the current state" in pushed["skipped"]["latest_prices"]


# -- the timetable ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def extract_dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS))
    return bag.dags["binance_extract"]


def test_runs_have_real_data_intervals(extract_dag) -> None:
    import pendulum
    from airflow.sdk import CronDataIntervalTimetable
    from airflow.serialization.encoders import coerce_to_core_timetable
    from airflow.timetables.base import DataInterval, TimeRestriction

    assert isinstance(extract_dag.timetable, CronDataIntervalTimetable)
    assert extract_dag.catchup is False
    core = coerce_to_core_timetable(extract_dag.timetable)
    # a manual run (dag.test, the UI's trigger) gets the last complete minute
    manual = core.infer_manual_data_interval(run_after=pendulum.datetime(2026, 1, 9, 13, 47, 25, tz="UTC"))
    assert manual == DataInterval(datetime(2026, 1, 9, 13, 46, tzinfo=UTC), datetime(2026, 1, 9, 13, 47, tzinfo=UTC))
    # what a backfill walks: one run per minute, logical date = start of its interval
    restriction = TimeRestriction(pendulum.datetime(2026, 1, 9, 10, tz="UTC"),
                                  pendulum.datetime(2026, 1, 9, 10, 2, tz="UTC"), True)
    first = core.next_dagrun_info(last_automated_data_interval=None, restriction=restriction)
    second = core.next_dagrun_info(last_automated_data_interval=first.data_interval, restriction=restriction)
    assert first.logical_date == first.data_interval.start == datetime(2026, 1, 9, 10, tzinfo=UTC)
    assert first.data_interval.end - first.data_interval.start == timedelta(minutes=1)
    assert second.data_interval.start == first.data_interval.end


def test_the_loads_follow_the_branch_and_share_the_binance_pool(extract_dag) -> None:
    branch = extract_dag.task_dict["choose_datasets"]
    assert branch.downstream_task_ids == {f"load_{d}" for d in TABLES}
    assert {extract_dag.task_dict[f"load_{d}"].pool for d in TABLES} == {"binance_api"}
    assert set(extract_dag.params) == {"symbols", "kline_interval"}


# -- catching up what scheduled runs skipped ----------------------------------------------------------


def test_a_scheduled_run_loads_history_from_the_last_successful_runs_end() -> None:
    start = datetime(2026, 11, 29, 10, 5, tzinfo=UTC)
    # Airflow skipped [10:01, 10:05) while the run before was slow: this run loads it too
    assert catch_up_start(start, start - minutes(4), scheduled=True) == start - minutes(4)
    # the run before ended where this one starts, or no run succeeded yet: its own interval
    assert catch_up_start(start, start, scheduled=True) == start
    assert catch_up_start(start, None, scheduled=True) == start
    # how Airflow hands over prev_data_interval_end_success on a stack's first scheduled run
    assert catch_up_start(start, lazy_object_proxy.Proxy(lambda: None), scheduled=True) == start
    assert catch_up_start(start, lazy_object_proxy.Proxy(lambda: start - minutes(4)), scheduled=True) == \
        start - minutes(4)


def test_a_backfill_or_manual_run_loads_exactly_its_interval() -> None:
    start = datetime(2026, 11, 29, 10, 5, tzinfo=UTC)
    assert catch_up_start(start, start - minutes(30), scheduled=False) == start


def test_catching_up_stops_at_its_bound_and_names_the_range_to_backfill(caplog) -> None:
    import logging

    start = datetime(2026, 11, 29, 10, 5, tzinfo=UTC)
    with caplog.at_level(logging.WARNING, logger="include.binance.extract"):
        assert catch_up_start(start, start - timedelta(days=2), scheduled=True) == start - MAX_CATCH_UP
    assert "backfill [2026-11-27T10:05:00+00:00, 2026-11-29T04:05:00+00:00)" in caplog.text
