-- One relay per file publishes: the holder of this row (see outbox.py).
CREATE TABLE IF NOT EXISTS outbox_lease (
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    acquired_at REAL NOT NULL,
    expires_at REAL NOT NULL
);
