"""Bulk history from Binance's public archives (data.binance.vision): download, verify, load. No Airflow.

Layout relied on (spot; the same on the bundled server, stack/exchange/archive.py):
    data/spot/daily/klines/<SYMBOL>/<interval>/<SYMBOL>-<interval>-<YYYY-MM-DD>.zip
    data/spot/monthly/klines/<SYMBOL>/<interval>/<SYMBOL>-<interval>-<YYYY-MM>.zip
    data/spot/daily/aggTrades/<SYMBOL>/<SYMBOL>-aggTrades-<YYYY-MM-DD>.zip
    data/spot/monthly/aggTrades/<SYMBOL>/<SYMBOL>-aggTrades-<YYYY-MM>.zip
each with `<file>.zip.CHECKSUM` holding `<sha256 hex>  <file>.zip` (sha256sum's format), each zip
holding one CSV:
- klines: the 12 kline fields of the REST API, in its order, without a header (open time, open,
  high, low, close, volume, close time, quote volume, trades, taker buy base, taker buy quote,
  ignore); the last 3 are not kept, as from the REST API;
- aggTrades: aggregate trade id, price, quantity, first trade id, last trade id, time, was the buyer
  the maker, [was it the best price match]: 7 or 8 columns (the 8th is not kept), booleans written
  True/False.
A header line, if a file has one, is skipped (the first line, when its first field is not a number).
Times are milliseconds in spot files before 2025-01-01 and microseconds from then on: each value is
read by its size (models.utc_from_epoch, as for the REST API), so a file of either unit, or a
month that straddles the change, loads the same instants (truncated to milliseconds).

What makes a load safe:
- the `.CHECKSUM` is read first; a file already loaded with that checksum (table archive_files) is
  skipped without downloading it, so re-running a range only costs the checksums;
- the zip is streamed to a temporary file while its SHA-256 is computed; a mismatch or a broken
  transfer is retried (`attempts`), then fails naming the file, its URL and both digests;
- the zip is read to its end inside one transaction (its CRC checked by zipfile on the way), rows
  upserted a chunk at a time, and the file recorded in archive_files in the same transaction: a
  truncated zip, a bad row or any failure rolls all of it back, nothing of that file is written.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import re
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from itertools import islice
from pathlib import Path
from typing import Any

import requests

from include.binance.errors import excerpt
from include.binance.intervals import KLINE_INTERVALS
from include.binance.models import AggTrade, Kline, utc_from_epoch
from include.loader import upsert
from include.names import ARCHIVE_FILES_TABLE, SOURCE_SCHEMA
from include.tables import TABLES

log = logging.getLogger(__name__)

DEFAULT_ARCHIVE_URL = "https://data.binance.vision"
# archive dataset name -> table
DATASETS = {"klines": "klines", "aggTrades": "agg_trades"}
PERIODS = ("daily", "monthly")
CHUNK_ROWS = 50_000
DOWNLOAD_CHUNK = 1 << 20
_SYMBOL = re.compile(r"^[A-Z0-9]{1,20}$")
_CHECKSUM = re.compile(r"^([0-9a-fA-F]{64})\s+\*?(\S+)\s*$")
_TRUE = {"true": True, "false": False}


class ArchiveError(Exception):
    """A file of the archive could not be loaded; the message names the file and its URL."""


class ArchiveMissingError(ArchiveError):
    """The archive has no such file (HTTP 404): not published yet, or the symbol did not trade then."""


class ArchiveChecksumError(ArchiveError):
    """Every download of a file failed its .CHECKSUM, or broke off."""


class ArchiveFormatError(ArchiveError):
    """The zip or its CSV is not what the layout says (truncated zip, wrong columns, a bad value)."""


class ArchiveRequestError(ValueError):
    """The archive DAG's params ask for something that cannot be loaded (the message says why)."""


@dataclass(frozen=True)
class ArchiveFile:
    """One archive file: a symbol's dataset (`klines` with an interval, or `aggTrades`) for a day or a month."""

    symbol: str
    dataset: str
    interval: str | None
    period: str
    start: date

    @property
    def end(self) -> date:
        """The first day after the file's period."""
        if self.period == "daily":
            return self.start + timedelta(days=1)
        return date(self.start.year + self.start.month // 12, self.start.month % 12 + 1, 1)

    @property
    def name(self) -> str:
        stamp = self.start.isoformat() if self.period == "daily" else self.start.strftime("%Y-%m")
        middle = self.interval if self.dataset == "klines" else "aggTrades"
        return f"{self.symbol}-{middle}-{stamp}.zip"

    @property
    def path(self) -> str:
        folder = f"{self.symbol}/{self.interval}" if self.dataset == "klines" else self.symbol
        return f"data/spot/{self.period}/{self.dataset}/{folder}/{self.name}"

    @property
    def table(self) -> str:
        return DATASETS[self.dataset]

    def url(self, base_url: str) -> str:
        return f"{base_url.rstrip('/')}/{self.path}"

    def as_dict(self) -> dict[str, str | None]:
        """For XCom (JSON): what from_dict reads back."""
        return {"symbol": self.symbol, "dataset": self.dataset, "interval": self.interval, "period": self.period,
                "start": self.start.isoformat()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArchiveFile:
        return cls(str(data["symbol"]), str(data["dataset"]), data.get("interval"), str(data["period"]),
                   date.fromisoformat(str(data["start"])))


def _months(start: date, end: date) -> Iterator[date]:
    month = start.replace(day=1)
    while month <= end:
        yield month
        month = date(month.year + month.month // 12, month.month % 12 + 1, 1)


@dataclass(frozen=True)
class ArchiveRequest:
    """Files to load: `dataset` of `symbols` from `start` to `end` (days, both included), in daily
    or monthly files (a monthly file loads its whole month)."""

    symbols: tuple[str, ...]
    dataset: str
    interval: str | None
    start: date
    end: date
    period: str = "daily"

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ArchiveRequestError(f"dataset must be one of {sorted(DATASETS)}, got {self.dataset!r}")
        if self.dataset == "klines" and self.interval not in KLINE_INTERVALS:
            raise ArchiveRequestError(f"klines need an interval, one of {', '.join(KLINE_INTERVALS)}; "
                                      f"got {self.interval!r}")
        if self.period not in PERIODS:
            raise ArchiveRequestError(f"period must be daily or monthly, got {self.period!r}")
        if not self.symbols or isinstance(self.symbols, str):
            raise ArchiveRequestError(f"symbols must be a non-empty list, got {self.symbols!r}")
        bad = [s for s in self.symbols if not isinstance(s, str) or not _SYMBOL.match(s)]
        if bad or len(set(self.symbols)) != len(self.symbols):
            raise ArchiveRequestError(f"symbols must be distinct upper-case symbols like BTCUSDT, got {self.symbols!r}")
        if self.start > self.end:
            raise ArchiveRequestError(f"start {self.start} is after end {self.end}")

    def files(self, today: date) -> list[ArchiveFile]:
        """Every file of the request, by symbol then date. Binance publishes a day's files the next
        day and a month's the next month: asking for later ones fails, naming the last there is."""
        interval = self.interval if self.dataset == "klines" else None
        if self.period == "daily":
            if self.end >= today:
                raise ArchiveRequestError(f"daily files exist up to yesterday ({today - timedelta(days=1)}); "
                                          f"end {self.end} is too late (the extract's backfill fills recent days)")
            starts = [self.start + timedelta(days=n) for n in range((self.end - self.start).days + 1)]
        else:
            starts = list(_months(self.start, self.end))
            if starts[-1] >= today.replace(day=1):
                raise ArchiveRequestError(f"monthly files exist up to last month; {starts[-1]:%Y-%m} has not ended "
                                          "(use daily files for it)")
        return [ArchiveFile(symbol, self.dataset, interval, self.period, day) for symbol in self.symbols
                for day in starts]


def batches(files: Iterable[ArchiveFile]) -> list[list[dict[str, str | None]]]:
    """The files grouped by symbol and month: the unit one mapped task loads (a file at a time), so a
    year of ten symbols is 120 tasks, not 3,650 (Airflow maps at most 1,024 by default)."""
    groups: dict[tuple[str, str], list[dict[str, str | None]]] = {}
    for f in files:
        groups.setdefault((f.symbol, f.start.strftime("%Y-%m")), []).append(f.as_dict())
    return list(groups.values())


def check_retention(files: Iterable[ArchiveFile], horizon: datetime | None) -> None:
    """Refuse files entirely older than the table's horizon in `binance` (the retention policy): the
    retention DAG would delete their rows within a minute of loading them."""
    if horizon is None:
        return
    stale = [f for f in files if datetime(f.end.year, f.end.month, f.end.day, tzinfo=UTC) <= horizon]
    if stale:
        raise ArchiveRequestError(
            f"{stale[0].table} keeps rows after {horizon:%Y-%m-%d %H:%M} UTC in Postgres binance (Variable "
            f"retention): {len(stale)} file(s), {stale[0].name} .. {stale[-1].name}, lie before it and would be "
            f"deleted within a minute of loading; raise retention.{stale[0].table} first")


# --------------------------------------------------------------------------- download and verification


def expected_checksum(session: requests.Session, base_url: str, file: ArchiveFile,
                      timeout: float | tuple[float, float] = (5.0, 30.0)) -> str:
    """The SHA-256 the file's .CHECKSUM names (lower-case hex)."""
    url = file.url(base_url) + ".CHECKSUM"
    response = session.get(url, timeout=timeout)
    if response.status_code == 404:
        raise ArchiveMissingError(f"{file.name}: no such file in the archive ({url}: HTTP 404); daily files appear "
                                  "the next day, and only for days the symbol traded")
    if response.status_code != 200:
        raise ArchiveError(f"{file.name}: GET {url} answered HTTP {response.status_code}: {excerpt(response.content)}")
    m = _CHECKSUM.match(response.text.strip())
    if not m:
        raise ArchiveChecksumError(f"{file.name}: {url} is not '<sha256>  <file name>': {excerpt(response.text)!r}")
    if m.group(2) != file.name:
        raise ArchiveChecksumError(f"{file.name}: {url} is the checksum of {m.group(2)}, not of {file.name}")
    return m.group(1).lower()


def download(session: requests.Session, url: str, dest: Path,
             timeout: float | tuple[float, float] = (5.0, 120.0)) -> str:
    """Stream `url` to `dest` (never whole in memory), returning its SHA-256; a broken transfer raises."""
    digest = hashlib.sha256()
    with session.get(url, stream=True, timeout=timeout) as response:
        if response.status_code == 404:
            raise ArchiveMissingError(f"{url}: HTTP 404")
        if response.status_code != 200:
            raise ArchiveError(f"GET {url} answered HTTP {response.status_code}: {excerpt(response.content)}")
        with dest.open("wb") as out:
            for chunk in response.iter_content(DOWNLOAD_CHUNK):
                digest.update(chunk)
                out.write(chunk)
    return digest.hexdigest()


def fetch_verified(session: requests.Session, base_url: str, file: ArchiveFile, workdir: Path, expected: str,
                   attempts: int = 3, backoff_s: float = 2.0, sleep: Callable[[float], None] = time.sleep) -> Path:
    """The file downloaded into `workdir` with the SHA-256 `expected`: a mismatch or a broken transfer
    is downloaded again, up to `attempts` times, then ArchiveChecksumError names the file and both digests."""
    url = file.url(base_url)
    dest = workdir / file.name
    problems = []
    for attempt in range(1, attempts + 1):
        try:
            got = download(session, url, dest)
        except ArchiveMissingError:
            raise
        except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError,
                requests.exceptions.Timeout) as exc:
            problems.append(f"attempt {attempt}: transfer broke off ({type(exc).__name__}: {excerpt(str(exc), 120)})")
        else:
            if got == expected:
                return dest
            problems.append(f"attempt {attempt}: SHA-256 {got}")
        log.warning("%s: %s; expected SHA-256 %s", file.name, problems[-1], expected)
        if attempt < attempts:
            sleep(backoff_s * attempt)
    dest.unlink(missing_ok=True)
    raise ArchiveChecksumError(f"{file.name} ({url}): {attempts} download(s), none matched its .CHECKSUM "
                               f"(SHA-256 {expected}): {'; '.join(problems)}. Nothing of it was loaded")


# --------------------------------------------------------------------------- reading the CSV


def _decimal(value: str, file: ArchiveFile, line: int, column: str) -> Decimal:
    try:
        number = Decimal(value)
    except InvalidOperation:
        number = Decimal("NaN")
    if not number.is_finite():
        raise ArchiveFormatError(f"{file.name} line {line}: {column} is not a number: {value!r}")
    return number


def _integer(value: str, file: ArchiveFile, line: int, column: str) -> int:
    if not value.isdigit():
        raise ArchiveFormatError(f"{file.name} line {line}: {column} is not a whole number: {value!r}")
    return int(value)


def _time(value: str, file: ArchiveFile, line: int, column: str) -> datetime:
    try:
        return utc_from_epoch(_integer(value, file, line, column))
    except ValueError as exc:
        raise ArchiveFormatError(f"{file.name} line {line}: {column}: {exc}") from exc


def kline_from_row(row: list[str], file: ArchiveFile, line: int) -> Kline:
    """One kline line (12 columns); open and close times in ms or µs, told apart by size."""
    if len(row) != 12:
        raise ArchiveFormatError(f"{file.name} line {line}: a kline has 12 columns, got {len(row)}: {row[:13]}")
    assert file.interval is not None
    return Kline(
        symbol=file.symbol,
        interval=file.interval,
        open_time=_time(row[0], file, line, "open time"),
        open_price=_decimal(row[1], file, line, "open"),
        high_price=_decimal(row[2], file, line, "high"),
        low_price=_decimal(row[3], file, line, "low"),
        close_price=_decimal(row[4], file, line, "close"),
        volume=_decimal(row[5], file, line, "volume"),
        close_time=_time(row[6], file, line, "close time"),
        quote_volume=_decimal(row[7], file, line, "quote volume"),
        num_trades=_integer(row[8], file, line, "number of trades"),
    )


def agg_trade_from_row(row: list[str], file: ArchiveFile, line: int) -> AggTrade:
    """One aggregate trade line (7 or 8 columns: a, p, q, f, l, T, m[, M])."""
    if len(row) not in (7, 8):
        raise ArchiveFormatError(f"{file.name} line {line}: an aggregate trade has 7 or 8 columns, got {len(row)}: "
                                 f"{row[:9]}")
    maker = _TRUE.get(row[6].strip().lower())
    if maker is None:
        raise ArchiveFormatError(f"{file.name} line {line}: 'was the buyer the maker' is not True/False: {row[6]!r}")
    return AggTrade(
        symbol=file.symbol,
        agg_trade_id=_integer(row[0], file, line, "aggregate trade id"),
        price=_decimal(row[1], file, line, "price"),
        qty=_decimal(row[2], file, line, "quantity"),
        first_trade_id=_integer(row[3], file, line, "first trade id"),
        last_trade_id=_integer(row[4], file, line, "last trade id"),
        time=_time(row[5], file, line, "time"),
        is_buyer_maker=maker,
    )


def read_records(zip_path: Path, file: ArchiveFile) -> Iterator[Kline | AggTrade]:
    """The records of a downloaded archive file, streamed from its one CSV. A truncated or damaged zip
    (no central directory, a bad CRC at the end of the member) or a bad line raises ArchiveFormatError."""
    parse = kline_from_row if file.dataset == "klines" else agg_trade_from_row
    try:
        with zipfile.ZipFile(zip_path) as archive:
            members = [m for m in archive.namelist() if not m.endswith("/")]
            if len(members) != 1 or not members[0].endswith(".csv"):
                raise ArchiveFormatError(f"{file.name}: expected one CSV in the zip, found {members}")
            with archive.open(members[0]) as raw:
                reader = csv.reader(io.TextIOWrapper(raw, encoding="utf-8", newline=""))
                for line, row in enumerate(reader, start=1):
                    if not row:
                        continue
                    if line == 1 and not row[0].strip().isdigit():
                        continue  # a header line
                    yield parse(row, file, line)
    except (zipfile.BadZipFile, EOFError, UnicodeDecodeError) as exc:
        raise ArchiveFormatError(f"{file.name}: not a complete, readable zip ({type(exc).__name__}: {exc})") from exc


# --------------------------------------------------------------------------- loading


def stored_checksum(conn: Any, file: ArchiveFile) -> str | None:
    """The SHA-256 archive_files recorded when `file` was loaded, or None."""
    with conn.cursor() as cur:
        cur.execute(f'SELECT sha256 FROM "{SOURCE_SCHEMA}"."{ARCHIVE_FILES_TABLE}" WHERE path = %s', (file.path,))
        row = cur.fetchone()
    conn.rollback()
    return row[0] if row else None


def load_file(conn: Any, file: ArchiveFile, zip_path: Path, sha256: str,
              chunk_rows: int = CHUNK_ROWS) -> dict[str, Any]:
    """Upsert every row of a verified file and record it in archive_files, in one transaction."""
    table = TABLES[file.table]
    time_column = table.time_column
    received = inserted = updated = 0
    first = last = None
    records = read_records(zip_path, file)
    try:
        with conn.cursor() as cur:
            n = 0
            while chunk := list(islice(records, chunk_rows)):
                staging = f"stage_{table.name}_{n}"
                got, new, changed = upsert(cur, table, chunk, staging=staging)
                cur.execute(f'DROP TABLE IF EXISTS "{staging}"')
                received, inserted, updated = received + got, inserted + new, updated + changed
                times = [getattr(r, time_column) for r in chunk]
                first = min([first, *times]) if first else min(times)
                last = max([last, *times]) if last else max(times)
                n += 1
            cur.execute(
                f'INSERT INTO "{SOURCE_SCHEMA}"."{ARCHIVE_FILES_TABLE}" '
                "(path, sha256, dataset, symbol, rows, first_time, last_time, loaded_at) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, now()) ON CONFLICT (path) DO UPDATE SET sha256 = EXCLUDED.sha256, "
                "rows = EXCLUDED.rows, first_time = EXCLUDED.first_time, last_time = EXCLUDED.last_time, "
                "loaded_at = EXCLUDED.loaded_at",
                (file.path, sha256, file.dataset, file.symbol, received, first, last))
        conn.commit()
    except Exception:
        conn.rollback()
        raise
    log.info("%s: %d rows into %s.%s (%d inserted, %d updated), %s .. %s", file.name, received, SOURCE_SCHEMA,
             table.name, inserted, updated, first, last)
    return {"file": file.name, "rows": received, "inserted": inserted, "updated": updated, "sha256": sha256,
            "first": first.isoformat() if first else None, "last": last.isoformat() if last else None}


def load_archive_file(session: requests.Session, conn: Any, base_url: str, file: ArchiveFile, workdir: Path,
                      attempts: int = 3, sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """One file: skipped when archive_files holds it with the checksum the archive names now; else
    downloaded, verified, loaded (all or nothing)."""
    expected = expected_checksum(session, base_url, file)
    stored = stored_checksum(conn, file)
    if stored == expected:
        log.info("%s: already loaded with SHA-256 %s: skipped", file.name, expected)
        return {"file": file.name, "skipped": "already loaded with this checksum", "sha256": expected}
    if stored is not None:
        log.warning("%s: loaded before with SHA-256 %s, the archive now names %s: loading it again", file.name,
                    stored, expected)
    zip_path = fetch_verified(session, base_url, file, workdir, expected, attempts=attempts, sleep=sleep)
    try:
        return load_file(conn, file, zip_path, expected)
    finally:
        zip_path.unlink(missing_ok=True)


def load_files(session: requests.Session, conn: Any, base_url: str, files: Iterable[ArchiveFile], workdir: Path,
               attempts: int = 3, sleep: Callable[[float], None] = time.sleep) -> list[dict[str, Any]]:
    """Each file in turn, each in its own transaction: a failure stops here, the files before it stay
    loaded (and are skipped when the task is retried)."""
    return [load_archive_file(session, conn, base_url, f, workdir, attempts, sleep) for f in files]
