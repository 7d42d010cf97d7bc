"""Calling another shop service: deadline, metadata, retries, circuit breaker.

    products = Downstream("product", product_pb2_grpc.ProductServiceStub)
    reply = await products.call(lambda s: s.GetProduct, req, idempotent=True)

A call names its method by a selector over the generated stub (`lambda s: s.GetProduct`):
mypy checks the method exists and infers its request and response types from the stub's
.pyi; the method's name (for metrics, spans and proto/traffic.toml) is read from the
selector by `rpc_name`, never written as a string.

Errors reach the caller as the downstream's grpc.aio.AioRpcError (the per-call wrapper
passes its code on), or errors.Unavailable when the breaker is open, or
errors.DeadlineExceeded when no time is left before the call starts.
"""

from __future__ import annotations

import asyncio
import enum
import random
import time
from collections.abc import Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar

import grpc
import pybreaker
from google.protobuf.message import Message
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common import context
from services.common.breakers import Breakers, ShopBreaker, combined_state
from services.common.cancellation import within
from services.common.errors import DeadlineExceeded, DomainError, Unavailable
from services.common.rpcmetrics import client_calls
from services.common.rpctracing import ClientSpans
from services.common.settings import default_addr, health_name
from services.common.tls import Transport
from services.common.traffic import Traffic, load_traffic

StubT = TypeVar("StubT")
ReqT = TypeVar("ReqT", bound=Message)
RespT = TypeVar("RespT", bound=Message)

# `lambda s: s.GetProduct`: one unary method of a generated stub. mypy types a Downstream
# made with `ProductServiceStub` as Downstream[ProductServiceAsyncStub] (the .pyi's stub
# on an aio channel), whose methods carry their request and response types.
Rpc = Callable[[StubT], aio.UnaryUnaryMultiCallable[ReqT, RespT]]

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
    # A restarted instance is reconnected to within a second, not after grpc's default
    # back-off (1 s growing to 2 min) that a few seconds of refused connections build up.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
]
# A channel replaced after a certificate rotation: its calls in flight get this long.
_RETIRE_GRACE_S = 30.0

# A health check gets this long: an instance that cannot answer it is not serving.
HEALTH_CHECK_TIMEOUT_S = 0.5
_SERVING = health_pb2.HealthCheckResponse.SERVING


class Health(enum.Enum):
    """What a health check of one instance found."""

    SERVING = "serving"
    NOT_SERVING = "not serving"  # up, but stopping (graceful drain) or not ready
    UNREACHABLE = "unreachable"  # no answer within the deadline, or an error


class _NameProbe:
    """Stands in for a stub: each attribute read answers the attribute's name."""

    __slots__ = ()

    def __getattr__(self, name: str) -> str:
        return name


_PROBE: Any = _NameProbe()


def rpc_name(rpc: Callable[[Any], Any]) -> str:
    """The method a selector picks (`lambda s: s.GetProduct` -> "GetProduct")."""
    name = rpc(_PROBE)
    if not isinstance(name, str):
        raise TypeError(f"{rpc!r} does not pick a stub method")
    return name


class Endpoint:
    """One address of a service: its channel (made on first use, inside the running loop)
    and the stubs made on it, cached per stub class."""

    __slots__ = (
        "_generation",
        "_retiring",
        "_stubs",
        "addr",
        "breaker",
        "channel",
        "healthy",
        "instance",
        "service",
        "transport",
    )

    def __init__(self, service: str, addr: str, instance: str = "", *,
                 transport: Transport) -> None:
        self.service = service
        self.transport = transport
        self.addr = addr
        self.instance = instance
        self.healthy = True
        # A discovered instance's own breaker (set by discovery); None: the Downstream's.
        self.breaker: ShopBreaker | None = None
        self.channel: aio.Channel | None = None
        self._stubs: dict[Callable[[aio.Channel], Any], Any] = {}
        self._generation = 0
        self._retiring: set[asyncio.Task[None]] = set()

    def open_channel(self) -> aio.Channel:
        if self.channel is None:
            # mTLS (checking the server is `service`) unless SHOP_MTLS=off.
            self._generation = self.transport.generation()
            self.channel = self.transport.open_channel(self.addr, self.service,
                                                       CHANNEL_OPTIONS)
        return self.channel

    async def check_health(self, timeout: float = HEALTH_CHECK_TIMEOUT_S) -> bool:  # noqa: ASYNC109
        """One grpc.health.v1 Check for this endpoint's service; True when SERVING."""
        return await self.health(timeout) is Health.SERVING

    async def health(self, timeout: float = HEALTH_CHECK_TIMEOUT_S) -> Health:  # noqa: ASYNC109
        """One grpc.health.v1 Check for this endpoint's service, as a `Health`."""
        try:
            stub = health_pb2_grpc.HealthStub(self.open_channel())
            reply = await stub.Check(
                health_pb2.HealthCheckRequest(service=health_name(self.service)),
                timeout=timeout,
            )
        except (TimeoutError, aio.AioRpcError, RuntimeError):
            return Health.UNREACHABLE
        return Health.SERVING if reply.status == _SERVING else Health.NOT_SERVING

    def _rotate(self) -> None:
        """New certificate files: later calls go on a new channel; the old one is closed
        once its calls in flight are done (a live channel cannot change certificates)."""
        old, self.channel = self.channel, None
        self._stubs.clear()
        if old is not None:
            task = asyncio.get_running_loop().create_task(old.close(_RETIRE_GRACE_S))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    def stub(self, stub_factory: Callable[[aio.Channel], StubT]) -> StubT:
        """The `stub_factory` stub on this endpoint's current channel."""
        if self.channel is not None and self._generation != self.transport.generation():
            self._rotate()
        stub: StubT | None = self._stubs.get(stub_factory)
        if stub is None:
            stub = stub_factory(self.open_channel())
            self._stubs[stub_factory] = stub
        return stub

    async def close(self, grace: float | None = None) -> None:
        """Close the channel; with `grace`, calls in flight get that long to finish."""
        channel, self.channel = self.channel, None
        self._stubs.clear()
        if channel is not None:
            await channel.close(grace)

    def __repr__(self) -> str:
        return f"Endpoint({self.service}, {self.addr}, {self.instance or '-'})"


class Picker(Protocol):
    """What Downstream needs from discovery (services.common.discovery.Discovery)."""

    def pick(self, service: str) -> Endpoint | None:
        """The next instance of `service` (round-robin), None when none is known."""
        ...

    def mark_down(self, endpoint: Endpoint) -> None:
        """`endpoint` answered UNAVAILABLE: skip it until a health check says SERVING."""
        ...

    def endpoints(self, service: str) -> list[Endpoint]:
        """Every known instance of `service`, healthy or not."""
        ...


def resolve_addr(service: str, picker: Picker | None = None,
                 resolver: Resolver | None = None) -> str:
    """The picker's next instance, else the resolver, else the default local port."""
    if picker is not None:
        ep = picker.pick(service)
        if ep is not None:
            return ep.addr
    return _fallback_addr(service, resolver)


def _fallback_addr(service: str, resolver: Resolver | None) -> str:
    if resolver is not None:
        found = resolver(service)
        if found:
            return found
    return default_addr(service)


def _backoff(attempt: int) -> float:
    # Full jitter: spreads the retries of many callers hitting the same restart.
    return random.uniform(0, min(_BACKOFF_MAX_S, _BACKOFF_BASE_S * (2**attempt)))


class Downstream(Generic[StubT]):
    """One downstream service and its breakers.

    Where calls go: an explicit `address` (`<SERVICE>_ADDR`, handed in by the
    composition root's Wiring) pins one address (its own channel); otherwise every call
    asks `picker` (the process's discovery, handed in by the composition root) for the
    next live instance (channels shared per instance), and without one falls back to
    `resolver` or `127.0.0.1:<default port>` on a channel of its own.

    Breakers: a call to a discovered instance goes through that instance's breaker (one
    per instance per process: an unwell instance is skipped by the picker while the others
    serve); a pinned or default address through the service's breaker in `breakers`
    (the process's, shared by every Downstream of the service; without one, a registry
    of its own) (`self.breaker`). `breaker=` gives it one breaker of its own for every
    call instead; `Downstream.sharing(base, breaker=...)` calls over `base`'s endpoints
    and channels. Channels are made by `transport` (mTLS or plaintext); per-RPC deadlines
    and attempts come from `traffic` (default: proto/traffic.toml).
    """

    def __init__(
        self,
        service: str,
        stub_factory: Callable[[aio.Channel], StubT],
        *,
        cap_s: float = 5.0,
        address: str | None = None,
        breaker: pybreaker.CircuitBreaker | None = None,
        speaks_for_users: bool = False,
        picker: Picker | None = None,
        resolver: Resolver | None = None,
        transport: Transport,
        breakers: Breakers | None = None,
        traffic: Traffic | None = None,
    ) -> None:
        self.service = service
        self.picker = picker
        self.transport = transport
        self.breakers = breakers if breakers is not None else Breakers()
        self.traffic = traffic if traffic is not None else load_traffic()
        self._resolver = resolver
        # Only the gateway passes the caller's `x-user-id` on (servers refuse it from
        # anyone else); a service calling another names the user in the request.
        self.speaks_for_users = speaks_for_users
        self.cap_s = cap_s
        self._stub_factory = stub_factory
        self._address = address
        self._fixed: Endpoint | None = None  # pinned address (explicit or env)
        self._fallback: Endpoint | None = None  # no instance known: resolver/default
        self._pinned: bool | None = None  # decided on first use
        self._source: Downstream[Any] | None = None  # set by sharing(): its endpoints
        self._closed = False
        # The service's breaker in the process's registry unless one of its own is given.
        self.breaker: pybreaker.CircuitBreaker = breaker or self.breakers.breaker_for(service)
        self._own_breaker = breaker is not None
        self._calls = client_calls()
        self._spans = ClientSpans()
        self._rpc_prefix = f"{health_name(service)}/"

    @classmethod
    def sharing(
        cls,
        base: Downstream[StubT],
        *,
        breaker: pybreaker.CircuitBreaker | None = None,
        cap_s: float | None = None,
        stub_factory: Callable[[aio.Channel], Any] | None = None,
    ) -> Downstream[Any]:
        """A Downstream that calls wherever `base` calls (same pinned address, same
        discovery pick, same channels) but with its own breaker (default: base's) and cap,
        and with `stub_factory` another service's stub on those channels (health checks).

        Closing it closes nothing: the channels stay `base`'s.
        """
        twin: Downstream[Any] = cls(
            base.service,
            stub_factory or base._stub_factory,
            cap_s=base.cap_s if cap_s is None else cap_s,
            breaker=breaker or base.breaker,
            speaks_for_users=base.speaks_for_users,
            picker=base.picker,
            resolver=base._resolver,
            transport=base.transport,
            breakers=base.breakers,
            traffic=base.traffic,
        )
        twin._own_breaker = breaker is not None or base._own_breaker
        twin._source = base
        return twin

    @property
    def shares(self) -> Downstream[Any] | None:
        """The Downstream whose endpoints this one uses (see `sharing`), else None."""
        return self._source

    def _own(self, addr: str) -> Endpoint:
        return Endpoint(self.service, addr, transport=self.transport)

    def _endpoint(self) -> Endpoint:
        """Where the next call goes; O(1), no awaits."""
        if self._source is not None:
            return self._source._endpoint()
        if self._pinned is None:
            fixed = self._address or None
            self._pinned = fixed is not None
            if fixed is not None:
                self._fixed = self._own(fixed)
        if self._fixed is not None:
            return self._fixed
        if self.picker is not None:
            ep = self.picker.pick(self.service)
            if ep is not None:
                return ep
        if self._fallback is None:
            self._fallback = self._own(_fallback_addr(self.service, self._resolver))
        return self._fallback

    @property
    def address(self) -> str:
        """The address the next call would go to."""
        if self._source is not None:
            return self._source.address
        if self._address:
            return self._address
        if self._fixed is not None:
            return self._fixed.addr
        return resolve_addr(self.service, self.picker, self._resolver)

    def breaker_of(self, ep: Endpoint) -> pybreaker.CircuitBreaker:
        """The breaker a call to `ep` goes through."""
        if ep.breaker is not None and not self._own_breaker:
            return ep.breaker
        return self.breaker

    @property
    def breaker_state(self) -> str:
        """"closed", "open" or "half-open": "open" when every instance it may call has an
        open breaker (a call would fail fast), "closed" while one is closed."""
        if self._own_breaker:
            return str(self.breaker.current_state)
        eps = self._candidates()
        if not eps:
            return str(self.breaker.current_state)
        return combined_state(str(self.breaker_of(ep).current_state) for ep in eps)

    def _candidates(self) -> list[Endpoint]:
        """The endpoints calls may go to now (what the breaker's health watch checks)."""
        if self._source is not None:
            return self._source._candidates()
        if self._fixed is not None:
            return [self._fixed]
        if self.picker is not None:
            known = self.picker.endpoints(self.service)
            if known:
                return known
        return [self._fallback] if self._fallback is not None else []

    async def _probe(self) -> bool | None:
        """The breaker's health watch: True when one of the candidates is SERVING, None
        once this client is closed."""
        if self._closed or (self._source is not None and self._source._closed):
            return None
        eps = self._candidates()
        if not eps:
            return False
        found = await asyncio.gather(*(ep.check_health() for ep in eps))
        return any(found)

    async def _probe_instance(self, ep: Endpoint) -> bool | None:
        """The health watch of one instance's breaker; None once it left discovery."""
        if self.picker is None or ep not in self.picker.endpoints(ep.service):
            return None
        return await ep.check_health()

    def _watch_if_open(self, breaker: pybreaker.CircuitBreaker, ep: Endpoint) -> None:
        if not isinstance(breaker, ShopBreaker) or breaker.current_state != "open":
            return
        if breaker is ep.breaker:
            breaker.watch(lambda: self._probe_instance(ep))
        else:
            breaker.watch(self._probe)

    def _metadata(self, extra: Sequence[tuple[str, str]] | None) -> list[tuple[str, str]]:
        md: list[tuple[str, str]] = []
        rid = context.request_id()
        if rid:
            md.append(("x-request-id", rid))
        uid = context.user_id() if self.speaks_for_users else ""
        if uid:
            md.append(("x-user-id", uid))
        if extra:
            md.extend(extra)
        self._spans.inject(md)  # the call's CLIENT span (current in `call`)
        return md

    async def call(
        self,
        rpc: Rpc[StubT, ReqT, RespT],
        request: ReqT,
        *,
        idempotent: bool,
        timeout: float | None = None,  # noqa: ASYNC109 - becomes the gRPC deadline
        metadata: Sequence[tuple[str, str]] | None = None,
    ) -> RespT:
        """`rpc` (`lambda s: s.Method`) with `request`, in a CLIENT span, counted and timed
        by method and code (retries included)."""
        method = rpc_name(rpc)
        observe = self._calls.observer(f"{self.service}.{method}")
        started = time.perf_counter()
        code = "OK"
        span = self._spans.start(self._rpc_prefix + method)
        try:
            return await self._call(rpc, method, request, idempotent=idempotent,
                                    timeout=timeout, metadata=metadata)
        except aio.AioRpcError as err:
            code = err.code().name
            raise
        except DomainError as err:
            code = err.status
            raise
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except Exception:
            code = "UNKNOWN"
            raise
        finally:
            self._spans.end(span, code)
            observe(code, time.perf_counter() - started)

    async def _call(
        self,
        rpc: Rpc[StubT, ReqT, RespT],
        method: str,
        request: ReqT,
        *,
        idempotent: bool,
        timeout: float | None = None,  # noqa: ASYNC109 - becomes the gRPC deadline
        metadata: Sequence[tuple[str, str]] | None = None,
    ) -> RespT:
        """Call `method` with the caller's remaining deadline capped at `timeout` (or cap_s).

        Retries on UNAVAILABLE (and on CANCELLED from a server that was stopping) only
        when `idempotent`, at most MAX_ATTEMPTS in all and never past the deadline.
        """
        rule = self.traffic.rule(self.service, method)  # proto/traffic.toml
        budget = rule.timeout_s or (timeout if timeout is not None else self.cap_s)
        max_attempts = rule.attempts or MAX_ATTEMPTS
        left = context.remaining()
        if left is not None and left < budget:
            budget = left
        if budget <= 0:
            raise DeadlineExceeded(f"no time left to call {self.service}.{method}")
        deadline = time.monotonic() + budget
        md = self._metadata(metadata)
        self._closed = False
        ep = self._endpoint()
        attempt = 0
        while True:
            attempt += 1
            fn = rpc(ep.stub(self._stub_factory))
            breaker = self.breaker_of(ep)
            try:
                with breaker.calling():
                    reply: RespT = await fn(request, timeout=deadline - time.monotonic(),
                                            metadata=md)
                    return reply
            except pybreaker.CircuitBreakerError:
                self._watch_if_open(breaker, ep)
                raise Unavailable(f"{self.service} unavailable: circuit open") from None
            except aio.AioRpcError as err:
                self._watch_if_open(breaker, ep)
                unavailable = err.code() == grpc.StatusCode.UNAVAILABLE
                if unavailable and ep.instance and self.picker is not None:
                    self.picker.mark_down(ep)
                # A call that reaches a server in its graceful stop can end CANCELLED before
                # a handler runs (our own cancellation is asyncio's, never an AioRpcError).
                retryable = unavailable or err.code() == grpc.StatusCode.CANCELLED
                if not idempotent or attempt >= max_attempts or not retryable:
                    raise
                failed, ep = ep, self._endpoint()
                if ep is not failed:
                    continue  # another instance: no reason to wait
                pause = _backoff(attempt)
                # Leave the next attempt a useful slice of the deadline, else give up now.
                if time.monotonic() + pause + 0.01 >= deadline:
                    raise
                await asyncio.sleep(pause)

    async def connect(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109 - a wait bound
        """Connect the next call's channel now (TCP and the TLS handshake), so the first
        call's deadline is not spent on them."""
        await within(self._endpoint().open_channel().channel_ready(), timeout)

    async def close(self) -> None:
        """Close this client's own channels (discovery's shared ones stay open; one made
        by `sharing` has none of its own)."""
        if self._source is not None:
            return
        self._closed = True
        for ep in (self._fixed, self._fallback):
            if ep is not None:
                await ep.close()
        self._fallback = None
        self._pinned = None
        self._fixed = None
