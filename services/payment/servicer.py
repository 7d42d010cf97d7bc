"""PaymentService over gRPC: proto <-> domain. No SQL here; errors are DomainErrors."""

from __future__ import annotations

from typing import Any

from grpc import aio
from shop.payment.v1 import payment_pb2, payment_pb2_grpc

from services.common import context
from services.common.errors import NotFound
from services.common.identity import resolve_user
from services.payment import domain
from services.payment.convert import to_proto
from services.payment.domain import Status
from services.payment.store import PaymentRepository

MAX_REASON_LEN = 500


class PaymentServicer(payment_pb2_grpc.PaymentServiceServicer):
    def __init__(self, store: PaymentRepository) -> None:
        self.store = store

    async def Charge(
        self, request: payment_pb2.ChargeRequest, context_: aio.ServicerContext[Any, Any]
    ) -> payment_pb2.ChargeResponse:
        user_id = resolve_user(request.user_id, for_read=False)
        req = domain.validate_charge(request.order_id, user_id, request.amount_cents,
                                     request.currency, request.card_token)
        payment = await self.store.charge(req)
        # Raised after the commit: the decline and its payment.failed event are kept.
        domain.raise_if_declined(payment)
        return payment_pb2.ChargeResponse(payment=to_proto(payment))

    async def Refund(
        self, request: payment_pb2.RefundRequest, context_: aio.ServicerContext[Any, Any]
    ) -> payment_pb2.RefundResponse:
        """Always OK for an order id (it is the saga's compensation). An order that was
        never charged gets a tombstone and answers status UNSPECIFIED, amount 0: nothing
        was taken, and a late Charge for it is refused."""
        order_id = domain.validate_order_id(request.order_id)
        reason = request.reason.strip()[:MAX_REASON_LEN]
        payment = await self.store.refund(order_id, reason, caller=context.user_id())
        return payment_pb2.RefundResponse(payment=to_proto(payment))

    async def GetPayment(
        self, request: payment_pb2.GetPaymentRequest, context_: aio.ServicerContext[Any, Any]
    ) -> payment_pb2.GetPaymentResponse:
        order_id = domain.validate_order_id(request.order_id)
        missing = NotFound(f"payment for order {order_id} not found")
        payment = await self.store.get(order_id)
        if payment is None or payment.status is Status.VOID:
            raise missing
        try:
            resolve_user(payment.user_id, for_read=True)
        except NotFound:
            # Same answer as a missing payment, without naming the owner.
            raise missing from None
        return payment_pb2.GetPaymentResponse(payment=to_proto(payment))
