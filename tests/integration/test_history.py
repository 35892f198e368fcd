"""History against the real stack: Airflow's own backfill of binance_extract, and the archive DAG.

1. `airflow backfill create` (the CLI, with the stack's environment: the scheduler runs it) over a
   few hours of the last day for two symbols loads exactly what the bundled server serves for those
   intervals (1m klines opening in them, every aggregate trade in them) into Postgres, then through
   CDC into Cassandra and the bridge, row for row and digit for digit; the "now" datasets are
   skipped by every run of it; concurrent runs share the weight budget (no 429, no 418); a re-run
   (reprocess completed) changes nothing, not even a row version. It needs the stack in offline
   mode (`make demo OFFLINE=1`: the scheduler's binance_api is the bundled server) and takes about
   HISTORY_BACKFILL_MINUTES (180) runs of the DAG: 10-20 minutes on the local stack.
2. A past interval run with dag.test skips the "now" datasets and says why.
3. binance_archive (dag.test, an in-process bundled server as binance_archive): a file whose
   download never matches its .CHECKSUM is refused, naming it, and nothing of it is loaded, while
   the good file of the same run is; millisecond (2024) and microsecond (2025) files load the same
   instants the REST API gives; a second run skips what is loaded.

The tests own LINKUSDT and LTCUSDT rows (as test_binance_extract does) in the windows they use.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import requests

from include.names import ARCHIVE_FILES_TABLE
from include.schema.postgres import apply
from include.tables import BRIDGE_TABLES, TABLES
from include.times import from_epoch_ms
from stack import localstack
from stack.demo import _token
from stack.exchange import BinanceTestServer
from tests.integration.conftest import _keyed, cassandra_rows, pg_rows, run_dag, wait_for_debezium

pytestmark = pytest.mark.integration

SYMBOLS = ["LINKUSDT", "LTCUSDT"]
INTERVAL = "1m"
DAG_ID = "binance_extract"
MINUTES = int(os.environ.get("HISTORY_BACKFILL_MINUTES", "180"))
RERUN_MINUTES = int(os.environ.get("HISTORY_RERUN_MINUTES", "30"))
NOW_ONLY = ("latest_prices", "daily_ticker", "recent_trades", "order_book")
HISTORICAL = ("klines", "agg_trades")


# --------------------------------------------------------------------------- helpers


def _window() -> tuple[datetime, datetime]:
    """MINUTES of intervals ending an hour before the current hour: recent enough for Cassandra's
    48 h window of agg_trades, long enough past for the "now" datasets to be skipped."""
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    return end - timedelta(minutes=MINUTES), end


class Airflow:
    """The stack's REST API as the admin (stack.demo's login)."""

    def __init__(self, settings: dict[str, str]) -> None:
        self.s = settings
        self.base = settings["AIRFLOW_URL"]
        self.headers = {"Authorization": f"Bearer {_token(settings)}"}

    def get(self, path: str, **params: Any) -> Any:
        r = requests.get(self.base + path, params=params, headers=self.headers, timeout=30)
        r.raise_for_status()
        return r.json()

    def patch(self, path: str, body: dict) -> Any:
        r = requests.patch(self.base + path, json=body, headers=self.headers, timeout=30)
        r.raise_for_status()
        return r.json()

    def runs(self, start: datetime, last: datetime) -> list[dict]:
        """The DAG's runs with a logical date in [start, last], every page."""
        out, offset = [], 0
        while True:
            page = self.get(f"/api/v2/dags/{DAG_ID}/dagRuns", logical_date_gte=start.isoformat(),
                            logical_date_lte=last.isoformat(), limit=100, offset=offset, order_by="logical_date")
            out += page["dag_runs"]
            offset += 100
            if offset >= page["total_entries"]:
                return out

    def backfills(self) -> list[dict]:
        """The DAG's newest 100 backfills."""
        return self.get("/api/v2/backfills", dag_id=DAG_ID, limit=100, order_by="-id")["backfills"]

    def task_states(self, run_id: str) -> dict[str, str]:
        tis = self.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances", limit=100)["task_instances"]
        return {ti["task_id"]: ti["state"] for ti in tis}

    def xcom(self, run_id: str, task_id: str, key: str = "return_value") -> Any:
        return self.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}",
                        deserialize=True)["value"]


def _airflow_cli(settings: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """The airflow CLI with the stack's environment (its metadata database, its connections)."""
    return subprocess.run([str(localstack.VENV_BIN / "airflow"), *args], env=localstack.service_env(settings),
                          cwd=localstack.REPO, capture_output=True, text=True, timeout=300, check=False)


def _backfill(settings: dict[str, str], api: Airflow, start: datetime, minutes: int, timeout: float) -> dict:
    """`airflow backfill create` over `minutes` intervals from `start`, then wait for the backfill
    to be complete with every run successful; returns the backfill."""
    last = start + timedelta(minutes=minutes - 1)  # --to-date is the last logical date, inclusive
    known = {b["id"] for b in api.backfills()}
    conf = json.dumps({"symbols": SYMBOLS, "kline_interval": INTERVAL})
    cli = _airflow_cli(settings, "backfill", "create", "--dag-id", DAG_ID, "--from-date", start.isoformat(),
                       "--to-date", last.isoformat(), "--max-active-runs", "4", "--reprocess-behavior", "completed",
                       "--dag-run-conf", conf)
    assert cli.returncode == 0, cli.stdout[-3000:] + cli.stderr[-3000:]
    (backfill,) = [b for b in api.backfills() if b["id"] not in known]
    deadline = time.monotonic() + timeout
    while True:
        runs = api.runs(start, last)
        failed = [r for r in runs if r["state"] == "failed"]
        assert not failed, f"backfill run {failed[0]['dag_run_id']} failed: {api.task_states(failed[0]['dag_run_id'])}"
        current = next(b for b in api.backfills() if b["id"] == backfill["id"])
        if current["completed_at"] and len(runs) == minutes and all(r["state"] == "success" for r in runs):
            return current
        assert time.monotonic() < deadline, (f"backfill {backfill['id']} not done within {timeout:.0f}s: "
                                             f"{sum(r['state'] == 'success' for r in runs)}/{minutes} runs succeeded")
        time.sleep(10)


def _server_klines(url: str, start: datetime, end: datetime) -> dict[tuple, tuple]:
    """What the server serves, read with plain HTTP (not the extraction's code): 1m klines opening
    in [start, end), as (symbol, interval, open_time) -> the table's columns."""
    out = {}
    for symbol in SYMBOLS:
        cursor = int(start.timestamp() * 1000)
        while cursor < int(end.timestamp() * 1000):
            rows = requests.get(f"{url}/api/v3/klines", params={
                "symbol": symbol, "interval": INTERVAL, "startTime": cursor,
                "endTime": int(end.timestamp() * 1000) - 1, "limit": 1000}, timeout=30).json()
            for k in rows:
                open_time = from_epoch_ms(k[0])
                out[(symbol, INTERVAL, open_time)] = (
                    symbol, INTERVAL, open_time, *(("decimal", Decimal(v).as_tuple()) for v in k[1:6]),
                    from_epoch_ms(k[6]), ("decimal", Decimal(k[7]).as_tuple()), k[8])
            if len(rows) < 1000:
                break
            cursor = rows[-1][0] + 60_000
    return out


def _server_agg_trades(url: str, start: datetime, end: datetime) -> dict[tuple, tuple]:
    out = {}
    for symbol in SYMBOLS:
        hour = start
        while hour < end:
            stop = min(hour + timedelta(hours=1), end)
            rows = requests.get(f"{url}/api/v3/aggTrades", params={
                "symbol": symbol, "startTime": int(hour.timestamp() * 1000),
                "endTime": int(stop.timestamp() * 1000) - 1, "limit": 1000}, timeout=30).json()
            assert len(rows) < 1000, "an hour of the bundled server's tape holds fewer than 1,000"
            for a in rows:
                out[(symbol, a["a"])] = (symbol, a["a"], ("decimal", Decimal(a["p"]).as_tuple()),
                                         ("decimal", Decimal(a["q"]).as_tuple()), a["f"], a["l"],
                                         from_epoch_ms(a["T"]), a["m"])
            hour = stop
    return out


def _in_window(rows: dict[tuple, tuple], table: str, start: datetime, end: datetime) -> dict[tuple, tuple]:
    t = TABLES[table]
    i = t.column_names.index(t.time_column)
    return {k: v for k, v in rows.items() if start <= v[i] < end and (table != "klines" or v[1] == INTERVAL)}


def _bridge_rows(pg, table: str, start: datetime, end: datetime) -> dict[tuple, tuple]:
    t = BRIDGE_TABLES[table]
    data = TABLES[table].column_names
    with pg.cursor() as cur:
        cur.execute(f"SELECT {', '.join(data)} FROM cassandra.{table} WHERE symbol = ANY(%s) AND "
                    f"{t.time_column} >= %s AND {t.time_column} < %s", (SYMBOLS, start, end))
        rows = cur.fetchall()
    pg.commit()
    return _in_window(_keyed(TABLES[table], rows), table, start, end)


def _versions(pg, start: datetime, end: datetime) -> dict[str, str]:
    """Per table: rows, a digest of their content and of their row versions (xmin) in the window."""
    out = {}
    with pg.cursor() as cur:
        for table in HISTORICAL:
            col = TABLES[table].time_column
            cur.execute(f"SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')), "
                        f"md5(coalesce(string_agg(t.xmin::text, '|' ORDER BY t::text), '')) FROM binance.{table} t "
                        f"WHERE symbol = ANY(%s) AND {col} >= %s AND {col} < %s", (SYMBOLS, start, end))
            out[table] = "{} rows {} versions {}".format(*cur.fetchone())
    pg.commit()
    return out


def _clear_window(pg, start: datetime, end: datetime) -> None:
    with pg.cursor() as cur:
        cur.execute("DELETE FROM binance.klines WHERE symbol = ANY(%s) AND interval = %s AND open_time >= %s "
                    "AND open_time < %s", (SYMBOLS, INTERVAL, start, end))
        cur.execute("DELETE FROM binance.agg_trades WHERE symbol = ANY(%s) AND time >= %s AND time < %s",
                    (SYMBOLS, start, end))
    pg.commit()


def _flow(dagbag, pg) -> None:
    """Everything committed so far through Debezium, the stream (its own checkpoint) and the bridge."""
    wait_for_debezium(pg, timeout=300)
    run_dag(dagbag, "cdc_stream", {"mode": "available_now"})
    run_dag(dagbag, "cassandra_bridge")


@pytest.fixture
def local_server():
    """A bundled server of the test's own, for the in-process dag.test runs."""
    with BinanceTestServer(seed=11) as srv:
        yield srv


@pytest.fixture
def extract_env(monkeypatch, local_server, tmp_path):
    """binance_extract's connection and Variables pointed at local_server (as test_binance_extract does)."""
    monkeypatch.setenv("AIRFLOW_CONN_BINANCE_API", json.dumps({"conn_type": "http", "host": local_server.url}))
    monkeypatch.setenv("AIRFLOW_VAR_BINANCE_SYMBOLS", json.dumps(SYMBOLS))
    monkeypatch.setenv("AIRFLOW_VAR_BINANCE_KLINE_INTERVAL", "1h")
    monkeypatch.setenv("BINANCE_BAN_STATE_FILE", str(tmp_path / "ban.json"))
    return local_server


@pytest.fixture
def stack_server(settings) -> str:
    """The scheduler's Binance: the bundled server of `make demo OFFLINE=1`."""
    if localstack.binance_mode() != "offline":
        pytest.skip("the backfill runs in the stack's scheduler, whose binance_api must be the bundled server: "
                    "run `make demo OFFLINE=1` first")
    url = f"http://127.0.0.1:{settings.get('BINANCE_TEST_SERVER_PORT', '8765')}"
    assert requests.get(f"{url}/api/v3/ping", timeout=5).json() == {}
    return url


@pytest.fixture
def unpaused(settings):
    """binance_extract unpaused (backfill runs of a paused DAG never start), as it was afterwards."""
    api = Airflow(settings)
    was = api.get(f"/api/v2/dags/{DAG_ID}")["is_paused"]
    if was:
        api.patch(f"/api/v2/dags/{DAG_ID}", {"is_paused": False})
    yield api
    if was:
        Airflow(settings).patch(f"/api/v2/dags/{DAG_ID}", {"is_paused": True})


# --------------------------------------------------------------------------- Airflow's backfill


def test_a_backfill_loads_exactly_what_the_server_served_and_a_rerun_changes_nothing(
        dagbag, cdc_ready, pg, cassandra, settings, stack_server, unpaused):
    api = unpaused
    start, end = _window()
    assert not [b for b in api.backfills() if not b["completed_at"]], "another backfill of binance_extract runs"
    apply(pg, "binance")
    _clear_window(pg, start, end)
    _flow(dagbag, pg)  # Cassandra and the bridge forget the window too
    began = time.time()

    _backfill(settings, api, start, MINUTES, timeout=max(1800.0, 10.0 * MINUTES))

    # concurrent runs kept to one weight budget: the server never limited or banned the IP
    calls = requests.get(f"{stack_server}/_control/calls", timeout=60).json()["calls"]
    assert not [c for c in calls if c["time"] >= began and c["status"] in (429, 418)]
    # each run is one interval; the now-only datasets were skipped, the task results say what loaded
    runs = api.runs(start, end - timedelta(minutes=1))
    intervals = sorted(tuple(datetime.fromisoformat(r[k]) for k in ("data_interval_start", "data_interval_end",
                                                                    "logical_date")) for r in runs)
    assert [i[0] for i in intervals] == [start + timedelta(minutes=n) for n in range(MINUTES)]
    assert all(e - s == timedelta(minutes=1) and logical == s for s, e, logical in intervals)
    assert {r["run_type"] for r in runs} == {"backfill"}
    sample = runs[len(runs) // 2]["dag_run_id"]
    states = api.task_states(sample)
    assert {states[f"load_{d}"] for d in NOW_ONLY} == {"skipped"}
    assert {states[f"load_{d}"] for d in HISTORICAL} == {"success"}
    assert set(api.xcom(sample, "choose_datasets", "skipped")) == set(NOW_ONLY)  # each with its reason
    klines_result = api.xcom(sample, "load_klines")
    assert klines_result["symbols"] == SYMBOLS and klines_result["received"] == len(SYMBOLS)

    # Postgres holds exactly what the server serves for those intervals
    source = {t: _in_window(pg_rows(pg, t, SYMBOLS), t, start, end) for t in HISTORICAL}
    assert source["klines"] == _server_klines(stack_server, start, end)
    assert len(source["klines"]) == MINUTES * len(SYMBOLS)
    assert source["agg_trades"] == _server_agg_trades(stack_server, start, end)
    assert source["agg_trades"]

    # ... and so do Cassandra and the bridge, row for row
    _flow(dagbag, pg)
    for table in HISTORICAL:
        stored = _in_window(cassandra_rows(cassandra, table, SYMBOLS, pg, since=start - timedelta(hours=1)), table,
                            start, end)
        assert stored == source[table], f"Cassandra {table} differs from Postgres binance"
        assert _bridge_rows(pg, table, start, end) == source[table], f"the bridge's {table} differs"

    # a re-run of intervals already loaded writes nothing: same rows, same row versions
    before = _versions(pg, start, end)
    _backfill(settings, api, start, min(RERUN_MINUTES, MINUTES), timeout=max(900.0, 10.0 * RERUN_MINUTES))
    assert _versions(pg, start, end) == before


# --------------------------------------------------------------------------- a past interval, dag.test


def test_a_past_interval_loads_the_historical_datasets_and_skips_the_now_ones(dagbag, pg, extract_env):
    server = extract_env
    apply(pg, "binance")
    # long enough past to skip the "now" datasets, outside the backfill test's window
    logical = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=20)
    interval_start = logical - timedelta(minutes=1)  # dag.test's run gets the minute before its logical date
    _clear_window(pg, interval_start, logical)
    run = dagbag.dags[DAG_ID].test(logical_date=logical)
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert run.state == "success", states
    assert {states[f"load_{d}"] for d in NOW_ONLY} == {"skipped"} and {states[f"load_{d}"] for d in HISTORICAL} == {
        "success"}
    tis = {ti.task_id: ti for ti in run.get_task_instances()}
    skipped = tis["choose_datasets"].xcom_pull(task_ids="choose_datasets", key="skipped")
    assert set(skipped) == set(NOW_ONLY) and all("exists only as the current state" in r for r in skipped.values())
    assert tis["load_klines"].xcom_pull(task_ids="load_klines")["received"] == len(SYMBOLS)
    with pg.cursor() as cur:
        cur.execute("SELECT count(*), min(open_time) FROM binance.klines WHERE symbol = ANY(%s) AND interval = '1h' "
                    "AND open_time = date_trunc('hour', %s::timestamptz)", (SYMBOLS, interval_start))
        assert cur.fetchone()[0] == len(SYMBOLS)  # the hourly candle open at the interval's start (airflow_env: 1h)
        cur.execute("SELECT count(*) FROM binance.agg_trades WHERE symbol = ANY(%s) AND time >= %s AND time < %s",
                    (SYMBOLS, interval_start, logical))
        stored = cur.fetchone()[0]
    pg.commit()
    tape = sum(1 for s in SYMBOLS for _ in server.market.tape(s).between(
        int(interval_start.timestamp() * 1e6), int(logical.timestamp() * 1e6) - 1))
    assert stored == tape


# --------------------------------------------------------------------------- the archive DAG


ARCHIVE_SYMBOL = "LINKUSDT"
MS_DAY, US_DAY = date(2024, 12, 31), date(2025, 1, 1)


@pytest.fixture
def archive_env(monkeypatch, local_server):
    """binance_archive's connection pointed at local_server's archive."""
    monkeypatch.setenv("AIRFLOW_CONN_BINANCE_ARCHIVE", json.dumps({"conn_type": "http", "host": local_server.url}))
    return local_server


@pytest.fixture
def clean_archive_days(pg):
    apply(pg, "binance")

    def clean() -> None:
        with pg.cursor() as cur:
            cur.execute("DELETE FROM binance.klines WHERE symbol = %s AND interval = %s AND open_time >= %s "
                        "AND open_time < %s", (ARCHIVE_SYMBOL, INTERVAL, MS_DAY, US_DAY + timedelta(days=1)))
            cur.execute(f"DELETE FROM binance.{ARCHIVE_FILES_TABLE} WHERE symbol = %s AND dataset = 'klines'",
                        (ARCHIVE_SYMBOL,))
        pg.commit()

    clean()
    yield
    clean()


def _archive_run(dagbag, **params: Any):
    dag = dagbag.dags["binance_archive"]
    for task in dag.tasks:
        task.retries = 0
    conf = {"symbols": [ARCHIVE_SYMBOL], "dataset": "klines", "interval": INTERVAL, "period": "daily", **params}
    return dag.test(run_conf=conf)


def _day_rows(pg, day: date) -> list[tuple]:
    with pg.cursor() as cur:
        cur.execute("SELECT open_time, open_price, high_price, low_price, close_price, volume, close_time, "
                    "quote_volume, num_trades FROM binance.klines WHERE symbol = %s AND interval = %s "
                    "AND open_time >= %s AND open_time < %s ORDER BY open_time",
                    (ARCHIVE_SYMBOL, INTERVAL, day, day + timedelta(days=1)))
        rows = cur.fetchall()
    pg.commit()
    return rows


def _loaded_files(pg) -> list[str]:
    with pg.cursor() as cur:
        cur.execute(f"SELECT path FROM binance.{ARCHIVE_FILES_TABLE} WHERE symbol = %s ORDER BY path",
                    (ARCHIVE_SYMBOL,))
        out = [r[0] for r in cur.fetchall()]
    pg.commit()
    return out


def test_an_archive_file_failing_its_checksum_is_refused_and_nothing_of_it_loaded(
        dagbag, pg, archive_env, clean_archive_days, capfd):
    server = archive_env
    bad = f"/data/spot/daily/klines/{ARCHIVE_SYMBOL}/{INTERVAL}/{ARCHIVE_SYMBOL}-{INTERVAL}-{US_DAY}.zip"
    server.add_fault("archive_corrupt", path=bad, count=3)  # every download of it, retries included
    run = _archive_run(dagbag, start_date=MS_DAY.isoformat(), end_date=US_DAY.isoformat())
    out = capfd.readouterr()
    assert run.state == "failed"
    assert f"{ARCHIVE_SYMBOL}-{INTERVAL}-{US_DAY}.zip" in out.out + out.err
    assert "none matched its .CHECKSUM" in out.out + out.err
    assert [c["fault"] for c in server.calls() if c["path"] == bad] == ["archive_corrupt"] * 3
    # the good file of the run is loaded, the bad one not at all
    assert len(_day_rows(pg, MS_DAY)) == 1440 and _day_rows(pg, US_DAY) == []
    assert _loaded_files(pg) == [bad.removeprefix("/").replace(str(US_DAY), str(MS_DAY))]


def test_millisecond_and_microsecond_files_load_the_same_instants_and_a_rerun_skips_them(
        dagbag, pg, archive_env, clean_archive_days):
    server = archive_env
    run = _archive_run(dagbag, start_date=MS_DAY.isoformat(), end_date=US_DAY.isoformat())
    assert run.state == "success", [(ti.task_id, ti.state) for ti in run.get_task_instances()]
    for day in (MS_DAY, US_DAY):  # a millisecond file, then a microsecond one
        start = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)
        rest = []
        for offset in (0, 1000):
            rest += requests.get(f"{server.url}/api/v3/klines", params={
                "symbol": ARCHIVE_SYMBOL, "interval": INTERVAL, "startTime": start + offset * 60_000,
                "endTime": start + 86_400_000 - 1, "limit": 1000}, timeout=30).json()
        rows = _day_rows(pg, day)
        assert len(rows) == len(rest) == 1440
        for row, k in zip(rows, rest, strict=True):
            assert row[0] == datetime.fromtimestamp(k[0] / 1000, UTC)
            assert row[6] == datetime.fromtimestamp(k[6] / 1000, UTC)  # ...:59.999, whatever the file's unit
            assert [str(v) for v in row[1:6]] == [str(Decimal(v)) for v in k[1:6]] and row[8] == k[8]
    assert len(_loaded_files(pg)) == 2
    downloads = len([c for c in server.calls() if c["path"].endswith(".zip")])
    again = _archive_run(dagbag, start_date=MS_DAY.isoformat(), end_date=US_DAY.isoformat())
    assert again.state == "success"
    assert len([c for c in server.calls() if c["path"].endswith(".zip")]) == downloads, "a loaded file was fetched"
    loads = [ti for ti in again.get_task_instances() if ti.task_id == "load_files"]
    assert len(loads) == 2  # one mapped task per month: 2024-12 and 2025-01
    for ti in loads:
        assert all("skipped" in r for r in ti.xcom_pull(task_ids="load_files", map_indexes=ti.map_index))
