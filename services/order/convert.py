"""Domain orders <-> shop.order.v1 messages."""

from __future__ import annotations

from shop.order.v1 import order_pb2

from services.common.timestamps import set_timestamp, timestamp
from services.order.domain import Order, OrderStatus

__all__ = ["STATUS_BY_VALUE", "order_pb", "set_timestamp", "status_pb", "timestamp"]

_STATUS = {s: order_pb2.OrderStatus.Value(f"ORDER_STATUS_{s.value}") for s in OrderStatus}
# By the stored text of the status (OrderStatus.value), for messages built from rows.
STATUS_BY_VALUE: dict[str, order_pb2.OrderStatus.ValueType] = {
    s.value: v for s, v in _STATUS.items()}

def status_pb(status: OrderStatus) -> order_pb2.OrderStatus.ValueType:
    return _STATUS[status]


def order_pb(order: Order) -> order_pb2.Order:
    msg = order_pb2.Order(
        id=order.id,
        user_id=order.user_id,
        total_cents=order.total_cents,
        currency=order.currency,
        status=_STATUS[order.status],
        cancel_reason=order.cancel_reason,
        tracking_number=order.tracking_number,
        from_cart=order.from_cart,
    )
    # Sub-messages filled in place: building them apart and passing them in copies each.
    add = msg.items.add
    for ln in order.items:
        add(product_id=ln.product_id, quantity=ln.quantity,
            unit_price_cents=ln.unit_price_cents)
    set_timestamp(msg.create_time, order.create_time)
    set_timestamp(msg.update_time, order.update_time)
    return msg
