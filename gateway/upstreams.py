"""The downstream services the gateway calls, one `Downstream` (channel, breaker) each.

`Caller` is the slice of services.common.clients.Downstream the gateway uses, so tests
can hand in small in-process fakes.

The dashboard's parts call the same services over the same channels, but each through a
breaker of its own ("dashboard.user", ...): the parts run on a short deadline of their
own, and their timeouts must not open the breakers every other route shares.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol, TypeVar

import pybreaker
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2_grpc

from gateway.rules import HttpRule
from services.common.breakers import new_breaker
from services.common.clients import Downstream, Rpc
from services.common.config import BreakerConfig
from services.common.errors import Unavailable
from services.common.settings import SERVICES
from services.common.wiring import Wiring

ReqT = TypeVar("ReqT", bound=Message)
RespT = TypeVar("RespT", bound=Message)


class Caller(Protocol):
    """A service's calls, as `Downstream.call`: `lambda s: s.Method` names the method (the
    gateway's routes build theirs from the proto method, `HttpRule.method_of`)."""

    service: str

    async def call(
        self,
        rpc: Rpc[Any, ReqT, RespT],
        request: ReqT,
        *,
        idempotent: bool,
        timeout: float | None = None,  # noqa: ASYNC109 - a gRPC deadline, as Downstream
    ) -> RespT: ...

    async def close(self) -> None: ...


def api_downstreams(rules: Iterable[HttpRule], *, cap_s: float,
                    wiring: Wiring) -> dict[str, Caller]:
    """One Downstream per service that serves a route (its stub from the rules)."""
    out: dict[str, Caller] = {}
    for rule in rules:
        if rule.service not in out and rule.stub_class is not None:
            out[rule.service] = wiring.downstream(rule.service, rule.stub_class, cap_s=cap_s,
                                                  speaks_for_users=True)
    return out


def health_downstreams(upstreams: Mapping[str, Caller] | None = None,
                       services: Iterable[str] = SERVICES, *,
                       wiring: Wiring) -> dict[str, Caller]:
    """grpc.health.v1 clients for /readyz (they share each service's breaker). On the
    channels of the routes' Downstream where there is one: a ready gateway then has the
    very channels its routes call on connected."""
    out: dict[str, Caller] = {}
    for name in services:
        base = (upstreams or {}).get(name)
        out[name] = (Downstream.sharing(base, cap_s=1.0, stub_factory=health_pb2_grpc.HealthStub)
                     if isinstance(base, Downstream)
                     else wiring.downstream(name, health_pb2_grpc.HealthStub, cap_s=1.0))
    return out


def breaker_state(caller: Caller) -> str:
    """ "closed", "open", "half-open", or "unknown" for a caller without a breaker."""
    state = getattr(caller, "breaker_state", None)
    return state if isinstance(state, str) else "unknown"


async def close_all(*groups: Mapping[str, Caller]) -> None:
    for group in groups:
        for caller in group.values():
            await caller.close()


# --- dashboard parts: the same channels, breakers of their own ---------------------------

DASHBOARD_PARTS = ("user", "order", "notification")


def part_breaker(name: str, *, fail_max: int, reset_s: float,
                 probe_s: float) -> pybreaker.CircuitBreaker:
    """A breaker of its own for one dashboard part ("dashboard.<service>"): the part's
    short deadline trips only this one, never the service breaker every route shares."""
    return new_breaker(name, fail_max=fail_max, reset_timeout=reset_s, probe_every_s=probe_s)


class _BreakerCaller:
    """Any other Caller (tests' fakes) under a breaker of its own."""

    def __init__(self, base: Caller, breaker: pybreaker.CircuitBreaker) -> None:
        self.service = base.service
        self._base = base
        self.breaker = breaker

    @property
    def breaker_state(self) -> str:
        return str(self.breaker.current_state)

    async def call(
        self,
        rpc: Rpc[Any, ReqT, RespT],
        request: ReqT,
        *,
        idempotent: bool,
        timeout: float | None = None,  # noqa: ASYNC109 - a gRPC deadline, as Downstream
    ) -> RespT:
        try:
            with self.breaker.calling():
                return await self._base.call(
                    rpc, request, idempotent=idempotent, timeout=timeout
                )
        except pybreaker.CircuitBreakerError:
            raise Unavailable(f"{self.service} unavailable: circuit open") from None

    async def close(self) -> None:
        return None


def dashboard_callers(
    upstreams: Mapping[str, Caller], *, fail_max: int, reset_s: float,
    probe_s: float = BreakerConfig().probe_s,
) -> dict[str, Caller]:
    """ "dashboard.<service>" -> a caller of that service with its own breaker."""
    out: dict[str, Caller] = {}
    for service in DASHBOARD_PARTS:
        base = upstreams[service]
        name = f"dashboard.{service}"
        breaker = part_breaker(name, fail_max=fail_max, reset_s=reset_s, probe_s=probe_s)
        out[name] = (
            Downstream.sharing(base, breaker=breaker)
            if isinstance(base, Downstream)
            else _BreakerCaller(base, breaker)
        )
    return out
