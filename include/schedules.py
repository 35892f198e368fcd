"""When the DAGs that run every minute start within the minute.

Started at the same second, their task processes (about 25 a minute) competed for the CPU with
the stream and with each other, and the stream's latency peaked in the minute's first half
(bench/RESULTS.md, "The per-minute DAGs' start times"). So each starts at its own second: the
extraction at 0, the bridge at 20 (after the extraction's rows have reached Cassandra),
retention at 30, the health checks at 40. The sixth field of a cron expression is the second
(Airflow hands the expression to croniter, which reads it so). Each is replaced by its
environment variable, read where the DAG is parsed.
"""

from __future__ import annotations

import os

DEFAULTS = {
    "BINANCE_EXTRACT_SCHEDULE": "* * * * *",
    "CASSANDRA_BRIDGE_SCHEDULE": "* * * * * 20",
    "RETENTION_SCHEDULE": "* * * * * 30",
    "PIPELINE_HEALTH_SCHEDULE": "* * * * * 40",
}


def schedule(setting: str) -> str:
    """The cron expression of the DAG scheduled by `setting`: the environment's, else the default."""
    return os.environ.get(setting) or DEFAULTS[setting]
