"""The reconciliation's decisions, pure (no database, no driver): what to compare, when a difference
is real and not a stage that is merely behind, and what to repair, how much and how often.

What is compared. Per table, per partition-key prefix (symbol, and interval for klines) and
Cassandra time bucket: the rows' count and the sum of their hashes (include/health/canonical.py)
in Postgres `binance` (the source), in Cassandra and in Postgres `cassandra` (the bridge). Each
bucket is summed per minute of its rows' time column, a *slice*: the unit that is compared.

The lag rule: a slice is compared only when nothing about it can still be on its way.
1. Stable in the source: the source is read twice, before and after the other stores are read,
   the second time its row count and sum of xmin per slice only (any insert, update or delete
   changes them; no hashing); a slice whose figures differ between the two changed meanwhile, and
   is *in flight*. So changes committed after the first read cannot make a difference: in a
   stable slice there were none.
2. The stream caught up: before Cassandra is read, Debezium has confirmed a WAL position past the
   first read (the slot's confirmed_flush_lsn: every change committed before it is in Kafka), and
   the stream has applied every Kafka offset that existed once that was so (stream_offsets). If
   that does not happen within `fence_timeout_seconds` (a stream stopped, paused, or held back),
   Cassandra and the bridge are not compared this run: a stream that is behind is not a divergence.
3. The bridge caught up: a slice holding a key the stream has logged since the bridge's watermark
   (changed_rows, minutes from the bridge's watermark on) is in flight for the bridge; so is every
   slice of a table whose bridge watermark is older than `max_bridge_lag_minutes`, or that the
   bridge has never copied.
4. Inside every store's retention: a bucket that starts before any store's horizon (plus a margin)
   is not compared; its rows leave the stores at slightly different times.
A compared slice that differs is a divergence at once (no second run needed): under 1 and 2 the
stores cannot legitimately differ in it.

Cadence and cost: every run compares the `recent_buckets` newest buckets of every prefix; a full
pass over the whole history (within retention) starts every `full_every_minutes` and reads at most
`full_rows_per_run` source rows a run, continuing from a cursor. Settings: the Variable
`reconciliation` (JSON, `Settings`).

Repairs: a bucket that differs is repaired through Debezium (an incremental snapshot of its
differing minutes, include/cdc/signals.py) and by deleting downstream the rows the source does not
hold; at most `max_repairs_per_run` buckets a run, the same bucket at most once every
`min_repair_interval_seconds`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any

from include.tables import TABLES, Table
from include.times import EPOCH, as_utc

# the stores compared with the source, in copy order
CASSANDRA, BRIDGE = "cassandra", "bridge"
STORES = (CASSANDRA, BRIDGE)
SLICE = timedelta(minutes=1)
# a bucket is compared only when it starts this long after every store's retention horizon
RETENTION_MARGIN = timedelta(minutes=10)

Prefix = tuple[Any, ...]
# (prefix, epoch minute of the time column)
SliceKey = tuple[Prefix, int]
# per slice: (rows, sum of row hashes)
Sums = Mapping[SliceKey, tuple[int, int]]


class ReconcileSettingsError(ValueError):
    """The Variable `reconciliation` holds something unusable (the message names it)."""


@dataclass(frozen=True)
class Settings:
    """The reconciliation's tunables, from the Variable `reconciliation` (JSON, any subset)."""

    # buckets per prefix compared every run, newest first (the current hour or day, and the one before)
    recent_buckets: int = 2
    # a full pass over every bucket within retention starts this often
    full_every_minutes: float = 360
    # source rows the full pass reads in one run (at least one bucket), in each store
    full_rows_per_run: int = 200_000
    # buckets repaired in one run
    max_repairs_per_run: int = 10
    # the same bucket of a store is not repaired again sooner (its incremental snapshot is still on its way)
    min_repair_interval_seconds: float = 300
    # how long a run waits for Debezium and the stream to catch up with the source's first read
    fence_timeout_seconds: float = 30
    # a bridge watermark older than this: the bridge is behind, not compared
    max_bridge_lag_minutes: float = 10

    @classmethod
    def from_json(cls, raw: str | Mapping[str, Any] | None) -> Settings:
        if raw in (None, ""):
            return cls()
        try:
            values = json.loads(raw) if isinstance(raw, str) else dict(raw or {})
        except json.JSONDecodeError as exc:
            raise ReconcileSettingsError(f"Variable reconciliation is not valid JSON ({exc}): {str(raw)[:100]!r}") \
                from exc
        if not isinstance(values, dict):
            raise ReconcileSettingsError(f"Variable reconciliation must be a JSON object, got {values!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ReconcileSettingsError(f"reconciliation has unknown keys {unknown}; known: {sorted(known)}")
        defaults = cls()
        out = {}
        for name, value in values.items():
            kind = type(getattr(defaults, name))
            try:
                if isinstance(value, bool) or (kind is int and float(value) != int(float(value))):
                    raise ValueError
                out[name] = kind(float(value)) if kind is int else kind(value)
            except (TypeError, ValueError) as exc:
                raise ReconcileSettingsError(f"reconciliation.{name} must be a {kind.__name__}, got {value!r}") \
                    from exc
            if out[name] < (1 if name in ("recent_buckets", "full_rows_per_run") else 0):
                raise ReconcileSettingsError(f"reconciliation.{name} must be positive, got {value!r}")
        return cls(**out)


# --------------------------------------------------------------------------- time: slices and buckets


def slice_of(moment: datetime) -> int:
    """The epoch minute holding `moment` (naive = UTC), floored: a row's slice."""
    delta = as_utc(moment) - EPOCH
    return (delta.days * 86_400 + delta.seconds) // 60


def slice_start(minute: int) -> datetime:
    return EPOCH + minute * SLICE


def bucket_of_slice(table: Table, minute: int) -> datetime:
    return table.bucket_of(slice_start(minute))


def recent_buckets(table: Table, now: datetime, count: int) -> list[datetime]:
    """The `count` newest buckets of `table` up to the one holding `now`, newest first."""
    newest = table.bucket_of(now)
    return [newest - n * table.bucket_span for n in range(count)]


def first_comparable(table: Table, horizons: Iterable[datetime | None]) -> datetime | None:
    """The oldest bucket start that every store keeps whole: after each store's horizon (None: kept
    for ever) by RETENTION_MARGIN, rounded up to a bucket. None when every store keeps everything."""
    limits = [as_utc(h) + RETENTION_MARGIN for h in horizons if h is not None]
    if not limits:
        return None
    limit = max(limits)
    start = table.bucket_of(limit)
    return start if start >= limit else start + table.bucket_span


# --------------------------------------------------------------------------- the lag rule


def stable(first: Sums, second: Sums) -> set[SliceKey]:
    """The slices whose source sums did not change between the two reads (a slice absent from both
    is stable too, and not listed: callers treat a slice missing from both as stable and empty)."""
    return {k for k in set(first) | set(second) if first.get(k) == second.get(k)}


def in_flight_for_cassandra(first: Sums, second: Sums) -> Callable[[SliceKey], bool]:
    """Cassandra's lag rule, once the stream has caught up with the first read: only the slices
    that changed in the source between the two reads are in flight."""
    changed = {k for k in set(first) | set(second) if first.get(k) != second.get(k)}
    return changed.__contains__


def in_flight_for_bridge(first: Sums, second: Sums, pending: Iterable[SliceKey],
                         pending_buckets: Iterable[tuple[Prefix, datetime]],
                         table: Table) -> Callable[[SliceKey], bool]:
    """The bridge's lag rule: a slice changed in the source between the reads, or holding a key the
    stream logged since the bridge's watermark (`pending`; `pending_buckets` for logged keys whose
    minute is not known: their whole bucket) is in flight."""
    changed = {k for k in set(first) | set(second) if first.get(k) != second.get(k)} | set(pending)
    buckets = set(pending_buckets)

    def test(key: SliceKey) -> bool:
        return key in changed or (key[0], bucket_of_slice(table, key[1])) in buckets

    return test


# --------------------------------------------------------------------------- comparison


@dataclass(frozen=True)
class Difference:
    """A bucket of one store that differs from the source, over the slices compared."""

    table: str
    prefix: Prefix
    bucket: datetime
    store: str
    source_count: int
    store_count: int
    source_checksum: int
    store_checksum: int
    # the epoch minutes that differ
    slices: tuple[int, ...]

    @property
    def key(self) -> tuple[str, Prefix, datetime]:
        return self.table, self.prefix, self.bucket


@dataclass
class Comparison:
    """What comparing one store with the source over some buckets found."""

    differences: list[Difference] = field(default_factory=list)
    # buckets with every compared slice equal (and at least one compared)
    equal: set[tuple[Prefix, datetime]] = field(default_factory=set)
    slices_compared: int = 0
    slices_in_flight: int = 0


def compare(table: Table, store: str, source: Sums, copy: Sums, partitions: Iterable[tuple[Prefix, datetime]],
            in_flight: Callable[[SliceKey], bool]) -> Comparison:
    """`copy` (one store's sums) against `source`, bucket by bucket of `partitions` (prefix,
    bucket), slice by slice, leaving out the slices `in_flight` names. A bucket is equal when every
    slice compared is, and at least one was (or neither holds a row)."""
    wanted = set(partitions)
    by_bucket: dict[tuple[Prefix, datetime], set[int]] = {}
    for prefix, minute in set(source) | set(copy):
        part = (prefix, bucket_of_slice(table, minute))
        if part in wanted:
            by_bucket.setdefault(part, set()).add(minute)
    out = Comparison()
    # a partition without a row in either: equal (it may have differed before, and been emptied since)
    out.equal |= wanted - set(by_bucket)
    for (prefix, bucket), minutes in sorted(by_bucket.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        totals = [0, 0, 0, 0]
        differing = []
        compared = 0
        for minute in sorted(minutes):
            key = (prefix, minute)
            if in_flight(key):
                out.slices_in_flight += 1
                continue
            compared += 1
            want, got = source.get(key, (0, 0)), copy.get(key, (0, 0))
            totals[0] += want[0]
            totals[1] += got[0]
            totals[2] += want[1]
            totals[3] += got[1]
            if want != got:
                differing.append(minute)
        out.slices_compared += compared
        if differing:
            out.differences.append(Difference(table.name, prefix, bucket, store, totals[0], totals[1], totals[2],
                                              totals[3], tuple(differing)))
        elif compared:
            out.equal.add((prefix, bucket))
    return out


def row_differences(source: Mapping[tuple[Any, ...], int], copy: Mapping[tuple[Any, ...], int]
                    ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Keyed row hashes of one bucket's differing minutes: (missing from the copy, different,
    in the copy only). The first two come back with an incremental snapshot; the last are deleted."""
    missing = sorted(source.keys() - copy.keys(), key=repr)
    different = sorted((k for k in source.keys() & copy.keys() if source[k] != copy[k]), key=repr)
    stray = sorted(copy.keys() - source.keys(), key=repr)
    return missing, different, stray


# --------------------------------------------------------------------------- repairs


@dataclass(frozen=True)
class Repair:
    """One bucket to repair: an incremental snapshot of the source rows of [start, end) (the
    minutes that differ, in every store), and the stores that differ."""

    table: str
    prefix: Prefix
    bucket: datetime
    start: datetime
    end: datetime
    stores: tuple[str, ...]


StoreKey = tuple[str, Prefix, datetime, str]


def plan_repairs(differences: Sequence[Difference], last_repaired: Mapping[StoreKey, datetime],
                 settings: Settings, now: datetime) -> tuple[list[Repair], dict[StoreKey, str]]:
    """(the buckets to repair this run, why each other (bucket, store) that differs is not repaired now).
    A store's bucket repaired less than min_repair_interval_seconds ago waits for that repair to
    arrive; another store of the same bucket is repaired at once (its difference was not acted on);
    beyond max_repairs_per_run buckets (newest first), the rest wait for the next run."""
    grouped: dict[tuple[str, Prefix, datetime], list[Difference]] = {}
    for d in differences:
        grouped.setdefault(d.key, []).append(d)
    repairs: list[Repair] = []
    waiting: dict[StoreKey, str] = {}
    interval = timedelta(seconds=settings.min_repair_interval_seconds)
    for key in sorted(grouped, key=lambda k: (k[2], k[0], repr(k[1])), reverse=True):
        due = []
        for d in grouped[key]:
            last = last_repaired.get((*key, d.store))
            if last is not None and now - last < interval:
                waiting[(*key, d.store)] = (f"repair requested at {as_utc(last):%H:%M:%S} still on its way (next "
                                            f"one after {as_utc(last + interval):%H:%M:%S})")
            else:
                due.append(d)
        if not due:
            continue
        if len(repairs) >= settings.max_repairs_per_run:
            for d in due:
                waiting[(*key, d.store)] = (f"waiting for a later run (max_repairs_per_run "
                                            f"{settings.max_repairs_per_run} reached)")
            continue
        minutes = sorted({m for d in due for m in d.slices})
        repairs.append(Repair(key[0], key[1], key[2], slice_start(minutes[0]), slice_start(minutes[-1]) + SLICE,
                              tuple(sorted({d.store for d in due}, key=STORES.index))))
    return repairs, waiting


# --------------------------------------------------------------------------- the full pass


@dataclass(frozen=True)
class Cursor:
    """Where the full pass is: started at `pass_started_at` (None: never), next bucket to compare
    `bucket` of `table` (None: the pass is complete)."""

    pass_started_at: datetime | None = None
    table: str | None = None
    bucket: datetime | None = None

    @property
    def running(self) -> bool:
        return self.pass_started_at is not None and self.table is not None


def full_pass_due(cursor: Cursor, settings: Settings, now: datetime, requested_at: datetime | None = None) -> bool:
    """A pass runs while one is under way; a new one starts `full_every_minutes` after the last one
    started, or at once when asked for after it started (`requested_at`: an incremental re-snapshot)."""
    if cursor.running:
        return True
    if cursor.pass_started_at is None:
        return True
    if requested_at is not None and requested_at > cursor.pass_started_at:
        return True
    return now - cursor.pass_started_at >= timedelta(minutes=settings.full_every_minutes)


def full_pass_buckets(ranges: Mapping[str, tuple[datetime, datetime] | None], cursor: Cursor
                      ) -> Iterator[tuple[str, datetime]]:
    """(table, bucket) of the full pass from `cursor` on: tables in include/tables.py order, each
    from its first bucket to its last (`ranges[table]`, both included; None: nothing to compare)."""
    names = list(TABLES)
    start_index = names.index(cursor.table) if cursor.running and cursor.table in names else 0
    for name in names[start_index:]:
        span = ranges.get(name)
        if span is None:
            continue
        table = TABLES[name]
        first, last = span
        bucket = first
        if cursor.running and name == cursor.table and cursor.bucket is not None:
            bucket = max(first, table.bucket_of(cursor.bucket))
        while bucket <= last:
            yield name, bucket
            bucket += table.bucket_span


# --------------------------------------------------------------------------- the verdict


def prefix_text(prefix: Prefix) -> str:
    return " ".join(str(p) for p in prefix)


def describe(d: Difference, action: str) -> str:
    minutes = ", ".join(f"{slice_start(m):%H:%M}" for m in d.slices[:5]) + (" ..." if len(d.slices) > 5 else "")
    return (f"{d.table} {prefix_text(d.prefix)} bucket {as_utc(d.bucket):%Y-%m-%d %H:%M} in {d.store}: "
            f"{d.store_count} row(s) against {d.source_count} in binance, checksums differ at minute(s) {minutes}"
            f" -> {action}")


def now_utc() -> datetime:
    return datetime.now(UTC)
