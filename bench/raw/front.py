"""The raw HTTP front: a minimal Starlette app on uvicorn (httptools, uvloop).

`python -m bench.raw.front --port P --targets ADDR[,ADDR...]`
  GET  /api/products/{id}  one grpc.aio GetProduct on the first target (raw hop)
  GET  /api/dashboard      GetProduct on three targets at once, asyncio.gather (raw fan-out)
  POST /api/orders         OrderService.CreateOrder on the first target (raw saga) -> 201
  GET  /healthz            200
No auth, no limits, no breakers: the ceiling of the stack, not a rival to the gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

import grpc
import uvicorn
from shop.order.v1 import order_pb2, order_pb2_grpc
from shop.product.v1 import product_pb2, product_pb2_grpc
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

__all__ = ["create_app", "main"]

_CALL_TIMEOUT_S = 5.0


def _product(p: Any) -> dict[str, Any]:
    return {"id": p.id, "name": p.name, "description": p.description, "category": p.category,
            "priceCents": str(p.price_cents), "currency": p.currency}


def create_app(targets: list[str]) -> Starlette:
    stubs: dict[str, Any] = {}

    def stubs_made() -> None:
        # One channel per target, created inside the running loop and reused.
        if not stubs:
            stubs["products"] = [product_pb2_grpc.ProductServiceStub(
                grpc.aio.insecure_channel(t)) for t in targets]
            stubs["order"] = order_pb2_grpc.OrderServiceStub(grpc.aio.insecure_channel(targets[0]))

    async def product(request: Request) -> Response:
        stubs_made()
        reply = await stubs["products"][0].GetProduct(
            product_pb2.GetProductRequest(id=request.path_params["id"]), timeout=_CALL_TIMEOUT_S)
        return JSONResponse(_product(reply.product))

    async def dashboard(request: Request) -> Response:
        stubs_made()
        req = product_pb2.GetProductRequest(id="espresso-machine")
        replies = await asyncio.gather(
            *(s.GetProduct(req, timeout=_CALL_TIMEOUT_S) for s in stubs["products"][:3]))
        return JSONResponse({"parts": [_product(r.product) for r in replies]})

    async def orders(request: Request) -> Response:
        stubs_made()
        body = json.loads(await request.body())
        req = order_pb2.CreateOrderRequest(
            user_id="bench", card_token=body.get("cardToken", ""),
            items=[order_pb2.CreateOrderItem(product_id=i["productId"], quantity=i["quantity"])
                   for i in body.get("items", [])])
        reply = await stubs["order"].CreateOrder(req, timeout=_CALL_TIMEOUT_S)
        o = reply.order
        return JSONResponse({"id": o.id, "status": order_pb2.OrderStatus.Name(o.status),
                             "totalCents": str(o.total_cents), "currency": o.currency},
                            status_code=201)

    async def healthz(request: Request) -> Response:
        return Response(b"ok")

    return Starlette(routes=[
        Route("/api/products/{id}", product),
        Route("/api/dashboard", dashboard),
        Route("/api/orders", orders, methods=["POST"]),
        Route("/healthz", healthz),
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.raw.front")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--targets", required=True)
    args = parser.parse_args(argv)
    uvicorn.run(create_app(args.targets.split(",")), host="127.0.0.1", port=args.port,
                http="httptools", loop="uvloop", lifespan="off", access_log=False,
                log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
