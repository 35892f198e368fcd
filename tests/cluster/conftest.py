"""The cluster profile's suite (`make test-cluster`): the stack as the profile states it, then one node
of each engine SIGKILLed under load while the stream runs on the Spark master. It kills and holds
nodes down, so it runs alone, on a stack started with `make up CLUSTER=1`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from include.health import checks as health
from stack import topology
from tests.faults.conftest import pg_connect
from tests.integration.conftest import cassandra, cdc_ready, dagbag  # noqa: F401
from tests.integration.test_health import _api, _lag, _newest_batch, _wait

PROBE_SYMBOL = "PROBEUSDT"
# Kafka events not yet applied below which the stream counts as caught up
CAUGHT_UP_EVENTS = 500


@pytest.fixture(scope="session", autouse=True)
def cluster_profile(settings):
    if settings.get("STACK_PROFILE") != "cluster":
        pytest.fail("the cluster suite needs the cluster profile: run it through `make test-cluster`")


@pytest.fixture(scope="module")
def running_stream(settings, cdc_ready, cassandra):  # noqa: F811 - the shared fixtures
    """cdc_stream unpaused (the scheduler runs it on the Spark master) and a first batch seen."""
    started = datetime.now(UTC) - timedelta(minutes=5)
    _api(settings, "PATCH", "/api/v2/dags/cdc_stream", {"is_paused": False})
    _wait("a batch of the stream", lambda: _newest_batch(cassandra, started), 300)
    # caught up first (after a profile switch the connector snapshots every table again): an outage's
    # latency is measured on a stream that keeps up, not behind a backlog
    _wait("the stream to catch up", lambda: _lag(settings, cassandra) < CAUGHT_UP_EVENTS, 1200, every=5)
    yield


def stream_driver(cassandra) -> int:  # noqa: F811
    """The PID of the stream's driver, as its newest batch reported it."""
    last = health.last_batch(cassandra, cassandra.keyspace)
    assert last is not None and last.driver_pid, "no batch reported by the stream"
    return int(last.driver_pid)


def node(settings, name: str) -> topology.Node:
    return next(n for n in topology.nodes(settings) if n.name == name)


@dataclass
class Probe:
    """Commit → Cassandra latency, measured while a node is down: a latest_prices row of
    PROBE_SYMBOL committed every `every` seconds (its own transaction) by one thread, and looked for
    in Cassandra every 0.2 s by another, so a slow probe never holds the next one back."""

    settings: dict
    session: object
    every: float = 1.0
    committed: dict[datetime, float] = field(default_factory=dict)
    seen: dict[datetime, float] = field(default_factory=dict)
    _writing: bool = True
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Probe:
        self._threads = [threading.Thread(target=self._write, daemon=True),
                         threading.Thread(target=self._look, daemon=True)]
        for t in self._threads:
            t.start()
        return self

    def stop(self, drain: float = 120.0) -> None:
        """Stop writing, then wait up to `drain` seconds for every probe to arrive."""
        self._writing = False
        deadline = time.monotonic() + drain
        while set(self.committed) - set(self.seen) and time.monotonic() < deadline:
            time.sleep(0.5)
        self._stop.set()
        for t in self._threads:
            t.join(10)

    def _write(self) -> None:
        conn = None
        n = 0
        while self._writing and not self._stop.is_set():
            n += 1
            at = datetime.now(UTC).replace(microsecond=0) + timedelta(microseconds=n % 1000 * 1000)
            try:
                conn = conn if conn is not None and not conn.closed else pg_connect(self.settings)
                with conn.cursor() as cur:
                    cur.execute("INSERT INTO binance.latest_prices (symbol, price, time) VALUES (%s, %s, %s) "
                                "ON CONFLICT DO NOTHING", (PROBE_SYMBOL, Decimal(n), at))
                conn.commit()
                self.committed[at] = time.monotonic()
            except Exception:  # noqa: BLE001 - Postgres is not what this suite kills; retry the next tick
                conn = None
            time.sleep(self.every)

    def _look(self) -> None:
        while not self._stop.is_set():
            waiting = sorted(set(self.committed) - set(self.seen))
            if waiting:
                try:
                    for day in sorted({w.replace(hour=0, minute=0, second=0, microsecond=0) for w in waiting}):
                        rows = self.session.execute(
                            "SELECT time FROM latest_prices WHERE symbol = %s AND bucket = %s AND time >= %s",
                            (PROBE_SYMBOL, day, waiting[0]), timeout=5)
                        now = time.monotonic()
                        for row in rows:
                            at = row.time.replace(tzinfo=UTC)
                            if at in self.committed and at not in self.seen:
                                self.seen[at] = now
                except Exception:  # noqa: BLE001 - a read during the outage may fail; look again
                    pass
            time.sleep(0.2)

    def latencies(self, since: float, until: float) -> list[float]:
        """Seconds from commit to Cassandra of the probes committed in [since, until] (monotonic)."""
        return sorted(self.seen[k] - t for k, t in self.committed.items() if since <= t <= until and k in self.seen)

    def missing(self) -> int:
        return len(set(self.committed) - set(self.seen))
