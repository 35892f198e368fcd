"""Everything the bridge reads from Cassandra, at one consistency level chosen per run (plan.choose_consistency).

Every statement is prepared with that level and pages 5,000 rows at a time (the change log's entries,
up to 100 keys each, 200 at a time). Reads of many partitions keep a few requests in flight (WINDOW)
and hand rows on in order, so what is held is at most the WINDOW pages coming in plus the page being
read, whatever the partitions hold.
"""

from __future__ import annotations

import logging
from collections import defaultdict, deque
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from include.bridge.plan import Position, choose_consistency, replication_factor
from include.cdc.events import decode_key
from include.names import STREAM_QUERY_NAME
from include.tables import Table
from include.times import as_utc

log = logging.getLogger(__name__)

FETCH_SIZE = 5000
# change-log entries per page: an entry holds up to spark.writer.LOG_GROUP_KEYS keys (a few KiB)
CHANGELOG_FETCH_SIZE = 200
# partition reads in flight while a full copy or the change log is read
WINDOW = 8
# changed keys are re-read partition by partition, up to KEYS_PER_READ keys of one partition in a
# request (an IN on the clustering columns), READS_IN_FLIGHT requests at a time: one request per key
# made a backlog of 40,000 changed trades take minutes
KEYS_PER_READ = 200
READS_IN_FLIGHT = 16
# Changed keys of a table with one integer clustering column often come in runs (a symbol's trade
# ids). Up to SLICE_KEYS of them, sorted, whose span is at most DENSE_SPAN times their number are
# read as one slice from the lowest to the highest, and the rows in between that did not change
# are dropped: Cassandra reads a slice in one pass, an IN list name by name (bench/RESULTS.md,
# "The bridge's re-reads as slices"). A slice spans at most 1,000 rows, so the tombstones it may
# pass over stay within Cassandra's tombstone_warn_threshold (1,000)
SLICE_KEYS = 500
SLICE_MIN_KEYS = 50
DENSE_SPAN = 2


class CassandraReads:
    """The bridge's reads of one keyspace, at one consistency level."""

    def __init__(self, session: Any, keyspace: str, level_name: str) -> None:
        from cassandra import ConsistencyLevel

        self.session = session
        self.keyspace = keyspace
        self.level_name = level_name
        self.level = ConsistencyLevel.name_to_value[level_name]
        self._prepared: dict[str, Any] = {}

    @classmethod
    def open(cls, session: Any, keyspace: str, consistency: str | None = None) -> CassandraReads:
        """Reads at the level `consistency` names, else the one the keyspace's replication calls for."""
        row = session.execute("SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = %s",
                              (keyspace,)).one()
        if row is None:
            raise LookupError(f"Cassandra keyspace {keyspace!r} does not exist")
        name, why = choose_consistency(consistency, replication_factor(row.replication))
        log.info("bridge reads keyspace %s at consistency %s (%s)", keyspace, name, why)
        return cls(session, keyspace, name)

    def prepare(self, cql: str) -> Any:
        if cql not in self._prepared:
            stmt = self.session.prepare(cql)
            stmt.consistency_level = self.level
            stmt.fetch_size = FETCH_SIZE
            self._prepared[cql] = stmt
        return self._prepared[cql]

    # ---------------------------------------------------------------- the stream's bookkeeping

    def stream_position(self, query_name: str = STREAM_QUERY_NAME) -> Position | None:
        """The stream's last finished batch (None before its first)."""
        stmt = self.prepare(f'SELECT changelog_bucket, finished_at FROM "{self.keyspace}".stream_position '
                            "WHERE query_name = ?")
        row = self.session.execute(stmt, (query_name,)).one()
        if row is None or row.changelog_bucket is None:
            return None
        return Position(as_utc(row.changelog_bucket), as_utc(row.finished_at) if row.finished_at else None)

    def changelog_ttl(self) -> int:
        """changed_rows' default_time_to_live in seconds (0: its entries never expire)."""
        row = self.session.execute("SELECT default_time_to_live FROM system_schema.tables "
                                   "WHERE keyspace_name = %s AND table_name = 'changed_rows'",
                                   (self.keyspace,)).one()
        if row is None:
            raise LookupError(f"Cassandra table {self.keyspace}.changed_rows does not exist")
        return int(row.default_time_to_live or 0)

    def keep_seconds(self, table: str) -> int | None:
        """How long Cassandra keeps `table` (sink_retention; None: no row or no limit, kept for ever)."""
        stmt = self.prepare(f'SELECT keep_seconds FROM "{self.keyspace}".sink_retention WHERE table_name = ?')
        row = self.session.execute(stmt, (table,)).one()
        return None if row is None or row.keep_seconds is None else int(row.keep_seconds)

    def now(self) -> datetime:
        """Cassandra's clock, the one that expires the change log's entries."""
        row = self.session.execute("SELECT toTimestamp(now()) AS clock FROM system.local").one()
        return as_utc(row.clock)

    # ---------------------------------------------------------------- rows

    def paged(self, stmt: Any, params: Iterable[tuple[Any, ...]]) -> Iterator[Any]:
        """The rows of `stmt` for each of `params` in turn, WINDOW requests in flight, each paged."""
        for _, rows in self.paged_each(stmt, params):
            yield from rows

    def paged_each(self, stmt: Any, params: Iterable[tuple[Any, ...]]
                   ) -> Iterator[tuple[tuple[Any, ...], Iterator[Any]]]:
        """`paged`, one (params, rows) at a time: a read that fails raises while its rows are
        iterated, so a caller can tell which one it was and go on with the next."""
        todo = iter(params)
        pending: deque[tuple[tuple[Any, ...], Any]] = deque()
        for p in todo:
            pending.append((p, self.session.execute_async(stmt, p)))
            if len(pending) >= WINDOW:
                break
        while pending:
            p, future = pending.popleft()
            try:
                rows: Iterable[Any] = future.result()
            except Exception as exc:  # raised to the caller as it reads this partition's rows
                rows = _raising(exc)
            following = next(todo, None)
            if following is not None:
                pending.append((following, self.session.execute_async(stmt, following)))
            # later pages are fetched as the rows are consumed
            yield p, iter(rows)

    def changed_keys(self, table: str, minutes: Iterable[datetime], chunk: int) -> Iterator[set[str]]:
        """The keys logged for `table` in `minutes`, a set of up to about `chunk` distinct keys at a
        time (a key logged in two chunks comes twice: re-reading it is harmless). An entry holds its
        keys in `keys`; one written before the log kept keys in groups is its own `key`."""
        stmt = self.prepare(f'SELECT key, keys FROM "{self.keyspace}".changed_rows WHERE table_name = ? '
                            "AND bucket = ?")
        stmt.fetch_size = CHANGELOG_FETCH_SIZE
        keys: set[str] = set()
        for row in self.paged(stmt, ((table, m) for m in minutes)):
            if row.keys is not None:
                keys.update(row.keys)
            else:
                keys.add(row.key)
            if len(keys) >= chunk:
                yield keys
                keys = set()
        if keys:
            yield keys

    def rows_at(self, table: Table, keys: Iterable[str]) -> tuple[list[Any], list[tuple[Any, ...]]]:
        """Each logged key read back by its full Cassandra key: (rows that exist, keys that are gone,
        as bind values in `table.cassandra_key` order)."""
        from cassandra.concurrent import execute_concurrent

        decoded = {decode_key(table, k) for k in keys}
        if not decoded:
            return [], []
        width = len(table.cassandra_partition)
        clustering = table.cassandra_clustering
        by_partition: dict[tuple[Any, ...], list[tuple[Any, ...]]] = defaultdict(list)
        for key in decoded:
            by_partition[key[:width]].append(key[width:])
        cols = ", ".join(f'"{c}"' for c in table.column_names)
        where = " AND ".join(f'"{k}" = ?' for k in table.cassandra_partition)
        select = f'SELECT {cols} FROM "{self.keyspace}"."{table.name}" WHERE {where}'
        if len(clustering) == 1:
            in_list = self.prepare(f'{select} AND "{clustering[0]}" IN ?')
            between = self.prepare(f'{select} AND "{clustering[0]}" >= ? AND "{clustering[0]}" <= ?')
        elif clustering:
            in_list = self.prepare(f'{select} AND (' + ", ".join(f'"{c}"' for c in clustering) + ") IN ?")
        else:
            in_list = self.prepare(select)
        requests: list[tuple[Any, tuple[Any, ...]]] = []
        for partition, rest in by_partition.items():
            if not clustering:
                requests.append((in_list, partition))
            elif len(clustering) == 1:
                for lo, hi, values in _runs(sorted(r[0] for r in rest)):
                    if values is None:
                        requests.append((between, (*partition, lo, hi)))
                    else:
                        requests += [(in_list, (*partition, values[i:i + KEYS_PER_READ]))
                                     for i in range(0, len(values), KEYS_PER_READ)]
            else:
                requests += [(in_list, (*partition, rest[i:i + KEYS_PER_READ]))
                             for i in range(0, len(rest), KEYS_PER_READ)]
        results = execute_concurrent(self.session, requests, concurrency=READS_IN_FLIGHT, raise_on_first_error=True)
        wanted = {_comparable(key): key for key in decoded}
        found, seen = [], set()
        for (_, params), result in zip(requests, results, strict=True):
            partition = params[:width]
            for row in result.result_or_exc:
                key = _comparable((*partition, *(getattr(row, c) for c in clustering)))
                # a slice also returns the rows between the changed keys, which did not change
                if key in wanted:
                    found.append(row)
                    seen.add(key)
        gone = [key for comparable, key in wanted.items() if comparable not in seen]
        return found, gone

    def partition_rows(self, table: Table, partitions: Iterable[tuple[Any, ...]]) -> Iterator[Any]:
        """Every row of the given partitions (values of `table.cassandra_partition` each), streamed."""
        where = " AND ".join(f'"{k}" = ?' for k in table.cassandra_partition)
        cols = ", ".join(f'"{c}"' for c in table.column_names)
        stmt = self.prepare(f'SELECT {cols} FROM "{self.keyspace}"."{table.name}" WHERE {where}')
        return self.paged(stmt, partitions)


def _runs(values: list[Any]) -> Iterator[tuple[Any, Any, list[Any] | None]]:
    """Sorted clustering values cut into pieces of up to SLICE_KEYS: (lowest, highest, None) for a
    piece dense enough to read as a slice, (lowest, highest, the values) for one to read by name."""
    for i in range(0, len(values), SLICE_KEYS):
        piece = values[i:i + SLICE_KEYS]
        lo, hi = piece[0], piece[-1]
        dense = (len(piece) >= SLICE_MIN_KEYS and isinstance(lo, int) and not isinstance(lo, bool)
                 and hi - lo + 1 <= DENSE_SPAN * len(piece))
        yield lo, hi, None if dense else piece


def _comparable(key: tuple[Any, ...]) -> tuple[Any, ...]:
    """A key with its timestamps as aware UTC datetimes: Cassandra returns them naive, decode_key aware."""
    return tuple(as_utc(v) if isinstance(v, datetime) else v for v in key)


def _raising(exc: Exception) -> Iterator[Any]:
    raise exc
    yield  # a generator: raises when its first row is asked for
