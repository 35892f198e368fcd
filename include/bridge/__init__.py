"""Stage 4, the bridge: Cassandra copied into Postgres schema `cassandra` for Grafana, re-reading only
the keys the stream logged as changed (`sync`); the Airflow adapter of the cassandra_bridge DAG
(`tasks`)."""
