"""The saga orchestrator: drives each order's saga step by step, persisting every attempt.

One coroutine per saga per process (the `_tasks` registry), and a lease in the saga row so
two instances sharing the database never drive the same saga: a driver stops as soon as a
write tells it the saga changed hands. A write that fails only because the saga changed
(a cancel, a payment event reconciling an unknown charge) reloads it and carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from services.common import context
from services.common.cancellation import cancel_and_wait, within
from services.order.domain import (
    Limits,
    Order,
    Outcome,
    Refusal,
    SagaState,
    Step,
    Transition,
    advance,
    apply_cancel_request,
)
from services.order.ports import (
    SagaPorts,
    StepDeferred,
    StepRefused,
    StepUnknown,
    StepUnwell,
)
from services.order.saga_metrics import SagaMetrics
from services.order.saga_tracing import record_outcome, step_span
from services.order.store import HistoryEntry, OrderRepository

log = logging.getLogger("shop.order.saga")

Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class SagaConfig:
    owner: str
    limits: Limits = field(default_factory=Limits)
    # A lease outlives a few missed heartbeats; a crashed owner's sagas wait this long
    # before another instance takes them (a restart of the same instance resumes at once).
    lease_s: float = 10.0
    resume_every_s: float = 2.0


def _written_later(step: Step, outcome: Outcome, tr: Transition) -> bool:
    """A charge that succeeded is written in the confirm step's transaction, not one of
    its own: one write (and one fsync) less per order. Safe because the saga row then
    still says "charge" until the confirmation is written, and a restart in between
    charges again (the payment for the order is found, not made twice)."""
    return (step is Step.CHARGE and outcome is Outcome.SUCCEEDED and tr.final_status is None
            and tr.retry_after_s is None and tr.state.step is Step.CONFIRM)


class SagaRunner:
    def __init__(self, store: OrderRepository, ports: SagaPorts, config: SagaConfig) -> None:
        self.store = store
        self.ports = ports
        self.config = config
        self._tasks: dict[str, asyncio.Task[Order | None]] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._paused: set[str] = set()
        self._metrics = SagaMetrics()

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def start(self, order: Order, state: SagaState) -> asyncio.Task[Order | None]:
        """Drive a saga just created (and leased) by this process."""
        return self._spawn(order.id, order, state)

    def ensure(self, order_id: str) -> asyncio.Task[Order | None]:
        """The coroutine driving `order_id` here, started (lease permitting) if none is."""
        return self._spawn(order_id, None, None)

    def poke(self, order_id: str) -> None:
        """Something changed the saga (event, cancel): wake its driver, or start one."""
        event = self._wake.get(order_id)
        if event is not None:
            event.set()
        else:
            self.ensure(order_id)

    def task(self, order_id: str) -> asyncio.Task[Order | None] | None:
        return self._tasks.get(order_id)

    def _spawn(self, order_id: str, order: Order | None,
               state: SagaState | None) -> asyncio.Task[Order | None]:
        task = self._tasks.get(order_id)
        if task is None:
            self._wake[order_id] = asyncio.Event()
            task = asyncio.create_task(self._drive(order_id, order, state),
                                       name=f"saga-{order_id}")
            self._tasks[order_id] = task
            task.add_done_callback(lambda t: self._done(order_id, t))
        return task

    def _done(self, order_id: str, task: asyncio.Task[Order | None]) -> None:
        self._tasks.pop(order_id, None)
        self._wake.pop(order_id, None)
        if not task.cancelled() and (exc := task.exception()) is not None:
            # The resume loop picks the saga up again from its persisted state.
            log.error("saga driver failed", exc_info=exc, extra={"order_id": order_id})

    async def wait(self, task: asyncio.Task[Order | None] | None, budget_s: float) -> None:
        """Wait for the saga within the budget; past it the saga goes on in the background."""
        if task is None or budget_s <= 0 or task.done():
            return
        # asyncio.wait never cancels the task (no shield needed) and costs one future.
        await asyncio.wait((task,), timeout=budget_s)

    async def _drive(self, order_id: str, order: Order | None,
                     state: SagaState | None) -> Order | None:
        # The saga outlives the request that started it: no caller deadline, no caller id.
        context.deadline_var.set(None)
        context.user_id_var.set("")
        cfg = self.config
        if state is None:
            state = await self.store.acquire(order_id, cfg.owner, cfg.lease_s)
            if state is None:
                return None  # finished, or another live instance drives it
        if order is None:
            order = await self.store.get(order_id)
            if order is None:
                return None
        # Attempts not written yet: a charge that succeeded is written with the commit's
        # outcome (see `_written_later`).
        pending: list[HistoryEntry] = []
        while state.active:
            state = apply_cancel_request(state)
            step = state.step
            with step_span(order_id, step.value, state.attempt + 1) as span:
                outcome, error, refusal = await self._attempt(step, order, state)
                record_outcome(span, outcome.value, error)
            self._metrics.attempted(step.value, outcome.value)
            tr = advance(state, outcome, error, cfg.limits, refusal)
            pending.append(HistoryEntry(step.value, tr.label or outcome.value,
                                        state.attempt + 1, time.time(), error))
            if _written_later(step, outcome, tr):
                state = tr.state  # same version: the row still holds the step before
                continue
            entries, pending = pending, []
            saved = await self.store.record(order, state, tr.state, entries, owner=cfg.owner,
                                            lease_s=cfg.lease_s, final_status=tr.final_status)
            if saved is None:
                reloaded = await self._reload(order_id)
                if reloaded is None:
                    return None
                state = reloaded
                continue
            order = saved
            state = dataclasses.replace(tr.state, version=state.version + 1)
            if tr.retry_after_s is not None:
                await self._pause(order_id, tr.retry_after_s)
                # An event or a cancel may have moved the saga while we waited.
                reloaded = await self._reload(order_id)
                if reloaded is None:
                    return None
                state = reloaded
        if order.create_time > 0:
            self._metrics.ended(order.status.name, time.time() - order.create_time)
        return order

    def driving(self, order_id: str) -> bool:
        """This process drives the saga and is not waiting out a back-off: the answer of
        the call it is in settles the step (a payment event need not)."""
        return order_id in self._tasks and order_id not in self._paused

    async def _reload(self, order_id: str) -> SagaState | None:
        """The saga as persisted, or None when it is no longer ours to drive."""
        got = await self.store.saga(order_id)
        if got is None:
            return None
        state, lease = got
        if lease.owner != self.config.owner:
            log.info("saga taken over", extra={"order_id": order_id, "owner": lease.owner})
            return None
        return state

    async def _pause(self, order_id: str, delay_s: float) -> None:
        self._paused.add(order_id)
        try:
            event = self._wake.get(order_id)
            if event is None:
                await asyncio.sleep(delay_s)
                return
            with contextlib.suppress(TimeoutError):
                await within(event.wait(), delay_s)
            event.clear()
        finally:
            self._paused.discard(order_id)

    async def _attempt(self, step: Step, order: Order,
                       state: SagaState) -> tuple[Outcome, str, Refusal]:
        try:
            if step is Step.RESERVE:
                await self.ports.reserve(order)
            elif step is Step.CHARGE:
                await self.ports.charge(order, state.card_token)
            elif step is Step.CONFIRM:
                # Nothing to call: the confirmation is written with the order.confirmed
                # event, whose consumer in inventory commits the reserved units.
                pass
            elif step is Step.REFUND:
                await self.ports.refund(order.id, state.reason)
            elif step is Step.RELEASE:
                await self.ports.release(order.id)
            elif step is Step.CANCEL_SHIPMENT:
                await self.ports.cancel_shipment(order.id)
            elif step is Step.RESTOCK:
                await self.ports.restock(order.id)
            else:
                raise ValueError(f"no action for step {step}")
        except StepRefused as err:
            return Outcome.REFUSED, str(err), err.kind
        except StepDeferred as err:
            return Outcome.DEFERRED, str(err), Refusal.NONE
        except StepUnwell as err:
            return Outcome.UNWELL, str(err), Refusal.NONE
        except StepUnknown as err:
            return Outcome.UNKNOWN, str(err), Refusal.NONE
        except asyncio.CancelledError:
            raise
        except Exception as err:  # a bug or a transport oddity: retried like an unknown
            log.exception("saga step failed unexpectedly",
                          extra={"order_id": order.id, "step": str(step)})
            return Outcome.UNKNOWN, repr(err), Refusal.NONE
        return Outcome.SUCCEEDED, "", Refusal.NONE

    async def resume_loop(self) -> None:
        """Resume unfinished sagas: ours from a previous life at once, others' once their
        lease ran out. Runs for the life of the process."""
        while True:
            try:
                for order_id in await self.store.resumable(self.config.owner):
                    if order_id not in self._tasks:
                        self.ensure(order_id)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("saga resume scan failed")
            await asyncio.sleep(self.config.resume_every_s)

    async def heartbeat_loop(self) -> None:
        """Keep the leases of the sagas driven here alive (long retries outlive a lease)."""
        while True:
            await asyncio.sleep(self.config.lease_s / 3)
            try:
                await self.store.renew(self.config.owner, list(self._tasks),
                                       self.config.lease_s)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("saga lease heartbeat failed")

    async def close(self) -> None:
        """Stop driving (the leases run out or a restart of this instance resumes)."""
        await cancel_and_wait(list(self._tasks.values()))
