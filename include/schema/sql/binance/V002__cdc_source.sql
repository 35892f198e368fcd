-- What Debezium needs on the source side (run by the schema owner, the pipeline role).
-- A heartbeat row Debezium updates every heartbeat.interval.ms, so the replication slot advances
-- even when no market data changes; cdc_setup puts it in the publication with the source tables
-- (include/cdc/setup.py derives the publication's table list from include/tables.py).
-- replaces checksum 99518ffb44fc3f1266d5d4c2594b1f04dd8b3357d6fe01aaf7b987b4579cbfd2
-- (that text also created the publication with a table list written here; cdc_setup now owns it)
CREATE TABLE IF NOT EXISTS binance.debezium_heartbeat (
    id       int PRIMARY KEY,
    beat_at  timestamptz NOT NULL
);
