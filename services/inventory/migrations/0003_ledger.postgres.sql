-- Stock becomes event-sourced: per product an append-only stream of events (the source of
-- truth) with a version per event; the stock row is the stream's projection and records
-- the version it is at; snapshots of a stream's level every so many events.
ALTER TABLE stock ADD COLUMN version BIGINT NOT NULL DEFAULT 0;
-- The primary key is the unique (stream, version): two appends never take one version.
-- carried_*: the reserved and sold of a level recorded before the ledger (first event).
CREATE TABLE inventory_events (
    product_id TEXT NOT NULL,
    version BIGINT NOT NULL CHECK (version >= 1),
    kind TEXT NOT NULL
        CHECK (kind IN ('stock_set', 'reserved', 'released', 'committed', 'restocked')),
    order_id TEXT NOT NULL DEFAULT '',
    quantity BIGINT NOT NULL CHECK (quantity >= 0),
    carried_reserved BIGINT CHECK (carried_reserved >= 0),
    carried_sold BIGINT CHECK (carried_sold >= 0),
    recorded_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (product_id, version),
    CHECK ((kind = 'stock_set') = (order_id = '')),
    CHECK (carried_reserved IS NULL OR (kind = 'stock_set' AND version = 1))
);
-- An order moves a product's stock of each kind once: a repeat finds its event.
CREATE UNIQUE INDEX inventory_events_per_order ON inventory_events (order_id, product_id, kind)
    WHERE order_id <> '';
-- Events are immutable.
CREATE FUNCTION inventory_events_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'inventory events are immutable' USING ERRCODE = 'integrity_constraint_violation';
END
$$;
CREATE TRIGGER inventory_events_immutable BEFORE UPDATE OR DELETE ON inventory_events
    FOR EACH ROW EXECUTE FUNCTION inventory_events_immutable();
-- format: the fold's snapshot format; a snapshot of another format is ignored.
CREATE TABLE inventory_snapshots (
    product_id TEXT NOT NULL,
    version BIGINT NOT NULL CHECK (version >= 1),
    format INTEGER NOT NULL,
    state TEXT NOT NULL,
    recorded_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (product_id, version)
);
-- The stock held before the ledger becomes each stream's first event: its opening balance.
INSERT INTO inventory_events (product_id, version, kind, order_id, quantity, carried_reserved,
                              carried_sold, recorded_at)
    SELECT product_id, 1, 'stock_set', '', available, reserved, sold, updated_at FROM stock;
UPDATE stock SET version = 1;
