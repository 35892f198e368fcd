"""What is kept, where, and for how long: the retention policy, from the Variable `retention`.

One duration per table and store. The stores are the source (`binance`, Postgres), Cassandra and
the bridge (Postgres `cassandra`, what Grafana reads). A store downstream may keep less than the
one it copies, never more: the source's retention deletes reach Cassandra through the change
stream, and the bridge copies Cassandra.

The Variable is JSON; each table takes a duration for every store, or an object per store:

    {"recent_trades": "48h", "order_book": {"binance": "24h", "bridge": "6h"}, "klines": null}

A duration is a number and a unit (s, m, h, d, w), e.g. "90m", "24h", "30d"; null keeps for ever.
A store an object leaves out keeps what the store before it keeps. Tables left out keep DEFAULTS.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from include.tables import TABLES

# the stores in copy order: each keeps at most what the one before it keeps
STORES = ("binance", "cassandra", "bridge")

# Defaults at the default schedule (every minute, ten symbols), rows kept in Postgres `binance`:
# order book 24 h (2.9 M levels), trades 48 h (up to 14.4 M), prices and tickers 30 days (432,000
# each), klines for ever (48 a day per symbol at 30m). Aggregate trades 48 h like trades: they are
# the same tape, one row per taker order instead of per fill, so as many or fewer rows, and what
# older history a user wants comes back from the archives (binance_archive). README, "Retention".
DEFAULTS: dict[str, str | None] = {
    "latest_prices": "30d",
    "daily_ticker": "30d",
    "klines": None,
    "recent_trades": "48h",
    "order_book": "24h",
    "agg_trades": "48h",
}

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class RetentionError(ValueError):
    """The Variable `retention` holds something the policy cannot use (the message names it)."""


def parse_duration(text: Any, where: str) -> timedelta | None:
    """"24h" -> 24 hours; None -> kept for ever. Anything else is refused, naming `where`."""
    if text is None:
        return None
    m = _DURATION.match(str(text)) if isinstance(text, str) else None
    if not m:
        raise RetentionError(f"retention {where}: {text!r} is not a duration such as \"90m\", \"24h\", \"30d\" "
                             "(units s, m, h, d, w), or null for ever")
    value = timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])
    if value <= timedelta(0):
        raise RetentionError(f"retention {where}: {text!r} must be longer than zero")
    return value


def _longer(a: timedelta | None, b: timedelta | None) -> bool:
    """a keeps longer than b (None is for ever)."""
    if a is None:
        return b is not None
    return b is not None and a > b


@dataclass(frozen=True)
class Retention:
    """keep[table][store]: how long rows are kept (None: for ever)."""

    keep: Mapping[str, Mapping[str, timedelta | None]]

    @classmethod
    def from_json(cls, raw: str | Mapping[str, Any] | None,
                  legacy_order_book_hours: str | None = None) -> Retention:
        """Parse the Variable. `legacy_order_book_hours` is the older Variable
        binance_order_book_retention_hours, used for the order book when `retention` leaves it out."""
        try:
            given = json.loads(raw) if isinstance(raw, str) else dict(raw or {})
        except json.JSONDecodeError as exc:
            raise RetentionError(f"Variable retention is not valid JSON ({exc}): {str(raw)[:100]!r}") from exc
        if not isinstance(given, dict):
            raise RetentionError(f"Variable retention must be a JSON object of tables, got {given!r}")
        unknown = sorted(set(given) - set(TABLES))
        if unknown:
            raise RetentionError(f"retention names unknown tables {unknown}; known: {sorted(TABLES)}")
        defaults: dict[str, Any] = dict(DEFAULTS)
        if legacy_order_book_hours not in (None, "") and "order_book" not in given:
            defaults["order_book"] = f"{legacy_order_book_hours}h"
        keep: dict[str, dict[str, timedelta | None]] = {}
        for table in TABLES:
            spec = given.get(table, defaults[table])
            if not isinstance(spec, dict):
                spec = dict.fromkeys(STORES, spec)
            bad = sorted(set(spec) - set(STORES))
            if bad:
                raise RetentionError(f"retention.{table} names unknown stores {bad}; stores: {list(STORES)}")
            if STORES[0] not in spec:
                spec = {STORES[0]: defaults[table], **spec}
            per_store: dict[str, timedelta | None] = {}
            previous: timedelta | None = None
            for i, store in enumerate(STORES):
                value = parse_duration(spec[store], f"{table}.{store}") if store in spec else previous
                if i and _longer(value, previous):
                    raise RetentionError(
                        f"retention.{table}: {store} cannot keep longer ({spec.get(store)}) than {STORES[i - 1]} "
                        f"({spec.get(STORES[i - 1], 'its default')}): it copies that store, whose deletes reach it")
                per_store[store] = previous = value
            keep[table] = per_store
        return cls(keep)

    def horizon(self, table: str, store: str, now: datetime) -> datetime | None:
        """Rows of `table` older than this (by its time column) are not kept in `store`; None: all are."""
        kept = self.keep[table][store]
        return None if kept is None else now - kept

    def seconds(self, table: str, store: str) -> int | None:
        kept = self.keep[table][store]
        return None if kept is None else int(kept.total_seconds())

    def describe(self) -> str:
        def fmt(d: timedelta | None) -> str:
            return "for ever" if d is None else str(d)

        return "; ".join(f"{t}: " + ", ".join(f"{s} {fmt(v)}" for s, v in stores.items())
                         for t, stores in self.keep.items())
