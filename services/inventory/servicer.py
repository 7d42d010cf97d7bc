"""InventoryService over gRPC: proto <-> domain. DomainErrors become status codes in the
server interceptor."""

from __future__ import annotations

from typing import Any

from grpc import aio
from shop.inventory.v1 import inventory_pb2, inventory_pb2_grpc

from services.inventory import domain
from services.inventory.convert import reservation_pb, stock_pb
from services.inventory.store import InventoryStore


class InventoryServicer(inventory_pb2_grpc.InventoryServiceServicer):
    def __init__(self, store: InventoryStore) -> None:
        self.store = store

    async def GetStock(self, request: inventory_pb2.GetStockRequest,
                       context: aio.ServicerContext[Any, Any]) -> inventory_pb2.GetStockResponse:
        product_id = domain.validate_product_id(request.product_id)
        stock = await self.store.get_stock(product_id)
        return inventory_pb2.GetStockResponse(stock=stock_pb(stock))

    async def SetStock(self, request: inventory_pb2.SetStockRequest,
                       context: aio.ServicerContext[Any, Any]) -> inventory_pb2.SetStockResponse:
        product_id, available = domain.validate_set_stock(request.product_id, request.available)
        stock = await self.store.set_stock(product_id, available)
        return inventory_pb2.SetStockResponse(stock=stock_pb(stock))

    async def ReserveStock(self, request: inventory_pb2.ReserveStockRequest,
                           context: aio.ServicerContext[Any, Any],
                           ) -> inventory_pb2.ReserveStockResponse:
        lines = domain.validate_reserve(
            request.order_id, ((i.product_id, i.quantity) for i in request.items))
        # A REJECTED or RELEASED outcome is stored first, then refused (FAILED_PRECONDITION).
        reservation = domain.outcome(await self.store.reserve(request.order_id, lines))
        return inventory_pb2.ReserveStockResponse(reservation=reservation_pb(reservation))

    async def ReleaseStock(self, request: inventory_pb2.ReleaseStockRequest,
                           context: aio.ServicerContext[Any, Any],
                           ) -> inventory_pb2.ReleaseStockResponse:
        order_id = domain.validate_order_id(request.order_id)
        reservation = await self.store.release(order_id)
        return inventory_pb2.ReleaseStockResponse(reservation=reservation_pb(reservation))

    async def CommitStock(self, request: inventory_pb2.CommitStockRequest,
                          context: aio.ServicerContext[Any, Any],
                          ) -> inventory_pb2.CommitStockResponse:
        order_id = domain.validate_order_id(request.order_id)
        reservation = await self.store.commit(order_id)
        return inventory_pb2.CommitStockResponse(reservation=reservation_pb(reservation))

    async def RestockStock(self, request: inventory_pb2.RestockStockRequest,
                           context: aio.ServicerContext[Any, Any],
                           ) -> inventory_pb2.RestockStockResponse:
        order_id = domain.validate_order_id(request.order_id)
        reservation = await self.store.restock(order_id)
        return inventory_pb2.RestockStockResponse(reservation=reservation_pb(reservation))
