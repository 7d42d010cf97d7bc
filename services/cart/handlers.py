"""Events the cart consumes: a confirmed order that came from the cart empties it."""

from __future__ import annotations

from shop.events.v1 import envelope_pb2
from shop.order.v1 import order_pb2

from services.cart.store import remove_products
from services.common.consumer import Route
from services.common.events import ORDER_CONFIRMED
from services.common.storage import Tx

DURABLE = "cart-orders"


async def on_order_confirmed(tx: Tx, envelope: envelope_pb2.Envelope,
                             payload: order_pb2.OrderConfirmed) -> None:
    """Remove exactly the ordered products: lines added after the order was placed stay.
    Runs in the consumer's transaction with its inbox row, so a redelivery is a no-op
    (a tx handler: the consumer's whole batch is one unit of work)."""
    order = payload.order
    if not order.from_cart or not order.user_id:
        return
    product_ids = sorted({item.product_id for item in order.items if item.product_id})
    await remove_products(tx, order.user_id, product_ids)


def routes() -> list[Route]:
    return [Route(ORDER_CONFIRMED, order_pb2.OrderConfirmed, on_order_confirmed)]
