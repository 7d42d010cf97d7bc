-- `total` is every unit ever set; the CHECK makes the stock invariant the database's too.
CREATE TABLE IF NOT EXISTS stock (
    product_id TEXT PRIMARY KEY,
    available INTEGER NOT NULL CHECK (available >= 0),
    reserved INTEGER NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    sold INTEGER NOT NULL DEFAULT 0 CHECK (sold >= 0),
    total INTEGER NOT NULL,
    updated_at REAL NOT NULL,
    CHECK (available + reserved + sold = total)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS reservations (
    order_id TEXT PRIMARY KEY,
    status TEXT NOT NULL
        CHECK (status IN ('RESERVED', 'REJECTED', 'RELEASED', 'COMMITTED')),
    items TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
) WITHOUT ROWID;
