"""Composition root of the shipping service: `python -m services.shipping`."""

from __future__ import annotations

from grpc import aio
from shop.shipping.v1 import shipping_pb2, shipping_pb2_grpc

from services.common.bus import Bus
from services.common.consumer import EventConsumer
from services.common.db import Database
from services.common.outbox import OutboxRelay
from services.common.server import App, run_service
from services.common.settings import Settings
from services.shipping import handlers
from services.shipping.servicer import ShippingServicer
from services.shipping.store import SCHEMA, ShippingStore

SERVICE_NAME = shipping_pb2.DESCRIPTOR.services_by_name["ShippingService"].full_name


async def build(settings: Settings) -> App:
    # durable: a lost commit would re-ship an acknowledged order with a new tracking number.
    db = await Database.open(settings.db_path, schema=SCHEMA, durable=True)
    bus = await Bus.connect(settings.nats_url, name=settings.instance_id)
    await bus.ensure_streams()
    consumer = EventConsumer(bus, db, durable=handlers.DURABLE, routes=handlers.routes())
    relay = OutboxRelay(db, bus)
    servicer = ShippingServicer(ShippingStore(db))

    def register(server: aio.Server) -> None:
        shipping_pb2_grpc.add_ShippingServiceServicer_to_server(servicer, server)

    return App(
        grpc_services=[SERVICE_NAME],
        register=register,
        tasks=[consumer.run, relay.run],
        on_stop=[bus.close, db.close],
    )


def main() -> None:
    run_service("shipping", build)


if __name__ == "__main__":
    main()
