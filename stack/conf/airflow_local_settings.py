"""Airflow local settings of the local stack (`make up` links it into $AIRFLOW_HOME/config, where every
Airflow process imports it at start).

It imports, once, the libraries the pipeline's tasks import in every run. The scheduler imports it
before it forks its LocalExecutor workers, and each worker forks a process per task run: a module
already imported in the scheduler is inherited, not imported again. Measured on the running demo
(py-spy over the task processes), importing the Postgres provider's hook (psycopg, sqlparse), the
Cassandra driver and Airflow's task decorators was about half of every task run's CPU, at about 28
task runs a minute. Only installed libraries are listed here, never the project's own modules
(dags/, include/): a task must run the code on disk, and a module imported in the scheduler would
stay as it was when the scheduler started.

A library missing here only costs that saving: each import is attempted on its own and a failure
is logged, never raised, so that no Airflow process fails to start because of this file.
"""

import importlib
import logging

PRELOADED = (
    "airflow.sdk.definitions.decorators",
    "airflow.providers.standard.operators.python",
    "airflow.providers.postgres.hooks.postgres",
    "airflow.providers.http.hooks.http",
    "cassandra.cluster",
    "cassandra.auth",
    "cassandra.policies",
    "cassandra.query",
    "cassandra.concurrent",
)

for _name in PRELOADED:
    try:
        importlib.import_module(_name)
    except Exception as exc:  # noqa: BLE001 - a missing library must not stop Airflow from starting
        logging.getLogger(__name__).warning("airflow_local_settings: could not preload %s: %s", _name, exc)

__all__: list[str] = []
