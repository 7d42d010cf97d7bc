-- `txid` is the writing transaction's id: the relay publishes in (txid, id) order and only
-- rows below the oldest transaction still running, so a row whose transaction commits
-- late is never skipped nor overtaken by a later write to the same aggregate.
CREATE TABLE IF NOT EXISTS outbox (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    txid BIGINT NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),
    event_id TEXT NOT NULL UNIQUE,
    subject TEXT NOT NULL,
    aggregate_id TEXT NOT NULL,
    correlation_id TEXT NOT NULL DEFAULT '',
    traceparent TEXT NOT NULL DEFAULT '',
    data BYTEA NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    sent_at DOUBLE PRECISION
);
CREATE INDEX IF NOT EXISTS outbox_unsent ON outbox (txid, id) WHERE sent_at IS NULL;
CREATE TABLE IF NOT EXISTS inbox (
    consumer TEXT NOT NULL,
    event_id TEXT NOT NULL,
    handled_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (consumer, event_id)
);
