"""The local stack's two profiles, and where each node of each engine runs in them.

- single (the default): one PostgreSQL, one Kafka broker (2 partitions per topic), one Cassandra
  node, one Kafka Connect worker, Airflow; the stream runs Spark in local mode.
- cluster (`make up CLUSTER=1`): the same PostgreSQL and Airflow, and on loopback addresses of
  their own (CLUSTER_HOSTS, 127.0.0.2-4): 3 Cassandra nodes in one datacenter, 3 KRaft brokers
  (replication factor 3, min.insync.replicas 2, 3 partitions per topic), 2 Kafka Connect workers in
  one group, a Spark standalone master and 2 workers the stream is submitted to.

The pipeline does not know which profile runs: `overlay` changes settings only (the Airflow
Connections and Variables given through AIRFLOW_CONN_* / AIRFLOW_VAR_*, the stream's checkpoint).
Each profile keeps its engines' data apart (.run/<engine> and .run/cluster/<node>); PostgreSQL and
Airflow's data are shared, so switching profile keeps the source and the pipeline's history.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

RUN = Path(__file__).resolve().parent.parent / ".run"
PROFILE_FILE = RUN / "profile"
PROFILES = ("single", "cluster")
CLUSTER_RUN = RUN / "cluster"
# the Cassandra datacenter of the cluster profile (GossipingPropertyFileSnitch)
DATACENTER = "dc1"


@dataclass(frozen=True)
class Node:
    """One process of an engine: its program name under supervisord, its address, its folder."""

    engine: str  # cassandra, kafka, kafka-connect, spark-master, spark-worker
    index: int  # 1-based within the engine
    host: str
    name: str
    folder: Path


def profile() -> str:
    """The profile `up` last started (single unless `make up CLUSTER=1` chose cluster)."""
    try:
        chosen = PROFILE_FILE.read_text().strip()
    except FileNotFoundError:
        return "single"
    return chosen if chosen in PROFILES else "single"


def set_profile(name: str) -> None:
    if name not in PROFILES:
        raise ValueError(f"profile must be one of {', '.join(PROFILES)}, got {name!r}")
    RUN.mkdir(parents=True, exist_ok=True)
    PROFILE_FILE.write_text(name + "\n")


def cluster_hosts(s: dict[str, str]) -> list[str]:
    hosts = [h.strip() for h in s.get("CLUSTER_HOSTS", "127.0.0.2,127.0.0.3,127.0.0.4").split(",") if h.strip()]
    if len(hosts) != 3 or any(not h.startswith("127.") for h in hosts):
        raise ValueError(f"CLUSTER_HOSTS must be three loopback addresses (127.x.x.x), got {s.get('CLUSTER_HOSTS')!r}")
    return hosts


def connect_urls(s: dict[str, str]) -> list[str]:
    """The REST URL of every Kafka Connect worker of the profile (any of them answers for the group)."""
    return [f"http://{n.host}:{s['KAFKA_CONNECT_PORT']}" for n in of(s, "kafka-connect")]


def nodes(s: dict[str, str], chosen: str | None = None) -> list[Node]:
    """Every engine node of a profile, in start order within each engine."""
    if (chosen or s.get("STACK_PROFILE") or profile()) == "single":
        return [Node("kafka", 1, s["KAFKA_HOST"], "kafka", RUN / "kafka"),
                Node("cassandra", 1, s["CASSANDRA_HOST"], "cassandra", RUN / "cassandra"),
                Node("kafka-connect", 1, s["KAFKA_CONNECT_HOST"], "kafka-connect", RUN / "kafka-connect")]
    hosts = cluster_hosts(s)
    out = [Node("kafka", i, h, f"kafka-{i}", CLUSTER_RUN / f"kafka-{i}") for i, h in enumerate(hosts, 1)]
    out += [Node("cassandra", i, h, f"cassandra-{i}", CLUSTER_RUN / f"cassandra-{i}") for i, h in enumerate(hosts, 1)]
    out += [Node("kafka-connect", i, h, f"kafka-connect-{i}", CLUSTER_RUN / f"kafka-connect-{i}")
            for i, h in enumerate(hosts[:2], 1)]
    out.append(Node("spark-master", 1, hosts[0], "spark-master", CLUSTER_RUN / "spark-master"))
    out += [Node("spark-worker", i, h, f"spark-worker-{i}", CLUSTER_RUN / f"spark-worker-{i}")
            for i, h in enumerate(hosts[1:], 1)]
    return out


def of(s: dict[str, str], engine: str) -> list[Node]:
    return [n for n in nodes(s) if n.engine == engine]


def overlay(s: dict[str, str], chosen: str | None = None) -> dict[str, str]:
    """The settings as the profile has them: for cluster, the contact points, brokers, Connect and
    Spark master URLs, the Cassandra replication and the checkpoint, and the Airflow Connections
    and Variables built from them. What the pipeline reads changes; the code it runs does not."""
    chosen = chosen or profile()
    if chosen == "single":
        return {**s, "STACK_PROFILE": chosen}
    out = {**s, "STACK_PROFILE": chosen}
    hosts = cluster_hosts(s)
    brokers = ",".join(f"{h}:{s['KAFKA_PORT']}" for h in hosts)
    out.update(
        KAFKA_HOST=hosts[0], KAFKA_BOOTSTRAP_SERVERS=brokers,
        CASSANDRA_HOST=hosts[0], CASSANDRA_HOSTS=",".join(hosts),
        KAFKA_CONNECT_HOST=hosts[0], KAFKA_CONNECT_URL=f"http://{hosts[0]}:{s['KAFKA_CONNECT_PORT']}",
        SPARK_MASTER_URL=f"spark://{hosts[0]}:{s.get('SPARK_MASTER_PORT', '7077')}",
        SPARK_MASTER_WEBUI_URL=f"http://{hosts[0]}:{s.get('SPARK_MASTER_WEBUI_PORT', '18080')}",
        CDC_CHECKPOINT_DIR=str(CLUSTER_RUN / "spark" / "checkpoints" / "cdc_stream"),
        CASSANDRA_HEAP=s.get("CLUSTER_CASSANDRA_HEAP", "768m"), KAFKA_HEAP=s.get("CLUSTER_KAFKA_HEAP", "384m"),
        KAFKA_CONNECT_HEAP=s.get("CLUSTER_KAFKA_CONNECT_HEAP", "512m"),
    )
    out["AIRFLOW_CONN_CASSANDRA_DEFAULT"] = json.dumps({
        "conn_type": "cassandra", "host": out["CASSANDRA_HOSTS"], "port": int(s["CASSANDRA_PORT"]),
        "login": s["CASSANDRA_USERNAME"], "password": s["CASSANDRA_PASSWORD"], "schema": s["CASSANDRA_KEYSPACE"]})
    out["AIRFLOW_CONN_KAFKA_DEFAULT"] = json.dumps({"conn_type": "kafka", "extra": {"bootstrap.servers": brokers}})
    # every worker of the group: a task reaches the group through the other when one is down
    out["AIRFLOW_CONN_KAFKA_CONNECT"] = json.dumps({
        "conn_type": "http", "host": ",".join(n.host for n in of(out, "kafka-connect")),
        "port": int(s["KAFKA_CONNECT_PORT"]), "schema": "http"})
    out["AIRFLOW_CONN_SPARK_DEFAULT"] = json.dumps({
        "conn_type": "spark", "host": f"spark://{hosts[0]}", "port": int(s.get("SPARK_MASTER_PORT", "7077")),
        "extra": {"deploy-mode": "client"}})
    out["AIRFLOW_VAR_CASSANDRA_REPLICATION"] = json.dumps({"class": "NetworkTopologyStrategy", DATACENTER: 3})
    return out


def cluster_changes(s: dict[str, str]) -> dict[str, str]:
    """The settings the cluster profile changes, as they are for it."""
    return {k: v for k, v in overlay(s, "cluster").items() if s.get(k) != v}


def node_settings(s: dict[str, str], node: Node) -> dict[str, str]:
    """The settings one node's configuration templates are rendered with (stack/conf/)."""
    out = dict(s)
    cluster = node.name != node.engine
    peers = [n for n in nodes(s) if n.engine == node.engine]
    if node.engine == "cassandra":
        out.update(
            CASSANDRA_HOST=node.host, CASSANDRA_NODE_DIR=str(node.folder),
            CASSANDRA_SEEDS=",".join(f"{p.host}:{s['CASSANDRA_STORAGE_PORT']}" for p in peers),
            CASSANDRA_SNITCH="GossipingPropertyFileSnitch" if cluster else "SimpleSnitch",
            # a node down for a while gets the writes it missed from the others' hints when it is back
            CASSANDRA_HINTED_HANDOFF="true" if cluster else "false",
            CASSANDRA_TOKEN_RF="3" if cluster else "1",
            CASSANDRA_JMX_PORT=str(int(s.get("CASSANDRA_JMX_PORT", "7199")) + (node.index if cluster else 0)),
        )
    elif node.engine == "kafka":
        out.update(
            KAFKA_HOST=node.host, KAFKA_NODE_ID=str(node.index), KAFKA_NODE_DIR=str(node.folder),
            KAFKA_QUORUM_VOTERS=",".join(f"{p.index}@{p.host}:{s['KAFKA_CONTROLLER_PORT']}" for p in peers),
            KAFKA_REPLICATION="3" if cluster else "1", KAFKA_MIN_ISR="2" if cluster else "1",
            # the partitions of the topics Debezium creates: each is read and written by one Spark
            # task, so a lone broker still gives 2, for a table's changes to use both cores here
            KAFKA_PARTITIONS="3" if cluster else "2",
        )
    elif node.engine == "kafka-connect":
        out.update(KAFKA_CONNECT_HOST=node.host, KAFKA_CONNECT_URL=f"http://{node.host}:{s['KAFKA_CONNECT_PORT']}",
                   KAFKA_REPLICATION="3" if cluster else "1")
    return out
