"""Schema upgrades of an existing SQLite file, run before `Database.open` creates what is new.

`CREATE TABLE IF NOT EXISTS` leaves an old table as it was, and SQLite cannot change a
CHECK constraint or add a constrained column in place, so a table whose stored definition
lacks a marker (a new status value, a new column) is rebuilt: renamed, created anew, the
shared columns copied, the old one dropped (its indexes with it; the service schema makes
them again), all in one transaction.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path


def upgrade_table(path: str | Path, table: str, create_sql: str, marker: str) -> bool:
    """Rebuild `table` with `create_sql` when its definition in the file at `path` does not
    contain `marker`; True when it was rebuilt. A missing file or table is left alone."""
    path = Path(path)
    if not path.exists():
        return False
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout=5000")
        # Several instances may start at once: one upgrades, the others then see the marker.
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?",
                               (table,)).fetchone()
            if row is None or marker in str(row[0]):
                conn.execute("COMMIT")
                return False
            old = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
            conn.execute(f"ALTER TABLE {table} RENAME TO {table}_before_upgrade")
            conn.execute(create_sql)
            new = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
            cols = ", ".join(c for c in old if c in new)
            conn.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {table}_before_upgrade")
            conn.execute(f"DROP TABLE {table}_before_upgrade")
            conn.execute("COMMIT")
            return True
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    finally:
        conn.close()
