"""The stream binds the same values whatever the process time zone: its micro-batch runs in fresh
processes (the JVM and PySpark read TZ when they start) under TZ=UTC and TZ=Asia/Kolkata
(UTC+05:30), and every value bound (row times, buckets, write times, TTLs, change-log keys and
minutes, progress) is the same."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

_REPO = Path(__file__).resolve().parents[2]


def _start(tz: str, out: Path) -> subprocess.Popen:
    env = {**os.environ, "TZ": tz, "PYSPARK_PYTHON": sys.executable,
           "PYTHONPATH": os.pathsep.join(p for p in (str(_REPO), os.environ.get("PYTHONPATH")) if p)}
    return subprocess.Popen([sys.executable, "-m", "tests.spark.tz_probe", str(out)], cwd=_REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_the_stream_binds_the_same_values_in_any_time_zone(tmp_path):
    runs = {tz: (tmp_path / f"{tz.replace('/', '_')}.pickle") for tz in ("UTC", "Asia/Kolkata")}
    procs = {tz: _start(tz, out) for tz, out in runs.items()}
    for tz, proc in procs.items():
        output, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"probe under TZ={tz} failed:\n{output[-4000:]}"
    utc, kolkata = (pickle.loads(runs[tz].read_bytes()) for tz in ("UTC", "Asia/Kolkata"))

    # the time zone did reach the JVM and Python
    assert (utc["jvm_time_zone"], utc["python_utc_offset"]) == ("UTC", 0)
    assert (kolkata["jvm_time_zone"], kolkata["python_utc_offset"]) == ("Asia/Kolkata", 19800)

    for run in (utc, kolkata):
        kinds = {what for what, _, _ in run["tasks"]}
        assert kinds == {"execute", "upsert/delete", "change log"}
    # and across time zones, value for value
    assert sorted(map(repr, kolkata["tasks"])) == sorted(map(repr, utc["tasks"]))
    assert kolkata["tasks_progress"] == utc["tasks_progress"]
