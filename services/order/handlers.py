"""Events the order service consumes.

- `payment.completed` / `payment.failed` (durable "order-payments"): settle a saga whose
  Charge call had no answer (timeout, payment down) without waiting for a retry.
- `order.shipped` (durable "order-shipments"): CONFIRMED -> SHIPPED with the tracking number
  (while a cancellation saga runs only the tracking number: its refused cancel_shipment
  ends the order SHIPPED).

Handlers run inside the consumer's unit of work (inbox row + effect) and act only through
`tx`, by the store's functions; a saga moved by an event is poked once the batch committed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shop.payment.v1 import payment_pb2
from shop.shipping.v1 import shipping_pb2

from services.common import events
from services.common.consumer import AfterCommit, Route
from services.common.storage import Tx
from services.order import store

PAYMENTS_DURABLE = "order-payments"
SHIPMENTS_DURABLE = "order-shipments"


def routes(poke: Callable[[str], None],
           driving: Callable[[str], bool] = lambda order_id: False,
           ) -> tuple[list[Route], list[Route]]:
    """(payment routes, shipment routes); `poke(order_id)` wakes the saga's driver (after
    the commit, so the driver reads the reconciled saga); `driving(order_id)`: this process
    is in the saga's own calls, whose answers settle the charge (the event is acked without
    a write, rather than moving the saga under its driver's feet)."""

    async def on_completed(tx: Tx, envelope: Any,
                           payload: payment_pb2.PaymentCompleted) -> AfterCommit | None:
        order_id = payload.payment.order_id
        if await store.reconcile_charge(tx, order_id, charged=True, error="",
                                          by=events.PAYMENT_COMPLETED):
            return lambda: poke(order_id)
        return None

    async def on_failed(tx: Tx, envelope: Any,
                        payload: payment_pb2.PaymentFailed) -> AfterCommit | None:
        order_id = payload.payment.order_id
        if await store.reconcile_charge(tx, order_id, charged=False,
                                        error=payload.reason or payload.payment.decline_reason,
                                        by=events.PAYMENT_FAILED):
            return lambda: poke(order_id)
        return None

    async def settled(tx: Tx, envelope: Any,
                      payload: payment_pb2.PaymentCompleted | payment_pb2.PaymentFailed) -> bool:
        order_id = payload.payment.order_id
        return driving(order_id) or await store.charge_settled(tx, order_id)

    async def on_shipped(tx: Tx, envelope: Any, payload: shipping_pb2.OrderShipped) -> None:
        await store.record_shipment(tx, payload.shipment.order_id,
                                    payload.shipment.tracking_number)

    payments = [
        Route(events.PAYMENT_COMPLETED, payment_pb2.PaymentCompleted, on_completed,
              skip=settled),
        Route(events.PAYMENT_FAILED, payment_pb2.PaymentFailed, on_failed, skip=settled),
    ]
    shipments = [Route(events.ORDER_SHIPPED, shipping_pb2.OrderShipped, on_shipped)]
    return payments, shipments
