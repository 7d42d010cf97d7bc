"""Domain payment -> proto, shared by the servicer (responses) and the store (events)."""

from __future__ import annotations

from shop.payment.v1 import payment_pb2

from services.common.timestamps import timestamp
from services.payment.domain import Payment, Status

_STATUS: dict[Status, payment_pb2.PaymentStatus.ValueType] = {
    Status.CHARGED: payment_pb2.PAYMENT_STATUS_CHARGED,
    Status.DECLINED: payment_pb2.PAYMENT_STATUS_DECLINED,
    Status.REFUNDED: payment_pb2.PAYMENT_STATUS_REFUNDED,
    # A tombstone is no payment at all: nothing was charged, nothing refunded.
    Status.VOID: payment_pb2.PAYMENT_STATUS_UNSPECIFIED,
}


def to_proto(p: Payment) -> payment_pb2.Payment:
    return payment_pb2.Payment(
        order_id=p.order_id,
        user_id=p.user_id,
        status=_STATUS[p.status],
        amount_cents=p.amount_cents,
        refunded_cents=p.refunded_cents,
        currency=p.currency,
        decline_reason=p.decline_reason,
        create_time=timestamp(p.created_at),
        update_time=timestamp(p.updated_at),
    )
