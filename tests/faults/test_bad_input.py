"""Bad input: malformed Binance bodies, a ban longer than the client waits, an unknown symbol, a
column added to a source table while the pipeline runs. Each gives a clear error or is carried
through, and nothing is half-written. (A poison message in a CDC topic is dead-lettered:
tests/integration/test_cdc.py.)
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from include.tables import TABLES
from tests.faults.conftest import pg_connect
from tests.integration.conftest import cassandra_rows, pg_rows, run_dag, wait_for_debezium
from tests.integration.test_binance_extract import SYMBOLS

pytestmark = pytest.mark.faults

DATASETS = tuple(TABLES)


def _checksums(pg) -> dict[str, str]:
    out = {}
    with pg.cursor() as cur:
        for table in TABLES:
            cur.execute(f"SELECT count(*) || ' ' || md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) "
                        f"FROM binance.{table} t WHERE symbol = ANY(%s)", (SYMBOLS,))
            out[table] = cur.fetchone()[0]
    pg.commit()
    return out


def _extract_once(dagbag) -> dict[str, str]:
    """binance_extract once, without retries; {task_id: state}."""
    dag = dagbag.dags["binance_extract"]
    for t in dag.tasks:
        t.retries = 0
    run = dag.test()
    return {ti.task_id: ti.state for ti in run.get_task_instances()}


@pytest.mark.parametrize("fault", ["html", "truncated", "missing_field"])
def test_a_malformed_body_fails_its_dataset_only_and_writes_nothing_of_it(dagbag, pg, server, clean_tables,
                                                                         airflow_env, fault, capfd):
    before = _checksums(pg)
    server.add_fault(fault, path="/api/v3/klines", count=50)
    states = _extract_once(dagbag)
    out = capfd.readouterr()
    assert states["load_klines"] == "failed", states
    assert all(states[f"load_{d}"] == "success" for d in DATASETS if d != "klines"), states
    after = _checksums(pg)
    assert after["klines"] == before["klines"], "a failed klines load wrote rows"
    assert all(after[d] != before[d] for d in DATASETS if d != "klines"), "the other datasets did not load"
    assert "/api/v3/klines" in out.out + out.err


def test_a_ban_longer_than_the_client_waits_fails_saying_until_when(dagbag, pg, server, clean_tables, airflow_env,
                                                                   capfd):
    before = _checksums(pg)
    server.add_fault("418", path="/api/v3/ticker/price", retry_after=900)
    states = _extract_once(dagbag)
    out = capfd.readouterr()
    assert states["load_latest_prices"] == "failed", states
    assert "until" in out.out + out.err
    after = _checksums(pg)
    failed = [d for d in DATASETS if states[f"load_{d}"] != "success"]
    assert "latest_prices" in failed
    for d in failed:
        assert after[d] == before[d], f"{d} failed but its table changed"
    calls = server.calls()
    banned_at = next(c["time"] for c in calls if c["status"] == 418)
    assert [c for c in calls if c["time"] > banned_at] == [], "calls went out during the ban"


def test_an_unknown_symbol_fails_the_run_before_any_load(dagbag, pg, server, clean_tables, airflow_env,
                                                         monkeypatch, capfd):
    monkeypatch.setenv("AIRFLOW_VAR_BINANCE_SYMBOLS", json.dumps([*SYMBOLS, "NOSUCHUSDT"]))
    before = _checksums(pg)
    states = _extract_once(dagbag)
    out = capfd.readouterr()
    assert states["validate_symbols"] == "failed", states
    assert all(states[f"load_{d}"] == "upstream_failed" for d in DATASETS), states
    assert "NOSUCHUSDT" in out.out + out.err
    assert _checksums(pg) == before
    assert not [c for c in server.calls() if c["path"] != "/api/v3/exchangeInfo"]


def test_a_column_added_to_a_source_table_is_ignored_downstream_without_a_crash(dagbag, cdc_ready, cassandra,
                                                                               settings):
    symbol = "NEWCOLUSDT"
    pg = pg_connect(settings)
    try:
        with pg.cursor() as cur:
            cur.execute("ALTER TABLE binance.latest_prices ADD COLUMN IF NOT EXISTS source_note text")
            cur.execute("INSERT INTO binance.latest_prices (symbol, price, time, source_note) VALUES "
                        "(%s, %s, %s, 'carried by Debezium, ignored by the sink')",
                        (symbol, Decimal("0.00012345"), datetime.now(UTC).replace(microsecond=0)))
        pg.commit()
        dead_before = cassandra.execute("SELECT count(*) FROM dead_letters").one()[0]
        wait_for_debezium(pg)
        run_dag(dagbag, "cdc_stream", {"mode": "available_now"})
        assert cassandra_rows(cassandra, "latest_prices", [symbol], pg) == pg_rows(pg, "latest_prices", [symbol])
        assert cassandra.execute("SELECT count(*) FROM dead_letters").one()[0] == dead_before
        # and with the column gone again, the stream goes on as before
        with pg.cursor() as cur:
            cur.execute("ALTER TABLE binance.latest_prices DROP COLUMN source_note")
            cur.execute("UPDATE binance.latest_prices SET price = %s WHERE symbol = %s", (Decimal("0.5"), symbol))
        pg.commit()
        wait_for_debezium(pg)
        run_dag(dagbag, "cdc_stream", {"mode": "available_now"})
        assert cassandra_rows(cassandra, "latest_prices", [symbol], pg) == pg_rows(pg, "latest_prices", [symbol])
    finally:
        with pg.cursor() as cur:
            cur.execute("ALTER TABLE binance.latest_prices DROP COLUMN IF EXISTS source_note")
            cur.execute("DELETE FROM binance.latest_prices WHERE symbol = %s", (symbol,))
        pg.commit()
        pg.close()
