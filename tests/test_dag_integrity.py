"""Every DAG file imports with no connections or Variables set, and follows the house rules."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

DAGS = Path(__file__).resolve().parent.parent / "dags"


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}, dagbag.import_errors


def test_every_dag_file_defines_a_dag(dagbag):
    files = {p.resolve() for p in DAGS.glob("*.py") if not p.name.startswith("_")}
    with_dags = {Path(d.fileloc).resolve() for d in dagbag.dags.values()}
    assert files == with_dags


def test_dags_have_tags_retries_docs_and_no_catchup(dagbag):
    for dag_id, dag in dagbag.dags.items():
        assert dag.tags, f"{dag_id} has no tags"
        assert dag.catchup is False, f"{dag_id} has catchup on"
        assert dag.doc_md, f"{dag_id} has no doc_md"
        for task in dag.tasks:
            assert task.retries >= 1, f"{dag_id}.{task.task_id} has no retries"
            # Airflow 3 takes a multiplier: True is 1, a constant delay, not the backoff it reads as
            assert not isinstance(task.retry_exponential_backoff, bool), \
                f"{dag_id}.{task.task_id}: retry_exponential_backoff must be a multiplier (2.0), not a bool"


def test_no_task_pushes_its_dict_return_key_by_key(dagbag):
    """TaskFlow turns a `-> dict` annotation into multiple_outputs: one extra XCom push per key, each an
    API call and a metadata write, on tasks that run every minute. No DAG reads a task's output by key."""
    split = [f"{dag_id}.{task.task_id}" for dag_id, dag in dagbag.dags.items() for task in dag.tasks
             if getattr(task, "multiple_outputs", False)]
    assert split == [], f"set multiple_outputs=False on {split}"


def test_the_continuous_stream_gets_a_new_run_after_each_one(dagbag):
    """Airflow starts a continuous DAG's next run where the last one's data interval ended; a
    zero-length first interval (no start_date) would give the second run the first one's logical
    date, and the scheduler would never create it (nothing would restart a dead stream)."""
    from airflow.timetables.base import TimeRestriction
    from airflow.timetables.simple import ContinuousTimetable

    dag = dagbag.dags["cdc_stream"]
    assert type(dag.timetable).__name__ == "ContinuousTimetable"
    # the scheduler's side of the DAG's timetable
    timetable = ContinuousTimetable()
    restriction = TimeRestriction(earliest=dag.start_date, latest=None, catchup=False)
    first = timetable.next_dagrun_info(last_automated_data_interval=None, restriction=restriction)
    second = timetable.next_dagrun_info(last_automated_data_interval=first.data_interval, restriction=restriction)
    third = timetable.next_dagrun_info(last_automated_data_interval=second.data_interval, restriction=restriction)
    assert len({first.logical_date, second.logical_date, third.logical_date}) == 3


PER_MINUTE = ("binance_extract", "cassandra_bridge", "retention", "pipeline_health")


def test_the_per_minute_dags_start_at_seconds_of_their_own(dagbag):
    """Started at one second, their task processes competed with the stream for the CPU
    (include/schedules.py). Airflow's own timetables, as the scheduler runs them, must place each
    DAG's runs a minute apart at a second no other of them uses."""
    from airflow.serialization.encoders import coerce_to_core_timetable
    from airflow.timetables.base import TimeRestriction

    restriction = TimeRestriction(earliest=None, latest=None, catchup=False)
    seconds = {}
    for dag_id in PER_MINUTE:
        timetable = coerce_to_core_timetable(dagbag.dags[dag_id].timetable)
        first = timetable.next_dagrun_info(last_automated_data_interval=None, restriction=restriction)
        second = timetable.next_dagrun_info(last_automated_data_interval=first.data_interval, restriction=restriction)
        assert (second.run_after - first.run_after).total_seconds() == 60, dag_id
        assert first.run_after.second == second.run_after.second, dag_id
        seconds[dag_id] = first.run_after.second
    assert len(set(seconds.values())) == len(PER_MINUTE), seconds


def test_a_schedule_setting_replaces_the_default(monkeypatch):
    from include import schedules

    monkeypatch.setenv("RETENTION_SCHEDULE", "*/5 * * * *")
    assert schedules.schedule("RETENTION_SCHEDULE") == "*/5 * * * *"
    monkeypatch.setenv("RETENTION_SCHEDULE", "")
    assert schedules.schedule("RETENTION_SCHEDULE") == schedules.DEFAULTS["RETENTION_SCHEDULE"]


def _child_nice(callback, start: int, out) -> None:  # runs in a forked child
    current = os.nice(0)
    if start > current:
        os.nice(start - current)
    callback()
    out.put(os.nice(0))


@pytest.mark.parametrize("start", [0, 15])
def test_a_batch_task_lowers_its_own_cpu_priority_and_never_raises_it(start):
    """The callback really changes the process's nice value (in a child, not this test process): to
    10 from below, and a process already lower keeps its own."""
    import multiprocessing

    from include.schedules import LowerPriority

    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    child = ctx.Process(target=_child_nice, args=(LowerPriority(10), start, out))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    assert out.get(timeout=5) == max(10, start, os.nice(0))


def test_the_batch_dags_tasks_run_below_the_stream(monkeypatch):
    """Every task of the batch DAGs lowers its priority (include/schedules.py); the stream's and the
    setup's do not. Parsed here with the default setting (this suite sets 0 for its own process)."""
    from airflow.dag_processing.dagbag import DagBag

    from include.schedules import DEFAULT_BATCH_TASK_NICE, LowerPriority

    def callbacks(task) -> list:
        given = task.on_execute_callback
        return list(given) if isinstance(given, list | tuple) else [given] if given else []

    monkeypatch.delenv("BATCH_TASK_NICE", raising=False)
    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}, bag.import_errors
    for dag_id in (*PER_MINUTE, "binance_archive"):
        for task in bag.dags[dag_id].tasks:
            niced = [c.nice for c in callbacks(task) if isinstance(c, LowerPriority)]
            assert niced == [DEFAULT_BATCH_TASK_NICE], f"{dag_id}.{task.task_id}"
    for dag_id in ("cdc_stream", "cdc_setup"):
        for task in bag.dags[dag_id].tasks:
            assert not any(isinstance(c, LowerPriority) for c in callbacks(task)), task.task_id


@pytest.mark.parametrize("value", ["-5", "20", "low", "1.5"])
def test_a_bad_nice_setting_is_the_dags_import_error_naming_it(monkeypatch, value):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("BATCH_TASK_NICE", value)
    bag = DagBag(dag_folder=str(DAGS / "retention.py"))
    assert "BATCH_TASK_NICE must be a whole number from 0 to 19" in str(bag.import_errors), bag.import_errors


def test_a_nice_setting_of_zero_leaves_the_batch_tasks_at_the_streams_priority(monkeypatch):
    from include import schedules

    monkeypatch.setenv("BATCH_TASK_NICE", "0")
    assert "on_execute_callback" not in schedules.batch_default_args(retries=1)
    monkeypatch.setenv("BATCH_TASK_NICE", " 7 ")
    assert schedules.batch_default_args(retries=1)["on_execute_callback"].nice == 7
