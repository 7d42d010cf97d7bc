"""UserStore.get: users from memory once seen (they never change), unknown ids never cached."""

from __future__ import annotations

import time
import uuid

import pytest

from services.common.storage import Storage, Tx
from services.user.domain import User
from services.user.store import UserStore
from tests.fixtures_storage import OpenStorage, both_backends

pytestmark = [pytest.mark.timeout(30), both_backends]


def _user(n: int) -> User:
    return User(id=uuid.uuid4().hex, email=f"u{n}-{uuid.uuid4().hex[:6]}@example.com",
                name=f"User {n}", create_time=time.time())


async def _delete_behind_its_back(db: Storage, user_id: str) -> None:
    # Only a test does this: no RPC deletes a user, so a cached one is never stale.
    async def run(tx: Tx) -> None:
        await tx.run("DELETE FROM users WHERE id = ?", (user_id,))

    await db.write(run)


async def test_get_serves_seen_users_from_memory(storage_for: OpenStorage) -> None:
    db = await storage_for("user")
    other = await storage_for("user")
    store = UserStore(db)
    created = await store.create(_user(1), "hash")
    await _delete_behind_its_back(db, created.id)
    assert await store.get(created.id) == created  # cached on create

    # Made by another instance sharing the file: read once, then from memory.
    elsewhere = await UserStore(other).create(_user(2), "hash")
    assert await store.get(elsewhere.id) == elsewhere
    await _delete_behind_its_back(db, elsewhere.id)
    assert await store.get(elsewhere.id) == elsewhere

    # An unknown id is not remembered: the user made later is found.
    late = _user(3)
    assert await store.get(late.id) is None
    await UserStore(other).create(late, "hash")
    assert await store.get(late.id) == late


async def test_cache_is_bounded_least_recently_used_out(storage_for: OpenStorage) -> None:
    db = await storage_for("user")
    store = UserStore(db, cache_max=2)
    a, b, c = [await store.create(_user(n), "hash") for n in range(3)]
    # a was dropped when c came in; b and c are still cached.
    for u in (a, b, c):
        await _delete_behind_its_back(db, u.id)
    assert await store.get(a.id) is None
    assert await store.get(b.id) == b
    assert await store.get(c.id) == c


async def test_password_hash_is_replaced_only_if_unchanged(storage_for: OpenStorage) -> None:
    store = UserStore(await storage_for("user"))
    user = await store.create(_user(1), "old")
    assert await store.replace_password_hash(user.id, "old", "new") is True
    assert await store.replace_password_hash(user.id, "old", "newer") is False  # lost the race
    found = await store.credentials(user.email)
    assert found is not None and found[1] == "new"
