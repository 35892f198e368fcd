"""
### binance_archive

Bulk history from Binance's public archives (data.binance.vision, connection `binance_archive`):
downloads the daily or monthly zip files of one dataset for some symbols and dates, verifies each
against its `.CHECKSUM` (SHA-256), and loads it into Postgres schema `binance` through the same loader
as `binance_extract`, one transaction per file, so the rows flow through CDC to Cassandra and the
bridge like any other.

Params: `symbols` (list), `dataset` (`klines` or `aggTrades`), `interval` (klines only, e.g. `1m`),
`start_date` and `end_date` (YYYY-MM-DD, both included), `period` (`daily` or `monthly`: a monthly
file loads its whole month). Daily files exist up to yesterday, monthly ones up to last month.

- `plan_files` lists the files and groups them by symbol and month, one mapped `load_files` task per
  group (shown as e.g. `BTCUSDT 2025-03 (31 file(s))`); it refuses dates not published yet, and
  aggTrades older than what the retention policy keeps in `binance` (they would be deleted at once).
- `load_files` skips a file already loaded with the checksum the archive names (table
  `binance.archive_files`), downloads the others to a temporary file, retries a checksum mismatch or a
  broken transfer (3 downloads), then fails naming the file, its URL and the digests; a truncated zip
  or a bad line fails the file too. Nothing of a failed file is written; files loaded before it stay,
  and a retry skips them.

Needs: connections `binance_postgres` and `binance_archive` (HTTP; default
`https://data.binance.vision`), pool `binance_archive` (concurrent downloads and loads; made by `make
up`). Timestamps: milliseconds before 2025-01-01, microseconds after; both load the same instants.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Param, dag, task

from include.names import ARCHIVE_POOL
from include.schedules import batch_default_args


@dag(
    schedule=None,
    catchup=False,
    max_active_runs=1,
    tags=["binance", "history"],
    default_args=batch_default_args(retries=2, retry_delay=timedelta(seconds=30)),
    params={
        "symbols": Param(["BTCUSDT"], type="array", items={"type": "string"}, minItems=1,
                         description="symbols, e.g. [\"BTCUSDT\", \"ETHUSDT\"]"),
        "dataset": Param("klines", type="string", enum=["klines", "aggTrades"]),
        "interval": Param("1m", type=["null", "string"], description="kline interval (klines only)"),
        "start_date": Param(None, type=["null", "string"], format="date", description="first day, YYYY-MM-DD"),
        "end_date": Param(None, type=["null", "string"], format="date", description="last day, YYYY-MM-DD"),
        "period": Param("daily", type="string", enum=["daily", "monthly"]),
    },
    doc_md=__doc__,
)
def binance_archive():
    @task
    def apply_migrations() -> list[str]:
        from include.binance import tasks

        return tasks.apply_migrations()

    @task
    def plan_files(params: dict | None = None) -> list[list[dict]]:
        from include.binance import archive_tasks

        return archive_tasks.plan(params)

    @task(pool=ARCHIVE_POOL, map_index_template="{{ archive_batch }}")
    def load_files(batch: list[dict]) -> list[dict]:
        from include.binance import archive_tasks

        return archive_tasks.load_batch(batch)

    load_files.expand(batch=apply_migrations() >> plan_files())


binance_archive()
