"""`make demo`: the pipeline on top of the local stack.

Brings the stack up (offline: with the bundled Binance-compatible server as `binance_api`), runs
cdc_setup, unpauses binance_extract, cdc_stream, cassandra_bridge and pipeline_health, waits until
data has reached every stage, and prints the status report and the Airflow login. Safe to run again.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime

from include.tables import TABLES
from stack import localstack as ls
from stack.status import Stage, print_health, print_stages, stages

# binance_archive runs only when triggered; unpaused so a trigger (UI, `airflow dags trigger`) runs
DEMO_DAGS = ("binance_extract", "cdc_stream", "cassandra_bridge", "pipeline_health", "retention", "binance_archive")


# --------------------------------------------------------------------------- demo


def _api(s: dict[str, str], method: str, path: str, body: dict | None = None, token: str | None = None) -> dict:
    req = urllib.request.Request(f"{s['AIRFLOW_URL']}{path}", method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json",
                                          **({"Authorization": f"Bearer {token}"} if token else {})})
    with urllib.request.urlopen(req, timeout=15) as resp:  # noqa: S310 - loopback URL from .env
        return json.loads(resp.read() or b"{}")


def _token(s: dict[str, str]) -> str:
    return _api(s, "POST", "/auth/token", {"username": s["AIRFLOW_ADMIN_USER"],
                                           "password": s["AIRFLOW_ADMIN_PASSWORD"]})["access_token"]


def _unpause(s: dict[str, str], dag_id: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            token = _token(s)
            _api(s, "PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False}, token)
            print(f"  unpaused {dag_id}")
            return
        except urllib.error.HTTPError as exc:
            # 404 until the dag-processor has parsed the file
            if exc.code != 404 or time.monotonic() > deadline:
                raise ls.StackError(f"could not unpause {dag_id}: HTTP {exc.code} {exc.read()[:200]!r}") from exc
            time.sleep(3)


def run_cdc_setup(s: dict[str, str]) -> None:
    print("  running cdc_setup (connector, publication, keyspace)")
    r = subprocess.run([str(ls.VENV_BIN / "airflow"), "dags", "test", "cdc_setup"], env=ls.service_env(s),
                       capture_output=True, text=True, check=False, cwd=str(ls.REPO))
    out = r.stdout + r.stderr
    if r.returncode != 0 or "state=failed" in out or "DagRunState.FAILED" in out:
        raise ls.StackError(f"cdc_setup failed:\n{out[-4000:]}")


def wait_for_flow(s: dict[str, str], since: datetime, timeout: float) -> list[Stage]:
    """Wait until data committed after `since` is in every stage (every table non-empty, and each
    stage's freshest source time, or Kafka's event count, moved on), printing progress."""
    deadline = time.monotonic() + timeout
    baseline = {st.name: st.rows for st in stages(s)}
    last = ""
    while True:
        current = stages(s)
        summary = ", ".join(f"{st.name}: {'?' if st.error else st.rows}" for st in current)
        if summary != last:
            print(f"  {summary}")
            last = summary

        def arrived(st: Stage) -> bool:
            if st.error or not all((st.counts.get(t) or 0) > 0 for t in TABLES):
                return False
            if st.name == "kafka topics":
                return st.rows > baseline.get(st.name, 0)
            return st.freshest is not None and st.freshest >= since

        if all(arrived(st) for st in current):
            return current
        if time.monotonic() > deadline:
            raise ls.StackError(
                f"data has not reached every stage after {timeout:.0f}s ({summary}). Look at the DAG runs in "
                f"Airflow ({s['AIRFLOW_URL']}) and the logs in {ls.LOGS}; online mode needs Binance to be reachable "
                "(use `make demo OFFLINE=1` without it)")
        time.sleep(10)


def demo(offline: bool, timeout: float, profile: str | None = None) -> None:
    ls.set_binance_mode(offline)
    ls.up(profile=profile)
    s = ls.load_env()
    print(f"pipeline ({'offline: bundled Binance-compatible server' if offline else 'online: Binance API'})")
    started = datetime.now(UTC)
    run_cdc_setup(s)
    for dag_id in DEMO_DAGS:
        _unpause(s, dag_id)
    print("  waiting for data in every stage (extract every minute, stream continuous, bridge every minute)")
    wait_for_flow(s, started, timeout)
    print_stages(s)
    print_health(s)
    print(f"""
Airflow:  {s['AIRFLOW_URL']}   login: {s['AIRFLOW_ADMIN_USER']} / {s['AIRFLOW_ADMIN_PASSWORD']}
Status:   make status
Grafana:  with Docker, `docker compose up -d grafana` (uses this .env; dashboards in grafana/dashboards),
          then open http://127.0.0.1:3000 ; it reads Postgres schemas cassandra (dashboard "Binance market")
          and pipeline_health (dashboard "Pipeline health") as {s['GRAFANA_DB_USER']}.""")
