"""InventoryService over gRPC: proto <-> domain. DomainErrors become status codes in the
per-call wrapper (interceptors.py)."""

from __future__ import annotations

from typing import Any

from grpc import aio
from shop.inventory.v1 import inventory_pb2, inventory_pb2_grpc

from services.common.storage import Storage
from services.inventory import domain
from services.inventory.convert import history_pb, level_pb, reservation_pb, stock_pb
from services.inventory.rebuild import rebuild
from services.inventory.store import InventoryRepository


class InventoryServicer(inventory_pb2_grpc.InventoryServiceServicer):
    def __init__(self, store: InventoryRepository, storage: Storage) -> None:
        self.store = store
        # The rebuild replays the ledger's tables directly, batch by batch.
        self.storage = storage

    async def GetStock(self, request: inventory_pb2.GetStockRequest,
                       context: aio.ServicerContext[Any, Any]) -> inventory_pb2.GetStockResponse:
        product_id = domain.validate_product_id(request.product_id)
        if request.HasField("as_of"):
            at = domain.validate_as_of(request.as_of.seconds, request.as_of.nanos)
            stock = await self.store.stock_at(product_id, at)
        else:
            stock = await self.store.get_stock(product_id)
        return inventory_pb2.GetStockResponse(stock=stock_pb(stock))

    async def GetStockHistory(
            self, request: inventory_pb2.GetStockHistoryRequest,
            context: aio.ServicerContext[Any, Any]) -> inventory_pb2.GetStockHistoryResponse:
        product_id = domain.validate_product_id(request.product_id)
        size = domain.page_size(request.page_size)
        before = domain.decode_history_token(request.page_token, product_id)
        page = await self.store.history(product_id, size, before)
        token = ("" if page.next_before is None
                 else domain.encode_history_token(product_id, page.next_before))
        return inventory_pb2.GetStockHistoryResponse(
            events=[history_pb(e) for e in page.entries], next_page_token=token)

    async def RebuildStock(
            self, request: inventory_pb2.RebuildStockRequest,
            context: aio.ServicerContext[Any, Any]) -> inventory_pb2.RebuildStockResponse:
        report = await rebuild(self.storage, verify_only=request.verify_only,
                               from_scratch=request.from_scratch)
        return inventory_pb2.RebuildStockResponse(
            products=report.products, events=report.events, rewritten=report.rewritten,
            differences=[inventory_pb2.StockDifference(
                product_id=d.product_id, problem=d.problem,
                served=level_pb(d.product_id, d.served),
                replayed=level_pb(d.product_id, d.replayed)) for d in report.differences])

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
