"""A CassandraWriter on a session that records instead of writing, for unit tests. Importable by
Spark's Python workers (the repository root is on their PYTHONPATH, see conftest.py), so a Spark
task can write through it too and leave what it wrote in a file."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from spark.writer import CassandraWriter, Write

NOW = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)


class Prepared:
    def __init__(self, cql: str) -> None:
        self.cql = cql
        self.consistency_level = None


class Done:
    def result(self) -> None:
        return None


class FakeSession:
    """Records prepare/execute/execute_async calls as (kind, cql, values)."""

    def __init__(self, calls: list[tuple[str, str, tuple]] | None = None) -> None:
        self.prepared: list[str] = []
        self.calls = [] if calls is None else calls

    def prepare(self, cql: str) -> Prepared:
        self.prepared.append(cql)
        return Prepared(cql)

    def execute(self, stmt: Prepared, values: tuple) -> None:
        self.calls.append(("execute", stmt.cql, tuple(values)))

    def execute_async(self, stmt: Prepared, values: tuple) -> Done:
        self.calls.append(("execute_async", stmt.cql, tuple(values)))
        return Done()


class RecordingWriter(CassandraWriter):
    """Writes nothing, the clock held at NOW: `records` lists in order what the session executed
    ("execute": dead letters, "execute_async": progress) and each write `_send` would have batched
    ("upsert/delete", "change log"), as (what, cql, values). `to_file` appends them to a file when
    closed."""

    def __init__(self, keyspace: str = "ks", path: Path | None = None) -> None:
        self.records: list[tuple[str, str, tuple]] = []
        super().__init__(FakeSession(self.records), keyspace)
        self.path = path
        self.closed = False

    @classmethod
    def to_file(cls, path: str, keyspace: str) -> RecordingWriter:
        return cls(keyspace, Path(path))

    def now(self) -> datetime:
        return NOW

    def _send(self, writes: list[Write], what: str, target: str) -> None:
        self.records += [(what, w.statement.cql, w.values) for w in writes]

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
