"""A Kafka partition's Debezium events parsed and collapsed in plain Python, by the Spark task that
reads them (spark/apply.py).

Each event is typed as Spark's JSON reader would type it (a value of the wrong JSON type is null,
text keeps a number's exact text), checked by the rules of include/cdc/events.py, and the events are
collapsed to the last per Cassandra key in source order (LSN, then Kafka position).
tests/spark/reference_envelope.py decides the same with Spark DataFrame transforms, independently;
tests/spark/test_reference.py runs both on the same events and compares.

No Spark import here: the functions take and return plain values.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from include.cdc.events import (
    NO_LSN,
    NO_SOURCE_TS,
    NOT_AN_EVENT,
    OPS,
    event_lsn,
    is_decimal_text,
    is_incremental_read,
    key_column_missing,
    key_sources,
    missing_row,
    not_a_decimal,
    not_a_timestamp,
    source_time_us,
    unknown_op,
    write_time,
)
from include.tables import Table
from spark.writer import Change, DeadLetter, cql_row, from_epoch_us


class _Number(str):
    """A JSON number kept as its text, the way Spark's JSON reader sees it."""


class _NumberAsText(Exception):
    """A JSON number where text is expected: only the slow parse keeps the number's exact text."""


def _loads(value: str) -> Any:
    return json.loads(value, parse_int=_Number, parse_float=_Number, parse_constant=_Number)


def _as_long(value: Any) -> int | None:
    """What Spark's from_json makes of a value for a LongType field: integers only, else null."""
    if isinstance(value, _Number) and re.fullmatch(r"-?[0-9]+", value):
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value if -(2**63) <= value < 2**63 else None
    return None


def _lsn(source: dict) -> int | None:
    """include.cdc.events.event_lsn of a parsed `source` (spark/envelope.py's _lsn)."""
    return event_lsn(_as_long(source.get("lsn")), _as_string(source.get("snapshot")),
                     _as_string(source.get("sequence")))


def _as_string(value: Any) -> str | None:
    """For a StringType field Spark keeps strings, and the JSON text of anything else."""
    if value is None or isinstance(value, str):
        return value  # _Number is a str: its text as written
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise _NumberAsText
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _as_bool(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def parse_timestamp(text: str) -> datetime | None:
    """An ISO-8601 timestamp as Debezium writes timestamptz (UTC when no offset); None if it is not one,
    or if it is not one in UTC either (the first or last hours of years 1 and 9999 with an offset)."""
    try:
        moment = datetime.fromisoformat(text.strip())
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except (ValueError, OverflowError):
        return None


def _wire_row(table: Table, raw: Any) -> dict[str, Any] | None:
    """`before`/`after` as Spark's schema reads it: each column typed by its wire type, or null."""
    if not isinstance(raw, dict):
        return None
    out: dict[str, Any] = {}
    for col in table.columns:
        value = raw.get(col.name)
        if col.type == "bigint":
            out[col.name] = _as_long(value)
        elif col.type == "boolean":
            out[col.name] = _as_bool(value)
        else:
            out[col.name] = _as_string(value)
    return out


@dataclass
class Event:
    """One change event: the row as parse_envelope types it (decimals as their text, timestamps as
    aware UTC datetimes), its CDC metadata (`source`: ts_us, ts_ms, snapshot as Spark's schema reads
    them), and why it cannot be applied (`error`), if it cannot."""

    row: dict[str, Any]
    cdc_op: str | None
    cdc_lsn: int | None
    source: dict[str, Any]
    kafka_partition: int
    kafka_offset: int
    raw_value: str
    error: str | None
    # the row as written (spark.writer.cql_row), converted once for the key and the write
    _converted: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    def converted(self, table: Table) -> dict[str, Any]:
        """The row as the writer binds it (spark.writer.cql_row: decimals, times to the ms, the bucket)."""
        if self._converted is None:
            self._converted = cql_row(table, self.row)
        return self._converted

    def key(self, table: Table) -> tuple[Any, ...]:
        """The Cassandra key (bucket included), as the values written (so 1.50 and 1.5 are one key, as
        in Cassandra): the key columns of the converted row."""
        converted = self.converted(table)
        return tuple(converted[name] for name in table.cassandra_key)

    @property
    def cdc_source_ts(self) -> datetime | None:
        commit = source_time_us(self.source)
        return None if commit is None else from_epoch_us(commit)

    @property
    def order(self) -> tuple[bool, int, int, int]:
        """Source order: LSN (missing first), then Kafka position."""
        return (self.cdc_lsn is not None, self.cdc_lsn or 0, self.kafka_partition, self.kafka_offset)

    @property
    def incremental_read(self) -> bool:
        return self.error is None and is_incremental_read(self.cdc_op, self.source)

    def change(self, table: Table, windows: Mapping[int, int] | None = None) -> Change:
        """The change to write; an incremental snapshot read at its window's time, `windows[lsn]`."""
        assert self.cdc_op is not None and self.cdc_lsn is not None, "only an applicable event is a change"
        window = (windows or {}).get(self.cdc_lsn) if self.incremental_read else None
        return Change(table, self.cdc_op, self.cdc_lsn, self.cdc_source_ts,
                      write_time(self.cdc_op, self.source, window), self.row, self.converted(table))

    def dead_letter(self, topic: str) -> DeadLetter:
        assert self.error is not None, "only an event that cannot be applied is a dead letter"
        return DeadLetter(topic, self.kafka_partition, self.kafka_offset, self.raw_value, self.error)


def _problem(table: Table, env: Any, row: dict[str, Any] | None, typed: dict[str, Any] | None) -> str | None:
    """The first reason, in spark/envelope.py's order, that the event cannot be applied; `typed` is
    `_typed(row)` (a timestamp it could not parse is None there)."""
    op = env.get("op") if isinstance(env, dict) else None
    op = _as_string(op)
    if op is None:
        return NOT_AN_EVENT
    if op not in OPS:
        return unknown_op(op)
    source = env.get("source")
    source = source if isinstance(source, dict) else {}
    if _lsn(source) is None:
        return NO_LSN
    if _as_long(source.get("ts_us")) is None and _as_long(source.get("ts_ms")) is None:
        return NO_SOURCE_TS
    if row is None:
        return missing_row(op)
    for name in key_sources(table):
        if row[name] is None:
            return key_column_missing(name)
    for col in table.columns:
        value = row[col.name]
        if value is None:
            continue
        if col.type == "timestamptz" and typed is not None and typed[col.name] is None:
            return not_a_timestamp(col.name)
        if col.type == "numeric" and not is_decimal_text(value):
            return not_a_decimal(col.name)
    return None


def _typed(table: Table, row: dict[str, Any]) -> dict[str, Any]:
    """Wire values as parse_envelope types them: timestamps parsed (None: not a timestamp), everything
    else as it came."""
    out = dict(row)
    for col in table.columns:
        if col.type == "timestamptz" and row[col.name] is not None:
            out[col.name] = parse_timestamp(row[col.name])
    return out


def parse_event(table: Table, partition: int, offset: int, value: str | None) -> Event | None:
    """One Kafka record of `table`'s topic -> an Event; None for a tombstone (skipped)."""
    if value is None:
        return None
    try:
        # the C parser; a number where text is expected is parsed again keeping its text
        return _parse_event(table, partition, offset, value, json.loads)
    except _NumberAsText:
        return _parse_event(table, partition, offset, value, _loads)


def _parse_event(table: Table, partition: int, offset: int, value: str, loads: Any) -> Event:
    try:
        env = loads(value)
    except ValueError:
        env = None
    if not isinstance(env, dict):
        env = None
    op = _as_string(env.get("op")) if env else None
    raw_row = (env.get("before") if op == "d" else env.get("after")) if env else None
    row = _wire_row(table, raw_row)
    typed = None if row is None else _typed(table, row)
    error = _problem(table, env, row, typed)
    source = env.get("source") if env else None
    source = source if isinstance(source, dict) else {}
    return Event(
        row=typed if typed is not None and error is None else (row or {}),
        cdc_op=op,
        cdc_lsn=_lsn(source),
        source={"ts_us": _as_long(source.get("ts_us")), "ts_ms": _as_long(source.get("ts_ms")),
                "snapshot": _as_string(source.get("snapshot"))},
        kafka_partition=partition,
        kafka_offset=offset,
        raw_value=value,
        error=error,
    )


def drop_unplaced_reads(events: list[Event], placed: Mapping[int, int]) -> tuple[list[Event], int]:
    """(the events without the incremental snapshot reads whose LSN has no window time in `placed`,
    how many were dropped): spark/envelope.py's drop_unplaced_reads, before the collapse."""
    kept = [e for e in events if not (e.incremental_read and e.cdc_lsn not in placed)]
    return kept, len(events) - len(kept)


def collapse(table: Table, events: list[Event]) -> tuple[list[Event], list[Event]]:
    """(the last event per sink key in source order, the events that cannot be applied)."""
    last: dict[tuple[Any, ...], Event] = {}
    bad = []
    for event in events:
        if event.error is not None:
            bad.append(event)
            continue
        key = event.key(table)
        if key not in last or event.order > last[key].order:
            last[key] = event
    return sorted(last.values(), key=lambda e: e.order), bad


def source_ts_ms(value: str | None) -> int | None:
    """$.source.ts_ms of a raw record (None when absent or unparseable), for topics the sink does not
    parse as a table's (the heartbeat's, the signal table's)."""
    if value is None:
        return None
    try:
        env = _loads(value)
    except ValueError:
        return None
    source = env.get("source") if isinstance(env, dict) else None
    if not isinstance(source, dict):
        return None
    ts = source.get("ts_ms")
    if isinstance(ts, str) and re.fullmatch(r"-?[0-9]+", ts):
        return int(ts)
    return None
