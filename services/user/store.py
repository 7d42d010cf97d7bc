"""All SQL of the user service. A new user and its `user.created` event share one
transaction; the password hash is read only by `credentials` and never leaves this
service."""

from __future__ import annotations

from collections import OrderedDict
from typing import Protocol

from shop.user.v1 import user_pb2

from services.common import events
from services.common.errors import AlreadyExists
from services.common.storage import IntegrityError, Row, Storage, Tx
from services.user.convert import to_proto
from services.user.domain import User

SOURCE = "user"


class UserRepository(Protocol):
    async def create(self, user: User, password_hash: str) -> User: ...
    async def get(self, user_id: str) -> User | None: ...
    async def credentials(self, email: str) -> tuple[User, str] | None: ...
    async def replace_password_hash(self, user_id: str, old: str, new: str) -> bool: ...


_GET = "SELECT id, email, name, create_time FROM users WHERE id = ?"
# A query of its own (plain SQL every backend speaks), in the same read as the user's row.
_ROLES = "SELECT role FROM user_roles WHERE user_id = ? ORDER BY role"
# The case-insensitive match each backend's unique email index answers.
_BY_EMAIL = {
    "sqlite": "SELECT id, email, name, create_time, password_hash FROM users"
              " WHERE email = ? COLLATE NOCASE",
    "postgres": "SELECT id, email, name, create_time, password_hash FROM users"
                " WHERE lower(email) = lower(?)",
}
# Users kept in memory by UserStore.get (about 0.5 kB each).
CACHE_MAX = 50_000


def _row_to_user(row: Row, roles: tuple[str, ...] = ()) -> User:
    return User(id=row["id"], email=row["email"], name=row["name"],
                create_time=float(row["create_time"]), roles=roles)


async def _roles(tx: Tx, user_id: str) -> tuple[str, ...]:
    return tuple(str(r[0]) for r in await tx.fetch(_ROLES, (user_id,)))


class UserStore:
    def __init__(self, storage: Storage, *, cache_max: int = CACHE_MAX) -> None:
        self.storage = storage
        # id -> User, least recently used first (bounded).
        self._cache: OrderedDict[str, User] = OrderedDict()
        self._cache_max = cache_max

    async def create(self, user: User, password_hash: str) -> User:
        """Insert the user and emit `user.created`; AlreadyExists for a taken email."""
        async def run(tx: Tx) -> None:
            await tx.run(
                "INSERT INTO users (id, email, name, password_hash, create_time)"
                " VALUES (?, ?, ?, ?, ?)",
                (user.id, user.email, user.name, password_hash, user.create_time))
            await tx.run_many("INSERT INTO user_roles (user_id, role) VALUES (?, ?)",
                              [(user.id, role) for role in user.roles])
            await tx.emit(events.USER_CREATED, user_pb2.UserCreated(user=to_proto(user)),
                          source=SOURCE, aggregate_id=user.id)

        try:
            await self.storage.write(run)
        except IntegrityError as err:
            # The transaction is rolled back: no row, no event.
            if "email" in str(err):
                raise AlreadyExists(f"a user with email {user.email} already exists") from None
            raise
        self._remember(user)  # committed: a GetUser right after needs no read
        return user

    async def get(self, user_id: str) -> User | None:
        """The user, from memory when seen before: a user (roles included) never changes
        once created (no RPC updates or deletes one), so a cached one is never stale, even
        when another instance sharing the database created it. An unknown id is never
        cached."""
        cache = self._cache
        user = cache.get(user_id)
        if user is not None:
            cache.move_to_end(user_id)
            return user

        async def run(tx: Tx) -> User | None:
            row = await tx.fetchrow(_GET, (user_id,))
            return None if row is None else _row_to_user(row, await _roles(tx, user_id))

        user = await self.storage.read(run)
        if user is None:
            return None
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
        sql = _BY_EMAIL[self.storage.dialect]

        async def run(tx: Tx) -> tuple[User, str] | None:
            row = await tx.fetchrow(sql, (email,))
            if row is None:
                return None
            return (_row_to_user(row, await _roles(tx, str(row["id"]))),
                    str(row["password_hash"]))

        return await self.storage.read(run)

    async def replace_password_hash(self, user_id: str, old: str, new: str) -> bool:
        """Swap the stored hash for `new` if it is still `old` (a re-hash at login: two
        logins at once must not undo each other). Whether it was swapped."""
        async def run(tx: Tx) -> bool:
            return await tx.run(
                "UPDATE users SET password_hash = ? WHERE id = ? AND password_hash = ?",
                (new, user_id, old)) == 1

        return await self.storage.write(run)
