"""spark/apply.py without Spark: a Python worker keeps one writer from task to task, a task
applies only the Kafka partitions it is asked to, and leaves no zip importer in the import cache."""

from __future__ import annotations

import importlib
import sys
import zipfile
import zipimport

from include.tables import TABLES
from spark import apply
from spark.writer import CassandraWriter
from tests.spark.fakes import KafkaRow, RecordingWriter
from tests.spark.test_envelope import envelope, kline


def test_a_worker_opens_one_writer_per_keyspace_and_keeps_it(monkeypatch):
    opened: list[str] = []

    def open_writer(keyspace: str) -> RecordingWriter:
        opened.append(keyspace)
        return RecordingWriter(keyspace)

    monkeypatch.setattr(CassandraWriter, "open", staticmethod(open_writer))
    monkeypatch.setattr(apply, "_SHARED", {})
    with apply.shared_writer("ks") as first:
        pass
    with apply.shared_writer("ks") as again, apply.shared_writer("other") as other:
        pass
    assert again is first and other is not first and opened == ["ks", "other"]
    # leaving a task does not close it: the next task of the worker writes through the same session
    assert not first.closed


def test_a_task_applies_the_partitions_it_is_asked_to():
    rows = [KafkaRow("binance.binance.klines", p, o, envelope("c", None, kline(str(p + 1)), 100 + 10 * p + o))
            for p in (0, 1) for o in range(3)]
    writer = RecordingWriter()
    results = apply.apply_partitions("ks", writer.context(), rows, open_writer=lambda ks: writer,
                                     only={("binance.binance.klines", 1)})
    assert [(r.topic, r.partition, r.events, r.next_offset, r.upserts) for r in results] == [
        ("binance.binance.klines", 1, 3, 3, 1)]
    # the three events of one key collapse to the last: one row, LSN 112, written
    [upsert] = [args for what, cql, args in writer.records if what == "upsert/delete"]
    close = TABLES["klines"].column_names.index("close_price")
    assert upsert[-4] == 112 and str(upsert[close]) == "2"
    # a task holding none of them opens no writer
    assert apply.apply_partitions("ks", writer.context(), rows, open_writer=None, only=set()) == []


def test_a_task_leaves_no_zip_importer_for_the_next_tasks_cache_invalidation(tmp_path, monkeypatch):
    # PySpark's worker invalidates the import caches before every task, and on Python 3.11 a cached
    # zip importer then reads its whole archive's directory again (the spark-core jar on the worker's
    # PYTHONPATH)
    archive = tmp_path / "lib.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("zipped_first.py", "VALUE = 1\n")
        z.writestr("zipped_second.py", "VALUE = 2\n")
    monkeypatch.syspath_prepend(str(archive))
    monkeypatch.setattr(sys, "path_importer_cache", dict(sys.path_importer_cache))
    for name in ("zipped_first", "zipped_second"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    first = importlib.import_module("zipped_first")
    assert isinstance(sys.path_importer_cache[str(archive)], zipimport.zipimporter)

    assert apply.apply_partitions("ks", RecordingWriter().context(), [], open_writer=None) == []
    assert not [p for p, f in sys.path_importer_cache.items() if isinstance(f, zipimport.zipimporter)]
    # what was imported stays; the archive still serves imports after the caches are invalidated
    importlib.invalidate_caches()
    assert first.VALUE == 1 and importlib.import_module("zipped_second").VALUE == 2
    assert apply.forget_archive_importers() == 1
