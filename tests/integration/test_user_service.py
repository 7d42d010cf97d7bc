"""The user service as a real process over real gRPC: accounts, login, JWKS, user.created."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

import grpc
import jwt
import pytest
import pytest_asyncio
from grpc import aio
from shop.events.v1 import envelope_pb2
from shop.user.v1 import user_pb2, user_pb2_grpc

from ops.natsd import NatsServer
from ops.pgserve import EmbeddedPostgres
from ops.process import ServiceProcess, free_port
from services.common.bus import Bus
from services.common.events import STREAM, USER_CREATED
from tests.fixtures_services import TEST_ENV, ServiceFactory
from tests.fixtures_storage import BACKENDS
from tests.support import mesh
from tests.support.mesh import nats_auth

if TYPE_CHECKING:  # on an aio channel the stub is the .pyi's async one
    Stub = user_pb2_grpc.UserServiceAsyncStub
else:
    Stub = user_pb2_grpc.UserServiceStub

pytestmark = pytest.mark.timeout(120)

PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def user_proc(nats_server: NatsServer,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """One user service for the module (the per-test `services` fixture would start a
    NATS and a service per test); stopped by PID afterwards."""
    proc = ServiceProcess("user", data_dir=tmp_path_factory.mktemp("user"),
                          nats_url=nats_server.url, env=TEST_ENV)
    try:
        proc.start().wait_ready(60)
        yield proc
    finally:
        proc.terminate()


@pytest.fixture(scope="module")
def user_proc_pg(nats_server: NatsServer, pg_server: EmbeddedPostgres,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """The same service on PostgreSQL, for the tests where the backend matters."""
    proc = ServiceProcess("user", data_dir=tmp_path_factory.mktemp("user-pg"),
                          nats_url=nats_server.url,
                          env={**TEST_ENV, "SHOP_DATABASE_URL": pg_server.server_url})
    try:
        proc.start().wait_ready(60)
        yield proc
    finally:
        proc.terminate()
        pg_server.drop_databases()


@pytest.fixture(params=BACKENDS)
def on_backend(request: pytest.FixtureRequest) -> ServiceProcess:
    """user_proc or user_proc_pg: a test using it runs on both backends."""
    name = "user_proc" if request.param == "sqlite" else "user_proc_pg"
    proc: ServiceProcess = request.getfixturevalue(name)
    return proc


@pytest_asyncio.fixture
async def stub(user_proc: ServiceProcess) -> AsyncIterator[Stub]:
    async with mesh.channel(user_proc.addr) as channel:
        yield user_pb2_grpc.UserServiceStub(channel)


def counts(proc: ServiceProcess) -> tuple[int, int]:
    """(users, outbox rows) straight from the service's file or database, read-only."""
    sql = "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM outbox)"
    url = proc.extra_env.get("SHOP_DATABASE_URL")
    if url:
        socket_dir = parse_qs(urlsplit(url).query)["host"][0]
        [row] = EmbeddedPostgres(socket_dir).psql(sql, "shop_user")
        users, events = row.split("|")
        return int(users), int(events)
    conn = sqlite3.connect(f"file:{proc.data_dir / 'user.db'}?mode=ro", uri=True)
    try:
        users, events = conn.execute(sql).fetchone()
    finally:
        conn.close()
    return int(users), int(events)


@pytest_asyncio.fixture
async def any_stub(on_backend: ServiceProcess) -> AsyncIterator[user_pb2_grpc.UserServiceStub]:
    async with mesh.channel(on_backend.addr) as channel:
        yield user_pb2_grpc.UserServiceStub(channel)


def unique_email(prefix: str = "ann") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}@example.com"


async def create(stub: Stub, email: str, name: str = "Ann",
                 password: str = PASSWORD) -> user_pb2.User:
    resp: user_pb2.CreateUserResponse = await stub.CreateUser(
        user_pb2.CreateUserRequest(email=email, name=name, password=password), timeout=10)
    return resp.user


async def test_create_user_normalizes_and_returns_no_secret(
        stub: Stub) -> None:
    email = unique_email("Mixed")
    before = time.time()
    user = await create(stub, f"  {email.upper()} ", name="  Ann   Smith ")
    assert user.email == email.lower()
    assert user.name == "Ann Smith"
    assert len(user.id) == 32
    assert before - 1 <= user.create_time.seconds <= time.time() + 1
    got = (await stub.GetUser(user_pb2.GetUserRequest(id=user.id), timeout=5)).user
    assert got == user
    assert PASSWORD not in str(got) and "scrypt" not in got.SerializeToString().decode(
        "utf-8", "replace")


@pytest.mark.parametrize(
    ("email", "name", "password", "message"),
    [
        ("not-an-email", "Ann", PASSWORD, "email is not a valid address"),
        ("", "Ann", PASSWORD, "email is required"),
        ("a" * 300 + "@example.com", "Ann", PASSWORD, "email is longer"),
        ("ok@example.com", "   ", PASSWORD, "name is required"),
        ("ok@example.com", "n" * 101, PASSWORD, "name is longer"),
        ("ok@example.com", "Ann", "short", "password must be at least 8"),
        ("ok@example.com", "Ann", "p" * 1025, "password is longer"),
    ],
)
async def test_invalid_input_is_refused_and_nothing_written(
        stub: Stub, user_proc: ServiceProcess,
        email: str, name: str, password: str, message: str) -> None:
    before = counts(user_proc)
    with pytest.raises(aio.AioRpcError) as err:
        await create(stub, email, name, password)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (err.value.details() or "")
    assert counts(user_proc) == before


async def test_duplicate_email_any_case_is_already_exists(
        any_stub: Stub, on_backend: ServiceProcess) -> None:
    stub, user_proc = any_stub, on_backend
    email = unique_email("dup")
    await create(stub, email)
    before = counts(user_proc)
    for variant in (email, email.upper(), f" {email.capitalize()} "):
        with pytest.raises(aio.AioRpcError) as err:
            await create(stub, variant, name="Other")
        assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert email in (err.value.details() or "")
    assert counts(user_proc) == before  # no user row, no event


async def test_concurrent_registrations_of_one_email_make_one_user(
        any_stub: Stub, on_backend: ServiceProcess) -> None:
    stub, user_proc = any_stub, on_backend
    email = unique_email("race")
    before = counts(user_proc)
    results = await asyncio.gather(*(create(stub, email) for _ in range(6)),
                                   return_exceptions=True)
    ok = [r for r in results if isinstance(r, user_pb2.User)]
    refused = [r for r in results if isinstance(r, aio.AioRpcError)]
    assert len(ok) == 1 and len(refused) == 5
    assert all(r.code() == grpc.StatusCode.ALREADY_EXISTS for r in refused)
    assert counts(user_proc) == (before[0] + 1, before[1] + 1)


async def test_get_user_me_and_another_users_id(stub: Stub) -> None:
    ann = await create(stub, unique_email("me"))
    bob = await create(stub, unique_email("bob"))
    meta = (("x-user-id", ann.id),)
    for requested in ("me", "", ann.id):
        got = await stub.GetUser(user_pb2.GetUserRequest(id=requested), metadata=meta,
                                 timeout=5)
        assert got.user.id == ann.id
    with pytest.raises(aio.AioRpcError) as err:  # someone else's id hides that they exist
        await stub.GetUser(user_pb2.GetUserRequest(id=bob.id), metadata=meta, timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_get_user_unknown_and_missing_ids(stub: Stub) -> None:
    with pytest.raises(aio.AioRpcError) as err:
        await stub.GetUser(user_pb2.GetUserRequest(id="nope"), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "nope" in (err.value.details() or "")
    with pytest.raises(aio.AioRpcError) as err:  # "me" without a caller names nobody
        await stub.GetUser(user_pb2.GetUserRequest(id="me"), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_login_token_verifies_with_the_jwks(stub: Stub) -> None:
    email = unique_email("login")
    user = await create(stub, email)
    resp = await stub.Login(user_pb2.LoginRequest(email=email.upper(), password=PASSWORD),
                            timeout=10)
    assert resp.token_type == "Bearer" and resp.expires_in == 3600
    jwks = (await stub.GetJwks(user_pb2.GetJwksRequest(), timeout=5)).keys
    assert len(jwks) >= 1
    header = jwt.get_unverified_header(resp.access_token)
    assert header["alg"] == "EdDSA"
    [jwk] = [k for k in jwks if k.kid == header["kid"]]
    assert (jwk.kty, jwk.crv, jwk.alg, jwk.use) == ("OKP", "Ed25519", "EdDSA", "sig")
    key = jwt.PyJWK({"kty": jwk.kty, "crv": jwk.crv, "x": jwk.x, "kid": jwk.kid},
                    algorithm="EdDSA").key
    claims = jwt.decode(resp.access_token, key, algorithms=["EdDSA"], audience="shop-api",
                        issuer="shop-user", options={"require": ["exp", "iat", "nbf", "jti"]})
    assert claims["sub"] == user.id and claims["email"] == email
    assert claims["exp"] - claims["iat"] == 3600
    head, body, sig = resp.access_token.split(".")
    flipped = sig[:10] + ("A" if sig[10] != "A" else "B") + sig[11:]
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(f"{head}.{body}.{flipped}", key, algorithms=["EdDSA"], audience="shop-api")


@pytest.mark.parametrize("case", ["wrong password", "unknown email"])
async def test_login_failures_look_the_same(stub: Stub,
                                            case: str) -> None:
    email = unique_email("fail")
    await create(stub, email)
    req = (user_pb2.LoginRequest(email=email, password="wrong password!")
           if case == "wrong password"
           else user_pb2.LoginRequest(email=unique_email("ghost"), password=PASSWORD))
    started = time.perf_counter()
    with pytest.raises(aio.AioRpcError) as err:
        await stub.Login(req, timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert err.value.details() == "invalid email or password"
    # Both paths run scrypt: neither answers in the time of a bare lookup.
    assert time.perf_counter() - started > 0.01


async def test_login_without_credentials_is_invalid(stub: Stub) -> None:
    with pytest.raises(aio.AioRpcError) as err:
        await stub.Login(user_pb2.LoginRequest(email="", password=""), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def _user_created_events(url: str, user_id: str,
                               timeout_s: float = 15.0) -> list[envelope_pb2.Envelope]:
    bus = await Bus.connect(url, name="test-user-events", auth=nats_auth())
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            found: list[envelope_pb2.Envelope] = []
            try:
                info = await bus.js.stream_info(STREAM)
                for seq in range(info.state.first_seq, info.state.last_seq + 1):
                    raw = await bus.js.get_msg(STREAM, seq=seq)
                    env = envelope_pb2.Envelope.FromString(raw.data or b"")
                    if env.subject == USER_CREATED and env.aggregate_id == user_id:
                        found.append(env)
            except Exception:
                found = []  # stream not created yet
            if found or time.monotonic() > deadline:
                return found
            await asyncio.sleep(0.1)
    finally:
        await bus.close()


async def test_user_created_event_lands_in_the_stream(
        stub: Stub, nats_server: NatsServer) -> None:
    user = await create(stub, unique_email("event"))
    events = await _user_created_events(nats_server.url, user.id)
    assert len(events) == 1
    env = events[0]
    assert env.source == "user" and env.type == "shop.user.v1.UserCreated"
    payload = user_pb2.UserCreated()
    assert env.payload.Unpack(payload)
    assert payload.user == user
    assert b"scrypt" not in env.SerializeToString()


async def test_serves_without_nats_and_publishes_once_it_is_up(tmp_path: Path) -> None:
    nats_port = free_port()
    factory = ServiceFactory(tmp_path / "data", f"nats://127.0.0.1:{nats_port}")
    nats = NatsServer(tmp_path / "nats", port=nats_port)
    try:
        proc = factory.start("user")  # NATS is not running
        async with mesh.channel(proc.addr) as channel:
            user = await create(user_pb2_grpc.UserServiceStub(channel), unique_email("late"))
        nats.start()
        events = await _user_created_events(nats.url, user.id, timeout_s=30)
        assert [e.aggregate_id for e in events] == [user.id]
    finally:
        factory.stop_all()
        nats.stop()


def test_instances_share_one_signing_key(tmp_path: Path, nats_server: NatsServer) -> None:
    factory = ServiceFactory(tmp_path / "data", nats_server.url)
    try:
        procs = factory.start_many("user", "user")
        kids = []
        for proc in procs:
            with mesh.sync_channel(proc.addr) as channel:
                resp = user_pb2_grpc.UserServiceStub(channel).GetJwks(
                    user_pb2.GetJwksRequest(), timeout=5)
            kids.append([k.kid for k in resp.keys])
        assert kids[0] == kids[1] and len(kids[0]) == 1
        assert len(list((tmp_path / "data" / "keys").glob("*.pem"))) == 1
    finally:
        factory.stop_all()


async def test_no_password_or_hash_in_the_logs(stub: Stub,
                                               user_proc: ServiceProcess) -> None:
    email = unique_email("logs")
    await create(stub, email, password="log-secret-pw")
    await stub.Login(user_pb2.LoginRequest(email=email, password="log-secret-pw"), timeout=10)
    with pytest.raises(aio.AioRpcError):
        await stub.Login(user_pb2.LoginRequest(email=email, password="log-wrong-pw"),
                         timeout=10)
    text = user_proc.log_path.read_text()
    assert "CreateUser" in text  # DEBUG rpc lines are there, so the check is meaningful
    assert "scrypt$" not in text and "log-secret-pw" not in text and "log-wrong-pw" not in text
