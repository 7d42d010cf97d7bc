"""Events end to end on the eight real services and a real NATS: what a user sees happen
after the synchronous call returned (README, "Architecture")."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import grpc
import pytest
from grpc import aio
from shop.cart.v1 import cart_pb2, cart_pb2_grpc
from shop.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from shop.notification.v1 import notification_pb2, notification_pb2_grpc
from shop.order.v1 import order_pb2, order_pb2_grpc
from shop.payment.v1 import payment_pb2, payment_pb2_grpc
from shop.shipping.v1 import shipping_pb2, shipping_pb2_grpc
from shop.user.v1 import user_pb2, user_pb2_grpc

from ops.process import System

T = TypeVar("T")
KIND = notification_pb2.NotificationKind
STATUS = order_pb2.OrderStatus
WELCOME_WITHIN_S = 2.0
EVENTS_WITHIN_S = 10.0


async def eventually(probe: Callable[[], Awaitable[T]], ok: Callable[[T], bool], *,
                     within: float, what: str, interval: float = 0.05) -> T:
    """Poll `probe` until `ok(value)`; fail with the last value after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = await probe()
        if ok(value):
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"{what}: not within {within:.1f}s; last seen: {value!r}")
        await asyncio.sleep(interval)


class Shop:
    """grpc.aio stubs on the system's services; calls carry x-user-id like the gateway's."""

    def __init__(self, system: System) -> None:
        names = ("user", "cart", "order", "payment", "inventory", "notification", "shipping")
        self.channels = {n: aio.insecure_channel(system.addr(n)) for n in names}
        self.users = user_pb2_grpc.UserServiceStub(self.channels["user"])
        self.carts = cart_pb2_grpc.CartServiceStub(self.channels["cart"])
        self.orders = order_pb2_grpc.OrderServiceStub(self.channels["order"])
        self.payments = payment_pb2_grpc.PaymentServiceStub(self.channels["payment"])
        self.stock = inventory_pb2_grpc.InventoryServiceStub(self.channels["inventory"])
        self.notes = notification_pb2_grpc.NotificationServiceStub(self.channels["notification"])
        self.shipping = shipping_pb2_grpc.ShippingServiceStub(self.channels["shipping"])

    @staticmethod
    def md(user: str) -> list[tuple[str, str]]:
        return [("x-user-id", user)]

    async def new_user(self, name: str = "Ada") -> str:
        reply = await self.users.CreateUser(user_pb2.CreateUserRequest(
            email=f"{uuid.uuid4().hex[:12]}@example.com", name=name,
            password="correct horse battery"), timeout=10)
        assert reply.user.id
        return str(reply.user.id)

    async def notifications(self, user: str) -> list[notification_pb2.Notification]:
        reply = await self.notes.ListNotifications(
            notification_pb2.ListNotificationsRequest(page_size=100), metadata=self.md(user),
            timeout=5)
        return list(reply.notifications)

    async def add_to_cart(self, user: str, product: str, quantity: int) -> None:
        await self.carts.AddItem(cart_pb2.AddItemRequest(product_id=product, quantity=quantity),
                                 metadata=self.md(user), timeout=5)

    async def cart(self, user: str) -> cart_pb2.Cart:
        reply = await self.carts.GetCart(cart_pb2.GetCartRequest(), metadata=self.md(user),
                                         timeout=5)
        return reply.cart

    async def order(self, user: str, items: list[tuple[str, int]],
                    token: str = "tok_visa") -> order_pb2.Order:
        reply = await self.orders.CreateOrder(order_pb2.CreateOrderRequest(
            items=[order_pb2.CreateOrderItem(product_id=p, quantity=q) for p, q in items],
            card_token=token), metadata=self.md(user), timeout=15)
        return reply.order

    async def get_order(self, user: str, order_id: str) -> order_pb2.Order:
        reply = await self.orders.GetOrder(order_pb2.GetOrderRequest(id=order_id),
                                           metadata=self.md(user), timeout=5)
        return reply.order

    async def list_orders(self, user: str) -> list[order_pb2.Order]:
        reply = await self.orders.ListOrders(order_pb2.ListOrdersRequest(),
                                             metadata=self.md(user), timeout=5)
        return list(reply.orders)

    async def shipment(self, order_id: str) -> shipping_pb2.Shipment | None:
        try:
            reply = await self.shipping.GetShipment(
                shipping_pb2.GetShipmentRequest(order_id=order_id), timeout=5)
        except aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        return reply.shipment

    async def stock_of(self, product: str) -> inventory_pb2.Stock:
        reply = await self.stock.GetStock(inventory_pb2.GetStockRequest(product_id=product),
                                          timeout=5)
        return reply.stock

    async def close(self) -> None:
        for channel in self.channels.values():
            await channel.close()


@pytest.fixture
async def shop(system: System) -> AsyncIterator[Shop]:
    client = Shop(system)
    try:
        yield client
    finally:
        await client.close()


def kinds(notes: list[notification_pb2.Notification]) -> list[int]:
    return [n.kind for n in notes]


def about(notes: list[notification_pb2.Notification], kind: int,
          text: str = "") -> list[notification_pb2.Notification]:
    """Notifications of `kind` whose subject or body mentions `text`."""
    return [n for n in notes if n.kind == kind and text in n.subject + " " + n.body]


async def test_new_user_gets_a_welcome_notification(shop: Shop) -> None:
    user = await shop.new_user(name="Grace")
    notes = await eventually(lambda: shop.notifications(user),
                             lambda ns: KIND.NOTIFICATION_KIND_WELCOME in kinds(ns),
                             within=WELCOME_WITHIN_S, what="WELCOME notification")
    welcome = about(notes, KIND.NOTIFICATION_KIND_WELCOME)
    assert len(welcome) == 1
    assert welcome[0].user_id == user and not welcome[0].read
    assert welcome[0].event_id
    # Nobody else got it.
    assert await shop.notifications("u" + uuid.uuid4().hex[:12]) == []


async def test_confirmed_order_from_cart_ships_notifies_and_clears_the_cart(shop: Shop) -> None:
    user = await shop.new_user()
    await shop.add_to_cart(user, "french-press", 2)
    await shop.add_to_cart(user, "novel-dune", 1)
    assert len((await shop.cart(user)).items) == 2

    order = await shop.order(user, [])  # no items: the cart is ordered
    assert order.status == STATUS.ORDER_STATUS_CONFIRMED, order
    assert order.from_cart
    assert sorted((i.product_id, i.quantity) for i in order.items) == [
        ("french-press", 2), ("novel-dune", 1)]

    # order.confirmed -> shipping creates the shipment ...
    shipment = await eventually(lambda: shop.shipment(order.id), lambda s: s is not None,
                                within=EVENTS_WITHIN_S, what="shipment")
    assert shipment is not None
    assert shipment.user_id == user and shipment.tracking_number
    tracking = shipment.tracking_number
    # ... order.shipped -> the order is SHIPPED with the same tracking number ...
    shipped = await eventually(lambda: shop.get_order(user, order.id),
                               lambda o: o.status == STATUS.ORDER_STATUS_SHIPPED,
                               within=EVENTS_WITHIN_S, what="order SHIPPED")
    assert shipped.tracking_number == tracking
    # ... and the user hears about it: receipt, confirmation, tracking number.
    notes = await eventually(
        lambda: shop.notifications(user),
        lambda ns: bool(about(ns, KIND.NOTIFICATION_KIND_SHIPPED, tracking)
                        and about(ns, KIND.NOTIFICATION_KIND_RECEIPT)
                        and about(ns, KIND.NOTIFICATION_KIND_ORDER_CONFIRMED)),
        within=EVENTS_WITHIN_S, what="SHIPPED, RECEIPT and ORDER_CONFIRMED notifications")
    # order.confirmed -> the cart it came from is empty.
    cart = await eventually(lambda: shop.cart(user), lambda c: len(c.items) == 0,
                            within=EVENTS_WITHIN_S, what="cart cleared")
    assert cart.total_cents == 0
    # Each event had its effect once.
    await asyncio.sleep(0.5)
    notes = await shop.notifications(user)
    for kind in (KIND.NOTIFICATION_KIND_WELCOME, KIND.NOTIFICATION_KIND_RECEIPT,
                 KIND.NOTIFICATION_KIND_ORDER_CONFIRMED, KIND.NOTIFICATION_KIND_SHIPPED):
        assert len(about(notes, kind)) == 1, (kind, notes)
    payment = (await shop.payments.GetPayment(
        payment_pb2.GetPaymentRequest(order_id=order.id), timeout=5)).payment
    assert payment.status == payment_pb2.PAYMENT_STATUS_CHARGED
    assert payment.amount_cents == order.total_cents


async def test_order_with_items_leaves_the_cart_alone(shop: Shop) -> None:
    user = await shop.new_user()
    await shop.add_to_cart(user, "water-bottle", 1)
    order = await shop.order(user, [("water-bottle", 1)])
    assert order.status == STATUS.ORDER_STATUS_CONFIRMED and not order.from_cart
    # Once the order has shipped, every order.confirmed consumer has seen it (the shipment
    # came from it); the cart consumer too, give or take its own fetch.
    await eventually(lambda: shop.get_order(user, order.id),
                     lambda o: o.status == STATUS.ORDER_STATUS_SHIPPED,
                     within=EVENTS_WITHIN_S, what="order SHIPPED")
    await eventually(lambda: shop.notifications(user),
                     lambda ns: bool(about(ns, KIND.NOTIFICATION_KIND_ORDER_CONFIRMED)),
                     within=EVENTS_WITHIN_S, what="ORDER_CONFIRMED notification")
    await asyncio.sleep(1.0)
    cart = await shop.cart(user)
    assert [(i.product_id, i.quantity) for i in cart.items] == [("water-bottle", 1)]


async def test_declined_order_notifies_payment_failed_and_cancelled(shop: Shop) -> None:
    user = await shop.new_user()
    before = await shop.stock_of("headphones")
    with pytest.raises(aio.AioRpcError) as err:
        await shop.order(user, [("headphones", 1)], token="tok_chargeDeclined")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    [order] = await shop.list_orders(user)
    assert order.status == STATUS.ORDER_STATUS_CANCELLED
    assert order.cancel_reason
    notes = await eventually(
        lambda: shop.notifications(user),
        lambda ns: bool(about(ns, KIND.NOTIFICATION_KIND_PAYMENT_FAILED)
                        and about(ns, KIND.NOTIFICATION_KIND_ORDER_CANCELLED)),
        within=EVENTS_WITHIN_S, what="PAYMENT_FAILED and ORDER_CANCELLED notifications")
    assert len(about(notes, KIND.NOTIFICATION_KIND_PAYMENT_FAILED)) == 1
    assert len(about(notes, KIND.NOTIFICATION_KIND_ORDER_CANCELLED)) == 1
    # No receipt, no shipment, and the reserved stock is back.
    assert not about(notes, KIND.NOTIFICATION_KIND_RECEIPT)
    assert await shop.shipment(order.id) is None
    after = await shop.stock_of("headphones")
    assert (after.available, after.reserved, after.sold) == (
        before.available, before.reserved, before.sold)
    payment = (await shop.payments.GetPayment(
        payment_pb2.GetPaymentRequest(order_id=order.id), timeout=5)).payment
    assert payment.status == payment_pb2.PAYMENT_STATUS_DECLINED
