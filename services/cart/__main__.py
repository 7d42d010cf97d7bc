"""Composition root of the cart service: store, product client, servicer, order consumer."""

from __future__ import annotations

import asyncio
import logging

from grpc import aio
from shop.cart.v1 import cart_pb2, cart_pb2_grpc
from shop.product.v1 import product_pb2_grpc

from services.cart.handlers import DURABLE, routes
from services.cart.servicer import CartServicer
from services.cart.store import SCHEMA, CartStore
from services.common.bus import Bus
from services.common.clients import Downstream
from services.common.consumer import EventConsumer
from services.common.db import Database
from services.common.server import App, run_service
from services.common.settings import Settings

log = logging.getLogger("shop.cart")

SERVICE_NAME = cart_pb2.DESCRIPTOR.services_by_name["CartService"].full_name


class _Consumer:
    """The order.confirmed consumer, started once NATS answers: the cart serves gRPC
    while NATS is down, and catches up from the durable consumer afterwards."""

    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db
        self.bus: Bus | None = None

    async def run(self) -> None:
        backoff = 0.5
        while True:
            try:
                if self.bus is None:
                    self.bus = await Bus.connect(self.settings.nats_url,
                                                 name=self.settings.instance_id)
                await self.bus.ensure_streams()
                await EventConsumer(self.bus, self.db, durable=DURABLE, routes=routes()).run()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("order consumer not running: %r; retrying in %.1fs", e, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def close(self) -> None:
        if self.bus is not None:
            await self.bus.close()


async def build(settings: Settings) -> App:
    # Not durable: a cart lost to a power cut costs a few clicks, not money or stock.
    db = await Database.open(settings.db_path, schema=SCHEMA, durable=False)
    products = Downstream("product", product_pb2_grpc.ProductServiceStub)
    servicer = CartServicer(CartStore(db), products)
    consumer = _Consumer(settings, db)

    def register(server: aio.Server) -> None:
        cart_pb2_grpc.add_CartServiceServicer_to_server(servicer, server)

    return App(grpc_services=[SERVICE_NAME], register=register, tasks=[consumer.run],
               on_stop=[consumer.close, products.close, db.close])


def main() -> None:
    run_service("cart", build)


if __name__ == "__main__":
    main()
