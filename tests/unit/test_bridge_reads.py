"""The bridge's reads without Cassandra or Postgres: the consistency level its statements carry, the
window of partition reads in flight, and the partitions a full copy enumerates. Fakes record the calls."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from include.bridge import reads as reads_module
from include.bridge.reads import CassandraReads
from include.partitions import partitions as full_copy_partitions
from include.tables import BRIDGE_TABLES


class _Result(list):
    def one(self):
        return self[0] if self else None


class _Future:
    def __init__(self, session, rows):
        self.session, self.rows = session, rows

    def result(self):
        self.session.in_flight -= 1
        return _Result(self.rows)


class _Session:
    """Answers the keyspace's replication, prepares statements, and serves partitions by their params."""

    def __init__(self, replication=None, partitions=None):
        self.replication = replication or {"class": "SimpleStrategy", "replication_factor": "1"}
        self.partitions = partitions or {}
        self.in_flight = 0
        self.most_in_flight = 0
        self.prepared = []

    def execute(self, cql, params=None):
        assert "system_schema.keyspaces" in cql
        return _Result([SimpleNamespace(replication=self.replication)])

    def prepare(self, cql):
        stmt = SimpleNamespace(cql=cql, consistency_level=None, fetch_size=None)
        self.prepared.append(stmt)
        return stmt

    def execute_async(self, stmt, params):
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        return _Future(self, self.partitions.get(tuple(params), []))


def test_reads_are_made_at_the_level_the_replication_calls_for():
    from cassandra import ConsistencyLevel

    one = CassandraReads.open(_Session(), "ks")
    assert one.level == ConsistencyLevel.ONE
    three = CassandraReads.open(_Session({"class": "NetworkTopologyStrategy", "dc1": "3"}), "ks")
    assert three.level_name == "LOCAL_QUORUM"
    stmt = three.prepare("SELECT 1")
    assert stmt.consistency_level == ConsistencyLevel.LOCAL_QUORUM and stmt.fetch_size == 5000
    assert CassandraReads.open(_Session(), "ks", "local_quorum").level == ConsistencyLevel.LOCAL_QUORUM


def test_an_unknown_level_fails_before_anything_is_read():
    with pytest.raises(ValueError, match="'QUORUMM'.*valid: ONE"):
        CassandraReads.open(_Session(), "ks", "QUORUMM")


def test_partitions_are_read_in_order_with_a_bounded_window_in_flight():
    table = BRIDGE_TABLES["recent_trades"]
    params = [("BTCUSDT", datetime(2026, 3, 1, h, tzinfo=UTC)) for h in range(24)]
    session = _Session(partitions={p: [f"{p[1].hour}-{n}" for n in range(3)] for p in params})
    reads = CassandraReads(session, "ks", "ONE")
    rows = list(reads.partition_rows(table, params))
    assert rows == [f"{h}-{n}" for h in range(24) for n in range(3)]
    assert session.most_in_flight == reads_module.WINDOW
    assert session.prepared[-1].cql == (
        'SELECT "symbol", "trade_id", "price", "qty", "quote_qty", "time", "is_buyer_maker", "cdc_op", '
        '"cdc_source_ts", "cdc_lsn", "cdc_written_at" FROM "ks"."recent_trades" WHERE "symbol" = ? AND "bucket" = ?')


def test_changed_keys_come_in_chunks_of_distinct_keys():
    minutes = [datetime(2026, 3, 1, 0, m, tzinfo=UTC) for m in range(3)]
    logged = {("klines", m): [SimpleNamespace(key=f"k{n % 4}", keys=None) for n in range(5)] for m in minutes}
    reads = CassandraReads(_Session(partitions=logged), "ks", "ONE")
    assert list(reads.changed_keys("klines", minutes, chunk=100)) == [{"k0", "k1", "k2", "k3"}]
    # smaller chunks bound what is held; a key may come again in a later chunk (re-reading it is harmless)
    chunks = list(reads.changed_keys("klines", minutes, chunk=3))
    assert all(len(c) <= 3 for c in chunks) and set().union(*chunks) == {"k0", "k1", "k2", "k3"}


def test_changed_keys_are_read_from_grouped_entries_and_from_entries_of_one_key():
    """The stream logs keys in groups (`keys`); entries written one per key before that are still read."""
    minutes = [datetime(2026, 3, 1, 0, m, tzinfo=UTC) for m in range(2)]
    logged = {("klines", minutes[0]): [SimpleNamespace(key="#a", keys=["k1", "k2"]),
                                       SimpleNamespace(key="k3", keys=None)],
              ("klines", minutes[1]): [SimpleNamespace(key="#b", keys=["k2", "k4", "k5"])]}
    session = _Session(partitions=logged)
    reads = CassandraReads(session, "ks", "ONE")
    assert set().union(*reads.changed_keys("klines", minutes, chunk=100)) == {"k1", "k2", "k3", "k4", "k5"}
    assert session.prepared[-1].fetch_size == reads_module.CHANGELOG_FETCH_SIZE < reads_module.FETCH_SIZE


class _RangeCursor:
    """Answers prefix_ranges' queries: the table exists in each schema, with the given (prefix, oldest, newest)."""

    def __init__(self, per_schema):
        self.per_schema = per_schema
        self.sql = []
        self._rows = []

    def execute(self, sql, params=None):
        self.sql.append(sql)
        if sql.startswith("SELECT to_regclass"):
            schema = params[0].split(".")[0].strip('"')
            self._rows = [(params[0] if schema in self.per_schema else None,)]
        else:
            schema = sql.split(" FROM ")[1].split(".")[0].strip('"')
            self._rows = self.per_schema[schema]

    def fetchone(self):
        return self._rows[0]

    def fetchall(self):
        return self._rows


def test_a_full_copy_reads_each_prefix_from_its_oldest_to_its_newest_bucket_across_source_and_bridge():
    table = BRIDGE_TABLES["klines"]
    d = [datetime(2026, 3, day, 6, tzinfo=UTC) for day in range(1, 6)]
    cur = _RangeCursor({
        "binance": [("BTCUSDT", "1m", d[1], d[2]), ("ETHUSDT", "1d", d[0], d[0])],
        # the bridge still holds an older and a newer candle, and a prefix the source no longer has
        "cassandra": [("BTCUSDT", "1m", d[0], d[3]), ("XRPUSDT", "1m", d[4], d[4])],
    })
    got = list(full_copy_partitions(cur, table, ("binance", "cassandra", "missing"), None, now=d[4]))
    day = [x.replace(hour=0) for x in d]
    assert got == [("BTCUSDT", "1m", day[0]), ("BTCUSDT", "1m", day[1]), ("BTCUSDT", "1m", day[2]),
                   ("BTCUSDT", "1m", day[3]), ("ETHUSDT", "1d", day[0]), ("XRPUSDT", "1m", day[4])]
    loose = next(s for s in cur.sql if s.startswith("WITH RECURSIVE"))
    # one index probe per prefix: the next prefix above the last, in primary key order
    assert 'WHERE ("symbol", "interval") > (p."symbol", p."interval") ORDER BY "symbol", "interval" LIMIT 1' in loose
    assert ('(SELECT "open_time" FROM "binance"."klines" t WHERE t."symbol" = p."symbol" '
            'AND t."interval" = p."interval" ORDER BY "open_time" DESC LIMIT 1) AS newest') in loose


def test_runs_of_integer_keys_are_sliced_and_scattered_or_few_keys_read_by_name():
    from include.bridge.reads import DENSE_SPAN, SLICE_KEYS, SLICE_MIN_KEYS, _runs

    dense = list(range(0, 2 * SLICE_KEYS + 10))
    assert [(lo, hi, v) for lo, hi, v in _runs(dense)] == [
        (0, SLICE_KEYS - 1, None), (SLICE_KEYS, 2 * SLICE_KEYS - 1, None),
        (2 * SLICE_KEYS, 2 * SLICE_KEYS + 9, list(range(2 * SLICE_KEYS, 2 * SLICE_KEYS + 10)))]
    # every DENSE_SPAN-th id still is a run; one more apart is not
    assert next(_runs(list(range(0, DENSE_SPAN * 100, DENSE_SPAN))))[2] is None
    spread = list(range(0, (DENSE_SPAN + 1) * 100, DENSE_SPAN + 1))
    assert next(_runs(spread))[2] == spread
    few = list(range(SLICE_MIN_KEYS - 1))
    assert next(_runs(few))[2] == few
    times = [datetime(2026, 1, 1, tzinfo=UTC).replace(second=s) for s in range(SLICE_MIN_KEYS)]
    assert next(_runs(times))[2] == times
