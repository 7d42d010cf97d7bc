"""Domain orders <-> shop.order.v1 messages."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp
from shop.order.v1 import order_pb2

from services.order.domain import Order, OrderStatus

_STATUS = {s: order_pb2.OrderStatus.Value(f"ORDER_STATUS_{s.value}") for s in OrderStatus}


def status_pb(status: OrderStatus) -> order_pb2.OrderStatus.ValueType:
    return _STATUS[status]


def timestamp(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def order_pb(order: Order) -> order_pb2.Order:
    return order_pb2.Order(
        id=order.id,
        user_id=order.user_id,
        items=[order_pb2.OrderItem(product_id=ln.product_id, quantity=ln.quantity,
                                   unit_price_cents=ln.unit_price_cents)
               for ln in order.items],
        total_cents=order.total_cents,
        currency=order.currency,
        status=_STATUS[order.status],
        cancel_reason=order.cancel_reason,
        create_time=timestamp(order.create_time),
        update_time=timestamp(order.update_time),
        tracking_number=order.tracking_number,
        from_cart=order.from_cart,
    )
