"""Domain events -> notifications. Each handler runs in the consumer's transaction
(together with the inbox row) and uses only `conn`."""

from __future__ import annotations

import aiosqlite
from shop.events.v1 import envelope_pb2
from shop.order.v1 import order_pb2
from shop.payment.v1 import payment_pb2
from shop.shipping.v1 import shipping_pb2
from shop.user.v1 import user_pb2

from services.common import events
from services.common.consumer import Route
from services.notification import domain, store

DURABLE = "notification-events"

Envelope = envelope_pb2.Envelope


async def on_user_created(conn: aiosqlite.Connection, env: Envelope,
                          msg: user_pb2.UserCreated) -> None:
    await store.insert(conn, domain.welcome(msg.user.id, msg.user.name), env.id)


async def on_payment_completed(conn: aiosqlite.Connection, env: Envelope,
                               msg: payment_pb2.PaymentCompleted) -> None:
    p = msg.payment
    draft = domain.receipt(p.user_id, p.order_id, p.amount_cents, p.currency)
    await store.insert(conn, draft, env.id)


async def on_payment_failed(conn: aiosqlite.Connection, env: Envelope,
                            msg: payment_pb2.PaymentFailed) -> None:
    p = msg.payment
    reason = msg.reason or p.decline_reason
    draft = domain.payment_failed(p.user_id, p.order_id, p.amount_cents, p.currency, reason)
    await store.insert(conn, draft, env.id)


async def on_payment_refunded(conn: aiosqlite.Connection, env: Envelope,
                              msg: payment_pb2.PaymentRefunded) -> None:
    p = msg.payment
    draft = domain.refund(p.user_id, p.order_id, p.refunded_cents, p.currency)
    await store.insert(conn, draft, env.id)


async def on_order_confirmed(conn: aiosqlite.Connection, env: Envelope,
                             msg: order_pb2.OrderConfirmed) -> None:
    o = msg.order
    draft = domain.order_confirmed(o.user_id, o.id, o.total_cents, o.currency)
    await store.insert(conn, draft, env.id)


async def on_order_cancelled(conn: aiosqlite.Connection, env: Envelope,
                             msg: order_pb2.OrderCancelled) -> None:
    o = msg.order
    draft = domain.order_cancelled(o.user_id, o.id, msg.reason or o.cancel_reason)
    await store.insert(conn, draft, env.id)


async def on_order_shipped(conn: aiosqlite.Connection, env: Envelope,
                           msg: shipping_pb2.OrderShipped) -> None:
    s = msg.shipment
    draft = domain.shipped(s.user_id, s.order_id, s.tracking_number, s.carrier)
    await store.insert(conn, draft, env.id)


def routes() -> list[Route]:
    return [
        Route(events.USER_CREATED, user_pb2.UserCreated, on_user_created),
        Route(events.PAYMENT_COMPLETED, payment_pb2.PaymentCompleted, on_payment_completed),
        Route(events.PAYMENT_FAILED, payment_pb2.PaymentFailed, on_payment_failed),
        Route(events.PAYMENT_REFUNDED, payment_pb2.PaymentRefunded, on_payment_refunded),
        Route(events.ORDER_CONFIRMED, order_pb2.OrderConfirmed, on_order_confirmed),
        Route(events.ORDER_CANCELLED, order_pb2.OrderCancelled, on_order_cancelled),
        Route(events.ORDER_SHIPPED, shipping_pb2.OrderShipped, on_order_shipped),
    ]
