"""Misbehaviour a test can switch on in the test exchange: a fault answers the next `count` API calls
(to one path, or to any) in a way a real exchange or the network might.

Kinds:
- 429, 418: rate limited (429) or banned (418) with `Retry-After: retry_after`; calls arriving before
  it runs out get 418 (the API layer enforces that block, as Binance does).
- 5xx: an error status (`status`, 503 by default) with a Binance error body.
- html: an HTML page instead of JSON (status `status`, 200 by default), as a proxy might send.
- truncated: the first half of the JSON body.
- missing_field: the answer without one field of its first record (`field`, or the one the project's
  parsers read for that path).
- delay: the right answer, `delay_s` seconds late.
Rate limits and weights are not faults: the API layer applies them to every call.

Archive faults answer the next `count` downloads of archive zip files (`path`: one file's path, or
any file), never an API call; the `.CHECKSUM` files stay right:
- archive_corrupt: the zip with some bytes changed, its length kept (the checksum no longer matches);
- archive_truncated: the first half of the zip, while Content-Length announces the whole file (the
  connection ends early, as a dropped download does).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from typing import Any

FAULT_KINDS = ("429", "418", "5xx", "html", "truncated", "missing_field", "delay", "archive_corrupt",
               "archive_truncated")
ARCHIVE_FAULTS = ("archive_corrupt", "archive_truncated")
ARCHIVE_PREFIX = "/data/"
# The field a missing_field fault drops by default: one the project's parsers read.
DEFAULT_MISSING_FIELD = {
    "/api/v3/time": "serverTime",
    "/api/v3/exchangeInfo": "status",
    "/api/v3/ticker/price": "price",
    "/api/v3/ticker/24hr": "lastPrice",
    "/api/v3/trades": "price",
    "/api/v3/aggTrades": "p",
    "/api/v3/depth": "lastUpdateId",
}
HTML_PAGE = b"<!DOCTYPE html><html><head><title>Bad gateway</title></head><body><h1>502</h1></body></html>"


@dataclass
class Answer:
    """One HTTP answer; `delay_s` holds it back before sending (a delay fault); `content_length`, when
    set, is announced instead of the body's length (a download cut short)."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    content_length: int | None = None


@dataclass
class Fault:
    """An injected misbehaviour for the next `remaining` API calls (to `path`, or to any path)."""

    kind: str
    remaining: int = 1
    path: str | None = None
    retry_after: int = 1
    status: int | None = None
    field: str | None = None
    delay_s: float = 0.0


class Faults:
    """The faults waiting for calls, oldest first; the caller holds the server's lock around each use."""

    def __init__(self, paths: Collection[str]) -> None:
        self.paths = paths
        self._waiting: list[Fault] = []

    def add(
        self,
        kind: str,
        *,
        count: int = 1,
        path: str | None = None,
        retry_after: int = 1,
        status: int | None = None,
        field: str | None = None,
        delay_s: float = 0.0,
    ) -> Fault:
        """Check a fault's settings, naming the bad one, and queue it for the next `count` calls."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; known: {FAULT_KINDS}")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"fault count must be an int >= 1, got {count!r}")
        if kind in ARCHIVE_FAULTS:
            if path is not None and not (path.startswith(ARCHIVE_PREFIX) and path.endswith(".zip")):
                raise ValueError(f"an archive fault's path is a zip file's ({ARCHIVE_PREFIX}...zip), got {path!r}")
        elif path is not None and path not in self.paths:
            raise ValueError(f"fault path {path!r} is not an API path; known: {sorted(self.paths)}")
        if isinstance(retry_after, bool) or not isinstance(retry_after, int) or retry_after < 0:
            raise ValueError(f"retry_after must be whole seconds >= 0, got {retry_after!r}")
        if kind == "5xx" and status is not None and not 500 <= status <= 599:
            raise ValueError(f"a 5xx fault needs a status in 500..599, got {status}")
        if kind == "delay" and not delay_s > 0:
            raise ValueError(f"a delay fault needs delay_s > 0, got {delay_s!r}")
        fault = Fault(kind, count, path, retry_after, status, field, float(delay_s))
        self._waiting.append(fault)
        return fault

    def take(self, path: str) -> Fault | None:
        """The first fault for a call to `path`, used once (and dropped when used up): an archive
        fault for an archive zip file, another kind for an API path."""
        archive = path.startswith(ARCHIVE_PREFIX)
        for fault in self._waiting:
            if (fault.kind in ARCHIVE_FAULTS) != archive:
                continue
            if fault.path is None or fault.path == path:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._waiting.remove(fault)
                return fault
        return None

    def clear(self) -> None:
        self._waiting.clear()

    def as_json(self) -> list[dict[str, Any]]:
        return [asdict(f) for f in self._waiting]


def damage_payload(fault: Fault | None, path: str, payload: Any) -> None:
    """A missing_field fault's damage, done to the payload before it is rendered."""
    if fault is not None and fault.kind == "missing_field":
        _drop_field(payload, fault.field or DEFAULT_MISSING_FIELD.get(path))


def damage_answer(fault: Fault | None, answer: Answer) -> None:
    """The damage the other body faults do to a rendered 200 answer."""
    if fault is None:
        return
    if fault.kind == "truncated":
        answer.body = answer.body[: max(1, len(answer.body) // 2)]
    elif fault.kind == "html":
        answer.status = fault.status or 200
        answer.body = HTML_PAGE
        answer.headers["Content-Type"] = "text/html; charset=utf-8"
    elif fault.kind == "delay":
        answer.delay_s = fault.delay_s


def damage_archive(fault: Fault | None, answer: Answer) -> None:
    """An archive fault's damage to a zip file's answer."""
    if fault is None or not answer.body:
        return
    if fault.kind == "archive_corrupt":
        body = bytearray(answer.body)
        # bytes in the middle of the compressed data: the zip keeps its length and structure
        for i in range(len(body) // 3, len(body) // 3 + 16):
            body[i] ^= 0xFF
        answer.body = bytes(body)
    elif fault.kind == "archive_truncated":
        answer.content_length = len(answer.body)
        answer.body = answer.body[: len(answer.body) // 2]


def _drop_field(payload: Any, name: str | None) -> None:
    """Damage the first record: drop `name` from an object, or the last element of an array."""
    record = payload
    if isinstance(payload, dict) and isinstance(payload.get("symbols"), list) and payload["symbols"]:
        record = payload["symbols"][0]
    elif isinstance(payload, list) and payload:
        record = payload[0]
    if isinstance(record, list) and record:
        record.pop()
    elif isinstance(record, dict) and record:
        record.pop(name if name in record else next(iter(record)))
