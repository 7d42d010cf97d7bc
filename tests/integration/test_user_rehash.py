"""Password hashes made at a lower scrypt cost are upgraded at the next good login.

A user service run with SHOP_SCRYPT_N=2^14 (the cost shop used to hash with) signs a user
up; the same data dir is then served at the default cost (2^17). The user logs in, the
stored hash now carries the new parameters, and the password still works.
"""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

import grpc
import pytest
from shop.user.v1 import user_pb2, user_pb2_grpc

from ops.natsd import NatsServer
from ops.process import ServiceProcess
from services.user import domain
from tests.fixtures_services import TEST_ENV
from tests.support import mesh

pytestmark = pytest.mark.timeout(120)

PASSWORD = "correct horse battery"


def _stored_hash(data_dir: Path, email: str) -> str:
    conn = sqlite3.connect(f"file:{data_dir / 'user.db'}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT password_hash FROM users WHERE email = ?", (email,)).fetchone()
    finally:
        conn.close()
    return str(row[0])


def _params(encoded: str) -> tuple[int, int, int]:
    _, n, r, p, _, _ = encoded.split("$")
    return int(n), int(r), int(p)


def _serve(data_dir: Path, nats: NatsServer, **env: str) -> ServiceProcess:
    proc = ServiceProcess("user", data_dir=data_dir, nats_url=nats.url, env={**TEST_ENV, **env})
    return proc.start().wait_ready(60)


def _login(addr: str, email: str, password: str) -> grpc.StatusCode:
    with mesh.sync_channel(addr) as channel:
        stub = user_pb2_grpc.UserServiceStub(channel)
        try:
            reply = stub.Login(user_pb2.LoginRequest(email=email, password=password), timeout=20)
        except grpc.RpcError as err:
            return err.code()
    assert reply.access_token
    return grpc.StatusCode.OK


def test_an_old_hash_is_upgraded_at_the_next_login(tmp_path: Path,
                                                   nats_server: NatsServer) -> None:
    email = f"old-{uuid.uuid4().hex[:8]}@example.com"
    old = _serve(tmp_path, nats_server, SHOP_SCRYPT_N=str(domain.LEGACY_SCRYPT_N))
    try:
        with mesh.sync_channel(old.addr) as channel:
            user_pb2_grpc.UserServiceStub(channel).CreateUser(
                user_pb2.CreateUserRequest(email=email, name="Old", password=PASSWORD),
                timeout=20)
    finally:
        old.terminate()
    before = _stored_hash(tmp_path, email)
    assert _params(before) == (2**14, 8, 1)

    new = _serve(tmp_path, nats_server, SHOP_SCRYPT_N="")  # unset: the default cost
    try:
        # A wrong password changes nothing.
        assert _login(new.addr, email, "not the password") == grpc.StatusCode.UNAUTHENTICATED
        assert _stored_hash(tmp_path, email) == before
        assert _login(new.addr, email, PASSWORD) == grpc.StatusCode.OK
        after = _stored_hash(tmp_path, email)
        assert _params(after) == (2**17, 8, 1)
        assert after.split("$")[4] != before.split("$")[4]  # a new salt too
        assert domain.verify_password(PASSWORD, after)
        # The password still works against the upgraded hash, which now stays as it is.
        assert _login(new.addr, email, PASSWORD) == grpc.StatusCode.OK
        assert _stored_hash(tmp_path, email) == after
        assert _login(new.addr, email, "not the password") == grpc.StatusCode.UNAUTHENTICATED
    finally:
        new.terminate()
