"""The weight budget is one for the whole host: processes reserve their calls' weight in one
file-locked record (include/binance/client.SharedWeight), so concurrent tasks (backfill runs) cannot
cause a 429 by themselves. Two processes against the bundled server prove it, and show the 429 the
same calls get without the shared record."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from include.binance.client import SharedWeight
from stack.exchange import BinanceTestServer

REPO = Path(__file__).resolve().parents[2]
BUDGET = 40  # the server's limit too: any minute above it is a 429
CALLS = 5  # per process: exchangeInfo (20), then klines at weight 2: 30 each, 60 together


def test_reservations_add_up_within_a_minute_and_reset_the_next(tmp_path: Path) -> None:
    shared = SharedWeight(tmp_path / "weight.json")
    assert shared.reserve(100, 30, 40) == (True, 30)
    assert shared.reserve(100, 20, 40) == (False, 30)  # would be 50
    assert shared.reserve(100, 10, 40) == (True, 40)
    assert shared.reserve(101, 20, 40) == (True, 20)  # a new minute
    assert shared.observe(101, 35, 40) == 35  # the server counted more (another user of the IP)
    assert shared.observe(101, 25, 40) == 35  # never lowered
    assert shared.used(101, 40) == 35 and shared.used(102, 40) == 0


def test_a_call_heavier_than_the_budget_goes_alone_at_the_start_of_a_minute(tmp_path: Path) -> None:
    shared = SharedWeight(tmp_path / "weight.json")
    assert shared.reserve(7, 80, 40) == (True, 80)
    assert shared.reserve(7, 1, 40) == (False, 80)


def test_an_unreadable_record_counts_as_a_full_minute(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "weight.json"
    path.write_text('{"minute": 7, "us')  # a writer died mid-write
    shared = SharedWeight(path)
    assert shared.reserve(7, 2, 40) == (False, 40)
    assert "unreadable" in caplog.text
    assert shared.reserve(8, 2, 40) == (True, 2)
    assert json.loads(path.read_text())["used"] == 2


class _Shifted:
    """time.time() moved by `offset`, set when the processes are released: the server's clock."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


WORKER = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from include.binance.client import BinanceClient
    url, weight_file, ready, go, name = sys.argv[1:6]
    Path(ready).touch()
    while not Path(go).exists():
        time.sleep(0.01)
    offset = float(Path(go).read_text())
    client = BinanceClient(url, weight_budget=int(sys.argv[6]), max_wait_s=float(sys.argv[8]),
                           weight_state_path=weight_file or None, clock=lambda: time.time() + offset)
    # first exchangeInfo (weight 20): neither process knows the other's weight before its answer
    client.exchange_info(["BTCUSDT"])
    for i in range(int(sys.argv[7])):
        client.klines("BTCUSDT" if name == "a" else "ETHUSDT", "1m", limit=1)
    print(json.dumps({"done": True}))
""")


@pytest.fixture
def server() -> Iterator[tuple[BinanceTestServer, _Shifted]]:
    clock = _Shifted()
    with BinanceTestServer(seed=2, clock=clock, weight_limit=BUDGET, ban_retry_after_s=10) as srv:
        yield srv, clock


def _run_two(server: BinanceTestServer, clock: _Shifted, tmp_path: Path, shared: bool, second: int) -> list[dict]:
    """Two processes make CALLS klines calls each, released together at `second` of a (server) minute."""
    weight_file = str(tmp_path / "binance_weight_state.json") if shared else ""
    go = tmp_path / "go"
    procs, ready = [], []
    for name in ("a", "b"):
        flag = tmp_path / f"ready-{name}"
        ready.append(flag)
        procs.append(subprocess.Popen(
            [sys.executable, "-c", WORKER, server.url, weight_file, str(flag), str(go), name, str(BUDGET), str(CALLS),
             "120" if shared else "0"],
            cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True))
    deadline = time.monotonic() + 60
    while not all(f.exists() for f in ready):
        assert time.monotonic() < deadline, "the worker processes did not start"
        time.sleep(0.05)
    now = time.time()
    clock.offset = (second - now % 60) % 60  # the shifted clock reads hh:mm:<second> now
    # written whole, then renamed: a worker polling for the file must never read it empty
    pending = go.with_suffix(".tmp")
    pending.write_text(repr(clock.offset))
    pending.replace(go)
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        # without the shared record a client meets the 429 and, waiting no more, stops
        assert proc.returncode == 0 or (not shared and "BinanceBannedError" in err), err[-3000:]
    return server.calls()


def test_two_processes_sharing_the_record_never_exceed_the_budget(server, tmp_path: Path) -> None:
    srv, clock = server
    calls = _run_two(srv, clock, tmp_path, shared=True, second=54)  # the wait for the next minute is short
    assert len(calls) == 2 * (CALLS + 1) and {c["status"] for c in calls} == {200}
    per_minute = Counter()
    for c in calls:
        per_minute[int(c["time"] // 60)] += c["weight"]
    assert max(per_minute.values()) <= BUDGET, per_minute
    assert len(per_minute) == 2, "the calls over the budget waited for the next minute"


def test_the_same_calls_without_the_shared_record_get_a_429(server, tmp_path: Path) -> None:
    """The control: each process keeps its own budget from what the server reported to it: the one
    whose exchangeInfo was answered first (used 20) sends a klines call the server's 40 refuses."""
    srv, clock = server
    calls = _run_two(srv, clock, tmp_path, shared=False, second=45)  # 15 s: all of them within one minute
    assert len(calls) < 2 * (CALLS + 1)
    assert 429 in {c["status"] for c in calls}
