"""The reconciliation's decisions (include/health/reconcile.py) and its canonical row text
(include/health/canonical.py), with no services: the text and hash of a row in Python and the SQL
that computes them in Postgres, slices and buckets, the lag rule, repair planning and its bounds,
the full pass, the settings. The SQL side runs against the real Postgres in
tests/integration/test_reconciliation.py."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from include.health import canonical, reconcile_io
from include.health import reconcile as rc
from include.tables import TABLES

TRADES = TABLES["recent_trades"]
KLINES = TABLES["klines"]
PRICES = TABLES["latest_prices"]
NOW = datetime(2026, 1, 2, 3, 30, 15, tzinfo=UTC)
HOUR = datetime(2026, 1, 2, 3, tzinfo=UTC)


# --------------------------------------------------------------------------- the canonical text


@pytest.mark.parametrize(("value", "postgres"), [
    # Debezium sends BigDecimal.toString(): an exponent below 1E-6; the stream writes Decimal(that text)
    (Decimal("1E-8"), "0.00000001"),
    (Decimal("0E-8"), "0.00000000"),
    (Decimal("1.0E-7"), "0.00000010"),
    (Decimal("1E+2"), "100"),
    (Decimal("123.4500"), "123.4500"),
    (Decimal("-0.000001"), "-0.000001"),
    (Decimal("1000000000000000000000.5"), "1000000000000000000000.5"),
    (Decimal("12E-3"), "0.012"),
])
def test_a_decimal_is_written_as_postgres_prints_the_numeric(value, postgres):
    assert canonical.value_text("numeric", value) == postgres
    # the scale Cassandra keeps is the source's: the same text from the value Postgres returns
    assert canonical.value_text("numeric", Decimal(postgres)) == postgres


def test_str_of_a_decimal_is_not_postgres_text_for_small_or_scaled_numbers():
    """Why the canonical text does not use str(): it switches to an exponent."""
    assert str(Decimal("0.00000001")) == "1E-8"
    assert str(Decimal("1E+2")) == "1E+2"
    assert canonical.value_text("numeric", Decimal("0.00000001")) == "0.00000001"


def test_times_are_epoch_milliseconds_floored_in_utc_whatever_the_driver_hands_back():
    aware = datetime(2026, 1, 2, 3, 4, 5, 678999, tzinfo=UTC)
    naive = datetime(2026, 1, 2, 3, 4, 5, 678000)  # the Cassandra driver: naive UTC, milliseconds
    assert canonical.value_text("timestamptz", aware) == canonical.value_text("timestamptz", naive) == "1767323045678"
    assert canonical.value_text("timestamptz", datetime(1969, 12, 31, 23, 59, 59, 999500, tzinfo=UTC)) == "-1"


def test_other_types_and_null():
    assert canonical.value_text("boolean", True) == "t" and canonical.value_text("boolean", False) == "f"
    assert canonical.value_text("bigint", -5) == "-5"
    assert canonical.value_text("text", "É'\\x") == "É'\\x"
    assert canonical.value_text("numeric", None) == canonical.NULL_TEXT == "\x1e"


def test_a_rows_text_and_hash():
    row = ("BTCUSDT", 7, Decimal("1E-8"), Decimal("0.5"), Decimal("5E-9"),
           datetime(2026, 1, 2, 3, 4, 5, 678000), None)
    text = canonical.row_text(TRADES, row)
    assert text == "\x1f".join(["BTCUSDT", "7", "0.00000001", "0.5", "0.000000005", "1767323045678", "\x1e"])
    expected = int(hashlib.md5(text.encode()).hexdigest()[:15], 16)
    assert canonical.row_hash(TRADES, row) == expected < 2 ** 60


def test_the_sql_builds_the_same_text_column_by_column():
    sql = canonical.sql_row_text(TRADES)
    assert sql == (
        'coalesce("symbol", chr(30)) || chr(31) || coalesce("trade_id"::text, chr(30)) || chr(31) || '
        'coalesce("price"::text, chr(30)) || chr(31) || coalesce("qty"::text, chr(30)) || chr(31) || '
        'coalesce("quote_qty"::text, chr(30)) || chr(31) || '
        'coalesce(floor(extract(epoch FROM "time") * 1000)::bigint::text, chr(30)) || chr(31) || '
        "coalesce(CASE \"is_buyer_maker\" WHEN true THEN 't' WHEN false THEN 'f' END, chr(30))")
    assert chr(30) == canonical.NULL_TEXT and chr(31) == canonical.SEP
    assert canonical.sql_row_hash(TRADES, "t") == (
        f"('x' || substr(md5({canonical.sql_row_text(TRADES, 't')}), 1, 15))::bit(60)::bigint")
    assert 't."symbol"' in canonical.sql_row_hash(TRADES, "t")


def test_every_table_has_sql_for_every_column():
    for table in TABLES.values():
        sql = canonical.sql_row_text(table)
        assert sql.count("coalesce(") == len(table.columns)


def test_the_slice_sums_group_by_prefix_and_minute_in_one_range():
    sql = reconcile_io.sums_sql(KLINES, "binance")
    assert sql.startswith('SELECT "symbol", "interval", floor(extract(epoch FROM "open_time") / 60)::bigint AS minute')
    assert 'FROM "binance"."klines" WHERE "open_time" >= %s AND "open_time" < %s' in sql
    assert sql.endswith('GROUP BY "symbol", "interval", minute')
    assert f"count(*), sum({canonical.sql_row_hash(KLINES)}), sum(xmin::text::bigint) FROM" in sql
    # the second read of the source: counts and xmin sums only, no hashing
    changes = reconcile_io.sums_sql(KLINES, "binance", content=False)
    assert "md5" not in changes and "count(*), sum(xmin::text::bigint) FROM" in changes


# --------------------------------------------------------------------------- slices and buckets


def test_slices_are_epoch_minutes_and_map_to_their_bucket():
    moment = datetime(2026, 1, 2, 3, 4, 59, 999000, tzinfo=UTC)
    minute = rc.slice_of(moment)
    assert rc.slice_start(minute) == datetime(2026, 1, 2, 3, 4, tzinfo=UTC)
    assert rc.slice_of(datetime(2026, 1, 2, 3, 4, 59, 999000)) == minute  # naive is UTC
    assert rc.bucket_of_slice(TRADES, minute) == HOUR
    assert rc.bucket_of_slice(KLINES, minute) == datetime(2026, 1, 2, tzinfo=UTC)
    assert rc.slice_of(datetime(1969, 12, 31, 23, 59, 30, tzinfo=UTC)) == -1


def test_recent_buckets_are_the_newest_first():
    assert rc.recent_buckets(TRADES, NOW, 2) == [HOUR, HOUR - timedelta(hours=1)]
    assert rc.recent_buckets(KLINES, NOW, 1) == [datetime(2026, 1, 2, tzinfo=UTC)]


def test_only_buckets_every_store_keeps_whole_are_compared():
    # trades kept 48 h in binance, Cassandra 24 h, the bridge 6 h: the bridge's horizon decides
    horizons = [NOW - timedelta(hours=48), NOW - timedelta(hours=24), NOW - timedelta(hours=6)]
    first = rc.first_comparable(TRADES, horizons)
    assert first == datetime(2026, 1, 1, 22, tzinfo=UTC)  # 21:30 + 10 min margin, the next hour
    assert first >= horizons[2] + rc.RETENTION_MARGIN
    assert rc.first_comparable(KLINES, [None, None, None]) is None


def _sums(*rows):
    """{(prefix, minute): (count, checksum)} from (symbol, minute offset from HOUR, count, checksum)."""
    base = rc.slice_of(HOUR)
    return {((s,), base + m): (c, h) for s, m, c, h in rows}


def test_a_bucket_is_compared_slice_by_slice_and_reported_with_its_differing_minutes():
    source = _sums(("A", 0, 2, 10), ("A", 5, 1, 7), ("A", 59, 1, 3), ("B", 1, 1, 4))
    copy = _sums(("A", 0, 2, 10), ("A", 5, 1, 8), ("A", 59, 1, 3), ("A", 61, 1, 1), ("B", 1, 1, 4))
    parts = [(("A",), HOUR), (("B",), HOUR)]
    out = rc.compare(TRADES, rc.CASSANDRA, source, copy, parts, lambda key: False)
    [d] = out.differences
    assert (d.prefix, d.bucket, d.store) == (("A",), HOUR, "cassandra")
    assert d.slices == (rc.slice_of(HOUR) + 5,)
    assert (d.source_count, d.store_count, d.source_checksum, d.store_checksum) == (4, 4, 20, 21)
    # minute 61 is the next hour's bucket, not in the partitions compared
    assert out.equal == {(("B",), HOUR)} and out.slices_compared == 4


def test_a_stray_row_in_a_minute_the_source_does_not_have_differs():
    out = rc.compare(TRADES, rc.BRIDGE, _sums(("A", 0, 1, 5)), _sums(("A", 0, 1, 5), ("A", 9, 1, 6)),
                     [(("A",), HOUR)], lambda key: False)
    [d] = out.differences
    assert d.slices == (rc.slice_of(HOUR) + 9,) and (d.source_count, d.store_count) == (1, 2)


# --------------------------------------------------------------------------- the lag rule


def test_a_minute_that_changed_in_the_source_during_the_check_is_in_flight_not_a_divergence():
    first = _sums(("A", 0, 2, 10), ("A", 1, 1, 5))
    # the stream is behind for minute 1: its new row reached the source between the reads, not Cassandra
    second = _sums(("A", 0, 2, 10), ("A", 1, 2, 9))
    cassandra = _sums(("A", 0, 2, 10), ("A", 1, 1, 5))
    assert rc.stable(first, second) == {(("A",), rc.slice_of(HOUR))}
    out = rc.compare(TRADES, rc.CASSANDRA, first, cassandra, [(("A",), HOUR)],
                     rc.in_flight_for_cassandra(first, second))
    assert not out.differences and out.slices_in_flight == 1 and out.slices_compared == 1
    # a minute that appeared or vanished between the reads is in flight too
    assert rc.in_flight_for_cassandra(first, {})((("A",), rc.slice_of(HOUR)))


def test_a_stable_minute_that_differs_is_a_divergence():
    first = second = _sums(("A", 0, 2, 10))
    cassandra = _sums(("A", 0, 2, 11))  # a value changed outside the pipeline
    out = rc.compare(TRADES, rc.CASSANDRA, first, cassandra, [(("A",), HOUR)],
                     rc.in_flight_for_cassandra(first, second))
    assert len(out.differences) == 1


def test_the_bridge_leaves_out_minutes_holding_keys_it_has_not_copied_yet():
    first = second = _sums(("A", 0, 2, 10), ("A", 3, 1, 4), ("B", 0, 1, 1))
    # the bridge lags: minute 3 of A has a logged key it has not copied; B's key has no known minute
    bridge = _sums(("A", 0, 2, 10), ("B", 0, 0, 0))
    pending = {(("A",), rc.slice_of(HOUR) + 3)}
    in_flight = rc.in_flight_for_bridge(first, second, pending, {(("B",), HOUR)}, TRADES)
    out = rc.compare(TRADES, rc.BRIDGE, first, bridge, [(("A",), HOUR), (("B",), HOUR)], in_flight)
    assert not out.differences and out.equal == {(("A",), HOUR)} and out.slices_in_flight == 2
    # without the pending key, minute 3 is a divergence
    out = rc.compare(TRADES, rc.BRIDGE, first, bridge, [(("A",), HOUR)],
                     rc.in_flight_for_bridge(first, second, set(), set(), TRADES))
    assert [d.slices for d in out.differences] == [(rc.slice_of(HOUR) + 3,)]


class _Pg:
    """A cursor that answers the slot query from a script of confirmed/not."""

    def __init__(self, confirmed):
        self.confirmed = list(confirmed)

    def cursor(self):
        pg = self

        class Cursor:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

            def execute(self, sql, params=None):
                self.row = pg.confirmed.pop(0) if len(pg.confirmed) > 1 else pg.confirmed[0]

            def fetchone(self):
                return None if self.row is None else (self.row, "0/1", "reserved")

        return Cursor()

    def rollback(self):
        pass


class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t

    def sleep(self, seconds):
        self.t += seconds


@pytest.fixture
def kafka(monkeypatch):
    """Kafka's end offsets and the stream's applied offsets, set by the test."""
    state = {"end": {("binance.binance.klines", 0): 10}, "done": [{}]}

    def done(session, keyspace):
        answers = state["done"]
        current = answers.pop(0) if len(answers) > 1 else answers[0]
        return {tp: type("Row", (), {"next_offset": n})() for tp, n in current.items()}

    monkeypatch.setattr(reconcile_io, "kafka_end_offsets", lambda admin: state["end"])
    monkeypatch.setattr(reconcile_io, "processed_offsets", done)
    return state


def test_the_fence_waits_for_debezium_then_for_the_stream(kafka):
    clock = _Clock()
    kafka["done"] = [{("binance.binance.klines", 0): 7}, {("binance.binance.klines", 0): 10}]
    assert reconcile_io.wait_for_stream(_Pg([False, False, True]), None, None, "ks", "0/10", ["klines"], 30,
                                        clock.sleep, clock) is None
    assert clock.t == 2.5


def test_a_stream_held_back_is_reported_as_behind_not_as_a_divergence(kafka):
    clock = _Clock()
    kafka["done"] = [{("binance.binance.klines", 0): 4}]
    reason = reconcile_io.wait_for_stream(_Pg([True]), None, None, "ks", "0/10", ["klines"], 30, clock.sleep, clock)
    assert reason.startswith("the stream has not applied 6 event(s) within 30s (klines[0] 6)")
    reason = reconcile_io.wait_for_stream(_Pg([False]), None, None, "ks", "0/10", ["klines"], 5, clock.sleep, clock)
    assert "Debezium has not confirmed WAL position 0/10 within 5s" in reason
    assert "does not exist" in reconcile_io.wait_for_stream(_Pg([None]), None, None, "ks", "0/10", ["klines"], 5,
                                                            clock.sleep, clock)


def test_topics_of_other_tables_do_not_hold_the_fence(kafka):
    clock = _Clock()
    kafka["end"] = {("binance.binance.klines", 0): 10, ("binance.binance.debezium_heartbeat", 0): 99}
    kafka["done"] = [{("binance.binance.klines", 0): 10}]
    assert reconcile_io.wait_for_stream(_Pg([True]), None, None, "ks", "0/1", ["klines"], 5, clock.sleep, clock) is None


# --------------------------------------------------------------------------- repairs


def _diff(table="recent_trades", prefix=("A",), bucket=HOUR, store=rc.CASSANDRA, minutes=(3,)):
    base = rc.slice_of(bucket)
    return rc.Difference(table, prefix, bucket, store, 1, 1, 1, 2, tuple(base + m for m in minutes))


def test_a_repair_covers_the_differing_minutes_of_every_store_of_its_bucket():
    repairs, waiting = rc.plan_repairs([_diff(minutes=(3, 7)), _diff(store=rc.BRIDGE, minutes=(5, 9))], {},
                                       rc.Settings(), NOW)
    assert not waiting
    assert repairs == [rc.Repair("recent_trades", ("A",), HOUR, HOUR + timedelta(minutes=3),
                                 HOUR + timedelta(minutes=10), (rc.CASSANDRA, rc.BRIDGE))]


def test_repairs_are_bounded_per_run_newest_first_and_not_repeated_too_soon():
    diffs = [_diff(prefix=(f"S{i}",), bucket=HOUR - timedelta(hours=i)) for i in range(5)]
    settings = rc.Settings(max_repairs_per_run=2, min_repair_interval_seconds=300)
    recently = {(*diffs[0].key, rc.CASSANDRA): NOW - timedelta(seconds=100),
                (*diffs[1].key, rc.CASSANDRA): NOW - timedelta(seconds=400)}
    repairs, waiting = rc.plan_repairs(diffs, recently, settings, NOW)
    # S0 was repaired 100 s ago: its snapshot is on its way; S1's was long enough ago: again
    assert [r.prefix for r in repairs] == [("S1",), ("S2",)]
    on_its_way = waiting[(*diffs[0].key, rc.CASSANDRA)]
    assert "still on its way" in on_its_way and "03:28:35" in on_its_way
    assert all("max_repairs_per_run 2" in waiting[(*d.key, rc.CASSANDRA)] for d in diffs[3:])
    assert set(waiting) == {(*d.key, rc.CASSANDRA) for d in [diffs[0], *diffs[3:]]}


def test_a_store_whose_bucket_was_repaired_only_for_the_other_store_is_repaired_at_once():
    # the bridge's difference was in flight when Cassandra's was repaired: it was never acted on
    diffs = [_diff(minutes=(3,)), _diff(store=rc.BRIDGE, minutes=(5,))]
    recently = {(*diffs[0].key, rc.CASSANDRA): NOW - timedelta(seconds=30)}
    repairs, waiting = rc.plan_repairs(diffs, recently, rc.Settings(min_repair_interval_seconds=300), NOW)
    assert repairs == [rc.Repair("recent_trades", ("A",), HOUR, HOUR + timedelta(minutes=5),
                                 HOUR + timedelta(minutes=6), (rc.BRIDGE,))]
    cassandra = (*diffs[0].key, rc.CASSANDRA)
    assert list(waiting) == [cassandra] and "still on its way" in waiting[cassandra]


def test_rows_are_sorted_into_missing_different_and_stray():
    source = {("A", 1): 10, ("A", 2): 20, ("A", 3): 30}
    copy = {("A", 2): 21, ("A", 3): 30, ("A", 4): 40}
    assert rc.row_differences(source, copy) == ([("A", 1)], [("A", 2)], [("A", 4)])


def test_a_repair_says_what_it_did():
    done = reconcile_io.RepairDone(True, 2, 1, ["repair-20260102T033015-00ff"])
    assert done.action() == ("incremental snapshot of its differing minutes requested from Debezium (signal "
                             "repair-20260102T033015-00ff); 2 row(s) the source does not hold deleted from "
                             "Cassandra; 1 row(s) the source does not hold deleted from the bridge")
    text = rc.describe(_diff(minutes=(3,)), "repaired")
    assert text == ("recent_trades A bucket 2026-01-02 03:00 in cassandra: 1 row(s) against 1 in binance, "
                    "checksums differ at minute(s) 03:03 -> repaired")


# --------------------------------------------------------------------------- the full pass


def test_a_full_pass_starts_on_its_cadence_or_when_a_resnapshot_asks():
    settings = rc.Settings(full_every_minutes=360)
    assert rc.full_pass_due(rc.Cursor(), settings, NOW)
    done = rc.Cursor(NOW - timedelta(hours=1))
    assert not rc.full_pass_due(done, settings, NOW)
    assert rc.full_pass_due(done, settings, NOW, requested_at=NOW - timedelta(minutes=5))
    assert not rc.full_pass_due(done, settings, NOW, requested_at=NOW - timedelta(hours=2))
    assert rc.full_pass_due(rc.Cursor(NOW - timedelta(hours=6)), settings, NOW)
    assert rc.full_pass_due(rc.Cursor(NOW - timedelta(minutes=1), "klines", HOUR), settings, NOW)


def test_the_full_pass_goes_table_by_table_and_resumes_at_its_cursor():
    day = datetime(2026, 1, 1, tzinfo=UTC)
    ranges = {"latest_prices": (day - timedelta(days=1), day), "daily_ticker": None,
              "klines": (day, day), "recent_trades": (HOUR - timedelta(hours=3), HOUR - timedelta(hours=2))}
    everything = list(rc.full_pass_buckets(ranges, rc.Cursor(NOW, "latest_prices", None)))
    assert everything == [("latest_prices", day - timedelta(days=1)), ("latest_prices", day), ("klines", day),
                          ("recent_trades", HOUR - timedelta(hours=3)), ("recent_trades", HOUR - timedelta(hours=2))]
    resumed = list(rc.full_pass_buckets(ranges, rc.Cursor(NOW, "recent_trades", HOUR - timedelta(hours=2))))
    assert resumed == everything[-1:]


# --------------------------------------------------------------------------- settings


def test_settings_default_and_take_any_subset():
    assert rc.Settings.from_json(None) == rc.Settings() == rc.Settings.from_json("")
    s = rc.Settings.from_json('{"recent_buckets": 3, "full_every_minutes": "60", "max_repairs_per_run": 1}')
    assert (s.recent_buckets, s.full_every_minutes, s.max_repairs_per_run) == (3, 60.0, 1)
    assert isinstance(s.recent_buckets, int) and s.min_repair_interval_seconds == 300


@pytest.mark.parametrize(("raw", "named"), [
    ("{nope", "not valid JSON"),
    ("[1]", "must be a JSON object"),
    ('{"recent": 2}', "unknown keys ['recent']"),
    ('{"recent_buckets": 1.5}', "reconciliation.recent_buckets must be a int"),
    ('{"recent_buckets": true}', "reconciliation.recent_buckets must be a int"),
    ('{"recent_buckets": 0}', "must be positive"),
    ('{"fence_timeout_seconds": -1}', "must be positive"),
])
def test_bad_settings_name_what_is_wrong(raw, named):
    with pytest.raises(rc.ReconcileSettingsError) as err:
        rc.Settings.from_json(raw)
    assert named in str(err.value)


class _Reads:
    """CassandraReads' prepare and paged over rows given as the Cassandra driver returns them."""

    keyspace = "ks"

    def __init__(self, rows):
        self.rows, self.asked = rows, []

    def prepare(self, cql):
        return cql

    def paged_each(self, stmt, params):
        params = list(params)
        self.asked.append((stmt, params))
        return [(p, iter(self.rows if i == 0 else [])) for i, p in enumerate(params)]


def test_cassandras_rows_are_summed_like_the_sources_rows_per_minute():
    """What the stream wrote (Decimal from Debezium's text, times at the millisecond, naive UTC from
    the driver) sums to what Postgres's rows sum to."""
    at = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    source = [("BTCUSDT", 1, Decimal("0.00000001"), Decimal("2.50"), Decimal("0.000000025"), at, True),
              ("BTCUSDT", 2, Decimal("100"), Decimal("0.5"), Decimal("50.0"), at + timedelta(seconds=70), False)]
    from_cassandra = [("BTCUSDT", 1, Decimal("1E-8"), Decimal("2.50"), Decimal("2.5E-8"), at.replace(tzinfo=None),
                       True, HOUR.replace(tzinfo=None)),
                      ("BTCUSDT", 2, Decimal("1E+2"), Decimal("0.5"), Decimal("50.0"),
                       (at + timedelta(seconds=70)).replace(tzinfo=None), False, HOUR.replace(tzinfo=None))]
    reads = _Reads(from_cassandra)
    sums: dict = {}
    assert reconcile_io.cassandra_sums(reads, TRADES, [(("BTCUSDT",), HOUR)], sums) == 2
    expected = {(("BTCUSDT",), rc.slice_of(r[5])): (1, canonical.row_hash(TRADES, r)) for r in source}
    assert sums == expected
    stmt, params = reads.asked[0]
    assert stmt == ('SELECT "symbol", "trade_id", "price", "qty", "quote_qty", "time", "is_buyer_maker", "bucket" '
                    'FROM "ks"."recent_trades" WHERE "symbol" = ? AND "bucket" = ?')
    assert params == [("BTCUSDT", HOUR)]


def test_a_row_whose_time_left_its_bucket_counts_in_the_buckets_first_minute():
    moved = [("BTCUSDT", 1, Decimal("1"), Decimal("1"), Decimal("1"), datetime(2026, 1, 2, 9, 0), True,
              HOUR.replace(tzinfo=None))]
    sums: dict = {}
    reconcile_io.cassandra_sums(_Reads(moved), TRADES, [(("BTCUSDT",), HOUR)], sums)
    assert list(sums) == [(("BTCUSDT",), rc.slice_of(HOUR))]


class _Refusing(_Reads):
    """Each partition's rows from `by_symbol`; the read of `refused` fails after its first row (on a
    later page), with `error`."""

    def __init__(self, by_symbol, refused, error):
        super().__init__([])
        self.by_symbol, self.refused, self.error = by_symbol, refused, error

    def paged_each(self, stmt, params):
        for p in params:
            yield p, self._rows(p)

    def _rows(self, p):
        yield from self.by_symbol[p[0]]
        if p[0] == self.refused:
            raise self.error


def _trade(symbol, trade_id):
    return (symbol, trade_id, Decimal("1"), Decimal("1"), Decimal("1"), datetime(2026, 1, 2, 3, 4), True,
            HOUR.replace(tzinfo=None))


def _read_failure(code):
    from cassandra import ReadFailure

    return ReadFailure("Error from server: code=1300 [Replica(s) failed to execute read]", consistency=1,
                       required_responses=1, received_responses=0, failures=1, error_code_map={"127.0.0.1": code})


def test_a_partition_refused_for_its_tombstones_is_named_and_none_of_its_rows_counted():
    from cassandra import ReadFailure

    by_symbol = {"A": [_trade("A", 1)], "B": [_trade("B", 2)]}
    parts = [(("A",), HOUR), (("B",), HOUR)]
    sums: dict = {}
    unreadable: list = []
    refusing = _Refusing(by_symbol, "A", _read_failure(reconcile_io.TOMBSTONE_OVERWHELM))
    assert reconcile_io.cassandra_sums(refusing, TRADES, parts, sums, unreadable) == 1
    assert unreadable == [(("A",), HOUR)]
    # A's first page is not counted, B is read on
    at = datetime(2026, 1, 2, 3, 4, tzinfo=UTC)
    assert sums == {(("B",), rc.slice_of(at)): (1, canonical.row_hash(TRADES, ("B", 2, Decimal("1"), Decimal("1"),
                                                                               Decimal("1"), at, True)))}
    # without a list to name it in, the refusal is raised; any other read failure always is
    with pytest.raises(ReadFailure):
        reconcile_io.cassandra_sums(refusing, TRADES, parts, {})
    other = _Refusing(by_symbol, "A", _read_failure(0x0000))
    with pytest.raises(ReadFailure):
        reconcile_io.cassandra_sums(other, TRADES, parts, {}, [])


def test_a_bucket_empty_everywhere_is_equal_so_an_old_difference_there_closes():
    out = rc.compare(TRADES, rc.CASSANDRA, {}, {}, [(("GONE",), HOUR)], lambda key: False)
    assert out.equal == {(("GONE",), HOUR)} and not out.differences
    # but a bucket whose every minute is in flight is neither
    first = _sums(("A", 0, 1, 1))
    out = rc.compare(TRADES, rc.CASSANDRA, first, {}, [(("A",), HOUR)], lambda key: True)
    assert not out.equal and not out.differences and out.slices_in_flight == 1


class _LoggedKeys:
    """CassandraReads.changed_keys over keys given by the test (as the stream logs them)."""

    def __init__(self, keys):
        self.keys, self.asked = keys, []

    def changed_keys(self, table, minutes, chunk):
        self.asked.append((table, list(minutes)))
        yield set(self.keys)


class _TimesPg:
    """Answers _times_of's lookup with the times of the rows it knows (source, then bridge)."""

    def __init__(self, rows):
        self.rows = rows

    def cursor(self):
        pg = self

        class Cursor:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

            def execute(self, sql, params=None):
                self.found = [(*k, t) for k, t in pg.rows.items()
                              if k in set(zip(*params, strict=True))] if "binance" in sql else []

            def fetchall(self):
                return self.found

        return Cursor()

    def rollback(self):
        pass


def test_the_bridges_pending_keys_mark_their_minutes_or_their_bucket_when_no_minute_is_known():
    from include.cdc.events import encode_key

    at = HOUR + timedelta(minutes=7, seconds=3)
    known = encode_key(TRADES, {"symbol": "A", "bucket": HOUR, "trade_id": 1})
    gone = encode_key(TRADES, {"symbol": "B", "bucket": HOUR, "trade_id": 2})
    reads = _LoggedKeys([known, gone])
    slices, buckets = reconcile_io.bridge_pending(reads, _TimesPg({("A", 1): at}), TRADES, HOUR,
                                                  HOUR + timedelta(minutes=2))
    # the trade still in Postgres: its minute; the one gone from both: its whole bucket
    assert slices == {(("A",), rc.slice_of(at))} and buckets == {(("B",), HOUR)}
    assert reads.asked == [("recent_trades", [HOUR, HOUR + timedelta(minutes=1), HOUR + timedelta(minutes=2)])]
    # a table whose key holds the time: the minute comes from the key itself
    price = encode_key(PRICES, {"symbol": "A", "bucket": datetime(2026, 1, 2, tzinfo=UTC), "time": at})
    slices, buckets = reconcile_io.bridge_pending(_LoggedKeys([price]), None, PRICES, HOUR, HOUR)
    assert slices == {(("A",), rc.slice_of(at))} and not buckets
