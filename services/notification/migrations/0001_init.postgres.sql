-- seq orders the listing (newest first) and is the page cursor. UNIQUE(event_id) backs up
-- the consumer's inbox: one notification per event, whatever happens.
--
-- deliveries is the delivery outbox: a row is written in the same transaction as its
-- notification, so a mail is owed exactly when the notification exists; a sender claims
-- due PENDING rows after the commit and ends each one SENT or FAILED. A claim (claimed_by,
-- next_attempt_at moved past the round) keeps the instances sharing the database from
-- sending one mail twice; a crashed sender's claims fall due again when they run out.
-- recipients keeps the address and name of every user.created seen (the other events
-- carry only a user id).
CREATE TABLE IF NOT EXISTS notifications (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    user_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    body TEXT NOT NULL,
    read INTEGER NOT NULL DEFAULT 0 CHECK (read IN (0, 1)),
    created_at DOUBLE PRECISION NOT NULL,
    event_id TEXT NOT NULL UNIQUE
);
CREATE INDEX IF NOT EXISTS notifications_user ON notifications (user_id, seq);
CREATE INDEX IF NOT EXISTS notifications_unread ON notifications (user_id, seq)
    WHERE read = 0;
CREATE TABLE IF NOT EXISTS recipients (
    user_id TEXT PRIMARY KEY,
    email TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS deliveries (
    notification_id TEXT PRIMARY KEY REFERENCES notifications (id),
    recipient TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL CHECK (status IN ('PENDING', 'SENT', 'FAILED')),
    attempts INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at DOUBLE PRECISION NOT NULL,
    error TEXT NOT NULL DEFAULT '',
    request_id TEXT NOT NULL DEFAULT '',
    claimed_by TEXT NOT NULL DEFAULT '',
    created_at DOUBLE PRECISION NOT NULL,
    done_at DOUBLE PRECISION
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (next_attempt_at)
    WHERE status = 'PENDING';
