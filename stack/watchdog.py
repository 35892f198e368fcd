"""The local stack's watchdog: restarts what supervisord cannot see is broken.

supervisord restarts a service whose process exits. Three failures leave the process alive, or
give up, so it runs as a supervised program of its own (`python -m stack watchdog`, started last by
`up`) and every TICK_S seconds:
- restarts an Airflow scheduler, DAG processor or triggerer whose heartbeat is over
  localstack.HUNG_AFTER_S old while the metadata database answers (seen after a PostgreSQL restart:
  the process runs, its loop does not);
- restarts the API server when it has not answered for API_SILENT_S;
- starts again a service supervisord gave up on (FATAL after its start retries, e.g. Airflow while
  PostgreSQL was down for minutes), at most once per FATAL_RETRY_S.
Each service is acted on at most once per COOLDOWN_S. Every action is logged with its reason
(.run/logs/watchdog.log). A service stopped on purpose (STOPPED) is left alone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

TICK_S = 10.0
API_SILENT_S = 60.0
FATAL_RETRY_S = 60.0
COOLDOWN_S = 120.0


@dataclass
class Watchdog:
    """The decisions, kept apart from the I/O so that they can be tested on their own."""

    last_action: dict[str, float] = field(default_factory=dict)
    api_silent_since: float | None = None

    def decide(self, now: float, states: dict[str, str], hung: list[str], api_answers: bool,
               api_running_for: float | None) -> list[tuple[str, str, str]]:
        """(service, "start" | "restart", reason) to do now. `states`: supervisord's state per
        service; `hung`: Airflow services judged stuck; `api_running_for`: seconds the API server
        process has run (None: not running)."""
        actions: list[tuple[str, str, str]] = []
        if api_answers or api_running_for is None:
            self.api_silent_since = None
        elif self.api_silent_since is None:
            self.api_silent_since = now
        for name, state in states.items():
            if state == "FATAL" and self._free(name, now, FATAL_RETRY_S):
                actions.append((name, "start", "supervisord gave up after its start retries"))
        for name in hung:
            if self._free(name, now, COOLDOWN_S):
                actions.append((name, "restart", "its heartbeat stopped while the metadata database answers"))
        silent = 0.0 if self.api_silent_since is None else now - self.api_silent_since
        if silent >= API_SILENT_S and (api_running_for or 0) >= API_SILENT_S \
                and self._free("airflow-api-server", now, COOLDOWN_S):
            actions.append(("airflow-api-server", "restart", f"it has not answered for {silent:.0f}s"))
            self.api_silent_since = None
        for name, _, _ in actions:
            self.last_action[name] = now
        return actions

    def _free(self, name: str, now: float, wait: float) -> bool:
        last = self.last_action.get(name)
        return last is None or now - last >= wait


def run() -> None:  # pragma: no cover - the loop around decide(); exercised by the fault suite
    from stack import localstack as ls
    from stack import supervisor

    dog = Watchdog()
    names = [svc.name for svc in ls.services(ls.load_env()) if svc.name != "watchdog"]
    print(f"watchdog: watching {', '.join(names)} every {TICK_S:.0f}s", flush=True)
    while True:
        try:
            s = ls.load_env()
            states = {n: (supervisor.info(n) or {}).get("statename", "UNKNOWN") for n in names}
            since = ls.running_since(ls.AIRFLOW_PARTS)
            now_dt = datetime.now(UTC)
            health = ls.airflow_health(s)
            hung = ls.hung_airflow_parts(health, now_dt, since)
            api = since.get("airflow-api-server")
            api_for = (now_dt - api).total_seconds() if api else None
            for name, action, reason in dog.decide(time.monotonic(), states, hung, health is not None, api_for):
                print(f"{now_dt:%Y-%m-%d %H:%M:%S} watchdog: {action} {name}: {reason}", flush=True)
                if action == "start":
                    supervisor.start(name)
                else:
                    supervisor.restart(name)
        except Exception as exc:  # noqa: BLE001 - the watchdog outlives any one failed look
            print(f"{datetime.now(UTC):%Y-%m-%d %H:%M:%S} watchdog: check failed: {type(exc).__name__}: {exc}",
                  flush=True)
        time.sleep(TICK_S)
