-- The request id of the order.confirmed that made a shipment: order.shipped carries it on.
ALTER TABLE shipments ADD COLUMN request_id TEXT NOT NULL DEFAULT '';
