"""include/binance/archive.py against the bundled server's archive: the files a request names, the
.CHECKSUM verification (a good file, a bad checksum, a broken transfer, a truncated zip: a clear
error naming the file, retried, nothing loaded), both timestamp units giving the same instants, the
CSV columns relied on, and the skip of files already loaded. The database is a recording fake here;
tests/integration/test_history.py loads into the real one."""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import requests

from include.binance.archive import (
    ArchiveChecksumError,
    ArchiveFile,
    ArchiveFormatError,
    ArchiveMissingError,
    ArchiveRequest,
    ArchiveRequestError,
    batches,
    check_retention,
    expected_checksum,
    fetch_verified,
    load_archive_file,
    load_file,
    read_records,
)
from include.binance.client import BinanceClient
from include.binance.models import AggTrade, Kline
from stack.exchange import BinanceTestServer
from stack.exchange.archive import parse_path

# 2026-01-01T00:00:10Z: the archive holds days up to 2025-12-31
T0 = 1_767_225_610.0
TODAY = date(2026, 1, 1)


@pytest.fixture
def server() -> Iterator[BinanceTestServer]:
    with BinanceTestServer(seed=4, clock=lambda: T0) as srv:
        yield srv


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


def no_sleep(_: float) -> None:
    pass


def klines_file(day: date, symbol: str = "BTCUSDT", interval: str = "1h") -> ArchiveFile:
    return ArchiveFile(symbol, "klines", interval, "daily", day)


class FakeCursor:
    def __init__(self, conn: FakeConn) -> None:
        self.conn = conn

    def __enter__(self) -> FakeCursor:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def execute(self, sql: str, params: Any = None) -> None:
        self.conn.statements.append(sql)

    def fetchone(self) -> Any:
        last = self.conn.statements[-1]
        if "SELECT sha256" in last:
            return (self.conn.stored,) if self.conn.stored else None
        return (len(self.conn.copied), 0)

    def fetchall(self) -> list:
        return []

    def copy_expert(self, sql: str, stream: io.TextIOBase) -> None:
        self.conn.copied += stream.read().splitlines()


class FakeConn:
    """A DB-API connection that records statements, copied rows, commits and rollbacks."""

    def __init__(self, stored: str | None = None) -> None:
        self.stored = stored
        self.statements: list[str] = []
        self.copied: list[str] = []
        self.commits = self.rollbacks = 0

    def cursor(self) -> FakeCursor:
        return FakeCursor(self)

    def commit(self) -> None:
        self.commits += 1

    def rollback(self) -> None:
        self.rollbacks += 1


def zip_of(name: str, text: str) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(name.removesuffix(".zip") + ".csv", text)
    return out.getvalue()


# -- what a request names ---------------------------------------------------------------------------


def test_files_follow_the_archive_layout_of_binance_and_the_server() -> None:
    daily = klines_file(date(2025, 3, 1), interval="1m")
    assert daily.path == "data/spot/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2025-03-01.zip"
    monthly = ArchiveFile("ETHUSDT", "aggTrades", None, "monthly", date(2024, 12, 1))
    assert monthly.path == "data/spot/monthly/aggTrades/ETHUSDT/ETHUSDT-aggTrades-2024-12.zip"
    assert (monthly.end, monthly.table) == (date(2025, 1, 1), "agg_trades")
    for f in (daily, monthly):
        parsed, checksum = parse_path("/" + f.path)
        assert (parsed.symbol, parsed.dataset, parsed.interval, parsed.period, parsed.start, checksum) == (
            f.symbol, f.dataset, f.interval, f.period, f.start, False)
        assert ArchiveFile.from_dict(f.as_dict()) == f


def test_a_request_names_its_days_or_months_and_groups_them_by_symbol_and_month() -> None:
    request = ArchiveRequest(("BTCUSDT", "ETHUSDT"), "klines", "1m", date(2025, 1, 30), date(2025, 2, 2))
    files = request.files(TODAY)
    assert [(f.symbol, f.start.isoformat()) for f in files][:4] == [
        ("BTCUSDT", "2025-01-30"), ("BTCUSDT", "2025-01-31"), ("BTCUSDT", "2025-02-01"), ("BTCUSDT", "2025-02-02")]
    assert len(files) == 8
    groups = batches(files)
    assert [len(g) for g in groups] == [2, 2, 2, 2]
    assert {(g[0]["symbol"], g[0]["start"][:7]) for g in groups} == {
        ("BTCUSDT", "2025-01"), ("BTCUSDT", "2025-02"), ("ETHUSDT", "2025-01"), ("ETHUSDT", "2025-02")}
    months = ArchiveRequest(("BTCUSDT",), "aggTrades", None, date(2025, 11, 15), date(2025, 12, 3), "monthly")
    assert [f.name for f in months.files(TODAY)] == ["BTCUSDT-aggTrades-2025-11.zip", "BTCUSDT-aggTrades-2025-12.zip"]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"dataset": "trades"}, "dataset must be one of"),
    ({"interval": "2m"}, "klines need an interval"),
    ({"interval": None}, "klines need an interval"),
    ({"period": "weekly"}, "daily or monthly"),
    ({"symbols": ("btcusdt",)}, "upper-case"),
    ({"symbols": ("BTCUSDT", "BTCUSDT")}, "distinct"),
    ({"start": date(2025, 3, 2)}, "after end"),
])
def test_bad_requests_are_refused_naming_the_param(kwargs: dict, message: str) -> None:
    base = {"symbols": ("BTCUSDT",), "dataset": "klines", "interval": "1m", "start": date(2025, 3, 1),
            "end": date(2025, 3, 1), "period": "daily"}
    with pytest.raises(ArchiveRequestError, match=message):
        ArchiveRequest(**{**base, **kwargs})


def test_files_not_published_yet_are_refused() -> None:
    with pytest.raises(ArchiveRequestError, match="up to yesterday"):
        ArchiveRequest(("BTCUSDT",), "klines", "1m", date(2025, 12, 30), TODAY).files(TODAY)
    with pytest.raises(ArchiveRequestError, match="has not ended"):
        ArchiveRequest(("BTCUSDT",), "klines", "1m", date(2025, 12, 1), date(2026, 1, 1), "monthly").files(
            date(2026, 1, 20))


def test_files_the_retention_would_delete_at_once_are_refused() -> None:
    files = ArchiveRequest(("BTCUSDT",), "aggTrades", None, date(2025, 12, 28), date(2025, 12, 31)).files(TODAY)
    horizon = datetime(2025, 12, 30, 0, 10, tzinfo=UTC)  # 48 h before 2026-01-01 00:10
    with pytest.raises(ArchiveRequestError, match=r"2 file\(s\).*2025-12-28.*2025-12-29.*retention.agg_trades"):
        check_retention(files, horizon)
    check_retention(files[2:], horizon)  # the 30th and 31st are (partly) kept
    check_retention(files, None)  # kept for ever


# -- download and checksum -------------------------------------------------------------------------


def test_a_good_file_is_downloaded_and_matches_its_checksum(server, session, tmp_path: Path) -> None:
    f = klines_file(date(2025, 12, 30))
    expected = expected_checksum(session, server.url, f)
    path = fetch_verified(session, server.url, f, tmp_path, expected, sleep=no_sleep)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == expected
    assert [c["path"] for c in server.calls()] == ["/" + f.path + ".CHECKSUM", "/" + f.path]


def test_a_corrupted_download_is_retried(server, session, tmp_path: Path) -> None:
    f = klines_file(date(2025, 12, 30))
    server.add_fault("archive_corrupt", path="/" + f.path)
    path = fetch_verified(session, server.url, f, tmp_path, expected_checksum(session, server.url, f), sleep=no_sleep)
    assert [c["fault"] for c in server.calls() if c["path"].endswith(".zip")] == ["archive_corrupt", None]
    assert path.exists()


@pytest.mark.parametrize("fault", ["archive_corrupt", "archive_truncated"])
def test_a_file_that_never_matches_fails_naming_it_after_the_retries(server, session, tmp_path: Path,
                                                                    fault: str) -> None:
    f = klines_file(date(2025, 12, 30))
    server.add_fault(fault, count=3)
    expected = expected_checksum(session, server.url, f)
    with pytest.raises(ArchiveChecksumError) as err:
        fetch_verified(session, server.url, f, tmp_path, expected, attempts=3, sleep=no_sleep)
    message = str(err.value)
    assert f.name in message and f.url(server.url) in message and expected in message
    assert "3 download(s)" in message and ("SHA-256" in message if fault == "archive_corrupt" else "broke off" in
                                           message)
    assert list(tmp_path.iterdir()) == [], "the bad download was left behind"


def test_a_missing_file_says_so(server, session) -> None:
    f = ArchiveFile("BTCUSDT", "klines", "1m", "daily", date(2016, 6, 1))
    with pytest.raises(ArchiveMissingError, match=r"BTCUSDT-1m-2016-06-01.zip.*HTTP 404"):
        expected_checksum(session, server.url, f)


def test_a_checksum_of_another_file_is_refused(server, session, monkeypatch) -> None:
    f = klines_file(date(2025, 12, 30))
    other_url = klines_file(date(2025, 12, 29)).url(server.url)
    monkeypatch.setattr(ArchiveFile, "url", lambda self, base: other_url)
    with pytest.raises(ArchiveChecksumError, match="is the checksum of BTCUSDT-1h-2025-12-29.zip"):
        expected_checksum(session, server.url, f)


# -- a truncated zip, a bad line: nothing loaded ------------------------------------------------------


def test_a_truncated_zip_with_a_matching_checksum_fails_before_any_write(server, tmp_path: Path) -> None:
    """A publisher's own truncated file passes its checksum: the zip itself refuses to be read."""
    f = klines_file(date(2025, 12, 30))
    body = server.archive_file("/" + f.path)
    path = tmp_path / f.name
    path.write_bytes(body[: len(body) // 2])
    conn = FakeConn()
    with pytest.raises(ArchiveFormatError, match=rf"{f.name}: not a complete, readable zip"):
        load_file(conn, f, path, hashlib.sha256(path.read_bytes()).hexdigest())
    assert conn.commits == 0 and conn.copied == []


def test_a_bad_line_deep_in_the_file_rolls_the_whole_file_back(tmp_path: Path, server) -> None:
    f = klines_file(date(2025, 12, 30), interval="1m")
    body = server.archive_file("/" + f.path)
    with zipfile.ZipFile(io.BytesIO(body)) as z:
        lines = z.read(z.namelist()[0]).decode().splitlines()
    lines[1000] = lines[1000].replace(",", ";", 1)
    path = tmp_path / f.name
    path.write_bytes(zip_of(f.name, "\n".join(lines) + "\n"))
    conn = FakeConn()
    with pytest.raises(ArchiveFormatError, match=rf"{f.name} line 1001: a kline has 12 columns"):
        load_file(conn, f, path, "0" * 64, chunk_rows=100)
    assert len(conn.copied) == 1000  # ten chunks went out in the transaction ...
    assert conn.commits == 0 and conn.rollbacks == 1  # ... which was rolled back
    assert not any("archive_files" in s for s in conn.statements)


def test_a_loaded_file_is_recorded_with_its_checksum_in_the_same_transaction(tmp_path: Path, server) -> None:
    f = klines_file(date(2025, 12, 30))
    body = server.archive_file("/" + f.path)
    path = tmp_path / f.name
    path.write_bytes(body)
    conn = FakeConn()
    result = load_file(conn, f, path, hashlib.sha256(body).hexdigest(), chunk_rows=10)
    assert result["rows"] == 24 and result["first"] == "2025-12-30T00:00:00+00:00"
    assert result["last"] == "2025-12-30T23:00:00+00:00"
    assert conn.commits == 1 and "archive_files" in conn.statements[-1]
    assert sum('CREATE TEMP TABLE "stage_klines_' in s for s in conn.statements) == 3  # 10 + 10 + 4


def test_a_file_loaded_with_the_same_checksum_is_skipped_without_downloading(server, session, tmp_path) -> None:
    f = klines_file(date(2025, 12, 30))
    checksum = hashlib.sha256(server.archive_file("/" + f.path)).hexdigest()
    server.reset()
    result = load_archive_file(session, FakeConn(stored=checksum), server.url, f, tmp_path, sleep=no_sleep)
    assert result == {"file": f.name, "skipped": "already loaded with this checksum", "sha256": checksum}
    assert [c["path"] for c in server.calls()] == ["/" + f.path + ".CHECKSUM"]
    again = load_archive_file(session, FakeConn(stored="f" * 64), server.url, f, tmp_path, sleep=no_sleep)
    assert again["rows"] == 24  # another checksum (a republished file): loaded again


# -- timestamps in ms and µs, the columns ------------------------------------------------------------


def _records(tmp_path: Path, f: ArchiveFile, text: str) -> list[Any]:
    path = tmp_path / f"{f.name}-{hashlib.md5(text.encode()).hexdigest()}"
    path.write_bytes(zip_of(f.name, text))
    return list(read_records(path, f))


def test_milliseconds_and_microseconds_load_the_same_instants(tmp_path: Path) -> None:
    f = klines_file(date(2025, 1, 1), interval="1m")
    ms = "1735689600000,1.0,2.0,0.5,1.5,10,1735689659999,15,3,5,7.5,0\n"
    us = "1735689600000000,1.0,2.0,0.5,1.5,10,1735689659999999,15,3,5,7.5,0\n"
    (a,), (b,) = _records(tmp_path, f, ms), _records(tmp_path, f, us)
    assert a == b
    assert (a.open_time, a.close_time) == (datetime(2025, 1, 1, tzinfo=UTC),
                                           datetime(2025, 1, 1, 0, 0, 59, 999000, tzinfo=UTC))
    t = ArchiveFile("BTCUSDT", "aggTrades", None, "daily", date(2025, 1, 1))
    (x,) = _records(tmp_path, t, "26129,0.01633102,4.70443515,27781,27781,1735689600123,True,True\n")
    (y,) = _records(tmp_path, t, "26129,0.01633102,4.70443515,27781,27781,1735689600123456,True,True\n")
    assert x == y and x.time == datetime(2025, 1, 1, 0, 0, 0, 123000, tzinfo=UTC)


def test_server_files_of_both_units_equal_the_rest_api(server, session, tmp_path: Path) -> None:
    client = BinanceClient(server.url)
    for day in (date(2024, 12, 31), date(2025, 1, 1)):  # ms, then µs
        f = klines_file(day)
        path = fetch_verified(session, server.url, f, tmp_path, expected_checksum(session, server.url, f))
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        rest = client.klines("BTCUSDT", "1h", limit=24, start_time=start,
                             end_time=start + timedelta(days=1, milliseconds=-1))
        assert list(read_records(path, f)) == rest
        trades = ArchiveFile("ETHUSDT", "aggTrades", None, "daily", day)
        path = fetch_verified(session, server.url, trades, tmp_path, expected_checksum(session, server.url, trades))
        first_hour = [a for a in read_records(path, trades) if a.time < start + timedelta(hours=1)]
        assert first_hour == client.agg_trades("ETHUSDT", limit=1000, start_time=start,
                                               end_time=start + timedelta(hours=1, milliseconds=-1))


def test_agg_trades_files_of_7_or_8_columns_and_a_header_line(tmp_path: Path) -> None:
    t = ArchiveFile("BTCUSDT", "aggTrades", None, "daily", date(2024, 5, 1))
    header = "agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,is_buyer_maker\n"
    seven = _records(tmp_path, t, header + "7,10.5,0.1,70,72,1714521600000,false\n")
    eight = _records(tmp_path, t, "7,10.5,0.1,70,72,1714521600000,False,True\n")
    assert seven == eight == [AggTrade("BTCUSDT", 7, Decimal("10.5"), Decimal("0.1"), 70, 72,
                                       datetime(2024, 5, 1, tzinfo=UTC), False)]
    with pytest.raises(ArchiveFormatError, match=r"line 1: an aggregate trade has 7 or 8 columns, got 6"):
        _records(tmp_path, t, "7,10.5,0.1,70,72,1714521600000\n")
    with pytest.raises(ArchiveFormatError, match=r"line 2: 'was the buyer the maker' is not True/False"):
        _records(tmp_path, t, "7,10.5,0.1,70,72,1714521600000,False\n8,1,1,73,73,1714521600001,maybe\n")


GOOD_KLINE = "1714521600000,1.0,2.0,0.5,1.5,10,1714521659999,15,3,5,7.5,0"


@pytest.mark.parametrize(("row", "message"), [
    (GOOD_KLINE + "\n1714521660000,1,2,0.5,1.5,10,x,15,3,5,7.5,0", "line 2: close time is not a whole number"),
    ("1714521600000,1,2,0.5,NaN,10,1714521659999,15,3,5,7.5,0", "close is not a number"),
    ("1714521600000,1,2,0.5,1.5,10,1714521659999,15,3,5,7.5", "12 columns, got 11"),
    ("123456789012345,1,2,0.5,1.5,10,1714521659999,15,3,5,7.5,0", "neither milliseconds"),
])
def test_bad_kline_lines_name_the_file_line_and_problem(tmp_path: Path, row: str, message: str) -> None:
    f = klines_file(date(2024, 5, 1), interval="1m")
    with pytest.raises(ArchiveFormatError, match=message) as err:
        _records(tmp_path, f, row + "\n")
    assert f.name in str(err.value)


def test_klines_from_a_file_are_klines(tmp_path: Path) -> None:
    f = klines_file(date(2024, 5, 1), interval="1m")
    (k,) = _records(tmp_path, f, "1714521600000,1.0,2.0,0.5,1.5,10,1714521659999,15,3,5,7.5,0\n")
    assert isinstance(k, Kline) and (k.symbol, k.interval, k.num_trades, k.quote_volume) == ("BTCUSDT", "1m", 3,
                                                                                             Decimal("15"))
