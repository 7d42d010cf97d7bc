"""Events the order service consumes.

- `payment.completed` / `payment.failed` (durable "order-payments"): settle a saga whose
  Charge call had no answer (timeout, payment down) without waiting for a retry.
- `order.shipped` (durable "order-shipments"): CONFIRMED -> SHIPPED with the tracking number
  (while a cancellation saga runs only the tracking number: its refused cancel_shipment
  ends the order SHIPPED).

Handlers run inside the consumer's transaction (inbox row + effect) and use only `tx`:
they are tx handlers (`Route.tx`), so a batch is one hop on the connection's thread; a
saga moved by an event is poked once the batch committed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import aiosqlite
from shop.payment.v1 import payment_pb2
from shop.shipping.v1 import shipping_pb2

from services.common import events
from services.common.consumer import AfterCommit, Route
from services.common.db import Tx
from services.order import store
from services.order.domain import Outcome, Refusal, SagaStatus, Step, advance

PAYMENTS_DURABLE = "order-payments"
SHIPMENTS_DURABLE = "order-shipments"


async def reconcile_charge(conn: aiosqlite.Connection, order_id: str, *, charged: bool,
                           error: str) -> bool:
    """Move a saga still at its charge step to the charge's real outcome; True if moved.
    A saga already past the charge (the usual case: the call answered first) is left alone."""
    state = await store.saga_of(conn, order_id)
    if state is None or state.step is not Step.CHARGE or state.status is not SagaStatus.RUNNING:
        return False
    outcome = Outcome.SUCCEEDED if charged else Outcome.REFUSED
    kind = Refusal.NONE if charged else Refusal.DECLINED
    new = advance(state, outcome, error, refusal=kind).state
    if not await store.write_saga(conn, state, new):
        return False
    source = events.PAYMENT_COMPLETED if charged else events.PAYMENT_FAILED
    await store.add_history(conn, order_id, store.HistoryEntry(
        Step.CHARGE.value, "reconciled", state.attempt + 1, time.time(),
        f"{outcome.value} by {source}" + (f": {error}" if error else "")))
    return True


def reconcile_charge_sync(tx: Tx, order_id: str, *, charged: bool, error: str) -> bool:
    """reconcile_charge on a write function's Tx (the consumer's single-hop path)."""
    state = store.saga_of_sync(tx, order_id)
    if state is None or state.step is not Step.CHARGE or state.status is not SagaStatus.RUNNING:
        return False
    outcome = Outcome.SUCCEEDED if charged else Outcome.REFUSED
    kind = Refusal.NONE if charged else Refusal.DECLINED
    new = advance(state, outcome, error, refusal=kind).state
    if not store.write_saga_sync(tx, state, new):
        return False
    source = events.PAYMENT_COMPLETED if charged else events.PAYMENT_FAILED
    store.add_history_sync(tx, order_id, store.HistoryEntry(
        Step.CHARGE.value, "reconciled", state.attempt + 1, time.time(),
        f"{outcome.value} by {source}" + (f": {error}" if error else "")))
    return True


def charge_settled_sync(tx: Tx, order_id: str) -> bool:
    """True when a payment event can no longer move the saga: it is past its charge step
    for good (confirming, compensating or ended; a saga never returns to its charge). The
    usual case, since the Charge call answered before the event came: the consumer then
    acks the event with no write. A saga still at reserve or charge, or one not found, is
    handled as before."""
    state = store.saga_of_sync(tx, order_id)
    if state is None:
        return False
    return state.status is not SagaStatus.RUNNING or \
        state.step not in (Step.RESERVE, Step.CHARGE)


def routes(poke: Callable[[str], None]) -> tuple[list[Route], list[Route]]:
    """(payment routes, shipment routes); `poke(order_id)` wakes the saga's driver (after
    the commit, so the driver reads the reconciled saga)."""

    def on_completed(tx: Tx, envelope: Any,
                     payload: payment_pb2.PaymentCompleted) -> AfterCommit | None:
        order_id = payload.payment.order_id
        if reconcile_charge_sync(tx, order_id, charged=True, error=""):
            return lambda: poke(order_id)
        return None

    def on_failed(tx: Tx, envelope: Any,
                  payload: payment_pb2.PaymentFailed) -> AfterCommit | None:
        order_id = payload.payment.order_id
        if reconcile_charge_sync(tx, order_id, charged=False,
                                 error=payload.reason or payload.payment.decline_reason):
            return lambda: poke(order_id)
        return None

    def settled(tx: Tx, envelope: Any,
                payload: payment_pb2.PaymentCompleted | payment_pb2.PaymentFailed) -> bool:
        return charge_settled_sync(tx, payload.payment.order_id)

    def on_shipped(tx: Tx, envelope: Any, payload: shipping_pb2.OrderShipped) -> None:
        order_id = payload.shipment.order_id
        saga = store.saga_of_sync(tx, order_id)
        # A confirmed order's saga runs again only for a customer's cancel: it decides the
        # status (its cancel_shipment is refused once dispatched, and it ends SHIPPED).
        store.mark_shipped_sync(tx, order_id, payload.shipment.tracking_number,
                                status=saga is None or not saga.active)

    payments = [
        Route.tx(events.PAYMENT_COMPLETED, payment_pb2.PaymentCompleted, on_completed,
                 skip=settled),
        Route.tx(events.PAYMENT_FAILED, payment_pb2.PaymentFailed, on_failed, skip=settled),
    ]
    shipments = [Route.tx(events.ORDER_SHIPPED, shipping_pb2.OrderShipped, on_shipped)]
    return payments, shipments
