"""Stage 4, the bridge: Cassandra copied into Postgres schema `cassandra` for Grafana, re-reading only
the keys the stream logged as changed up to the stream's position, or the whole table when it must
(`sync`, the partitions of a full copy from include/partitions.py); its decisions, pure (`plan`);
its reads of Cassandra at one consistency level (`reads`); where it has got to (`state`, `bridge_states` for
the health checks); the Airflow adapter of the cassandra_bridge DAG (`tasks`)."""
