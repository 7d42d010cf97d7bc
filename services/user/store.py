"""All SQL of the user service. A new user and its `user.created` event share one
transaction; the password hash is read only by `credentials` and never leaves this
service."""

from __future__ import annotations

import sqlite3

import aiosqlite
from shop.user.v1 import user_pb2

from services.common import events, outbox
from services.common.db import Database
from services.common.errors import AlreadyExists
from services.user.convert import to_proto
from services.user.domain import User

SOURCE = "user"

# Emails are stored lowercased; NOCASE on the unique index refuses case variants even
# from a writer that forgot to normalize. The index, not a check-then-insert, decides.
SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    id TEXT PRIMARY KEY,
    email TEXT NOT NULL,
    name TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    create_time REAL NOT NULL
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS users_email ON users (email COLLATE NOCASE);
"""


def _row_to_user(row: aiosqlite.Row) -> User:
    return User(id=row["id"], email=row["email"], name=row["name"],
                create_time=float(row["create_time"]))


class UserStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, user: User, password_hash: str) -> User:
        """Insert the user and enqueue `user.created`; AlreadyExists for a taken email."""
        try:
            async with self.db.transaction() as conn:
                await conn.execute(
                    "INSERT INTO users (id, email, name, password_hash, create_time)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (user.id, user.email, user.name, password_hash, user.create_time))
                await outbox.enqueue(conn, events.USER_CREATED,
                                     user_pb2.UserCreated(user=to_proto(user)),
                                     source=SOURCE, aggregate_id=user.id)
        except sqlite3.IntegrityError as err:
            # The transaction is rolled back: no row, no event.
            if "email" in str(err):
                raise AlreadyExists(f"a user with email {user.email} already exists") from None
            raise
        return user

    async def get(self, user_id: str) -> User | None:
        async with self.db.reader() as conn:
            cur = await conn.execute(
                "SELECT id, email, name, create_time FROM users WHERE id = ?", (user_id,))
            row = await cur.fetchone()
        return None if row is None else _row_to_user(row)

    async def credentials(self, email: str) -> tuple[User, str] | None:
        """The user with this (normalized) email and their password hash, for Login only."""
        async with self.db.reader() as conn:
            cur = await conn.execute(
                "SELECT id, email, name, create_time, password_hash FROM users"
                " WHERE email = ? COLLATE NOCASE", (email,))
            row = await cur.fetchone()
        return None if row is None else (_row_to_user(row), str(row["password_hash"]))
