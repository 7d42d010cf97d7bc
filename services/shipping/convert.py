"""Domain shipment -> proto, for responses and the order.shipped event."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp
from shop.shipping.v1 import shipping_pb2

from services.shipping.domain import Shipment, Status

_STATUS: dict[Status, shipping_pb2.ShipmentStatus.ValueType] = {
    Status.LABEL_CREATED: shipping_pb2.SHIPMENT_STATUS_LABEL_CREATED,
    Status.SHIPPED: shipping_pb2.SHIPMENT_STATUS_SHIPPED,
    Status.DELIVERED: shipping_pb2.SHIPMENT_STATUS_DELIVERED,
}


def to_proto(s: Shipment) -> shipping_pb2.Shipment:
    created = Timestamp()
    created.FromNanoseconds(int(s.created_at * 1_000_000_000))
    return shipping_pb2.Shipment(
        order_id=s.order_id,
        user_id=s.user_id,
        tracking_number=s.tracking_number,
        status=_STATUS[s.status],
        carrier=s.carrier,
        create_time=created,
    )
