"""docker-compose.yaml, the local stack for Docker users, checked without a Docker engine.

The compose file must run the same versions as the local stack (read from stack/jvm/pom.xml and
requirements.txt, not repeated here), take its settings from the names in .env.example, keep the
host-side values of .env (loopback addresses, absolute paths) out of the containers, publish on
127.0.0.1 only, and start in order on health checks. If a Docker Compose v2 client is installed,
`docker compose config` renders the file with .env.example as well (no daemon needed).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml

from stack import localstack

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "docker-compose.yaml"
DOCKER_DIR = REPO / "docker"
AIRFLOW_DOCKERFILE = DOCKER_DIR / "airflow" / "Dockerfile"
ENV_EXAMPLE = REPO / ".env.example"
POM = REPO / "stack" / "jvm" / "pom.xml"
REQUIREMENTS = REPO / "requirements.txt"
CONNECTOR_FILE = REPO / "connectors" / "binance-postgres.json"
GRAFANA_PROVISIONING = REPO / "grafana" / "provisioning"

DATA_SERVICES = ("postgres", "kafka", "kafka-connect", "cassandra", "grafana")
AIRFLOW_SERVICES = ("airflow-api-server", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer")
ONE_SHOT_SERVICES = ("cassandra-init", "airflow-init")
CONNECTION_VARS = (
    "AIRFLOW_CONN_BINANCE_POSTGRES",
    "AIRFLOW_CONN_BINANCE_POSTGRES_REPLICATION",
    "AIRFLOW_CONN_CASSANDRA_DEFAULT",
    "AIRFLOW_CONN_KAFKA_DEFAULT",
    "AIRFLOW_CONN_KAFKA_CONNECT",
    "AIRFLOW_CONN_SPARK_DEFAULT",
    "AIRFLOW_CONN_BINANCE_API",
    "AIRFLOW_CONN_BINANCE_ARCHIVE",
)
PROJECT_FOLDERS = ("dags", "plugins", "include", "spark", "connectors")

# compose interpolation: ${NAME}, ${NAME:-default}, ${NAME?error}, $NAME; `$$` is a literal dollar
_COMPOSE_REF = re.compile(r"(?<!\$)\$(?:\{([A-Za-z_][A-Za-z0-9_]*)[^}]*\}|([A-Za-z_][A-Za-z0-9_]*))")
# environment variables in shell scripts and Dockerfiles: upper-case by convention; the lower-case
# names there are the scripts' own locals
_ENV_REF = re.compile(r"(?<!\$)\$(?:\{([A-Z_][A-Z0-9_]*)[^}]*\}|([A-Z_][A-Z0-9_]*))")
# names a Dockerfile or a script defines itself: ARG/ENV instructions (also continuation lines of a
# multi-name ENV), shell assignments
_OWN_DEFINITION = re.compile(r"^\s*(?:ARG\s+|ENV\s+|export\s+)?([A-Z_][A-Z0-9_]*)=", re.MULTILINE)
_OWN_ARG = re.compile(r"^\s*ARG\s+([A-Z_][A-Z0-9_]*)\s*$", re.MULTILINE)


# --------------------------------------------------------------------------- helpers


def _refs(text: str, pattern: re.Pattern[str] = _COMPOSE_REF) -> set[str]:
    return {braced or bare for braced, bare in pattern.findall(text)}


def _values(node: Any) -> list[str]:
    """Every string value in the parsed compose file: what compose interpolates (comments are not)."""
    if isinstance(node, dict):
        return [s for value in node.values() for s in _values(value)]
    if isinstance(node, list):
        return [s for item in node for s in _values(item)]
    return [node] if isinstance(node, str) else []


def _compose_refs(compose: dict[str, Any]) -> set[str]:
    return {name for value in _values(compose) for name in _refs(value)}


def _environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a dict, from either compose form (mapping or KEY=VALUE list)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def _image_tag(image: str) -> tuple[str, str | None]:
    """Split `repo[:tag]` (a registry host may carry a port: only the last path part holds the tag)."""
    head, _, last = image.rpartition("/")
    name, sep, tag = last.partition(":")
    repo = f"{head}/{name}" if head else name
    return repo, (tag if sep else None)


def _pom_property(name: str) -> str:
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    value = ET.parse(POM).getroot().findtext(f"m:properties/m:{name}", namespaces=ns)
    assert value, f"{POM.relative_to(REPO)} has no <{name}> property"
    return value.strip()


def _pinned_requirement(package: str) -> str:
    match = re.search(rf"^{re.escape(package)}==(\S+)\s*$", REQUIREMENTS.read_text(), re.MULTILINE)
    assert match, f"requirements.txt pins no {package}=="
    return match.group(1)


def _dockerfile_bases(path: Path) -> list[str]:
    """Base images of a Dockerfile's FROM lines, leaving out references to earlier build stages."""
    stages: set[str] = set()
    bases: list[str] = []
    for line in path.read_text().splitlines():
        match = re.match(r"^\s*FROM\s+(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?", line, re.IGNORECASE)
        if not match:
            continue
        image, stage = match.groups()
        if image not in stages:
            bases.append(image)
        if stage:
            stages.add(stage)
    return bases


def _docker_files() -> list[Path]:
    return sorted(p for p in DOCKER_DIR.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    assert COMPOSE_FILE.exists(), "docker-compose.yaml is missing"
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict), (
        "docker-compose.yaml has no `services:` mapping"
    )
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    """The settings contract: .env.example's names, read as the local stack reads them."""
    return localstack.parse_env(ENV_EXAMPLE.read_text(), base={"PATH": "/usr/bin"})


def _one_shot(services: dict[str, dict[str, Any]]) -> set[str]:
    """Services others wait for to *finish* (service_completed_successfully)."""
    return {
        name
        for svc in services.values()
        for name, dep in (svc.get("depends_on") or {}).items()
        if isinstance(dep, dict) and dep.get("condition") == "service_completed_successfully"
    }


# --------------------------------------------------------------------------- structure


def test_compose_defines_the_stack(services):
    missing = [s for s in (*DATA_SERVICES, *AIRFLOW_SERVICES, *ONE_SHOT_SERVICES) if s not in services]
    assert not missing, f"docker-compose.yaml lacks services {missing}; it has {sorted(services)}"


def test_every_long_running_service_has_a_health_check(services):
    one_shot = _one_shot(services)
    assert one_shot == set(ONE_SHOT_SERVICES), (
        f"the one-shot services (waited on with service_completed_successfully) are {sorted(one_shot)}, "
        f"expected {sorted(ONE_SHOT_SERVICES)}"
    )
    for name, svc in services.items():
        if name in one_shot:
            restart = str(svc.get("restart", "no"))
            assert restart == "no", f"one-shot {name} must not restart, has restart: {restart}"
            continue
        test = (svc.get("healthcheck") or {}).get("test")
        assert test, f"service {name} has no healthcheck test"
        if isinstance(test, list):
            assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, (
                f"service {name}: healthcheck test must be [CMD, ...] or [CMD-SHELL, cmd], got {test!r}"
            )
        assert not svc["healthcheck"].get("disable"), f"service {name} disables its healthcheck"


def test_every_dependency_waits_on_a_condition(services):
    allowed = {"service_healthy", "service_completed_successfully"}
    for name, svc in services.items():
        depends_on = svc.get("depends_on") or {}
        assert isinstance(depends_on, dict), (
            f"service {name}: depends_on is a list; use the mapping form with a condition per entry"
        )
        for target, dep in depends_on.items():
            assert target in services, f"service {name} depends on unknown service {target}"
            condition = (dep or {}).get("condition")
            assert condition in allowed, f"service {name} -> {target}: condition {condition!r}, expected {allowed}"
            if condition == "service_healthy":
                assert (services[target].get("healthcheck") or {}).get("test"), (
                    f"service {name} waits for {target} to be healthy, but {target} has no healthcheck"
                )


def test_data_lives_in_named_volumes(compose, services):
    declared = set(compose.get("volumes") or {})
    for name, svc in services.items():
        for volume in svc.get("volumes") or []:
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source", "")
            if source and not source.startswith((".", "/", "~")):
                assert source in declared, f"service {name} uses volume {source!r}, not declared under volumes:"
    for name, path in {"postgres": "/var/lib/postgresql/data", "kafka": "/var/lib/kafka/data",
                       "cassandra": "/var/lib/cassandra"}.items():
        targets = {v.split(":")[1] for v in services[name].get("volumes", []) if isinstance(v, str)}
        assert path in targets, f"service {name} keeps no volume at {path}"


# --------------------------------------------------------------------------- versions


def test_no_image_is_untagged_or_latest(services):
    for name, svc in services.items():
        image = svc.get("image")
        assert image, f"service {name} has no image: name (a built one needs a tagged name too)"
        _, tag = _image_tag(image)
        assert tag and tag != "latest", f"service {name}: image {image!r} must carry a pinned tag"
    for base in _dockerfile_bases(AIRFLOW_DOCKERFILE):
        _, tag = _image_tag(base)
        assert tag and tag != "latest", f"{AIRFLOW_DOCKERFILE.relative_to(REPO)}: FROM {base} must be pinned"


def test_versions_match_the_local_stack(services):
    kafka = _pom_property("kafka.version")
    debezium = _pom_property("debezium.version")
    cassandra = _pom_property("cassandra.version")
    airflow = _pinned_requirement("apache-airflow")

    assert services["kafka"]["image"] == f"apache/kafka:{kafka}", f"kafka must run Kafka {kafka} (stack/jvm)"
    repo, tag = _image_tag(services["kafka-connect"]["image"])
    assert repo.endswith("debezium/connect") and tag == debezium, (
        f"kafka-connect must be Debezium's connect image {debezium}, got {services['kafka-connect']['image']}"
    )
    for name in ("cassandra", "cassandra-init"):
        assert services[name]["image"] == f"cassandra:{cassandra}", f"{name} must run Cassandra {cassandra}"
    repo, tag = _image_tag(services["postgres"]["image"])
    assert repo == "postgres" and tag and tag.split(".")[0].split("-")[0] == "15", (
        f"postgres must be PostgreSQL 15 like the local stack, got {services['postgres']['image']}"
    )

    bases = _dockerfile_bases(AIRFLOW_DOCKERFILE)
    airflow_bases = [b for b in bases if _image_tag(b)[0] == "apache/airflow"]
    assert airflow_bases == [f"apache/airflow:{airflow}-python3.11"], (
        f"the Airflow image must build FROM apache/airflow:{airflow}-python3.11 (requirements.txt), got {bases}"
    )
    for name in (*AIRFLOW_SERVICES, "airflow-init"):
        _, tag = _image_tag(services[name]["image"])
        assert tag == airflow, f"{name}: the built image's tag {tag!r} should name Airflow {airflow}"
        build = services[name].get("build") or {}
        assert build.get("dockerfile") == "docker/airflow/Dockerfile", f"{name} must build docker/airflow/Dockerfile"


def test_airflow_image_installs_the_project_pins():
    text = AIRFLOW_DOCKERFILE.read_text()
    for needed in ("requirements.txt", "spark/requirements.txt", "stack/jvm/pom.xml", "spark-submit"):
        assert needed in text, f"{AIRFLOW_DOCKERFILE.relative_to(REPO)} does not use {needed}"
    assert re.search(r"mvn\b[^\n]*-f stack/jvm/pom.xml[^\n]*package", text), "the jars must come from stack/jvm"


# --------------------------------------------------------------------------- settings


def test_every_interpolated_name_is_in_env_example(compose, env_example):
    missing = sorted(_compose_refs(compose) - set(env_example))
    assert not missing, f"docker-compose.yaml interpolates {missing}, which .env.example does not define"


def test_docker_files_use_only_known_settings(services, env_example):
    """A script under docker/ reads .env names or names docker-compose.yaml sets for its container."""
    set_by_compose = {key for svc in services.values() for key in _environment(svc)}
    known = set(env_example) | set_by_compose
    problems = {}
    for path in _docker_files():
        text = path.read_text()
        own = set(_OWN_DEFINITION.findall(text)) | set(_OWN_ARG.findall(text))
        unknown = sorted(_refs(text, _ENV_REF) - known - own)
        if unknown:
            problems[str(path.relative_to(REPO))] = unknown
    assert not problems, f"docker/ files read names neither .env.example nor docker-compose.yaml define: {problems}"


def test_host_side_settings_do_not_reach_the_containers(compose, services):
    """.env's loopback addresses and absolute host paths are right on the host only."""
    raw = dict(line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines()
               if line and not line.startswith("#") and "=" in line)
    host_side: set[str] = set()
    for name, value in raw.items():  # in file order: a value can only refer to earlier names
        if "__repo__" in value or "127.0.0.1" in value or _refs(value) & host_side:
            host_side.add(name)
    expected = {"PATH", "PYTHONPATH", "AIRFLOW_HOME", "POSTGRES_HOST", "KAFKA_BOOTSTRAP_SERVERS", "AIRFLOW_URL"}
    assert expected <= host_side, f"host-side names not recognised in .env.example: {sorted(expected - host_side)}"
    leaked = sorted(_compose_refs(compose) & host_side)
    assert not leaked, f"docker-compose.yaml passes host-side settings {leaked} into containers"
    for name, svc in services.items():
        assert not svc.get("env_file"), f"service {name} uses env_file; pass explicit environment: entries"


def test_airflow_services_have_the_connections_with_service_hosts(services, env_example):
    in_env_example = {k for k in env_example if k.startswith("AIRFLOW_CONN_")}
    assert in_env_example == set(CONNECTION_VARS), f".env.example connections changed: {sorted(in_env_example)}"
    for name in (*AIRFLOW_SERVICES, "airflow-init"):
        env = _environment(services[name])
        missing = [v for v in CONNECTION_VARS if not env.get(v)]
        assert not missing, f"service {name} lacks connections {missing}"
        for key in (*CONNECTION_VARS, "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CORE__EXECUTION_API_SERVER_URL"):
            assert not re.search(r"127\.0\.0\.1|localhost", env.get(key, "")), (
                f"service {name}: {key} points at the container itself, not at a compose service: {env[key]}"
            )
        assert "@postgres:5432/" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"], f"{name}: metadata not on postgres"
        assert "${AIRFLOW_DB}" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"], f"{name}: metadata not in AIRFLOW_DB"
        assert env.get("AIRFLOW__CORE__EXECUTOR") == "${AIRFLOW__CORE__EXECUTOR}", f"{name}: executor not from .env"
    assert env_example["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"


def test_airflow_services_mount_the_project(services):
    for name in (*AIRFLOW_SERVICES, "airflow-init"):
        targets = {v.split(":")[1]: v.split(":")[0] for v in services[name].get("volumes", []) if isinstance(v, str)}
        for folder in PROJECT_FOLDERS:
            assert targets.get(f"/opt/airflow/{folder}") == f"./{folder}", f"{name} does not mount ./{folder}"


def test_kafka_connect_offers_what_the_connector_config_reads(services):
    env = _environment(services["kafka-connect"])
    assert env.get("POSTGRES_HOST") == "postgres", "inside compose, Connect reaches Postgres by service name"
    for key in ("POSTGRES_PORT", "POSTGRES_DB", "DEBEZIUM_DB_USER", "DEBEZIUM_DB_PASSWORD"):
        assert env.get(key), f"kafka-connect lacks {key}"
    assert env.get("CONNECT_CONFIG_PROVIDERS") == "env,file", "config providers env and file must be enabled"
    for converter in ("CONNECT_KEY_CONVERTER_SCHEMAS_ENABLE", "CONNECT_VALUE_CONVERTER_SCHEMAS_ENABLE"):
        assert env.get(converter) == "false", f"kafka-connect: {converter} must be false (plain JSON for Spark)"
    if CONNECTOR_FILE.exists():  # written alongside: every ${env:NAME} it reads must be set here
        wanted = set(re.findall(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}", CONNECTOR_FILE.read_text()))
        missing = sorted(wanted - set(env))
        assert not missing, f"{CONNECTOR_FILE.relative_to(REPO)} reads ${{env:...}} {missing}, unset in kafka-connect"


def test_grafana_provisioning_reads_only_what_grafana_gets(services):
    if not GRAFANA_PROVISIONING.is_dir():
        pytest.skip("grafana/provisioning is not there yet")
    env = set(_environment(services["grafana"]))
    problems = {}
    for path in sorted(GRAFANA_PROVISIONING.rglob("*.y*ml")):
        text = path.read_text()
        names = set(re.findall(r"\$__env\{([A-Za-z_][A-Za-z0-9_]*)\}", text))
        names |= {braced or bare for braced, bare in re.findall(r"\$(?:\{([A-Z][A-Z0-9_]*)\}|([A-Z][A-Z0-9_]*))", text)}
        if names - env:
            problems[str(path.relative_to(REPO))] = sorted(names - env)
    assert not problems, f"Grafana provisioning reads variables the grafana service does not set: {problems}"


def test_postgres_is_set_up_like_the_local_stack(services):
    svc = services["postgres"]
    command = " ".join(svc["command"]) if isinstance(svc["command"], list) else svc["command"]
    for setting in ("wal_level=logical", "max_wal_senders=10", "max_replication_slots=10",
                    "max_slot_wal_keep_size=${POSTGRES_MAX_SLOT_WAL_KEEP_SIZE}"):
        assert setting in command, f"postgres command lacks {setting}"
    sources = {v.split(":")[0] for v in svc["volumes"] if isinstance(v, str)}
    assert "./stack/postgres/bootstrap.sql" in sources, "postgres must run the project's own bootstrap.sql"
    env = _environment(svc)
    # the image makes POSTGRES_USER its superuser: it must not be the pipeline's role
    assert env.get("POSTGRES_USER") == "postgres", f"postgres: POSTGRES_USER is {env.get('POSTGRES_USER')!r}"


def test_cassandra_requires_passwords(services):
    entrypoint = (DOCKER_DIR / "cassandra" / "entrypoint.sh").read_text()
    for auth in ("PasswordAuthenticator", "CassandraAuthorizer"):
        assert auth in entrypoint, f"docker/cassandra/entrypoint.sh does not enable {auth}"
    init = (DOCKER_DIR / "cassandra" / "init.sh").read_text()
    assert "GRANT CREATE ON ALL KEYSPACES" in init and "ALTER ROLE cassandra" in init
    env = _environment(services["cassandra"])
    assert env.get("MAX_HEAP_SIZE") == "${CASSANDRA_HEAP}", "cassandra heap must come from CASSANDRA_HEAP"


# --------------------------------------------------------------------------- network exposure


def test_every_published_port_binds_loopback(services):
    for name, svc in services.items():
        assert svc.get("network_mode") != "host", f"service {name} uses the host network"
        for port in svc.get("ports") or []:
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", f"service {name}: port {port} not bound to 127.0.0.1"
            else:
                assert str(port).startswith("127.0.0.1:") and str(port).count(":") == 2, (
                    f"service {name}: port {port!r} must read 127.0.0.1:HOST:CONTAINER"
                )


# --------------------------------------------------------------------------- docker compose itself


def _compose_command() -> list[str] | None:
    """A Docker Compose v2 client: the `docker compose` plugin or a standalone `docker-compose`."""
    candidates = []
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    if shutil.which("docker-compose"):
        candidates.append(["docker-compose"])
    for cmd in candidates:
        try:
            r = subprocess.run([*cmd, "version", "--short"], capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired):
            continue
        version = r.stdout.strip().lstrip("v")
        # v1 (Python, `1.29.x`) predates the compose spec this file uses (top-level `name:`, ...)
        if r.returncode == 0 and version and not version.startswith("1."):
            return cmd
    return None


def test_docker_compose_renders_the_file_with_env_example():
    cmd = _compose_command()
    if cmd is None:
        pytest.skip("no Docker Compose v2 client here (neither `docker compose` nor `docker-compose`)")
    # a clean environment: the names come from .env.example alone, not from an exported .env
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "DOCKER_CONFIG", "XDG_CONFIG_HOME")}
    r = subprocess.run(
        [*cmd, "-f", str(COMPOSE_FILE), "--project-directory", str(REPO), "--env-file", str(ENV_EXAMPLE),
         "config", "--format", "json"],
        capture_output=True, text=True, timeout=60, env=env, cwd=REPO, check=False,
    )
    assert r.returncode == 0, f"`{' '.join(cmd)} config` rejected docker-compose.yaml:\n{r.stderr}"
    assert "is not set" not in r.stderr, f"compose warns about unset variables:\n{r.stderr}"
    rendered = json.loads(r.stdout)
    for name, svc in rendered["services"].items():
        for port in svc.get("ports") or []:
            assert port.get("host_ip") == "127.0.0.1", f"rendered service {name}: port {port} not on 127.0.0.1"
