"""NotificationService as a real process: events published on real JetStream become
notifications exactly once; listing, paging, MarkRead, CountUnread and ownership over gRPC."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

import grpc
import pytest
from google.protobuf.message import Message
from shop.events.v1 import envelope_pb2
from shop.notification.v1 import notification_pb2 as pb
from shop.notification.v1 import notification_pb2_grpc
from shop.order.v1 import order_pb2
from shop.payment.v1 import payment_pb2
from shop.shipping.v1 import shipping_pb2
from shop.user.v1 import user_pb2

from ops.natsd import NatsServer
from services.common import events
from services.common.bus import Bus
from services.common.outbox import new_envelope
from tests.fixtures_services import ServiceFactory
from tests.fixtures_storage import both_backends
from tests.support import mesh
from tests.support.mesh import nats_auth
from tests.support.rpc_errors import expect_error

pytestmark = [pytest.mark.timeout(120), both_backends]

if TYPE_CHECKING:  # on an aio channel the stub is the .pyi's async one
    Stub = notification_pb2_grpc.NotificationServiceAsyncStub
else:
    Stub = notification_pb2_grpc.NotificationServiceStub


@pytest.fixture
async def stub(services: ServiceFactory) -> AsyncIterator[Stub]:
    proc = services.start("notification")
    async with mesh.channel(proc.addr) as channel:
        yield Stub(channel)


@pytest.fixture
async def bus(fresh_nats: NatsServer) -> AsyncIterator[Bus]:
    b = await Bus.connect(fresh_nats.url, name="notification-test", auth=nats_auth())
    try:
        await b.ensure_streams()
        yield b
    finally:
        await b.close()


def envelope(subject: str, payload: Message, aggregate_id: str) -> envelope_pb2.Envelope:
    source = events.spec_for(subject).producer
    return new_envelope(subject, payload, source=source, aggregate_id=aggregate_id)


async def publish_twice(bus: Bus, env: envelope_pb2.Envelope) -> None:
    """The event, then the same envelope under another Nats-Msg-Id: a redelivery
    JetStream's duplicate window does not catch."""
    await bus.publish(env)
    await bus.js.publish(env.subject, env.SerializeToString(),
                         headers={"Nats-Msg-Id": uuid.uuid4().hex})


def receipt_event(user_id: str, order_id: str, cents: int) -> envelope_pb2.Envelope:
    payment = payment_pb2.Payment(order_id=order_id, user_id=user_id, amount_cents=cents,
                                  currency="USD", status=payment_pb2.PAYMENT_STATUS_CHARGED)
    return envelope(events.PAYMENT_COMPLETED, payment_pb2.PaymentCompleted(payment=payment),
                    order_id)


async def wait_for(cond: Callable[[], Awaitable[bool]], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def unread(stub: Stub, user_id: str) -> int:
    resp: pb.CountUnreadResponse = await stub.CountUnread(pb.CountUnreadRequest(user_id=user_id))
    return resp.count


async def list_all(stub: Stub, user_id: str) -> list[pb.Notification]:
    resp = await stub.ListNotifications(
        pb.ListNotificationsRequest(user_id=user_id, page_size=100))
    return list(resp.notifications)


async def test_every_event_makes_exactly_one_notification(stub: Stub, bus: Bus) -> None:
    user = user_pb2.User(id="u1", name="Ada", email="ada@example.com")
    order = order_pb2.Order(id="o1", user_id="u1", total_cents=1234, currency="USD")
    shipment = shipping_pb2.Shipment(order_id="o1", user_id="u1", carrier="shop-post",
                                     tracking_number="SHPABCDEF123456")
    refunded = payment_pb2.Payment(order_id="o1", user_id="u1", amount_cents=1234,
                                   refunded_cents=1234, currency="USD")
    sent = [
        envelope(events.USER_CREATED, user_pb2.UserCreated(user=user), "u1"),
        receipt_event("u1", "o1", 1234),
        envelope(events.ORDER_CONFIRMED, order_pb2.OrderConfirmed(order=order), "o1"),
        envelope(events.ORDER_SHIPPED, shipping_pb2.OrderShipped(shipment=shipment), "o1"),
        envelope(events.PAYMENT_FAILED,
                 payment_pb2.PaymentFailed(payment=refunded, reason="card declined"), "o1"),
        envelope(events.PAYMENT_REFUNDED, payment_pb2.PaymentRefunded(payment=refunded), "o1"),
    ]
    for env in sent:
        await publish_twice(bus, env)
    # Published after every duplicate: once it is in, all duplicates were seen too.
    marker = envelope(events.ORDER_CANCELLED,
                      order_pb2.OrderCancelled(order=order, reason="out of stock"), "o1")
    await bus.publish(marker)
    await wait_for(lambda: _has_event(stub, "u1", marker.id))

    got = await list_all(stub, "u1")
    assert sorted(n.event_id for n in got) == sorted(e.id for e in [*sent, marker])
    assert await unread(stub, "u1") == 7
    by_kind = {n.kind: n for n in got}
    assert len(by_kind) == 7
    welcome = by_kind[pb.NOTIFICATION_KIND_WELCOME]
    assert welcome.subject == "Welcome to shop, Ada"
    assert "12.34 USD" in by_kind[pb.NOTIFICATION_KIND_RECEIPT].body
    assert "SHPABCDEF123456" in by_kind[pb.NOTIFICATION_KIND_SHIPPED].body
    assert "card declined" in by_kind[pb.NOTIFICATION_KIND_PAYMENT_FAILED].body
    assert "12.34 USD" in by_kind[pb.NOTIFICATION_KIND_REFUND].body
    assert "out of stock" in by_kind[pb.NOTIFICATION_KIND_ORDER_CANCELLED].body
    assert "o1" in by_kind[pb.NOTIFICATION_KIND_ORDER_CONFIRMED].subject
    # Newest first: the marker came last.
    assert got[0].event_id == marker.id


async def _has_event(stub: Stub, user_id: str, event_id: str) -> bool:
    return any(n.event_id == event_id for n in await list_all(stub, user_id))


async def test_list_page_mark_read_count_and_ownership(stub: Stub, bus: Bus) -> None:
    sent = [receipt_event("u2", f"order-{i:02d}", 100 + i) for i in range(25)]
    for env in sent:
        await bus.publish(env)
    await bus.publish(receipt_event("u3", "other", 5))
    await wait_for(lambda: _counts(stub, {"u2": 25, "u3": 1}))

    first = await stub.ListNotifications(pb.ListNotificationsRequest(user_id="u2"))
    assert len(first.notifications) == 20 and first.next_page_token
    second = await stub.ListNotifications(pb.ListNotificationsRequest(
        user_id="u2", page_token=first.next_page_token))
    assert len(second.notifications) == 5 and second.next_page_token == ""
    listed = [n.event_id for n in [*first.notifications, *second.notifications]]
    assert listed == [e.id for e in reversed(sent)]  # newest first, no gaps, no repeats

    target = second.notifications[0]
    as_u2 = (("x-user-id", "u2"),)
    as_u3 = (("x-user-id", "u3"),)
    for _ in range(2):  # idempotent
        marked = await stub.MarkRead(pb.MarkReadRequest(id=target.id), metadata=as_u2)
        assert marked.notification.read and marked.notification.id == target.id
    assert await unread(stub, "u2") == 24
    only_unread = await stub.ListNotifications(
        pb.ListNotificationsRequest(unread_only=True, page_size=100), metadata=as_u2)
    assert len(only_unread.notifications) == 24
    assert target.id not in {n.id for n in only_unread.notifications}

    # Another user's notification looks like a missing one, and is left unread.
    other = (await list_all(stub, "u3"))[0]
    await expect_error(stub.MarkRead(pb.MarkReadRequest(id=other.id), metadata=as_u2),
                       grpc.StatusCode.NOT_FOUND, f"notification {other.id} not found")
    assert await unread(stub, "u3") == 1
    await expect_error(stub.MarkRead(pb.MarkReadRequest(id="nope"), metadata=as_u2),
                       grpc.StatusCode.NOT_FOUND, "notification nope not found")
    await expect_error(stub.MarkRead(pb.MarkReadRequest(id=""), metadata=as_u2),
                       grpc.StatusCode.INVALID_ARGUMENT, "id is required")
    await expect_error(stub.ListNotifications(pb.ListNotificationsRequest(user_id="u2"),
                                              metadata=as_u3),
                       grpc.StatusCode.NOT_FOUND, "not found")
    mine = await stub.ListNotifications(pb.ListNotificationsRequest(), metadata=as_u3)
    assert [n.id for n in mine.notifications] == [other.id]
    assert (await stub.CountUnread(pb.CountUnreadRequest(), metadata=as_u3)).count == 1

    # Bad paging input is INVALID_ARGUMENT, never INTERNAL.
    await expect_error(stub.ListNotifications(pb.ListNotificationsRequest(
        user_id="u2", page_token="garbage")), grpc.StatusCode.INVALID_ARGUMENT, "page_token")
    await expect_error(stub.ListNotifications(pb.ListNotificationsRequest(
        user_id="u2", page_token=first.next_page_token, unread_only=True)),
        grpc.StatusCode.INVALID_ARGUMENT, "page_token")
    await expect_error(stub.ListNotifications(pb.ListNotificationsRequest(
        user_id="u2", page_size=-1)), grpc.StatusCode.INVALID_ARGUMENT, "page_size")
    await expect_error(stub.CountUnread(pb.CountUnreadRequest()),
                       grpc.StatusCode.INVALID_ARGUMENT, "user_id is required")


async def _counts(stub: Stub, want: dict[str, int]) -> bool:
    return all([await unread(stub, u) == n for u, n in want.items()])


async def test_get_notification_is_owner_only_and_shows_no_delivery_with_mail_off(
        stub: Stub, bus: Bus) -> None:
    await bus.publish(receipt_event("u4", "o-4", 400))
    await bus.publish(receipt_event("u5", "o-5", 500))
    await wait_for(lambda: _counts(stub, {"u4": 1, "u5": 1}))
    [mine] = await list_all(stub, "u4")
    [theirs] = await list_all(stub, "u5")
    as_u4 = (("x-user-id", "u4"),)

    got = await stub.GetNotification(pb.GetNotificationRequest(id=mine.id), metadata=as_u4)
    assert got.notification == mine
    # The test services run with SMTP_URL=off: no mail is owed, none is tracked.
    assert got.notification.delivery == pb.DELIVERY_STATUS_UNSPECIFIED
    assert got.notification.delivery_error == ""
    await expect_error(stub.GetNotification(pb.GetNotificationRequest(id=theirs.id),
                                            metadata=as_u4),
                       grpc.StatusCode.NOT_FOUND, f"notification {theirs.id} not found")
    await expect_error(stub.GetNotification(pb.GetNotificationRequest(id="nope"),
                                            metadata=as_u4),
                       grpc.StatusCode.NOT_FOUND, "notification nope not found")
    await expect_error(stub.GetNotification(pb.GetNotificationRequest(id=" "), metadata=as_u4),
                       grpc.StatusCode.INVALID_ARGUMENT, "id is required")
    await expect_error(stub.GetNotification(pb.GetNotificationRequest(id="x" * 129),
                                            metadata=as_u4),
                       grpc.StatusCode.INVALID_ARGUMENT, "longer than 128")
