"""Composition root of the shipping service: `python -m services.shipping`.

Settings beyond the shared ones:
  SHIPPING_DISPATCH_DELAY_S   how long a shipment stays PENDING (cancellable) before it is
                              dispatched (2 s)
"""

from __future__ import annotations

from shop.shipping.v1 import shipping_pb2, shipping_pb2_grpc

from services.common.eventing import ConsumerSpec, EventWorkers
from services.common.schema import service_migrations
from services.common.server import App, run_service
from services.common.settings import Settings
from services.common.storage import open_storage
from services.common.wiring import Wiring
from services.shipping import domain, handlers
from services.shipping.dispatcher import Dispatcher
from services.shipping.servicer import ShippingServicer
from services.shipping.store import ShippingStore

SERVICE = shipping_pb2.DESCRIPTOR.services_by_name["ShippingService"]


async def build(settings: Settings, wiring: Wiring) -> App:
    delay_s = domain.validate_dispatch_delay(settings.shipping_dispatch_delay_s)
    # durable: a lost commit would re-ship an acknowledged order with a new tracking number.
    db = await open_storage(settings, service_migrations("shipping"), durable=True)
    shipping = ShippingStore(db)
    dispatcher = Dispatcher(shipping)
    # order.confirmed in, order.shipped out (outbox), both once NATS answers.
    events = EventWorkers(
        settings, db, relay=True,
        consumers=[ConsumerSpec(handlers.DURABLE, handlers.routes(delay_s, dispatcher.wake))],
    )
    servicer = ShippingServicer(shipping)

    return App.serving(
        SERVICE,
        shipping_pb2_grpc.add_ShippingServiceServicer_to_server,
        servicer,
        tasks=[*events.tasks, dispatcher.run],
        closers=[db.close, *events.on_stop],
    )


def main() -> None:
    run_service("shipping", build)


if __name__ == "__main__":
    main()
