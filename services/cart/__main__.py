"""Composition root of the cart service: store, product client, servicer, order consumer."""

from __future__ import annotations

import logging

from shop.cart.v1 import cart_pb2, cart_pb2_grpc
from shop.product.v1 import product_pb2_grpc

from services.cart.handlers import DURABLE, routes
from services.cart.servicer import CartServicer
from services.cart.store import CartStore
from services.common.eventing import ConsumerSpec, EventWorkers
from services.common.schema import service_migrations
from services.common.server import App, run_service
from services.common.settings import Settings
from services.common.storage import open_storage
from services.common.wiring import Wiring

log = logging.getLogger("shop.cart")

SERVICE = cart_pb2.DESCRIPTOR.services_by_name["CartService"]


async def build(settings: Settings, wiring: Wiring) -> App:
    # Not durable: a cart lost to a power cut costs a few clicks, not money or stock.
    db = await open_storage(settings, service_migrations("cart"), durable=False)
    products = wiring.downstream("product", product_pb2_grpc.ProductServiceStub)
    servicer = CartServicer(CartStore(db), products)
    # The order.confirmed consumer starts once NATS answers: the cart serves gRPC while
    # NATS is down, and catches up from the durable consumer afterwards.
    events = EventWorkers(settings, db, relay=False, consumers=[ConsumerSpec(DURABLE, routes())])

    return App.serving(
        SERVICE,
        cart_pb2_grpc.add_CartServiceServicer_to_server,
        servicer,
        tasks=events.tasks,
        closers=[db.close, products.close, *events.on_stop],
    )


def main() -> None:
    run_service("cart", build)


if __name__ == "__main__":
    main()
