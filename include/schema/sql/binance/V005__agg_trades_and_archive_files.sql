-- Aggregate trades (definitions: include/tables.py): one row per aggregate trade, the fills of one
-- taker order at one price and time, from GET /api/v3/aggTrades (binance_extract, for its data
-- interval) or from Binance's public archives (binance_archive). V004 is left to another change.
CREATE TABLE IF NOT EXISTS binance.agg_trades (
    symbol          text        NOT NULL,
    agg_trade_id    bigint      NOT NULL,
    price           numeric     NOT NULL,
    qty             numeric     NOT NULL,
    first_trade_id  bigint      NOT NULL,
    last_trade_id   bigint      NOT NULL,
    time            timestamptz NOT NULL,
    is_buyer_maker  boolean     NOT NULL,
    PRIMARY KEY (symbol, agg_trade_id)
);
-- retention deletes by time (include/retention)
CREATE INDEX IF NOT EXISTS agg_trades_time ON binance.agg_trades (time);

-- Cassandra buckets agg_trades by its `time`: a delete event must carry it, not only the key.
ALTER TABLE binance.agg_trades REPLICA IDENTITY FULL;
-- `time` decides Cassandra's bucket but is not in the Postgres key: it cannot be updated (V003).
CREATE OR REPLACE TRIGGER agg_trades_time_fixed BEFORE UPDATE OF time ON binance.agg_trades
    FOR EACH ROW EXECUTE FUNCTION binance.refuse_key_move('time');

-- The archive files binance_archive has loaded (include/binance/archive.py), with the SHA-256 their
-- .CHECKSUM named: a file already loaded with the same checksum is skipped (a republished file with
-- another checksum is loaded again). Written in the transaction that loads the file's rows. Not
-- market data: not captured (the publication lists the tables of include/tables.py only).
CREATE TABLE IF NOT EXISTS binance.archive_files (
    path        text        NOT NULL,
    sha256      text        NOT NULL,
    dataset     text        NOT NULL,
    symbol      text        NOT NULL,
    rows        bigint      NOT NULL,
    first_time  timestamptz,
    last_time   timestamptz,
    loaded_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (path)
);
