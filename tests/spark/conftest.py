"""A local SparkSession for the stream's pure transforms. These tests run in Spark's own
environment (.cache/spark-venv): `make test` calls its pytest separately."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TZ", "UTC")
# Spark's Python workers (foreachPartition) run this interpreter and import the repository's modules
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
_REPO = str(Path(__file__).resolve().parents[2])
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_REPO, os.environ.get("PYTHONPATH")) if p)


@pytest.fixture(scope="session")
def spark():
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[1]").appName("cdc-unit-tests")
        .config("spark.sql.session.timeZone", "UTC").config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "1").getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
