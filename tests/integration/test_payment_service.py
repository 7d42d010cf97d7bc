"""PaymentService as a real process over real gRPC, with its events read back from JetStream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc
import pytest
from grpc import aio
from shop.events.v1 import envelope_pb2
from shop.payment.v1 import payment_pb2 as pb
from shop.payment.v1 import payment_pb2_grpc

from ops.natsd import NatsServer
from services.common import events
from services.common.bus import Bus
from tests.fixtures_services import ServiceFactory
from tests.fixtures_storage import both_backends
from tests.support import mesh
from tests.support.mesh import nats_auth
from tests.support.rpc_errors import expect_error
from tests.support.streams import events_on

pytestmark = [pytest.mark.timeout(120), both_backends]

if TYPE_CHECKING:  # on an aio channel the stub is the .pyi's async one
    Stub = payment_pb2_grpc.PaymentServiceAsyncStub
else:
    Stub = payment_pb2_grpc.PaymentServiceStub


@pytest.fixture
async def stub(services: ServiceFactory) -> AsyncIterator[Stub]:
    proc = services.start("payment")
    async with mesh.channel(proc.addr) as channel:
        yield Stub(channel)


@pytest.fixture
async def bus(fresh_nats: NatsServer) -> AsyncIterator[Bus]:
    b = await Bus.connect(fresh_nats.url, name="payment-test", auth=nats_auth())
    try:
        yield b
    finally:
        await b.close()


def unpack(env: envelope_pb2.Envelope, msg_type: type[pb.PaymentCompleted]
           | type[pb.PaymentFailed] | type[pb.PaymentRefunded]) -> pb.Payment:
    msg = msg_type()
    assert env.payload.Unpack(msg)
    return msg.payment


def charge(order_id: str, *, amount: int = 2500, currency: str = "USD",
           token: str = "tok_visa", user_id: str = "u1") -> pb.ChargeRequest:
    return pb.ChargeRequest(order_id=order_id, user_id=user_id, amount_cents=amount,
                            currency=currency, card_token=token)


async def test_charge_is_idempotent_and_emits_one_completed_event(stub: Stub, bus: Bus) -> None:
    first = (await stub.Charge(charge("o-1"))).payment
    assert first.status == pb.PAYMENT_STATUS_CHARGED
    assert (first.order_id, first.user_id, first.amount_cents, first.currency) == (
        "o-1", "u1", 2500, "USD")
    # Repeats, some of them concurrent, answer the very same payment.
    repeats = await asyncio.gather(*(stub.Charge(charge("o-1")) for _ in range(8)))
    repeats.append(await stub.Charge(charge("o-1")))
    assert all(r.payment == first for r in repeats)
    got = (await stub.GetPayment(pb.GetPaymentRequest(order_id="o-1"))).payment
    assert got == first
    completed = await events_on(bus, events.PAYMENT_COMPLETED, at_least=1)
    assert [e.aggregate_id for e in completed] == ["o-1"]
    assert completed[0].source == "payment"
    assert unpack(completed[0], pb.PaymentCompleted).amount_cents == 2500


async def test_declined_card_is_recorded_and_repeats_stay_declined(stub: Stub, bus: Bus) -> None:
    for _ in range(2):
        await expect_error(stub.Charge(charge("o-d", token="tok_chargeDeclined")),
                           grpc.StatusCode.FAILED_PRECONDITION, "card declined")
    # A good card later does not turn the declined order into a charge.
    await expect_error(stub.Charge(charge("o-d")), grpc.StatusCode.FAILED_PRECONDITION,
                       "card declined")
    got = (await stub.GetPayment(pb.GetPaymentRequest(order_id="o-d"))).payment
    assert got.status == pb.PAYMENT_STATUS_DECLINED
    assert got.decline_reason == "card declined"
    failed = await events_on(bus, events.PAYMENT_FAILED, at_least=1)
    assert [e.aggregate_id for e in failed] == ["o-d"]
    msg = pb.PaymentFailed()
    assert failed[0].payload.Unpack(msg)
    assert msg.reason == "card declined"
    # Refunding a declined payment is a successful no-op.
    refund = (await stub.Refund(pb.RefundRequest(order_id="o-d"))).payment
    assert refund.status == pb.PAYMENT_STATUS_DECLINED and refund.refunded_cents == 0


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (charge("o-x", token="tok_unknown"), "unknown card token"),
        (charge("o-x", token=""), "card_token is required"),
        (charge("o-x", amount=0), "amount_cents must be positive"),
        (charge("o-x", amount=-1), "amount_cents must be positive"),
        (charge("o-x", currency="US"), "3-letter"),
        (charge("o-x", user_id=""), "user_id is required"),
        (charge(""), "order_id is required"),
    ],
)
async def test_bad_charge_is_invalid_argument_and_writes_nothing(
        stub: Stub, request_: pb.ChargeRequest, message: str) -> None:
    await expect_error(stub.Charge(request_), grpc.StatusCode.INVALID_ARGUMENT, message)
    await expect_error(stub.GetPayment(pb.GetPaymentRequest(order_id="o-x")),
                       grpc.StatusCode.NOT_FOUND, "payment for order o-x not found")
    # Nothing was recorded: the same order still charges normally.
    ok = (await stub.Charge(charge("o-x"))).payment
    assert ok.status == pb.PAYMENT_STATUS_CHARGED


async def test_other_amount_for_the_same_order_is_refused(stub: Stub) -> None:
    await stub.Charge(charge("o-2", amount=1000))
    await expect_error(stub.Charge(charge("o-2", amount=1001)),
                       grpc.StatusCode.FAILED_PRECONDITION,
                       "order o-2 already charged with a different amount")
    await expect_error(stub.Charge(charge("o-2", amount=1000, currency="EUR")),
                       grpc.StatusCode.FAILED_PRECONDITION, "different amount")
    got = (await stub.GetPayment(pb.GetPaymentRequest(order_id="o-2"))).payment
    assert (got.amount_cents, got.currency) == (1000, "USD")


async def test_refund_is_idempotent_with_one_event(stub: Stub, bus: Bus) -> None:
    await stub.Charge(charge("o-r", amount=777))
    first = (await stub.Refund(pb.RefundRequest(order_id="o-r", reason="cancelled"))).payment
    second = (await stub.Refund(pb.RefundRequest(order_id="o-r"))).payment
    assert first.status == pb.PAYMENT_STATUS_REFUNDED
    assert first.refunded_cents == first.amount_cents == 777
    assert second == first
    await expect_error(stub.Charge(charge("o-r", amount=777)),
                       grpc.StatusCode.FAILED_PRECONDITION, "order o-r was refunded/cancelled")
    refunded = await events_on(bus, events.PAYMENT_REFUNDED, at_least=1)
    assert [e.aggregate_id for e in refunded] == ["o-r"]
    msg = pb.PaymentRefunded()
    assert refunded[0].payload.Unpack(msg)
    assert (msg.reason, msg.payment.refunded_cents) == ("cancelled", 777)


async def test_refund_before_charge_leaves_a_tombstone(stub: Stub, bus: Bus) -> None:
    for _ in range(2):
        tomb = (await stub.Refund(pb.RefundRequest(order_id="o-t"))).payment
        assert tomb.order_id == "o-t"
        assert tomb.status == pb.PAYMENT_STATUS_UNSPECIFIED
        assert (tomb.amount_cents, tomb.refunded_cents) == (0, 0)
    await expect_error(stub.Charge(charge("o-t")), grpc.StatusCode.FAILED_PRECONDITION,
                       "order o-t was refunded/cancelled")
    await expect_error(stub.GetPayment(pb.GetPaymentRequest(order_id="o-t")),
                       grpc.StatusCode.NOT_FOUND, "payment for order o-t not found")
    await expect_error(stub.Refund(pb.RefundRequest(order_id="")),
                       grpc.StatusCode.INVALID_ARGUMENT, "order_id is required")
    # Neither the tombstone nor the refused charge published anything.
    await stub.Charge(charge("o-marker"))
    completed = await events_on(bus, events.PAYMENT_COMPLETED, at_least=1)
    assert [e.aggregate_id for e in completed] == ["o-marker"]
    assert await events_on(bus, events.PAYMENT_REFUNDED, at_least=0, settle_s=0.5) == []


async def test_payments_are_visible_to_their_owner_only(stub: Stub) -> None:
    await stub.Charge(charge("o-own", user_id="alice"))
    as_alice = (("x-user-id", "alice"),)
    as_bob = (("x-user-id", "bob"),)
    got = await stub.GetPayment(pb.GetPaymentRequest(order_id="o-own"), metadata=as_alice)
    assert got.payment.user_id == "alice"
    with pytest.raises(aio.AioRpcError) as err:
        await stub.GetPayment(pb.GetPaymentRequest(order_id="o-own"), metadata=as_bob)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "alice" not in (err.value.details() or "")
    # Refunds and charges are the order service's: no one may make them for a user
    # (x-user-id comes only from the gateway, which may call neither); nothing is written.
    await expect_error(stub.Refund(pb.RefundRequest(order_id="o-own"), metadata=as_bob),
                       grpc.StatusCode.PERMISSION_DENIED, "x-user-id")
    await expect_error(stub.Charge(charge("o-bob", user_id="alice"), metadata=as_bob),
                       grpc.StatusCode.PERMISSION_DENIED, "x-user-id")
    await expect_error(stub.GetPayment(pb.GetPaymentRequest(order_id="o-bob")),
                       grpc.StatusCode.NOT_FOUND, "not found")
    still = (await stub.GetPayment(pb.GetPaymentRequest(order_id="o-own"))).payment
    assert still.status == pb.PAYMENT_STATUS_CHARGED


async def test_two_instances_sharing_the_file_charge_once(services: ServiceFactory,
                                                          bus: Bus) -> None:
    a = services.start("payment")
    b = services.start("payment")
    assert a.addr != b.addr
    async with mesh.channel(a.addr) as ca, mesh.channel(b.addr) as cb:
        stubs = [Stub(ca), Stub(cb)]
        orders = [f"o-shared-{i}" for i in range(10)]
        calls = [stubs[n % 2].Charge(charge(o)) for o in orders for n in range(4)]
        results = await asyncio.gather(*calls)
    by_order: dict[str, set[bytes]] = {}
    for r in results:
        assert r.payment.status == pb.PAYMENT_STATUS_CHARGED
        by_order.setdefault(r.payment.order_id, set()).add(r.payment.SerializeToString())
    # Every answer for one order is the same payment, whichever instance gave it.
    assert sorted(by_order) == sorted(orders)
    assert all(len(v) == 1 for v in by_order.values())
    completed = await events_on(bus, events.PAYMENT_COMPLETED, at_least=10, settle_s=1.5)
    assert sorted(e.aggregate_id for e in completed) == sorted(orders)
