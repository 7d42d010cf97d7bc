-- Shipments wait PENDING until dispatch_at, and may be CANCELLED before: SQLite cannot
-- change a CHECK in place, so the table is rebuilt (rows kept, dispatched ones as they were).
CREATE TABLE shipments_v2 (
    order_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    tracking_number TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL CHECK (status IN
        ('LABEL_CREATED', 'PENDING', 'SHIPPED', 'DELIVERED', 'CANCELLED')),
    carrier TEXT NOT NULL,
    created_at REAL NOT NULL,
    dispatch_at REAL NOT NULL DEFAULT 0
) WITHOUT ROWID;
INSERT INTO shipments_v2 (order_id, user_id, tracking_number, status, carrier, created_at)
    SELECT order_id, user_id, tracking_number, status, carrier, created_at FROM shipments;
DROP TABLE shipments;
ALTER TABLE shipments_v2 RENAME TO shipments;
CREATE INDEX IF NOT EXISTS shipments_due ON shipments (dispatch_at) WHERE status = 'PENDING';
-- A cancellation that came before the order's order.confirmed: that event then creates
-- the shipment CANCELLED.
CREATE TABLE IF NOT EXISTS cancellations (
    order_id TEXT PRIMARY KEY,
    cancelled_at REAL NOT NULL
) WITHOUT ROWID;
