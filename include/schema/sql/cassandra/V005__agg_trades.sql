-- The bridge's copy of Cassandra's agg_trades (include/tables.py, bridge_table), keyed like a
-- Cassandra row without its bucket. V004 is left to another change.
CREATE TABLE IF NOT EXISTS cassandra.agg_trades (
    symbol text NOT NULL, agg_trade_id bigint NOT NULL, price numeric NOT NULL, qty numeric NOT NULL,
    first_trade_id bigint NOT NULL, last_trade_id bigint NOT NULL, time timestamptz NOT NULL,
    is_buyer_maker boolean NOT NULL,
    cdc_op text, cdc_source_ts timestamptz, cdc_lsn bigint, cdc_written_at timestamptz,
    PRIMARY KEY (symbol, agg_trade_id)
);
-- retention and Grafana's time filter read by time; freshness reads max(cdc_source_ts)
CREATE INDEX IF NOT EXISTS agg_trades_time ON cassandra.agg_trades (time);
CREATE INDEX IF NOT EXISTS agg_trades_cdc_source_ts ON cassandra.agg_trades (cdc_source_ts);
