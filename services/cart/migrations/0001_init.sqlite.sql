CREATE TABLE IF NOT EXISTS cart_items (
    user_id TEXT NOT NULL,
    product_id TEXT NOT NULL,
    quantity INTEGER NOT NULL CHECK (quantity BETWEEN 1 AND 99),
    unit_price_cents INTEGER NOT NULL CHECK (unit_price_cents >= 0),
    name TEXT NOT NULL,
    currency TEXT NOT NULL,
    added_at REAL NOT NULL,
    PRIMARY KEY (user_id, product_id)
) WITHOUT ROWID;
