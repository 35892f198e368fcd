"""The local stack's supervision: supervisord's configuration, a real supervisord restarting a killed
program, and the watchdog's decisions."""

from __future__ import annotations

import ast
import configparser
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from stack import localstack as ls
from stack import supervisor, topology
from stack.watchdog import API_SILENT_S, COOLDOWN_S, FATAL_RETRY_S, Watchdog


def _config(tmp_path: Path, python: str, s: dict[str, str]) -> configparser.ConfigParser:
    text = supervisor.render_config(ls.programs(s), python, tmp_path, home=tmp_path, logs=tmp_path)
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(text)
    return parser


@pytest.mark.parametrize("profile", topology.PROFILES)
def test_every_service_is_a_program_restarted_whatever_its_exit(tmp_path, profile):
    s = topology.overlay(_example_settings(), profile)
    conf = _config(tmp_path, "/venv/bin/python", s)
    names = {s[len("program:"):] for s in conf.sections() if s.startswith("program:")}
    assert names == {svc.name for svc in ls.services(s)}
    engines = {"kafka": 1, "cassandra": 1, "kafka-connect": 1} if profile == "single" else {
        "kafka": 3, "cassandra": 3, "kafka-connect": 2, "spark-master": 1, "spark-worker": 2}
    assert {e: sum(1 for n in names if n.rstrip("-0123456789") == e) for e in engines} == engines
    for name in names:
        program = conf[f"program:{name}"]
        assert program["command"] == f"/venv/bin/python -m stack exec {name}"
        assert program["autorestart"] == "true"
        assert program["autostart"] == "false"  # `up` starts them in dependency order
        assert int(program["startretries"]) >= 10
        assert program["stdout_logfile_maxbytes"] == supervisor.LOG_MAX_BYTES
    # the postmaster stops its own backends on SIGINT (fast shutdown); a group kill would not let it
    assert conf["program:postgres"]["stopsignal"] == "INT"
    assert conf["program:postgres"]["stopasgroup"] == "false"
    assert conf["program:airflow-scheduler"]["killasgroup"] == "true"


def _example_settings() -> dict[str, str]:
    """.env.example's settings, secrets filled as `make up` fills them."""
    return ls.parse_env(ls._fill(ls.ENV_EXAMPLE.read_text()), base={"PATH": "/usr/bin"})


def test_exec_builds_each_service_from_the_settings():
    s = ls.load_env() if ls.ENV_FILE.exists() else None
    if s is None:
        pytest.skip(".env is written by `make up`")
    for svc in ls.services(s):
        cmd = ls.command(svc.name, s)
        assert cmd.argv and Path(cmd.argv[0]).is_absolute(), svc.name
    assert ls.command("postgres", s).argv[-2:] == ["-D", str(ls.RUN / "postgres" / "data")]
    with pytest.raises(ls.StackError, match="no service named 'kafak'"):
        ls.command("kafak", s)


def test_a_real_supervisord_restarts_a_killed_program(tmp_path):
    # a stand-in "python" that ignores `-m stack exec <name>` and sleeps: supervisord itself is real
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\nexec sleep 600\n")
    fake.chmod(0o755)
    programs = [supervisor.Program("sleeper", stop_wait=5)]
    conf = tmp_path / "supervisord.conf"
    conf.write_text(supervisor.render_config(programs, str(fake), tmp_path, home=tmp_path, logs=tmp_path))
    subprocess.run([str(Path(sys.executable).parent / "supervisord"), "-c", str(conf)], check=True)
    server = supervisor.rpc(tmp_path / supervisor.SOCKET.name).supervisor
    pidfile = tmp_path / supervisor.PIDFILE.name
    # the daemon writes its PID file after the command that forked it has returned
    _until(lambda: pidfile.exists() and pidfile.read_text().strip(), 20)
    daemon = int(pidfile.read_text())
    try:
        _until(lambda: _answers(server), 20)
        server.startProcess("sleeper", True)
        first = server.getProcessInfo("sleeper")["pid"]
        os.kill(first, signal.SIGKILL)
        _until(lambda: server.getProcessInfo("sleeper")["statename"] == "RUNNING"
               and server.getProcessInfo("sleeper")["pid"] != first, 20)
        second = server.getProcessInfo("sleeper")["pid"]
        # the program's own command, once the forked supervisord child has exec'd it
        _until(lambda: Path(f"/proc/{second}/cmdline").read_bytes().split(b"\0")[:2] == [b"sleep", b"600"], 10)
    finally:
        server.shutdown()
        _until(lambda: not Path(f"/proc/{daemon}").exists(), 30)


def _answers(server) -> bool:
    try:
        return server.getState()["statename"] == "RUNNING"
    except OSError:  # its socket is not there yet
        return False


def _until(check, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


# ---- the watchdog's decisions


def _health(age_s: dict[str, float], db: str = "healthy") -> dict:
    now = datetime.now(UTC)
    out: dict = {"metadatabase": {"status": db}}
    for component, age in age_s.items():
        beat = (now - timedelta(seconds=age)).isoformat()
        out[component] = {"status": "healthy", f"latest_{component}_heartbeat": beat}
    return out


def test_a_stale_heartbeat_is_hung_only_with_the_database_up_and_the_process_old_enough():
    now = datetime.now(UTC)
    old = {p: now - timedelta(seconds=600) for p in ls.AIRFLOW_PARTS}
    health = _health({"scheduler": 90, "triggerer": 5, "dag_processor": 90})
    assert sorted(ls.hung_airflow_parts(health, now, old)) == ["airflow-dag-processor", "airflow-scheduler"]
    # the database is down: the services wait for it, they are not stuck
    assert ls.hung_airflow_parts(_health({"scheduler": 90}, db="unhealthy"), now, old) == []
    # just (re)started: the heartbeat shown is the previous process's
    young = {**old, "airflow-scheduler": now - timedelta(seconds=20)}
    assert ls.hung_airflow_parts(_health({"scheduler": 90}), now, young) == []
    # not running: supervisord's business
    assert ls.hung_airflow_parts(_health({"scheduler": 90}), now, {}) == []
    assert ls.hung_airflow_parts(None, now, old) == []


def test_the_watchdog_restarts_a_hung_service_once_per_cooldown():
    dog = Watchdog()
    states = {"airflow-scheduler": "RUNNING"}
    assert dog.decide(0, states, ["airflow-scheduler"], True, 600) == [
        ("airflow-scheduler", "restart", "its heartbeat stopped while the metadata database answers")]
    assert dog.decide(COOLDOWN_S - 1, states, ["airflow-scheduler"], True, 600) == []
    assert [a[0] for a in dog.decide(COOLDOWN_S, states, ["airflow-scheduler"], True, 600)] == ["airflow-scheduler"]


def test_the_watchdog_starts_fatal_services_again_at_most_once_per_retry_period():
    dog = Watchdog()
    states = {"kafka": "FATAL", "binance-api": "STOPPED", "cassandra": "RUNNING"}
    assert dog.decide(0, states, [], True, 600) == [("kafka", "start", "supervisord gave up after its start retries")]
    assert dog.decide(FATAL_RETRY_S / 2, states, [], True, 600) == []
    assert [a[0] for a in dog.decide(FATAL_RETRY_S, states, [], True, 600)] == ["kafka"]


def test_the_watchdog_restarts_an_api_server_silent_for_a_minute():
    dog = Watchdog()
    assert dog.decide(0, {}, [], False, 600) == []
    assert dog.decide(API_SILENT_S - 10, {}, [], False, 600) == []
    assert [a[:2] for a in dog.decide(API_SILENT_S, {}, [], False, 600)] == [("airflow-api-server", "restart")]
    # answering again resets the count
    dog2 = Watchdog()
    dog2.decide(0, {}, [], False, 600)
    dog2.decide(30, {}, [], True, 600)
    assert dog2.decide(API_SILENT_S + 5, {}, [], False, 600) == []
    # a process that has just started is given its minute
    assert Watchdog().decide(0, {}, [], False, 10) == [] and Watchdog().decide(100, {}, [], False, 10) == []


def test_airflow_local_settings_are_linked_once_and_a_foreign_file_is_kept(tmp_path, capsys):
    ls.link_local_settings(tmp_path)
    link = tmp_path / "config" / "airflow_local_settings.py"
    assert link.is_symlink() and link.resolve() == ls.LOCAL_SETTINGS.resolve()
    ls.link_local_settings(tmp_path)  # again: nothing changes
    assert link.resolve() == ls.LOCAL_SETTINGS.resolve()

    link.unlink()
    link.symlink_to(tmp_path / "elsewhere.py")  # a stale link (a moved checkout) is replaced
    ls.link_local_settings(tmp_path)
    assert link.resolve() == ls.LOCAL_SETTINGS.resolve()

    link.unlink()
    link.write_text("# the operator's own\n")
    ls.link_local_settings(tmp_path)
    assert link.read_text() == "# the operator's own\n" and not link.is_symlink()
    assert "left as it is" in capsys.readouterr().out


def test_every_airflow_process_imports_the_preloaded_libraries_at_start(tmp_path):
    """`import airflow` with the linked settings (a fresh interpreter, as each service starts) has
    every listed library imported, and overrides no setting of Airflow's."""
    ls.link_local_settings(tmp_path)
    # the list read from the file, not imported: importing it here would preload into the test process
    tree = ast.parse(ls.LOCAL_SETTINGS.read_text())
    PRELOADED = next(ast.literal_eval(n.value) for n in tree.body  # noqa: N806
                     if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "PRELOADED")
    probe = ("import sys, airflow, airflow.settings as s\n"
             f"missing = [m for m in {list(PRELOADED)!r} if m not in sys.modules]\n"
             "print('missing', missing); print('copied', 'PRELOADED' in vars(s))\n")
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "missing []" in out.stdout and "copied False" in out.stdout, out.stdout + out.stderr[-2000:]
    assert "could not preload" not in out.stderr


def test_airflow_starts_its_api_server_first_and_the_rest_once_it_answers(tmp_path, monkeypatch):
    events: list[str] = []
    answers = iter([None, None, {"metadatabase": {"status": "healthy"}}])

    def health(s):
        reply = next(answers, {"metadatabase": {"status": "healthy"}})
        events.append("answers" if reply else "silent")
        return reply

    monkeypatch.setattr(ls, "read_pid", lambda name: None)
    monkeypatch.setattr(ls, "running_since", lambda names: {})
    monkeypatch.setattr(ls, "airflow_health", health)
    monkeypatch.setattr(ls, "_start", lambda name, host=None, port=None: events.append(f"start {name}"))
    monkeypatch.setattr(ls.supervisor, "info", lambda name: {"statename": "RUNNING"})
    monkeypatch.setattr(ls.time, "sleep", lambda seconds: None)
    ls.start_airflow({"AIRFLOW_HOME": str(tmp_path), "AIRFLOW_HOST": "127.0.0.1", "AIRFLOW_PORT": "8080"}, timeout=5)
    # the hung-heartbeat check asks first; then the API server starts, and nothing else until it answers
    first = events.index("start airflow-api-server")
    answered = events.index("answers", first)
    assert events[first + 1:answered + 1] == ["silent", "answers"]
    assert events[answered + 1:] == [f"start {part}" for part in ("airflow-scheduler", "airflow-dag-processor",
                                                                  "airflow-triggerer")]


def test_airflow_start_fails_naming_the_api_server_when_it_never_answers(tmp_path, monkeypatch):
    monkeypatch.setattr(ls, "read_pid", lambda name: None)
    monkeypatch.setattr(ls, "running_since", lambda names: {})
    monkeypatch.setattr(ls, "airflow_health", lambda s: None)
    started: list[str] = []
    monkeypatch.setattr(ls, "_start", lambda name, host=None, port=None: started.append(name))
    monkeypatch.setattr(ls.supervisor, "info", lambda name: {"statename": "RUNNING"})
    with pytest.raises(ls.StackError, match="airflow-api-server not healthy after 0s"):
        ls.start_airflow({"AIRFLOW_HOME": str(tmp_path), "AIRFLOW_HOST": "127.0.0.1", "AIRFLOW_PORT": "8080"},
                         timeout=0.01)
    assert started == ["airflow-api-server"]
