"""A CassandraWriter on a session that records instead of writing, for unit tests. Importable by
Spark's Python workers (the repository root is on their PYTHONPATH, see conftest.py), so a Spark
task can write through it too and leave what it wrote in a file."""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NamedTuple

from spark.writer import BatchContext, CassandraWriter, Write

NOW = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
# the change-log minute of a batch started at NOW, with nothing in stream_position
NOW_MINUTE = NOW.replace(second=0, microsecond=0)


class KafkaRow(NamedTuple):
    """A raw Kafka record as a Spark task of the stream reads it."""

    topic: str
    partition: int
    offset: int
    value: str | None


class Prepared:
    def __init__(self, cql: str) -> None:
        self.cql = cql
        self.consistency_level = None
        self.column_metadata: list[Any] = []  # the fake binds nothing


class Done:
    def result(self) -> None:
        return None


class FakeSession:
    """Records prepare/execute/execute_async calls as (kind, cql, values); SELECTs are recorded apart,
    in `reads`, and answered from `retention` (sink_retention: table -> keep_seconds), `position`
    (stream_position: query -> changelog_bucket, naive UTC like the Cassandra driver's) and
    `windows` (snapshot_windows: LSN -> commit µs, which the writer's inserts add to)."""

    def __init__(self, calls: list[tuple[str, str, tuple]] | None = None,
                 retention: Mapping[str, int | None] | None = None,
                 position: Mapping[str, datetime] | None = None,
                 windows: Mapping[int, int] | None = None) -> None:
        self.prepared: list[str] = []
        self.calls = [] if calls is None else calls
        self.reads: list[tuple[str, tuple]] = []
        self.retention = dict(retention or {})
        self.position = dict(position or {})
        self.windows = dict(windows or {})

    def prepare(self, cql: str) -> Prepared:
        self.prepared.append(cql)
        return Prepared(cql)

    def execute(self, stmt: Prepared, values: tuple = ()) -> list[Any] | None:
        if stmt.cql.startswith("SELECT"):
            self.reads.append((stmt.cql, tuple(values)))
            if ".sink_retention" in stmt.cql:
                return [SimpleNamespace(table_name=t, keep_seconds=k) for t, k in self.retention.items()]
            if ".stream_position" in stmt.cql:
                [query] = values
                bucket = self.position.get(query)
                return [] if bucket is None else [SimpleNamespace(changelog_bucket=bucket)]
            if ".snapshot_windows" in stmt.cql:
                _, lsn = values
                below = [k for k in self.windows if k <= lsn]
                return [SimpleNamespace(lsn=max(below), commit_us=self.windows[max(below)])] if below else []
            raise AssertionError(f"unexpected read {stmt.cql}")
        self.calls.append(("execute", stmt.cql, tuple(values)))
        return None

    def execute_async(self, stmt: Prepared, values: tuple) -> Done:
        self.calls.append(("execute_async", stmt.cql, tuple(values)))
        if ".snapshot_windows" in stmt.cql:
            _, lsn, commit_us, _ = values
            self.windows[lsn] = commit_us
        return Done()


class RecordingWriter(CassandraWriter):
    """Writes nothing, the clock held at `clock` (NOW unless set), the monotonic clock at `ticks`:
    `records` lists in order what the session executed ("execute": dead letters, "execute_async":
    progress) and each write `_send` would have batched ("upsert/delete", "change log"), as
    (what, cql, values), a change-log entry's random id as "#". `to_file`'s writers append them to a
    file when closed."""

    def __init__(self, keyspace: str = "ks", path: Path | None = None,
                 retention: Mapping[str, int | None] | None = None,
                 position: Mapping[str, datetime] | None = None,
                 windows: Mapping[int, int] | None = None) -> None:
        self.records: list[tuple[str, str, tuple]] = []
        super().__init__(FakeSession(self.records, retention, position, windows), keyspace)
        self.path = path
        self.closed = False
        self.clock = NOW
        self.ticks = 1000.0

    @classmethod
    def to_file(cls, path: str, keyspace: str) -> RecordingWriter:
        """A writer for a Spark task: it finds the windows earlier tasks' writers recorded in `path`
        (as a task finds them in snapshot_windows) and appends what it wrote there when closed."""
        windows = {args[1]: args[2] for _, cql, args in read_records(Path(path)) if ".snapshot_windows" in cql}
        return cls(keyspace, Path(path), windows=windows)

    def now(self) -> datetime:
        return self.clock

    def monotonic(self) -> float:
        return self.ticks

    def context(self, bucket: datetime = NOW_MINUTE, windows: Mapping[int, int] | None = None) -> BatchContext:
        """A batch context with this writer's retention (and `windows`), as the driver builds one."""
        return BatchContext(bucket, self.retention(), dict(windows or {}))

    def _send(self, writes: list[Write], what: str, target: str) -> None:
        for w in writes:
            values = w.values
            if what == "change log":
                assert values[2].startswith("#"), values
                values = (*values[:2], "#", *values[3:])
            self.records.append((what, w.statement.cql, values))

    def close(self) -> None:
        if self.path is not None:
            with self.path.open("ab") as f:
                pickle.dump(self.records, f)
        self.closed = True
        super().close()


def read_records(path: Path) -> list[tuple[str, str, tuple]]:
    """Everything the RecordingWriters of Spark tasks appended to `path`."""
    out: list[Any] = []
    if not path.exists():
        return out
    with path.open("rb") as f:
        while True:
            try:
                out += pickle.load(f)
            except EOFError:
                return out


def seed_windows(path: Path, windows: Mapping[int, int], topic: str = "binance.binance.debezium_signal") -> None:
    """Record window markers (LSN -> commit µs) in `path` as a task's writer would have, for the
    RecordingWriter.to_file writers of later tasks to find."""
    cql = 'INSERT INTO "ks".snapshot_windows (topic, lsn, commit_us, recorded_at) VALUES (?, ?, ?, ?)'
    with path.open("ab") as f:
        pickle.dump([("execute_async", cql, (topic, lsn, commit, NOW)) for lsn, commit in windows.items()], f)
