"""Events inventory consumes: a confirmed order's reserved units become sold.

The saga confirms an order once the payment is taken; the stock commit follows from the
`order.confirmed` event instead of a call of its own, in this consumer's transaction with
its inbox row (so a redelivery commits nothing twice). Until it lands the units stay
reserved, which no one else can take: a reservation past its bound is released only once
the order service says the order was cancelled or never existed (see expiry.py), and a
cancel that comes first restocks them from `reserved`, leaving the late commit nothing to
do. Inventory's own events (inventory.reserved, inventory.released, inventory.restocked)
leave through the outbox.
"""

from __future__ import annotations

from shop.events.v1 import envelope_pb2
from shop.order.v1 import order_pb2

from services.common.consumer import Route
from services.common.events import ORDER_CONFIRMED
from services.common.storage import Tx
from services.inventory.store import DEFAULT_SNAPSHOT_EVERY, commit_confirmed

DURABLE = "inventory-orders"


def routes(snapshot_every: int = DEFAULT_SNAPSHOT_EVERY) -> list[Route]:
    """`snapshot_every`: the store's (the commit appends to the products' streams)."""
    async def on_order_confirmed(tx: Tx, envelope: envelope_pb2.Envelope,
                                 payload: order_pb2.OrderConfirmed) -> None:
        await commit_confirmed(tx, payload.order.id, snapshot_every=snapshot_every)

    return [Route(ORDER_CONFIRMED, order_pb2.OrderConfirmed, on_order_confirmed)]
