"""The local stack: every service answers its real client, with the settings from .env."""

from __future__ import annotations

import re
import subprocess
import time
from datetime import datetime
from pathlib import Path

import psycopg2
import pytest
import requests
from cassandra import AuthenticationFailed
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import NoHostAvailable
from confluent_kafka.admin import AdminClient

from stack import localstack

pytestmark = pytest.mark.integration


def _pg(settings: dict[str, str], user_key: str = "POSTGRES_USER", password_key: str = "POSTGRES_PASSWORD"):
    return psycopg2.connect(
        host=settings["POSTGRES_HOST"], port=settings["POSTGRES_PORT"], dbname=settings["POSTGRES_DB"],
        user=settings[user_key], password=settings[password_key], connect_timeout=5,
    )


def test_postgres_is_ready_for_logical_decoding(settings):
    with _pg(settings) as conn, conn.cursor() as cur:
        cur.execute("SELECT name, setting, unit FROM pg_settings WHERE name IN "
                    "('wal_level', 'max_replication_slots', 'max_wal_senders', 'max_slot_wal_keep_size', "
                    "'listen_addresses')")
        got = {name: (setting, unit) for name, setting, unit in cur.fetchall()}
    assert got["wal_level"][0] == "logical"
    assert int(got["max_replication_slots"][0]) >= 4
    assert int(got["max_wal_senders"][0]) >= 4
    # bounded: -1 would let a stuck slot fill the disk
    assert int(got["max_slot_wal_keep_size"][0]) > 0
    assert got["listen_addresses"][0] == "127.0.0.1"


def test_postgres_roles_have_least_privilege(settings):
    with _pg(settings) as conn, conn.cursor() as cur:
        cur.execute("SELECT rolname, rolsuper, rolreplication FROM pg_roles WHERE rolname = ANY(%s)",
                    ([settings["POSTGRES_USER"], settings["DEBEZIUM_DB_USER"], settings["GRAFANA_DB_USER"]],))
        roles = {name: (superuser, replication) for name, superuser, replication in cur.fetchall()}
        cur.execute("SELECT nspname, pg_get_userbyid(nspowner) FROM pg_namespace "
                    "WHERE nspname IN ('binance', 'cassandra')")
        owners = dict(cur.fetchall())
        cur.execute("SELECT has_schema_privilege(%s, 'binance', 'USAGE'), "
                    "has_schema_privilege(%s, 'cassandra', 'USAGE'), "
                    "has_schema_privilege(%s, 'cassandra', 'USAGE'), "
                    "has_schema_privilege(%s, 'binance', 'USAGE'), "
                    "has_schema_privilege(%s, 'binance', 'CREATE')",
                    (settings["DEBEZIUM_DB_USER"], settings["DEBEZIUM_DB_USER"], settings["GRAFANA_DB_USER"],
                     settings["GRAFANA_DB_USER"], settings["DEBEZIUM_DB_USER"]))
        dbz_binance, dbz_cassandra, graf_cassandra, graf_binance, dbz_create = cur.fetchone()
    assert roles[settings["POSTGRES_USER"]] == (False, False)
    assert roles[settings["DEBEZIUM_DB_USER"]] == (False, True)
    assert roles[settings["GRAFANA_DB_USER"]] == (False, False)
    assert owners == {"binance": settings["POSTGRES_USER"], "cassandra": settings["POSTGRES_USER"]}
    assert (dbz_binance, dbz_cassandra, dbz_create) == (True, False, False)
    assert (graf_cassandra, graf_binance) == (True, False)


def test_grafana_role_cannot_write(settings):
    conn = _pg(settings, "GRAFANA_DB_USER", "GRAFANA_DB_PASSWORD")
    try:
        with conn.cursor() as cur, pytest.raises(psycopg2.Error, match="read-only|permission denied"):
            cur.execute("CREATE TABLE cassandra.grafana_must_not_write (x int)")
    finally:
        conn.close()


def test_airflow_metadata_has_its_own_database(settings):
    assert settings["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql")
    assert settings["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].endswith(f"/{settings['AIRFLOW_DB']}")
    conn = psycopg2.connect(host=settings["POSTGRES_HOST"], port=settings["POSTGRES_PORT"],
                            dbname=settings["AIRFLOW_DB"], user=settings["AIRFLOW_DB_USER"],
                            password=settings["AIRFLOW_DB_PASSWORD"], connect_timeout=5)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM alembic_version")
            assert cur.fetchone()[0] == 1
    finally:
        conn.close()


def test_kafka_lists_a_broker(settings):
    admin = AdminClient({"bootstrap.servers": settings["KAFKA_BOOTSTRAP_SERVERS"], "log_level": 2})
    meta = admin.list_topics(timeout=10)
    assert len(meta.brokers) == 1
    broker = next(iter(meta.brokers.values()))
    assert (broker.host, str(broker.port)) == (settings["KAFKA_HOST"], settings["KAFKA_PORT"])


def test_kafka_connect_has_the_debezium_postgres_plugin(settings):
    resp = requests.get(f"{settings['KAFKA_CONNECT_URL']}/connector-plugins", timeout=10)
    resp.raise_for_status()
    classes = {p["class"]: p.get("version") for p in resp.json()}
    assert "io.debezium.connector.postgresql.PostgresConnector" in classes
    assert classes["io.debezium.connector.postgresql.PostgresConnector"].startswith("3.")
    worker = requests.get(f"{settings['KAFKA_CONNECT_URL']}/", timeout=10).json()
    assert worker["version"].startswith("4.3")


def test_cassandra_answers_with_credentials(settings):
    cluster, session = localstack._cassandra_session(settings, settings["CASSANDRA_USERNAME"],
                                                     settings["CASSANDRA_PASSWORD"])
    try:
        version = session.execute("SELECT release_version FROM system.local").one()[0]
    finally:
        cluster.shutdown()
    assert version.startswith("5.0")


@pytest.mark.parametrize("credentials", [None, ("cassandra", "cassandra")], ids=["anonymous", "default-superuser"])
def test_cassandra_refuses_anonymous_and_default_logins(settings, credentials):
    from cassandra.cluster import Cluster

    kwargs = {"auth_provider": PlainTextAuthProvider(*credentials)} if credentials else {}
    cluster = Cluster([settings["CASSANDRA_HOST"]], port=int(settings["CASSANDRA_PORT"]), protocol_version=5,
                      connect_timeout=5, **kwargs)
    try:
        with pytest.raises(NoHostAvailable) as err:
            cluster.connect()
    finally:
        cluster.shutdown()
    reasons = " ".join(str(e) for e in err.value.errors.values())
    assert any(isinstance(e, AuthenticationFailed) for e in err.value.errors.values()) or \
        re.search("auth", reasons, re.I), reasons


def test_airflow_api_server_is_healthy(settings):
    health = requests.get(f"{settings['AIRFLOW_URL']}/api/v2/monitor/health", timeout=10).json()
    for part in ("metadatabase", "scheduler", "dag_processor", "triggerer"):
        assert health[part]["status"] == "healthy", health


def test_the_running_scheduler_has_the_task_libraries_loaded(settings):
    """stack/conf/airflow_local_settings.py took effect in the scheduler itself, whose forked task
    processes inherit what it loaded: the compiled modules of psycopg and of the Cassandra driver are
    mapped into its memory."""
    pid = localstack.read_pid("airflow-scheduler")
    assert pid is not None, "the scheduler is not running"
    maps = Path(f"/proc/{pid}/maps").read_text()
    for library in ("psycopg_binary/pq.", "cassandra/cluster."):
        assert library in maps, f"{library} not loaded in the scheduler (PID {pid})"


def test_the_scheduler_starts_the_per_minute_dags_at_their_own_seconds(settings):
    """The scheduler's next run of each per-minute DAG (its REST API) falls on the second its cron
    expression's sixth field names (include/schedules.py), and no two on the same second."""
    from include.schedules import schedule
    from stack.demo import _token

    headers = {"Authorization": f"Bearer {_token(settings)}"}
    expected = {"binance_extract": "BINANCE_EXTRACT_SCHEDULE", "cassandra_bridge": "CASSANDRA_BRIDGE_SCHEDULE",
                "retention": "RETENTION_SCHEDULE", "pipeline_health": "PIPELINE_HEALTH_SCHEDULE"}
    seconds = {}
    for dag_id, setting in expected.items():
        cron = schedule(setting).split()
        deadline = time.monotonic() + 120
        while True:  # a stack just started may not have parsed the DAG yet
            dag = requests.get(f"{settings['AIRFLOW_URL']}/api/v2/dags/{dag_id}", headers=headers, timeout=10)
            if dag.status_code == 200 and dag.json()["next_dagrun_run_after"]:
                dag = dag.json()
                break
            assert time.monotonic() < deadline, f"no next run of {dag_id} after 120 s: {dag.text[:300]}"
            time.sleep(2)
        assert dag["timetable_summary"] == " ".join(cron), dag
        run_after = datetime.fromisoformat(dag["next_dagrun_run_after"])
        seconds[dag_id] = run_after.second
        assert seconds[dag_id] == (int(cron[5]) if len(cron) > 5 else 0), (dag_id, run_after)
    assert len(set(seconds.values())) == len(seconds), seconds


def test_airflow_login_printed_by_make_up_works(settings):
    resp = requests.post(f"{settings['AIRFLOW_URL']}/auth/token", timeout=10,
                         json={"username": settings["AIRFLOW_ADMIN_USER"],
                               "password": settings["AIRFLOW_ADMIN_PASSWORD"]})
    assert resp.status_code in (200, 201), resp.text
    token = resp.json()["access_token"]
    dags = requests.get(f"{settings['AIRFLOW_URL']}/api/v2/dags", timeout=10,
                        headers={"Authorization": f"Bearer {token}"})
    assert dags.status_code == 200, dags.text


def test_spark_submit_on_airflow_path_is_spark_3_5(settings):
    out = subprocess.run(["spark-submit", "--version"], capture_output=True, text=True, timeout=120,
                         env=localstack.service_env(settings), check=True)
    text = out.stdout + out.stderr
    assert re.search(r"version 3\.5\.\d+", text), text
    assert "Scala version 2.12" in text


def test_connector_jars_for_spark_are_local_files():
    jars = {p.name for p in (localstack.JARS / "spark-jars").glob("*.jar")}
    assert any(j.startswith("spark-sql-kafka-0-10_2.12-3.5") for j in jars)
    assert any(j.startswith("spark-cassandra-connector_2.12-3.5.1") for j in jars)


def _listening_sockets(pid: int) -> list[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink().as_posix()
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inodes:  # 0A = LISTEN
                found.append(cols[1])
    return found


def _is_loopback(hex_addr: str) -> bool:
    addr = hex_addr.split(":")[0]
    if len(addr) == 8:  # IPv4, little-endian
        return addr.endswith("7F")
    # IPv6: ::1 or ::ffff:127.x.x.x
    return addr == "00000000000000000000000001000000" or (
        addr.startswith("0000000000000000FFFF0000") and addr.endswith("7F"))


def test_every_listening_socket_is_on_loopback(settings):
    checked = 0
    for svc in localstack.services(settings):
        pid = localstack.read_pid(svc.name)
        if svc.name == "binance-api" and localstack.binance_mode() == "online":
            continue  # runs only for the offline demo
        assert pid is not None, f"{svc.name} is not running"
        pids = [pid, *[int(p) for p in subprocess.run(["pgrep", "-g", str(pid)], capture_output=True,
                                                      text=True).stdout.split()]]
        for p in set(pids):
            try:
                sockets = _listening_sockets(p)
            except (FileNotFoundError, PermissionError):
                continue
            for hex_addr in sockets:
                checked += 1
                assert _is_loopback(hex_addr), f"{svc.name} (PID {p}) listens on {hex_addr}, not loopback"
    assert checked >= 6
