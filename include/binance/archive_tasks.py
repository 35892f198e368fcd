"""What the `binance_archive` DAG's tasks run: its params, the `binance_archive` connection and the
retention policy in, include.binance.archive out."""

from __future__ import annotations

import logging
import tempfile
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import requests

from include import connections
from include.binance.archive import (
    DEFAULT_ARCHIVE_URL,
    ArchiveFile,
    ArchiveRequest,
    ArchiveRequestError,
    batches,
    check_retention,
    load_files,
)
from include.binance.client import normalize_base_url
from include.names import ARCHIVE_CONN_ID

log = logging.getLogger(__name__)


def archive_url() -> str:
    """The `binance_archive` connection's host (scheme allowed in it), or data.binance.vision."""
    from include.binance.tasks import base_url_from_connection

    return normalize_base_url(base_url_from_connection(ARCHIVE_CONN_ID, DEFAULT_ARCHIVE_URL))


def _day(value: Any, name: str) -> date:
    if not value:
        raise ArchiveRequestError(f"param {name} is required (YYYY-MM-DD)")
    try:
        return date.fromisoformat(str(value)[:10])
    except ValueError as exc:
        raise ArchiveRequestError(f"param {name} must be a date YYYY-MM-DD, got {value!r}") from exc


def request_from_params(params: dict[str, Any] | None) -> ArchiveRequest:
    params = params or {}
    symbols = params.get("symbols") or []
    return ArchiveRequest(
        symbols=tuple(symbols) if isinstance(symbols, list) else symbols,
        dataset=str(params.get("dataset") or ""),
        interval=params.get("interval"),
        start=_day(params.get("start_date"), "start_date"),
        end=_day(params.get("end_date"), "end_date"),
        period=str(params.get("period") or "daily"),
    )


def plan(params: dict[str, Any] | None) -> list[list[dict[str, str | None]]]:
    """The files the params name, grouped for the mapped loads; refused up front when they are not
    published yet or the retention policy would delete their rows at once."""
    from include.retention import tasks as retention

    request = request_from_params(params)
    files = request.files(datetime.now(UTC).date())
    table = files[0].table
    check_retention(files, retention.policy().horizon(table, "binance", datetime.now(UTC)))
    groups = batches(files)
    log.info("%d %s file(s) of %s for %s, %s .. %s, in %d task(s)", len(files), request.period, request.dataset,
             ", ".join(request.symbols), request.start, request.end, len(groups))
    return groups


def load_batch(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Download, verify and load one group of files (a symbol's month), a file at a time; the mapped
    task shows the group in the UI (`archive_batch`)."""
    from airflow.sdk import get_current_context

    files = [ArchiveFile.from_dict(f) for f in batch]
    label = f"{files[0].symbol} {files[0].start:%Y-%m} ({len(files)} file(s))"
    # rendered by the task's map_index_template, so the UI names each mapped task by its files
    get_current_context()["archive_batch"] = label  # type: ignore[typeddict-unknown-key]
    base_url = archive_url()
    with tempfile.TemporaryDirectory(prefix="binance-archive-") as workdir, requests.Session() as session, \
            connections.postgres() as conn:
        session.headers["User-Agent"] = "binance-cdc-pipeline/1.0"
        results = load_files(session, conn, base_url, files, Path(workdir))
    loaded = sum(r.get("rows", 0) for r in results)
    log.info("%s: %d row(s) loaded, %d file(s) skipped as already loaded", label, loaded,
             sum(1 for r in results if "skipped" in r))
    return results
