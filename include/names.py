"""Names the stages share, written once: schemas, Airflow connection ids, and the CDC objects
(publication, replication slot, connector, Kafka topics, the stream's query).

Plain constants, no imports beyond the standard library: the Spark job, the local stack and the
DAG files read them too.
"""

from __future__ import annotations

# Postgres schemas: the source tables, the bridge's copy of Cassandra (Grafana reads it), the health checks
SOURCE_SCHEMA = "binance"
BRIDGE_SCHEMA = "cassandra"
HEALTH_SCHEMA = "pipeline_health"

# Airflow connection ids and pools
POSTGRES_CONN_ID = "binance_postgres"
# a role with REPLICATION, allowed to drop the connector's slot (cdc_setup's resnapshot only)
POSTGRES_REPLICATION_CONN_ID = "binance_postgres_replication"
CASSANDRA_CONN_ID = "cassandra_default"
KAFKA_CONN_ID = "kafka_default"
KAFKA_CONNECT_CONN_ID = "kafka_connect"
SPARK_CONN_ID = "spark_default"
BINANCE_CONN_ID = "binance_api"
# every task that calls Binance takes a slot of this pool (created by `make up`): Binance bans per IP
BINANCE_POOL = "binance_api"
# Binance's public archives (data.binance.vision): another host, without request weights; its own
# pool bounds the concurrent downloads and loads of binance_archive
ARCHIVE_CONN_ID = "binance_archive"
ARCHIVE_POOL = "binance_archive"
# the archive files binance_archive has loaded, with their checksums (schema binance, not captured)
ARCHIVE_FILES_TABLE = "archive_files"

# Change data capture: Debezium's publication and replication slot in Postgres, its connector on
# Kafka Connect (connectors/<CONNECTOR>.json), the heartbeat table it updates, and the signal table
# through which the pipeline asks it for incremental snapshots (and where Debezium writes the
# markers of each snapshot window)
PUBLICATION = "binance_cdc"
SLOT = "binance_cdc"
CONNECTOR = "binance-postgres"
HEARTBEAT_TABLE = "debezium_heartbeat"
SIGNAL_TABLE = "debezium_signal"

# Debezium's topic.prefix: the change events of <schema>.<table> go to topic <prefix>.<schema>.<table>
TOPIC_PREFIX = "binance"
CDC_TOPIC_PREFIX = f"{TOPIC_PREFIX}.{SOURCE_SCHEMA}."


def topic_for(table: str) -> str:
    """The Kafka topic of a source table's change events."""
    return f"{CDC_TOPIC_PREFIX}{table}"


def table_of_topic(topic: str) -> str | None:
    """The source table a CDC topic carries, or None for a topic that is not one."""
    return topic.removeprefix(CDC_TOPIC_PREFIX) if topic.startswith(CDC_TOPIC_PREFIX) else None


# the Spark stream's query name: its progress rows in Cassandra (stream_progress, stream_offsets) carry it
STREAM_QUERY_NAME = "binance_cdc_to_cassandra"
