"""One pybreaker circuit breaker per downstream service, shared by every client in the
process, and the registry `shopctl status` and metrics read."""

from __future__ import annotations

import asyncio
import logging

import grpc
import pybreaker
from grpc import aio

from services.common import context
from services.common.settings import env_float, env_int

log = logging.getLogger("shop.breaker")

# Codes that say the downstream is unwell. Business answers (NOT_FOUND, ...) mean it works.
FAILURE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
    }
)

_registry: dict[str, pybreaker.CircuitBreaker] = {}


# A cancellation this close to the caller's deadline means the downstream did not
# answer in the time it was given: the same verdict as DEADLINE_EXCEEDED.
_DEADLINE_SLACK_S = 0.05


def is_failure(exc: BaseException) -> bool:
    if isinstance(exc, aio.AioRpcError):
        return exc.code() in FAILURE_CODES
    if isinstance(exc, asyncio.CancelledError):
        # grpc.aio cancels a handler when its caller's deadline passes, while the
        # outgoing call (given all the remaining time) still waits on a hung downstream.
        left = context.remaining()
        return left is not None and left <= _DEADLINE_SLACK_S
    return False


def _not_a_failure(exc: BaseException) -> bool:
    return not is_failure(exc)


class _StateLogger(pybreaker.CircuitBreakerListener):
    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        old = old_state.name if old_state is not None else None
        level = logging.WARNING if new_state.name == "open" else logging.INFO
        log.log(
            level,
            "circuit breaker state change",
            extra={"downstream": cb.name, "from": old, "to": new_state.name},
        )


def breaker_for(service: str) -> pybreaker.CircuitBreaker:
    """The process-wide breaker for `service`, made on first use.

    Thresholds: SHOP_BREAKER_FAIL_MAX (5 consecutive failures), SHOP_BREAKER_RESET_S (30 s).
    """
    breaker = _registry.get(service)
    if breaker is None:
        breaker = new_breaker(
            service,
            fail_max=env_int("SHOP_BREAKER_FAIL_MAX", 5),
            reset_timeout=env_float("SHOP_BREAKER_RESET_S", 30.0),
        )
        _registry[service] = breaker
    return breaker


def new_breaker(name: str, *, fail_max: int, reset_timeout: float) -> pybreaker.CircuitBreaker:
    """A breaker with shop's rules (what counts as a failure, state changes logged), outside
    the per-service registry: for a caller that needs one of its own (a dashboard part)."""
    return pybreaker.CircuitBreaker(
        fail_max=fail_max,
        reset_timeout=reset_timeout,
        exclude=[_not_a_failure],
        listeners=[_StateLogger()],
        name=name,
        # Callers see the real error of the call that tripped it, not a generic one.
        throw_new_error_on_trip=False,
    )


def breaker_states() -> dict[str, str]:
    """Downstream service -> "closed" | "open" | "half-open"."""
    return {name: str(b.current_state) for name, b in sorted(_registry.items())}


def reset_breakers() -> None:
    """Forget every breaker (tests; a new one is made on next use)."""
    _registry.clear()
