"""ProductService over gRPC: proto <-> domain, reads served from memory. No SQL here."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from grpc import aio
from shop.product.v1 import product_pb2, product_pb2_grpc

from services.common.errors import NotFound
from services.product import domain
from services.product.convert import to_proto
from services.product.domain import Catalogue, Product
from services.product.store import START, Cursor, ProductRepository

log = logging.getLogger("shop.product")


class ProductServicer(product_pb2_grpc.ProductServiceServicer):
    """Reads come from `catalogue` (no database on the hot path). Products made by other
    instances sharing the database arrive through `follow()`, or at once on a lookup miss."""

    def __init__(self, store: ProductRepository, catalogue: Catalogue,
                 cursor: Cursor = START) -> None:
        self.store = store
        self.catalogue = catalogue
        self._cursor = cursor  # how far the catalogue has loaded the table
        self._lock = asyncio.Lock()
        self._refreshes = 0
        # Responses are immutable once built: GetProduct reuses them per product.
        self._protos: dict[str, product_pb2.Product] = {}

    async def catch_up(self) -> None:
        """Load rows committed since the last load. Concurrent callers share one query."""
        seen = self._refreshes
        async with self._lock:
            if self._refreshes != seen:
                return  # a refresh finished while we waited: it covered our commit too
            products, self._cursor = await self.store.load_since(self._cursor)
            for p in products:
                self.catalogue.add(p)
            self._refreshes += 1

    async def follow(self, interval_s: float = 1.0) -> None:
        """Background task: pick up products created by other instances."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.catch_up()
            except Exception:
                log.warning("catalogue refresh failed", exc_info=True)

    def _proto(self, p: Product) -> product_pb2.Product:
        msg = self._protos.get(p.id)
        if msg is None:
            msg = self._protos[p.id] = to_proto(p)
        return msg

    async def _lookup(self, ids: list[str]) -> list[Product]:
        known, missing = self.catalogue.split(ids)
        if missing:
            await self.catch_up()
            known, missing = self.catalogue.split(ids)
        if missing:
            raise NotFound(domain.not_found_message(missing))
        return [known[pid] for pid in ids]

    async def GetProduct(
        self, request: product_pb2.GetProductRequest, context_: aio.ServicerContext[Any, Any]
    ) -> product_pb2.GetProductResponse:
        p = self.catalogue.get(request.id)
        if p is None:
            [p] = await self._lookup([domain.validate_id(request.id)])
        return product_pb2.GetProductResponse(product=self._proto(p))

    async def ListProducts(
        self, request: product_pb2.ListProductsRequest, context_: aio.ServicerContext[Any, Any]
    ) -> product_pb2.ListProductsResponse:
        query = domain.parse_list_request(request.page_size, request.page_token,
                                          request.query, request.category)
        page, token = self.catalogue.page(query)
        return product_pb2.ListProductsResponse(products=[self._proto(p) for p in page],
                                                next_page_token=token)

    async def BatchGetProducts(
        self, request: product_pb2.BatchGetProductsRequest, context_: aio.ServicerContext[Any, Any]
    ) -> product_pb2.BatchGetProductsResponse:
        products = await self._lookup(domain.validate_batch(list(request.ids)))
        return product_pb2.BatchGetProductsResponse(products=[self._proto(p) for p in products])

    async def CreateProduct(
        self, request: product_pb2.CreateProductRequest, context_: aio.ServicerContext[Any, Any]
    ) -> product_pb2.CreateProductResponse:
        m = request.product
        product = domain.validate_new_product(
            product_id=m.id, name=m.name, description=m.description, category=m.category,
            price_cents=m.price_cents, currency=m.currency)
        await self.store.create(product)  # AlreadyExists on an id clash, even across instances
        self.catalogue.add(product)  # False if follow() loaded it first: same product
        return product_pb2.CreateProductResponse(product=to_proto(product))
