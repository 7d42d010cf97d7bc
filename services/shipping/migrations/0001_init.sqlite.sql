-- order_id as primary key: one shipment per order however often order.confirmed arrives.
CREATE TABLE IF NOT EXISTS shipments (
    order_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    tracking_number TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL CHECK (status IN ('LABEL_CREATED', 'SHIPPED', 'DELIVERED')),
    carrier TEXT NOT NULL,
    created_at REAL NOT NULL
) WITHOUT ROWID;
