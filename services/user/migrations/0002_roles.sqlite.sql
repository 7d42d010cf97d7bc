-- Roles live beside the users table (not a column of it). Written only with the user that
-- holds them.
CREATE TABLE IF NOT EXISTS user_roles (
    user_id TEXT NOT NULL,
    role TEXT NOT NULL,
    PRIMARY KEY (user_id, role)
) WITHOUT ROWID;
