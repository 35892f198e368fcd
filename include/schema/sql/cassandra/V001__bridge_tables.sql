-- Cassandra's tables copied into Postgres for Grafana (definitions: include/tables.py,
-- bridge_table): same names and columns as in Cassandra, keyed like Cassandra, plus where the
-- bridge has got to. Grafana's role reads this schema (default privileges from the stack bootstrap).
CREATE TABLE IF NOT EXISTS cassandra.latest_prices (
    symbol text NOT NULL, price numeric NOT NULL, time timestamptz NOT NULL,
    cdc_op text, cdc_source_ts timestamptz, cdc_lsn bigint, cdc_written_at timestamptz,
    PRIMARY KEY (symbol, time)
);

CREATE TABLE IF NOT EXISTS cassandra.daily_ticker (
    symbol text NOT NULL, open_price numeric NOT NULL, high_price numeric NOT NULL, low_price numeric NOT NULL,
    last_price numeric NOT NULL, volume numeric NOT NULL, quote_volume numeric NOT NULL,
    open_time timestamptz NOT NULL, close_time timestamptz NOT NULL,
    first_id bigint NOT NULL, last_id bigint NOT NULL, count bigint NOT NULL,
    cdc_op text, cdc_source_ts timestamptz, cdc_lsn bigint, cdc_written_at timestamptz,
    PRIMARY KEY (symbol, close_time)
);

CREATE TABLE IF NOT EXISTS cassandra.klines (
    symbol text NOT NULL, interval text NOT NULL, open_time timestamptz NOT NULL,
    open_price numeric NOT NULL, high_price numeric NOT NULL, low_price numeric NOT NULL,
    close_price numeric NOT NULL, volume numeric NOT NULL, close_time timestamptz NOT NULL,
    quote_volume numeric NOT NULL, num_trades bigint NOT NULL,
    cdc_op text, cdc_source_ts timestamptz, cdc_lsn bigint, cdc_written_at timestamptz,
    PRIMARY KEY (symbol, interval, open_time)
);

CREATE TABLE IF NOT EXISTS cassandra.recent_trades (
    symbol text NOT NULL, trade_id bigint NOT NULL, price numeric NOT NULL, qty numeric NOT NULL,
    quote_qty numeric NOT NULL, time timestamptz NOT NULL, is_buyer_maker boolean NOT NULL,
    cdc_op text, cdc_source_ts timestamptz, cdc_lsn bigint, cdc_written_at timestamptz,
    PRIMARY KEY (symbol, trade_id)
);
CREATE INDEX IF NOT EXISTS recent_trades_time ON cassandra.recent_trades (time);

CREATE TABLE IF NOT EXISTS cassandra.order_book (
    update_id bigint NOT NULL, symbol text NOT NULL, side text NOT NULL, price numeric NOT NULL,
    quantity numeric NOT NULL, captured_at timestamptz NOT NULL,
    cdc_op text, cdc_source_ts timestamptz, cdc_lsn bigint, cdc_written_at timestamptz,
    PRIMARY KEY (symbol, captured_at, update_id, side, price)
);

-- per table: the last change-log minute fully copied, so a failed run is simply retried
CREATE TABLE IF NOT EXISTS cassandra.bridge_watermarks (
    table_name  text PRIMARY KEY,
    bucket      timestamptz NOT NULL,
    synced_at   timestamptz NOT NULL DEFAULT now(),
    rows_upserted bigint NOT NULL DEFAULT 0,
    rows_deleted  bigint NOT NULL DEFAULT 0
);
