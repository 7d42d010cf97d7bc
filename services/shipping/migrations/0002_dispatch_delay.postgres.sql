-- Shipments wait PENDING until dispatch_at, and may be CANCELLED before.
ALTER TABLE shipments DROP CONSTRAINT shipments_status;
ALTER TABLE shipments ADD CONSTRAINT shipments_status CHECK
    (status IN ('LABEL_CREATED', 'PENDING', 'SHIPPED', 'DELIVERED', 'CANCELLED'));
ALTER TABLE shipments ADD COLUMN dispatch_at DOUBLE PRECISION NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS shipments_due ON shipments (dispatch_at) WHERE status = 'PENDING';
-- A cancellation that came before the order's order.confirmed: that event then creates
-- the shipment CANCELLED.
CREATE TABLE IF NOT EXISTS cancellations (
    order_id TEXT PRIMARY KEY,
    cancelled_at DOUBLE PRECISION NOT NULL
);
