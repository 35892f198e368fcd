"""Local stack: every service of the pipeline on one machine, from the project's own files.

`up` writes .env from .env.example if missing, starts supervisord (stack/supervisor.py), then has it
start PostgreSQL, Kafka (KRaft), Cassandra, Kafka Connect and Airflow in dependency order, waiting
for each health check, and last the watchdog (stack/watchdog.py); from then on a service that stops
is started again without anyone running `up`. `down` stops them all and supervisord, keeping all
data; `clean` also deletes the runtime folder (.run/).
The command line is stack/__main__.py (`python -m stack up|down|status|env|clean|demo`).

Installs (venvs, jars, Debian packages) are the Makefile's job; this script only runs services.
Data, logs and supervisord's socket live under .run/ (git-ignored). Every socket binds 127.0.0.1.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from include.names import ARCHIVE_POOL, BINANCE_POOL
from stack import supervisor, topology
from stack.topology import Node

REPO = Path(__file__).resolve().parent.parent
RUN = REPO / ".run"
LOGS = RUN / "logs"
LEGACY_PIDS = RUN / "pids"
CONF = REPO / "stack" / "conf"
JARS = REPO / ".cache" / "jvm"
ENV_FILE = REPO / ".env"
ENV_EXAMPLE = REPO / ".env.example"
VENV_BIN = REPO / ".venv" / "bin"

_VAR = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)\}")


class StackError(RuntimeError):
    """A service failed to install, start or answer its health check."""


# --------------------------------------------------------------------------- settings


def _expand(value: str, known: dict[str, str]) -> str:
    return _VAR.sub(lambda m: known.get(m.group(1), os.environ.get(m.group(1), "")), value)


def parse_env(text: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """Parse a .env file the way `set -a; . ./.env` reads it: ${NAME} expands, except in '...'."""
    known = dict(base or {})
    out: dict[str, str] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise StackError(f".env line {lineno} is not NAME=value: {raw!r}")
        if len(value) >= 2 and value[0] == value[-1] == "'":
            value = value[1:-1]
        else:
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            value = _expand(value, known)
        known[key] = value
        out[key] = value
    return out


def _fernet_key() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


def _fill(text: str) -> str:
    text = text.replace("__repo__", str(REPO))
    text = text.replace("__generated_fernet__", _fernet_key())
    # alphanumeric secrets: safe inside connection URIs and shell without quoting
    return re.sub("__generated__", lambda _m: secrets.token_hex(16), text)


def write_env_if_missing() -> bool:
    """Create .env from .env.example with fresh secrets. An existing .env keeps every value it
    has; settings added to .env.example since are appended to it."""
    example = ENV_EXAMPLE.read_text()
    if ENV_FILE.exists():
        have = ENV_FILE.read_text()
        names = set(re.findall(r"^([A-Za-z_][A-Za-z0-9_]*)=", have, re.M))
        new = [line for line in example.splitlines() if (m := re.match(r"([A-Za-z_][A-Za-z0-9_]*)=", line))
               and m.group(1) not in names]
        if not new:
            return False
        with ENV_FILE.open("a") as f:
            f.write("\n# added from .env.example\n" + _fill("\n".join(new)) + "\n")
        print(f"added to {ENV_FILE.name}: {', '.join(line.split('=')[0] for line in new)}")
        return True
    tmp = ENV_FILE.with_suffix(".tmp")
    tmp.write_text(_fill(example))
    tmp.chmod(0o600)
    os.replace(tmp, ENV_FILE)
    print(f"wrote {ENV_FILE.name} with generated passwords (git-ignored; kept from now on)")
    return True


def load_env() -> dict[str, str]:
    if not ENV_FILE.exists():
        raise StackError(".env is missing: run `make up` (it creates it from .env.example)")
    settings = parse_env(ENV_FILE.read_text(), base={"PATH": os.environ.get("PATH", "")})
    settings["RUN_DIR"] = str(RUN)
    settings["REPO"] = str(REPO)
    if binance_mode() == "offline":
        # `make demo OFFLINE=1`: the pipeline reads the bundled Binance-compatible server, which
        # serves the archive layout too
        server = json.dumps(
            {"conn_type": "http", "host": f"http://127.0.0.1:{settings.get('BINANCE_TEST_SERVER_PORT', '8765')}"})
        settings["AIRFLOW_CONN_BINANCE_API"] = server
        settings["AIRFLOW_CONN_BINANCE_ARCHIVE"] = server
    # the cluster profile (make up CLUSTER=1): its contact points, brokers, URLs, in the connections
    return topology.overlay(settings)


MODE_FILE = RUN / "binance_api_mode"


def set_binance_mode(offline: bool) -> None:
    """Remember which Binance the pipeline reads: `up` starts (or restarts) Airflow with it."""
    RUN.mkdir(parents=True, exist_ok=True)
    MODE_FILE.write_text("offline\n" if offline else "online\n")


def binance_mode() -> str:
    """online (the real API, the default) or offline (the bundled server), as `make demo` last set it."""
    try:
        return MODE_FILE.read_text().strip() or "online"
    except FileNotFoundError:
        return "online"


def render(template: Path, dest: Path, settings: dict[str, str]) -> Path:
    """Fill ${NAME} from settings; leave other ${...} (Kafka config providers) untouched."""
    text = template.read_text()

    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in settings:
            raise StackError(f"{template.name} needs setting {name}, which .env does not define")
        return settings[name]

    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(_VAR.sub(sub, text))
    return dest


def service_env(settings: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update({k: v for k, v in settings.items() if k not in ("RUN_DIR", "REPO")})
    return env


# --------------------------------------------------------------------------- processes


def log_file(name: str) -> Path:
    return LOGS / f"{name}.log"


def read_pid(name: str) -> int | None:
    """The PID of a service supervisord runs now, else None."""
    return supervisor.pid(name)


def _stop_legacy() -> None:
    """Stop the services of a stack started before supervisord ran them (PID files under .run/pids/),
    so that supervisord can take over their ports; their data stays."""
    for path in sorted(LEGACY_PIDS.glob("*.pid")) if LEGACY_PIDS.is_dir() else []:
        try:
            pid = int(path.read_text().split()[0])
            os.kill(pid, 0)
        except (ValueError, IndexError, ProcessLookupError):
            path.unlink()
            continue
        print(f"{path.stem}: stopping PID {pid}, started before supervisord ran the stack")
        if path.stem == "postgres":
            subprocess.run(_as_postgres([str(_pg_bin() / "pg_ctl"), "-D", str(_pg_dirs()[0]), "-m", "fast", "-w",
                                         "stop"]), check=False, stdout=subprocess.DEVNULL)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.3)
            if _alive(pid):
                os.killpg(pid, signal.SIGKILL)
        path.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        return s.connect_ex((host, port)) == 0


def tail(path: Path, lines: int = 40) -> str:
    try:
        data = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return f"(no log at {path})"
    return "\n".join(data[-lines:])


def wait_for(name: str, check: Callable[[], bool], timeout: float, log: Path) -> None:
    """Poll `check` until it passes; on timeout or if the process died, fail with its log."""
    started = time.monotonic()
    last_error = ""
    while time.monotonic() - started < timeout:
        try:
            if check():
                return
        except Exception as exc:  # noqa: BLE001 - any failure of a probe means "not yet"
            last_error = f"{type(exc).__name__}: {exc}"
        record = supervisor.info(name)
        if record and record["statename"] == "FATAL":
            raise StackError(f"{name} failed to start {supervisor.START_RETRIES} times in a row. "
                             f"Last lines of {log}:\n{tail(log)}")
        time.sleep(1.0)
    raise StackError(
        f"{name} not healthy after {timeout:.0f}s ({last_error or 'health check failing'}). "
        f"Last lines of {log}:\n{tail(log)}"
    )


def java() -> str:
    home = os.environ.get("JAVA_HOME")
    candidates = [Path(home) / "bin" / "java"] if home else []
    candidates.append(Path("/usr/lib/jvm/java-17-openjdk-amd64/bin/java"))
    for c in candidates:
        if c.exists():
            return str(c)
    found = shutil.which("java")
    if not found:
        raise StackError("java not found: install Java 17 (`make install` does it with apt)")
    return found


def classpath(folder: Path) -> str:
    if not folder.is_dir() or not any(folder.glob("*.jar")):
        raise StackError(f"no jars in {folder}: run `make install` (Maven resolves them)")
    return f"{folder}/*"


# --------------------------------------------------------------------------- services


@dataclass
class Service:
    """A program of the stack (supervisord's name) and where it answers, for `make status`."""

    name: str
    address: str | None


# ---- PostgreSQL


def _pg_bin() -> Path:
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parent.parent.name))
    if not versions:
        raise StackError("PostgreSQL server not installed: `make install` installs it with apt")
    return versions[-1].parent


def _as_postgres(argv: list[str]) -> list[str]:
    # Postgres refuses to run as root: use the Debian package's postgres OS user
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *argv]
    return argv


def _pg_dirs() -> tuple[Path, Path]:
    return RUN / "postgres" / "data", RUN / "postgres" / "socket"


def prepare_postgres(s: dict[str, str]) -> None:
    """initdb on first use, then this stack's settings into postgresql.conf and pg_hba.conf."""
    data, sock = _pg_dirs()
    binp = _pg_bin()
    owner = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
    sock.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(sock, owner, owner)
        shutil.chown(RUN / "postgres", owner, owner)
    if not (data / "PG_VERSION").exists():
        print("postgres: initdb")
        if os.geteuid() == 0:
            data.mkdir(parents=True, exist_ok=True)
            shutil.chown(data, owner, owner)
        subprocess.run(
            _as_postgres([str(binp / "initdb"), "-D", str(data), "-U", "postgres", "--auth-local=peer",
                          "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8"]),
            check=True, stdout=subprocess.DEVNULL,
        )
    conf = data / "postgresql.conf"
    text = conf.read_text()
    marker = "# ---- binance-cdc local stack"
    text = text.split(marker)[0]
    rendered = _VAR.sub(lambda m: s[m.group(1)], (CONF / "postgresql.conf").read_text())
    conf.write_text(f"{text}{marker}\n{rendered}")
    shutil.copy(CONF / "pg_hba.conf", data / "pg_hba.conf")
    if os.geteuid() == 0:
        shutil.chown(data / "pg_hba.conf", owner, owner)


def postgres_command(s: dict[str, str]) -> Command:
    # the postmaster in the foreground, logging to stderr (supervisord's log); as `postgres` under root
    return Command([str(_pg_bin() / "postgres"), "-D", str(_pg_dirs()[0])], dict(os.environ),
                   user="postgres" if os.geteuid() == 0 else None)


def postgres_healthy(s: dict[str, str]) -> bool:
    r = subprocess.run(
        [str(_pg_bin() / "pg_isready"), "-q", "-h", s["POSTGRES_HOST"], "-p", s["POSTGRES_PORT"]],
        check=False,
    )
    return r.returncode == 0


def bootstrap_postgres(s: dict[str, str]) -> None:
    _, sock = _pg_dirs()
    variables = {
        "pipeline_user": s["POSTGRES_USER"], "pipeline_password": s["POSTGRES_PASSWORD"],
        "pipeline_db": s["POSTGRES_DB"],
        "debezium_user": s["DEBEZIUM_DB_USER"], "debezium_password": s["DEBEZIUM_DB_PASSWORD"],
        "grafana_user": s["GRAFANA_DB_USER"], "grafana_password": s["GRAFANA_DB_PASSWORD"],
        "airflow_user": s["AIRFLOW_DB_USER"], "airflow_password": s["AIRFLOW_DB_PASSWORD"],
        "airflow_db": s["AIRFLOW_DB"],
    }
    argv = [str(_pg_bin() / "psql"), "-X", "-q", "-h", str(sock), "-p", s["POSTGRES_PORT"], "-U", "postgres",
            "-d", "postgres", "-f", "-"]
    for k, v in variables.items():
        argv += ["-v", f"{k}={v}"]
    sql = (REPO / "stack" / "postgres" / "bootstrap.sql").read_bytes()
    r = subprocess.run(_as_postgres(argv), input=sql, capture_output=True, check=False)
    if r.returncode != 0:
        raise StackError(f"postgres bootstrap (stack/postgres/bootstrap.sql) failed:\n{r.stderr.decode()}")


# ---- Kafka broker and Kafka Connect


def _jvm_logging(name: str) -> list[str]:
    return [f"-Dlog4j2.configurationFile={CONF / 'log4j2.properties'}", f"-Dkafka.logs.dir={LOGS}",
            f"-Djava.io.tmpdir={RUN / 'tmp'}"]


def _kafka_base(s: dict[str, str]) -> list[str]:
    return [java(), f"-Xms{s['KAFKA_HEAP']}", f"-Xmx{s['KAFKA_HEAP']}", "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20", *_jvm_logging("kafka"), "-cp", classpath(JARS / "kafka")]


def _kafka_props(s: dict[str, str], node: Node) -> Path:
    return render(CONF / "kafka-server.properties", node.folder / "server.properties", topology.node_settings(s, node))


def prepare_kafka(s: dict[str, str]) -> None:
    """Format each broker's KRaft log dir on first use, every broker of a profile with one cluster id."""
    (RUN / "tmp").mkdir(parents=True, exist_ok=True)
    brokers = topology.of(s, "kafka")
    cluster_file = brokers[0].folder / "cluster.id" if len(brokers) == 1 else topology.CLUSTER_RUN / "kafka.cluster.id"
    for node in brokers:
        props = _kafka_props(s, node)
        if (node.folder / "data" / "meta.properties").exists():
            continue
        print(f"{node.name}: formatting the KRaft log dir")
        base = _kafka_base(s)
        if not cluster_file.exists():
            out = subprocess.run([*base, "kafka.tools.StorageTool", "random-uuid"], capture_output=True,
                                 text=True, check=True)
            cluster_file.parent.mkdir(parents=True, exist_ok=True)
            cluster_file.write_text(out.stdout.strip().splitlines()[-1] + "\n")
        r = subprocess.run([*base, "kafka.tools.StorageTool", "format", "-t", cluster_file.read_text().strip(),
                            "-c", str(props), "--ignore-formatted"], capture_output=True, text=True, check=False)
        if r.returncode != 0:
            raise StackError(f"{node.name}: kafka storage format failed:\n{r.stdout}\n{r.stderr}")


def kafka_command(s: dict[str, str], node: Node) -> Command:
    return Command([*_kafka_base(s), "kafka.Kafka", str(_kafka_props(s, node))], service_env(s))


def kafka_healthy(s: dict[str, str]) -> bool:
    from confluent_kafka.admin import AdminClient

    if not port_open(s["KAFKA_HOST"], int(s["KAFKA_PORT"])):
        return False
    # this broker, asked by itself, knows itself as part of the cluster (a quorum of controllers is up)
    admin = AdminClient({"bootstrap.servers": f"{s['KAFKA_HOST']}:{s['KAFKA_PORT']}", "socket.timeout.ms": 3000,
                         "log_level": 2})
    meta = admin.list_topics(timeout=3)
    return int(s.get("KAFKA_NODE_ID", "1")) in meta.brokers


def connect_command(s: dict[str, str], node: Node) -> Command:
    props = render(CONF / "kafka-connect.properties", node.folder / "worker.properties",
                   topology.node_settings(s, node))
    return Command([java(), f"-Xms{s['KAFKA_CONNECT_HEAP']}", f"-Xmx{s['KAFKA_CONNECT_HEAP']}", "-XX:+UseG1GC",
                    *_jvm_logging("kafka-connect"), "-cp", classpath(JARS / "kafka"),
                    "org.apache.kafka.connect.cli.ConnectDistributed", str(props)], service_env(s))


def _http_json(url: str, timeout: float = 5.0) -> object:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback URL from .env
        return json.loads(resp.read())


def connect_healthy(s: dict[str, str]) -> bool:
    plugins = _http_json(f"{s['KAFKA_CONNECT_URL']}/connector-plugins")
    return any(p.get("class") == "io.debezium.connector.postgresql.PostgresConnector" for p in plugins)  # type: ignore[union-attr]


# ---- Cassandra

_CASSANDRA_JVM17 = [
    "-Djdk.attach.allowAttachSelf=true", "-Dio.netty.tryReflectionSetAccessible=true", "-XX:+UseG1GC",
    "-XX:+ParallelRefProcEnabled", "-XX:MaxGCPauseMillis=300", "-Xss256k",
    *[f"--add-exports={m}=ALL-UNNAMED" for m in (
        "java.base/jdk.internal.misc", "java.management.rmi/com.sun.jmx.remote.internal.rmi",
        "java.rmi/sun.rmi.registry", "java.rmi/sun.rmi.server", "java.sql/java.sql",
        "java.base/jdk.internal.ref", "jdk.unsupported/sun.misc", "jdk.compiler/com.sun.tools.javac.file",
        "jdk.attach/sun.tools.attach", "java.base/java.lang.ref",
    )],
    *[f"--add-opens={m}=ALL-UNNAMED" for m in (
        "java.base/java.lang.module", "java.base/jdk.internal.loader", "java.base/jdk.internal.ref",
        "java.base/jdk.internal.reflect", "java.base/jdk.internal.math", "java.base/jdk.internal.module",
        "java.base/jdk.internal.util.jar", "java.base/sun.nio.ch", "java.base/java.io",
        "java.base/java.lang.reflect", "java.base/java.lang", "java.base/java.util", "java.base/java.nio",
        "jdk.management/com.sun.management.internal", "jdk.compiler/com.sun.tools.javac",
    )],
]


def cassandra_command(s: dict[str, str], node: Node) -> Command:
    ns = topology.node_settings(s, node)
    yaml = render(CONF / "cassandra.yaml", node.folder / "cassandra.yaml", ns)
    for sub in ("data", "commitlog", "saved_caches", "hints", "cdc_raw"):
        (node.folder / sub).mkdir(parents=True, exist_ok=True)
    rackdc = node.folder / "cassandra-rackdc.properties"
    # GossipingPropertyFileSnitch (the cluster profile) reads the node's datacenter and rack here
    rackdc.write_text(f"dc={topology.DATACENTER}\nrack=rack1\n")
    (RUN / "tmp").mkdir(parents=True, exist_ok=True)
    jamm = next((JARS / "cassandra").glob("jamm-*.jar"), None)
    if jamm is None:
        raise StackError(f"jamm jar missing from {JARS / 'cassandra'}: run `make install`")
    heap = s["CASSANDRA_HEAP"]
    argv = [
        java(), f"-Xms{heap}", f"-Xmx{heap}", *_CASSANDRA_JVM17, f"-javaagent:{jamm}",
        f"-Dcassandra.config=file://{yaml}", f"-Dcassandra.storagedir={node.folder}",
        f"-Dcassandra-rackdc.properties=file://{rackdc}",
        f"-Dcassandra.logdir={LOGS}", "-Dcassandra-foreground=yes",
        f"-Dlogback.configurationFile={CONF / 'cassandra-logback.xml'}",
        "-Dcassandra.superuser_setup_delay_ms=0", "-Dcassandra.skip_wait_for_gossip_to_settle=0",
        "-Dcassandra.ring_delay_ms=1000", "-Dcassandra.initial_token_allocation_delay_ms=0",
        # A node that misses a schema change's push (sent once, to the peers it sees alive then) learns
        # the new version through gossip and, a minute after its start, postpones pulling it by
        # migration_delay_ms and re-checks every schema_pull_interval_ms, both 60 s by default: the
        # cluster's migrations then waited about 60 s per statement for agreement. Seconds on this ring.
        "-Dcassandra.migration_delay_ms=1000", "-Dcassandra.schema_pull_interval_ms=5000",
        f"-Djava.io.tmpdir={RUN / 'tmp'}", "-Djava.net.preferIPv4Stack=true",
        # JMX bound to loopback, no authentication (cassandra-env.sh's LOCAL_JMX): what nodetool talks to
        f"-Dcassandra.jmx.local.port={ns['CASSANDRA_JMX_PORT']}",
        "-cp", classpath(JARS / "cassandra"), "org.apache.cassandra.service.CassandraDaemon",
    ]
    return Command(argv, service_env(s))


_LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d\.\d+ \[")


def nodetool(s: dict[str, str], *args: str, timeout: float = 120) -> str:
    """Cassandra's nodetool (from the cassandra-all jar) against the local node's JMX; its output."""
    argv = [java(), *_CASSANDRA_JVM17, "-cp", classpath(JARS / "cassandra"), "org.apache.cassandra.tools.NodeTool",
            "-h", "127.0.0.1", "-p", s.get("CASSANDRA_JMX_PORT", "7199"), *args]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if run.returncode != 0:
        raise StackError(f"nodetool {' '.join(args)} failed ({run.returncode}): {(run.stderr or run.stdout)[-1000:]}")
    # the driver's own start-up logging (netty, at DEBUG) goes to stdout too
    return "".join(line for line in run.stdout.splitlines(keepends=True) if not _LOG_LINE.match(line))


def _cassandra_session(s: dict[str, str], user: str, password: str,  # noqa: ANN202 - driver type
                       schema_agreement_wait: float = 10):
    from cassandra.auth import PlainTextAuthProvider
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import WhiteListRoundRobinPolicy

    profile = ExecutionProfile(load_balancing_policy=WhiteListRoundRobinPolicy([s["CASSANDRA_HOST"]]),
                               request_timeout=20)
    cluster = Cluster(
        [s["CASSANDRA_HOST"]], port=int(s["CASSANDRA_PORT"]),
        auth_provider=PlainTextAuthProvider(user, password),
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
        protocol_version=5, connect_timeout=5, control_connection_timeout=5,
        max_schema_agreement_wait=schema_agreement_wait,
    )
    return cluster, cluster.connect()


def cassandra_port_open(s: dict[str, str]) -> bool:
    return port_open(s["CASSANDRA_HOST"], int(s["CASSANDRA_PORT"]))


def secure_cassandra(s: dict[str, str]) -> None:
    """Replace the default superuser password and create the pipeline's role (idempotent)."""
    from cassandra import AuthenticationFailed
    from cassandra.cluster import NoHostAvailable

    su_password = s["CASSANDRA_SUPERUSER_PASSWORD"]
    try:
        cluster, session = _cassandra_session(s, "cassandra", su_password)
    except NoHostAvailable as exc:
        if not any(isinstance(e, AuthenticationFailed) or "Authentication" in str(e) for e in exc.errors.values()):
            raise
        # first start: the default superuser still has its well-known password
        cluster, session = _cassandra_session(s, "cassandra", "cassandra")
        session.execute("ALTER ROLE cassandra WITH PASSWORD = %s", (su_password,))
        print("cassandra: default superuser password replaced by the generated one")
    try:
        role = s["CASSANDRA_USERNAME"]
        session.execute(f'CREATE ROLE IF NOT EXISTS "{role}" WITH LOGIN = true AND PASSWORD = %s',
                        (s["CASSANDRA_PASSWORD"],))
        session.execute(f'ALTER ROLE "{role}" WITH PASSWORD = %s AND LOGIN = true', (s["CASSANDRA_PASSWORD"],))
        # the pipeline creates and owns its keyspace (cdc_setup), and nothing else
        session.execute(f'GRANT CREATE ON ALL KEYSPACES TO "{role}"')
    finally:
        cluster.shutdown()


SYSTEM_KEYSPACES = ("system_auth", "system_distributed", "system_traces")


def replicate_system_keyspaces(s: dict[str, str], nodes: list[Node]) -> None:
    """Cluster profile: roles and the other system keyspaces on every node (they ship with one
    replica, so losing the node holding a role would refuse its logins), then a repair copies what
    was written before. Done once (a marker in the first node's folder)."""
    marker = nodes[0].folder / ".system-keyspaces-replicated"
    if marker.exists():
        return
    from include.schema.cassandra import SCHEMA_AGREEMENT_S, schema_change

    def replicate() -> None:
        cluster, session = _cassandra_session(s, "cassandra", s["CASSANDRA_SUPERUSER_PASSWORD"], SCHEMA_AGREEMENT_S)
        try:
            for ks in SYSTEM_KEYSPACES:
                schema_change(session, f"ALTER KEYSPACE {ks} WITH replication = {{'class': "
                                       f"'NetworkTopologyStrategy', '{topology.DATACENTER}': {len(nodes)}}}",
                              "the cluster profile's system keyspaces")
        finally:
            cluster.shutdown()

    # a node of the new ring can stall for a while on two busy cores: each change is sent again
    # (schema_change), and the whole step once more on a new connection (ALTER ... WITH is idempotent)
    _retry(replicate, 300, "replicating the system keyspaces")
    print(f"cassandra: {', '.join(SYSTEM_KEYSPACES)} replicated to {len(nodes)} nodes; repairing system_auth")
    nodetool(topology.node_settings(s, nodes[0]), "repair", "--full", "system_auth", timeout=300)
    marker.write_text("done\n")


def cassandra_ring_up(s: dict[str, str], count: int) -> bool:
    """Every node of the ring is up and normal (UN), as the first node sees it."""
    out = nodetool(s, "status", timeout=60)
    return sum(1 for line in out.splitlines() if line.startswith("UN ")) == count


def cassandra_healthy(s: dict[str, str]) -> bool:
    cluster, session = _cassandra_session(s, s["CASSANDRA_USERNAME"], s["CASSANDRA_PASSWORD"])
    try:
        return session.execute("SELECT release_version FROM system.local").one() is not None
    finally:
        cluster.shutdown()


# ---- the bundled Binance-compatible server (offline demo only)


def binance_api_command(s: dict[str, str]) -> Command:
    return Command([str(VENV_BIN / "python"), "-m", "stack.exchange", "--host", "127.0.0.1",
                    "--port", s.get("BINANCE_TEST_SERVER_PORT", "8765")], service_env(s))


def binance_api_healthy(s: dict[str, str]) -> bool:
    return _http_json(f"http://127.0.0.1:{s.get('BINANCE_TEST_SERVER_PORT', '8765')}/api/v3/ping") == {}


# ---- Spark standalone (cluster profile): a master and workers from the installed pyspark


def spark_command(s: dict[str, str], node: Node) -> Command:
    (node.folder / "work").mkdir(parents=True, exist_ok=True)
    env = service_env(s)
    # every socket of the daemon, and of the executors a worker starts, on the node's own address
    env.update(SPARK_LOCAL_IP=node.host, SPARK_WORKER_DIR=str(node.folder / "work"),
               SPARK_DAEMON_MEMORY=s.get("CLUSTER_SPARK_DAEMON_MEMORY", "256m"))
    spark_class = str(Path(s["SPARK_HOME"]) / "bin" / "spark-class")
    if node.engine == "spark-master":
        return Command([spark_class, "org.apache.spark.deploy.master.Master", "--host", node.host,
                        "--port", s.get("SPARK_MASTER_PORT", "7077"),
                        "--webui-port", s.get("SPARK_MASTER_WEBUI_PORT", "18080")], env)
    return Command([spark_class, "org.apache.spark.deploy.worker.Worker", "--host", node.host,
                    "--cores", s.get("CLUSTER_SPARK_WORKER_CORES", "1"),
                    "--memory", s.get("CLUSTER_SPARK_WORKER_MEMORY", "1g"),
                    "--webui-port", s.get("SPARK_WORKER_WEBUI_PORT", "18081"),
                    "--work-dir", str(node.folder / "work"), s["SPARK_MASTER_URL"]], env)


def spark_workers_alive(s: dict[str, str]) -> set[str]:
    """Hosts of the workers the master counts ALIVE."""
    state = _http_json(f"{s['SPARK_MASTER_WEBUI_URL']}/json/")
    return {w["host"] for w in state.get("workers", []) if w.get("state") == "ALIVE"}  # type: ignore[union-attr]


# ---- Airflow

AIRFLOW_PARTS = ("airflow-api-server", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer")


def _airflow(s: dict[str, str], *args: str) -> list[str]:
    return [str(VENV_BIN / "airflow"), *args]


def prepare_airflow(s: dict[str, str]) -> None:
    home = Path(s["AIRFLOW_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    link_local_settings(home)
    passwords = home / "simple_auth_manager_passwords.json"
    wanted = {s["AIRFLOW_ADMIN_USER"]: s["AIRFLOW_ADMIN_PASSWORD"]}
    if not passwords.exists() or json.loads(passwords.read_text() or "{}") != wanted:
        passwords.write_text(json.dumps(wanted))
        passwords.chmod(0o600)
    stamp = home / ".db-migrated"
    # a stack migrated before pools were recorded by name already has binance_api, maybe edited since
    made_before = {BINANCE_POOL} if stamp.exists() else set()
    migrations = REPO / "requirements.txt"
    if not stamp.exists() or stamp.stat().st_mtime < migrations.stat().st_mtime:
        print("airflow: migrating the metadata database")
        _airflow_cli(s, "db", "migrate")
        stamp.touch()
    # pools are created once by name: a pool added later (binance_archive) is created on the next
    # `make up`, one edited in the UI keeps its slots
    pools_stamp = home / ".pools-created"
    made = set(pools_stamp.read_text().split()) if pools_stamp.exists() else made_before
    for name, slots, description in AIRFLOW_POOLS:
        if name not in made:
            print(f"airflow: creating pool {name}")
            _airflow_cli(s, "pools", "set", name, str(slots), description)
            made.add(name)
            pools_stamp.write_text("\n".join(sorted(made)) + "\n")


LOCAL_SETTINGS = REPO / "stack" / "conf" / "airflow_local_settings.py"


def link_local_settings(home: Path) -> None:
    """$AIRFLOW_HOME/config/airflow_local_settings.py, where every Airflow process imports it from,
    as a link to the repository's file (what it does is said there). A file of another origin at
    that path is left alone, with a message."""
    target = home / "config" / "airflow_local_settings.py"
    target.parent.mkdir(exist_ok=True)
    if target.is_symlink():
        if target.resolve() == LOCAL_SETTINGS.resolve():
            return
        target.unlink()
    elif target.exists():
        print(f"airflow: {target} is not the stack's ({LOCAL_SETTINGS}); left as it is")
        return
    target.symlink_to(LOCAL_SETTINGS)


# (name, slots, description): created once, editable in the UI after
AIRFLOW_POOLS = [
    (BINANCE_POOL, 2, "Concurrent Binance REST calls (Binance bans per IP)"),
    (ARCHIVE_POOL, 2, "Concurrent downloads and loads of Binance archive files (binance_archive)"),
]


def _airflow_cli(s: dict[str, str], *args: str) -> None:
    r = subprocess.run(_airflow(s, *args), env=service_env(s), capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise StackError(f"`airflow {' '.join(args)}` failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")


def airflow_command(part: str, s: dict[str, str]) -> Command:
    args = {
        "airflow-api-server": ("api-server", "--host", s["AIRFLOW_HOST"], "--port", s["AIRFLOW_PORT"]),
        # the log servers would bind every interface; with LocalExecutor the API server reads
        # task logs from the shared AIRFLOW_HOME instead
        "airflow-scheduler": ("scheduler", "--skip-serve-logs"),
        "airflow-dag-processor": ("dag-processor",),
        "airflow-triggerer": ("triggerer", "--skip-serve-logs"),
    }[part]
    return Command(_airflow(s, *args), service_env(s), cwd=Path(s["AIRFLOW_HOME"]))


def start_airflow(s: dict[str, str], timeout: float = 180.0) -> None:
    """Start Airflow's services that do not run, the API server first: every task run reports to
    its execution API, and a run the scheduler started before the API server answered ended at once
    ('Connection refused', the task process killed), each first attempt after a start, cdc_stream's
    included, then waited for its retry. The others start once it answers."""
    started_mode = Path(s["AIRFLOW_HOME"]) / ".binance_api_mode"
    wanted = f"{binance_mode()} {topology.profile()}"
    running = [p for p in AIRFLOW_PARTS if read_pid(p) is not None]
    if running and started_mode.exists() and started_mode.read_text().strip() != wanted:
        # the connections (binance_api, and the profile's engines) live in the processes'
        # environment: restart them to switch
        print(f"airflow: restarting to switch its connections to {wanted}")
        for part in reversed(AIRFLOW_PARTS):
            supervisor.stop(part)
    started_mode.write_text(wanted + "\n")
    for part in hung_airflow_parts(airflow_health(s), datetime.now(UTC), running_since(AIRFLOW_PARTS)):
        print(f"{part}: running but its heartbeat stopped; restarting it")
        supervisor.stop(part)
    api, *others = AIRFLOW_PARTS
    _start(api, s["AIRFLOW_HOST"], s["AIRFLOW_PORT"])
    wait_for(api, lambda: airflow_health(s) is not None, timeout, log_file(api))
    for part in others:
        _start(part)


# heartbeat components of /api/v2/monitor/health, by the service that sends it
_HEARTBEATS = {"scheduler": "airflow-scheduler", "triggerer": "airflow-triggerer",
               "dag_processor": "airflow-dag-processor"}
# a heartbeat is sent every few seconds; this old, with the database answering, the service is stuck
HUNG_AFTER_S = 60.0


def airflow_health(s: dict[str, str]) -> dict | None:
    """The API server's /api/v2/monitor/health, or None if it does not answer."""
    try:
        return _http_json(f"{s['AIRFLOW_URL']}/api/v2/monitor/health", timeout=10)  # type: ignore[return-value]
    except Exception:  # noqa: BLE001 - not answering, whatever the reason
        return None


def hung_airflow_parts(health: dict | None, now: datetime, started: dict[str, datetime]) -> list[str]:
    """Airflow services that have run for over HUNG_AFTER_S (`started`: when each running one
    started) but whose heartbeat is older than that while the metadata database is healthy: the
    service itself is stuck (seen after a PostgreSQL restart), not waiting for its database."""
    if not health or health.get("metadatabase", {}).get("status") != "healthy":
        return []
    hung = []
    for component, part in _HEARTBEATS.items():
        beat = health.get(component, {}).get(f"latest_{component}_heartbeat")
        if part not in started or not beat or (now - started[part]).total_seconds() <= HUNG_AFTER_S:
            continue
        if (now - datetime.fromisoformat(beat)).total_seconds() > HUNG_AFTER_S:
            hung.append(part)
    return hung


def running_since(names: tuple[str, ...] | list[str]) -> dict[str, datetime]:
    """When each of these services that runs now started (supervisord's record)."""
    out = {}
    for name in names:
        record = supervisor.info(name)
        if record and record["statename"] == "RUNNING":
            out[name] = datetime.fromtimestamp(record["start"], UTC)
    return out


def airflow_healthy(s: dict[str, str]) -> bool:
    health = _http_json(f"{s['AIRFLOW_URL']}/api/v2/monitor/health")
    parts = ("metadatabase", "scheduler", "dag_processor", "triggerer")
    return all(health.get(p, {}).get("status") == "healthy" for p in parts)  # type: ignore[union-attr]


# --------------------------------------------------------------------------- commands


def _check_port_free(name: str, host: str, port: int) -> None:
    if port_open(host, port):
        raise StackError(
            f"{name}: port {port} on {host} is already in use by a process this stack did not start; "
            f"free it or change the port in .env"
        )


def services(s: dict[str, str]) -> list[Service]:
    """Every program of the profile that runs, in start order."""
    engines = [Service(n.name, f"{n.host}:{_engine_port(s, n)}") for n in topology.nodes(s)]
    return [
        Service("postgres", f"{s['POSTGRES_HOST']}:{s['POSTGRES_PORT']}"), *engines,
        Service("binance-api", f"127.0.0.1:{s.get('BINANCE_TEST_SERVER_PORT', '8765')}"),
        Service("airflow-api-server", f"{s['AIRFLOW_HOST']}:{s['AIRFLOW_PORT']}"),
        *[Service(p, None) for p in AIRFLOW_PARTS[1:]],
        Service("watchdog", None),
    ]


def _engine_port(s: dict[str, str], node: Node) -> str:
    return {"kafka": s["KAFKA_PORT"], "cassandra": s["CASSANDRA_PORT"], "kafka-connect": s["KAFKA_CONNECT_PORT"],
            "spark-master": s.get("SPARK_MASTER_PORT", "7077"),
            "spark-worker": s.get("SPARK_WORKER_WEBUI_PORT", "18081")}[node.engine]


@dataclass
class Command:
    """What `python -m stack exec <service>` replaces itself with."""

    argv: list[str]
    env: dict[str, str]
    cwd: Path = REPO
    # drop to this OS user first (PostgreSQL refuses to run as root)
    user: str | None = None


def command(name: str, s: dict[str, str]) -> Command:
    """The command line of a service, built from the settings as they are now (a restart re-reads .env)."""
    engine = {"kafka": kafka_command, "cassandra": cassandra_command, "kafka-connect": connect_command,
              "spark-master": spark_command, "spark-worker": spark_command}
    builders: dict[str, Callable[[dict[str, str]], Command]] = {
        "postgres": postgres_command, "binance-api": binance_api_command,
        "watchdog": lambda s: Command([str(VENV_BIN / "python"), "-m", "stack", "watchdog"], service_env(s)),
        **{part: (lambda s, part=part: airflow_command(part, s)) for part in AIRFLOW_PARTS},
        **{n.name: (lambda s, n=n: engine[n.engine](s, n)) for n in topology.nodes(s)},
    }
    if name not in builders:
        raise StackError(f"no service named {name!r} in the {topology.profile()} profile; "
                         f"services: {', '.join(builders)}")
    return builders[name](s)


def exec_service(name: str) -> None:
    """Replace this process with the service (supervisord's program command), so that the PID
    supervisord watches, signals and reports is the service's own."""
    cmd = command(name, load_env())
    os.chdir(cmd.cwd)
    if cmd.user:
        user = pwd.getpwnam(cmd.user)
        os.initgroups(cmd.user, user.pw_gid)
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)
        cmd.env.update(HOME=user.pw_dir, USER=cmd.user, LOGNAME=cmd.user)
    os.execvpe(cmd.argv[0], cmd.argv, cmd.env)


def programs(s: dict[str, str]) -> list[supervisor.Program]:
    """supervisord's programs: one per service of the profile."""
    engines = {n.name: n.engine for n in topology.nodes(s)}
    out = []
    for svc in services(s):
        engine = engines.get(svc.name, svc.name)
        if engine == "postgres":
            # SIGINT: PostgreSQL's fast shutdown; the postmaster stops its own children
            out.append(supervisor.Program(svc.name, stop_wait=60, stop_signal="INT", as_group=False))
        elif engine == "cassandra":
            # draining and flushing memtables can take a while on a full node
            out.append(supervisor.Program(svc.name, stop_wait=90))
        elif engine == "kafka":
            out.append(supervisor.Program(svc.name, stop_wait=60))
        else:
            out.append(supervisor.Program(svc.name))
    return out


def _start(name: str, host: str | None = None, port: str | None = None) -> None:
    """Have supervisord start a service unless it runs; its port, if given, must be free first."""
    record = supervisor.info(name)
    if record and record["statename"] in ("RUNNING", "STARTING", "BACKOFF"):
        return
    if host and port:
        _check_port_free(name, host, int(port))
    supervisor.start(name)


def _timed(label: str, fn: Callable[[], None], t0: float) -> None:
    fn()
    print(f"  {label:<14} healthy  (+{time.monotonic() - t0:5.1f}s)")


def up(timeout: float = 180.0, profile: str | None = None) -> None:
    """Install-free part of `make up`: .env on first use, every service of the profile (the one
    given, else the last one started) under supervisord and healthy."""
    write_env_if_missing()
    if profile:
        topology.set_profile(profile)
    s = load_env()
    t0 = time.monotonic()
    print(f"starting the local stack, {topology.profile()} profile, under supervisord (data and logs in {RUN})")
    _stop_legacy()
    # programs of the other profile are stopped and removed here
    supervisor.ensure_running(programs(s), REPO)
    # the watchdog would start what `up` has not started yet: it runs once the rest is up
    supervisor.stop("watchdog")
    kafka, cassandra = topology.of(s, "kafka"), topology.of(s, "cassandra")
    # independent services first, started together; the rest once what they need is healthy
    prepare_postgres(s)
    _start("postgres", s["POSTGRES_HOST"], s["POSTGRES_PORT"])
    prepare_kafka(s)
    for node in kafka:
        _start(node.name, node.host, s["KAFKA_PORT"])
    for node in cassandra:
        _start(node.name, node.host, s["CASSANDRA_PORT"])
    _timed("postgres", lambda: (wait_for("postgres", lambda: postgres_healthy(s), timeout, log_file("postgres")),
                                bootstrap_postgres(s)), t0)
    if binance_mode() == "offline":
        _start("binance-api")
    else:
        supervisor.stop("binance-api")
    prepare_airflow(s)
    start_airflow(s, timeout)
    for node in kafka:
        ns = topology.node_settings(s, node)
        _timed(node.name, lambda ns=ns, node=node: wait_for(node.name, lambda: kafka_healthy(ns), timeout,
                                                            log_file(node.name)), t0)
    for node in topology.of(s, "kafka-connect"):
        _start(node.name, node.host, s["KAFKA_CONNECT_PORT"])
    for node in topology.of(s, "spark-master") + topology.of(s, "spark-worker"):
        _start(node.name, node.host, None)
    first = topology.node_settings(s, cassandra[0])
    for node in cassandra:
        ns = topology.node_settings(s, node)
        _timed(node.name, lambda ns=ns, node=node: wait_for(node.name, lambda: cassandra_port_open(ns), timeout,
                                                            log_file(node.name)), t0)
    _timed("cassandra auth", lambda: (_retry(lambda: secure_cassandra(first), 60, "cassandra role setup"),
                                      wait_for(cassandra[0].name, lambda: cassandra_healthy(first), timeout,
                                               log_file(cassandra[0].name))), t0)
    if len(cassandra) > 1:
        _timed("cassandra ring", lambda: (
            wait_for(cassandra[0].name, lambda: cassandra_ring_up(first, len(cassandra)), timeout,
                     log_file(cassandra[0].name)),
            replicate_system_keyspaces(s, cassandra)), t0)
    for node in topology.of(s, "kafka-connect"):
        ns = topology.node_settings(s, node)
        _timed(node.name, lambda ns=ns, node=node: wait_for(node.name, lambda: connect_healthy(ns), timeout,
                                                            log_file(node.name)), t0)
    _timed("capture", lambda: hand_over_capture(s), t0)
    workers = topology.of(s, "spark-worker")
    if workers:
        _timed("spark", lambda: wait_for("spark-master", lambda: spark_workers_alive(s) >= {w.host for w in workers},
                                         timeout, log_file("spark-master")), t0)
    if binance_mode() == "offline":
        _timed("binance-api", lambda: wait_for("binance-api", lambda: binance_api_healthy(s), timeout,
                                               log_file("binance-api")), t0)
    _timed("airflow", lambda: wait_for("airflow-scheduler", lambda: airflow_healthy(s), timeout,
                                       log_file("airflow-scheduler")), t0)
    supervisor.start("watchdog")
    print(f"stack up in {time.monotonic() - t0:.1f}s; supervisord restarts any service that stops "
          f"(logs: {LOGS}/<service>.log)")
    print(f"Airflow: {s['AIRFLOW_URL']}  login: {s['AIRFLOW_ADMIN_USER']} / {s['AIRFLOW_ADMIN_PASSWORD']}")


CAPTURE_PROFILE = RUN / "capture_profile"


def hand_over_capture(s: dict[str, str]) -> None:
    """Both profiles read PostgreSQL's one replication slot, each through its own Kafka Connect with
    offsets of its own; the slot moves on with the profile that ran last, which leaves the other's
    offsets pointing into WAL the slot no longer holds (Debezium then refuses to start). So when the
    profile changes, this profile's connector, if it has one, forgets its offsets: it takes a
    snapshot (snapshot.mode=initial) and streams on from the slot, which kept every change since the
    other profile stopped. Nothing is lost; every row is written again (idempotent)."""
    from include.cdc.kafka_connect import KafkaConnectClient
    from include.names import CONNECTOR

    profile = topology.profile()
    last = CAPTURE_PROFILE.read_text().strip() if CAPTURE_PROFILE.exists() else profile
    if last != profile:
        client = KafkaConnectClient(topology.connect_urls(s))
        if client.get_config(CONNECTOR) is not None:
            print(f"capture: the {last} profile read the replication slot since this one's connector last ran: "
                  f"{CONNECTOR} starts over from a snapshot")
            client.stop(CONNECTOR)
            client.reset_offsets(CONNECTOR)
            client.resume(CONNECTOR)
    CAPTURE_PROFILE.write_text(profile + "\n")


def _retry(fn: Callable[[], None], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            fn()
            return
        except Exception as exc:
            if time.monotonic() > deadline:
                raise StackError(f"{what} failed: {exc}") from exc
            time.sleep(2)


def down() -> None:
    """Stop every service (the watchdog first, so nothing is started again), then supervisord."""
    _stop_legacy()
    if not supervisor.running():
        print("stack down (data kept in .run/)")
        return
    s = load_env()
    known = {p["name"] for p in supervisor.rpc().supervisor.getAllProcessInfo()}
    order = [svc.name for svc in services(s)]
    # what runs, this profile's in reverse start order, then any other (a profile switched since)
    for name in [*reversed(order), *sorted(known - set(order))]:
        if read_pid(name) is not None:
            print(f"stopping {name} (PID {read_pid(name)})")
        supervisor.stop(name)
    supervisor.shutdown()
    print("stack down (data kept in .run/)")


def clean() -> None:
    down()
    if RUN.exists():
        shutil.rmtree(RUN)
    print(f"removed {RUN}")
