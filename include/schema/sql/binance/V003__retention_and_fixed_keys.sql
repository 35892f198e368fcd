-- Retention deletes rows by their time column (the retention DAG, include/retention): an index on
-- it in every table, so a prune reads only what it deletes.
CREATE INDEX IF NOT EXISTS latest_prices_time ON binance.latest_prices (time);
CREATE INDEX IF NOT EXISTS daily_ticker_close_time ON binance.daily_ticker (close_time);
CREATE INDEX IF NOT EXISTS klines_open_time ON binance.klines (open_time);
CREATE INDEX IF NOT EXISTS recent_trades_time ON binance.recent_trades (time);

-- Cassandra buckets recent_trades by its `time`: a delete event must carry it, not only the key.
ALTER TABLE binance.recent_trades REPLICA IDENTITY FULL;

-- A column in Cassandra's key (or its bucket) that is not in the Postgres primary key cannot change:
-- an UPDATE of it would leave the old row in Cassandra under its old key. Delete the row and
-- insert it again instead (both reach Cassandra). The trigger names the column and the row.
CREATE OR REPLACE FUNCTION binance.refuse_key_move() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF to_jsonb(OLD) -> TG_ARGV[0] IS DISTINCT FROM to_jsonb(NEW) -> TG_ARGV[0] THEN
        RAISE EXCEPTION '%.%.% cannot be updated (from % to %): it is part of Cassandra''s key; delete the row and insert it again',
            TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_ARGV[0], to_jsonb(OLD) -> TG_ARGV[0], to_jsonb(NEW) -> TG_ARGV[0]
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE TRIGGER order_book_captured_at_fixed BEFORE UPDATE OF captured_at ON binance.order_book
    FOR EACH ROW EXECUTE FUNCTION binance.refuse_key_move('captured_at');
CREATE OR REPLACE TRIGGER recent_trades_time_fixed BEFORE UPDATE OF time ON binance.recent_trades
    FOR EACH ROW EXECUTE FUNCTION binance.refuse_key_move('time');
