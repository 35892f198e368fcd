"""What the `binance_extract` DAG's tasks run: Airflow Connections and Variables in, `extract` out.

Kept apart from the DAG file so parsing it stays cheap (nothing here runs at import time), and
apart from the rest of include/binance, which has no Airflow import at all.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from include import connections
from include.binance.client import DEFAULT_BASE_URL, BinanceClient
from include.binance.extract import (
    DEFAULT_LIMITS,
    DEFAULT_SYMBOLS,
    HISTORICAL,
    ExtractSettings,
    SettingsError,
    catch_up_start,
    datasets_for_interval,
    extract,
    skip_reason,
)
from include.loader import LoadResult
from include.names import BINANCE_CONN_ID, SOURCE_SCHEMA
from include.schema.postgres import apply

log = logging.getLogger(__name__)

# the run types (DagRunType values) whose historical loads catch up the intervals runs before them missed
SCHEDULED = ("scheduled",)


def _json_variable(name: str, default: Any) -> Any:
    from airflow.sdk import Variable

    raw = Variable.get(name, default=None)
    if raw is None:
        return default
    try:
        return json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError as exc:
        raise SettingsError(f"Variable {name} is not valid JSON ({exc}): {raw[:100]!r}") from exc


def settings_from_variables(params: dict[str, Any] | None = None) -> ExtractSettings:
    """Read the tunables: binance_symbols, binance_kline_interval, binance_limits; a run's params
    `symbols` and `kline_interval` (e.g. a backfill's --dag-run-conf) replace the Variables when set."""
    from airflow.sdk import Variable

    params = params or {}
    symbols = params.get("symbols") or _json_variable("binance_symbols", list(DEFAULT_SYMBOLS))
    if not isinstance(symbols, list):
        raise SettingsError(f"binance_symbols (Variable or param) must be a JSON list, got {symbols!r}")
    limits = _json_variable("binance_limits", dict(DEFAULT_LIMITS))
    if not isinstance(limits, dict):
        raise SettingsError(f"Variable binance_limits must be a JSON object, got {limits!r}")
    return ExtractSettings(
        symbols=tuple(symbols),
        kline_interval=params.get("kline_interval") or Variable.get("binance_kline_interval", default="30m"),
        limits={k: int(v) for k, v in limits.items()},
    )


def base_url_from_connection(conn_id: str = BINANCE_CONN_ID, default: str = DEFAULT_BASE_URL) -> str:
    """An HTTP connection's host (scheme allowed in it, port added), or `default` when the
    connection or its host is not defined (`binance_api`: the public market-data host)."""
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException, AirflowRuntimeError

    try:
        conn = BaseHook.get_connection(conn_id)
    except (AirflowNotFoundException, AirflowRuntimeError):
        log.info("connection %s not defined: using %s", conn_id, default)
        return default
    host = (conn.host or "").rstrip("/")
    if not host:
        return default
    if "://" not in host:
        host = f"{conn.schema or 'https'}://{host}"
    if conn.port:
        host = f"{host}:{conn.port}"
    return host


def state_files() -> tuple[Path, Path]:
    """The ban file and the used-weight file every task of this machine shares: after a 429 no
    dataset calls until Retry-After, and concurrent runs keep to one weight budget. The weight file
    lies next to the ban file unless BINANCE_WEIGHT_STATE_FILE names another."""
    home = Path(os.environ.get("AIRFLOW_HOME", Path.home() / "airflow"))
    ban_file = Path(os.environ.get("BINANCE_BAN_STATE_FILE", str(home / "binance_ban_state.json")))
    weight_file = Path(os.environ.get("BINANCE_WEIGHT_STATE_FILE",
                                      str(ban_file.with_name("binance_weight_state.json"))))
    return ban_file, weight_file


def make_client() -> BinanceClient:
    ban_file, weight_file = state_files()
    return BinanceClient(base_url_from_connection(), ban_state_path=ban_file, weight_state_path=weight_file)


def apply_migrations() -> list[str]:
    with connections.postgres() as conn:
        return apply(conn, SOURCE_SCHEMA)


def validate_symbols(params: dict[str, Any] | None = None) -> list[str]:
    """Fail the run, before any load, if a symbol is unknown or not TRADING."""
    settings = settings_from_variables(params)
    with make_client() as client:
        client.validate_symbols(settings.symbols)
    log.info("symbols valid and trading: %s", ", ".join(settings.symbols))
    return list(settings.symbols)


def load_task_id(dataset: str) -> str:
    return f"load_{dataset}"


SKIPPED_XCOM_KEY = "skipped"


def choose_datasets(data_interval_start: datetime | None, data_interval_end: datetime | None) -> list[str]:
    """The load tasks to run for this interval (the branch): every dataset of a recent interval, the
    historical ones only for an interval long past. Each skip is logged with its reason and pushed
    as the XCom `skipped` ({dataset: reason}, shown in the UI next to the branch's own record of the
    tasks it followed), since a skipped task runs nothing that could say so itself."""
    from airflow.sdk import get_current_context

    chosen, skipped = [], {}
    for dataset, reason in datasets_for_interval(data_interval_end).items():
        if reason is None:
            chosen.append(load_task_id(dataset))
        else:
            skipped[dataset] = reason
            log.warning("skipping %s for [%s, %s): %s", load_task_id(dataset), data_interval_start,
                        data_interval_end, reason)
    log.info("loading for [%s, %s): %s", data_interval_start, data_interval_end, ", ".join(chosen))
    get_current_context()["ti"].xcom_push(key=SKIPPED_XCOM_KEY, value=skipped)
    return chosen


def run_dataset(dataset: str, data_interval_start: datetime | None,
                data_interval_end: datetime | None = None, params: dict[str, Any] | None = None,
                previous_end: datetime | None = None, run_type: str | None = None) -> dict[str, Any]:
    """Load one dataset for the run's data interval (a scheduled run's historical datasets from the
    end of the last successful run's interval: extract.catch_up_start); the return value (the task's
    XCom, shown in the UI) says what it loaded, or why it skipped."""
    settings = settings_from_variables(params)
    reason = skip_reason(dataset, data_interval_end)
    if reason is not None:
        log.warning("%s skipped: %s", dataset, reason)
        interval = [t.isoformat() if t else None for t in (data_interval_start, data_interval_end)]
        return {"dataset": dataset, "interval": interval, "skipped": reason}
    if dataset in HISTORICAL:
        data_interval_start = catch_up_start(data_interval_start, previous_end,
                                             getattr(run_type, "value", run_type) in SCHEDULED)
    interval = [t.isoformat() if t else None for t in (data_interval_start, data_interval_end)]
    with connections.postgres() as conn, make_client() as client:
        result: LoadResult = extract(dataset, client, conn, settings, data_interval_start, data_interval_end)
    return {"dataset": dataset, "interval": interval, "symbols": list(settings.symbols),
            "received": result.received, "inserted": result.inserted, "updated": result.updated}
