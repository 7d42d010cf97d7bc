"""kill -9 of the order service with sagas in flight: every order still ends final, and the
money and stock invariants hold (DESIGN.md, "Guarantees the tests must prove")."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc import aio
from shop.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from shop.order.v1 import order_pb2, order_pb2_grpc
from shop.payment.v1 import payment_pb2, payment_pb2_grpc
from shop.user.v1 import user_pb2, user_pb2_grpc

from ops.natsd import NatsServer
from ops.process import System, start_system
from tests.fixtures_services import START_TIMEOUT_S, TEST_ENV
from tests.support import mesh

OP = order_pb2
FINAL = {OP.ORDER_STATUS_CONFIRMED, OP.ORDER_STATUS_SHIPPED, OP.ORDER_STATUS_CANCELLED}
PRODUCTS = {"espresso-machine": 30, "headphones": 25}


@pytest.fixture
def faulty_system(fresh_nats: NatsServer, data_dir: Path) -> Iterator[System]:
    # A short breaker reset and step timeout keep the recovery inside the test's bounds.
    env = {**TEST_ENV, "SHOP_BREAKER_RESET_S": "1", "SHOP_SAGA_STEP_TIMEOUT_S": "1",
           "SHOP_SAGA_CHARGE_ATTEMPTS": "30", "SHOP_LOG_LEVEL": "INFO"}
    sysm = start_system(data_dir, fresh_nats.url, env=env, ready_timeout=START_TIMEOUT_S)
    try:
        yield sysm
    finally:
        for proc in sysm.processes:
            proc.sigcont()
        sysm.stop()


async def test_kill_order_mid_saga_every_order_final_and_invariants_hold(
        faulty_system: System) -> None:
    sysm = faulty_system
    chans = {n: mesh.channel(sysm.addr(n)) for n in ("user", "inventory", "payment")}
    users_stub = user_pb2_grpc.UserServiceStub(chans["user"])
    stock = inventory_pb2_grpc.InventoryServiceStub(chans["inventory"])
    pay = payment_pb2_grpc.PaymentServiceStub(chans["payment"])
    try:
        users = [str((await users_stub.CreateUser(user_pb2.CreateUserRequest(
            email=f"{uuid.uuid4().hex[:8]}@example.com", name="Bo", password="long enough pw"),
            timeout=10)).user.id) for _ in range(4)]
        for product, amount in PRODUCTS.items():
            await stock.SetStock(inventory_pb2.SetStockRequest(
                product_id=product, available=amount), timeout=5)

        # Payment frozen: every saga gets stuck at (or before) its charge.
        sysm["payment"].sigstop()
        order_chan = mesh.channel(sysm.addr("order"))
        orders = order_pb2_grpc.OrderServiceStub(order_chan)

        async def place(i: int) -> str:
            token = "tok_chargeDeclined" if i % 4 == 3 else "tok_visa"
            product = list(PRODUCTS)[i % 2]
            try:
                reply = await orders.CreateOrder(OP.CreateOrderRequest(
                    items=[OP.CreateOrderItem(product_id=product, quantity=1 + i % 3)],
                    card_token=token), metadata=[("x-user-id", users[i % 4])], timeout=1.5)
                return str(reply.order.status)
            except aio.AioRpcError as err:
                return err.code().name

        answers = await asyncio.gather(*(place(i) for i in range(16)))
        assert str(OP.ORDER_STATUS_PENDING) in answers  # sagas really were in flight
        sysm["order"].kill()
        await order_chan.close()
        sysm["payment"].sigcont()
        sysm["order"].restart(timeout=START_TIMEOUT_S)

        order_chan = mesh.channel(sysm.addr("order"))
        orders = order_pb2_grpc.OrderServiceStub(order_chan)
        deadline = time.monotonic() + 60
        while True:
            all_orders: list[OP.Order] = []
            for user in users:
                page = await orders.ListOrders(OP.ListOrdersRequest(page_size=100),
                                               metadata=[("x-user-id", user)], timeout=5)
                all_orders += list(page.orders)
            if all(o.status in FINAL for o in all_orders) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        await order_chan.close()

        assert len(all_orders) == 16
        pending = [(o.id, OP.OrderStatus.Name(o.status)) for o in all_orders
                   if o.status not in FINAL]
        assert not pending, f"orders not final after restart: {pending}"

        # Money: charged - refunded == total when confirmed/shipped, 0 when cancelled.
        for o in all_orders:
            try:
                p = (await pay.GetPayment(payment_pb2.GetPaymentRequest(order_id=o.id),
                                          timeout=5)).payment
                net = 0 if p.status in (payment_pb2.PAYMENT_STATUS_DECLINED,
                                        payment_pb2.PAYMENT_STATUS_UNSPECIFIED) \
                    else p.amount_cents - p.refunded_cents
            except aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.NOT_FOUND
                net = 0
            expected = o.total_cents if o.status != OP.ORDER_STATUS_CANCELLED else 0
            assert net == expected, (o.id, OP.OrderStatus.Name(o.status), o.cancel_reason)
        assert any(o.status != OP.ORDER_STATUS_CANCELLED for o in all_orders)
        assert any(o.cancel_reason == "payment declined" for o in all_orders)

        # Stock: available + reserved + sold == what was set; nothing left reserved.
        for product, amount in PRODUCTS.items():
            s = (await stock.GetStock(inventory_pb2.GetStockRequest(product_id=product),
                                      timeout=5)).stock
            assert min(s.available, s.reserved, s.sold) >= 0
            assert s.available + s.reserved + s.sold == amount, (product, s)
            assert s.reserved == 0, (product, s)
            sold = sum(i.quantity for o in all_orders if o.status != OP.ORDER_STATUS_CANCELLED
                       for i in o.items if i.product_id == product)
            assert s.sold == sold, (product, s, sold)
    finally:
        for ch in chans.values():
            await ch.close()
