"""Composition root of the payment service: `python -m services.payment`."""

from __future__ import annotations

from shop.payment.v1 import payment_pb2, payment_pb2_grpc

from services.common.eventing import EventWorkers
from services.common.schema import service_migrations
from services.common.server import App, run_service
from services.common.settings import Settings
from services.common.storage import open_storage
from services.common.wiring import Wiring
from services.payment.servicer import PaymentServicer
from services.payment.store import PaymentStore

SERVICE = payment_pb2.DESCRIPTOR.services_by_name["PaymentService"]


async def build(settings: Settings, wiring: Wiring) -> App:
    # Money: synchronous=FULL, every commit is on disk before Charge answers.
    db = await open_storage(settings, service_migrations("payment"), durable=True)
    servicer = PaymentServicer(PaymentStore(db))
    # NATS in the background: Charge is served while it is down (events wait in the outbox).
    events = EventWorkers(settings, db, relay=True)

    return App.serving(
        SERVICE,
        payment_pb2_grpc.add_PaymentServiceServicer_to_server,
        servicer,
        tasks=events.tasks,
        # The event task (relay, lease handed back) is already cancelled when these run.
        closers=[db.close, *events.on_stop],
    )


def main() -> None:
    run_service("payment", build)


if __name__ == "__main__":
    main()
