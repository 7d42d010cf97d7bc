"""Circuit breakers, shared by every client in the process: one per discovered instance of
a downstream service (so one unwell instance is skipped while the others serve), one per
service for a pinned or default address. They live in the process's `Breakers`, made once
by the composition root (services/common/wiring.py) and handed to discovery, every
Downstream, the metrics and the registry value `shopctl status` reads (per service, see
`Breakers.states`).

`ShopBreaker` is a pybreaker breaker with shop's accounting. A call ends in one of three
verdicts: a *failure* (the downstream is unwell: `FAILURE_CODES`, or a cancellation at the
caller's deadline), a *success* (an answer, business refusals included), or *no verdict*
(a cancellation for another reason, a CANCELLED status, any exception that is not a gRPC
status): that last kind neither counts toward opening nor closes a half-open breaker.
While half-open, one probe call is let through at a time; the others fail fast.

Recovery does not have to wait out the reset timeout: `watch(probe)` (the client calls it
when the breaker opens) checks the instance's health every `probe_every_s`
(SHOP_BREAKER_PROBE_S, 0.25 s) and half-opens the breaker once the instance reports
SERVING after it was seen not serving. An instance that keeps reporting SERVING while
its calls fail (or that never comes back) waits the full reset timeout, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator

import grpc
import pybreaker
from grpc import aio

from services.common import context
from services.common.config import BreakerConfig

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

# A cancellation this close to the caller's deadline means the downstream did not
# answer in the time it was given: the same verdict as DEADLINE_EXCEEDED.
_DEADLINE_SLACK_S = 0.05


class Verdict(enum.Enum):
    FAILURE = "failure"
    SUCCESS = "success"
    NONE = "none"  # says nothing about the downstream's health


def verdict(exc: BaseException) -> Verdict:
    """What an exception raised by a guarded call says about the downstream."""
    if isinstance(exc, aio.AioRpcError):
        code = exc.code()
        if code in FAILURE_CODES:
            return Verdict.FAILURE
        if code == grpc.StatusCode.CANCELLED:
            return Verdict.NONE  # a stopping server or our own cancellation: no answer
        return Verdict.SUCCESS  # a business answer: the downstream works
    if isinstance(exc, asyncio.CancelledError):
        # grpc.aio cancels a handler when its caller's deadline passes, while the
        # outgoing call (given all the remaining time) still waits on a hung downstream.
        left = context.remaining()
        if left is not None and left <= _DEADLINE_SLACK_S:
            return Verdict.FAILURE
        return Verdict.NONE
    return Verdict.NONE


def is_failure(exc: BaseException) -> bool:
    return verdict(exc) is Verdict.FAILURE


def _not_a_failure(exc: BaseException) -> bool:
    """For a plain pybreaker breaker's `exclude` (it has only two verdicts)."""
    return not is_failure(exc)


# A health probe: True = SERVING, False = not serving, None = nothing left to watch.
Probe = Callable[[], Awaitable[bool | None]]


class ShopBreaker(pybreaker.CircuitBreaker):
    """pybreaker's breaker with the three verdicts, one probe at a time while half-open,
    and a health watch that half-opens it when the instance is back."""

    def __init__(self, *, name: str, fail_max: int, reset_timeout: float,
                 probe_every_s: float = BreakerConfig().probe_s) -> None:
        super().__init__(
            fail_max=fail_max,
            reset_timeout=reset_timeout,
            listeners=[_StateLogger()],
            name=name,
            # Callers see the real error of the call that tripped it, not a generic one.
            throw_new_error_on_trip=False,
        )
        self.probe_every_s = probe_every_s
        self._probing = False  # a half-open probe call is in flight
        self.used = False  # a call went through it (breaker_states skips unused ones)
        self._watch: asyncio.Task[None] | None = None
        self._opened_mono = 0.0

    # -- admission and accounting ----------------------------------------------------

    def admits(self) -> bool:
        """True when a call now would be let through (closed, due for a probe, or
        half-open with no probe in flight)."""
        state = self.current_state
        if state == pybreaker.STATE_CLOSED:
            return True
        if state == pybreaker.STATE_HALF_OPEN:
            return not self._probing
        return time.monotonic() - self._opened_mono >= self.reset_timeout

    @contextlib.contextmanager
    def calling(self) -> Iterator[None]:
        """Guard one call: raises pybreaker.CircuitBreakerError when it may not go."""
        probe = self._admit()
        try:
            yield
        except BaseException as exc:
            v = verdict(exc)
            if v is Verdict.FAILURE:
                self._failed(exc)
            elif v is Verdict.SUCCESS:
                self._succeeded()
            raise
        else:
            self._succeeded()
        finally:
            if probe:
                self._probing = False

    def _admit(self) -> bool:
        """Let a call through or raise; True when it is the half-open probe."""
        with self._lock:
            self.used = True
            state = self.current_state
            if state == pybreaker.STATE_OPEN:
                if time.monotonic() - self._opened_mono < self.reset_timeout:
                    raise pybreaker.CircuitBreakerError("circuit breaker open")
                self.half_open()
                state = pybreaker.STATE_HALF_OPEN
            if state == pybreaker.STATE_HALF_OPEN:
                if self._probing:
                    raise pybreaker.CircuitBreakerError("circuit breaker half-open, probing")
                self._probing = True
                return True
            return False

    def _failed(self, exc: BaseException) -> None:
        with self._lock:
            self._inc_counter()
            for listener in self.listeners:
                listener.failure(self, exc)
            state = self.current_state
            if state == pybreaker.STATE_HALF_OPEN or (
                    state == pybreaker.STATE_CLOSED and self.fail_counter >= self.fail_max):
                self.open()

    def _succeeded(self) -> None:
        with self._lock:
            self._state_storage.reset_counter()
            for listener in self.listeners:
                listener.success(self)
            if self.current_state == pybreaker.STATE_HALF_OPEN:
                self._state_storage.increment_success_counter()
                if self.success_counter >= self.success_threshold:
                    self.close()

    def open(self) -> bool:
        self._opened_mono = time.monotonic()
        return super().open()

    # -- recovery ----------------------------------------------------------------------

    def watch(self, probe: Probe) -> None:
        """While open, run `probe` every `probe_every_s`; once it says SERVING after it
        said not serving, half-open the breaker. One watch per breaker at a time; needs
        a running loop."""
        if self.current_state != pybreaker.STATE_OPEN or self.probe_every_s <= 0:
            return
        if self._watch is not None and not self._watch.done():
            return
        self._watch = asyncio.get_running_loop().create_task(
            self._watch_loop(probe), name=f"breaker-watch-{self.name}")

    async def _watch_loop(self, probe: Probe) -> None:
        seen_down = False
        while self.current_state == pybreaker.STATE_OPEN:
            try:
                serving = await probe()
            except asyncio.CancelledError:
                raise
            except Exception:
                serving = False
            if serving is None:
                return  # the client is gone
            if not serving:
                seen_down = True
            elif seen_down and self.current_state == pybreaker.STATE_OPEN:
                log.info("downstream serving again; half-opening its breaker",
                         extra={"downstream": self.name})
                self.half_open()
                return
            await asyncio.sleep(self.probe_every_s)

    def stop_watch(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None


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


def combined_state(states: Iterable[str]) -> str:
    """The state of a service whose calls go through several breakers (one per instance):
    "closed" while one is closed, else "half-open" while one is, else "open"."""
    found = set(states)
    for state in (pybreaker.STATE_CLOSED, pybreaker.STATE_HALF_OPEN, pybreaker.STATE_OPEN):
        if state in found:
            return state
    return pybreaker.STATE_CLOSED


def new_breaker(name: str, *, fail_max: int, reset_timeout: float,
                probe_every_s: float = BreakerConfig().probe_s) -> ShopBreaker:
    """A breaker with shop's rules (what counts as a failure, state changes logged), outside
    the per-service registry: for a caller that needs one of its own (a dashboard part)."""
    return ShopBreaker(name=name, fail_max=fail_max, reset_timeout=reset_timeout,
                       probe_every_s=probe_every_s)


class Breakers:
    """The breakers of one process by name: one per downstream service (a pinned or
    default address) and one per discovered instance, made on first use with `config`'s
    thresholds (SHOP_BREAKER_FAIL_MAX, SHOP_BREAKER_RESET_S, SHOP_BREAKER_PROBE_S)."""

    def __init__(self, config: BreakerConfig | None = None) -> None:
        self.config = config or BreakerConfig()
        self._by_name: dict[str, ShopBreaker] = {}

    def breaker_for(self, service: str, instance: str = "") -> ShopBreaker:
        """The breaker of `service` (a pinned or default address), or of one of its
        discovered instances."""
        key = f"{service}/{instance}" if instance else service
        breaker = self._by_name.get(key)
        if breaker is None:
            c = self.config
            breaker = new_breaker(key, fail_max=c.fail_max, reset_timeout=c.reset_s,
                                  probe_every_s=c.probe_s)
            self._by_name[key] = breaker
        return breaker

    def states(self) -> dict[str, str]:
        """Downstream service -> "closed" | "open" | "half-open" (its instances' breakers
        combined, see `combined_state`)."""
        by_service: dict[str, list[ShopBreaker]] = {}
        for key, b in self._by_name.items():
            by_service.setdefault(key.partition("/")[0], []).append(b)
        out: dict[str, str] = {}
        for name, found in sorted(by_service.items()):
            used = [b for b in found if b.used] or found  # a breaker never called is no news
            out[name] = combined_state(str(b.current_state) for b in used)
        return out

    def stop_watches(self) -> None:
        """Stop every breaker's health watch (the process is stopping)."""
        for breaker in self._by_name.values():
            breaker.stop_watch()
