-- What the pipeline_health DAG measures, one row per check and minute (include/health.py writes,
-- Grafana's "Pipeline health" dashboard and `make status` read). Grafana's role may read this schema
-- (default privileges from the stack bootstrap); old rows are pruned by the DAG.

-- every check's verdict: ok, or failed with what is wrong and what to do
CREATE TABLE IF NOT EXISTS pipeline_health.checks (
    checked_at  timestamptz NOT NULL,
    check_name  text        NOT NULL,
    ok          boolean     NOT NULL,
    message     text        NOT NULL,
    PRIMARY KEY (check_name, checked_at)
);
CREATE INDEX IF NOT EXISTS checks_checked_at ON pipeline_health.checks (checked_at);

-- Kafka Connect: the connector (task_id -1) and each task, and the restarts the check made
CREATE TABLE IF NOT EXISTS pipeline_health.connector_states (
    checked_at  timestamptz NOT NULL,
    connector   text        NOT NULL,
    task_id     int         NOT NULL,
    state       text        NOT NULL,
    worker_id   text,
    restarts    int         NOT NULL DEFAULT 0,
    trace       text,
    PRIMARY KEY (checked_at, connector, task_id)
);

-- the replication slot: WAL it holds back (restart_lsn) and what the connector has not confirmed
CREATE TABLE IF NOT EXISTS pipeline_health.slot_states (
    checked_at           timestamptz NOT NULL,
    slot_name            text        NOT NULL,
    present              boolean     NOT NULL,
    active               boolean,
    wal_status           text,
    retained_wal_bytes   bigint,
    unconfirmed_bytes    bigint,
    safe_wal_size_bytes  bigint,
    PRIMARY KEY (checked_at, slot_name)
);

-- Kafka end offsets against the offsets the stream has applied, per topic partition
CREATE TABLE IF NOT EXISTS pipeline_health.stream_lag (
    checked_at        timestamptz NOT NULL,
    topic             text        NOT NULL,
    partition         int         NOT NULL,
    end_offset        bigint      NOT NULL,
    processed_offset  bigint,
    lag               bigint      NOT NULL,
    PRIMARY KEY (checked_at, topic, partition)
);

-- per stage, the newest source time it holds and how old that is
CREATE TABLE IF NOT EXISTS pipeline_health.freshness (
    checked_at        timestamptz      NOT NULL,
    stage             text             NOT NULL,
    newest_source_ts  timestamptz,
    age_seconds       double precision,
    PRIMARY KEY (checked_at, stage)
);

-- the stream's micro-batches, copied from Cassandra's stream_progress
CREATE TABLE IF NOT EXISTS pipeline_health.stream_batches (
    query_name        text        NOT NULL,
    finished_at       timestamptz NOT NULL,
    batch_id          bigint      NOT NULL,
    input_rows        bigint      NOT NULL,
    processing_ms     bigint      NOT NULL,
    newest_source_ts  timestamptz,
    -- source commit of the newest event in the batch -> the batch written to Cassandra
    latency_ms        bigint,
    PRIMARY KEY (query_name, finished_at, batch_id)
);
CREATE INDEX IF NOT EXISTS stream_batches_finished_at ON pipeline_health.stream_batches (finished_at);
