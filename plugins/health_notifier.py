"""Failure notifier of the pipeline_health DAG: logs by default; Slack and/or email when configured.

Variables: `pipeline_health_slack_conn_id` (a Slack webhook connection; needs
apache-airflow-providers-slack) and `pipeline_health_alert_email` (comma-separated addresses, sent
through the SMTP connection named by `pipeline_health_smtp_conn_id`, default smtp_default).
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.sdk import BaseNotifier

log = logging.getLogger("pipeline_health.alerts")


class PipelineHealthNotifier(BaseNotifier):
    """Says which check failed and its message (what is wrong, what to do)."""

    def notify(self, context: dict[str, Any]) -> None:
        from airflow.sdk import Variable

        ti = context.get("ti") or context.get("task_instance")
        task_id = getattr(ti, "task_id", "?")
        dag_id = getattr(ti, "dag_id", "pipeline_health")
        text = f"[{dag_id}] {task_id} failed: {context.get('exception') or 'see the task log'}"
        log.error("ALERT %s", text)
        slack = Variable.get("pipeline_health_slack_conn_id", default=None)
        if slack:
            try:
                from airflow.providers.slack.notifications.slack_webhook import SlackWebhookNotifier
            except ImportError:
                log.error("Variable pipeline_health_slack_conn_id is set but apache-airflow-providers-slack is "
                          "not installed: the alert went to this log only")
            else:
                SlackWebhookNotifier(slack_webhook_conn_id=slack, text=text[:3000]).notify(context)
        email = Variable.get("pipeline_health_alert_email", default=None)
        if email:
            from airflow.providers.smtp.notifications.smtp import SmtpNotifier

            SmtpNotifier(to=[a.strip() for a in email.split(",") if a.strip()],
                         smtp_conn_id=Variable.get("pipeline_health_smtp_conn_id", default="smtp_default"),
                         subject=f"pipeline_health: {task_id} failed", html_content=f"<pre>{text}</pre>"
                         ).notify(context)
