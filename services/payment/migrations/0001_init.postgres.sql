-- order_id is the primary key: one payment row per order, ever (Charge is idempotent).
CREATE TABLE IF NOT EXISTS payments (
    order_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('CHARGED', 'DECLINED', 'REFUNDED', 'VOID')),
    amount_cents BIGINT NOT NULL CHECK (amount_cents >= 0),
    refunded_cents BIGINT NOT NULL DEFAULT 0
        CHECK (refunded_cents >= 0 AND refunded_cents <= amount_cents),
    currency TEXT NOT NULL,
    decline_reason TEXT NOT NULL DEFAULT '',
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS payments_user ON payments (user_id);
