"""When the DAGs that run every minute start within the minute.

Started at the same second, their task processes (about 25 a minute) competed for the CPU with
the stream and with each other, and the stream's latency peaked in the minute's first half
(bench/RESULTS.md, "The per-minute DAGs' start times"). So each starts at its own second: the
extraction at 0, the bridge at 20 (after the extraction's rows have reached Cassandra),
retention at 30, the health checks at 40. The sixth field of a cron expression is the second
(Airflow hands the expression to croniter, which reads it so). Each is replaced by its
environment variable, read where the DAG is parsed.

The batch DAGs' tasks (these four and binance_archive) also run at a lower CPU priority than the
stream: each task process raises its nice value to BATCH_TASK_NICE (default 10) before its work.
On the cluster profile at 1,000 rows/s the stream's commit -> Cassandra p50 was 2.35-3.76 s beside
them at the same priority and 0.83-0.89 s with them paused (bench/RESULTS.md, "The batch DAGs' CPU
priority"). At that priority they still get the CPU the stream leaves: all of it when it is idle.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

DEFAULTS = {
    "BINANCE_EXTRACT_SCHEDULE": "* * * * *",
    "CASSANDRA_BRIDGE_SCHEDULE": "* * * * * 20",
    "RETENTION_SCHEDULE": "* * * * * 30",
    "PIPELINE_HEALTH_SCHEDULE": "* * * * * 40",
}


BATCH_TASK_NICE = "BATCH_TASK_NICE"
DEFAULT_BATCH_TASK_NICE = 10


def batch_task_nice() -> int:
    """The nice value of the batch DAGs' task processes: BATCH_TASK_NICE, 0 (as the stream) to 19."""
    raw = os.environ.get(BATCH_TASK_NICE, "").strip() or str(DEFAULT_BATCH_TASK_NICE)
    if not (raw.isascii() and raw.isdigit()) or int(raw) > 19:
        raise ValueError(f"{BATCH_TASK_NICE} must be a whole number from 0 to 19 (a nice value), got {raw!r}")
    return int(raw)


class LowerPriority:
    """An on_execute_callback: the task's process (and what it starts) runs at nice value `nice`,
    or keeps a higher one it already has. Unprivileged: a process may lower its own priority."""

    def __init__(self, nice: int) -> None:
        self.nice = nice

    def __call__(self, context: object = None) -> None:
        current = os.nice(0)
        if current < self.nice:
            current = os.nice(self.nice - current)
        log.info("this task runs at nice %d, below the change stream (%s)", current, BATCH_TASK_NICE)


def batch_default_args(**default_args: object) -> dict:
    """A batch DAG's default_args: `default_args` and its tasks' lower CPU priority (BATCH_TASK_NICE,
    checked where the DAG is parsed, so a bad value is the DAG's import error)."""
    nice = batch_task_nice()
    return {**default_args, "on_execute_callback": LowerPriority(nice)} if nice else dict(default_args)


def schedule(setting: str) -> str:
    """The cron expression of the DAG scheduled by `setting`: the environment's, else the default."""
    return os.environ.get(setting) or DEFAULTS[setting]
