"""In-process stand-ins for tests of the gateway: fake downstreams and a token minter.

Kept in the package (like starlette.testclient) so unit, integration and benchmark code
share one copy.
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from google.protobuf.message import Message
from starlette.applications import Starlette

from services.common import context
from services.common.clients import Rpc, rpc_name

Handler = Callable[[Message], Awaitable[Message] | Message]
ReqT = TypeVar("ReqT", bound=Message)
RespT = TypeVar("RespT", bound=Message)


@dataclass
class Call:
    method: str
    request: Message
    user_id: str
    request_id: str
    idempotent: bool
    timeout: float | None


@dataclass
class FakeCaller:
    """A downstream whose methods are Python callables (keyed by the method's name, as
    `rpc_name` reads it from a call's selector); records every call."""

    service: str
    handlers: dict[str, Handler] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    breaker_state: str = "closed"

    async def call(
        self,
        rpc: Rpc[Any, ReqT, RespT],
        request: ReqT,
        *,
        idempotent: bool,
        timeout: float | None = None,  # noqa: ASYNC109 - mirrors Downstream.call
    ) -> RespT:
        method = rpc_name(rpc)
        self.calls.append(
            Call(method, request, context.user_id(), context.request_id(), idempotent, timeout)
        )
        handler = self.handlers.get(method)
        if handler is None:
            raise AssertionError(f"{self.service}.{method} was not expected")
        result = handler(request)
        if asyncio.iscoroutine(result) or isinstance(result, Awaitable):
            result = await result
        reply: RespT = result  # type: ignore[assignment] # the handler answers the method
        return reply

    async def close(self) -> None:
        return None


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class TokenMinter:
    """An Ed25519 key pair with a kid, its JWK, and tokens signed with it."""

    def __init__(
        self, *, kid: str | None = None, issuer: str = "shop-user", audience: str = "shop-api"
    ) -> None:
        self.kid = kid or uuid.uuid4().hex[:12]
        self.key = Ed25519PrivateKey.generate()
        self.public_bytes = self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.issuer = issuer
        self.audience = audience

    @property
    def jwk(self) -> dict[str, str]:
        return {
            "kty": "OKP",
            "crv": "Ed25519",
            "x": _b64(self.public_bytes),
            "kid": self.kid,
            "alg": "EdDSA",
            "use": "sig",
        }

    def claims(self, sub: str = "user-1", *, ttl_s: int = 300, **extra: Any) -> dict[str, Any]:
        now = int(time.time())
        base: dict[str, Any] = {
            "sub": sub,
            "iat": now,
            "exp": now + ttl_s,
            "iss": self.issuer,
            "aud": self.audience,
        }
        base.update(extra)
        return {k: v for k, v in base.items() if v is not None}

    def token(
        self, sub: str = "user-1", *, ttl_s: int = 300, kid: str | None = None, **extra: Any
    ) -> str:
        return jwt.encode(
            self.claims(sub, ttl_s=ttl_s, **extra),
            self.key,
            algorithm="EdDSA",
            headers={"kid": kid or self.kid},
        )


@asynccontextmanager
async def running(app: Starlette) -> AsyncIterator[Starlette]:
    """Run the app's lifespan around the block (httpx's ASGITransport does not)."""
    async with app.router.lifespan_context(app):
        yield app
