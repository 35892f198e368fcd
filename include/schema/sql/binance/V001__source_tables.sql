-- The five Binance datasets (definitions: include/tables.py). Prices, quantities and volumes are
-- NUMERIC (exact), times timestamptz in UTC. Primary keys are the natural keys, so re-loads upsert.
CREATE TABLE IF NOT EXISTS binance.latest_prices (
    symbol      text        NOT NULL,
    price       numeric     NOT NULL,
    time        timestamptz NOT NULL,
    PRIMARY KEY (symbol, time)
);

CREATE TABLE IF NOT EXISTS binance.daily_ticker (
    symbol        text        NOT NULL,
    open_price    numeric     NOT NULL,
    high_price    numeric     NOT NULL,
    low_price     numeric     NOT NULL,
    last_price    numeric     NOT NULL,
    volume        numeric     NOT NULL,
    quote_volume  numeric     NOT NULL,
    open_time     timestamptz NOT NULL,
    close_time    timestamptz NOT NULL,
    first_id      bigint      NOT NULL,
    last_id       bigint      NOT NULL,
    count         bigint      NOT NULL,
    PRIMARY KEY (symbol, close_time)
);

CREATE TABLE IF NOT EXISTS binance.klines (
    symbol        text        NOT NULL,
    interval      text        NOT NULL,
    open_time     timestamptz NOT NULL,
    open_price    numeric     NOT NULL,
    high_price    numeric     NOT NULL,
    low_price     numeric     NOT NULL,
    close_price   numeric     NOT NULL,
    volume        numeric     NOT NULL,
    close_time    timestamptz NOT NULL,
    quote_volume  numeric     NOT NULL,
    num_trades    bigint      NOT NULL,
    PRIMARY KEY (symbol, interval, open_time)
);

CREATE TABLE IF NOT EXISTS binance.recent_trades (
    symbol          text        NOT NULL,
    trade_id        bigint      NOT NULL,
    price           numeric     NOT NULL,
    qty             numeric     NOT NULL,
    quote_qty       numeric     NOT NULL,
    time            timestamptz NOT NULL,
    is_buyer_maker  boolean     NOT NULL,
    PRIMARY KEY (symbol, trade_id)
);

CREATE TABLE IF NOT EXISTS binance.order_book (
    update_id    bigint      NOT NULL,
    symbol       text        NOT NULL,
    side         text        NOT NULL CHECK (side IN ('bid', 'ask')),
    price        numeric     NOT NULL,
    quantity     numeric     NOT NULL,
    captured_at  timestamptz NOT NULL,
    PRIMARY KEY (symbol, update_id, side, price)
);
CREATE INDEX IF NOT EXISTS order_book_captured_at ON binance.order_book (captured_at);

-- Debezium's delete events carry the primary key by default; order_book's carry the whole row,
-- because the sink keys its snapshots by capture time.
ALTER TABLE binance.latest_prices REPLICA IDENTITY DEFAULT;
ALTER TABLE binance.daily_ticker  REPLICA IDENTITY DEFAULT;
ALTER TABLE binance.klines        REPLICA IDENTITY DEFAULT;
ALTER TABLE binance.recent_trades REPLICA IDENTITY DEFAULT;
ALTER TABLE binance.order_book    REPLICA IDENTITY FULL;
