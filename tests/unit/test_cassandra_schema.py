"""Schema changes wait for every Cassandra node to agree, and stop with a clear error when they do not."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from include.schema import cassandra as schema


class Session:
    """Records what it executes; the driver's answer to a schema change says whether the nodes agreed."""

    def __init__(self, agreed: bool, failures: list[Exception] | None = None) -> None:
        self.agreed = agreed
        self.failures = list(failures or [])
        self.executed: list[tuple[str, float]] = []

    def execute(self, statement: str, timeout: float):
        self.executed.append((statement, timeout))
        if self.failures:
            raise self.failures.pop(0)
        return SimpleNamespace(response_future=SimpleNamespace(is_schema_agreed=self.agreed))


def test_an_agreed_schema_change_returns_and_is_given_the_ddl_timeout():
    session = Session(agreed=True)
    schema.schema_change(session, "CREATE TABLE IF NOT EXISTS t (k int PRIMARY KEY)")
    assert session.executed == [("CREATE TABLE IF NOT EXISTS t (k int PRIMARY KEY)", schema.DDL_TIMEOUT_S)]


def test_a_schema_change_the_nodes_disagree_on_names_the_statement_and_the_migration():
    session = Session(agreed=False)
    with pytest.raises(schema.CassandraSchemaError) as failed:
        schema.schema_change(session, "DROP TABLE IF EXISTS\n    latest_prices", "V003__time_buckets.cql")
    message = str(failed.value)
    assert "'DROP TABLE IF EXISTS latest_prices'" in message
    assert "V003__time_buckets.cql" in message
    assert "nodetool describecluster" in message


def test_the_schema_session_waits_longer_than_the_drivers_default_for_agreement():
    from include.connections import CassandraSettings, cassandra_cluster

    settings = CassandraSettings(("127.0.0.1",), 9042, None, None, "binance")
    assert cassandra_cluster(settings).max_schema_agreement_wait == 10
    assert cassandra_cluster(settings, schema.SCHEMA_AGREEMENT_S).max_schema_agreement_wait == schema.SCHEMA_AGREEMENT_S


def _defunct() -> Exception:
    from cassandra import OperationTimedOut

    return OperationTimedOut(errors={"Connection defunct by heartbeat": "Client request timeout"},
                             last_host="127.0.0.2:9042")


def test_a_schema_change_that_times_out_is_sent_again(monkeypatch):
    from cassandra.cluster import NoHostAvailable

    monkeypatch.setattr(schema, "SCHEMA_CHANGE_PAUSE_S", 0)
    session = Session(agreed=True, failures=[_defunct(), NoHostAvailable("no host", {})])
    schema.schema_change(session, "ALTER KEYSPACE system_auth WITH replication = {}")
    assert [stmt for stmt, _ in session.executed] == ["ALTER KEYSPACE system_auth WITH replication = {}"] * 3


def test_a_schema_change_that_never_goes_through_names_the_statement_and_the_last_error(monkeypatch):
    monkeypatch.setattr(schema, "SCHEMA_CHANGE_PAUSE_S", 0)
    session = Session(agreed=True, failures=[_defunct() for _ in range(schema.SCHEMA_CHANGE_ATTEMPTS)])
    with pytest.raises(schema.CassandraSchemaError) as failed:
        schema.schema_change(session, "CREATE TABLE IF NOT EXISTS\n  klines (k int PRIMARY KEY)",
                             "V003__time_buckets.cql")
    message = str(failed.value)
    assert len(session.executed) == schema.SCHEMA_CHANGE_ATTEMPTS
    assert "'CREATE TABLE IF NOT EXISTS klines (k int PRIMARY KEY)'" in message
    assert "V003__time_buckets.cql" in message and "Connection defunct by heartbeat" in message


def test_a_schema_error_is_not_sent_again():
    from cassandra import InvalidRequest

    session = Session(agreed=True, failures=[InvalidRequest("no keyspace named nope")])
    with pytest.raises(InvalidRequest):
        schema.schema_change(session, "CREATE TABLE nope.t (k int PRIMARY KEY)")
    assert len(session.executed) == 1
