"""Schema changes wait for every Cassandra node to agree, and stop with a clear error when they do not."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from include.schema import cassandra as schema


class Session:
    """Records what it executes; the driver's answer to a schema change says whether the nodes agreed."""

    def __init__(self, agreed: bool) -> None:
        self.agreed = agreed
        self.executed: list[tuple[str, float]] = []

    def execute(self, statement: str, timeout: float):
        self.executed.append((statement, timeout))
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
