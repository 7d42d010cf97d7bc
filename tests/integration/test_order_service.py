"""The order service and its saga against the real services (all eight processes + NATS)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import grpc
import nats
import pytest
from grpc import aio
from shop.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from shop.order.v1 import order_pb2, order_pb2_grpc
from shop.payment.v1 import payment_pb2, payment_pb2_grpc
from shop.user.v1 import user_pb2, user_pb2_grpc

from ops.process import System
from services.common import natsauth
from tests.support import mesh

OP = order_pb2
STATUS = OP.OrderStatus


class Client:
    """aio stubs on the system's services, calling as a given user (x-user-id)."""

    def __init__(self, system: System) -> None:
        self.channels = {n: mesh.channel(system.addr(n))
                         for n in ("order", "inventory", "payment", "user")}
        self.orders = order_pb2_grpc.OrderServiceStub(self.channels["order"])
        self.stock = inventory_pb2_grpc.InventoryServiceStub(self.channels["inventory"])
        self.payments = payment_pb2_grpc.PaymentServiceStub(self.channels["payment"])
        self.users = user_pb2_grpc.UserServiceStub(self.channels["user"])

    async def new_user(self) -> str:
        reply = await self.users.CreateUser(user_pb2.CreateUserRequest(
            email=f"{uuid.uuid4().hex[:10]}@example.com", name="Ada", password="correct horse"),
            timeout=10)
        return str(reply.user.id)

    async def create(self, user: str, items: list[tuple[str, int]], token: str = "tok_visa",
                     key: str = "") -> OP.Order:
        reply = await self.orders.CreateOrder(OP.CreateOrderRequest(
            items=[OP.CreateOrderItem(product_id=p, quantity=q) for p, q in items],
            card_token=token, idempotency_key=key), metadata=[("x-user-id", user)], timeout=10)
        return reply.order

    async def refused(self, user: str, items: list[tuple[str, int]],
                      token: str = "tok_visa") -> aio.AioRpcError:
        with pytest.raises(aio.AioRpcError) as err:
            await self.create(user, items, token)
        return err.value

    async def get(self, user: str, order_id: str) -> OP.Order:
        reply = await self.orders.GetOrder(OP.GetOrderRequest(id=order_id),
                                           metadata=[("x-user-id", user)], timeout=5)
        return reply.order

    async def stock_of(self, product: str) -> inventory_pb2.Stock:
        reply = await self.stock.GetStock(inventory_pb2.GetStockRequest(product_id=product),
                                          timeout=5)
        return reply.stock

    async def set_stock(self, product: str, available: int) -> None:
        await self.stock.SetStock(inventory_pb2.SetStockRequest(
            product_id=product, available=available), timeout=5)

    async def payment(self, order_id: str) -> payment_pb2.Payment:
        reply = await self.payments.GetPayment(
            payment_pb2.GetPaymentRequest(order_id=order_id), timeout=5)
        return reply.payment

    async def close(self) -> None:
        for ch in self.channels.values():
            await ch.close()


@pytest.fixture
async def client(system: System) -> AsyncIterator[Client]:
    c = Client(system)
    try:
        yield c
    finally:
        await c.close()


def order_id_of(err: aio.AioRpcError) -> str:
    return dict(err.trailing_metadata() or ()).get("x-order-id", "")


async def test_happy_path_confirms_moves_stock_and_charges(client: Client,
                                                           system: System) -> None:
    user = await client.new_user()
    before = await client.stock_of("french-press")
    order = await client.create(user, [("french-press", 2), ("novel-dune", 1)])
    assert order.status == STATUS.ORDER_STATUS_CONFIRMED
    assert order.total_cents == 2 * 2999 + 1099 and order.currency == "USD"
    after = await client.stock_of("french-press")
    assert (after.available, after.reserved, after.sold) == (
        before.available - 2, before.reserved, before.sold + 2)
    payment = await client.payment(order.id)
    assert payment.status == payment_pb2.PAYMENT_STATUS_CHARGED
    assert payment.amount_cents == order.total_cents
    history = await client.orders.GetSagaHistory(OP.GetSagaHistoryRequest(order_id=order.id),
                                                 metadata=[("x-user-id", user)], timeout=5)
    assert [(s.step, s.outcome) for s in history.steps] == [
        ("reserve_stock", "succeeded"), ("charge", "succeeded"), ("confirm", "succeeded")]
    nc = await nats.connect(system.nats_url, **natsauth.connect_options())
    try:
        js = nc.jetstream()
        sub = await js.pull_subscribe("order.confirmed", durable=None, stream="SHOP_EVENTS")
        found = False
        for _ in range(20):
            try:
                msgs = await sub.fetch(50, timeout=1)
            except TimeoutError:
                continue
            for m in msgs:
                found = found or order.id.encode() in m.data
            if found:
                break
        assert found, "order.confirmed not in the stream"
    finally:
        await nc.close()


async def test_declined_card_cancels_and_returns_stock(client: Client) -> None:
    user = await client.new_user()
    before = await client.stock_of("yoga-mat")
    err = await client.refused(user, [("yoga-mat", 3)], token="tok_chargeDeclined")
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "payment declined" in (err.details() or "")
    order_id = order_id_of(err)
    assert order_id and order_id in (err.details() or "")
    order = await client.get(user, order_id)
    assert order.status == STATUS.ORDER_STATUS_CANCELLED
    assert order.cancel_reason == "payment declined"
    after = await client.stock_of("yoga-mat")
    assert (after.available, after.reserved, after.sold) == (
        before.available, before.reserved, before.sold)
    assert (await client.payment(order_id)).status == payment_pb2.PAYMENT_STATUS_DECLINED


async def test_out_of_stock_cancels_without_charging(client: Client) -> None:
    user = await client.new_user()
    await client.set_stock("cookbook", 1)
    err = await client.refused(user, [("cookbook", 5)])
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "out of stock" in (err.details() or "")
    order = await client.get(user, order_id_of(err))
    assert order.status == STATUS.ORDER_STATUS_CANCELLED
    assert order.cancel_reason.startswith("out of stock")
    with pytest.raises(aio.AioRpcError) as no_payment:
        await client.payment(order.id)
    assert no_payment.value.code() == grpc.StatusCode.NOT_FOUND
    assert (await client.stock_of("cookbook")).available == 1


async def test_unknown_card_token_is_invalid_argument(client: Client) -> None:
    user = await client.new_user()
    before = await client.stock_of("water-bottle")
    err = await client.refused(user, [("water-bottle", 1)], token="tok_nonsense")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "invalid card token" in (err.details() or "")
    assert (await client.stock_of("water-bottle")).available == before.available


async def test_cancel_after_confirm_refunds(client: Client, system: System) -> None:
    user = await client.new_user()
    before = await client.stock_of("usb-c-charger")
    # Shipping ships at once; frozen, it cannot ship the order before the cancel.
    system["shipping"].sigstop()
    try:
        order = await client.create(user, [("usb-c-charger", 1)])
        reply = await client.orders.CancelOrder(
            OP.CancelOrderRequest(id=order.id, reason="oops"),
            metadata=[("x-user-id", user)], timeout=10)
    finally:
        system["shipping"].sigcont()
    assert reply.order.status == STATUS.ORDER_STATUS_CANCELLED
    assert reply.order.cancel_reason == "oops"
    payment = await client.payment(order.id)
    assert payment.status == payment_pb2.PAYMENT_STATUS_REFUNDED
    assert payment.refunded_cents == payment.amount_cents == order.total_cents
    # The committed stock stays sold (inventory refuses to release it): recorded as skipped.
    after = await client.stock_of("usb-c-charger")
    assert after.available + after.reserved + after.sold == (
        before.available + before.reserved + before.sold)
    history = await client.orders.GetSagaHistory(OP.GetSagaHistoryRequest(order_id=order.id),
                                                 metadata=[("x-user-id", user)], timeout=5)
    steps = [(s.step, s.outcome) for s in history.steps]
    assert ("refund", "succeeded") in steps and steps[-1][0] == "release_stock"
    again = await client.orders.CancelOrder(OP.CancelOrderRequest(id=order.id),
                                            metadata=[("x-user-id", user)], timeout=10)
    assert again.order.status == STATUS.ORDER_STATUS_CANCELLED  # idempotent
    # A late order.shipped for the cancelled order does not resurrect it.
    await asyncio.sleep(1.0)
    assert (await client.get(user, order.id)).status == STATUS.ORDER_STATUS_CANCELLED


async def test_ownership_hides_other_users_orders(client: Client) -> None:
    owner, other = await client.new_user(), await client.new_user()
    order = await client.create(owner, [("chef-knife", 1)])
    for call in (
        client.orders.GetOrder(OP.GetOrderRequest(id=order.id),
                               metadata=[("x-user-id", other)], timeout=5),
        client.orders.CancelOrder(OP.CancelOrderRequest(id=order.id),
                                  metadata=[("x-user-id", other)], timeout=5),
        client.orders.ListOrders(OP.ListOrdersRequest(user_id=owner),
                                 metadata=[("x-user-id", other)], timeout=5),
    ):
        with pytest.raises(aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert (await client.get(owner, order.id)).status in (
        STATUS.ORDER_STATUS_CONFIRMED, STATUS.ORDER_STATUS_SHIPPED)


async def test_order_shipped_event_marks_shipped(client: Client) -> None:
    user = await client.new_user()
    order = await client.create(user, [("chef-knife", 1)])
    for _ in range(100):
        got = await client.get(user, order.id)
        if got.status == STATUS.ORDER_STATUS_SHIPPED:
            break
        await asyncio.sleep(0.1)
    assert got.status == STATUS.ORDER_STATUS_SHIPPED and got.tracking_number
    with pytest.raises(aio.AioRpcError) as err:
        await client.orders.CancelOrder(OP.CancelOrderRequest(id=order.id),
                                        metadata=[("x-user-id", user)], timeout=5)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "already shipped" in (err.value.details() or "")


@pytest.mark.parametrize(
    ("items", "token", "code", "needle"),
    [
        ([("french-press", 1)], "", grpc.StatusCode.INVALID_ARGUMENT, "card_token"),
        ([("french-press", 1)], "4242", grpc.StatusCode.INVALID_ARGUMENT, "card token"),
        ([("french-press", 0)], "tok_visa", grpc.StatusCode.INVALID_ARGUMENT, "quantity"),
        ([("", 1)], "tok_visa", grpc.StatusCode.INVALID_ARGUMENT, "product_id"),
        ([("no-such-thing", 1)], "tok_visa", grpc.StatusCode.NOT_FOUND, "no-such-thing"),
    ],
)
async def test_bad_input_is_refused_and_writes_nothing(
        client: Client, items: list[tuple[str, int]], token: str, code: grpc.StatusCode,
        needle: str) -> None:
    user = await client.new_user()
    err = await client.refused(user, items, token)
    assert err.code() == code and needle in (err.details() or "")
    listed = await client.orders.ListOrders(OP.ListOrdersRequest(),
                                            metadata=[("x-user-id", user)], timeout=5)
    assert list(listed.orders) == []


async def test_unknown_user_is_not_found(client: Client) -> None:
    err = await client.refused(uuid.uuid4().hex, [("french-press", 1)])
    assert err.code() == grpc.StatusCode.NOT_FOUND


async def test_idempotency_key_and_pagination(client: Client) -> None:
    user = await client.new_user()
    first = await client.create(user, [("water-bottle", 1)], key="k-1")
    repeat = await client.create(user, [("water-bottle", 1)], key="k-1")
    assert repeat.id == first.id
    ids = [first.id] + [(await client.create(user, [("water-bottle", 1)])).id
                        for _ in range(4)]
    seen: list[str] = []
    token = ""
    while True:
        page = await client.orders.ListOrders(
            OP.ListOrdersRequest(page_size=2, page_token=token),
            metadata=[("x-user-id", user)], timeout=5)
        assert len(page.orders) <= 2
        seen += [o.id for o in page.orders]
        token = page.next_page_token
        if not token:
            break
    assert seen == list(reversed(ids))  # newest first, each once
    with pytest.raises(aio.AioRpcError) as bad:
        await client.orders.ListOrders(OP.ListOrdersRequest(page_token="garbage!"),
                                       metadata=[("x-user-id", user)], timeout=5)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
