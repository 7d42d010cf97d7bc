"""A test-only service run through run_service: ProductService with a scripted GetProduct.

GetProduct by id:
  "slow"         sleeps ECHO_SLOW_S (default 1.0) seconds, then answers
  "missing"      NotFound
  "unavailable"  errors.Unavailable (UNAVAILABLE, counts for breakers)
  "boom"         RuntimeError (INTERNAL)
  "whoami"       name = x-user-id, description = request id, category = remaining deadline
  "forward:<id>" asks the downstream "product" (PRODUCT_ADDR) for <id> and returns its answer
  anything else  a product with that id

Run it with `python -m tests.support.echo_app` (service name "echo", port ECHO_PORT, 0 = any).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from grpc import aio
from shop.product.v1 import product_pb2, product_pb2_grpc

from services.common import context
from services.common.clients import Downstream
from services.common.errors import NotFound, Unavailable
from services.common.server import App, run_service
from services.common.settings import Settings
from services.common.spiffe import GATEWAY, OPERATOR
from services.common.wiring import Wiring
from tests.support.mesh import process_wiring

SERVICE_NAME = product_pb2.DESCRIPTOR.services_by_name["ProductService"].full_name


class EchoProductServicer(product_pb2_grpc.ProductServiceServicer):
    def __init__(self, slow_s: float = 1.0, wiring: Wiring | None = None) -> None:
        self.slow_s = slow_s
        self.wiring = wiring or process_wiring()
        self.calls = 0
        self.downstream: Downstream[product_pb2_grpc.ProductServiceAsyncStub] | None = None

    async def GetProduct(
        self, request: product_pb2.GetProductRequest, context_: aio.ServicerContext[Any, Any]
    ) -> product_pb2.GetProductResponse:
        self.calls += 1
        pid = request.id
        if pid == "slow":
            await asyncio.sleep(self.slow_s)
        elif pid == "missing":
            raise NotFound(f"product {pid} not found")
        elif pid == "unavailable":
            raise Unavailable("scripted outage")
        elif pid == "boom":
            raise RuntimeError("scripted bug")
        elif pid == "whoami":
            left = context.remaining()
            return product_pb2.GetProductResponse(
                product=product_pb2.Product(
                    id=pid,
                    name=context.user_id(),
                    description=context.request_id(),
                    category="" if left is None else f"{left:.3f}",
                )
            )
        elif pid.startswith("forward:"):
            if self.downstream is None:
                self.downstream = self.wiring.downstream(
                    "product", product_pb2_grpc.ProductServiceStub)
            reply: product_pb2.GetProductResponse = await self.downstream.call(
                lambda s: s.GetProduct,
                product_pb2.GetProductRequest(id=pid.removeprefix("forward:")),
                idempotent=True,
            )
            return reply
        return product_pb2.GetProductResponse(product=product_pb2.Product(id=pid, name="echo"))

    async def ListProducts(
        self, request: product_pb2.ListProductsRequest, context_: aio.ServicerContext[Any, Any]
    ) -> product_pb2.ListProductsResponse:
        return product_pb2.ListProductsResponse()

    async def BatchGetProducts(
        self, request: product_pb2.BatchGetProductsRequest, context_: aio.ServicerContext[Any, Any]
    ) -> product_pb2.BatchGetProductsResponse:
        return product_pb2.BatchGetProductsResponse(
            products=[product_pb2.Product(id=pid) for pid in request.ids]
        )

    async def CreateProduct(
        self, request: product_pb2.CreateProductRequest, context_: aio.ServicerContext[Any, Any]
    ) -> product_pb2.CreateProductResponse:
        return product_pb2.CreateProductResponse(product=request.product)


def make_app(servicer: EchoProductServicer) -> App:
    async def close_downstream() -> None:
        if servicer.downstream is not None:
            await servicer.downstream.close()

    return App(
        grpc_services=[SERVICE_NAME],
        register=lambda server: product_pb2_grpc.add_ProductServiceServicer_to_server(
            servicer, server
        ),
        closers=[close_downstream],
    )


async def build(settings: Settings, wiring: Wiring) -> App:
    return make_app(EchoProductServicer(float(os.environ.get("ECHO_SLOW_S", "1.0")), wiring))


def main() -> None:
    # Its "forward:" calls go out as the gateway, whom the policy lets call GetProduct
    # (echo is no identity of the policy; it serves with echo's certificate).
    os.environ.setdefault("SHOP_IDENTITY", GATEWAY)
    # "echo" is no NATS user either: it registers as the operator may.
    os.environ.setdefault("SHOP_NATS_IDENTITY", OPERATOR)
    run_service("echo", build)


if __name__ == "__main__":
    main()
