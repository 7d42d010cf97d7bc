-- Emails are stored lowercased; the unique index on lower(email) refuses case variants
-- even from a writer that forgot to normalize (SQLite: COLLATE NOCASE).
CREATE TABLE IF NOT EXISTS users (
    id TEXT PRIMARY KEY,
    email TEXT NOT NULL,
    name TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    create_time DOUBLE PRECISION NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS users_email ON users (lower(email));
