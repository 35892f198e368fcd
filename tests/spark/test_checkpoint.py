"""The stream's checkpoint on the local file system is written without a process per rename.

Without Hadoop's native library (Spark's jars do not ship it), Hadoop's local file system runs
`chmod` for every file it creates (its checksum files included) and `readlink` for every rename
(bench/RESULTS.md). The probe (tests/spark/checkpoint_probe.py) runs a real stream in a fresh JVM
with PATH leading to stand-ins for those commands that note each call, then run the real command.
With Spark's defaults they note calls on the checkpoint's files, `readlink` among them (the
stand-ins see what they are meant to see); with the conf the stream gives a local checkpoint, one
`chmod` per offsets and commits file and nothing else, and the stream still resumes from that
checkpoint."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from spark.cdc_stream import LOCAL_CHECKPOINT_CONF, local_checkpoint_conf

_REPO = Path(__file__).resolve().parents[2]
# what Hadoop's local file system runs when it has no native library
COMMANDS = ("chmod", "readlink", "stat", "ls")


class _Conf:
    def __init__(self, **values: str) -> None:
        self.values = values

    def contains(self, key: str) -> bool:
        return key in self.values


@pytest.mark.parametrize("checkpoint", ["/var/lib/cdc/checkpoint", ".run/spark/checkpoints/cdc_stream",
                                        "file:///var/lib/cdc/checkpoint"])
def test_a_local_checkpoint_gets_the_raw_file_system_and_the_file_system_manager(checkpoint):
    assert local_checkpoint_conf(checkpoint, _Conf()) == LOCAL_CHECKPOINT_CONF


@pytest.mark.parametrize("checkpoint", ["hdfs://namenode:8020/cdc", "s3a://bucket/cdc",
                                        "abfss://c@acct.dfs.core.windows.net/cdc"])
def test_a_checkpoint_elsewhere_keeps_sparks_defaults(checkpoint):
    assert local_checkpoint_conf(checkpoint, _Conf()) == {}


def test_spark_submits_conf_wins():
    conf = _Conf(**{"spark.hadoop.fs.file.impl": "org.apache.hadoop.fs.LocalFileSystem"})
    assert local_checkpoint_conf("/var/lib/cdc", conf) == {
        "spark.sql.streaming.checkpointFileManagerClass": LOCAL_CHECKPOINT_CONF[
            "spark.sql.streaming.checkpointFileManagerClass"]}


def _shims(folder: Path, log: Path) -> None:
    folder.mkdir()
    for name in COMMANDS:
        real = shutil.which(name)
        assert real, f"{name} is not on PATH"
        shim = folder / name
        shim.write_text(f'#!/bin/sh\necho "{name} $*" >> "{log}"\nexec {real} "$@"\n')
        shim.chmod(0o755)


def _probe(tmp_path: Path, checkpoint: Path, conf_name: str, batches: int, log: Path) -> dict:
    out = tmp_path / f"{conf_name}-{len(list(tmp_path.glob('*.json')))}.json"
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable,
           "PATH": f"{tmp_path / 'shims'}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": os.pathsep.join(p for p in (str(_REPO), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run([sys.executable, "-m", "tests.spark.checkpoint_probe", str(checkpoint), str(out), conf_name,
                           str(batches)], cwd=_REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"probe ({conf_name}) failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(out.read_text())


def _calls_on(log: Path, checkpoint: Path) -> list[str]:
    lines = log.read_text().splitlines() if log.exists() else []
    return [line for line in lines if str(checkpoint) in line]


def test_the_checkpoint_is_written_without_a_process_per_file_and_the_stream_resumes_from_it(tmp_path):
    log = tmp_path / "calls.log"
    _shims(tmp_path / "shims", log)

    defaults = tmp_path / "defaults-checkpoint"
    run = _probe(tmp_path, defaults, "defaults", 3, log)
    assert len(run["batches"]) >= 3
    forked = _calls_on(log, defaults)
    assert any(line.startswith("readlink ") for line in forked)
    assert len(_batch_files(forked)) > 2 * len(run["batches"])

    checkpoint = tmp_path / "stream-checkpoint"
    first = _probe(tmp_path, checkpoint, "stream", 3, log)
    assert len(first["batches"]) >= 3 and first["file_system"] == "org.apache.hadoop.fs.RawLocalFileSystem"
    _assert_one_chmod_per_file(_calls_on(log, checkpoint), first["batches"])
    assert [p.name for p in checkpoint.rglob("*.crc")] == []
    assert (checkpoint / "offsets" / str(first["batches"][-1])).exists()

    before = len(_calls_on(log, checkpoint))
    second = _probe(tmp_path, checkpoint, "stream", 2, log)
    # resumed: a checkpoint read back starts after the batches it committed (a new one starts at 0)
    assert second["batches"][0] >= first["batches"][-1] > 0
    _assert_one_chmod_per_file(_calls_on(log, checkpoint)[before:], second["batches"])


def _batch_files(calls: list[str]) -> list[str]:
    return [line for line in calls if f"{os.sep}offsets{os.sep}" in line or f"{os.sep}commits{os.sep}" in line]


def _assert_one_chmod_per_file(calls: list[str], batches: list[int]) -> None:
    """Only `chmod`s (no `readlink`: renamed without a process), at most one per offsets and commits
    file of the batches run (a batch still running when the probe stopped may have written only its offsets)."""
    assert [line for line in calls if not line.startswith("chmod ")] == []
    assert len(_batch_files(calls)) <= 2 * len(batches)
