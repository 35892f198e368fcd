"""The test exchange's history: GET /api/v3/aggTrades with Binance's parameter rules, and the public
archive layout (zip of CSV with the right columns, .CHECKSUM in sha256sum's format, µs timestamps
from 2025-01-01 on, ms before), equal to what the REST API serves for the same period; the archive
faults."""

from __future__ import annotations

import csv
import hashlib
import io
import zipfile
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import requests

from stack.exchange import BinanceTestServer
from stack.exchange.archive import NotInArchive, parse_path

# 2026-01-01T00:00:10Z: the archive holds days up to 2025-12-31
T0 = 1_767_225_610.0
HOUR_MS = 3_600_000


def ms(day: date, hour: int = 0) -> int:
    return int(datetime(day.year, day.month, day.day, hour, tzinfo=UTC).timestamp()) * 1000


@pytest.fixture
def server() -> Iterator[BinanceTestServer]:
    with BinanceTestServer(seed=3, clock=lambda: T0) as srv:
        yield srv


def get(server: BinanceTestServer, path: str, headers: dict[str, str] | None = None, **params: Any) -> Any:
    response = requests.get(server.url + path, params=params, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def error(server: BinanceTestServer, path: str, **params: Any) -> tuple[int, dict]:
    response = requests.get(server.url + path, params=params, timeout=10)
    return response.status_code, response.json()


def download(server: BinanceTestServer, path: str) -> requests.Response:
    return requests.get(server.url + path, timeout=30)


def csv_rows(body: bytes) -> tuple[str, list[list[str]]]:
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        (name,) = archive.namelist()
        text = archive.read(name).decode()
    return name, list(csv.reader(io.StringIO(text)))


# -- aggTrades -----------------------------------------------------------------------------------


def test_agg_trades_shape_oldest_first_within_the_window() -> None:
    with BinanceTestServer(seed=3, clock=lambda: T0) as server:
        start = ms(date(2025, 12, 30), 10)
        trades = get(server, "/api/v3/aggTrades", symbol="BTCUSDT", startTime=start, endTime=start + HOUR_MS - 1,
                     limit=1000)
    assert 300 <= len(trades) <= 900  # one hour of the tape: a fixed count per symbol
    assert list(trades[0]) == ["a", "p", "q", "f", "l", "T", "m", "M"]
    assert [t["a"] for t in trades] == list(range(trades[0]["a"], trades[0]["a"] + len(trades)))
    assert all(start <= t["T"] < start + HOUR_MS for t in trades)
    assert [t["T"] for t in trades] == sorted(t["T"] for t in trades)
    assert all(t["f"] <= t["l"] for t in trades)
    assert all(a["l"] < b["f"] for a, b in zip(trades, trades[1:], strict=False))
    assert all(isinstance(t["m"], bool) and t["M"] is True and Decimal(t["p"]) > 0 for t in trades)


def test_agg_trades_are_the_same_whenever_asked_and_never_after_now(server: BinanceTestServer) -> None:
    start = ms(date(2025, 12, 31), 23)
    first = get(server, "/api/v3/aggTrades", symbol="ETHUSDT", startTime=start, endTime=start + HOUR_MS - 1,
                limit=1000)
    with BinanceTestServer(seed=3, clock=lambda: T0 + 3600) as later:
        again = get(later, "/api/v3/aggTrades", symbol="ETHUSDT", startTime=start, endTime=start + HOUR_MS - 1,
                    limit=1000)
        recent = get(later, "/api/v3/aggTrades", symbol="ETHUSDT", limit=1000)
    assert first == again
    now = get(server, "/api/v3/aggTrades", symbol="ETHUSDT", limit=5)
    assert len(now) == 5 and now[-1]["T"] <= T0 * 1000
    assert recent[-1]["T"] <= (T0 + 3600) * 1000 and recent[-1]["T"] > now[-1]["T"]


def test_agg_trades_page_by_from_id_across_hours(server: BinanceTestServer) -> None:
    start = ms(date(2025, 12, 31), 5)
    hour = get(server, "/api/v3/aggTrades", symbol="SOLUSDT", startTime=start, endTime=start + HOUR_MS - 1,
               limit=1000)
    first_id = hour[0]["a"]
    page = get(server, "/api/v3/aggTrades", symbol="SOLUSDT", fromId=first_id, limit=1000)
    assert page[: len(hour)] == hour  # fromId is inclusive and pages go on into the next hour
    assert page[len(hour)]["T"] >= start + HOUR_MS and page[len(hour)]["a"] == hour[-1]["a"] + 1


def test_agg_trades_microseconds_on_request(server: BinanceTestServer) -> None:
    start = ms(date(2025, 12, 31), 5)
    milli = get(server, "/api/v3/aggTrades", symbol="SOLUSDT", startTime=start, endTime=start + 60_000, limit=3)
    micro = get(server, "/api/v3/aggTrades", headers={"X-MBX-TIME-UNIT": "MICROSECOND"}, symbol="SOLUSDT",
                startTime=start, endTime=start + 60_000, limit=3)
    assert [t["T"] for t in micro] != [t["T"] for t in milli]
    assert [t["T"] // 1000 for t in micro] == [t["T"] for t in milli]


@pytest.mark.parametrize(
    ("params", "status", "code"),
    [
        ({"symbol": "BTCUSDT", "startTime": 0, "endTime": HOUR_MS + 1}, 400, -1127),
        ({"symbol": "BTCUSDT", "fromId": 5, "startTime": 0}, 400, -1128),
        ({"symbol": "BTCUSDT", "fromId": 5, "endTime": 10}, 400, -1128),
        ({"symbol": "NOSUCHUSDT"}, 400, -1121),
        ({}, 400, -1102),
        ({"symbol": "BTCUSDT", "fromId": "x"}, 400, -1100),
        ({"symbol": "BTCUSDT", "limit": 0}, 400, -1130),
        ({"symbol": "BTCUSDT", "interval": "1m"}, 400, -1104),
    ],
)
def test_agg_trades_parameter_rules(server: BinanceTestServer, params: dict, status: int, code: int) -> None:
    got_status, body = error(server, "/api/v3/aggTrades", **params)
    assert (got_status, body["code"]) == (status, code), body


def test_agg_trades_limit_is_cut_to_1000_and_weighs_4(server: BinanceTestServer) -> None:
    response = requests.get(server.url + "/api/v3/aggTrades", params={"symbol": "BTCUSDT", "limit": 5000}, timeout=10)
    assert len(response.json()) == 1000
    assert response.headers["X-MBX-USED-WEIGHT-1M"] == "4"
    assert server.calls()[-1]["weight"] == 4


# -- the archive ------------------------------------------------------------------------------------


def test_archive_paths_follow_binance_layout() -> None:
    file, checksum = parse_path("/data/spot/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2025-03-01.zip.CHECKSUM")
    assert (file.dataset, file.symbol, file.interval, file.start, checksum) == (
        "klines", "BTCUSDT", "1m", date(2025, 3, 1), True)
    file, _ = parse_path("/data/spot/monthly/aggTrades/ETHUSDT/ETHUSDT-aggTrades-2024-02.zip")
    assert (file.period, file.dataset, file.start, file.end) == ("monthly", "aggTrades", date(2024, 2, 1),
                                                                 date(2024, 3, 1))
    for bad in ("/data/spot/daily/klines/BTCUSDT/1m/ETHUSDT-1m-2025-03-01.zip",  # symbol differs
                "/data/spot/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2025-03.zip",  # a month in daily/
                "/data/spot/daily/klines/BTCUSDT/2m/BTCUSDT-2m-2025-03-01.zip",  # no such interval
                "/data/spot/daily/klines/NOSUCH/1m/NOSUCH-1m-2025-03-01.zip",
                "/data/futures/um/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2025-03-01.zip"):
        with pytest.raises(NotInArchive):
            parse_path(bad)


def test_a_daily_klines_file_equals_the_rest_klines_in_microseconds_from_2025(server: BinanceTestServer) -> None:
    day = date(2025, 12, 30)
    path = f"/data/spot/daily/klines/BTCUSDT/1h/BTCUSDT-1h-{day}.zip"
    response = download(server, path)
    assert response.status_code == 200 and response.headers["Content-Type"] == "application/zip"
    name, rows = csv_rows(response.content)
    assert name == f"BTCUSDT-1h-{day}.csv"
    rest = get(server, "/api/v3/klines", symbol="BTCUSDT", interval="1h", startTime=ms(day),
               endTime=ms(day + timedelta(days=1)) - 1, limit=1000)
    assert len(rows) == len(rest) == 24 and all(len(r) == 12 for r in rows)
    for row, kline in zip(rows, rest, strict=True):
        assert int(row[0]) == kline[0] * 1000 and int(row[6]) == kline[6] * 1000 + 999  # µs, same instants
        assert row[1:6] == kline[1:6] and row[7] == kline[7] and int(row[8]) == kline[8] and row[9:] == kline[9:]


def test_files_before_2025_carry_milliseconds(server: BinanceTestServer) -> None:
    _, before = csv_rows(download(server, "/data/spot/daily/klines/ETHUSDT/1h/ETHUSDT-1h-2024-12-31.zip").content)
    _, after = csv_rows(download(server, "/data/spot/daily/klines/ETHUSDT/1h/ETHUSDT-1h-2025-01-01.zip").content)
    assert int(before[0][0]) == ms(date(2024, 12, 31)) and int(before[-1][6]) == ms(date(2025, 1, 1)) - 1
    assert int(after[0][0]) == ms(date(2025, 1, 1)) * 1000
    assert int(after[-1][6]) == ms(date(2025, 1, 2)) * 1000 - 1


def test_the_checksum_file_holds_the_sha256_in_sha256sum_format(server: BinanceTestServer) -> None:
    path = "/data/spot/daily/aggTrades/XRPUSDT/XRPUSDT-aggTrades-2025-12-31.zip"
    body = download(server, path).content
    checksum = download(server, path + ".CHECKSUM")
    assert checksum.status_code == 200
    assert checksum.text == f"{hashlib.sha256(body).hexdigest()}  XRPUSDT-aggTrades-2025-12-31.zip\n"
    assert download(server, path).content == body  # a file never changes


def test_an_agg_trades_file_equals_the_rest_agg_trades(server: BinanceTestServer) -> None:
    day = date(2024, 12, 31)  # a millisecond file
    _, rows = csv_rows(download(server, f"/data/spot/daily/aggTrades/LTCUSDT/LTCUSDT-aggTrades-{day}.zip").content)
    assert all(len(r) == 8 for r in rows) and {r[6] for r in rows} == {"True", "False"} and {r[7] for r in rows} == {
        "True"}
    rest = []
    for hour in range(24):
        start = ms(day, hour)
        rest += get(server, "/api/v3/aggTrades", symbol="LTCUSDT", startTime=start, endTime=start + HOUR_MS - 1,
                    limit=1000)
    assert [[str(t["a"]), t["p"], t["q"], str(t["f"]), str(t["l"]), str(t["T"]), str(t["m"]), str(t["M"])]
            for t in rest] == rows


def test_a_monthly_file_holds_the_month_of_daily_files(server: BinanceTestServer) -> None:
    _, month = csv_rows(download(server, "/data/spot/monthly/klines/DOGEUSDT/1d/DOGEUSDT-1d-2025-02.zip").content)
    days = []
    for day in range(1, 29):
        days += csv_rows(download(server, f"/data/spot/daily/klines/DOGEUSDT/1d/DOGEUSDT-1d-2025-02-{day:02d}.zip")
                         .content)[1]
    assert len(month) == 28 and month == days


@pytest.mark.parametrize("path", [
    "/data/spot/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2026-01-01.zip",  # today: not published yet
    "/data/spot/monthly/klines/BTCUSDT/1m/BTCUSDT-1m-2026-01.zip",
    "/data/spot/daily/klines/NOSUCHUSDT/1m/NOSUCHUSDT-1m-2025-01-01.zip",
    "/data/spot/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2016-12-31.zip",
    "/data/spot/daily/nothing.zip",
])
def test_files_that_do_not_exist_are_404(server: BinanceTestServer, path: str) -> None:
    response = download(server, path)
    assert response.status_code == 404 and b"NoSuchKey" in response.content


def test_archive_downloads_cost_no_api_weight(server: BinanceTestServer) -> None:
    download(server, "/data/spot/daily/klines/BTCUSDT/1h/BTCUSDT-1h-2025-12-30.zip")
    assert server.calls()[-1]["weight"] == 0
    response = requests.get(server.url + "/api/v3/ping", timeout=5)
    assert response.headers["X-MBX-USED-WEIGHT-1M"] == "1"


def test_archive_corrupt_changes_bytes_not_length_and_only_for_zip_downloads(server: BinanceTestServer) -> None:
    path = "/data/spot/daily/klines/BTCUSDT/1h/BTCUSDT-1h-2025-12-30.zip"
    good = download(server, path).content
    server.add_fault("archive_corrupt", path=path)
    assert get(server, "/api/v3/ping") == {}  # an API call does not take an archive fault
    checksum = download(server, path + ".CHECKSUM").text.split()[0]
    bad = download(server, path).content
    assert len(bad) == len(good) and bad != good and hashlib.sha256(bad).hexdigest() != checksum
    assert download(server, path).content == good  # one download only
    assert [c["fault"] for c in server.calls() if c["path"] == path] == [None, "archive_corrupt", None]


def test_archive_truncated_ends_the_download_early(server: BinanceTestServer) -> None:
    path = "/data/spot/daily/klines/BTCUSDT/1h/BTCUSDT-1h-2025-12-30.zip"
    server.add_fault("archive_truncated")
    with pytest.raises(requests.exceptions.RequestException):
        requests.get(server.url + path, timeout=10).content  # noqa: B018 - reading the body is the point


def test_archive_fault_paths_are_checked(server: BinanceTestServer) -> None:
    with pytest.raises(ValueError, match="zip file"):
        server.add_fault("archive_corrupt", path="/api/v3/klines")
    with pytest.raises(ValueError, match="not an API path"):
        server.add_fault("html", path="/data/spot/daily/klines/BTCUSDT/1h/BTCUSDT-1h-2025-12-30.zip")
