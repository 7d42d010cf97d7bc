"""Domain events -> notifications. Each handler runs in the consumer's transaction
(together with the inbox row) and uses only `tx`: tx handlers (`Route.tx`), so a whole
batch is one hop on the connection's thread."""

from __future__ import annotations

from shop.events.v1 import envelope_pb2
from shop.order.v1 import order_pb2
from shop.payment.v1 import payment_pb2
from shop.shipping.v1 import shipping_pb2
from shop.user.v1 import user_pb2

from services.common import events
from services.common.consumer import Route
from services.common.db import Tx
from services.notification import domain, store

DURABLE = "notification-events"

Envelope = envelope_pb2.Envelope


def on_user_created(tx: Tx, env: Envelope, msg: user_pb2.UserCreated) -> None:
    store.insert_sync(tx, domain.welcome(msg.user.id, msg.user.name), env.id)


def on_payment_completed(tx: Tx, env: Envelope, msg: payment_pb2.PaymentCompleted) -> None:
    p = msg.payment
    draft = domain.receipt(p.user_id, p.order_id, p.amount_cents, p.currency)
    store.insert_sync(tx, draft, env.id)


def on_payment_failed(tx: Tx, env: Envelope, msg: payment_pb2.PaymentFailed) -> None:
    p = msg.payment
    reason = msg.reason or p.decline_reason
    draft = domain.payment_failed(p.user_id, p.order_id, p.amount_cents, p.currency, reason)
    store.insert_sync(tx, draft, env.id)


def on_payment_refunded(tx: Tx, env: Envelope, msg: payment_pb2.PaymentRefunded) -> None:
    p = msg.payment
    draft = domain.refund(p.user_id, p.order_id, p.refunded_cents, p.currency)
    store.insert_sync(tx, draft, env.id)


def on_order_confirmed(tx: Tx, env: Envelope, msg: order_pb2.OrderConfirmed) -> None:
    o = msg.order
    draft = domain.order_confirmed(o.user_id, o.id, o.total_cents, o.currency)
    store.insert_sync(tx, draft, env.id)


def on_order_cancelled(tx: Tx, env: Envelope, msg: order_pb2.OrderCancelled) -> None:
    o = msg.order
    draft = domain.order_cancelled(o.user_id, o.id, msg.reason or o.cancel_reason)
    store.insert_sync(tx, draft, env.id)


def on_order_shipped(tx: Tx, env: Envelope, msg: shipping_pb2.OrderShipped) -> None:
    s = msg.shipment
    draft = domain.shipped(s.user_id, s.order_id, s.tracking_number, s.carrier)
    store.insert_sync(tx, draft, env.id)


def routes() -> list[Route]:
    return [
        Route.tx(events.USER_CREATED, user_pb2.UserCreated, on_user_created),
        Route.tx(events.PAYMENT_COMPLETED, payment_pb2.PaymentCompleted, on_payment_completed),
        Route.tx(events.PAYMENT_FAILED, payment_pb2.PaymentFailed, on_payment_failed),
        Route.tx(events.PAYMENT_REFUNDED, payment_pb2.PaymentRefunded, on_payment_refunded),
        Route.tx(events.ORDER_CONFIRMED, order_pb2.OrderConfirmed, on_order_confirmed),
        Route.tx(events.ORDER_CANCELLED, order_pb2.OrderCancelled, on_order_cancelled),
        Route.tx(events.ORDER_SHIPPED, shipping_pb2.OrderShipped, on_order_shipped),
    ]
