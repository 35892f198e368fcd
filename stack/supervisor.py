"""The local stack's process supervisor: supervisord (PyPI `supervisor`) runs every service.

Each service is a supervisord program whose command is `python -m stack exec <service>`: that reads
.env and replaces itself with the service (so the supervised PID is the service's own). supervisord
restarts a program that exits, whatever the reason, and gives up (FATAL) only after START_RETRIES
failed starts in a row; the watchdog (stack/watchdog.py, a program of its own) starts FATAL programs
again and restarts Airflow services that run but stopped working.

`up` starts the programs one by one, in dependency order, waiting for each health check; `down`
stops them in reverse and then supervisord itself. Its socket, configuration and own log live under
.run/supervisor/; each program's output goes to .run/logs/<service>.log, rotated at 50 MB.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import xmlrpc.client
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RUN = Path(__file__).resolve().parent.parent / ".run"
HOME = RUN / "supervisor"
SOCKET = HOME / "supervisor.sock"
CONFIG = HOME / "supervisord.conf"
PIDFILE = HOME / "supervisord.pid"
LOGS = RUN / "logs"

START_RETRIES = 15
LOG_MAX_BYTES = "50MB"
LOG_BACKUPS = 3


@dataclass(frozen=True)
class Program:
    """A supervised service: `python -m stack exec <name>` runs it."""

    name: str
    # seconds a stop may take before SIGKILL (Cassandra flushes its memtables on the way down)
    stop_wait: int = 30
    # SIGINT is PostgreSQL's "fast" shutdown; the others stop on SIGTERM
    stop_signal: str = "TERM"
    # stop and kill the whole process group (Airflow's and Kafka's children), not just the PID
    as_group: bool = True


class SupervisorError(RuntimeError):
    """supervisord could not be started or reached, or refused a request."""


def render_config(programs: list[Program], python: str, repo: Path, home: Path = HOME, logs: Path = LOGS) -> str:
    """supervisord.conf for these programs; none starts by itself (`up` starts them in order)."""
    lines = [
        "; written by `python -m stack up` on every start: edit stack/supervisor.py instead",
        "[unix_http_server]", f"file={home / SOCKET.name}", "chmod=0700", "",
        "[supervisord]", f"logfile={home / 'supervisord.log'}", f"logfile_maxbytes={LOG_MAX_BYTES}",
        f"logfile_backups={LOG_BACKUPS}", f"pidfile={home / PIDFILE.name}", "loglevel=info", f"directory={repo}",
        # Cassandra and Kafka keep many files open; supervisord raises its own limit for its children
        "minfds=16384", "minprocs=4096", "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface", "",
        "[supervisorctl]", f"serverurl=unix://{home / SOCKET.name}", "",
    ]
    for p in programs:
        lines += [
            f"[program:{p.name}]",
            f"command={python} -m stack exec {p.name}",
            f"directory={repo}",
            "autostart=false", "autorestart=true", "startsecs=3", f"startretries={START_RETRIES}",
            f"stopsignal={p.stop_signal}", f"stopwaitsecs={p.stop_wait}",
            f"stopasgroup={str(p.as_group).lower()}", f"killasgroup={str(p.as_group).lower()}",
            "redirect_stderr=true", f"stdout_logfile={logs / (p.name + '.log')}",
            f"stdout_logfile_maxbytes={LOG_MAX_BYTES}", f"stdout_logfile_backups={LOG_BACKUPS}",
        ]
        lines.append("")
    return "\n".join(lines)


def rpc(socket: Path = SOCKET) -> Any:
    """The supervisord XML-RPC interface over its unix socket (`rpc().supervisor.getState()`)."""
    from supervisor.xmlrpc import SupervisorTransport

    transport = SupervisorTransport(None, None, f"unix://{socket}")
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)


def running() -> bool:
    """Whether supervisord answers on the socket."""
    if not SOCKET.exists():
        return False
    try:
        return rpc().supervisor.getState()["statename"] == "RUNNING"
    except (OSError, xmlrpc.client.Error):
        return False


def ensure_running(programs: list[Program], repo: Path) -> None:
    """Write the configuration, then start supervisord or make the running one re-read it."""
    HOME.mkdir(parents=True, exist_ok=True)
    LOGS.mkdir(parents=True, exist_ok=True)
    text = render_config(programs, sys.executable, repo)
    changed = not CONFIG.exists() or CONFIG.read_text() != text
    CONFIG.write_text(text)
    if running():
        if changed:
            _apply_config_changes()
        return
    SOCKET.unlink(missing_ok=True)
    supervisord = str(Path(sys.executable).parent / "supervisord")
    r = subprocess.run([supervisord, "-c", str(CONFIG)], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise SupervisorError(f"supervisord did not start ({r.returncode}): {(r.stderr or r.stdout)[-2000:]}")
    deadline = time.monotonic() + 20
    while not running():
        if time.monotonic() > deadline:
            raise SupervisorError(f"supervisord started but does not answer on {SOCKET}; "
                                  f"see {HOME / 'supervisord.log'}")
        time.sleep(0.2)


def _apply_config_changes() -> None:
    """Make a running supervisord take up an edited configuration (supervisorctl's `update`). A
    changed program that is running keeps its old settings until `down`: it is not restarted here."""
    server = rpc().supervisor
    added, changed, removed = server.reloadConfig()[0]
    for name in removed:
        stop(name)
        server.removeProcessGroup(name)
    for name in changed:
        if _state(name) in ("RUNNING", "STARTING"):
            print(f"supervisor: {name} keeps its running settings until `make down`")
            continue
        server.removeProcessGroup(name)
        server.addProcessGroup(name)
    for name in added:
        server.addProcessGroup(name)


def _call(fn: Any) -> Any:
    try:
        return fn()
    except xmlrpc.client.Fault as fault:
        # ALREADY_STARTED / NOT_RUNNING are what we wanted anyway
        if fault.faultString.split(":")[0] in ("ALREADY_STARTED", "NOT_RUNNING"):
            return None
        raise SupervisorError(f"supervisord: {fault.faultString}") from fault


def info(name: str) -> dict[str, Any] | None:
    """supervisord's record of a program (statename, pid, start, ...), or None if unknown or not up."""
    if not running():
        return None
    try:
        return rpc().supervisor.getProcessInfo(name)
    except xmlrpc.client.Fault:
        return None


def _state(name: str) -> str | None:
    record = info(name)
    return record["statename"] if record else None


def pid(name: str) -> int | None:
    """The PID of a running program, else None."""
    record = info(name)
    if record and record["statename"] == "RUNNING" and record["pid"]:
        return int(record["pid"])
    return None


def start(name: str) -> None:
    """Start a program (wait=False: health checks, not supervisord's startsecs, say when it is ready)."""
    if _state(name) in ("RUNNING", "STARTING"):
        return
    _call(lambda: rpc().supervisor.startProcess(name, False))


def stop(name: str, wait: bool = True) -> None:
    """Stop a program; with `wait`, until it has exited (SIGKILL after its stop_wait). Once told to
    stop, supervisord restarts nothing of it, whatever ends its process."""
    if _state(name) in (None, "STOPPED", "EXITED", "FATAL"):
        return
    _call(lambda: rpc().supervisor.stopProcess(name, wait))


def restart(name: str) -> None:
    stop(name)
    _call(lambda: rpc().supervisor.startProcess(name, False))


def shutdown() -> None:
    """Stop supervisord itself (after its programs), waiting for it to exit."""
    if not running():
        return
    daemon = int(PIDFILE.read_text().split()[0]) if PIDFILE.exists() else None
    rpc().supervisor.shutdown()
    deadline = time.monotonic() + 120
    while daemon and time.monotonic() < deadline:
        try:
            os.kill(daemon, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
