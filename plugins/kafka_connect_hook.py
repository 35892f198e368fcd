"""Airflow hook for Kafka Connect's REST API, from an HTTP connection (default `kafka_connect`)."""

from __future__ import annotations

from airflow.providers.http.hooks.http import HttpHook

from include.kafka_connect import KafkaConnectClient


class KafkaConnectHook(HttpHook):
    """Builds the base URL like HttpHook (scheme, host, port of the connection), then hands the
    REST calls to include.kafka_connect.KafkaConnectClient."""

    conn_name_attr = "kafka_connect_conn_id"
    default_conn_name = "kafka_connect"
    hook_name = "Kafka Connect"

    def __init__(self, kafka_connect_conn_id: str = default_conn_name, **kwargs) -> None:
        super().__init__(method="GET", http_conn_id=kafka_connect_conn_id, **kwargs)

    def get_client(self) -> KafkaConnectClient:
        session = self.get_conn()
        return KafkaConnectClient(self.base_url, session=session)
