"""kill -9 of each event-consuming service (notification, shipping, cart), one after the
other in the middle of an order run, each restarted on its port a moment later: the events
it missed while down wait in its durable consumer (seen there), and afterwards each one has
had its effect exactly once (the full invariant check: one shipment per confirmed order,
each notification once, ...). Some orders come from carts, so the cart's consumer has work
too: a confirmed cart order leaves that cart empty.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable

import pytest
from grpc import aio
from shop.cart.v1 import cart_pb2, cart_pb2_grpc

from ops.process import System
from services.common.bus import Bus
from services.common.events import STREAM
from tests.fixtures_services import START_TIMEOUT_S
from tests.support.invariants import check_invariants
from tests.support.load import TRANSIENT, OrderClient, channel, set_stock
from tests.support.mesh import nats_auth
from tests.support.users import create_users

pytestmark = pytest.mark.timeout(180)

PRODUCTS = ("french-press", "yoga-mat")
STOCK = {p: 10_000 for p in PRODUCTS}
RATE = 8.0  # orders a second, for as long as the kills go on (and a second after)
MAX_ORDERS = 400
VICTIMS = ("notification", "shipping", "cart")
FIRST_KILL_S = 2.0
BETWEEN_S = 1.0  # after one victim is back, until the next goes down
DOWN_S = 1.5
DURABLE = {"notification": "notification-events", "shipping": "shipping-orders",
           "cart": "cart-orders"}


async def _backlog(url: str, durable: str) -> int:
    bus = await Bus.connect(url, name="backlog-probe", auth=nats_auth())
    try:
        info = await bus.js.consumer_info(STREAM, durable)
        return int(info.num_pending or 0) + int(info.num_ack_pending or 0)
    finally:
        await bus.close()


async def _fill_cart(addr: str, user: str, product: str, quantity: int) -> None:
    """AddItem, retried while the cart service is down (a customer trying again)."""
    give_up = time.monotonic() + 30
    async with channel(addr) as chan:
        stub = cart_pb2_grpc.CartServiceStub(chan)
        while True:
            try:
                await stub.AddItem(cart_pb2.AddItemRequest(product_id=product, quantity=quantity),
                                   metadata=[("x-user-id", user)], timeout=5)
                return
            except aio.AioRpcError as err:
                if err.code() not in TRANSIENT or time.monotonic() > give_up:
                    raise
            await asyncio.sleep(0.2)


async def _bounded(sem: asyncio.Semaphore, work: Awaitable[None]) -> None:
    async with sem:
        await work


def _cart_lines(sysm: System, user_ids: list[str]) -> dict[str, int]:
    marks = ",".join("?" * len(user_ids))
    with sqlite3.connect(f"file:{sysm.data_dir / 'cart.db'}?mode=ro", uri=True) as conn:
        rows = conn.execute(f"SELECT user_id, count(*) FROM cart_items WHERE user_id IN "
                            f"({marks}) GROUP BY user_id", user_ids).fetchall()
    return {str(u): int(n) for u, n in rows}


async def test_consumer_killed_mid_run_every_effect_once(fault_system: System) -> None:
    sysm = fault_system
    users = await create_users(sysm.addr("user"), 8, "consumer-kill")
    # Every third order is a cart order by a customer of its own (one cart, one order).
    cart_users = await create_users(sysm.addr("user"), 40, "cart")
    await set_stock(sysm.addr("inventory"), STOCK)
    await asyncio.gather(*(_fill_cart(sysm.addr("cart"), user, PRODUCTS[n % 2], 1 + n % 2)
                           for n, user in enumerate(cart_users)))
    backlog_while_down: dict[str, int] = dict.fromkeys(VICTIMS, 0)

    async def order(i: int) -> None:
        product = PRODUCTS[i % 2]
        card = "tok_chargeDeclined" if i % 7 == 6 else "tok_visa"
        if i % 3 == 0 and i // 3 < len(cart_users):
            await client.create(cart_users[i // 3], None, key=f"order-{i}", card=card)
        else:
            await client.create(users[i % 8], {product: 1 + i % 3}, key=f"order-{i}",
                                card=card)

    async def kill() -> None:
        await asyncio.sleep(FIRST_KILL_S)
        for victim in VICTIMS:
            proc = sysm[victim]
            proc.kill()
            down_until = time.monotonic() + DOWN_S
            # Orders go on while it is down: its events wait in its durable consumer.
            while time.monotonic() < down_until:
                backlog_while_down[victim] = max(backlog_while_down[victim], await _backlog(
                    sysm.nats_url, DURABLE[victim]))
                await asyncio.sleep(0.2)
            await asyncio.to_thread(proc.start)
            await asyncio.to_thread(proc.wait_ready, START_TIMEOUT_S)
            await asyncio.sleep(BETWEEN_S)

    async def customers() -> int:
        """Orders at RATE until the kills are over; how many were placed."""
        sem = asyncio.Semaphore(16)  # cart orders wait while the cart is down
        t0 = time.monotonic()
        placed: list[asyncio.Task[None]] = []
        while not killer.done() and len(placed) < MAX_ORDERS:
            await asyncio.sleep(max(0.0, t0 + len(placed) / RATE - time.monotonic()))
            placed.append(asyncio.create_task(_bounded(sem, order(len(placed)))))
        await asyncio.gather(*placed)
        return len(placed)

    async with OrderClient(sysm.addr("order"), timeout_s=5, retry_for_s=30) as client:
        killer = asyncio.create_task(kill())
        orders = await customers()
        await killer
    assert client.unexpected == [], client.unexpected
    missed = [v for v, n in backlog_while_down.items() if n == 0]
    assert missed == [], f"missed no event while down: {missed} ({backlog_while_down})"

    report = await check_invariants(sysm, stock_set=STOCK, created=client.created,
                                    expect_orders=orders, timeout_s=60)
    report.assert_ok()
    assert report.count("SHIPPED") > 0 and report.count("CANCELLED") > 0, report.summary()
    # The cart's effect: a confirmed cart order emptied its customer's cart.
    confirmed_cart_users = [o.user_id for o in report.orders
                            if o.from_cart and o.status in ("CONFIRMED", "SHIPPED")]
    assert confirmed_cart_users
    assert _cart_lines(sysm, confirmed_cart_users) == {}
    print(f"\nbacklog while down {backlog_while_down}; {report.summary()}")
