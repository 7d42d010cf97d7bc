"""order.confirmed -> a shipment and its order.shipped event, in the consumer's transaction
(a tx handler: the consumer's batch is one hop on the connection's thread)."""

from __future__ import annotations

import time

from shop.events.v1 import envelope_pb2
from shop.order.v1 import order_pb2

from services.common import events
from services.common.consumer import Route
from services.common.db import Tx
from services.shipping import domain, store

DURABLE = "shipping-orders"


def on_order_confirmed(tx: Tx, env: envelope_pb2.Envelope,
                       msg: order_pb2.OrderConfirmed) -> None:
    # An order without ids raises here; the consumer retries, then dead-letters it.
    shipment = domain.ship_order(msg.order.id, msg.order.user_id, time.time())
    store.create_shipment_sync(tx, shipment)


def routes() -> list[Route]:
    return [Route.tx(events.ORDER_CONFIRMED, order_pb2.OrderConfirmed, on_order_confirmed)]
