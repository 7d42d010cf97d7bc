"""Calling another shop service: deadline, metadata, retries, circuit breaker.

    products = Downstream("product", product_pb2_grpc.ProductServiceStub)
    reply = await products.call("GetProduct", req, idempotent=True)

Errors reach the caller as the downstream's grpc.aio.AioRpcError (the server interceptor
passes its code on), or errors.Unavailable when the breaker is open, or
errors.DeadlineExceeded when no time is left before the call starts.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import grpc
import pybreaker
from google.protobuf.message import Message
from grpc import aio

from services.common import context
from services.common.breakers import breaker_for
from services.common.errors import DeadlineExceeded, Unavailable
from services.common.settings import default_addr, downstream_addr

StubT = TypeVar("StubT")

Resolver = Callable[[str], str | None]

MAX_ATTEMPTS = 3
_BACKOFF_BASE_S = 0.05
_BACKOFF_MAX_S = 0.5

CHANNEL_OPTIONS: list[tuple[str, int]] = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # Retries are ours (idempotent calls only); grpc's own would double them.
    ("grpc.enable_retries", 0),
]

_resolver: Resolver | None = None


def set_resolver(resolver: Resolver | None) -> None:
    """Plug in discovery: `resolver(service)` returns "host:port" or None (fall back)."""
    global _resolver
    _resolver = resolver


def resolve_addr(service: str) -> str:
    """`<SERVICE>_ADDR`, else the resolver, else the default local port."""
    fixed = downstream_addr(service)
    if fixed:
        return fixed
    if _resolver is not None:
        found = _resolver(service)
        if found:
            return found
    return default_addr(service)


def _backoff(attempt: int) -> float:
    # Full jitter: spreads the retries of many callers hitting the same restart.
    return random.uniform(0, min(_BACKOFF_MAX_S, _BACKOFF_BASE_S * (2**attempt)))


class Downstream(Generic[StubT]):
    """One downstream service: a lazily made channel (in the running loop), its stub and
    the process-wide breaker for that service."""

    def __init__(
        self,
        service: str,
        stub_factory: Callable[[aio.Channel], StubT],
        *,
        cap_s: float = 5.0,
        address: str | None = None,
    ) -> None:
        self.service = service
        self.cap_s = cap_s
        self._stub_factory = stub_factory
        self._address = address
        self._channel: aio.Channel | None = None
        self._stub: StubT | None = None
        self._methods: dict[str, Any] = {}
        self.breaker: pybreaker.CircuitBreaker = breaker_for(service)

    @property
    def address(self) -> str:
        return self._address or resolve_addr(self.service)

    @property
    def breaker_state(self) -> str:
        """The breaker state: "closed", "open" or "half-open"."""
        return str(self.breaker.current_state)

    @property
    def stub(self) -> StubT:
        """The stub on the shared channel (made on first use, inside the running loop)."""
        if self._stub is None:
            self._channel = aio.insecure_channel(self.address, options=CHANNEL_OPTIONS)
            self._stub = self._stub_factory(self._channel)
        return self._stub

    def _method(self, name: str) -> Any:
        fn = self._methods.get(name)
        if fn is None:
            fn = getattr(self.stub, name)
            self._methods[name] = fn
        return fn

    def _metadata(self, extra: Sequence[tuple[str, str]] | None) -> list[tuple[str, str]]:
        md: list[tuple[str, str]] = []
        rid = context.request_id()
        if rid:
            md.append(("x-request-id", rid))
        uid = context.user_id()
        if uid:
            md.append(("x-user-id", uid))
        if extra:
            md.extend(extra)
        return md

    async def call(
        self,
        method: str,
        request: Message,
        *,
        idempotent: bool,
        timeout: float | None = None,  # noqa: ASYNC109 - becomes the gRPC deadline
        metadata: Sequence[tuple[str, str]] | None = None,
    ) -> Any:
        """Call `method` with the caller's remaining deadline capped at `timeout` (or cap_s).

        Retries on UNAVAILABLE only when `idempotent`, at most MAX_ATTEMPTS in all and
        never past the deadline.
        """
        budget = timeout if timeout is not None else self.cap_s
        left = context.remaining()
        if left is not None and left < budget:
            budget = left
        if budget <= 0:
            raise DeadlineExceeded(f"no time left to call {self.service}.{method}")
        deadline = time.monotonic() + budget
        fn = self._method(method)
        md = self._metadata(metadata)
        attempt = 0
        while True:
            attempt += 1
            try:
                with self.breaker.calling():
                    return await fn(request, timeout=deadline - time.monotonic(), metadata=md)
            except pybreaker.CircuitBreakerError:
                raise Unavailable(f"{self.service} unavailable: circuit open") from None
            except aio.AioRpcError as err:
                if (
                    not idempotent
                    or attempt >= MAX_ATTEMPTS
                    or err.code() != grpc.StatusCode.UNAVAILABLE
                ):
                    raise
                pause = _backoff(attempt)
                # Leave the next attempt a useful slice of the deadline, else give up now.
                if time.monotonic() + pause + 0.01 >= deadline:
                    raise
                await asyncio.sleep(pause)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
        self._channel = None
        self._stub = None
        self._methods.clear()
