"""The benchmarks' helpers. bench/bench_cdc_latency.py's parent collects one report per child process:
a child that dies before reporting ends the round with an error naming it, instead of the parent
waiting for ever. bench/stream_times.py selects the batches logged between two times, across
midnight when the times are dated."""

from __future__ import annotations

import importlib.util
import multiprocessing as mp
import os
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
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
    assert sorted(r[0] for r in _load("bench_cdc_latency").receive(q, procs, "writer")) == [1, 2]
    for p in procs:
        p.join()


def test_a_child_that_dies_is_named_with_its_exit_code():
    q, procs = _run([(_reports, 1), (_dies, 3)])
    with pytest.raises(SystemExit, match=rf"writer process ended without reporting.*PID {procs[1].pid} exit code 3"):
        _load("bench_cdc_latency").receive(q, procs, "writer")
    for p in procs:
        p.join()


def test_a_child_that_ends_without_reporting_is_an_error():
    q, procs = _run([(_ends_silently,)])
    with pytest.raises(SystemExit, match="poller process ended without reporting"):
        _load("bench_cdc_latency").receive(q, procs, "poller")
    procs[0].join()


def _times_line(moment: str, add_batch: int) -> str:
    # as the cdc_stream task's log holds them: Airflow's JSON line around the driver's own line
    day, clock = moment.split("T")
    return (f'{{"timestamp":"{moment}.123456Z","level":"info","event":"{day} {clock},123 INFO cdc_stream: '
            f"batch 7: Spark's times (ms): addBatch {add_batch}, walCommit 5, idle before it 3\"}}\n")


LOG = [_times_line("2026-12-05T23:59:30", 100), _times_line("2026-12-06T00:00:30", 200),
       _times_line("2026-12-06T23:59:40", 400), "an unrelated line 23:59:50\n"]


def test_dated_times_select_one_span_across_midnight():
    found = _load("stream_times").durations(LOG, "2026-12-05T23:59:00", "2026-12-06 00:01:00")
    assert found == {"addBatch": [100, 200], "walCommit": [5, 5], "idle before it": [3, 3]}


def test_times_of_day_select_those_times_on_every_day():
    assert _load("stream_times").durations(LOG, "23:59:00", "23:59:59")["addBatch"] == [100, 400]
    # a one-digit hour is the same time as the log's two digits
    assert _load("stream_times").durations(LOG, "0:00:00", "0:01:00")["addBatch"] == [200]


@pytest.mark.parametrize("since, until, message", [
    ("23:59", "23:59:59", "'23:59' is not a time"),
    ("23:59:00", "2026-12-06T00:01:00", "both as times of day or both dated"),
])
def test_bad_times_are_refused(since, until, message):
    with pytest.raises(SystemExit, match=message):
        _load("stream_times").durations(LOG, since, until)
