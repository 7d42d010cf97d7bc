-- Followers read new rows by (txid, seq) below the oldest running transaction: a serial
-- alone is not commit order on a server with concurrent writers.
CREATE TABLE IF NOT EXISTS products (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    txid BIGINT NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),
    id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    category TEXT NOT NULL DEFAULT '',
    price_cents BIGINT NOT NULL CHECK (price_cents > 0),
    currency TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS products_follow ON products (txid, seq);
