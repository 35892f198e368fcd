-- The reconciliation (pipeline_health's check_reconciliation, include/health/reconcile.py): what it
-- found different between Postgres binance and Cassandra or the bridge, what it did about it, and
-- its runs. Grafana's role reads these tables (the schema's default privileges); old rows are pruned.

-- one row per run, bucket and store that differs from the source (over the minutes compared:
-- counts and sums of row hashes), with what the DAG did (status repairing: a repair was made;
-- open: none this run, `action` says why); a row with status resolved when it compares equal again
CREATE TABLE IF NOT EXISTS pipeline_health.reconciliation (
    checked_at       timestamptz NOT NULL,
    table_name       text        NOT NULL,
    -- the partition key's values but the bucket: the symbol ('BTCUSDT'), and the interval for klines ('BTCUSDT 1m')
    prefix           text        NOT NULL,
    bucket           timestamptz NOT NULL,
    -- cassandra or bridge
    store            text        NOT NULL,
    source_count     bigint      NOT NULL,
    store_count      bigint      NOT NULL,
    source_checksum  numeric     NOT NULL,
    store_checksum   numeric     NOT NULL,
    -- the minutes (HH:MM of the time column) that differ
    slices           text,
    status           text        NOT NULL CHECK (status IN ('open', 'repairing', 'resolved')),
    action           text        NOT NULL,
    -- the Debezium signals of the incremental snapshot requested, if any
    signal_ids       text,
    PRIMARY KEY (table_name, prefix, bucket, store, checked_at)
);
CREATE INDEX IF NOT EXISTS reconciliation_checked_at ON pipeline_health.reconciliation (checked_at);

-- one row per run: what it compared, and what that cost (wall and CPU time of the task's process)
CREATE TABLE IF NOT EXISTS pipeline_health.reconciliation_runs (
    checked_at        timestamptz      NOT NULL PRIMARY KEY,
    -- recent, or recent + full pass
    scope             text             NOT NULL,
    buckets           bigint           NOT NULL,
    slices_compared   bigint           NOT NULL,
    -- minutes changing in the source during the run, or not yet copied by the bridge: not compared
    slices_in_flight  bigint           NOT NULL,
    rows_source       bigint           NOT NULL,
    rows_cassandra    bigint           NOT NULL,
    rows_bridge       bigint           NOT NULL,
    differences       int              NOT NULL,
    repairs           int              NOT NULL,
    run_seconds       double precision NOT NULL,
    cpu_seconds       double precision NOT NULL,
    ok                boolean          NOT NULL,
    message           text             NOT NULL
);

-- where the full pass over the whole history is: started when, next table and bucket (none: complete)
CREATE TABLE IF NOT EXISTS pipeline_health.reconciliation_cursor (
    id               int PRIMARY KEY CHECK (id = 1),
    pass_started_at  timestamptz,
    table_name       text,
    bucket           timestamptz,
    updated_at       timestamptz NOT NULL
);
