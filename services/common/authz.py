"""Who may call: the server side of zero trust.

`AuthzInterceptor` runs first on every call, of every kind (unary and streaming, so
health and reflection too). The caller is the SPIFFE id of its verified client
certificate (tls.peer_identity); the call goes on only if the call policy names that
identity for the RPC, and `x-user-id` is accepted only from the gateway. Anything else
is PERMISSION_DENIED with a message naming the caller and the RPC.

`listen(server, addr, identity, config, probe_port)` binds the service port (mTLS with
the identity's certificate, or plaintext with SHOP_MTLS=off) and, when a probe port is
given (`<SERVICE>_PROBE_PORT` or `SHOP_PROBE_PORT`), a plaintext port for Kubernetes
probes where the policy lets anonymous peers reach health checks only.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from grpc import aio

from services.common import tls
from services.common.config import TlsConfig
from services.common.policy import CallPolicy, load_policy
from services.common.spiffe import GATEWAY

log = logging.getLogger("shop.authz")

Check = Callable[[aio.ServicerContext[Any, Any]], Awaitable[None]]


def _checker(method: str, allowed: frozenset[str], speaks_for_user: bool) -> Check:
    peer_identity = tls.peer_identity
    deny = grpc.StatusCode.PERMISSION_DENIED

    async def check(ctx: aio.ServicerContext[Any, Any]) -> None:
        caller = peer_identity(ctx)
        if speaks_for_user and caller != GATEWAY:
            log.warning("refused x-user-id", extra={"caller": caller, "method": method})
            await ctx.abort(deny, f"caller {caller!r} may not send x-user-id calling "
                                  f"{method}: only the gateway speaks for a user")
        if caller not in allowed:
            log.warning("call refused by policy", extra={"caller": caller, "method": method})
            await ctx.abort(deny, f"caller {caller!r} may not call {method}")

    return check


def _guard(handler: Any, check: Check) -> Any:
    """`handler` with `check` run before its behaviour, whatever its kind."""
    ser = {"request_deserializer": handler.request_deserializer,
           "response_serializer": handler.response_serializer}
    if handler.unary_unary is not None:
        inner_uu = handler.unary_unary

        async def unary_unary(request: Any, ctx: aio.ServicerContext[Any, Any]) -> Any:
            await check(ctx)
            return await inner_uu(request, ctx)

        return grpc.unary_unary_rpc_method_handler(unary_unary, **ser)
    if handler.stream_unary is not None:
        inner_su = handler.stream_unary

        async def stream_unary(requests: Any, ctx: aio.ServicerContext[Any, Any]) -> Any:
            await check(ctx)
            return await inner_su(requests, ctx)

        return grpc.stream_unary_rpc_method_handler(stream_unary, **ser)
    streaming = handler.unary_stream or handler.stream_stream

    async def respond(request: Any, ctx: aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        await check(ctx)
        result = streaming(request, ctx)
        if hasattr(result, "__aiter__"):
            async for item in result:
                yield item
        else:
            await result  # writes with ctx.write itself

    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(respond, **ser)
    return grpc.stream_stream_rpc_method_handler(respond, **ser)


class AuthzInterceptor(aio.ServerInterceptor):
    """Default deny: the policy's identities only, and x-user-id from the gateway only."""

    def __init__(self, policy: CallPolicy) -> None:
        self.policy = policy
        self._cache: dict[tuple[str, bool], tuple[Any, Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None  # unknown method: grpc answers UNIMPLEMENTED
        method: str = handler_call_details.method
        speaks_for_user = any(
            key == "x-user-id" for key, _ in handler_call_details.invocation_metadata or ())
        key = (method, speaks_for_user)
        cached = self._cache.get(key)
        if cached is not None and cached[0] is handler:
            return cached[1]
        guarded = _guard(handler, _checker(method, self.policy.allowed(method), speaks_for_user))
        self._cache[key] = (handler, guarded)
        return guarded


def interceptors(secured: bool, policy: Path | None = None) -> list[aio.ServerInterceptor]:
    """The authorization interceptors a server runs first ([] in plaintext, SHOP_MTLS=off):
    the call policy in `policy` (SHOP_CALL_POLICY), else proto/call_policy.toml."""
    if not secured:
        return []
    return [AuthzInterceptor(load_policy(policy))]


def listen(server: aio.Server, addr: str, identity: str, config: TlsConfig,
           probe_port: int | None = None) -> int:
    """Bind `addr` (mTLS as `identity`, or plaintext with SHOP_MTLS=off), and the
    plaintext health-only `probe_port` if there is one; returns the port, 0 when it could
    not be bound."""
    if not config.enabled:
        return int(server.add_insecure_port(addr))
    creds = tls.Mesh(identity, config.pki_dir, reload_s=config.reload_s).server_credentials()
    port = int(server.add_secure_port(addr, creds))
    if probe_port is not None:
        host = addr.rpartition(":")[0]
        bound = server.add_insecure_port(f"{host}:{probe_port}")
        log.info("plaintext probe port (health checks only)", extra={"port": bound})
    return port


__all__ = ["AuthzInterceptor", "interceptors", "listen"]
