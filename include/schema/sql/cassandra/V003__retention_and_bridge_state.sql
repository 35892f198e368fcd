-- Retention deletes the bridge's rows by their time column (include/retention): an index on it.
CREATE INDEX IF NOT EXISTS latest_prices_time ON cassandra.latest_prices (time);
CREATE INDEX IF NOT EXISTS daily_ticker_close_time ON cassandra.daily_ticker (close_time);
CREATE INDEX IF NOT EXISTS klines_open_time ON cassandra.klines (open_time);
CREATE INDEX IF NOT EXISTS order_book_captured_at ON cassandra.order_book (captured_at);

-- What the bridge did last, per table: `bucket` is now the change-log bucket of the stream's last
-- finished batch it read up to (stream_position in Cassandra), not a minute of its own clock.
ALTER TABLE cassandra.bridge_watermarks ADD COLUMN IF NOT EXISTS mode text;
-- why the last full copy happened (first run, change log expired past the watermark, asked for)
ALTER TABLE cassandra.bridge_watermarks ADD COLUMN IF NOT EXISTS full_copy_reason text;
ALTER TABLE cassandra.bridge_watermarks ADD COLUMN IF NOT EXISTS full_copy_at timestamptz;
