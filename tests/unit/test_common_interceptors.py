"""The wrapped server: whichever way a handler is registered (the generic handler or the
registered-method table the generated code also fills), what is served is the one
wrapped handler, which checks the caller before the servicer runs; streaming handlers
(health's Watch, reflection) are checked too; plaintext servers check nobody. A caller's
identity is worked out once per certificate, never carried over to another one."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import grpc
import pytest
from grpc import aio

from services.common import authz
from services.common.interceptors import WrappedServer
from services.common.spiffe import spiffe_id

SERVICE = "shop.product.v1.ProductService"


class _Recorder:
    """The grpc.aio server underneath: it only keeps what it is given."""

    def __init__(self) -> None:
        self.generic: list[grpc.GenericRpcHandler] = []
        self.registered: dict[str, Any] = {}

    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        self.generic.extend(handlers)

    def add_registered_method_handlers(self, service: str,
                                       handlers: Mapping[str, Any]) -> None:
        self.registered.update({f"/{service}/{name}": h for name, h in handlers.items()})


class _Details(grpc.HandlerCallDetails):
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


class _Aborted(Exception):
    pass


class _Ctx:
    """A call from `identity` (its certificate's SPIFFE id), with `metadata`."""

    def __init__(self, identity: str, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self.identity = identity
        self.metadata = (("x-request-id", "r-1"), *metadata)
        self.denied: tuple[grpc.StatusCode, str] | None = None
        self.auth_reads = 0

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata

    def auth_context(self) -> dict[str, list[bytes]]:
        self.auth_reads += 1
        return {"peer_spiffe_id": [spiffe_id(self.identity).encode()]}

    def peer_identities(self) -> list[bytes]:
        """The certificate's subject alternative names, as grpc lists them."""
        return [spiffe_id(self.identity).encode(), f"{self.identity}.shop.local".encode()]

    def time_remaining(self) -> float:
        return 5.0

    async def abort(self, code: grpc.StatusCode, details: str, **_: Any) -> None:
        self.denied = (code, details)
        raise aio.AbortError()

    def code(self) -> grpc.StatusCode | None:
        return None if self.denied is None else self.denied[0]


def _served(secured: bool) -> tuple[_Recorder, list[str]]:
    """GetProduct and CreateProduct, and a streaming method, registered the way the
    generated code registers them; the servicer notes each call it gets."""
    ran: list[str] = []

    async def get(request: Any, ctx: Any) -> str:
        ran.append("get")
        return "product"

    async def create(request: Any, ctx: Any) -> str:
        ran.append("create")
        return "created"

    async def watch(request: Any, ctx: Any) -> AsyncIterator[str]:
        ran.append("watch")
        yield "serving"

    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
                "GetProduct": grpc.unary_unary_rpc_method_handler(get),
                "CreateProduct": grpc.unary_unary_rpc_method_handler(create),
                "Watch": grpc.unary_stream_rpc_method_handler(watch)}
    inner = _Recorder()
    server = WrappedServer(inner,  # type: ignore[arg-type]
                           authz.authorizer(secured) if secured else None)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)
    return inner, ran


def _handler(inner: _Recorder, name: str) -> Any:
    method = f"/{SERVICE}/{name}"
    from_generic = inner.generic[0].service(_Details(method))
    assert from_generic is inner.registered[method]  # one wrapped handler, both ways
    return from_generic


async def test_an_allowed_caller_reaches_the_servicer() -> None:
    inner, ran = _served(secured=True)
    ctx = _Ctx("gateway")
    assert await _handler(inner, "GetProduct").unary_unary(None, ctx) == "product"
    assert ran == ["get"] and ctx.denied is None


async def test_a_caller_outside_the_policy_never_reaches_the_servicer() -> None:
    inner, ran = _served(secured=True)
    ctx = _Ctx("cart")  # may read products, not create them
    with pytest.raises(aio.AbortError):
        await _handler(inner, "CreateProduct").unary_unary(None, ctx)
    assert ran == []
    assert ctx.denied is not None and ctx.denied[0] is grpc.StatusCode.PERMISSION_DENIED
    assert "'cart' may not call" in ctx.denied[1]


async def test_only_the_gateway_speaks_for_a_user() -> None:
    inner, ran = _served(secured=True)
    ctx = _Ctx("cart", (("x-user-id", "u-1"),))
    with pytest.raises(aio.AbortError):
        await _handler(inner, "GetProduct").unary_unary(None, ctx)
    assert ran == [] and ctx.denied is not None and "x-user-id" in ctx.denied[1]
    allowed = _Ctx("gateway", (("x-user-id", "u-1"),))
    assert await _handler(inner, "GetProduct").unary_unary(None, allowed) == "product"


async def test_streaming_handlers_are_checked_too() -> None:
    inner, ran = _served(secured=True)
    ctx = _Ctx("cart")  # the policy names no one for this made-up method
    with pytest.raises(aio.AbortError):
        async for _ in _handler(inner, "Watch").unary_stream(None, ctx):
            pass
    assert ran == []


async def test_plaintext_checks_nobody_but_still_wraps() -> None:
    inner, ran = _served(secured=False)
    handler = _handler(inner, "CreateProduct")
    assert await handler.unary_unary(None, _Ctx("cart")) == "created"
    assert ran == ["create"]
    assert inner.generic[0].service(_Details(f"/{SERVICE}/Nope")) is None  # UNIMPLEMENTED


def _who(identities: authz.Identities, ctx: _Ctx) -> str:
    return identities(ctx)  # type: ignore[arg-type]  # the fake stands for grpc's context


def test_an_identity_is_learnt_once_per_certificate_and_never_lent() -> None:
    identities = authz.Identities(limit=2)
    first = _Ctx("gateway")
    assert _who(identities, first) == "gateway" and first.auth_reads == 1
    again = _Ctx("gateway")
    assert _who(identities, again) == "gateway" and again.auth_reads == 0  # known names
    other = _Ctx("cart")  # another certificate: worked out for itself
    assert _who(identities, other) == "cart" and other.auth_reads == 1
    third = _Ctx("order")  # past the limit: the cache starts over, still right
    assert _who(identities, third) == "order" and third.auth_reads == 1
    assert _who(identities, _Ctx("gateway")) == "gateway"


class _Plaintext(_Ctx):
    def peer_identities(self) -> list[bytes]:
        return []

    def auth_context(self) -> dict[str, list[bytes]]:
        self.auth_reads += 1
        return {}


def test_no_certificate_is_anonymous_every_time() -> None:
    identities = authz.Identities()
    for _ in range(2):
        ctx = _Plaintext("gateway")
        assert _who(identities, ctx) == "anonymous" and ctx.auth_reads == 1
