"""
### binance_extract

Pulls five Binance market datasets into PostgreSQL schema `binance`, every minute:
latest prices, 24 h ticker, klines, recent trades and the order book. Each load is one
transaction of upserts, so re-running an interval adds nothing twice and the open kline is
updated in place. Latest prices are stamped with the end of the run's data interval (one row per
symbol and interval); an interval that ended more than 10 minutes ago skips them.

Needs: connection `binance_postgres` (Postgres), connection `binance_api` (HTTP; host may carry
the scheme; default `https://data-api.binance.vision`), pool `binance_api` (bounds concurrent
Binance calls). Variables (all optional): `binance_symbols` (JSON list), `binance_kline_interval`
(default `30m`), `binance_limits` (JSON, e.g. `{"klines": 100, "recent_trades": 500, "order_book": 100}`);
the schedule is read at parse time from the environment variable `BINANCE_EXTRACT_SCHEDULE`
(default every minute). Old rows are deleted by the `retention` DAG.
"""

from __future__ import annotations

import os
from datetime import timedelta

from airflow.sdk import Asset, dag, task

from include.names import BINANCE_POOL, SOURCE_SCHEMA
from include.tables import TABLES


def table_asset(table: str) -> Asset:
    return Asset(name=f"{SOURCE_SCHEMA}.{table}", uri=f"postgres-table://binance/{SOURCE_SCHEMA}/{table}")


@dag(
    schedule=os.environ.get("BINANCE_EXTRACT_SCHEDULE", "* * * * *"),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=10),
    tags=["binance", "extract"],
    default_args={"retries": 2, "retry_delay": timedelta(seconds=20), "retry_exponential_backoff": True},
    doc_md=__doc__,
)
def binance_extract():
    @task
    def apply_migrations() -> list[str]:
        from include.binance import tasks

        return tasks.apply_migrations()

    @task(pool=BINANCE_POOL)
    def validate_symbols() -> list[str]:
        from include.binance import tasks

        return tasks.validate_symbols()

    ready = apply_migrations() >> validate_symbols()

    for dataset in TABLES:

        @task(task_id=f"load_{dataset}", pool=BINANCE_POOL, outlets=[table_asset(dataset)])
        def load(dataset: str = dataset, data_interval_start=None, data_interval_end=None) -> dict[str, int]:
            from include.binance import tasks

            return tasks.run_dataset(dataset, data_interval_start, data_interval_end)

        ready >> load()


binance_extract()
