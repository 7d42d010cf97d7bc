"""Composition root of the notification service: `python -m services.notification`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from shop.notification.v1 import notification_pb2, notification_pb2_grpc

from services.common import metrics as shop_metrics
from services.common.eventing import ConsumerSpec, EventWorkers
from services.common.schema import service_migrations
from services.common.server import App, run_service
from services.common.settings import Settings
from services.common.storage import open_storage
from services.common.wiring import Wiring
from services.notification import handlers
from services.notification.mailconfig import mail_settings
from services.notification.metrics import MailMetrics
from services.notification.sender import MailSender
from services.notification.servicer import NotificationServicer
from services.notification.store import DeliveryStore, NotificationStore

SERVICE = notification_pb2.DESCRIPTOR.services_by_name["NotificationService"]


async def build(settings: Settings, wiring: Wiring) -> App:
    mail = mail_settings(settings.mail)
    # Messages are re-creatable from the stream, so NORMAL sync is enough here.
    db = await open_storage(settings, service_migrations("notification"), durable=False)
    metrics = MailMetrics()
    tasks: list[Callable[[], Awaitable[None]]] = []
    sender = None
    if mail.target is not None:
        sender = MailSender(DeliveryStore(db), mail, metrics, owner=settings.instance_id)
        tasks.append(sender.run)
        # The backlog gauges are read from the delivery outbox at each scrape.
        shop_metrics.current().add_refresher(sender.refresh_metrics)
    # Consumes once NATS answers; the durable consumer catches up on what it missed.
    routes = handlers.routes(sender.wake if sender is not None else None)
    events = EventWorkers(settings, db, relay=False,
                          consumers=[ConsumerSpec(handlers.DURABLE, routes)])
    servicer = NotificationServicer(NotificationStore(db))

    return App.serving(
        SERVICE,
        notification_pb2_grpc.add_NotificationServiceServicer_to_server,
        servicer,
        tasks=[*events.tasks, *tasks],
        closers=[db.close, *events.on_stop],
    )


def main() -> None:
    run_service("notification", build)


if __name__ == "__main__":
    main()
