"""The pipeline_health failure notifier: always the log; email when configured, delivered to a
throw-away SMTP server on 127.0.0.1 (Python's own smtpd)."""

from __future__ import annotations

import email
import json
import logging
import threading
import warnings
from types import SimpleNamespace

import pytest
from health_notifier import PipelineHealthNotifier

CONTEXT = {"ti": SimpleNamespace(task_id="check_replication_slot", dag_id="pipeline_health"),
           "exception": RuntimeError("replication_slot: slot binance_cdc was INVALIDATED ... Recover: ...")}


def test_a_failure_is_logged_with_the_check_and_its_message(caplog, monkeypatch):
    monkeypatch.delenv("AIRFLOW_VAR_PIPELINE_HEALTH_SLACK_CONN_ID", raising=False)
    monkeypatch.delenv("AIRFLOW_VAR_PIPELINE_HEALTH_ALERT_EMAIL", raising=False)
    with caplog.at_level(logging.ERROR, logger="pipeline_health.alerts"):
        PipelineHealthNotifier().notify(CONTEXT)
    assert "ALERT [pipeline_health] check_replication_slot failed: replication_slot: slot binance_cdc was " \
           "INVALIDATED" in caplog.text


def test_slack_without_its_provider_says_so_and_still_logs(caplog, monkeypatch):
    monkeypatch.setenv("AIRFLOW_VAR_PIPELINE_HEALTH_SLACK_CONN_ID", "slack_alerts")
    monkeypatch.delenv("AIRFLOW_VAR_PIPELINE_HEALTH_ALERT_EMAIL", raising=False)
    try:
        import airflow.providers.slack  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("the Slack provider is installed here")
    with caplog.at_level(logging.ERROR, logger="pipeline_health.alerts"):
        PipelineHealthNotifier().notify(CONTEXT)
    assert "apache-airflow-providers-slack is not installed" in caplog.text
    assert "ALERT" in caplog.text


@pytest.fixture
def smtp_server():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import asyncore
        import smtpd

    received: list[tuple[str, list[str], str]] = []

    class Inbox(smtpd.SMTPServer):
        def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
            received.append((mailfrom, rcpttos, data.decode() if isinstance(data, bytes) else data))

    server = Inbox(("127.0.0.1", 0), None, decode_data=False)
    port = server.socket.getsockname()[1]
    thread = threading.Thread(target=asyncore.loop, kwargs={"timeout": 0.1}, daemon=True)
    thread.start()
    yield port, received
    server.close()
    thread.join(5)


def test_email_goes_through_the_configured_smtp_connection(smtp_server, monkeypatch):
    port, received = smtp_server
    monkeypatch.setenv("AIRFLOW_CONN_HEALTH_SMTP", json.dumps({
        "conn_type": "smtp", "host": "127.0.0.1", "port": port, "login": "", "password": "",
        "extra": {"disable_tls": True, "disable_ssl": True, "from_email": "airflow@pipeline.test"}}))
    monkeypatch.setenv("AIRFLOW_VAR_PIPELINE_HEALTH_SMTP_CONN_ID", "health_smtp")
    monkeypatch.setenv("AIRFLOW_VAR_PIPELINE_HEALTH_ALERT_EMAIL", "ops@pipeline.test, oncall@pipeline.test")
    monkeypatch.delenv("AIRFLOW_VAR_PIPELINE_HEALTH_SLACK_CONN_ID", raising=False)
    PipelineHealthNotifier().notify(CONTEXT)
    assert len(received) == 1
    _, recipients, raw = received[0]
    assert sorted(recipients) == ["oncall@pipeline.test", "ops@pipeline.test"]
    message = email.message_from_string(raw)
    assert message["Subject"] == "pipeline_health: check_replication_slot failed"
    body = "".join(part.get_payload(decode=True).decode() for part in message.walk()
                   if part.get_content_type() == "text/html")
    assert "slot binance_cdc was INVALIDATED" in body
