"""Local stack: every service of the pipeline on one machine, from the project's own files.

`up` writes .env from .env.example if missing, then starts PostgreSQL, Kafka (KRaft), Cassandra,
Kafka Connect and Airflow in dependency order and waits for each health check; `down` stops what
`up` started (by PID file), keeping all data; `clean` also deletes the runtime folder (.run/).
The command line is stack/__main__.py (`python -m stack up|down|status|env|clean|demo`).

Installs (venvs, jars, Debian packages) are the Makefile's job; this script only runs services.
Data, logs and PID files live under .run/ (git-ignored). Every socket binds 127.0.0.1.
"""

from __future__ import annotations

import base64
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

REPO = Path(__file__).resolve().parent.parent
RUN = REPO / ".run"
LOGS = RUN / "logs"
PIDS = RUN / "pids"
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
    return settings


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


def pid_file(name: str) -> Path:
    return PIDS / f"{name}.pid"


def log_file(name: str) -> Path:
    return LOGS / f"{name}.log"


def read_pid(name: str) -> int | None:
    path = pid_file(name)
    try:
        pid = int(path.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid


def spawn(name: str, argv: list[str], env: dict[str, str], cwd: Path | None = None) -> int:
    """Start a service in its own session, stdout+stderr appended to its log, PID recorded."""
    LOGS.mkdir(parents=True, exist_ok=True)
    PIDS.mkdir(parents=True, exist_ok=True)
    log = open(log_file(name), "ab")  # noqa: SIM115 - handed to the child
    log.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} starting {name}\n".encode())
    log.flush()
    proc = subprocess.Popen(
        argv,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=str(cwd or REPO),
        start_new_session=True,
    )
    log.close()
    pid_file(name).write_text(f"{proc.pid}\n")
    return proc.pid


def stop_pid(name: str, timeout: float = 30.0) -> None:
    """SIGTERM the process group we started (its id is the PID we recorded), then SIGKILL."""
    pid = read_pid(name)
    if pid is None:
        pid_file(name).unlink(missing_ok=True)
        return
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    except PermissionError:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and read_pid(name) is not None:
        time.sleep(0.3)
    if read_pid(name) is not None:
        print(f"{name}: still running after {timeout:.0f}s, sending SIGKILL to PID {pid}")
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    pid_file(name).unlink(missing_ok=True)


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
        if name in _SPAWNED and read_pid(name) is None:
            raise StackError(f"{name} exited during start-up. Last lines of {log}:\n{tail(log)}")
        time.sleep(1.0)
    raise StackError(
        f"{name} not healthy after {timeout:.0f}s ({last_error or 'health check failing'}). "
        f"Last lines of {log}:\n{tail(log)}"
    )


_SPAWNED: set[str] = set()


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
    name: str
    port_key: str | None

    def port(self, s: dict[str, str]) -> str:
        return s.get(self.port_key, "-") if self.port_key else "-"


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


def start_postgres(s: dict[str, str]) -> None:
    data, sock = _pg_dirs()
    binp = _pg_bin()
    owner = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
    sock.mkdir(parents=True, exist_ok=True)
    LOGS.mkdir(parents=True, exist_ok=True)
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
    if read_pid("postgres") is not None:
        return
    pg_log = log_file("postgres")
    pg_log.touch()
    if os.geteuid() == 0:
        shutil.chown(pg_log, owner, owner)
    if port_open(s["POSTGRES_HOST"], int(s["POSTGRES_PORT"])):
        raise StackError(
            f"port {s['POSTGRES_PORT']} is taken by another PostgreSQL (e.g. Debian's own cluster): "
            "stop it or set POSTGRES_PORT in .env"
        )
    subprocess.run(
        _as_postgres([str(binp / "pg_ctl"), "-D", str(data), "-l", str(pg_log), "-w", "-t", "60", "start"]),
        check=False, stdout=subprocess.DEVNULL,
    )
    postmaster = data / "postmaster.pid"
    if not postmaster.exists():
        raise StackError(f"postgres did not start. Last lines of {pg_log}:\n{tail(pg_log)}")
    PIDS.mkdir(parents=True, exist_ok=True)
    pid_file("postgres").write_text(postmaster.read_text().splitlines()[0] + "\n")


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


def stop_postgres(s: dict[str, str]) -> None:
    data, _ = _pg_dirs()
    if (data / "postmaster.pid").exists():
        subprocess.run(_as_postgres([str(_pg_bin() / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
                       check=False, stdout=subprocess.DEVNULL)
    pid_file("postgres").unlink(missing_ok=True)


# ---- Kafka broker and Kafka Connect


def _jvm_logging(name: str) -> list[str]:
    return [f"-Dlog4j2.configurationFile={CONF / 'log4j2.properties'}", f"-Dkafka.logs.dir={LOGS}",
            f"-Djava.io.tmpdir={RUN / 'tmp'}"]


def start_kafka(s: dict[str, str]) -> None:
    if read_pid("kafka") is not None:
        return
    props = render(CONF / "kafka-server.properties", RUN / "kafka" / "server.properties", s)
    (RUN / "tmp").mkdir(parents=True, exist_ok=True)
    data = RUN / "kafka" / "data"
    cp = classpath(JARS / "kafka")
    base = [java(), f"-Xms{s['KAFKA_HEAP']}", f"-Xmx{s['KAFKA_HEAP']}", "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20", *_jvm_logging("kafka"), "-cp", cp]
    if not (data / "meta.properties").exists():
        print("kafka: formatting the KRaft log dir")
        cluster_file = RUN / "kafka" / "cluster.id"
        if not cluster_file.exists():
            out = subprocess.run([*base, "kafka.tools.StorageTool", "random-uuid"], capture_output=True,
                                 text=True, check=True)
            cluster_file.write_text(out.stdout.strip().splitlines()[-1] + "\n")
        r = subprocess.run([*base, "kafka.tools.StorageTool", "format", "-t", cluster_file.read_text().strip(),
                            "-c", str(props), "--ignore-formatted"], capture_output=True, text=True, check=False)
        if r.returncode != 0:
            raise StackError(f"kafka storage format failed:\n{r.stdout}\n{r.stderr}")
    _check_port_free("kafka", s["KAFKA_HOST"], int(s["KAFKA_PORT"]))
    spawn("kafka", [*base, "kafka.Kafka", str(props)], service_env(s))
    _SPAWNED.add("kafka")


def kafka_healthy(s: dict[str, str]) -> bool:
    from confluent_kafka.admin import AdminClient

    if not port_open(s["KAFKA_HOST"], int(s["KAFKA_PORT"])):
        return False
    admin = AdminClient({"bootstrap.servers": s["KAFKA_BOOTSTRAP_SERVERS"], "socket.timeout.ms": 3000,
                         "log_level": 2})
    meta = admin.list_topics(timeout=3)
    return len(meta.brokers) >= 1


def start_connect(s: dict[str, str]) -> None:
    if read_pid("kafka-connect") is not None:
        return
    props = render(CONF / "kafka-connect.properties", RUN / "kafka-connect" / "worker.properties", s)
    _check_port_free("kafka-connect", s["KAFKA_CONNECT_HOST"], int(s["KAFKA_CONNECT_PORT"]))
    argv = [java(), f"-Xms{s['KAFKA_CONNECT_HEAP']}", f"-Xmx{s['KAFKA_CONNECT_HEAP']}", "-XX:+UseG1GC",
            *_jvm_logging("kafka-connect"), "-cp", classpath(JARS / "kafka"),
            "org.apache.kafka.connect.cli.ConnectDistributed", str(props)]
    spawn("kafka-connect", argv, service_env(s))
    _SPAWNED.add("kafka-connect")


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


def start_cassandra(s: dict[str, str]) -> None:
    if read_pid("cassandra") is not None:
        return
    yaml = render(CONF / "cassandra.yaml", RUN / "cassandra" / "cassandra.yaml", s)
    for sub in ("data", "commitlog", "saved_caches", "hints", "cdc_raw"):
        (RUN / "cassandra" / sub).mkdir(parents=True, exist_ok=True)
    (RUN / "tmp").mkdir(parents=True, exist_ok=True)
    jamm = next((JARS / "cassandra").glob("jamm-*.jar"), None)
    if jamm is None:
        raise StackError(f"jamm jar missing from {JARS / 'cassandra'}: run `make install`")
    _check_port_free("cassandra", s["CASSANDRA_HOST"], int(s["CASSANDRA_PORT"]))
    heap = s["CASSANDRA_HEAP"]
    argv = [
        java(), f"-Xms{heap}", f"-Xmx{heap}", *_CASSANDRA_JVM17, f"-javaagent:{jamm}",
        f"-Dcassandra.config=file://{yaml}", f"-Dcassandra.storagedir={RUN / 'cassandra'}",
        f"-Dcassandra.logdir={LOGS}", "-Dcassandra-foreground=yes",
        f"-Dlogback.configurationFile={CONF / 'cassandra-logback.xml'}",
        "-Dcassandra.superuser_setup_delay_ms=0", "-Dcassandra.skip_wait_for_gossip_to_settle=0",
        "-Dcassandra.ring_delay_ms=1000", "-Dcassandra.initial_token_allocation_delay_ms=0",
        f"-Djava.io.tmpdir={RUN / 'tmp'}", "-Djava.net.preferIPv4Stack=true",
        # JMX bound to loopback, no authentication (cassandra-env.sh's LOCAL_JMX): what nodetool talks to
        f"-Dcassandra.jmx.local.port={s.get('CASSANDRA_JMX_PORT', '7199')}",
        "-cp", classpath(JARS / "cassandra"), "org.apache.cassandra.service.CassandraDaemon",
    ]
    spawn("cassandra", argv, service_env(s))
    _SPAWNED.add("cassandra")


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


def _cassandra_session(s: dict[str, str], user: str, password: str):  # noqa: ANN202 - driver type
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


def cassandra_healthy(s: dict[str, str]) -> bool:
    cluster, session = _cassandra_session(s, s["CASSANDRA_USERNAME"], s["CASSANDRA_PASSWORD"])
    try:
        return session.execute("SELECT release_version FROM system.local").one() is not None
    finally:
        cluster.shutdown()


# ---- the bundled Binance-compatible server (offline demo only)


def start_binance_api(s: dict[str, str]) -> None:
    if binance_mode() != "offline":
        if read_pid("binance-api") is not None:
            stop_pid("binance-api")
        return
    if read_pid("binance-api") is not None:
        return
    port = s.get("BINANCE_TEST_SERVER_PORT", "8765")
    _check_port_free("binance-api", "127.0.0.1", int(port))
    spawn("binance-api", [str(VENV_BIN / "python"), "-m", "stack.exchange", "--host", "127.0.0.1",
                          "--port", port], service_env(s))
    _SPAWNED.add("binance-api")


def binance_api_healthy(s: dict[str, str]) -> bool:
    return _http_json(f"http://127.0.0.1:{s.get('BINANCE_TEST_SERVER_PORT', '8765')}/api/v3/ping") == {}


# ---- Airflow

AIRFLOW_PARTS = ("airflow-api-server", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer")


def _airflow(s: dict[str, str], *args: str) -> list[str]:
    return [str(VENV_BIN / "airflow"), *args]


def prepare_airflow(s: dict[str, str]) -> None:
    home = Path(s["AIRFLOW_HOME"])
    home.mkdir(parents=True, exist_ok=True)
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


# (name, slots, description): created once, editable in the UI after
AIRFLOW_POOLS = [
    (BINANCE_POOL, 2, "Concurrent Binance REST calls (Binance bans per IP)"),
    (ARCHIVE_POOL, 2, "Concurrent downloads and loads of Binance archive files (binance_archive)"),
]


def _airflow_cli(s: dict[str, str], *args: str) -> None:
    r = subprocess.run(_airflow(s, *args), env=service_env(s), capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise StackError(f"`airflow {' '.join(args)}` failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")


def start_airflow(s: dict[str, str]) -> None:
    env = service_env(s)
    started_mode = Path(s["AIRFLOW_HOME"]) / ".binance_api_mode"
    running = [p for p in AIRFLOW_PARTS if read_pid(p) is not None]
    if running and started_mode.exists() and started_mode.read_text().strip() != binance_mode():
        # the binance_api connection lives in the processes' environment: restart them to switch it
        print(f"airflow: restarting to switch the binance_api connection to {binance_mode()}")
        for part in reversed(AIRFLOW_PARTS):
            stop_pid(part)
    started_mode.write_text(binance_mode() + "\n")
    for part in _hung_airflow_parts(s):
        # alive but no heartbeat while the database answers (seen after a Postgres restart): restart it
        print(f"{part}: running but its heartbeat stopped; restarting it")
        stop_pid(part)
    commands = {
        "airflow-api-server": _airflow(s, "api-server", "--host", s["AIRFLOW_HOST"], "--port", s["AIRFLOW_PORT"]),
        # the log servers would bind every interface; with LocalExecutor the API server reads
        # task logs from the shared AIRFLOW_HOME instead
        "airflow-scheduler": _airflow(s, "scheduler", "--skip-serve-logs"),
        "airflow-dag-processor": _airflow(s, "dag-processor"),
        "airflow-triggerer": _airflow(s, "triggerer", "--skip-serve-logs"),
    }
    for name, argv in commands.items():
        if read_pid(name) is None:
            if name == "airflow-api-server":
                _check_port_free(name, s["AIRFLOW_HOST"], int(s["AIRFLOW_PORT"]))
            spawn(name, argv, env, cwd=Path(s["AIRFLOW_HOME"]))
            _SPAWNED.add(name)


# heartbeat components of /api/v2/monitor/health, by the service that sends it
_HEARTBEATS = {"scheduler": "airflow-scheduler", "triggerer": "airflow-triggerer",
               "dag_processor": "airflow-dag-processor"}
HUNG_AFTER_S = 90.0


def _hung_airflow_parts(s: dict[str, str]) -> list[str]:
    """Airflow services whose process runs but whose heartbeat is older than HUNG_AFTER_S while the
    metadata database is healthy (so the service itself is stuck, not waiting for the database)."""
    try:
        health = _http_json(f"{s['AIRFLOW_URL']}/api/v2/monitor/health")
    except Exception:  # noqa: BLE001 - no API server yet: nothing to judge
        return []
    if health.get("metadatabase", {}).get("status") != "healthy":  # type: ignore[union-attr]
        return []
    hung = []
    now = datetime.now(UTC)
    for component, part in _HEARTBEATS.items():
        beat = health.get(component, {}).get(f"latest_{component}_heartbeat")  # type: ignore[union-attr]
        if read_pid(part) is None or not beat:
            continue
        if (now - datetime.fromisoformat(beat)).total_seconds() > HUNG_AFTER_S:
            hung.append(part)
    return hung


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


SERVICES = [
    Service("postgres", "POSTGRES_PORT"),
    Service("kafka", "KAFKA_PORT"),
    Service("cassandra", "CASSANDRA_PORT"),
    Service("kafka-connect", "KAFKA_CONNECT_PORT"),
    Service("binance-api", "BINANCE_TEST_SERVER_PORT"),
    Service("airflow-api-server", "AIRFLOW_PORT"),
    Service("airflow-scheduler", None),
    Service("airflow-dag-processor", None),
    Service("airflow-triggerer", None),
]


def _timed(label: str, fn: Callable[[], None], t0: float) -> None:
    fn()
    print(f"  {label:<14} healthy  (+{time.monotonic() - t0:5.1f}s)")


def up(timeout: float = 180.0) -> None:
    """Install-free part of `make up`: .env on first use, every service started and healthy."""
    write_env_if_missing()
    s = load_env()
    t0 = time.monotonic()
    print(f"starting the local stack (data and logs in {RUN})")
    # independent services first, started together; the rest once what they need is healthy
    start_postgres(s)
    start_kafka(s)
    start_cassandra(s)
    _timed("postgres", lambda: (wait_for("postgres", lambda: postgres_healthy(s), timeout, log_file("postgres")),
                                bootstrap_postgres(s)), t0)
    start_binance_api(s)
    prepare_airflow(s)
    start_airflow(s)
    _timed("kafka", lambda: wait_for("kafka", lambda: kafka_healthy(s), timeout, log_file("kafka")), t0)
    start_connect(s)
    _timed("cassandra", lambda: (wait_for("cassandra", lambda: cassandra_port_open(s), timeout,
                                          log_file("cassandra")),
                                 _retry(lambda: secure_cassandra(s), 60, "cassandra role setup"),
                                 wait_for("cassandra", lambda: cassandra_healthy(s), timeout,
                                          log_file("cassandra"))), t0)
    _timed("kafka-connect", lambda: wait_for("kafka-connect", lambda: connect_healthy(s), timeout,
                                             log_file("kafka-connect")), t0)
    if binance_mode() == "offline":
        _timed("binance-api", lambda: wait_for("binance-api", lambda: binance_api_healthy(s), timeout,
                                               log_file("binance-api")), t0)
    _timed("airflow", lambda: wait_for("airflow-scheduler", lambda: airflow_healthy(s), timeout,
                                       log_file("airflow-scheduler")), t0)
    print(f"stack up in {time.monotonic() - t0:.1f}s")
    print(f"Airflow: {s['AIRFLOW_URL']}  login: {s['AIRFLOW_ADMIN_USER']} / {s['AIRFLOW_ADMIN_PASSWORD']}")


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
    s = load_env() if ENV_FILE.exists() else {}
    for name in reversed([svc.name for svc in SERVICES]):
        if name == "postgres":
            if s:
                stop_postgres(s)
            continue
        if read_pid(name) is not None:
            print(f"stopping {name} (PID {read_pid(name)})")
        stop_pid(name, timeout=60 if name == "cassandra" else 30)
    print("stack down (data kept in .run/)")


def clean() -> None:
    down()
    if RUN.exists():
        shutil.rmtree(RUN)
    print(f"removed {RUN}")
