"""order.confirmed -> a PENDING shipment (or a CANCELLED one when the order's cancellation
came first), in the consumer's unit of work (with the inbox row). The dispatcher publishes
order.shipped later."""

from __future__ import annotations

import time
from collections.abc import Callable

from shop.events.v1 import envelope_pb2
from shop.order.v1 import order_pb2

from services.common import events
from services.common.consumer import AfterCommit, Route
from services.common.storage import Tx
from services.shipping import domain, store

DURABLE = "shipping-orders"


def routes(delay_s: float = domain.DEFAULT_DISPATCH_DELAY_S,
           created: Callable[[], None] = lambda: None) -> list[Route]:
    """`created()` runs after the commit of a new shipment (wakes the dispatcher)."""

    async def on_order_confirmed(tx: Tx, env: envelope_pb2.Envelope,
                                 msg: order_pb2.OrderConfirmed) -> AfterCommit | None:
        # An order without ids raises here; the consumer retries, then dead-letters it.
        made = await store.create_shipment(tx, msg.order.id, msg.order.user_id, time.time(),
                                           delay_s)
        return created if made is not None else None

    return [Route(events.ORDER_CONFIRMED, order_pb2.OrderConfirmed, on_order_confirmed)]
