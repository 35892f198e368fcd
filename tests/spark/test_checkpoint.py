"""The stream's checkpoint on the local file system is renamed without a process per rename.

Without Hadoop's native library (Spark's jars do not ship it), Hadoop's local file system runs
`readlink` for every rename made through the FileContext API, which Spark's default checkpoint
manager uses, and `chmod` for every file it creates (bench/RESULTS.md). The probe
(tests/spark/checkpoint_probe.py) runs a real stream in a fresh JVM with PATH leading to stand-ins
for those commands that note each call, then run the real command. With Spark's defaults they note
`readlink`s on the checkpoint's files (the stand-ins see what they are meant to see); with the
manager the stream gives a local checkpoint, none, and the stream still resumes from that
checkpoint."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from spark.cdc_stream import CHECKPOINT_MANAGER, use_local_checkpoint_manager

_REPO = Path(__file__).resolve().parents[2]
# what Hadoop's local file system runs when it has no native library
COMMANDS = ("chmod", "readlink", "stat", "ls")


KEY, MANAGER = CHECKPOINT_MANAGER


@pytest.fixture
def session(spark):
    """The Spark test session, without a checkpoint manager set, as it was after the test."""
    spark.conf.unset(KEY)
    yield spark
    spark.conf.unset(KEY)


@pytest.mark.parametrize("checkpoint", ["/var/lib/cdc/checkpoint", ".run/spark/checkpoints/cdc_stream",
                                        "file:///var/lib/cdc/checkpoint"])
def test_a_local_checkpoint_gets_the_file_system_based_manager(session, checkpoint):
    assert use_local_checkpoint_manager(session, checkpoint)
    assert session.conf.get(KEY) == MANAGER


@pytest.mark.parametrize("checkpoint", ["hdfs://namenode:8020/cdc", "s3a://bucket/cdc",
                                        "abfss://c@acct.dfs.core.windows.net/cdc"])
def test_a_checkpoint_elsewhere_keeps_sparks_default(session, checkpoint):
    assert not use_local_checkpoint_manager(session, checkpoint)
    assert session.conf.get(KEY, None) is None


def test_a_manager_the_sessions_conf_names_is_kept(session):
    session.conf.set(KEY, "org.example.Manager")
    assert not use_local_checkpoint_manager(session, "/var/lib/cdc")
    assert session.conf.get(KEY) == "org.example.Manager"


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


def test_the_checkpoint_is_renamed_without_a_process_and_the_stream_resumes_from_it(tmp_path):
    log = tmp_path / "calls.log"
    _shims(tmp_path / "shims", log)

    defaults = tmp_path / "defaults-checkpoint"
    run = _probe(tmp_path, defaults, "defaults", 3, log)
    assert len(run["batches"]) >= 3 and run["manager"] is None
    assert any(line.startswith("readlink ") for line in _batch_files(_calls_on(log, defaults)))

    checkpoint = tmp_path / "stream-checkpoint"
    first = _probe(tmp_path, checkpoint, "stream", 3, log)
    assert len(first["batches"]) >= 3 and first["manager"] == MANAGER
    _assert_chmods_only(_calls_on(log, checkpoint), first["batches"])
    assert (checkpoint / "offsets" / str(first["batches"][-1])).exists()

    before = len(_calls_on(log, checkpoint))
    second = _probe(tmp_path, checkpoint, "stream", 2, log)
    # resumed: a checkpoint read back starts after the batches it committed (a new one starts at 0)
    assert second["batches"][0] >= first["batches"][-1] > 0
    _assert_chmods_only(_calls_on(log, checkpoint)[before:], second["batches"])


def _batch_files(calls: list[str]) -> list[str]:
    return [line for line in calls if f"{os.sep}offsets{os.sep}" in line or f"{os.sep}commits{os.sep}" in line]


def _assert_chmods_only(calls: list[str], batches: list[int]) -> None:
    """Only `chmod`s (no `readlink`: renamed without a process), and some for each batch run: the
    stand-ins did see this stream's files."""
    assert [line for line in calls if not line.startswith("chmod ")] == []
    assert len(_batch_files(calls)) >= len(batches)
