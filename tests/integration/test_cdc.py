"""Change data capture end to end against the real stack: every op of every table reaches
Cassandra exactly; a killed stream loses, duplicates and regresses nothing; re-running
cdc_setup does not re-snapshot."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import requests
from confluent_kafka import Consumer, TopicPartition

from include.binance.models import AggTrade, DailyTicker, Kline, LatestPrice, OrderBookLevel, Trade
from include.loader import load
from include.names import topic_for
from include.tables import TABLES
from include.times import as_utc, to_epoch_ms
from tests.integration.conftest import (
    TEST_CHECKPOINT,
    cassandra_partition_rows,
    cassandra_rows,
    pg_rows,
    run_dag,
    wait_for_debezium,
)

pytestmark = pytest.mark.integration

SYMBOLS = ["CDCAUSDT", "CDCBUSDT"]
REPO = Path(__file__).resolve().parents[2]
# recent, so every store's retention keeps the rows (a fixed past date would fall out of Cassandra's window)
T0 = (datetime.now(UTC) - timedelta(hours=3)).replace(minute=0, second=0, microsecond=0)


def _delete_test_rows(pg) -> None:
    with pg.cursor() as cur:
        for table in TABLES:
            cur.execute(f"DELETE FROM binance.{table} WHERE symbol = ANY(%s)", (SYMBOLS,))
    pg.commit()


def _records(version: int) -> dict[str, list]:
    """Rows for every table; `version` moves the values so a second load is an UPDATE."""
    d = Decimal(version)
    out: dict[str, list] = {t: [] for t in TABLES}
    for i, sym in enumerate(SYMBOLS):
        base = Decimal("0.00001234") + i
        out["latest_prices"] += [LatestPrice(sym, base + d, T0 + timedelta(minutes=m)) for m in range(3)]
        out["daily_ticker"].append(DailyTicker(sym, base, base + d, base, base + d, Decimal("123.45678901") + d,
                                               Decimal("9.9"), T0, T0 + timedelta(days=1), 1, 100 + version, 99))
        out["klines"] += [Kline(sym, "1m", T0 + timedelta(minutes=m), base, base + d, base, base + d,
                                Decimal("1.5") * (m + 1), T0 + timedelta(minutes=m, seconds=59.999), Decimal("2"),
                                10 + version) for m in range(3)]
        out["recent_trades"] += [Trade(sym, 1000 + n, base + n, Decimal("0.5"), (base + n) / 2, T0, n % 2 == 0)
                                 for n in range(4)]
        out["order_book"] += [OrderBookLevel(7, sym, side, base + n, Decimal("3.25") + d, T0)
                              for side in ("bid", "ask") for n in range(2)]
        out["agg_trades"] += [AggTrade(sym, 500 + n, base + n, Decimal("0.75"), 2000 + 2 * n, 2001 + 2 * n,
                                       T0 + timedelta(seconds=n), n % 2 == 1) for n in range(3)]
    return out


def _assert_cassandra_equals_postgres(pg, cassandra) -> dict[str, int]:
    counts = {}
    for table in TABLES:
        want = pg_rows(pg, table, SYMBOLS)
        got = cassandra_rows(cassandra, table, SYMBOLS, pg)
        assert got.keys() == want.keys(), f"{table}: keys differ; missing {want.keys() - got.keys()}, " \
                                          f"extra {got.keys() - want.keys()}"
        for key, row in want.items():
            assert got[key] == row, f"{table} {key}: cassandra {got[key]} != postgres {row}"
        counts[table] = len(want)
    return counts


def test_inserts_updates_and_deletes_of_every_table_reach_cassandra_exactly(dagbag, cdc_ready, pg, cassandra, capfd,
                                                                           settings):
    _delete_test_rows(pg)
    before = _end_offsets(settings)
    for table, records in _records(1).items():
        load(pg, table, records)
    # updates in every table (an immutable trade is corrected by hand, as an operator would)
    for table, records in _records(2).items():
        load(pg, table, records)
    with pg.cursor() as cur:
        cur.execute("UPDATE binance.recent_trades SET qty = qty + 0.00000001 WHERE symbol = %s AND trade_id = 1001",
                    (SYMBOLS[0],))
        cur.execute("UPDATE binance.order_book SET quantity = quantity * 2 WHERE symbol = %s", (SYMBOLS[1],))
        cur.execute("UPDATE binance.agg_trades SET qty = qty + 0.00000001 WHERE symbol = %s AND agg_trade_id = 501",
                    (SYMBOLS[1],))
        # deletes in every table
        cur.execute("DELETE FROM binance.latest_prices WHERE symbol = %s AND time = %s", (SYMBOLS[0], T0))
        cur.execute("DELETE FROM binance.daily_ticker WHERE symbol = %s", (SYMBOLS[1],))
        cur.execute("DELETE FROM binance.klines WHERE symbol = %s AND open_time = %s", (SYMBOLS[0], T0))
        cur.execute("DELETE FROM binance.recent_trades WHERE symbol = %s AND trade_id = 1002", (SYMBOLS[1],))
        cur.execute("DELETE FROM binance.order_book WHERE symbol = %s AND side = 'ask'", (SYMBOLS[0],))
        cur.execute("DELETE FROM binance.agg_trades WHERE symbol = %s AND agg_trade_id = 502", (SYMBOLS[0],))
    pg.commit()
    wait_for_debezium(pg)
    run_dag(dagbag, "cdc_stream", {"mode": "available_now"})

    counts = _assert_cassandra_equals_postgres(pg, cassandra)
    assert counts == {"latest_prices": 5, "daily_ticker": 1, "klines": 5, "recent_trades": 7, "order_book": 6,
                      "agg_trades": 5}
    # the broker gives each topic 2 partitions or more (stack/topology.py), Debezium spreads a table's
    # rows over them by key, and the rows above were applied from every one of them
    moved = {tp.partition for tp, end in _end_offsets(settings).items()
             if tp.topic == topic_for("recent_trades") and end > before.get(tp, 0)}
    assert len(moved) >= 2, f"recent_trades' events went to partition(s) {moved} only"
    row = cassandra.execute("SELECT low_price, cdc_op, cdc_source_ts, writetime(low_price) AS wt FROM klines "
                            "WHERE symbol = %s AND interval = '1m' AND bucket = %s AND open_time = %s",
                            (SYMBOLS[0], TABLES["klines"].bucket_of(T0), T0 + timedelta(minutes=1))).one()
    assert str(row.low_price) == "0.00001234"
    assert row.cdc_op == "u" and _is_commit_time(row)
    # every row written with its source commit time (µs) as write time
    for table in TABLES:
        value = next(c for c in TABLES[table].column_names if c not in TABLES[table].cassandra_key)
        mine = cassandra_partition_rows(cassandra, table, SYMBOLS, pg, f"cdc_source_ts, writetime({value}) AS wt")
        assert mine and all(_is_commit_time(r) for r in mine), f"{table}: a write time is not the source commit time"
    # the stream's log (spark-submit's output, relayed by the task): the Spark tasks applied the batches
    out = capfd.readouterr()
    relayed = out.out + out.err
    assert "applied by Spark tasks:" in relayed, "no batch was applied by Spark tasks"
    # and not one line per Kafka record read (Spark's Kafka consumer warns on each in a Python task;
    # spark/conf/log4j2.properties silences it)
    assert "UninterruptibleThread" not in relayed, "Spark's Kafka consumer logs a warning for every record"


def _is_commit_time(row) -> bool:
    """The write time is the change's source commit time in µs: cdc_source_ts is the same instant in ms."""
    return row.wt // 1000 == to_epoch_ms(as_utc(row.cdc_source_ts))


def _spark_submit(settings, checkpoint: Path) -> subprocess.Popen:
    from cdc_stream_operator import spark_jars, stream_args, stream_env

    env = dict(os.environ, **stream_env(settings["CASSANDRA_HOST"], settings["CASSANDRA_PORT"],
                                        settings["CASSANDRA_USERNAME"], settings["CASSANDRA_PASSWORD"]))
    argv = ["spark-submit", "--master", "local[2]", "--jars", spark_jars(), str(REPO / "spark" / "cdc_stream.py"),
            *stream_args(settings["KAFKA_BOOTSTRAP_SERVERS"], settings["CASSANDRA_KEYSPACE"], str(checkpoint)),
            "--trigger-seconds", "0.5"]
    log = open(checkpoint.parent / "stream.log", "ab")  # noqa: SIM115 - owned by the child
    return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def test_a_killed_stream_restarts_without_loss_duplicates_or_regression(dagbag, cdc_ready, pg, cassandra, settings,
                                                                       tmp_path):
    _delete_test_rows(pg)
    wait_for_debezium(pg)
    # start from where the tests' stream has got to, not from the start of the topics' history
    run_dag(dagbag, "cdc_stream", {"mode": "available_now"})
    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(TEST_CHECKPOINT, checkpoint)
    key = (SYMBOLS[0], "1m", T0)
    stop = threading.Event()
    written = {"n": 0}

    def writer() -> None:
        import psycopg2

        conn = psycopg2.connect(host=settings["POSTGRES_HOST"], port=settings["POSTGRES_PORT"],
                                dbname=settings["POSTGRES_DB"], user=settings["POSTGRES_USER"],
                                password=settings["POSTGRES_PASSWORD"])
        n = 0
        deadline = time.monotonic() + 40
        while not stop.is_set() and time.monotonic() < deadline:
            n += 1
            # the same kline updated over and over (its final value must win), and new trades
            load(conn, "klines", [Kline(*key, Decimal(1), Decimal(n), Decimal(1), Decimal(n), Decimal(n),
                                        T0 + timedelta(seconds=59), Decimal(1), n)])
            load(conn, "recent_trades", [Trade(SYMBOLS[0], 5000 + n, Decimal(n), Decimal("0.1"), Decimal(n) / 10,
                                               T0, False)])
            if n % 10 == 0:
                with conn.cursor() as cur:
                    cur.execute("DELETE FROM binance.recent_trades WHERE symbol = %s AND trade_id = %s",
                                (SYMBOLS[0], 5000 + n - 5))
                conn.commit()
            written["n"] = n
            time.sleep(0.05)
        conn.close()

    proc = _spark_submit(settings, checkpoint)
    thread = threading.Thread(target=writer, daemon=True)
    try:
        thread.start()
        time.sleep(25)  # JVM start-up plus a few micro-batches
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        killed_at = written["n"]
        time.sleep(2)
        proc = _spark_submit(settings, checkpoint)
        time.sleep(8)
        stop.set()
        thread.join(timeout=30)
        assert written["n"] > killed_at > 0, "no writes happened around the kill"
        wait_for_debezium(pg)
        deadline = time.monotonic() + 120
        while True:
            try:
                _assert_cassandra_equals_postgres(pg, cassandra)
                break
            except AssertionError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(2)
    finally:
        stop.set()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    row = cassandra.execute("SELECT close_price, num_trades, cdc_source_ts, writetime(close_price) AS wt FROM klines "
                            "WHERE symbol = %s AND interval = %s AND bucket = %s AND open_time = %s",
                            (*key[:2], TABLES["klines"].bucket_of(key[2]), key[2])).one()
    assert row.num_trades == written["n"] and row.close_price == Decimal(written["n"])
    assert _is_commit_time(row)


def _end_offsets(settings) -> dict[TopicPartition, int]:
    consumer = Consumer({"bootstrap.servers": settings["KAFKA_BOOTSTRAP_SERVERS"], "group.id": "cdc-test-peek",
                         "enable.auto.commit": False})
    try:
        topics = [t for t in consumer.list_topics(timeout=10).topics if t.startswith("binance.binance.")]
        out = {}
        for topic in topics:
            for p in consumer.list_topics(topic, timeout=10).topics[topic].partitions:
                out[TopicPartition(topic, p)] = consumer.get_watermark_offsets(TopicPartition(topic, p),
                                                                               timeout=10)[1]
        return out
    finally:
        consumer.close()


def test_rerunning_cdc_setup_changes_nothing_and_does_not_resnapshot(dagbag, cdc_ready, settings, pg):
    wait_for_debezium(pg)
    before = _end_offsets(settings)
    run = run_dag(dagbag, "cdc_setup")
    outcome = next(ti for ti in run.get_task_instances() if ti.task_id == "register_connector").xcom_pull(
        task_ids="register_connector")
    assert outcome == "unchanged"
    time.sleep(5)
    consumer = Consumer({"bootstrap.servers": settings["KAFKA_BOOTSTRAP_SERVERS"], "group.id": "cdc-test-resnap",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    try:
        consumer.assign([TopicPartition(tp.topic, tp.partition, off) for tp, off in before.items()])
        snapshot_events = 0
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error() or msg.value() is None:
                continue
            if json.loads(msg.value()).get("op") == "r":
                snapshot_events += 1
    finally:
        consumer.close()
    assert snapshot_events == 0
    status = requests.get(f"{settings['KAFKA_CONNECT_URL']}/connectors/binance-postgres/status", timeout=10).json()
    assert status["connector"]["state"] == "RUNNING"


def test_a_poison_message_is_dead_lettered_and_the_stream_goes_on(dagbag, cdc_ready, pg, cassandra, settings):
    from confluent_kafka import Producer

    _delete_test_rows(pg)
    producer = Producer({"bootstrap.servers": settings["KAFKA_BOOTSTRAP_SERVERS"]})
    delivered = []
    producer.produce("binance.binance.klines", key=b'{"symbol":"CDCAUSDT"}', value=b'{"op": "c", "after": {trunc',
                     on_delivery=lambda err, msg: delivered.append((err, msg.partition(), msg.offset())))
    producer.flush(10)
    assert delivered and delivered[0][0] is None
    _, partition, offset = delivered[0]
    load(pg, "latest_prices", [LatestPrice(SYMBOLS[1], Decimal("42.00000001"), T0)])
    wait_for_debezium(pg)
    run_dag(dagbag, "cdc_stream", {"mode": "available_now"})
    letter = cassandra.execute("SELECT raw_value, error FROM dead_letters WHERE topic = %s AND partition = %s "
                               "AND offset = %s", ("binance.binance.klines", partition, offset)).one()
    assert letter is not None and letter.raw_value.startswith('{"op": "c"')
    assert "not a Debezium change event" in letter.error
    _assert_cassandra_equals_postgres(pg, cassandra)
