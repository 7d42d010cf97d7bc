"""Composition root of the payment service: `python -m services.payment`."""

from __future__ import annotations

from grpc import aio
from shop.payment.v1 import payment_pb2, payment_pb2_grpc

from services.common.bus import Bus
from services.common.db import Database
from services.common.outbox import OutboxRelay
from services.common.server import App, run_service
from services.common.settings import Settings
from services.payment.servicer import PaymentServicer
from services.payment.store import SCHEMA, PaymentStore

SERVICE_NAME = payment_pb2.DESCRIPTOR.services_by_name["PaymentService"].full_name


async def build(settings: Settings) -> App:
    # Money: synchronous=FULL, every commit is on disk before Charge answers.
    db = await Database.open(settings.db_path, schema=SCHEMA, durable=True)
    bus = await Bus.connect(settings.nats_url, name=settings.instance_id)
    await bus.ensure_streams()
    servicer = PaymentServicer(PaymentStore(db))
    relay = OutboxRelay(db, bus)

    def register(server: aio.Server) -> None:
        payment_pb2_grpc.add_PaymentServiceServicer_to_server(servicer, server)

    return App(
        grpc_services=[SERVICE_NAME],
        register=register,
        tasks=[relay.run],
        # Bus first: the relay task is already cancelled when on_stop runs.
        on_stop=[bus.close, db.close],
    )


def main() -> None:
    run_service("payment", build)


if __name__ == "__main__":
    main()
