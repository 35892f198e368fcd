"""Where the stream's micro-batches spent their time, from its log: the median and 90th percentile of
each of Spark's own durations (the driver's `Spark's times (ms)` lines, spark/cdc_stream.py
SparkTimes) over the batches logged between two times of day, UTC, of one day (a batch is logged
as the next one starts).

Usage: python bench/stream_times.py LOG FROM TO     (FROM, TO as HH:MM:SS; LOG: the cdc_stream task's
       log, .run/airflow/logs/dag_id=cdc_stream/run_id=*/task_id=run_cdc_stream/attempt=N.log)
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_cdc_latency import pct  # noqa: E402 - the latency bench's percentile, for the same figures

LINE = re.compile(r"(\d\d:\d\d:\d\d)(?:\.\d+)?Z?.*Spark's times \(ms\): ([^\"]*)")
TIME = re.compile(r"([A-Za-z]+(?: before it)?) (\d+)")


def durations(lines: list[str], since: str, until: str) -> dict[str, list[int]]:
    """Each duration's values over the batches logged from `since` to `until` (HH:MM:SS, both included)."""
    out: dict[str, list[int]] = {}
    for line in lines:
        m = LINE.search(line)
        if m is None or not since <= m.group(1) <= until:
            continue
        for name, value in TIME.findall(m.group(2)):
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
