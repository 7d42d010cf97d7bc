"""ShippingService as a real process: order.confirmed on real JetStream becomes one PENDING
shipment, dispatched (one order.shipped event) after the dispatch delay, however often it is
delivered; CancelShipment stops it before dispatch; GetShipment over gRPC."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc
import pytest
from grpc import aio
from shop.events.v1 import envelope_pb2
from shop.order.v1 import order_pb2
from shop.shipping.v1 import shipping_pb2 as pb
from shop.shipping.v1 import shipping_pb2_grpc

from ops.natsd import NatsServer
from services.common import events
from services.common.bus import Bus
from services.common.outbox import new_envelope
from tests.fixtures_services import ServiceFactory
from tests.fixtures_storage import both_backends
from tests.support import mesh
from tests.support.mesh import nats_auth
from tests.support.rpc_errors import expect_error
from tests.support.streams import events_on

pytestmark = [pytest.mark.timeout(120), both_backends]

if TYPE_CHECKING:  # on an aio channel the stub is the .pyi's async one
    Stub = shipping_pb2_grpc.ShippingServiceAsyncStub
else:
    Stub = shipping_pb2_grpc.ShippingServiceStub


DELAY_S = 0.5


@pytest.fixture
async def stub(services: ServiceFactory) -> AsyncIterator[Stub]:
    proc = services.start("shipping", SHIPPING_DISPATCH_DELAY_S=str(DELAY_S))
    async with mesh.channel(proc.addr) as channel:
        yield Stub(channel)


@pytest.fixture
async def bus(fresh_nats: NatsServer) -> AsyncIterator[Bus]:
    b = await Bus.connect(fresh_nats.url, name="shipping-test", auth=nats_auth())
    try:
        await b.ensure_streams()
        yield b
    finally:
        await b.close()


def confirmed(order_id: str, user_id: str) -> envelope_pb2.Envelope:
    order = order_pb2.Order(id=order_id, user_id=user_id, total_cents=999, currency="USD",
                            status=order_pb2.ORDER_STATUS_CONFIRMED)
    return new_envelope(events.ORDER_CONFIRMED, order_pb2.OrderConfirmed(order=order),
                        source="order", aggregate_id=order_id)


async def redeliver(bus: Bus, env: envelope_pb2.Envelope) -> None:
    """The same envelope under another Nats-Msg-Id, past JetStream's duplicate check."""
    await bus.js.publish(env.subject, env.SerializeToString(),
                         headers={"Nats-Msg-Id": uuid.uuid4().hex})


async def shipped_events(bus: Bus, *, at_least: int, settle_s: float = 1.0,
                         timeout_s: float = 20.0) -> list[pb.OrderShipped]:
    """Every order.shipped in the stream once `at_least` arrived and it stayed quiet."""
    got: list[pb.OrderShipped] = []
    for env in await events_on(bus, events.ORDER_SHIPPED, at_least=at_least,
                               settle_s=settle_s, timeout_s=timeout_s):
        assert env.source == "shipping"
        msg = pb.OrderShipped()
        assert env.payload.Unpack(msg)
        assert env.aggregate_id == msg.shipment.order_id
        got.append(msg)
    return got


async def get_shipment(stub: Stub, order_id: str, timeout_s: float = 20.0,
                       status: int | None = None) -> pb.Shipment:
    """Waits for the consumer to have made it (and, with `status`, for that status)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            resp: pb.GetShipmentResponse = await stub.GetShipment(
                pb.GetShipmentRequest(order_id=order_id))
            if status is None or resp.shipment.status == status:
                return resp.shipment
        except aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.NOT_FOUND, err
        assert time.monotonic() < deadline, f"no shipment for {order_id} (status {status})"
        await asyncio.sleep(0.05)


async def test_confirmed_order_ships_once_however_often_delivered(stub: Stub, bus: Bus) -> None:
    env = confirmed("o1", "u1")
    await bus.publish(env)
    await redeliver(bus, env)
    # A second, distinct event for the same order (the producer retried): still one shipment.
    await bus.publish(confirmed("o1", "u1"))
    await bus.publish(confirmed("o2", "u2"))

    one = await get_shipment(stub, "o1", status=pb.SHIPMENT_STATUS_SHIPPED)
    assert re.fullmatch(r"SHP[A-Z0-9]{12}", one.tracking_number), one.tracking_number
    assert (one.user_id, one.carrier) == ("u1", "shop-post")
    # Dispatched no earlier than its due time, which the shipment carries.
    assert one.dispatch_time.ToNanoseconds() - one.create_time.ToNanoseconds() == pytest.approx(
        DELAY_S * 1e9, rel=0.01)
    two = await get_shipment(stub, "o2", status=pb.SHIPMENT_STATUS_SHIPPED)
    assert two.tracking_number != one.tracking_number

    shipped = await shipped_events(bus, at_least=2, settle_s=1.5)
    by_order = {m.shipment.order_id: m.shipment for m in shipped}
    assert sorted(m.shipment.order_id for m in shipped) == ["o1", "o2"]
    assert by_order["o1"] == one
    # The shipment never changes on a later delivery.
    await redeliver(bus, env)
    await asyncio.sleep(1.0)
    assert await get_shipment(stub, "o1") == one
    assert len(await shipped_events(bus, at_least=2, settle_s=1.0)) == 2


async def test_get_shipment_errors_and_ownership(stub: Stub, bus: Bus) -> None:
    await bus.publish(confirmed("o-own", "alice"))
    await get_shipment(stub, "o-own")
    got = await stub.GetShipment(pb.GetShipmentRequest(order_id="o-own"),
                                 metadata=(("x-user-id", "alice"),))
    assert got.shipment.user_id == "alice"
    await expect_error(stub.GetShipment(pb.GetShipmentRequest(order_id="o-own"),
                                        metadata=(("x-user-id", "bob"),)),
                       grpc.StatusCode.NOT_FOUND, "shipment for order o-own not found")
    await expect_error(stub.GetShipment(pb.GetShipmentRequest(order_id="missing")),
                       grpc.StatusCode.NOT_FOUND, "shipment for order missing not found")
    await expect_error(stub.GetShipment(pb.GetShipmentRequest(order_id="")),
                       grpc.StatusCode.INVALID_ARGUMENT, "order_id is required")


async def test_pending_shipment_is_cancelled_before_dispatch_and_never_ships(
        services: ServiceFactory, bus: Bus) -> None:
    """A long dispatch delay keeps the shipment PENDING: CancelShipment cancels it (again:
    the same answer), and it is never dispatched; a cancel of an order not confirmed yet is
    remembered, so the late order.confirmed makes a CANCELLED shipment."""
    proc = services.start("shipping", SHIPPING_DISPATCH_DELAY_S="1.5")
    async with mesh.channel(proc.addr) as channel:
        stub = Stub(channel)
        await bus.publish(confirmed("o-keep", "u1"))
        await bus.publish(confirmed("o-cancel", "u1"))
        pending = await get_shipment(stub, "o-cancel")
        assert pending.status == pb.SHIPMENT_STATUS_PENDING and pending.tracking_number
        for _ in range(2):  # idempotent
            got = await stub.CancelShipment(pb.CancelShipmentRequest(order_id="o-cancel"))
            assert got.shipment.status == pb.SHIPMENT_STATUS_CANCELLED
            assert got.shipment.tracking_number == pending.tracking_number
        early = await stub.CancelShipment(pb.CancelShipmentRequest(order_id="o-early"))
        assert early.shipment.status == pb.SHIPMENT_STATUS_CANCELLED
        await bus.publish(confirmed("o-early", "u1"))
        late = await get_shipment(stub, "o-early")
        assert late.status == pb.SHIPMENT_STATUS_CANCELLED
        # o-keep ships once due; the cancelled ones never do.
        await get_shipment(stub, "o-keep", status=pb.SHIPMENT_STATUS_SHIPPED)
        shipped = await shipped_events(bus, at_least=1, settle_s=2.0)
        assert [m.shipment.order_id for m in shipped] == ["o-keep"]
        for order_id in ("o-cancel", "o-early"):
            got_s = await stub.GetShipment(pb.GetShipmentRequest(order_id=order_id))
            assert got_s.shipment.status == pb.SHIPMENT_STATUS_CANCELLED
        await expect_error(stub.CancelShipment(pb.CancelShipmentRequest(order_id="o-keep")),
                           grpc.StatusCode.FAILED_PRECONDITION, "already shipped")
        await expect_error(stub.CancelShipment(pb.CancelShipmentRequest(order_id="")),
                           grpc.StatusCode.INVALID_ARGUMENT, "order_id is required")


async def test_dispatch_due_time_survives_a_restart(services: ServiceFactory, bus: Bus) -> None:
    """The due time is stored: a shipping process stopped while a shipment is PENDING
    dispatches it after a restart."""
    proc = services.start("shipping", SHIPPING_DISPATCH_DELAY_S="3.0")
    async with mesh.channel(proc.addr) as channel:
        await bus.publish(confirmed("o-restart", "u1"))
        pending = await get_shipment(Stub(channel), "o-restart")
        assert pending.status == pb.SHIPMENT_STATUS_PENDING
    proc.terminate()
    again = services.start("shipping", SHIPPING_DISPATCH_DELAY_S="3.0")
    async with mesh.channel(again.addr) as channel:
        shipped = await get_shipment(Stub(channel), "o-restart",
                                     status=pb.SHIPMENT_STATUS_SHIPPED)
    assert shipped.tracking_number == pending.tracking_number
    assert [m.shipment.order_id for m in await shipped_events(bus, at_least=1)] == ["o-restart"]


async def test_two_instances_dispatch_each_shipment_once(services: ServiceFactory,
                                                          bus: Bus) -> None:
    """Two shipping instances share the file: both dispatchers see every due shipment, the
    status guard lets one of them ship it; one order.shipped per order."""
    services.start_many("shipping", "shipping", SHIPPING_DISPATCH_DELAY_S="0.3")
    ids = [f"o-two-{i}" for i in range(20)]
    for order_id in ids:
        await bus.publish(confirmed(order_id, "u1"))
    shipped = await shipped_events(bus, at_least=len(ids), settle_s=1.5, timeout_s=40)
    assert sorted(m.shipment.order_id for m in shipped) == sorted(ids)
