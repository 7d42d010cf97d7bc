"""Versioned migrations: each schema change is a numbered file per dialect, applied once.

A component (`common` for the outbox and inbox, then each service) keeps its files in a
`migrations/` folder: `0001_init.sqlite.sql` and `0001_init.postgres.sql`, then `0002_...`.
Every version exists for both dialects, so both backends hold the same tables, CHECK
constraints and unique keys. A backend applies the missing versions in order, all in one
transaction under its lock (SQLite: BEGIN IMMEDIATE; PostgreSQL: an advisory transaction
lock), and records each in `schema_migrations`: instances starting together apply each
migration once, and a failing one leaves the database as it was.

A released file is never edited: a change is a new version.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from services.common.storage import Dialect

__all__ = ["COMMON", "RECORD_TABLE", "Migration", "MigrationSet", "service_migrations",
           "split_statements"]

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.(sqlite|postgres)\.sql$")

RECORD_TABLE = {
    "sqlite": """CREATE TABLE IF NOT EXISTS schema_migrations (
    component TEXT NOT NULL,
    version INTEGER NOT NULL,
    name TEXT NOT NULL,
    applied_at REAL NOT NULL,
    PRIMARY KEY (component, version)
)""",
    "postgres": """CREATE TABLE IF NOT EXISTS schema_migrations (
    component TEXT NOT NULL,
    version INTEGER NOT NULL,
    name TEXT NOT NULL,
    applied_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (component, version)
)""",
}


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


@dataclass(frozen=True)
class MigrationSet:
    """The migration files of one component; `upto` stops at that version (tests build
    the database an older release made)."""

    component: str
    directory: Path
    upto: int | None = None

    def for_dialect(self, dialect: Dialect) -> list[Migration]:
        found: dict[int, dict[str, Path]] = {}
        names: dict[int, str] = {}
        for path in sorted(self.directory.glob("*.sql")):
            m = _FILE.match(path.name)
            if m is None:
                raise ValueError(f"{path}: not a migration file name (NNNN_name.dialect.sql)")
            version = int(m.group(1))
            if names.setdefault(version, m.group(2)) != m.group(2):
                raise ValueError(f"{path}: version {version} has two names")
            found.setdefault(version, {})[m.group(3)] = path
        versions = sorted(found)
        if versions != list(range(1, len(versions) + 1)):
            raise ValueError(f"{self.directory}: versions must be 1..N, got {versions}")
        out: list[Migration] = []
        for v in versions:
            if self.upto is not None and v > self.upto:
                break
            file = found[v].get(dialect)
            if file is None:
                raise ValueError(f"{self.directory}: version {v} has no {dialect} file")
            out.append(Migration(v, names[v], file.read_text()))
        return out


def service_migrations(service: str) -> MigrationSet:
    """`services/<service>/migrations/`."""
    return MigrationSet(service, Path(__file__).parent.parent / service / "migrations")


COMMON = MigrationSet("common", Path(__file__).parent / "migrations")


def split_statements(sql: str) -> list[str]:
    """A SQLite script as single statements (sqlite3 runs one per execute)."""
    out: list[str] = []
    buf = ""
    for line in sql.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            stmt = buf.strip()
            if stmt.rstrip(";").strip():
                out.append(stmt)
            buf = ""
    if buf.strip() and not all(ln.strip().startswith("--") or not ln.strip()
                               for ln in buf.splitlines()):
        raise ValueError(f"incomplete statement at the end of a migration: {buf.strip()!r}")
    return out
