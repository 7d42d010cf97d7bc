"""The guarantees every fault test checks afterwards (DESIGN.md, "Guarantees the tests must
prove"), read over gRPC only, as a user of shop would:

1. every order ends CONFIRMED/SHIPPED or CANCELLED (none PENDING, none needing attention);
2. money: per order, charged - refunded == total when CONFIRMED/SHIPPED, 0 when CANCELLED,
   and the charge (one payment per order) is for the order's total;
3. stock: per product, available + reserved + sold == the stock set, none negative; once all
   orders are final nothing stays reserved, and sold == the quantities of confirmed orders;
4. one RECEIPT notification per order whose payment was ever CHARGED, none for the others.

    report = await check_invariants(system.addr, users=users, stock_set={"headphones": 30})
    report.assert_ok()

The system must be up again; the checks poll (bounded by `timeout_s`) while sagas and
event consumers catch up, then report every violation at once.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from grpc import aio
from shop.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from shop.notification.v1 import notification_pb2, notification_pb2_grpc
from shop.order.v1 import order_pb2, order_pb2_grpc
from shop.payment.v1 import payment_pb2, payment_pb2_grpc

from tests.support import mesh

__all__ = ["InvariantReport", "check_invariants", "list_all_orders"]

T = TypeVar("T")

DONE = frozenset({order_pb2.ORDER_STATUS_CONFIRMED, order_pb2.ORDER_STATUS_SHIPPED})
FINAL = DONE | {order_pb2.ORDER_STATUS_CANCELLED}
STUCK = frozenset({order_pb2.ORDER_STATUS_REQUIRES_ATTENTION})  # final, but a violation
RECEIPT = notification_pb2.NOTIFICATION_KIND_RECEIPT
_TRANSIENT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                        grpc.StatusCode.CANCELLED})
_RPC_TIMEOUT_S = 5.0
_PARALLEL = 16


@dataclass
class InvariantReport:
    orders: list[order_pb2.Order] = field(default_factory=list)
    payments: dict[str, payment_pb2.Payment] = field(default_factory=dict)
    stock: dict[str, inventory_pb2.Stock] = field(default_factory=dict)
    receipts: Counter[str] = field(default_factory=Counter)  # order id -> receipts
    violations: list[str] = field(default_factory=list)
    waited_s: float = 0.0

    def count(self, *statuses: int) -> int:
        return sum(1 for o in self.orders if o.status in statuses)

    def summary(self) -> str:
        charged = sum(1 for p in self.payments.values() if _ever_charged(p))
        return (f"{len(self.orders)} orders: {self.count(*DONE)} confirmed/shipped, "
                f"{self.count(order_pb2.ORDER_STATUS_CANCELLED)} cancelled, "
                f"{self.count(order_pb2.ORDER_STATUS_PENDING)} pending, "
                f"{self.count(*STUCK)} needing attention; {charged} charged; "
                f"settled after {self.waited_s:.1f} s")

    def assert_ok(self) -> None:
        if self.violations:
            shown = "\n  ".join(self.violations[:40])
            more = len(self.violations) - 40
            tail = f"\n  ... and {more} more" if more > 0 else ""
            raise AssertionError(f"{len(self.violations)} invariant violations "
                                 f"({self.summary()}):\n  {shown}{tail}")


def _ever_charged(p: payment_pb2.Payment) -> bool:
    return p.status in (payment_pb2.PAYMENT_STATUS_CHARGED, payment_pb2.PAYMENT_STATUS_REFUNDED)


def _net(p: payment_pb2.Payment | None) -> int:
    if p is None or not _ever_charged(p):
        return 0
    return int(p.amount_cents - p.refunded_cents)


async def _retrying(fn: Callable[[], Awaitable[T]], until: float) -> T:
    """`fn()` retried on transient errors (services still coming back) until `until`."""
    while True:
        try:
            return await fn()
        except aio.AioRpcError as err:
            if err.code() not in _TRANSIENT or time.monotonic() >= until:
                raise
        await asyncio.sleep(0.2)


async def list_all_orders(stub: order_pb2_grpc.OrderServiceStub, user: str,
                          until: float) -> list[order_pb2.Order]:
    """Every order of `user` (all pages)."""
    orders: list[order_pb2.Order] = []
    token = ""
    for _ in range(10_000):
        req = order_pb2.ListOrdersRequest(page_size=100, page_token=token)

        async def page(req: order_pb2.ListOrdersRequest = req) -> Any:
            return await stub.ListOrders(req, metadata=[("x-user-id", user)],
                                         timeout=_RPC_TIMEOUT_S)

        reply = await _retrying(page, until)
        orders.extend(reply.orders)
        token = reply.next_page_token
        if not token:
            break
    return orders


async def _all_orders(stub: order_pb2_grpc.OrderServiceStub, users: Sequence[str],
                      until: float) -> list[order_pb2.Order]:
    lists = await asyncio.gather(*(list_all_orders(stub, u, until) for u in users))
    return [o for lst in lists for o in lst]


async def _receipts(stub: notification_pb2_grpc.NotificationServiceStub, user: str,
                    until: float) -> list[notification_pb2.Notification]:
    found: list[notification_pb2.Notification] = []
    token = ""
    for _ in range(10_000):
        req = notification_pb2.ListNotificationsRequest(page_size=100, page_token=token)

        async def page(req: notification_pb2.ListNotificationsRequest = req) -> Any:
            return await stub.ListNotifications(req, metadata=[("x-user-id", user)],
                                                timeout=_RPC_TIMEOUT_S)

        reply = await _retrying(page, until)
        found.extend(n for n in reply.notifications if n.kind == RECEIPT)
        token = reply.next_page_token
        if not token:
            break
    return found


async def check_invariants(
    addr: Callable[[str], str] | Mapping[str, str],
    *,
    users: Sequence[str],
    stock_set: Mapping[str, int],
    timeout_s: float = 60.0,
    expect_orders: int | None = None,
    exclusive_products: bool = True,
) -> InvariantReport:
    """Wait (up to `timeout_s`) for every order to be final and every receipt delivered,
    then check the invariants. `addr(service)` (or a mapping) gives each service's address.
    `stock_set`: product -> the stock set for it before the run (the test's only SetStock).
    `exclusive_products`: only these users' orders touched those products, so reserved
    must be 0 and sold must match their confirmed orders.
    `expect_orders`: at least this many orders must exist (the ones the client saw created).
    """
    where = addr if callable(addr) else addr.__getitem__
    t0 = time.monotonic()
    until = t0 + timeout_s
    report = InvariantReport()
    chans = {n: mesh.channel(where(n))
             for n in ("order", "payment", "inventory", "notification")}
    try:
        orders_stub = order_pb2_grpc.OrderServiceStub(chans["order"])
        pay_stub = payment_pb2_grpc.PaymentServiceStub(chans["payment"])
        inv_stub = inventory_pb2_grpc.InventoryServiceStub(chans["inventory"])
        note_stub = notification_pb2_grpc.NotificationServiceStub(chans["notification"])

        # 1. every order final
        orders = await _all_orders(orders_stub, users, until)
        while any(o.status not in FINAL | STUCK for o in orders) and time.monotonic() < until:
            await asyncio.sleep(0.5)
            orders = await _all_orders(orders_stub, users, until)
        report.orders = orders
        for o in orders:
            if o.status not in FINAL:
                report.violations.append(
                    f"order {o.id} is {order_pb2.OrderStatus.Name(o.status)} ({o.cancel_reason!r})")
        if expect_orders is not None and len(orders) < expect_orders:
            report.violations.append(
                f"{len(orders)} orders listed, but {expect_orders} were created")
        ids = [o.id for o in orders]
        if len(set(ids)) != len(ids):
            report.violations.append("ListOrders returned an order twice")

        # 2. money
        sem = asyncio.Semaphore(_PARALLEL)

        async def payment_of(o: order_pb2.Order) -> None:
            async def get() -> Any:
                return await pay_stub.GetPayment(payment_pb2.GetPaymentRequest(order_id=o.id),
                                                 metadata=[("x-user-id", o.user_id)],
                                                 timeout=_RPC_TIMEOUT_S)
            async with sem:
                try:
                    report.payments[o.id] = (await _retrying(get, until)).payment
                except aio.AioRpcError as err:
                    if err.code() != grpc.StatusCode.NOT_FOUND:
                        raise

        await asyncio.gather(*(payment_of(o) for o in orders))
        for o in orders:
            p = report.payments.get(o.id)
            net = _net(p)
            name = order_pb2.OrderStatus.Name(o.status)
            if o.status in DONE:
                if net != o.total_cents:
                    report.violations.append(
                        f"order {o.id} {name} total {o.total_cents} but net charge {net}")
                if p is not None and p.amount_cents != o.total_cents:
                    report.violations.append(
                        f"order {o.id}: charged {p.amount_cents}, total {o.total_cents}")
            elif o.status == order_pb2.ORDER_STATUS_CANCELLED and net != 0:
                report.violations.append(
                    f"order {o.id} CANCELLED ({o.cancel_reason!r}) but net charge {net}")
            if p is not None and p.refunded_cents > p.amount_cents:
                report.violations.append(f"order {o.id} refunded more than charged")

        # 3. stock
        for product, total in stock_set.items():
            async def stock(product: str = product) -> Any:
                return await inv_stub.GetStock(
                    inventory_pb2.GetStockRequest(product_id=product), timeout=_RPC_TIMEOUT_S)
            s = (await _retrying(stock, until)).stock
            report.stock[product] = s
            if min(s.available, s.reserved, s.sold) < 0:
                report.violations.append(f"stock of {product} negative: {s}")
            if s.available + s.reserved + s.sold != total:
                report.violations.append(
                    f"stock of {product}: {s.available} + {s.reserved} + {s.sold} "
                    f"!= {total} set")
            if exclusive_products and all(o.status in FINAL for o in orders):
                sold = sum(i.quantity for o in orders if o.status in DONE
                           for i in o.items if i.product_id == product)
                if s.reserved != 0:
                    report.violations.append(
                        f"{product}: {s.reserved} still reserved with every order final")
                if s.sold != sold:
                    report.violations.append(
                        f"{product}: sold {s.sold}, confirmed orders hold {sold}")

        # 4. one receipt per charged payment (consumers may still be catching up)
        want = {oid for oid, p in report.payments.items() if _ever_charged(p)}
        while True:
            lists = await asyncio.gather(*(_receipts(note_stub, u, until) for u in users))
            report.receipts = Counter()
            known = set(ids)
            for lst in lists:
                for n in lst:
                    oid = next((i for i in known if i in n.subject), "")
                    report.receipts[oid] += 1
            if all(report.receipts[i] >= 1 for i in want) or time.monotonic() >= until:
                break
            await asyncio.sleep(0.5)
        for oid in want:
            if report.receipts[oid] != 1:
                report.violations.append(f"order {oid}: {report.receipts[oid]} receipts")
        for oid, many in report.receipts.items():
            if oid not in want:
                report.violations.append(
                    f"{many} receipts for {oid or 'an unknown order'}, which was never charged")
    finally:
        for chan in chans.values():
            await chan.close()
    report.waited_s = time.monotonic() - t0
    return report
