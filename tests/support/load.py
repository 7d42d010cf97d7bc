"""An order load for fault tests: customers placing (and cancelling) orders over gRPC as a
careful client would, while the test breaks things.

A create carries an idempotency key and is retried with the same key while the answer is
transient (UNAVAILABLE, DEADLINE_EXCEEDED, CANCELLED: the service is restarting, or the
call outlived its deadline), so one customer action is one order however often it is sent.
Every order id a client was told about is kept in `created`; answers are counted in
`answers`; anything a client should never see goes to `unexpected`.

    async with OrderClient(system.addr("order"), retry_for_s=20) as client:
        await paced(60, 6.0, 8, lambda i: client.create(users[i % 4], {"mug": 1}, key=f"k{i}"))
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

import grpc
from grpc import aio
from shop.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from shop.order.v1 import order_pb2, order_pb2_grpc

from tests.support import mesh

__all__ = ["REFUSED", "TRANSIENT", "Answer", "OrderClient", "channel", "paced", "set_stock"]

T = TypeVar("T")

TRANSIENT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                       grpc.StatusCode.CANCELLED})
# Refusals that leave a final, readable (CANCELLED) order behind: stock, card.
REFUSED = frozenset({grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT})


def channel(addr: str) -> aio.Channel:
    """The test client's channel to a service (the one place that says how tests connect)."""
    return mesh.channel(addr)


@dataclass(frozen=True)
class Answer:
    """What the client finally heard: the order's status name, or the error code's name."""

    what: str
    order_id: str = ""
    attempts: int = 1
    took_s: float = 0.0


@dataclass
class OrderClient:
    addr: str
    timeout_s: float = 3.0
    retry_for_s: float = 0.0  # keep retrying transient answers this long (same key)
    created: set[str] = field(default_factory=set)
    answers: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    _chan: aio.Channel | None = None

    async def __aenter__(self) -> OrderClient:
        self._chan = channel(self.addr)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._chan is not None:
            await self._chan.close()

    @property
    def stub(self) -> order_pb2_grpc.OrderServiceAsyncStub:
        assert self._chan is not None, "use `async with OrderClient(...)`"
        return order_pb2_grpc.OrderServiceStub(self._chan)

    async def create(self, user: str, items: Mapping[str, int] | None, *, key: str,
                     card: str = "tok_visa") -> Answer:
        """Place one order (`items` None or empty: the user's cart)."""
        req = order_pb2.CreateOrderRequest(
            items=[order_pb2.CreateOrderItem(product_id=p, quantity=q)
                   for p, q in (items or {}).items()],
            card_token=card, idempotency_key=key)
        t0 = time.monotonic()
        give_up = t0 + self.retry_for_s
        attempts = 0
        while True:
            attempts += 1
            try:
                reply = await self.stub.CreateOrder(req, metadata=[("x-user-id", user)],
                                                    timeout=self.timeout_s)
            except aio.AioRpcError as err:
                code = err.code()
                if code in TRANSIENT and time.monotonic() < give_up:
                    await asyncio.sleep(random.uniform(0.1, 0.4))
                    continue
                oid = str(dict(err.trailing_metadata() or ()).get("x-order-id", ""))
                if oid:
                    self.created.add(oid)
                if code not in TRANSIENT | REFUSED:
                    self.unexpected.append(f"create {key}: {code.name}: {err.details()}")
                answer = Answer(code.name, oid, attempts, time.monotonic() - t0)
            else:
                self.created.add(reply.order.id)
                answer = Answer(order_pb2.OrderStatus.Name(reply.order.status),
                                reply.order.id, attempts, time.monotonic() - t0)
            self.answers[answer.what] += 1
            return answer

    async def get(self, user: str, order_id: str) -> order_pb2.Order | None:
        """The order, or None while the order service does not answer."""
        try:
            reply = await self.stub.GetOrder(order_pb2.GetOrderRequest(id=order_id),
                                             metadata=[("x-user-id", user)],
                                             timeout=self.timeout_s)
        except aio.AioRpcError as err:
            if err.code() in TRANSIENT:
                return None
            raise
        order: order_pb2.Order = reply.order
        return order

    async def wait_status(self, user: str, order_id: str, statuses: frozenset[int],
                          timeout_s: float) -> order_pb2.Order | None:
        """Poll until the order has one of `statuses`; None if it did not within the time."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            order = await self.get(user, order_id)
            if order is not None and order.status in statuses:
                return order
            await asyncio.sleep(0.1)
        return None

    async def cancel(self, user: str, order_id: str) -> Answer:
        """Cancel as a customer; retried like a create while the answer is transient
        (CancelOrder is idempotent)."""
        t0 = time.monotonic()
        give_up = t0 + self.retry_for_s
        attempts = 0
        while True:
            attempts += 1
            try:
                reply = await self.stub.CancelOrder(
                    order_pb2.CancelOrderRequest(id=order_id, reason="changed my mind"),
                    metadata=[("x-user-id", user)], timeout=self.timeout_s)
            except aio.AioRpcError as err:
                code = err.code()
                if code in TRANSIENT and time.monotonic() < give_up:
                    await asyncio.sleep(random.uniform(0.1, 0.4))
                    continue
                if code not in TRANSIENT | {grpc.StatusCode.FAILED_PRECONDITION}:
                    self.unexpected.append(f"cancel {order_id}: {code.name}: {err.details()}")
                answer = Answer(code.name, order_id, attempts, time.monotonic() - t0)
            else:
                answer = Answer(order_pb2.OrderStatus.Name(reply.order.status), order_id,
                                attempts, time.monotonic() - t0)
            self.answers[f"cancel:{answer.what}"] += 1
            return answer


async def paced(n: int, duration_s: float, in_flight: int,
                fn: Callable[[int], Awaitable[T]]) -> list[T]:
    """fn(0) .. fn(n-1), the i-th started no earlier than i * duration_s / n from now,
    at most `in_flight` at once; the results in order."""
    t0 = time.monotonic()
    sem = asyncio.Semaphore(in_flight)

    async def one(i: int) -> T:
        await asyncio.sleep(max(0.0, t0 + i * duration_s / n - time.monotonic()))
        async with sem:
            return await fn(i)

    return list(await asyncio.gather(*(one(i) for i in range(n))))


async def set_stock(addr: str, stock: Mapping[str, int]) -> None:
    async with channel(addr) as chan:
        stub = inventory_pb2_grpc.InventoryServiceStub(chan)
        for product, amount in stock.items():
            await stub.SetStock(inventory_pb2.SetStockRequest(product_id=product,
                                                              available=amount), timeout=10)
