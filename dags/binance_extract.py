"""
### binance_extract

Loads Binance market data into PostgreSQL schema `binance` for its **data interval**
[`data_interval_start`, `data_interval_end`), every minute, one task per dataset:

- historical datasets, for any interval (so a backfill fills the past): `load_klines` (every
  candle of the configured interval overlapping the data interval: those opening in it and the one
  open at its start, re-read so an open candle is updated in place; 1,000 a call) and
  `load_agg_trades` (the aggregate trades of the interval, an hour window at a time);
- "now" datasets, which Binance serves only as the current state: `load_latest_prices` (stamped with
  the end of the interval), `load_daily_ticker`, `load_recent_trades` (the latest trades),
  `load_order_book`. `choose_datasets` skips them, saying why in its log, when the interval ended
  more than 10 minutes ago (a backfill): what is observed now cannot stand for the past.

Catchup is off, so Airflow skips the intervals that pass while a run is slow or the scheduler is
down: a scheduled run loads the historical datasets from the end of the last successful run's
interval (at most 6 hours back; a longer gap is logged with the range to backfill), so no minute is
left out. Each load is one transaction of upserts, so re-running an interval adds nothing twice; each task
returns what it loaded (rows per dataset) or why it skipped. The timetable gives every run a real
interval (CronDataIntervalTimetable: the run at 10:06 loads [10:05, 10:06)), which the UI shows.

History: `airflow backfill create --dag-id binance_extract --from-date 2026-01-01T00:00 --to-date
2026-01-01T05:59 --max-active-runs 4` runs one interval per minute in that range (logical date =
interval start); backfill runs share the Binance weight budget and ban (files in `$AIRFLOW_HOME`)
and the `binance_api` pool. Params `symbols` and `kline_interval` (e.g. `--dag-run-conf
'{"symbols": ["BTCUSDT"], "kline_interval": "1m"}'`) replace the Variables for one run. Bulk
history: the `binance_archive` DAG.

Needs: connection `binance_postgres` (Postgres), connection `binance_api` (HTTP; host may carry
the scheme; default `https://data-api.binance.vision`), pool `binance_api` (bounds concurrent
Binance calls). Variables (all optional): `binance_symbols` (JSON list), `binance_kline_interval`
(default `30m`), `binance_limits` (JSON, e.g. `{"klines": 1000, "agg_trades": 1000, "recent_trades": 500,
"order_book": 100}`: page sizes for klines and agg_trades, rows for the others); the schedule is read
at parse time from the environment variable `BINANCE_EXTRACT_SCHEDULE` (default every minute). Old
rows are deleted by the `retention` DAG.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Asset, CronDataIntervalTimetable, Param, dag, task

from include.names import BINANCE_POOL, SOURCE_SCHEMA
from include.schedules import batch_default_args, schedule
from include.tables import TABLES


def table_asset(table: str) -> Asset:
    return Asset(name=f"{SOURCE_SCHEMA}.{table}", uri=f"postgres-table://binance/{SOURCE_SCHEMA}/{table}")


@dag(
    # data intervals, not Airflow 3's default CronTriggerTimetable (whose runs have an empty interval)
    schedule=CronDataIntervalTimetable(schedule("BINANCE_EXTRACT_SCHEDULE"), timezone="UTC"),
    catchup=False,
    # scheduled runs one at a time; a backfill has its own limit (`--max-active-runs`): Airflow 3
    # counts backfill runs apart from the DAG's max_active_runs
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=10),
    tags=["binance", "extract"],
    default_args=batch_default_args(retries=2, retry_delay=timedelta(seconds=20), retry_exponential_backoff=2.0),
    params={
        "symbols": Param(None, type=["null", "array"], items={"type": "string"},
                         description="symbols for this run instead of the Variable binance_symbols"),
        "kline_interval": Param(None, type=["null", "string"],
                                description="kline interval for this run, instead of binance_kline_interval"),
    },
    doc_md=__doc__,
)
def binance_extract():
    @task
    def apply_migrations() -> list[str]:
        from include.binance import tasks

        return tasks.apply_migrations()

    @task(pool=BINANCE_POOL)
    def validate_symbols(params: dict | None = None) -> list[str]:
        from include.binance import tasks

        return tasks.validate_symbols(params)

    @task.branch
    def choose_datasets(data_interval_start=None, data_interval_end=None) -> list[str]:
        from include.binance import tasks

        return tasks.choose_datasets(data_interval_start, data_interval_end)

    chosen = apply_migrations() >> validate_symbols() >> choose_datasets()

    for dataset in TABLES:

        @task(task_id=f"load_{dataset}", pool=BINANCE_POOL, multiple_outputs=False, outlets=[table_asset(dataset)])
        def load(dataset: str = dataset, data_interval_start=None, data_interval_end=None,
                 params: dict | None = None, prev_data_interval_end_success=None, dag_run=None) -> dict:
            from include.binance import tasks

            return tasks.run_dataset(dataset, data_interval_start, data_interval_end, params,
                                     prev_data_interval_end_success, dag_run.run_type if dag_run else None)

        chosen >> load()


binance_extract()
