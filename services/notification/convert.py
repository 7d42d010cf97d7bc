"""Domain notification -> proto."""

from __future__ import annotations

from shop.notification.v1 import notification_pb2 as pb

from services.common.timestamps import set_timestamp
from services.notification.delivery import DeliveryStatus
from services.notification.domain import Kind, Notification

_KIND: dict[Kind, pb.NotificationKind.ValueType] = {
    Kind.WELCOME: pb.NOTIFICATION_KIND_WELCOME,
    Kind.RECEIPT: pb.NOTIFICATION_KIND_RECEIPT,
    Kind.PAYMENT_FAILED: pb.NOTIFICATION_KIND_PAYMENT_FAILED,
    Kind.ORDER_CONFIRMED: pb.NOTIFICATION_KIND_ORDER_CONFIRMED,
    Kind.ORDER_CANCELLED: pb.NOTIFICATION_KIND_ORDER_CANCELLED,
    Kind.SHIPPED: pb.NOTIFICATION_KIND_SHIPPED,
    Kind.REFUND: pb.NOTIFICATION_KIND_REFUND,
}

_DELIVERY: dict[DeliveryStatus, pb.DeliveryStatus.ValueType] = {
    DeliveryStatus.NONE: pb.DELIVERY_STATUS_UNSPECIFIED,
    DeliveryStatus.PENDING: pb.DELIVERY_STATUS_PENDING,
    DeliveryStatus.SENT: pb.DELIVERY_STATUS_SENT,
    DeliveryStatus.FAILED: pb.DELIVERY_STATUS_FAILED,
}


def to_proto(n: Notification) -> pb.Notification:
    msg = pb.Notification(
        id=n.id,
        user_id=n.user_id,
        kind=_KIND[n.kind],
        subject=n.subject,
        body=n.body,
        read=n.read,
        event_id=n.event_id,
        delivery=_DELIVERY[n.delivery],
        delivery_error=n.delivery_error,
    )
    set_timestamp(msg.create_time, n.created_at)
    return msg
