"""cdc_setup's re-snapshot paths (include/cdc/setup.py, include/cdc/tasks.py), with recorded fakes:
incremental by default (the sink kept, the connector streaming at once, then an incremental snapshot
of every table), from scratch only for a rebuilt source or a migration that rebuilds the sink."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from include.cdc import setup, signals
from include.cdc import tasks as cdc_tasks
from include.cdc.kafka_connect import ConnectError, KafkaConnectClient
from include.names import CONNECTOR
from include.tables import TABLES

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.mark.parametrize(("requested", "from_scratch", "rebuilt_by", "mode"), [
    (False, False, [], None),
    (True, False, [], "incremental"),
    (True, True, [], "from_scratch"),
    (False, False, ["V003__time_buckets.cql"], "from_scratch"),  # the upgrade: the sink's tables are new
    (True, False, ["V003__time_buckets.cql"], "from_scratch"),
    (False, True, [], None),  # from_scratch alone asks for nothing
])
def test_the_resnapshot_is_incremental_unless_a_start_from_scratch_is_needed(requested, from_scratch, rebuilt_by,
                                                                               mode):
    assert cdc_tasks.resnapshot_mode(requested, from_scratch, rebuilt_by) == mode


class FakeConnect:
    """Records what setup asks of Kafka Connect."""

    def __init__(self, offsets_after: int = 0) -> None:
        self.calls: list[tuple] = []
        self.offsets_after = offsets_after

    def stop(self, name):
        self.calls.append(("stop", name))

    def reset_offsets(self, name):
        self.calls.append(("reset_offsets", name))

    def ensure(self, name, config):
        self.calls.append(("ensure", name, config["snapshot.mode"]))
        return "updated"

    def resume(self, name):
        self.calls.append(("resume", name))

    def wait_running(self, name, timeout=120.0):
        self.calls.append(("wait_running", name))

    def wait_offsets(self, name, timeout=120.0):
        self.calls.append(("wait_offsets", name))


class _Cursor:
    def __init__(self, pg):
        self.pg = pg

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def execute(self, sql, params=None):
        self.pg.sql.append((sql, params))

    def fetchone(self):
        return self.pg.answers.pop(0) if self.pg.answers else None


class FakePg:
    def __init__(self, answers=()):
        self.answers, self.sql, self.commits = list(answers), [], 0

    def cursor(self):
        return _Cursor(self)

    def commit(self):
        self.commits += 1

    def rollback(self):
        pass


def test_an_incremental_resnapshot_keeps_the_sink_and_streams_at_once():
    client = FakeConnect()
    # the slot exists and is inactive once the connector stopped: it is dropped
    replication = FakePg(answers=[(False, "lost")])
    out = setup.resnapshot_incremental(client, CONNECTOR, replication)
    assert out == {"connector": CONNECTOR, "mode": "incremental", "slot_dropped": True}
    assert client.calls == [("stop", CONNECTOR), ("reset_offsets", CONNECTOR), ("ensure", CONNECTOR, "no_data"),
                            ("resume", CONNECTOR), ("wait_running", CONNECTOR), ("wait_offsets", CONNECTOR)]
    assert any("pg_drop_replication_slot" in sql for sql, _ in replication.sql)


def test_the_incremental_snapshot_is_asked_for_every_table_once_the_slot_exists():
    naps = []
    pg = FakePg(answers=[None, None, (True,)])
    ids = setup.request_incremental_snapshot(pg, sleep=naps.append, now=NOW)
    assert len(naps) == 2 and len(ids) == len(TABLES) and pg.commits == len(TABLES)
    assert all(i.startswith(f"{signals.RESNAPSHOT}-20260102T030405-") for i in ids)
    inserted = [params for sql, params in pg.sql if sql.startswith("INSERT")]
    assert [json.loads(data) for _, _, data in inserted] == [
        {"data-collections": [f"binance.{t}"], "type": "incremental"} for t in TABLES]
    assert all(kind == "execute-snapshot" for _, kind, _ in inserted)


def test_no_signal_is_written_without_a_slot_to_read_it():
    with pytest.raises(RuntimeError, match="does not exist"):
        setup.request_incremental_snapshot(FakePg(), timeout=0, sleep=lambda s: None)


def test_request_snapshot_does_nothing_after_anything_but_an_incremental_resnapshot():
    assert cdc_tasks.request_snapshot({"resnapshot": False}) == []
    assert cdc_tasks.request_snapshot({"resnapshot": True, "mode": "from_scratch"}) == []


class _Resp:
    def __init__(self, body):
        self.status_code, self.body, self.text = 200, body, json.dumps(body)

    def json(self):
        return self.body


class _Session:
    def __init__(self, *bodies):
        self.bodies = list(bodies)

    def request(self, method, url, json=None, timeout=None):
        return _Resp(self.bodies.pop(0) if len(self.bodies) > 1 else self.bodies[0])


def test_waiting_for_offsets_polls_until_the_connector_committed_some():
    naps = []
    client = KafkaConnectClient("http://connect", session=_Session({"offsets": []}, {"offsets": []},
                                                                   {"offsets": [{"offset": {"lsn": 5}}]}),
                                sleep=naps.append)
    assert client.wait_offsets(CONNECTOR) == [{"offset": {"lsn": 5}}] and len(naps) == 2
    never = KafkaConnectClient("http://connect", session=_Session({"offsets": []}), sleep=lambda s: None)
    with pytest.raises(ConnectError, match="committed no offsets"):
        never.wait_offsets(CONNECTOR, timeout=0)
