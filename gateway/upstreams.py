"""The downstream services the gateway calls, one `Downstream` (channel, breaker) each.

`Caller` is the slice of services.common.clients.Downstream the gateway uses, so tests
can hand in small in-process fakes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from google.protobuf.message import Message
from grpc_health.v1 import health_pb2_grpc

from gateway.rules import HttpRule
from services.common.clients import Downstream
from services.common.settings import SERVICES


class Caller(Protocol):
    service: str

    async def call(
        self,
        method: str,
        request: Message,
        *,
        idempotent: bool,
        timeout: float | None = None,  # noqa: ASYNC109 - a gRPC deadline, as Downstream
    ) -> Any: ...

    async def close(self) -> None: ...


def api_downstreams(rules: Iterable[HttpRule], *, cap_s: float) -> dict[str, Caller]:
    """One Downstream per service that serves a route (its stub from the rules)."""
    out: dict[str, Caller] = {}
    for rule in rules:
        if rule.service not in out and rule.stub_class is not None:
            out[rule.service] = Downstream(rule.service, rule.stub_class, cap_s=cap_s)
    return out


def health_downstreams(services: Iterable[str] = SERVICES) -> dict[str, Caller]:
    """grpc.health.v1 clients for /readyz (they share each service's breaker)."""
    return {name: Downstream(name, health_pb2_grpc.HealthStub, cap_s=1.0) for name in services}


def breaker_state(caller: Caller) -> str:
    """ "closed", "open", "half-open", or "unknown" for a caller without a breaker."""
    state = getattr(caller, "breaker_state", None)
    return state if isinstance(state, str) else "unknown"


async def close_all(*groups: Mapping[str, Caller]) -> None:
    for group in groups:
        for caller in group.values():
            await caller.close()
