"""bench/bench_cdc_latency.py's parent collects one report per child process: a child that dies
before reporting ends the round with an error naming it, instead of the parent waiting for ever."""

from __future__ import annotations

import importlib.util
import multiprocessing as mp
import os
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_cdc_latency.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_cdc_latency", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _reports(q: mp.Queue, value: int) -> None:
    q.put([value])


def _dies(q: mp.Queue, code: int) -> None:
    os._exit(code)


def _ends_silently(q: mp.Queue) -> None:
    pass


def _run(target_args: list[tuple]) -> tuple[mp.Queue, list[mp.Process]]:
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=t, args=(q, *a)) for t, *a in target_args]
    for p in procs:
        p.start()
    return q, procs


def test_every_report_is_returned():
    q, procs = _run([(_reports, 1), (_reports, 2)])
    assert sorted(r[0] for r in _bench().receive(q, procs, "writer")) == [1, 2]
    for p in procs:
        p.join()


def test_a_child_that_dies_is_named_with_its_exit_code():
    q, procs = _run([(_reports, 1), (_dies, 3)])
    with pytest.raises(SystemExit, match=rf"writer process ended without reporting.*PID {procs[1].pid} exit code 3"):
        _bench().receive(q, procs, "writer")
    for p in procs:
        p.join()


def test_a_child_that_ends_without_reporting_is_an_error():
    q, procs = _run([(_ends_silently,)])
    with pytest.raises(SystemExit, match="poller process ended without reporting"):
        _bench().receive(q, procs, "poller")
    procs[0].join()
