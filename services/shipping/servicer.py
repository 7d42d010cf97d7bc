"""ShippingService over gRPC: proto <-> domain. No SQL here."""

from __future__ import annotations

from typing import Any

from grpc import aio
from shop.shipping.v1 import shipping_pb2, shipping_pb2_grpc

from services.common.errors import NotFound
from services.common.identity import resolve_user
from services.shipping import domain
from services.shipping.convert import cancelled_before_confirmed, to_proto
from services.shipping.store import ShippingRepository


class ShippingServicer(shipping_pb2_grpc.ShippingServiceServicer):
    def __init__(self, store: ShippingRepository) -> None:
        self.store = store

    async def GetShipment(
        self, request: shipping_pb2.GetShipmentRequest, context: aio.ServicerContext[Any, Any]
    ) -> shipping_pb2.GetShipmentResponse:
        order_id = domain.validate_order_id(request.order_id)
        missing = NotFound(f"shipment for order {order_id} not found")
        shipment = await self.store.get(order_id)
        if shipment is None:
            raise missing
        try:
            resolve_user(shipment.user_id, for_read=True)
        except NotFound:
            # Another user's shipment looks exactly like a missing one.
            raise missing from None
        return shipping_pb2.GetShipmentResponse(shipment=to_proto(shipment))

    async def CancelShipment(
        self, request: shipping_pb2.CancelShipmentRequest, context: aio.ServicerContext[Any, Any]
    ) -> shipping_pb2.CancelShipmentResponse:
        order_id = domain.validate_order_id(request.order_id)
        shipment = await self.store.cancel(order_id)
        msg = cancelled_before_confirmed(order_id) if shipment is None else to_proto(shipment)
        return shipping_pb2.CancelShipmentResponse(shipment=msg)
