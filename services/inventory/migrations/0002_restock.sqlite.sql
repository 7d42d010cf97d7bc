-- A committed order's units can go back to available: reservations gain RESTOCKED. SQLite
-- cannot change a CHECK in place, so the table is rebuilt with its rows.
CREATE TABLE reservations_v2 (
    order_id TEXT PRIMARY KEY,
    status TEXT NOT NULL
        CHECK (status IN ('RESERVED', 'REJECTED', 'RELEASED', 'COMMITTED', 'RESTOCKED')),
    items TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
) WITHOUT ROWID;
INSERT INTO reservations_v2 (order_id, status, items, reason, created_at, updated_at)
    SELECT order_id, status, items, reason, created_at, updated_at FROM reservations;
DROP TABLE reservations;
ALTER TABLE reservations_v2 RENAME TO reservations;
