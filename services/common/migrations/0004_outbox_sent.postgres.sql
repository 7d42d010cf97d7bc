-- The relays forget sent rows past their retention once a minute (outbox.prune): along
-- this index rather than a scan of the whole table, which grows with the event rate.
CREATE INDEX IF NOT EXISTS outbox_sent ON outbox (sent_at) WHERE sent_at IS NOT NULL;
