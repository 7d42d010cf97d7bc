"""Domain shipment -> proto, for responses and the order.shipped event."""

from __future__ import annotations

from shop.shipping.v1 import shipping_pb2

from services.common.timestamps import set_timestamp
from services.shipping.domain import Shipment, Status

_STATUS: dict[Status, shipping_pb2.ShipmentStatus.ValueType] = {
    Status.LABEL_CREATED: shipping_pb2.SHIPMENT_STATUS_LABEL_CREATED,
    Status.PENDING: shipping_pb2.SHIPMENT_STATUS_PENDING,
    Status.SHIPPED: shipping_pb2.SHIPMENT_STATUS_SHIPPED,
    Status.DELIVERED: shipping_pb2.SHIPMENT_STATUS_DELIVERED,
    Status.CANCELLED: shipping_pb2.SHIPMENT_STATUS_CANCELLED,
}


def to_proto(s: Shipment) -> shipping_pb2.Shipment:
    msg = shipping_pb2.Shipment(
        order_id=s.order_id,
        user_id=s.user_id,
        tracking_number=s.tracking_number,
        status=_STATUS[s.status],
        carrier=s.carrier,
    )
    set_timestamp(msg.create_time, s.created_at)
    if s.dispatch_at:
        set_timestamp(msg.dispatch_time, s.dispatch_at)
    return msg


def cancelled_before_confirmed(order_id: str) -> shipping_pb2.Shipment:
    """What CancelShipment answers for an order whose shipment does not exist yet."""
    return shipping_pb2.Shipment(order_id=order_id, status=shipping_pb2.SHIPMENT_STATUS_CANCELLED)
