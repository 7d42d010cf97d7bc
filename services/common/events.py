"""The event catalogue: subjects, their payload message and the producing service."""

from __future__ import annotations

from typing import NamedTuple

from google.protobuf.message import Message
from shop.inventory.v1 import inventory_pb2
from shop.order.v1 import order_pb2
from shop.payment.v1 import payment_pb2
from shop.shipping.v1 import shipping_pb2
from shop.user.v1 import user_pb2

__all__ = [
    "AGGREGATES",
    "CATALOGUE",
    "DLQ_STREAM",
    "INVENTORY_RELEASED",
    "INVENTORY_RESERVED",
    "INVENTORY_RESTOCKED",
    "ORDER_CANCELLED",
    "ORDER_CONFIRMED",
    "ORDER_CREATED",
    "ORDER_REQUIRES_ATTENTION",
    "ORDER_SHIPPED",
    "PAYMENT_COMPLETED",
    "PAYMENT_FAILED",
    "PAYMENT_REFUNDED",
    "STREAM",
    "USER_CREATED",
    "EventSpec",
    "payload_type",
    "spec_for",
]

STREAM = "SHOP_EVENTS"
DLQ_STREAM = "SHOP_DLQ"
# Every subject is `<aggregate>.<event>`; the stream takes `<aggregate>.>` for each.
AGGREGATES = ("user", "order", "payment", "inventory")

USER_CREATED = "user.created"
ORDER_CREATED = "order.created"
ORDER_CONFIRMED = "order.confirmed"
ORDER_CANCELLED = "order.cancelled"
ORDER_REQUIRES_ATTENTION = "order.requires_attention"
ORDER_SHIPPED = "order.shipped"
PAYMENT_COMPLETED = "payment.completed"
PAYMENT_FAILED = "payment.failed"
PAYMENT_REFUNDED = "payment.refunded"
INVENTORY_RESERVED = "inventory.reserved"
INVENTORY_RELEASED = "inventory.released"
INVENTORY_RESTOCKED = "inventory.restocked"


class EventSpec(NamedTuple):
    payload_type: type[Message]
    producer: str


CATALOGUE: dict[str, EventSpec] = {
    USER_CREATED: EventSpec(user_pb2.UserCreated, "user"),
    ORDER_CREATED: EventSpec(order_pb2.OrderCreated, "order"),
    ORDER_CONFIRMED: EventSpec(order_pb2.OrderConfirmed, "order"),
    ORDER_CANCELLED: EventSpec(order_pb2.OrderCancelled, "order"),
    ORDER_REQUIRES_ATTENTION: EventSpec(order_pb2.OrderRequiresAttention, "order"),
    PAYMENT_COMPLETED: EventSpec(payment_pb2.PaymentCompleted, "payment"),
    PAYMENT_FAILED: EventSpec(payment_pb2.PaymentFailed, "payment"),
    PAYMENT_REFUNDED: EventSpec(payment_pb2.PaymentRefunded, "payment"),
    INVENTORY_RESERVED: EventSpec(inventory_pb2.StockReserved, "inventory"),
    INVENTORY_RELEASED: EventSpec(inventory_pb2.StockReleased, "inventory"),
    INVENTORY_RESTOCKED: EventSpec(inventory_pb2.StockRestocked, "inventory"),
    ORDER_SHIPPED: EventSpec(shipping_pb2.OrderShipped, "shipping"),
}

_BY_TYPE_NAME: dict[str, type[Message]] = {
    spec.payload_type.DESCRIPTOR.full_name: spec.payload_type for spec in CATALOGUE.values()
}


def spec_for(subject: str) -> EventSpec:
    """KeyError for a subject that is not in the catalogue."""
    return CATALOGUE[subject]


def payload_type(type_name: str) -> type[Message]:
    """Message class for an Envelope's `type` (or its Any type URL), to unpack the payload."""
    name = type_name.rsplit("/", 1)[-1]
    try:
        return _BY_TYPE_NAME[name]
    except KeyError:
        raise KeyError(f"unknown event payload type {type_name!r}") from None
