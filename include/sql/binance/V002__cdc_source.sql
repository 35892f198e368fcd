-- What Debezium needs on the source side (run by the schema owner, the pipeline role).
-- A heartbeat row Debezium updates every heartbeat.interval.ms, so the replication slot advances
-- even when no market data changes; it is in the publication so its change reaches the connector.
CREATE TABLE IF NOT EXISTS binance.debezium_heartbeat (
    id       int PRIMARY KEY,
    beat_at  timestamptz NOT NULL
);

-- A filtered publication over the binance tables only (the default FOR ALL TABLES needs a superuser).
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_publication WHERE pubname = 'binance_cdc') THEN
        CREATE PUBLICATION binance_cdc FOR TABLE
            binance.latest_prices, binance.daily_ticker, binance.klines, binance.recent_trades,
            binance.order_book, binance.debezium_heartbeat;
    END IF;
END
$$;
