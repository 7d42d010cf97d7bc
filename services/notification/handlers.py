"""Domain events -> notifications. Each handler runs in the consumer's unit of work
(together with the inbox row) and acts only through `tx`, by the store's functions.

With mail on, each new notification also gets its delivery outbox row in that same
transaction, and the sender is woken once the batch committed: the consumer never waits
for a mail server."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from google.protobuf.message import Message
from shop.events.v1 import envelope_pb2
from shop.order.v1 import order_pb2
from shop.payment.v1 import payment_pb2
from shop.shipping.v1 import shipping_pb2
from shop.user.v1 import user_pb2

from services.common import events
from services.common.consumer import AfterCommit, Route
from services.common.storage import Tx
from services.notification import domain, store

DURABLE = "notification-events"

Envelope = envelope_pb2.Envelope
# Payload -> the notification it becomes.
DraftOf = Callable[[Any], domain.Draft]
# Told the id of each new notification once it is committed (the sender's wake-up).
Wake = Callable[[str], None]


def welcome(msg: user_pb2.UserCreated) -> domain.Draft:
    return domain.welcome(msg.user.id, msg.user.name)


def receipt(msg: payment_pb2.PaymentCompleted) -> domain.Draft:
    p = msg.payment
    return domain.receipt(p.user_id, p.order_id, p.amount_cents, p.currency)


def payment_failed(msg: payment_pb2.PaymentFailed) -> domain.Draft:
    p = msg.payment
    reason = msg.reason or p.decline_reason
    return domain.payment_failed(p.user_id, p.order_id, p.amount_cents, p.currency, reason)


def payment_refunded(msg: payment_pb2.PaymentRefunded) -> domain.Draft:
    p = msg.payment
    return domain.refund(p.user_id, p.order_id, p.refunded_cents, p.currency)


def order_confirmed(msg: order_pb2.OrderConfirmed) -> domain.Draft:
    o = msg.order
    return domain.order_confirmed(o.user_id, o.id, o.total_cents, o.currency)


def order_cancelled(msg: order_pb2.OrderCancelled) -> domain.Draft:
    o = msg.order
    return domain.order_cancelled(o.user_id, o.id, msg.reason or o.cancel_reason)


def order_shipped(msg: shipping_pb2.OrderShipped) -> domain.Draft:
    s = msg.shipment
    return domain.shipped(s.user_id, s.order_id, s.tracking_number, s.carrier)


def _handler(draft_of: DraftOf, wake: Wake | None,
             ) -> Callable[[Tx, Envelope, Any], Awaitable[AfterCommit | None]]:
    """wake: None means mail is off (no delivery rows); else called after the commit."""

    async def handle(tx: Tx, env: Envelope, msg: Any) -> AfterCommit | None:
        if isinstance(msg, user_pb2.UserCreated) and msg.user.id and msg.user.email:
            # Before the notification, so the welcome mail finds the address.
            await store.save_recipient(tx, msg.user.id, msg.user.email, msg.user.name)
        made = await store.insert(tx, draft_of(msg), env.id, mail=wake is not None,
                                  request_id=env.correlation_id)
        if made is None or wake is None:
            return None
        return lambda: wake(made)

    return handle


_ROUTES: list[tuple[str, type[Message], DraftOf]] = [
    (events.USER_CREATED, user_pb2.UserCreated, welcome),
    (events.PAYMENT_COMPLETED, payment_pb2.PaymentCompleted, receipt),
    (events.PAYMENT_FAILED, payment_pb2.PaymentFailed, payment_failed),
    (events.PAYMENT_REFUNDED, payment_pb2.PaymentRefunded, payment_refunded),
    (events.ORDER_CONFIRMED, order_pb2.OrderConfirmed, order_confirmed),
    (events.ORDER_CANCELLED, order_pb2.OrderCancelled, order_cancelled),
    (events.ORDER_SHIPPED, shipping_pb2.OrderShipped, order_shipped),
]


def routes(wake_sender: Wake | None = None) -> list[Route]:
    """The consumer's routes; `wake_sender` given: every notification is also mailed."""
    return [Route(subject, payload, _handler(draft_of, wake_sender))
            for subject, payload, draft_of in _ROUTES]
