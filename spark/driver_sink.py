"""Small micro-batches applied from the Spark driver, with the same result as the Spark path.

A micro-batch of a few hundred events costs the Spark path a dozen Spark jobs (parse and rank,
upserts, the change log, per table), about a second and a half on two cores whatever the batch
size. Below `--driver-max-events` the stream instead collects the raw Kafka rows in one job and
applies them here, in plain Python through the Cassandra driver: the same parsing rules, the
same collapse to the last event per key in source order, the same writes with the source LSN as
write time, the same change log and dead letters (spark/envelope.py is the reference; the tests
run both on the same events and compare).

No Spark import here: the functions take and return plain values.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from include.tables import Table

OPS = ("r", "c", "u", "d")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DECIMAL_TEXT = re.compile(r"^-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$")
NOT_AN_EVENT = "not a Debezium change event (unparseable JSON or no op)"


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
    """An ISO-8601 timestamp as Debezium writes timestamptz (UTC when no offset); None if it is not one."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def to_millis(moment: datetime) -> int:
    """Epoch milliseconds, floored like Spark's unix_millis."""
    return (moment - EPOCH) // timedelta(milliseconds=1)


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
    """One change event: the row (typed for Cassandra), its CDC metadata, and why it cannot be
    applied (`error`), if it cannot."""

    row: dict[str, Any]
    wire: dict[str, Any]
    cdc_op: str | None
    cdc_lsn: int | None
    cdc_source_ts: datetime | None
    kafka_partition: int
    kafka_offset: int
    raw_value: str
    error: str | None

    def key(self, table: Table) -> tuple[Any, ...]:
        return tuple(self.row.get(k) for k in table.cassandra_key)

    @property
    def order(self) -> tuple[bool, int, int, int]:
        """Source order: LSN (missing first), then Kafka position."""
        return (self.cdc_lsn is not None, self.cdc_lsn or 0, self.kafka_partition, self.kafka_offset)


def _problem(table: Table, env: Any, row: dict[str, Any] | None) -> str | None:
    """The first reason, in spark/envelope.py's order, that the event cannot be applied."""
    op = env.get("op") if isinstance(env, dict) else None
    op = _as_string(op)
    if op is None:
        return NOT_AN_EVENT
    if op not in OPS:
        return f"unknown op {op}"
    source = env.get("source")
    if _as_long(source.get("lsn") if isinstance(source, dict) else None) is None:
        return "source.lsn missing"
    if row is None:
        return "delete without before" if op == "d" else "no after"
    for name in table.cassandra_key:
        if row[name] is None:
            return f"key column {name} missing"
    for col in table.columns:
        value = row[col.name]
        if value is None:
            continue
        if col.type == "timestamptz" and parse_timestamp(value) is None:
            return f"{col.name} is not a timestamp"
        if col.type == "numeric" and not _DECIMAL_TEXT.match(value):
            return f"{col.name} is not a decimal"
    return None


def _typed(table: Table, row: dict[str, Any]) -> dict[str, Any]:
    """Wire values -> what the Cassandra driver writes: Decimal, UTC datetimes at ms precision."""
    out = {}
    for col in table.columns:
        value = row[col.name]
        if value is not None and col.type == "numeric":
            value = Decimal(value)
        elif value is not None and col.type == "timestamptz":
            moment = parse_timestamp(value)
            value = moment.replace(microsecond=moment.microsecond // 1000 * 1000)
        out[col.name] = value
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
    error = _problem(table, env, row)
    source = env.get("source") if env else None
    source = source if isinstance(source, dict) else {}
    lsn = _as_long(source.get("lsn"))
    ts_ms = _as_long(source.get("ts_ms"))
    typed = _typed(table, row) if row is not None and error is None else (row or {})
    return Event(
        row=typed,
        wire=row or {},
        cdc_op=op,
        cdc_lsn=lsn,
        cdc_source_ts=EPOCH + timedelta(milliseconds=ts_ms) if ts_ms is not None else None,
        kafka_partition=partition,
        kafka_offset=offset,
        raw_value=value,
        error=error,
    )


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


def key_json(table: Table, event: Event) -> str:
    """The sink key as the change log keeps it: spark/envelope.py's key_json (times as epoch ms,
    decimals as their text)."""
    parts: dict[str, Any] = {}
    for name in table.cassandra_key:
        if table.column(name).type == "timestamptz":
            parts[name] = to_millis(parse_timestamp(event.wire[name]))
        else:
            parts[name] = event.wire[name]  # decimals as their text, like the Spark path's string column
    return json.dumps(parts, separators=(",", ":"), ensure_ascii=False)


def source_ts_ms(value: str | None) -> int | None:
    """$.source.ts_ms of a raw record, as batch_summary reads it (null when absent or unparseable)."""
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


@dataclass(frozen=True)
class PartitionSummary:
    topic: str
    partition: int
    events: int
    next_offset: int
    newest_source_ms: int | None


def summarize(records: list[Any]) -> list[PartitionSummary]:
    """batch_summary of spark/envelope.py over collected (topic, partition, offset, value) rows."""
    acc: dict[tuple[str, int], list[Any]] = {}
    for r in records:
        entry = acc.setdefault((r.topic, r.partition), [0, -1, None])
        entry[0] += 1
        entry[1] = max(entry[1], r.offset)
        ts = source_ts_ms(r.value)
        if ts is not None and (entry[2] is None or ts > entry[2]):
            entry[2] = ts
    return [PartitionSummary(t, p, n, last + 1, ts) for (t, p), (n, last, ts) in sorted(acc.items())]
