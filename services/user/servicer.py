"""UserService over gRPC: proto <-> domain. No SQL here; errors are DomainErrors."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

from grpc import aio
from shop.user.v1 import user_pb2, user_pb2_grpc

from services.common.errors import NotFound, Unauthenticated
from services.common.identity import resolve_user
from services.user import domain
from services.user.convert import to_proto
from services.user.store import UserRepository
from services.user.tokens import TOKEN_TYPE, KeyRing

T = TypeVar("T")

log = logging.getLogger("shop.user")


class UserServicer(user_pb2_grpc.UserServiceServicer):
    def __init__(self, store: UserRepository, keys: KeyRing, hasher: Executor,
                 scrypt: domain.ScryptParams = domain.DEFAULT_SCRYPT, *,
                 accounts_ready: asyncio.Future[None] | None = None) -> None:
        self.store = store
        self.keys = keys
        self.scrypt = scrypt
        # Registration and login wait for this (the admin account being made at first
        # start): nobody registers admin@shop.local ahead of it or finds it half made.
        self._accounts_ready = accounts_ready
        # scrypt is CPU- and memory-bound: a pool sized to the CPUs bounds both, and the
        # event loop keeps serving while a hash runs.
        self._hasher = hasher

    async def _accounts_open(self) -> None:
        if self._accounts_ready is not None:
            # Shielded: a cancelled call does not cancel the account. Once made, this
            # returns at once (or raises its failure: the service is stopping).
            await asyncio.shield(self._accounts_ready)

    async def _hash_work(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._hasher, fn, *args)

    def _hash(self, password: str) -> str:
        return domain.hash_password(password, params=self.scrypt)

    async def CreateUser(
        self, request: user_pb2.CreateUserRequest, context_: aio.ServicerContext[Any, Any]
    ) -> user_pb2.CreateUserResponse:
        reg = domain.validate_registration(request.email, request.name, request.password)
        await self._accounts_open()
        password_hash = await self._hash_work(self._hash, reg.password)
        user = domain.User(id=uuid.uuid4().hex, email=reg.email, name=reg.name,
                           create_time=time.time())
        await self.store.create(user, password_hash)
        return user_pb2.CreateUserResponse(user=to_proto(user))

    async def GetUser(
        self, request: user_pb2.GetUserRequest, context_: aio.ServicerContext[Any, Any]
    ) -> user_pb2.GetUserResponse:
        user_id = domain.validate_user_id(resolve_user(request.id))
        user = await self.store.get(user_id)
        if user is None:
            raise NotFound(f"user {user_id} not found")
        return user_pb2.GetUserResponse(user=to_proto(user))

    async def Login(
        self, request: user_pb2.LoginRequest, context_: aio.ServicerContext[Any, Any]
    ) -> user_pb2.LoginResponse:
        email, password = domain.validate_login(request.email, request.password)
        await self._accounts_open()
        found = await self.store.credentials(email)
        # Unknown email: check against a dummy hash anyway, so both failures take as long.
        stored = found[1] if found is not None else domain.dummy_hash(self.scrypt)
        ok = await self._hash_work(domain.verify_password, password, stored)
        if found is None or not ok:
            raise Unauthenticated(domain.LOGIN_FAILED)
        user = found[0]
        if domain.needs_rehash(stored, self.scrypt):
            await self._upgrade_hash(user.id, stored, password)
        return user_pb2.LoginResponse(access_token=self.keys.mint(user.id, user.email,
                                                                   roles=user.roles),
                                      token_type=TOKEN_TYPE,
                                      expires_in=self.keys.settings.ttl_s)

    async def _upgrade_hash(self, user_id: str, stored: str, password: str) -> None:
        """Re-hash under the current parameters, now that the password is known to be
        right. Best effort: the login succeeds anyway, the next one tries again."""
        try:
            upgraded = await self._hash_work(self._hash, password)
            await self.store.replace_password_hash(user_id, stored, upgraded)
        except Exception:
            log.exception("could not upgrade a password hash", extra={"user_id": user_id})

    async def GetJwks(
        self, request: user_pb2.GetJwksRequest, context_: aio.ServicerContext[Any, Any]
    ) -> user_pb2.GetJwksResponse:
        # Rare (verifiers cache the keys), so a look at the keys dir costs nothing.
        await asyncio.to_thread(self.keys.reload)
        return user_pb2.GetJwksResponse(keys=[user_pb2.Jwk(**jwk) for jwk in self.keys.jwks()])
