"""The order service and its saga against the real services (all eight processes + NATS),
on each storage backend (the module's system runs once on SQLite, once on PostgreSQL)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TypeVar

import grpc
import httpx
import nats
import pytest
from grpc import aio
from shop.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from shop.notification.v1 import notification_pb2, notification_pb2_grpc
from shop.order.v1 import order_pb2, order_pb2_grpc
from shop.payment.v1 import payment_pb2, payment_pb2_grpc
from shop.shipping.v1 import shipping_pb2, shipping_pb2_grpc
from shop.user.v1 import user_pb2, user_pb2_grpc

from ops.natsd import NatsServer
from ops.process import ServiceProcess, System, start_system
from services.common.bus import Bus
from services.common.dlq import DeadLetter, list_dead_letters
from tests.fixtures_services import START_TIMEOUT_S, TEST_ENV
from tests.support import mesh
from tests.support.mesh import nats_auth

OP = order_pb2
STATUS = OP.OrderStatus


class Client:
    """aio stubs on the system's services, calling as a given user (x-user-id)."""

    def __init__(self, system: System) -> None:
        self.channels = {n: mesh.channel(system.addr(n))
                         for n in ("order", "inventory", "payment", "user", "shipping",
                                   "notification")}
        self.orders = order_pb2_grpc.OrderServiceStub(self.channels["order"])
        self.stock = inventory_pb2_grpc.InventoryServiceStub(self.channels["inventory"])
        self.payments = payment_pb2_grpc.PaymentServiceStub(self.channels["payment"])
        self.users = user_pb2_grpc.UserServiceStub(self.channels["user"])
        self.shipping = shipping_pb2_grpc.ShippingServiceStub(self.channels["shipping"])
        self.notes = notification_pb2_grpc.NotificationServiceStub(
            self.channels["notification"])

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

    async def shipment(self, order_id: str) -> shipping_pb2.Shipment | None:
        try:
            reply = await self.shipping.GetShipment(
                shipping_pb2.GetShipmentRequest(order_id=order_id), timeout=5)
        except aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        return reply.shipment

    async def note_kinds(self, user: str) -> list[int]:
        reply = await self.notes.ListNotifications(
            notification_pb2.ListNotificationsRequest(user_id=user, page_size=100),
            metadata=[("x-user-id", user)], timeout=5)
        return [n.kind for n in reply.notifications]

    async def cancel(self, user: str, order_id: str, reason: str = "",
                     timeout: float = 20) -> OP.Order:  # noqa: ASYNC109
        reply = await self.orders.CancelOrder(OP.CancelOrderRequest(id=order_id, reason=reason),
                                              metadata=[("x-user-id", user)], timeout=timeout)
        return reply.order

    async def close(self) -> None:
        for ch in self.channels.values():
            await ch.close()


T = TypeVar("T")


async def until(probe: Callable[[], Awaitable[T]], ok: Callable[[T], bool], what: str,
                timeout_s: float = 30.0) -> T:
    """Polls `probe` until `ok(result)`; fails naming `what` past the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = await probe()
        if ok(got):
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}: last {got}"
        await asyncio.sleep(0.1)


@pytest.fixture(scope="module")
def system(nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory,
           module_db_env: dict[str, str]) -> Iterator[System]:
    """All eight services on the module's backend (SQLite files, or a PostgreSQL database
    per service), shared by the module's tests."""
    sysm = start_system(tmp_path_factory.mktemp("system"), nats_server.url,
                        env={**TEST_ENV, **module_db_env}, ready_timeout=START_TIMEOUT_S)
    try:
        yield sysm
    finally:
        sysm.stop()


@pytest.fixture
async def client(system: System) -> AsyncIterator[Client]:
    c = Client(system)
    try:
        yield c
    finally:
        await c.close()


def order_id_of(err: aio.AioRpcError) -> str:
    return str(dict(err.trailing_metadata() or ()).get("x-order-id", ""))


async def test_happy_path_confirms_moves_stock_and_charges(client: Client,
                                                           system: System) -> None:
    user = await client.new_user()
    before = await client.stock_of("french-press")
    order = await client.create(user, [("french-press", 2), ("novel-dune", 1)])
    assert order.status == STATUS.ORDER_STATUS_CONFIRMED
    assert order.total_cents == 2 * 2999 + 1099 and order.currency == "USD"
    # The units become sold once inventory consumes order.confirmed.
    after = await until(lambda: client.stock_of("french-press"),
                        lambda s: s.sold == before.sold + 2, "the stock commit")
    assert (after.available, after.reserved) == (before.available - 2, before.reserved)
    payment = await client.payment(order.id)
    assert payment.status == payment_pb2.PAYMENT_STATUS_CHARGED
    assert payment.amount_cents == order.total_cents
    history = await client.orders.GetSagaHistory(OP.GetSagaHistoryRequest(order_id=order.id),
                                                 metadata=[("x-user-id", user)], timeout=5)
    assert [(s.step, s.outcome) for s in history.steps] == [
        ("reserve_stock", "succeeded"), ("charge", "succeeded"), ("confirm", "succeeded")]
    nc = await nats.connect(system.nats_url, **nats_auth().options())
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


async def _assert_cancelled_and_settled(client: Client, user: str, order: OP.Order,
                                        product: str, before: inventory_pb2.Stock) -> None:
    """Goods and money agree for a cancelled confirmed order: refunded in full, its units
    back in available, its shipment CANCELLED and never SHIPPED (not even after the
    dispatch delay), an ORDER_CANCELLED notification and no SHIPPED one."""
    final = await until(lambda: client.get(user, order.id),
                        lambda o: o.status != STATUS.ORDER_STATUS_CONFIRMED, "the cancel saga")
    assert final.status == STATUS.ORDER_STATUS_CANCELLED, final
    payment = await client.payment(order.id)
    assert payment.status == payment_pb2.PAYMENT_STATUS_REFUNDED
    assert payment.refunded_cents == payment.amount_cents == order.total_cents
    after = await client.stock_of(product)
    assert (after.available, after.reserved, after.sold) == (
        before.available, before.reserved, before.sold)
    history = await client.orders.GetSagaHistory(OP.GetSagaHistoryRequest(order_id=order.id),
                                                 metadata=[("x-user-id", user)], timeout=5)
    done = [s.step for s in history.steps if s.outcome == "succeeded"]
    assert done[-3:] == ["cancel_shipment", "refund", "restock"], done
    kinds = await until(lambda: client.note_kinds(user),
                        lambda k: notification_pb2.NOTIFICATION_KIND_ORDER_CANCELLED in k,
                        "the ORDER_CANCELLED notification")
    shipment = await until(lambda: client.shipment(order.id), lambda s: s is not None,
                           "the shipment (made CANCELLED from the late order.confirmed)")
    assert shipment is not None
    assert shipment.status == shipping_pb2.SHIPMENT_STATUS_CANCELLED
    # Past the moment it would have been dispatched: still not shipped, nobody told so.
    await asyncio.sleep(max(0.0, shipment.dispatch_time.ToMicroseconds() / 1e6 - time.time())
                        + 1.5)
    shipment = await client.shipment(order.id)
    assert shipment is not None
    assert shipment.status == shipping_pb2.SHIPMENT_STATUS_CANCELLED
    kinds = await client.note_kinds(user)
    assert notification_pb2.NOTIFICATION_KIND_SHIPPED not in kinds
    assert (await client.get(user, order.id)).status == STATUS.ORDER_STATUS_CANCELLED


async def test_cancel_after_confirm_while_shipping_is_frozen(client: Client,
                                                             system: System) -> None:
    """Shipping stopped (SIGSTOP) holds order.confirmed and the CancelShipment call: the
    cancel waits for it (an unwell downstream, no attempts used up) and wins; once shipping
    resumes nothing is shipped."""
    user = await client.new_user()
    before = await client.stock_of("usb-c-charger")
    system["shipping"].sigstop()
    try:
        order = await client.create(user, [("usb-c-charger", 1)])
        assert order.status == STATUS.ORDER_STATUS_CONFIRMED
        cancel = asyncio.ensure_future(client.cancel(user, order.id, "oops"))
        await asyncio.sleep(1.0)
        assert not cancel.done()  # waiting for shipping, not cancelled without it
    finally:
        system["shipping"].sigcont()
    reply = await cancel
    assert reply.status in (STATUS.ORDER_STATUS_CANCELLED, STATUS.ORDER_STATUS_CONFIRMED)
    await _assert_cancelled_and_settled(client, user, order, "usb-c-charger", before)
    assert (await client.get(user, order.id)).cancel_reason == "oops"
    again = await client.cancel(user, order.id)
    assert again.status == STATUS.ORDER_STATUS_CANCELLED  # idempotent


async def test_cancel_of_a_confirmed_order_before_dispatch(client: Client) -> None:
    user = await client.new_user()
    before = await client.stock_of("yoga-mat")
    order = await client.create(user, [("yoga-mat", 2)])
    assert order.status == STATUS.ORDER_STATUS_CONFIRMED
    reply = await client.cancel(user, order.id)
    assert reply.status == STATUS.ORDER_STATUS_CANCELLED
    await _assert_cancelled_and_settled(client, user, order, "yoga-mat", before)


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


async def test_order_shipped_event_marks_shipped_and_cancel_is_refused(client: Client) -> None:
    """Dispatched after the delay: SHIPPED with its tracking number; a cancel then is
    FAILED_PRECONDITION "already shipped" and changes nothing (no refund, stock sold)."""
    user = await client.new_user()
    order = await client.create(user, [("chef-knife", 1)])
    pending = await until(lambda: client.shipment(order.id), lambda s: s is not None,
                          "the shipment")
    assert pending is not None and pending.tracking_number
    got = await until(lambda: client.get(user, order.id),
                      lambda o: o.status == STATUS.ORDER_STATUS_SHIPPED, "SHIPPED")
    assert got.tracking_number == pending.tracking_number
    stock = await client.stock_of("chef-knife")
    with pytest.raises(aio.AioRpcError) as err:
        await client.cancel(user, order.id, timeout=5)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "already shipped" in (err.value.details() or "")
    assert (await client.get(user, order.id)).status == STATUS.ORDER_STATUS_SHIPPED
    assert (await client.payment(order.id)).status == payment_pb2.PAYMENT_STATUS_CHARGED
    assert (await client.stock_of("chef-knife")).sold == stock.sold


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


async def test_retry_saga_is_an_operator_call_for_sagas_needing_attention(
        client: Client, system: System) -> None:
    """RetrySaga: NOT_FOUND for an unknown order, FAILED_PRECONDITION for a saga not in
    REQUIRES_ATTENTION (nothing changes), PERMISSION_DENIED on behalf of a user; and
    `shopctl saga retry` says so in one line."""
    user = await client.new_user()
    order = await client.create(user, [("water-bottle", 1)])
    calls = [
        (OP.RetrySagaRequest(order_id=uuid.uuid4().hex), (), grpc.StatusCode.NOT_FOUND),
        (OP.RetrySagaRequest(order_id=order.id), (), grpc.StatusCode.FAILED_PRECONDITION),
        (OP.RetrySagaRequest(order_id=order.id), (("x-user-id", user),),
         grpc.StatusCode.PERMISSION_DENIED),
        (OP.RetrySagaRequest(order_id=" "), (), grpc.StatusCode.INVALID_ARGUMENT),
    ]
    for request, metadata, code in calls:
        with pytest.raises(aio.AioRpcError) as err:
            await client.orders.RetrySaga(request, metadata=metadata, timeout=10)
        assert err.value.code() == code, err.value
    got = await client.get(user, order.id)
    assert got.status in (STATUS.ORDER_STATUS_CONFIRMED, STATUS.ORDER_STATUS_SHIPPED)
    env = {**os.environ, "ORDER_ADDR": system.addr("order"), "SHOP_DATA_DIR": str(system.data_dir)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ops.shopctl", "saga", "retry", order.id, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err_out = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1, (out, err_out)
    assert err_out.decode().startswith("shopctl: nothing to retry") and b"\n" in err_out


async def test_a_refused_commit_after_confirmation_is_dead_lettered_not_dropped(
        client: Client, system: System) -> None:
    """The reservation is released behind the saga's back while payment hangs (an
    operator's mistake): the charge then succeeds and the order is confirmed, and the
    stock commit that follows from order.confirmed is refused by inventory. The event is
    retried, then kept in the dead-letter stream with the refusal, for an operator
    (`shopctl dlq list`), instead of being dropped; the released unit is not sold."""
    user = await client.new_user()
    system["payment"].sigstop()
    try:
        reply = await client.orders.CreateOrder(OP.CreateOrderRequest(
            items=[OP.CreateOrderItem(product_id="french-press", quantity=1)],
            card_token="tok_visa"), metadata=[("x-user-id", user)], timeout=2)
        order = reply.order
        assert order.status == STATUS.ORDER_STATUS_PENDING  # waiting for the charge
        await client.stock.ReleaseStock(inventory_pb2.ReleaseStockRequest(order_id=order.id),
                                        timeout=5)
    finally:
        system["payment"].sigcont()
    done = await until(lambda: client.get(user, order.id),
                       lambda o: o.status != STATUS.ORDER_STATUS_PENDING, "the saga's end")
    assert done.status == STATUS.ORDER_STATUS_CONFIRMED, done
    sold_before = (await client.stock_of("french-press")).sold
    bus = await Bus.connect(system.nats_url, name="test-refused-commit", auth=nats_auth())
    try:
        async def dead_letters() -> list[DeadLetter]:
            return [d for d in await list_dead_letters(bus.js)
                    if d.consumer == "inventory-orders" and order.id.encode() in d.data]

        [dead] = await until(dead_letters, bool, "the refused commit's dead letter", 45)
    finally:
        await bus.close()
    assert dead.subject == "order.confirmed"
    assert "released" in dead.reason
    assert (await client.stock_of("french-press")).sold == sold_before


async def test_rest_cancel_answers_cancelled_or_already_shipped(
        client: Client, gateway: ServiceProcess) -> None:
    """POST /api/orders/{id}/cancel through the gateway: 200 with the order CANCELLED
    before dispatch, 400 FAILED_PRECONDITION "already shipped" after it. The service-only
    calls (CancelShipment, RestockStock, RetrySaga) have no REST route."""
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=20.0) as api:
        email = f"rest-{uuid.uuid4().hex[:8]}@example.com"
        r = await api.post("/api/users", json={"email": email, "name": "Rest",
                                               "password": "s3cret-pass"})
        assert r.status_code == 201, r.text
        r = await api.post("/api/auth/login", json={"email": email, "password": "s3cret-pass"})
        headers = {"Authorization": f"Bearer {r.json()['accessToken']}"}
        body = {"items": [{"productId": "chef-knife", "quantity": 1}], "cardToken": "tok_visa"}
        first = (await api.post("/api/orders", json=body, headers=headers)).json()
        r = await api.post(f"/api/orders/{first['id']}/cancel", json={}, headers=headers)
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "ORDER_STATUS_CANCELLED"
        second = (await api.post("/api/orders", json=body, headers=headers)).json()
        user = second["userId"]
        await until(lambda: client.get(user, second["id"]),
                    lambda o: o.status == STATUS.ORDER_STATUS_SHIPPED, "SHIPPED")
        r = await api.post(f"/api/orders/{second['id']}/cancel", json={}, headers=headers)
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["status"] == "FAILED_PRECONDITION" and "already shipped" in err["message"]
        spec = (await api.get("/openapi.json")).json()
    operations = {op.get("operationId", "") for path in spec["paths"].values()
                  for op in path.values() if isinstance(op, dict)}
    assert any("CancelOrder" in o for o in operations), operations
    assert not {o for o in operations
                if any(n in o for n in ("CancelShipment", "RestockStock", "RetrySaga"))}
    assert "/api/orders/{id}/cancel" in spec["paths"]


async def test_cancellation_saga_survives_a_crash_of_the_order_service(
        system_fresh: System) -> None:
    """kill -9 of the order service while its cancellation saga waits at cancel_shipment
    (shipping frozen): the restarted service resumes the saga from its persisted step and
    it ends CANCELLED, refunded, restocked, the shipment cancelled."""
    sysm = system_fresh
    c = Client(sysm)
    try:
        user = await c.new_user()
        before = await c.stock_of("french-press")
        sysm["shipping"].sigstop()
        try:
            order = await c.create(user, [("french-press", 2)])
            assert order.status == STATUS.ORDER_STATUS_CONFIRMED
            with contextlib.suppress(aio.AioRpcError):  # the answer may not come in time
                reply = await c.cancel(user, order.id, "crash test", timeout=2)
                assert reply.status == STATUS.ORDER_STATUS_CONFIRMED  # still cancelling
            sysm["order"].restart(graceful=False)
        finally:
            sysm["shipping"].sigcont()
        await _assert_cancelled_and_settled(c, user, order, "french-press", before)
        history = await c.orders.GetSagaHistory(
            OP.GetSagaHistoryRequest(order_id=order.id), metadata=[("x-user-id", user)],
            timeout=5)
        assert [s.step for s in history.steps].count("cancel") == 1
    finally:
        await c.close()
