"""The admin account: made once by the user service, role granted nowhere else."""

from __future__ import annotations

import asyncio
import stat
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import pytest
from grpc import aio
from shop.user.v1 import user_pb2

from services.common.db import Database
from services.common.errors import AlreadyExists
from services.common.schema import service_migrations
from services.common.settings import load_settings
from services.user import admin, domain
from services.user.servicer import UserServicer
from services.user.store import UserStore
from services.user.tokens import KeyRing, TokenSettings

pytestmark = pytest.mark.timeout(60)


async def _hash(password: str) -> str:
    return await asyncio.to_thread(domain.hash_password, password)


def test_a_random_password_is_written_once_mode_600(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHOP_ADMIN_PASSWORD", raising=False)
    password, source = admin.admin_password(tmp_path)
    path = tmp_path / "admin-password"
    assert source == str(path)
    assert len(password) >= domain.MIN_PASSWORD_LEN
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == password
    assert admin.admin_password(tmp_path) == (password, str(path))  # kept, not renewed
    assert not [p for p in tmp_path.iterdir() if p.name != "admin-password"]  # no temp left


def test_shop_admin_password_wins_and_writes_no_file(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # load_settings makes the data dir
    monkeypatch.setenv("SHOP_ADMIN_PASSWORD", "given-password")
    given = load_settings("user").user.admin_password
    assert admin.admin_password(tmp_path, given) == ("given-password", "SHOP_ADMIN_PASSWORD")
    assert not (tmp_path / "admin-password").exists()
    monkeypatch.setenv("SHOP_ADMIN_PASSWORD", "short")
    given = load_settings("user").user.admin_password
    with pytest.raises(ValueError, match="SHOP_ADMIN_PASSWORD: password must be at least 8"):
        admin.admin_password(tmp_path, given)


async def _ensure_admin(store: UserStore, data_dir: Path, hash_password: admin.Hasher) -> None:
    """What a start does: the account still to make, then made."""
    new = await admin.admin_to_create(store, data_dir)
    if new is not None:
        await admin.create_admin(store, new, hash_password)


async def test_ensure_admin_creates_the_account_with_the_role_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHOP_ADMIN_PASSWORD", raising=False)
    db = await Database.open(tmp_path / "user.db", durable=False,
                               migrations=[service_migrations("user")])
    try:
        store = UserStore(db)
        # Two instances starting at once: one account, one password.
        await asyncio.gather(_ensure_admin(store, tmp_path, _hash),
                             _ensure_admin(UserStore(db), tmp_path, _hash))
        found = await store.credentials(domain.ADMIN_EMAIL)
        assert found is not None
        user, stored = found
        assert user.roles == (domain.ADMIN_ROLE,)
        password = (tmp_path / "admin-password").read_text().strip()
        assert domain.verify_password(password, stored)
        assert (await store.get(user.id)) == user
        await _ensure_admin(store, tmp_path, _hash)
        rows = await db.read(lambda tx: tx.fetch("SELECT id FROM users"))
        assert len(rows) == 1
    finally:
        await db.close()


async def test_a_registered_lookalike_is_never_promoted(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOP_ADMIN_PASSWORD", "given-password")
    db = await Database.open(tmp_path / "user.db", durable=False,
                               migrations=[service_migrations("user")])
    try:
        store = UserStore(db)
        # Registered through CreateUser (no roles) before the account existed.
        squatter = domain.User(id=uuid.uuid4().hex, email=domain.ADMIN_EMAIL, name="Not Admin",
                               create_time=time.time())
        await store.create(squatter, domain.hash_password("squatter-pw"))
        await _ensure_admin(store, tmp_path, _hash)
        found = await store.credentials(domain.ADMIN_EMAIL)
        assert found is not None and found[0].roles == ()
    finally:
        await db.close()


async def test_ordinary_users_have_no_roles(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "user.db", durable=False,
                               migrations=[service_migrations("user")])
    try:
        store = UserStore(db)
        user = domain.User(id=uuid.uuid4().hex, email="a@example.com", name="A",
                           create_time=time.time())
        await store.create(user, "hash")
        assert (await UserStore(db).get(user.id)).roles == ()  # type: ignore[union-attr]
    finally:
        await db.close()


async def test_registration_and_login_wait_for_the_admin_account_being_made(
        tmp_path: Path) -> None:
    """At first start the service serves while the admin's hash is made: a login or a
    registration of admin@shop.local arriving meanwhile waits for the account instead of
    finding the email free or the account missing."""
    gate = asyncio.Event()

    async def slow_hash(password: str) -> str:
        await gate.wait()
        return await _hash(password)

    db = await Database.open(tmp_path / "user.db", durable=False,
                             migrations=[service_migrations("user")])
    try:
        store = UserStore(db)
        new = await admin.admin_to_create(store, tmp_path, given="an-admin-pass-1")
        assert new is not None
        made = asyncio.ensure_future(admin.create_admin(store, new, slow_hash))
        keys = KeyRing.load_or_create(tmp_path / "keys", TokenSettings())
        with ThreadPoolExecutor(1) as pool:
            servicer = UserServicer(store, keys, pool, domain.ScryptParams(n=2**14),
                                    accounts_ready=made)
            ctx = cast("aio.ServicerContext[Any, Any]", None)
            login = asyncio.ensure_future(servicer.Login(user_pb2.LoginRequest(
                email=domain.ADMIN_EMAIL, password="an-admin-pass-1"), ctx))
            register = asyncio.ensure_future(servicer.CreateUser(user_pb2.CreateUserRequest(
                email=domain.ADMIN_EMAIL, name="Mallory", password="mallory-pass-1"), ctx))
            await asyncio.sleep(0.2)
            assert not login.done() and not register.done()  # both wait for the account
            gate.set()
            assert (await asyncio.wait_for(login, 10)).access_token
            with pytest.raises(AlreadyExists):
                await asyncio.wait_for(register, 10)
        assert made.done() and made.exception() is None
    finally:
        await db.close()
