-- `outbox.data` is the serialized Envelope; the other columns are what the relay needs
-- without parsing it. Sent rows are kept a while (audits, tests) and pruned by the relay.
-- IF NOT EXISTS: a file made before migrations were recorded is adopted as it is.
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    subject TEXT NOT NULL,
    aggregate_id TEXT NOT NULL,
    correlation_id TEXT NOT NULL DEFAULT '',
    traceparent TEXT NOT NULL DEFAULT '',
    data BLOB NOT NULL,
    created_at REAL NOT NULL,
    sent_at REAL
);
CREATE INDEX IF NOT EXISTS outbox_unsent ON outbox (id) WHERE sent_at IS NULL;
CREATE TABLE IF NOT EXISTS inbox (
    consumer TEXT NOT NULL,
    event_id TEXT NOT NULL,
    handled_at REAL NOT NULL,
    PRIMARY KEY (consumer, event_id)
) WITHOUT ROWID;
