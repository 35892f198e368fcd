"""The bridge's decisions, pure (no driver, no database): which change-log minutes a run reads, when
the change log can no longer be trusted and a table is copied whole, and at which consistency level
it reads (which partitions a full copy reads: include/partitions.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from include.times import as_utc

MINUTE = timedelta(minutes=1)

# The consistency levels a read may use (ANY and EACH_QUORUM are for writes only), names as the
# Cassandra driver spells them in ConsistencyLevel.
READ_LEVELS = ("ONE", "TWO", "THREE", "QUORUM", "ALL", "LOCAL_QUORUM", "LOCAL_ONE", "SERIAL", "LOCAL_SERIAL")
# how far the clocks of the stream's driver, Cassandra and Postgres may disagree, at most (and never
# more than a quarter of the change log's retention): the expiry check errs by this much towards a full copy
CLOCK_SKEW = timedelta(minutes=5)


@dataclass(frozen=True)
class Position:
    """The stream's last finished micro-batch (`stream_position`): every key a finished batch logged
    under a change-log minute up to `changelog_bucket` is applied in Cassandra, and batches still
    running log under `changelog_bucket` or later."""

    changelog_bucket: datetime
    finished_at: datetime | None = None


def minutes(since: datetime, until: datetime) -> list[datetime]:
    """The change-log minutes from the one holding `since` to the one holding `until`, both included."""
    first = as_utc(since).replace(second=0, microsecond=0)
    last = as_utc(until).replace(second=0, microsecond=0)
    count = (last - first) // MINUTE + 1
    return [first + n * MINUTE for n in range(max(count, 0))]


def full_copy_reason(watermark: datetime | None, position: Position | None, changelog_ttl: int,
                     requested: bool = False, last_sync: datetime | None = None,
                     now: datetime | None = None) -> str | None:
    """Why this run must copy the table whole, or None when reading the change log is enough.

    `watermark` is the change-log minute the last run read up to (None: no run yet), `position` the
    stream's (None: no batch finished yet), `changelog_ttl` changed_rows' default_time_to_live in
    seconds (0: entries never expire). Keys logged after the watermark may have expired when:
    - the stream has logged more than the retention past the watermark (W < U - ttl); or
    - the stream finished a batch after the last sync (`last_sync`, so some of its keys are unread)
      and the retention has passed since the watermark by Cassandra's clock (`now`): a stream
      that stopped right after that batch leaves U near W, while its entries expire all the same.
    Both err towards a full copy by CLOCK_SKEW (capped at a quarter of the retention)."""
    if watermark is None:
        return "first run"
    if requested:
        return "requested"
    if changelog_ttl <= 0 or position is None:
        return None
    retention = timedelta(seconds=changelog_ttl)
    watermark, bucket = as_utc(watermark), as_utc(position.changelog_bucket)
    if watermark < bucket - retention:
        return (f"watermark {watermark.isoformat()} is more than the change log retention ({changelog_ttl} s) "
                f"behind the stream position {bucket.isoformat()}: keys logged in between may have expired")
    if now is not None and last_sync is not None and position.finished_at is not None:
        margin = min(CLOCK_SKEW, retention / 4)
        unread = as_utc(position.finished_at) > as_utc(last_sync) - margin
        if unread and watermark + retention - margin <= as_utc(now):
            return (f"watermark {watermark.isoformat()} is more than the change log retention ({changelog_ttl} s) "
                    f"before now ({as_utc(now).isoformat()}), and the stream finished a batch "
                    f"({as_utc(position.finished_at).isoformat()}) after the last sync "
                    f"({as_utc(last_sync).isoformat()}): keys it logged may have expired")
    return None


def replication_factor(replication: Mapping[str, str]) -> int:
    """A keyspace's replication factor from system_schema.keyspaces' `replication` map: SimpleStrategy's
    replication_factor, or the largest data centre's for NetworkTopologyStrategy ('3', or '3/1' with
    transient replicas)."""
    strategy = replication.get("class", "")
    if strategy.endswith("SimpleStrategy"):
        return int(str(replication.get("replication_factor", "1")).split("/")[0])
    factors = [int(str(v).split("/")[0]) for k, v in replication.items() if k != "class"]
    return max(factors, default=1)


def choose_consistency(setting: str | None, factor: int) -> tuple[str, str]:
    """(level name, why) of the bridge's reads: the level set (the Cassandra connection's extra
    `consistency` or the Variable), else LOCAL_QUORUM when the keyspace has more than one replica
    (a read agrees with a majority, so it sees every write the stream made at LOCAL_QUORUM), else ONE.
    A name that is not a read level is refused, naming it and the valid ones."""
    if setting is not None and setting.strip():
        name = setting.strip().upper()
        if name not in READ_LEVELS:
            raise ValueError(f"unknown Cassandra consistency level {setting!r} for the bridge's reads; "
                             f"valid: {', '.join(READ_LEVELS)}")
        return name, "set"
    if factor > 1:
        return "LOCAL_QUORUM", f"replication factor {factor}"
    return "ONE", f"replication factor {factor}"
