"""Where the bridge has got to, per table, in Postgres `<bridge schema>.bridge_watermarks`.

`bucket` is the watermark: the change-log minute of the stream's position (stream_position in
Cassandra) the last run read up to; the next run reads from it again, inclusive. `mode` is what the
last run did, `full_copy_reason` and `full_copy_at` why and when the last full copy happened.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from include.names import BRIDGE_SCHEMA

STATE_COLUMNS = ("bucket", "synced_at", "mode", "full_copy_reason", "full_copy_at", "rows_upserted", "rows_deleted")


@dataclass(frozen=True)
class Watermark:
    bucket: datetime
    synced_at: datetime


def lock_watermark(cur: Any, table: str, schema: str = BRIDGE_SCHEMA) -> Watermark | None:
    """The table's watermark, its row locked until the transaction ends (None before the first run)."""
    cur.execute(f'SELECT bucket, synced_at FROM "{schema}".bridge_watermarks WHERE table_name = %s FOR UPDATE',
                (table,))
    row = cur.fetchone()
    return Watermark(row[0], row[1]) if row else None


def save_watermark(cur: Any, table: str, bucket: datetime, mode: str, upserted: int, deleted: int,
                   full_copy_reason: str | None = None, schema: str = BRIDGE_SCHEMA) -> None:
    """Record a run; a full copy (a reason given) also records why and when, which incremental runs keep."""
    cur.execute(
        f'INSERT INTO "{schema}".bridge_watermarks AS w (table_name, bucket, synced_at, rows_upserted, rows_deleted, '
        "mode, full_copy_reason, full_copy_at) "
        "VALUES (%s, %s, now(), %s, %s, %s, %s::text, CASE WHEN %s::text IS NOT NULL THEN now() END) "
        "ON CONFLICT (table_name) DO UPDATE SET bucket = EXCLUDED.bucket, synced_at = now(), "
        "rows_upserted = EXCLUDED.rows_upserted, rows_deleted = EXCLUDED.rows_deleted, mode = EXCLUDED.mode, "
        "full_copy_reason = COALESCE(EXCLUDED.full_copy_reason, w.full_copy_reason), "
        "full_copy_at = COALESCE(EXCLUDED.full_copy_at, w.full_copy_at)",
        (table, bucket, upserted, deleted, mode, full_copy_reason, full_copy_reason),
    )


def bridge_states(pg: Any, schema: str = BRIDGE_SCHEMA) -> list[dict[str, Any]]:
    """Every table's bridge state (table, bucket, synced_at, mode, full_copy_reason, full_copy_at,
    rows_upserted, rows_deleted), by table name; [] before the bridge's first migration. Reads only
    (the connection is rolled back): for the health checks and the status report."""
    try:
        with pg.cursor() as cur:
            cur.execute("SELECT to_regclass(%s)", (f'"{schema}".bridge_watermarks',))
            if cur.fetchone()[0] is None:
                return []
            cur.execute(f'SELECT table_name, {", ".join(STATE_COLUMNS)} FROM "{schema}".bridge_watermarks '
                        "ORDER BY table_name")
            rows = cur.fetchall()
    finally:
        pg.rollback()
    return [{"table": r[0], **dict(zip(STATE_COLUMNS, r[1:], strict=True))} for r in rows]
