-- Debezium's signal table (signal.data.collection, derived by include/cdc/setup.py): a row
-- INSERTed here with type 'execute-snapshot' asks the connector for an incremental snapshot of
-- some rows (include/cdc/signals.py writes them: the reconciliation's repairs, cdc_setup's
-- re-snapshot). Debezium reads the rows from the change stream, so cdc_setup puts the table in the
-- publication; while a snapshot runs, Debezium itself INSERTs each chunk's window-open marker and
-- DELETEs it to close the window (incremental.snapshot.watermarking.strategy insert_delete, so the
-- table does not grow with every chunk), and cdc_setup grants the Debezium role INSERT and DELETE
-- on it. The columns are the ones Debezium reads, in its order.
CREATE TABLE IF NOT EXISTS binance.debezium_signal (
    id    varchar(42) PRIMARY KEY,
    type  varchar(32) NOT NULL,
    data  varchar(2048)
);
