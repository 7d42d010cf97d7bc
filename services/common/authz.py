"""Who may call: the server side of zero trust.

Every call, of every kind (unary and streaming, so health and reflection too), is
checked before its handler runs: the server wraps each handler once, when it is
registered (interceptors.WrappedServer). The caller is the SPIFFE id of its verified
client certificate (tls.peer_identity, learnt once per certificate by `Identities`); the
call goes on only if the call policy names that identity for the RPC, and `x-user-id` is
accepted only from the gateway. Anything else is PERMISSION_DENIED with a message naming
the caller and the RPC.

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

# check(ctx, speaks_for_user): aborts with PERMISSION_DENIED unless the caller may.
Check = Callable[[aio.ServicerContext[Any, Any], bool], Awaitable[None]]
Identify = Callable[[aio.ServicerContext[Any, Any]], str]


def _checker(method: str, allowed: frozenset[str], identify: Identify) -> Check:
    deny = grpc.StatusCode.PERMISSION_DENIED

    async def check(ctx: aio.ServicerContext[Any, Any], speaks_for_user: bool) -> None:
        caller = identify(ctx)
        if speaks_for_user and caller != GATEWAY:
            log.warning("refused x-user-id", extra={"caller": caller, "method": method})
            await ctx.abort(deny, f"caller {caller!r} may not send x-user-id calling "
                                  f"{method}: only the gateway speaks for a user")
        if caller not in allowed:
            log.warning("call refused by policy", extra={"caller": caller, "method": method})
            await ctx.abort(deny, f"caller {caller!r} may not call {method}")

    return check


class Identities:
    """The caller's identity per certificate, learnt once: `tls.peer_identity` reads the
    whole auth context (every property, the PEM certificate among them), ~30 us a call,
    against ~10 for the certificate's subject alternative names alone. The identity is
    the one SPIFFE id among those names, so the names are the key; the first call with
    a certificate works it out the authoritative way. Only certificates the TLS handshake
    verified against the mesh's CA get here, and a rotated certificate with the same
    names is the same identity. Bounded: cleared when full."""

    def __init__(self, limit: int = 1024) -> None:
        self._limit = limit
        self._known: dict[tuple[bytes, ...], str] = {}

    def __call__(self, ctx: aio.ServicerContext[Any, Any]) -> str:
        names = ctx.peer_identities()
        if not names:  # no certificate (the plaintext probe port): nothing to learn
            return tls.peer_identity(ctx)
        key = tuple(names)
        known = self._known.get(key)
        if known is None:
            known = tls.peer_identity(ctx)
            if len(self._known) >= self._limit:
                self._known.clear()
            self._known[key] = known
        return known


def speaks_for_user(ctx: aio.ServicerContext[Any, Any]) -> bool:
    """The call carries `x-user-id` (with any value, even empty)."""
    return any(key == "x-user-id" for key, _ in ctx.invocation_metadata() or ())


def guard_streaming(handler: Any, check: Check) -> Any:
    """A streaming `handler` with `check` run before its behaviour (health's Watch,
    reflection). Unary-unary handlers are checked inside the per-call wrapper instead
    (interceptors.py), which reads the metadata once for both."""
    ser = {"request_deserializer": handler.request_deserializer,
           "response_serializer": handler.response_serializer}
    if handler.stream_unary is not None:
        inner_su = handler.stream_unary

        async def stream_unary(requests: Any, ctx: aio.ServicerContext[Any, Any]) -> Any:
            await check(ctx, speaks_for_user(ctx))
            return await inner_su(requests, ctx)

        return grpc.stream_unary_rpc_method_handler(stream_unary, **ser)
    streaming = handler.unary_stream or handler.stream_stream
    if streaming is None:
        raise ValueError("guard_streaming: the handler has no streaming behaviour")

    async def respond(request: Any, ctx: aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        await check(ctx, speaks_for_user(ctx))
        result = streaming(request, ctx)
        if hasattr(result, "__aiter__"):
            async for item in result:
                yield item
        else:
            await result  # writes with ctx.write itself

    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(respond, **ser)
    return grpc.stream_stream_rpc_method_handler(respond, **ser)


class Authorizer:
    """Default deny: per RPC, the policy's identities only, and x-user-id from the gateway
    only. `check_for(method)` is built once per method, when the server registers it."""

    def __init__(self, policy: CallPolicy) -> None:
        self.policy = policy
        self.identities = Identities()  # one per server: every method's check shares it

    def check_for(self, method: str) -> Check:
        return _checker(method, self.policy.allowed(method), self.identities)


def authorizer(secured: bool, policy: Path | None = None) -> Authorizer | None:
    """The authorization every call of a server goes through (None in plaintext,
    SHOP_MTLS=off: no caller can be told apart): the call policy in `policy`
    (SHOP_CALL_POLICY), else proto/call_policy.toml."""
    if not secured:
        return None
    return Authorizer(load_policy(policy))


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


__all__ = ["Authorizer", "Check", "Identities", "authorizer", "guard_streaming", "listen",
           "speaks_for_user"]
