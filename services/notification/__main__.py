"""Composition root of the notification service: `python -m services.notification`."""

from __future__ import annotations

from grpc import aio
from shop.notification.v1 import notification_pb2, notification_pb2_grpc

from services.common.bus import Bus
from services.common.consumer import EventConsumer
from services.common.db import Database
from services.common.server import App, run_service
from services.common.settings import Settings
from services.notification import handlers
from services.notification.servicer import NotificationServicer
from services.notification.store import SCHEMA, NotificationStore

SERVICE_NAME = notification_pb2.DESCRIPTOR.services_by_name["NotificationService"].full_name


async def build(settings: Settings) -> App:
    # Messages are re-creatable from the stream, so NORMAL sync is enough here.
    db = await Database.open(settings.db_path, schema=SCHEMA, durable=False)
    bus = await Bus.connect(settings.nats_url, name=settings.instance_id)
    await bus.ensure_streams()
    consumer = EventConsumer(bus, db, durable=handlers.DURABLE, routes=handlers.routes())
    servicer = NotificationServicer(NotificationStore(db))

    def register(server: aio.Server) -> None:
        notification_pb2_grpc.add_NotificationServiceServicer_to_server(servicer, server)

    return App(
        grpc_services=[SERVICE_NAME],
        register=register,
        tasks=[consumer.run],
        on_stop=[bus.close, db.close],
    )


def main() -> None:
    run_service("notification", build)


if __name__ == "__main__":
    main()
