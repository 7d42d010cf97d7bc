"""Composition root of the product service: `python -m services.product`. Needs no NATS:
the catalogue publishes no events."""

from __future__ import annotations

import logging

from shop.product.v1 import product_pb2, product_pb2_grpc

from services.common.demo import CATALOGUE as DEMO
from services.common.schema import service_migrations
from services.common.server import App, run_service
from services.common.settings import Settings
from services.common.storage import open_storage
from services.common.wiring import Wiring
from services.product.domain import Catalogue, Product
from services.product.servicer import ProductServicer
from services.product.store import ProductStore

SERVICE = product_pb2.DESCRIPTOR.services_by_name["ProductService"]

log = logging.getLogger("shop.product")

DEMO_PRODUCTS = tuple(
    Product(p.id, p.name, p.description, p.category, p.price_cents, p.currency) for p in DEMO
)


async def build(settings: Settings, wiring: Wiring) -> App:
    # Writes are rare (CreateProduct), so a full fsync per commit costs nothing that matters.
    db = await open_storage(settings, service_migrations("product"), durable=True)
    store = ProductStore(db)
    seeded = await store.seed(DEMO_PRODUCTS)
    servicer = ProductServicer(store, Catalogue())
    await servicer.catch_up()
    log.info("catalogue loaded", extra={"products": len(servicer.catalogue), "seeded": seeded})
    refresh_s = settings.product_refresh_s

    async def follow() -> None:
        await servicer.follow(refresh_s)

    return App.serving(
        SERVICE,
        product_pb2_grpc.add_ProductServiceServicer_to_server,
        servicer,
        tasks=[follow],
        closers=[db.close],
    )


def main() -> None:
    run_service("product", build)


if __name__ == "__main__":
    main()
