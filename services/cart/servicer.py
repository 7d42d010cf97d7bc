"""CartService over gRPC: proto <-> domain, the product check, the caller's identity."""

from __future__ import annotations

from typing import Any

import grpc
from grpc import aio
from shop.cart.v1 import cart_pb2, cart_pb2_grpc
from shop.product.v1 import product_pb2, product_pb2_grpc

from services.cart import domain
from services.cart.convert import cart_pb
from services.cart.store import CartRepository
from services.common.clients import Downstream
from services.common.errors import InvalidArgument, NotFound, Unavailable
from services.common.identity import resolve_user


class CartServicer(cart_pb2_grpc.CartServiceServicer):
    def __init__(self, store: CartRepository,
                 products: Downstream[product_pb2_grpc.ProductServiceAsyncStub]) -> None:
        self.store = store
        self.products = products

    async def GetCart(self, request: cart_pb2.GetCartRequest,
                      context: aio.ServicerContext[Any, Any]) -> cart_pb2.GetCartResponse:
        user_id = resolve_user(request.user_id, for_read=True)
        return cart_pb2.GetCartResponse(cart=cart_pb(await self.store.get(user_id)))

    async def AddItem(self, request: cart_pb2.AddItemRequest,
                      context: aio.ServicerContext[Any, Any]) -> cart_pb2.AddItemResponse:
        user_id = resolve_user(request.user_id, for_read=False)
        product_id = domain.validate_product_id(request.product_id)
        domain.validate_quantity(request.quantity)
        product = await self._product(product_id)
        cart = await self.store.add(user_id, product, request.quantity)
        return cart_pb2.AddItemResponse(cart=cart_pb(cart))

    async def RemoveItem(self, request: cart_pb2.RemoveItemRequest,
                         context: aio.ServicerContext[Any, Any]) -> cart_pb2.RemoveItemResponse:
        user_id = resolve_user(request.user_id, for_read=False)
        product_id = domain.validate_product_id(request.product_id)
        cart = await self.store.remove(user_id, product_id)
        return cart_pb2.RemoveItemResponse(cart=cart_pb(cart))

    async def ClearCart(self, request: cart_pb2.ClearCartRequest,
                        context: aio.ServicerContext[Any, Any]) -> cart_pb2.ClearCartResponse:
        user_id = resolve_user(request.user_id, for_read=False)
        return cart_pb2.ClearCartResponse(cart=cart_pb(await self.store.clear(user_id)))

    async def _product(self, product_id: str) -> domain.ProductInfo:
        """The product as the product service has it; its errors in the cart's words."""
        try:
            reply = await self.products.call(
                lambda s: s.GetProduct, product_pb2.GetProductRequest(id=product_id),
                idempotent=True)
        except aio.AioRpcError as err:
            code = err.code()
            if code == grpc.StatusCode.NOT_FOUND:
                raise NotFound(f"product {product_id} not found") from None
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                raise InvalidArgument(err.details() or f"invalid product {product_id}") from None
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise Unavailable("product service unavailable; try again") from None
            raise
        p = reply.product
        return domain.ProductInfo(p.id or product_id, p.name, p.price_cents,
                                  p.currency or domain.DEFAULT_CURRENCY)
