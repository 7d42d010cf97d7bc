-- order_id as primary key: one shipment per order however often order.confirmed arrives.
CREATE TABLE IF NOT EXISTS shipments (
    order_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    tracking_number TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL CONSTRAINT shipments_status CHECK
        (status IN ('LABEL_CREATED', 'SHIPPED', 'DELIVERED')),
    carrier TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);
