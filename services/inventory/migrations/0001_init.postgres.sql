-- `total` is every unit ever set; the CHECK makes the stock invariant the database's too.
CREATE TABLE IF NOT EXISTS stock (
    product_id TEXT PRIMARY KEY,
    available BIGINT NOT NULL CHECK (available >= 0),
    reserved BIGINT NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    sold BIGINT NOT NULL DEFAULT 0 CHECK (sold >= 0),
    total BIGINT NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    CHECK (available + reserved + sold = total)
);
CREATE TABLE IF NOT EXISTS reservations (
    order_id TEXT PRIMARY KEY,
    status TEXT NOT NULL CONSTRAINT reservations_status
        CHECK (status IN ('RESERVED', 'REJECTED', 'RELEASED', 'COMMITTED')),
    items TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);
