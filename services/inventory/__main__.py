"""Composition root of the inventory service: store, servicer, outbox relay."""

from __future__ import annotations

import asyncio
import logging

from grpc import aio
from shop.inventory.v1 import inventory_pb2, inventory_pb2_grpc

from services.common.bus import Bus
from services.common.db import Database
from services.common.demo import CATALOGUE
from services.common.outbox import OutboxRelay
from services.common.server import App, run_service
from services.common.settings import Settings
from services.inventory.servicer import InventoryServicer
from services.inventory.store import SCHEMA, InventoryStore

log = logging.getLogger("shop.inventory")

SERVICE_NAME = inventory_pb2.DESCRIPTOR.services_by_name["InventoryService"].full_name


class _Relay:
    """The outbox relay, started once NATS answers: reservations are served (and their
    events kept in the outbox) while NATS is down."""

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
                await OutboxRelay(self.db, self.bus).run()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("outbox relay not running: %r; retrying in %.1fs", e, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def close(self) -> None:
        if self.bus is not None:
            await self.bus.close()


async def build(settings: Settings) -> App:
    # durable: stock is money's twin; a lost commit would break the stock invariant.
    db = await Database.open(settings.db_path, schema=SCHEMA, durable=True)
    store = InventoryStore(db)
    await store.seed((p.id, p.stock) for p in CATALOGUE)
    servicer = InventoryServicer(store)
    relay = _Relay(settings, db)

    def register(server: aio.Server) -> None:
        inventory_pb2_grpc.add_InventoryServiceServicer_to_server(servicer, server)

    return App(grpc_services=[SERVICE_NAME], register=register, tasks=[relay.run],
               on_stop=[relay.close, db.close])


def main() -> None:
    run_service("inventory", build)


if __name__ == "__main__":
    main()
