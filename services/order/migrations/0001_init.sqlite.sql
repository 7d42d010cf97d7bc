-- Orders, their sagas (one row each: the state the orchestrator drives, with a version for
-- optimistic concurrency and a lease so one instance drives it at a time) and every
-- attempt of every step. A file made before versioned migrations already holds these
-- tables: they are kept as they are.
CREATE TABLE IF NOT EXISTS orders (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    items TEXT NOT NULL,                -- JSON [[product_id, quantity, unit_price_cents], ...]
    total_cents INTEGER NOT NULL CHECK (total_cents >= 0),
    currency TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN
        ('PENDING', 'CONFIRMED', 'SHIPPED', 'CANCELLED', 'REQUIRES_ATTENTION')),
    cancel_reason TEXT NOT NULL DEFAULT '',
    tracking_number TEXT NOT NULL DEFAULT '',
    from_cart INTEGER NOT NULL DEFAULT 0,
    idempotency_key TEXT,               -- NULL when the client sent none
    create_time REAL NOT NULL,
    update_time REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS orders_idempotency
    ON orders (user_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS orders_by_user ON orders (user_id, create_time DESC, id DESC);
CREATE TABLE IF NOT EXISTS sagas (
    order_id TEXT PRIMARY KEY,
    step TEXT NOT NULL,
    status TEXT NOT NULL
        CHECK (status IN ('running', 'compensating', 'done', 'requires_attention')),
    attempt INTEGER NOT NULL DEFAULT 0,
    charged INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    reason TEXT NOT NULL DEFAULT '',
    card_token TEXT NOT NULL DEFAULT '',
    version INTEGER NOT NULL DEFAULT 0,
    owner TEXT NOT NULL DEFAULT '',
    lease_until REAL NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL,
    committed INTEGER NOT NULL DEFAULT 0,
    uncertain INTEGER NOT NULL DEFAULT 0,
    waits INTEGER NOT NULL DEFAULT 0,
    refusal TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS sagas_active ON sagas (status)
    WHERE status IN ('running', 'compensating');
CREATE TABLE IF NOT EXISTS saga_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id TEXT NOT NULL,
    step TEXT NOT NULL,
    outcome TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    time REAL NOT NULL,
    error TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS saga_history_by_order ON saga_history (order_id, id);
