"""Kafka Connect REST: register or update a connector from its JSON file, wait until it runs.

Plain `requests`, no Airflow: include/connections.py builds the client from the `kafka_connect`
connection, which may name several workers of one Connect group (comma-separated hosts). Any
worker answers for the group (it forwards writes to the leader), so a request that cannot reach
one worker goes to the next, and a lost worker fails no task while another is up.

Registration is `PUT /connectors/<name>/config`, which creates or updates in place, so a changed
config never deletes the connector (no re-snapshot) and an unchanged one is not sent.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests

from include import connections
from include.names import KAFKA_CONNECT_CONN_ID

log = logging.getLogger(__name__)

CONNECTORS = Path(__file__).resolve().parents[2] / "connectors"


class ConnectError(RuntimeError):
    """Kafka Connect refused a request, or a connector/task is FAILED (the message has the trace)."""


def load_connector(name: str) -> dict[str, str]:
    """The config map of connectors/<name>.json, checked: its `name` must match the file name."""
    path = CONNECTORS / f"{name}.json"
    spec = json.loads(path.read_text())
    if spec.get("name") != name:
        raise ConnectError(f"{path}: its name {spec.get('name')!r} differs from the file name {name!r}")
    config = spec["config"]
    bad = {k: v for k, v in config.items() if "password" in k.lower() and not str(v).startswith("${")}
    if bad:
        raise ConnectError(f"{path}: {sorted(bad)} hold a literal secret; use ${{env:NAME}} or ${{file:...}}")
    return {k: str(v) for k, v in config.items()}


class KafkaConnectClient:
    def __init__(self, base_url: str | Sequence[str], session: requests.Session | None = None, timeout: float = 15.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        """`base_url`: the REST URL of one worker, or of several workers of one group, tried in turn."""
        urls = [base_url] if isinstance(base_url, str) else list(base_url)
        self.base_urls = [u.strip().rstrip("/") for u in urls]
        if not self.base_urls or not all(self.base_urls):
            raise ValueError(f"Kafka Connect REST URL(s) {urls!r}: an empty URL")
        self.session = session or requests.Session()
        self.timeout = timeout
        self._sleep = sleep

    @property
    def base_url(self) -> str:
        """The worker the next request goes to first: the last one that answered."""
        return self.base_urls[0]

    def _send(self, method: str, path: str, body: Any) -> requests.Response:
        """One request to the first worker that accepts a connection; the others are tried in order
        when one refuses it or does not answer the connection in time (a worker down). The one that
        answered is tried first next time. Raises the last connection error when none answered."""
        for i, base in enumerate(self.base_urls):
            try:
                resp = self.session.request(method, f"{base}{path}", json=body, timeout=self.timeout)
            except requests.ConnectionError as exc:
                if i == len(self.base_urls) - 1:
                    raise
                log.warning("Kafka Connect worker %s unreachable (%s); trying %s", base, type(exc).__name__,
                            self.base_urls[i + 1])
                continue
            if i:
                self.base_urls = self.base_urls[i:] + self.base_urls[:i]
            return resp
        raise AssertionError("unreachable")

    def _request(self, method: str, path: str, body: Any = None, ok: tuple[int, ...] = (200,)) -> requests.Response:
        for attempt in range(10):
            resp = self._send(method, path, body)
            url = f"{self.base_url}{path}"
            # 409: a rebalance is in progress, which passes; retry a few times
            if resp.status_code == 409 and attempt < 9:
                log.info("%s %s: 409 (rebalance in progress), retrying", method, path)
                self._sleep(min(2**attempt * 0.5, 5))
                continue
            if resp.status_code not in ok:
                raise ConnectError(f"{method} {url} -> HTTP {resp.status_code}: {resp.text[:500]}")
            return resp
        raise AssertionError("unreachable")

    def get_config(self, name: str) -> dict[str, str] | None:
        resp = self._request("GET", f"/connectors/{name}/config", ok=(200, 404))
        return None if resp.status_code == 404 else resp.json()

    def status(self, name: str) -> dict[str, Any]:
        return self._request("GET", f"/connectors/{name}/status").json()

    def ensure(self, name: str, config: dict[str, str]) -> str:
        """Create or update `name` so its config equals `config`; return created/updated/unchanged."""
        current = self.get_config(name)
        if current is not None:
            current = {k: v for k, v in current.items() if k != "name"}
            if current == config:
                log.info("connector %s: config unchanged, nothing sent", name)
                return "unchanged"
        resp = self._request("PUT", f"/connectors/{name}/config", body=config, ok=(200, 201))
        outcome = "created" if resp.status_code == 201 else "updated"
        changed = sorted(k for k in config if current is None or current.get(k) != config[k])
        log.info("connector %s %s (keys: %s)", name, outcome, ", ".join(changed))
        return outcome

    def wait_running(self, name: str, timeout: float = 120.0, poll: float = 2.0) -> dict[str, Any]:
        """Wait until the connector and all its tasks are RUNNING; raise with the trace if one FAILED."""
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            try:
                last = self.status(name)
            except ConnectError as exc:
                log.info("status of %s not available yet: %s", name, exc)
                self._sleep(poll)
                continue
            failed = failures(last)
            if failed:
                raise ConnectError(f"connector {name} FAILED:\n" + "\n".join(failed))
            tasks = last.get("tasks", [])
            if last.get("connector", {}).get("state") == "RUNNING" and tasks and all(
                t.get("state") == "RUNNING" for t in tasks
            ):
                log.info("connector %s and its %d task(s) are RUNNING", name, len(tasks))
                return last
            self._sleep(poll)
        raise ConnectError(f"connector {name} not RUNNING after {timeout:.0f}s; last status: {json.dumps(last)[:1000]}")

    def restart(self, name: str, include_tasks: bool = True, only_failed: bool = True) -> None:
        self._request("POST", f"/connectors/{name}/restart?includeTasks={str(include_tasks).lower()}"
                      f"&onlyFailed={str(only_failed).lower()}", ok=(200, 202, 204))


    def stop(self, name: str, timeout: float = 60.0, poll: float = 1.0) -> None:
        """Stop the connector (Kafka Connect 3.5+: tasks shut down, config kept) and wait for STOPPED."""
        self._request("PUT", f"/connectors/{name}/stop", ok=(200, 202, 204))
        deadline = time.monotonic() + timeout
        while (state := self.status(name).get("connector", {}).get("state")) != "STOPPED":
            if time.monotonic() > deadline:
                raise ConnectError(f"connector {name} not STOPPED after {timeout:.0f}s (state {state})")
            self._sleep(poll)
        log.info("connector %s STOPPED", name)

    def offsets(self, name: str) -> list[dict[str, Any]]:
        """The source offsets Kafka Connect has committed for the connector (Kafka Connect 3.5+)."""
        return self._request("GET", f"/connectors/{name}/offsets").json().get("offsets", [])

    def wait_offsets(self, name: str, timeout: float = 120.0, poll: float = 2.0) -> list[dict[str, Any]]:
        """Wait until the connector has committed offsets (every offset.flush.interval.ms while it
        produces: its heartbeats are enough); a restart then resumes from them."""
        deadline = time.monotonic() + timeout
        while not (found := self.offsets(name)):
            if time.monotonic() > deadline:
                raise ConnectError(f"connector {name} committed no offsets within {timeout:.0f}s: is it running "
                                   "and producing (heartbeat.interval.ms)? See the Kafka Connect log")
            self._sleep(poll)
        log.info("connector %s committed offsets: %s", name, str(found)[:300])
        return found

    def reset_offsets(self, name: str) -> None:
        """Forget the source offsets of a STOPPED connector (Kafka Connect 3.6+): it starts over."""
        resp = self._request("DELETE", f"/connectors/{name}/offsets", ok=(200,))
        log.info("connector %s offsets reset: %s", name, resp.text[:200])

    def resume(self, name: str) -> None:
        """Resume a PAUSED or STOPPED connector."""
        self._request("PUT", f"/connectors/{name}/resume", ok=(200, 202, 204))


@contextmanager
def client(conn_id: str = KAFKA_CONNECT_CONN_ID) -> Iterator[KafkaConnectClient]:
    """A client for the Kafka Connect REST endpoint(s) of an Airflow HTTP connection (one base URL
    per comma-separated host: include.connections.http_base_urls)."""
    with connections.http(conn_id) as (base_urls, session):
        yield KafkaConnectClient(base_urls, session=session)


def failures(status: dict[str, Any]) -> list[str]:
    """'connector: trace' / 'task N: trace' lines for every FAILED part of a /status answer."""
    out = []
    conn = status.get("connector", {})
    if conn.get("state") == "FAILED":
        out.append(f"connector on {conn.get('worker_id')}: {conn.get('trace', '(no trace)')}")
    for task in status.get("tasks", []):
        if task.get("state") == "FAILED":
            out.append(f"task {task.get('id')} on {task.get('worker_id')}: {task.get('trace', '(no trace)')}")
    return out
