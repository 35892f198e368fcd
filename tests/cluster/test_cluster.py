"""The cluster profile: the stack is what the README states, and losing one node of each engine under
load (SIGKILL, then held down CLUSTER_DOWN_S seconds as a lost machine would be, then started again)
stops nothing: the stream is not restarted, changes keep reaching Cassandra meanwhile (their commit →
Cassandra latency is printed), Cassandra and the bridge end exact, and the node rejoins.

Figures are printed (`pytest -s`) and recorded in bench/RESULTS.md.
"""

from __future__ import annotations

import os
import re
import signal
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from include.tables import TABLES
from stack import localstack as ls
from stack import supervisor, topology
from tests.cluster.conftest import PROBE_SYMBOL, Probe, node, stream_driver
from tests.faults.conftest import Load, assert_bridge_exact_after_its_run, differences, pg_connect, wait_equal
from tests.integration.test_health import _alive

pytestmark = pytest.mark.cluster

SYMBOLS = ("CLUSTER0USDT", "CLUSTER1USDT")
# seconds of load before the kill, of the node held down, and of load once it is back
BEFORE = 10
DOWN = float(os.environ.get("CLUSTER_DOWN_S", "40"))
AFTER = 10
RESULTS: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def clean_up(settings):
    yield
    if RESULTS:
        print("\n" + "\n".join(RESULTS))
    conn = pg_connect(settings)
    try:
        with conn.cursor() as cur:
            for table in TABLES:
                cur.execute(f"DELETE FROM binance.{table} WHERE symbol = ANY(%s)", ([*SYMBOLS, PROBE_SYMBOL],))
        conn.commit()
    finally:
        conn.close()


def _tree(pid: int) -> set[int]:
    """A process and its descendants (children of any of its threads: a Spark worker's executors)."""
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        if p in found:
            continue
        found.add(p)
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return found


def _rss_mib(pids: set[int]) -> float:
    total = 0.0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def test_the_profile_is_as_stated_and_fits_the_machine(settings, cassandra, running_stream):
    from confluent_kafka.admin import AdminClient, ConfigResource

    # Cassandra: 3 nodes up in one datacenter, the keyspace at NetworkTopologyStrategy RF 3
    first = topology.node_settings(settings, topology.of(settings, "cassandra")[0])
    assert ls.cassandra_ring_up(first, 3)
    peers = {str(r.peer) for r in cassandra.execute("SELECT peer FROM system.peers_v2")}
    local = cassandra.execute("SELECT data_center FROM system.local").one().data_center
    assert len(peers) == 2 and local == topology.DATACENTER
    replication = cassandra.execute("SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = %s",
                                    (settings["CASSANDRA_KEYSPACE"],)).one().replication
    assert replication["class"].endswith("NetworkTopologyStrategy") and replication[topology.DATACENTER] == "3"
    # Kafka: 3 brokers; every CDC topic with 3 partitions or more, 3 replicas each, min.insync.replicas 2
    admin = AdminClient({"bootstrap.servers": settings["KAFKA_BOOTSTRAP_SERVERS"], "log_level": 2})
    meta = admin.list_topics(timeout=10)
    assert sorted(meta.brokers) == [1, 2, 3]
    cdc = {name: t for name, t in meta.topics.items() if name.startswith("binance.binance.")}
    assert cdc, "no CDC topic"
    for name, t in cdc.items():
        assert len(t.partitions) >= 3, name
        assert all(len(p.replicas) == 3 for p in t.partitions.values()), name
    resource = ConfigResource(ConfigResource.Type.TOPIC, next(iter(cdc)))
    configs = admin.describe_configs([resource])[resource].result(timeout=10)
    assert configs["min.insync.replicas"].value == "2"
    # Kafka Connect: 2 workers in one group (the same generation and leader in each one's log), both
    # serving the connector's status
    joined = []
    for n in topology.of(settings, "kafka-connect"):
        found = re.findall(r"Joined group at generation (\d+) .*?leader='([^']+)'", ls.log_file(n.name).read_text())
        assert found, f"{n.name} never joined its group"
        joined.append(found[-1])
    assert len(joined) == 2 and joined[0] == joined[1], joined
    for n in topology.of(settings, "kafka-connect"):
        status = requests.get(f"http://{n.host}:{settings['KAFKA_CONNECT_PORT']}/connectors/binance-postgres/status",
                              timeout=10).json()
        assert status["tasks"][0]["state"] == "RUNNING"
    # Spark: a master with 2 workers, the stream running on it with executors on both
    state = requests.get(f"{settings['SPARK_MASTER_WEBUI_URL']}/json/", timeout=10).json()
    assert sorted(w["host"] for w in state["workers"] if w["state"] == "ALIVE") == \
        sorted(n.host for n in topology.of(settings, "spark-worker"))
    apps = [a for a in state["activeapps"] if a["name"] == "binance-cdc-stream"]
    assert apps and apps[0]["cores"] == 2, state["activeapps"]
    # memory: every process of the stack, the stream's driver included
    driver = _tree(_driver_jvm(stream_driver(cassandra)))
    # the stream runs under the scheduler (its task's spark-submit): counted apart, once
    rss = {svc.name: _rss_mib(_tree(pid) - driver) for svc in ls.services(settings) if (pid := ls.read_pid(svc.name))}
    rss["stream driver"] = _rss_mib(driver)
    total = sum(rss.values())
    line = f"cluster profile RSS: {total / 1024:.1f} GiB in all; " + ", ".join(
        f"{k} {v:.0f} MiB" for k, v in sorted(rss.items()))
    RESULTS.append(line)
    print("\n" + line)
    assert total < 20 * 1024, "the cluster profile must leave room on a 24 GiB machine"


def _driver_jvm(python_pid: int) -> int:
    """The stream's driver JVM: the parent of the Python process that reports its batches."""
    return int(Path(f"/proc/{python_pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _target(settings, engine: str) -> str:
    """The node whose loss hurts most: the leader of a CDC partition, the worker running the
    connector's task, the last Cassandra node and Spark worker."""
    from confluent_kafka.admin import AdminClient

    if engine == "kafka":
        admin = AdminClient({"bootstrap.servers": settings["KAFKA_BOOTSTRAP_SERVERS"], "log_level": 2})
        topic = admin.list_topics("binance.binance.latest_prices", timeout=10).topics["binance.binance.latest_prices"]
        return f"kafka-{topic.partitions[0].leader}"
    if engine == "kafka-connect":
        status = requests.get(f"{settings['KAFKA_CONNECT_URL']}/connectors/binance-postgres/status", timeout=10).json()
        host = status["tasks"][0]["worker_id"].split(":")[0]
        return next(n.name for n in topology.of(settings, "kafka-connect") if n.host == host)
    return topology.of(settings, engine)[-1].name


def _kill_and_hold_down(name: str, seconds: float, while_down: Callable[[], None] | None = None) -> None:
    """Lose the node as a machine is lost: all its processes (a Spark worker's executors too) stop
    at once, none starts again for `seconds`, then supervisord starts it.

    SIGKILL alone is a crash, which supervisord restarts at once: stopping that new incarnation
    sent it a SIGTERM mid-start, and a broker then sat half-started in its controlled shutdown
    until supervisord's stop_wait (60 s) ran out, taking part in its cluster while "down". So the
    node is frozen first (SIGSTOP), supervisord told to stop it (it then restarts nothing), and
    the frozen processes SIGKILLed before they can act on supervisord's SIGTERM."""
    pid = ls.read_pid(name)
    assert pid is not None, f"{name} is not running"
    # supervisord starts each program in a process group of its own, led by the service itself
    assert os.getpgid(pid) == pid, f"{name}: PID {pid} does not lead its process group"
    os.killpg(pid, signal.SIGSTOP)
    try:
        supervisor.stop(name, wait=False)
    finally:  # never leave a node frozen: a stopped process holds its ports and files
        os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while (record := supervisor.info(name) or {}).get("statename") != "STOPPED":
        assert time.monotonic() < deadline, f"{name}: supervisord did not see the kill ({record})"
        time.sleep(0.05)
    assert not _alive(pid), f"{name}: PID {pid} survived its SIGKILL"
    down = time.monotonic()
    try:
        if while_down is not None:
            while_down()
    finally:  # a check that fails while the node is down still gives it back
        time.sleep(max(0.0, seconds - (time.monotonic() - down)))
        supervisor.start(name)


def _group_answers_without(settings, name: str) -> None:
    """The `kafka_connect` connection, as the DAGs read it, reaches the Connect group while the
    worker `name` is down: its client asks the killed worker first (whatever the connection's
    order) and goes on to the other, and the connector's status comes back."""
    from include.cdc import kafka_connect

    killed = f"http://{node(settings, name).host}:{settings['KAFKA_CONNECT_PORT']}"
    with kafka_connect.client() as client:
        assert killed in client.base_urls, f"the kafka_connect connection does not name {name}: {client.base_urls}"
        client.base_urls.sort(key=lambda url: url != killed)
        status = client.status("binance-postgres")
        assert client.base_url != killed
    assert status.get("connector", {}).get("state"), f"no connector state in {status}"


def _rejoined(settings, engine: str, name: str) -> str:
    """Wait until the node is back in its cluster; what was checked."""
    n = node(settings, name)
    ns = topology.node_settings(settings, n)
    deadline = time.monotonic() + 300
    while True:
        try:
            if engine == "cassandra" and ls.cassandra_ring_up(topology.node_settings(
                    settings, topology.of(settings, "cassandra")[0]), 3):
                return "3 nodes UN"
            if engine == "kafka" and _isr_full(settings):
                return "every CDC partition has 3 in-sync replicas"
            if engine == "kafka-connect" and ls.connect_healthy(ns):
                return "worker answers"
            if engine == "spark-worker" and n.host in ls.spark_workers_alive(settings):
                return "worker ALIVE at the master"
        except Exception:  # noqa: BLE001 - still coming back
            pass
        assert time.monotonic() < deadline, f"{name} did not rejoin"
        time.sleep(2)


def _isr_full(settings) -> bool:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": settings["KAFKA_BOOTSTRAP_SERVERS"], "log_level": 2})
    topics = admin.list_topics(timeout=10).topics
    return all(len(p.isrs) == 3 for name, t in topics.items() if name.startswith("binance.binance.")
               for p in t.partitions.values())


def _node_has_everything(settings, name: str, pg) -> float:
    """Seconds until the node alone (reads at ONE on it) holds what Postgres holds: what it missed
    while down came back by hinted handoff."""
    ns = topology.node_settings(settings, node(settings, name))
    started = time.monotonic()
    cluster, session = ls._cassandra_session(ns, settings["CASSANDRA_USERNAME"], settings["CASSANDRA_PASSWORD"])
    try:
        session.set_keyspace(settings["CASSANDRA_KEYSPACE"])
        while True:
            diff = differences(pg, session, SYMBOLS)
            if not diff:
                return time.monotonic() - started
            assert time.monotonic() - started < 300, f"{name} alone still differs: {diff}"
            time.sleep(5)
    finally:
        cluster.shutdown()


@pytest.mark.parametrize("engine", ["cassandra", "kafka", "kafka-connect", "spark-worker"])
def test_losing_a_node_under_load_stops_nothing(engine, settings, cassandra, running_stream):
    name = _target(settings, engine)
    driver = stream_driver(cassandra)
    load = Load(settings, SYMBOLS, ticks_per_second=2).start()
    probe = Probe(settings, cassandra).start()
    try:
        time.sleep(BEFORE)
        killed = time.monotonic()
        _kill_and_hold_down(name, DOWN, while_down=(lambda: _group_answers_without(settings, name))
                            if engine == "kafka-connect" else None)
        rejoin = _rejoined(settings, engine, name)
        back = time.monotonic()
        time.sleep(AFTER)
    finally:
        load.stop()
        probe.stop()
    pg = pg_connect(settings)
    try:
        exact = wait_equal(pg, cassandra, SYMBOLS, timeout=420)
        hinted = _node_has_everything(settings, name, pg) if engine == "cassandra" else None
    finally:
        pg.close()
    before = probe.latencies(killed - BEFORE, killed)
    during = probe.latencies(killed, killed + DOWN)
    arrived_while_down = sum(1 for k, t in probe.committed.items()
                             if killed <= t and k in probe.seen and probe.seen[k] < killed + DOWN)
    line = (f"{name:<16} lost {DOWN:.0f}s under {load.rate:.0f} rows/s: commit -> Cassandra before "
            + (f"p50 {statistics.median(before):.2f}s, " if before else "- , ") + "while down "
            + (f"p50 {statistics.median(during):.2f}s max {max(during):.2f}s over {len(during)} probes"
               if during else "no probe")
            + f" ({arrived_while_down} arrived while it was down); back and rejoined ({rejoin}) "
            f"{back - killed:.0f}s after the kill; Cassandra exact {exact:.0f}s after the load stopped"
            + (f"; the node alone exact {hinted:.0f}s later (hints)" if hinted is not None else ""))
    RESULTS.append(line)
    print("\n" + line)
    assert stream_driver(cassandra) == driver and _alive(driver), "the stream was restarted"
    assert probe.missing() == 0, f"{probe.missing()} probe row(s) never reached Cassandra"
    assert arrived_while_down > 0, f"nothing reached Cassandra while {name} was down"


def test_the_bridge_is_exact_after_its_next_run(settings, cassandra, dagbag, running_stream):
    assert_bridge_exact_after_its_run(settings, cassandra, dagbag, SYMBOLS)
