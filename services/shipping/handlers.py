"""order.confirmed -> a shipment and its order.shipped event, in the consumer's transaction."""

from __future__ import annotations

import time

import aiosqlite
from shop.events.v1 import envelope_pb2
from shop.order.v1 import order_pb2

from services.common import events
from services.common.consumer import Route
from services.shipping import domain, store

DURABLE = "shipping-orders"


async def on_order_confirmed(conn: aiosqlite.Connection, env: envelope_pb2.Envelope,
                             msg: order_pb2.OrderConfirmed) -> None:
    # An order without ids raises here; the consumer retries, then dead-letters it.
    shipment = domain.ship_order(msg.order.id, msg.order.user_id, time.time())
    await store.create_shipment(conn, shipment)


def routes() -> list[Route]:
    return [Route(events.ORDER_CONFIRMED, order_pb2.OrderConfirmed, on_order_confirmed)]
