"""Where the stream's micro-batches spent their time, from its log: the median and 90th percentile of
each of Spark's own durations (the driver's `Spark's times (ms)` lines, spark/cdc_stream.py
SparkTimes) over the batches logged between two times, UTC (a batch is logged as the next one
starts). Times of day (HH:MM:SS) select those times on every day of the log; dated times
(YYYY-MM-DDTHH:MM:SS, or with a space) select one span, across midnight if need be.

Usage: python bench/stream_times.py LOG FROM TO     (FROM, TO as HH:MM:SS or YYYY-MM-DDTHH:MM:SS; LOG:
       the cdc_stream task's log, .run/airflow/logs/dag_id=cdc_stream/run_id=*/task_id=run_cdc_stream/attempt=N.log)
"""

from __future__ import annotations

import re
import sys
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_cdc_latency import pct  # noqa: E402 - the latency bench's percentile, for the same figures

LINE = re.compile(r"(?:(\d{4}-\d\d-\d\d)[T ])?(\d\d:\d\d:\d\d)(?:\.\d+)?Z?.*Spark's times \(ms\): ([^\"]*)")
TIME = re.compile(r"([A-Za-z]+(?: before it)?) (\d+)")


def bound(text: str) -> str:
    """`text` as a comparable bound, written as the log writes times: "HH:MM:SS", or a dated time
    as "YYYY-MM-DD HH:MM:SS" (strptime also takes "9:05:00", which must compare as "09:05:00")."""
    for form, dated in (("%H:%M:%S", False), ("%Y-%m-%dT%H:%M:%S", True), ("%Y-%m-%d %H:%M:%S", True)):
        try:
            moment = datetime.strptime(text, form)
        except ValueError:
            continue
        return moment.strftime("%Y-%m-%d %H:%M:%S" if dated else "%H:%M:%S")
    raise SystemExit(f"stream_times: {text!r} is not a time HH:MM:SS or YYYY-MM-DDTHH:MM:SS")


def durations(lines: list[str], since: str, until: str) -> dict[str, list[int]]:
    """Each duration's values over the batches logged from `since` to `until` (both included; both
    HH:MM:SS, or both dated)."""
    since, until = bound(since), bound(until)
    dated = " " in since
    if dated != (" " in until):
        raise SystemExit(f"stream_times: give FROM and TO both as times of day or both dated, got {since!r} and "
                         f"{until!r}")
    out: dict[str, list[int]] = {}
    for line in lines:
        m = LINE.search(line)
        if m is None or (dated and m.group(1) is None):
            continue
        logged = f"{m.group(1)} {m.group(2)}" if dated else m.group(2)
        if not since <= logged <= until:
            continue
        for name, value in TIME.findall(m.group(3)):
            out.setdefault(name, []).append(int(value))
    return out


def main(argv: list[str]) -> None:
    if len(argv) != 3:
        raise SystemExit(__doc__)
    path, since, until = argv
    with open(path, encoding="utf-8", errors="replace") as f:
        found = durations(f.readlines(), since, until)
    if not found:
        raise SystemExit(f"no `Spark's times` line between {since} and {until} in {path}")
    print(f"{'duration':>18} {'batches':>7} {'p50 ms':>7} {'p90 ms':>7}")
    for name, values in found.items():
        print(f"{name:>18} {len(values):>7} {pct(values, 50):>7.0f} {pct(values, 90):>7}")


if __name__ == "__main__":
    main(sys.argv[1:])
