"""Shared fixtures: the local stack's settings from .env (written by `make up`)."""

from __future__ import annotations

import os

import pytest

from stack import localstack, topology

# the cluster profile (make test-cluster): the DAGs this process runs read its connections, which
# the profile gives through AIRFLOW_CONN_* / AIRFLOW_VAR_* (the single profile's are in .env)
if topology.profile() == "cluster" and localstack.ENV_FILE.exists():
    os.environ.update(topology.cluster_changes(localstack.parse_env(localstack.ENV_FILE.read_text())))

# dag.test runs each task inside this process: a batch task's lower CPU priority (include/schedules.py)
# would stay with the whole session and with what it starts later (the tests' Spark stream among them)
os.environ["BATCH_TASK_NICE"] = "0"


@pytest.fixture(scope="session")
def settings() -> dict[str, str]:
    """The stack's settings, expanded as `set -a; . ./.env` would."""
    if not localstack.ENV_FILE.exists():
        pytest.fail(".env is missing: run the suite through `make test`, which starts the stack first")
    return localstack.load_env()


@pytest.fixture
def pg(settings):
    """A psycopg2 connection to the pipeline database, as the pipeline's owner role."""
    import psycopg2

    conn = psycopg2.connect(
        host=settings["POSTGRES_HOST"], port=settings["POSTGRES_PORT"], dbname=settings["POSTGRES_DB"],
        user=settings["POSTGRES_USER"], password=settings["POSTGRES_PASSWORD"], connect_timeout=5,
    )
    yield conn
    conn.close()
