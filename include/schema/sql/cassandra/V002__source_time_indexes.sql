-- Freshness (pipeline_health, `make status`, Grafana) asks each bridge table for its newest
-- source commit time every minute: an index makes that a lookup instead of a scan.
CREATE INDEX IF NOT EXISTS latest_prices_cdc_source_ts ON cassandra.latest_prices (cdc_source_ts);
CREATE INDEX IF NOT EXISTS daily_ticker_cdc_source_ts ON cassandra.daily_ticker (cdc_source_ts);
CREATE INDEX IF NOT EXISTS klines_cdc_source_ts ON cassandra.klines (cdc_source_ts);
CREATE INDEX IF NOT EXISTS recent_trades_cdc_source_ts ON cassandra.recent_trades (cdc_source_ts);
CREATE INDEX IF NOT EXISTS order_book_cdc_source_ts ON cassandra.order_book (cdc_source_ts);
