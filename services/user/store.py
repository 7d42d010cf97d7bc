"""All SQL of the user service. A new user and its `user.created` event share one
transaction; the password hash is read only by `credentials` and never leaves this
service."""

from __future__ import annotations

import sqlite3
from collections import OrderedDict

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
-- Roles live beside the users table (not a column of it), so an existing database
-- gains them without a migration. Written only with the user that holds them.
CREATE TABLE IF NOT EXISTS user_roles (
    user_id TEXT NOT NULL,
    role TEXT NOT NULL,
    PRIMARY KEY (user_id, role)
) WITHOUT ROWID;
"""


_GET = "SELECT id, email, name, create_time FROM users WHERE id = ?"
# A query of its own (plain SQL every backend speaks), in the same read as the user's row.
_ROLES = "SELECT role FROM user_roles WHERE user_id = ? ORDER BY role"
# Users kept in memory by UserStore.get (about 0.5 kB each).
CACHE_MAX = 50_000


def _row_to_user(row: aiosqlite.Row, roles: tuple[str, ...] = ()) -> User:
    return User(id=row["id"], email=row["email"], name=row["name"],
                create_time=float(row["create_time"]), roles=roles)


def _roles(rows: list[aiosqlite.Row]) -> tuple[str, ...]:
    return tuple(str(r["role"]) for r in rows)


class UserStore:
    def __init__(self, db: Database, *, cache_max: int = CACHE_MAX) -> None:
        self.db = db
        # id -> User, least recently used first (bounded).
        self._cache: OrderedDict[str, User] = OrderedDict()
        self._cache_max = cache_max

    async def create(self, user: User, password_hash: str) -> User:
        """Insert the user and enqueue `user.created`; AlreadyExists for a taken email."""
        try:
            async with self.db.transaction() as conn:
                await conn.execute(
                    "INSERT INTO users (id, email, name, password_hash, create_time)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (user.id, user.email, user.name, password_hash, user.create_time))
                await conn.executemany(
                    "INSERT INTO user_roles (user_id, role) VALUES (?, ?)",
                    [(user.id, role) for role in user.roles])
                await outbox.enqueue(conn, events.USER_CREATED,
                                     user_pb2.UserCreated(user=to_proto(user)),
                                     source=SOURCE, aggregate_id=user.id)
        except sqlite3.IntegrityError as err:
            # The transaction is rolled back: no row, no event.
            if "email" in str(err):
                raise AlreadyExists(f"a user with email {user.email} already exists") from None
            raise
        self._remember(user)  # committed: a GetUser right after needs no read
        return user

    async def get(self, user_id: str) -> User | None:
        """The user, from memory when seen before: a user (roles included) never changes
        once created (no RPC updates or deletes one), so a cached one is never stale, even
        when another instance sharing the file created it. An unknown id is never cached."""
        cache = self._cache
        user = cache.get(user_id)
        if user is not None:
            cache.move_to_end(user_id)
            return user
        row, roles = await self.db.read_now(
            lambda tx: (tx.one(_GET, (user_id,)), tx.all(_ROLES, (user_id,))))
        if row is None:
            return None
        user = _row_to_user(row, _roles(roles))
        self._remember(user)
        return user

    def _remember(self, user: User) -> None:
        cache = self._cache
        cache[user.id] = user
        cache.move_to_end(user.id)
        if len(cache) > self._cache_max:
            cache.popitem(last=False)

    async def credentials(self, email: str) -> tuple[User, str] | None:
        """The user with this (normalized) email and their password hash, for Login only."""
        async with self.db.reader() as conn:
            cur = await conn.execute(
                "SELECT id, email, name, create_time, password_hash FROM users"
                " WHERE email = ? COLLATE NOCASE", (email,))
            row = await cur.fetchone()
            if row is None:
                return None
            cur = await conn.execute(_ROLES, (row["id"],))
            roles = _roles(list(await cur.fetchall()))
        return _row_to_user(row, roles), str(row["password_hash"])

    async def replace_password_hash(self, user_id: str, old: str, new: str) -> bool:
        """Swap the stored hash for `new` if it is still `old` (a re-hash at login: two
        logins at once must not undo each other). Whether it was swapped."""
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                "UPDATE users SET password_hash = ? WHERE id = ? AND password_hash = ?",
                (new, user_id, old))
            return cur.rowcount == 1
