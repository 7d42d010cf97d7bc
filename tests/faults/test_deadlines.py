"""A hung payment service under a 2 s budget: the CreateOrder caller gets its answer in time
(the order back as PENDING, per the order service, or DEADLINE_EXCEEDED), and once the payment
service wakes up the order still ends consistent (tests/support/invariants.py)."""

from __future__ import annotations

import asyncio
import time
import uuid

import grpc
from grpc import aio
from shop.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from shop.order.v1 import order_pb2, order_pb2_grpc
from shop.user.v1 import user_pb2, user_pb2_grpc

from ops.process import System
from tests.support import mesh
from tests.support.invariants import check_invariants

PRODUCT = "mechanical-keyboard"
STOCK = 10
BUDGET_S = 2.0
ANSWER_WITHIN_S = 2.2
HUNG_S = 5.0


async def test_hung_payment_answers_within_budget_and_order_ends_consistent(
        system_fresh: System) -> None:
    sysm = system_fresh
    async with mesh.channel(sysm.addr("user")) as uchan, \
            mesh.channel(sysm.addr("inventory")) as ichan, \
            mesh.channel(sysm.addr("order")) as ochan:
        user = (await user_pb2_grpc.UserServiceStub(uchan).CreateUser(user_pb2.CreateUserRequest(
            email=f"hung-{uuid.uuid4().hex[:8]}@example.com", name="Hung",
            password="long enough password"), timeout=10)).user.id
        await inventory_pb2_grpc.InventoryServiceStub(ichan).SetStock(
            inventory_pb2.SetStockRequest(product_id=PRODUCT, available=STOCK), timeout=5)
        orders = order_pb2_grpc.OrderServiceStub(ochan)
        md = [("x-user-id", user)]
        # Warm the channel so the measurement is the budget, not a connect.
        await orders.ListOrders(order_pb2.ListOrdersRequest(), metadata=md, timeout=5)

        sysm["payment"].sigstop()
        try:
            t0 = time.monotonic()
            try:
                reply = await orders.CreateOrder(order_pb2.CreateOrderRequest(
                    items=[order_pb2.CreateOrderItem(product_id=PRODUCT, quantity=2)],
                    card_token="tok_visa", idempotency_key="hung-1"),
                    metadata=md, timeout=BUDGET_S)
                answer = order_pb2.OrderStatus.Name(reply.order.status)
            except aio.AioRpcError as err:
                answer = err.code().name
            took = time.monotonic() - t0
            assert took < ANSWER_WITHIN_S, f"answered {answer} after {took:.2f} s"
            assert answer in ("ORDER_STATUS_PENDING", grpc.StatusCode.DEADLINE_EXCEEDED.name)
            await asyncio.sleep(max(0.0, HUNG_S - (time.monotonic() - t0)))
        finally:
            sysm["payment"].sigcont()

    report = await check_invariants(sysm.addr, users=[user], stock_set={PRODUCT: STOCK},
                                    timeout_s=60, expect_orders=1)
    report.assert_ok()
    (order,) = report.orders
    assert order.status in (order_pb2.ORDER_STATUS_CONFIRMED, order_pb2.ORDER_STATUS_SHIPPED,
                            order_pb2.ORDER_STATUS_CANCELLED)
