"""Composition root of the inventory service: store, servicer, outbox relay, the consumer
of confirmed orders (the stock commit) and the expiry of stale reservations."""

from __future__ import annotations

import logging

from shop.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from shop.order.v1 import order_pb2_grpc

from services.common.demo import CATALOGUE
from services.common.eventing import ConsumerSpec, EventWorkers
from services.common.schema import service_migrations
from services.common.server import App, run_service
from services.common.settings import Settings
from services.common.storage import open_storage
from services.common.wiring import Wiring
from services.inventory import handlers
from services.inventory.expiry import GrpcOrderFates, ReservationExpiry
from services.inventory.servicer import InventoryServicer
from services.inventory.store import InventoryStore, snapshot_every

log = logging.getLogger("shop.inventory")

SERVICE = inventory_pb2.DESCRIPTOR.services_by_name["InventoryService"]


async def build(settings: Settings, wiring: Wiring) -> App:
    # durable: stock is money's twin; a lost commit would break the stock invariant.
    db = await open_storage(settings, service_migrations("inventory"), durable=True)
    store = InventoryStore(db, snapshot_every=snapshot_every(settings.stock.snapshot_every))
    await store.seed((p.id, p.stock) for p in CATALOGUE)
    servicer = InventoryServicer(store, db)
    # The relay starts once NATS answers: reservations are served (and their events kept
    # in the outbox) while NATS is down. The commits of confirmed orders lock the stock
    # rows the reservations use.
    events = EventWorkers(settings, db, relay=True, consumers=[
        ConsumerSpec(handlers.DURABLE, handlers.routes(store.snapshot_every), {"locked": True})])
    # A stale reservation is settled by what the order service says of its order.
    orders = wiring.downstream("order", order_pb2_grpc.OrderServiceStub, cap_s=2.0)
    ttl = settings.stock.reservation_ttl_s
    expiry = [ReservationExpiry(store, GrpcOrderFates(orders), ttl).run] if ttl > 0 else []

    return App.serving(
        SERVICE,
        inventory_pb2_grpc.add_InventoryServiceServicer_to_server,
        servicer,
        tasks=[*events.tasks, *expiry],
        closers=[db.close, orders.close, *events.on_stop],
    )


def main() -> None:
    run_service("inventory", build)


if __name__ == "__main__":
    main()
