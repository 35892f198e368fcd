"""What the `binance_extract` DAG's tasks run: Airflow Connections and Variables in, `extract` out.

Kept apart from the DAG file so parsing it stays cheap (nothing here runs at import time), and
apart from the rest of include/binance, which has no Airflow import at all.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from include import connections
from include.binance.client import DEFAULT_BASE_URL, BinanceClient
from include.binance.extract import DEFAULT_LIMITS, DEFAULT_SYMBOLS, ExtractSettings, SettingsError, extract
from include.loader import LoadResult
from include.names import BINANCE_CONN_ID, SOURCE_SCHEMA
from include.schema.postgres import apply

log = logging.getLogger(__name__)


def _json_variable(name: str, default: Any) -> Any:
    from airflow.sdk import Variable

    raw = Variable.get(name, default=None)
    if raw is None:
        return default
    try:
        return json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError as exc:
        raise SettingsError(f"Variable {name} is not valid JSON ({exc}): {raw[:100]!r}") from exc


def settings_from_variables() -> ExtractSettings:
    """Read the tunables: binance_symbols, binance_kline_interval, binance_limits."""
    from airflow.sdk import Variable

    symbols = _json_variable("binance_symbols", list(DEFAULT_SYMBOLS))
    if not isinstance(symbols, list):
        raise SettingsError(f"Variable binance_symbols must be a JSON list, got {symbols!r}")
    limits = _json_variable("binance_limits", dict(DEFAULT_LIMITS))
    if not isinstance(limits, dict):
        raise SettingsError(f"Variable binance_limits must be a JSON object, got {limits!r}")
    return ExtractSettings(
        symbols=tuple(symbols),
        kline_interval=Variable.get("binance_kline_interval", default="30m"),
        limits={k: int(v) for k, v in limits.items()},
    )


def base_url_from_connection() -> str:
    """The `binance_api` connection's host (scheme allowed in it), or the public market-data host."""
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowRuntimeError

    try:
        conn = BaseHook.get_connection(BINANCE_CONN_ID)
    except AirflowRuntimeError:
        log.info("connection %s not defined: using %s", BINANCE_CONN_ID, DEFAULT_BASE_URL)
        return DEFAULT_BASE_URL
    host = (conn.host or "").rstrip("/")
    if not host:
        return DEFAULT_BASE_URL
    if "://" not in host:
        host = f"{conn.schema or 'https'}://{host}"
    if conn.port:
        host = f"{host}:{conn.port}"
    return host


def make_client() -> BinanceClient:
    # one ban file for every task on this machine: after a 429 no dataset calls until Retry-After
    home = Path(os.environ.get("AIRFLOW_HOME", Path.home() / "airflow"))
    ban_file = os.environ.get("BINANCE_BAN_STATE_FILE", str(home / "binance_ban_state.json"))
    return BinanceClient(base_url_from_connection(), ban_state_path=ban_file)


def apply_migrations() -> list[str]:
    with connections.postgres() as conn:
        return apply(conn, SOURCE_SCHEMA)


def validate_symbols() -> list[str]:
    """Fail the run, before any load, if a symbol is unknown or not TRADING."""
    settings = settings_from_variables()
    with make_client() as client:
        client.validate_symbols(settings.symbols)
    log.info("symbols valid and trading: %s", ", ".join(settings.symbols))
    return list(settings.symbols)


def run_dataset(dataset: str, data_interval_start: datetime | None,
                data_interval_end: datetime | None = None) -> dict[str, int]:
    settings = settings_from_variables()
    start = data_interval_start or datetime.now(UTC)
    with connections.postgres() as conn, make_client() as client:
        result: LoadResult = extract(dataset, client, conn, settings, start, data_interval_end)
    return {"received": result.received, "inserted": result.inserted, "updated": result.updated}
