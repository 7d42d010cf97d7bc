"""kill -9 of each event-consuming service (notification, shipping, cart) in the middle of an
order run, restarted on its port a moment later: the events it missed while down wait in its
durable consumer, and afterwards each one has had its effect exactly once (the full
invariant check: one shipment per confirmed order, each notification once, ...). Some
orders come from carts, so the cart's consumer has work too: a confirmed cart order leaves
that cart empty.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time

import pytest
from grpc import aio
from shop.cart.v1 import cart_pb2, cart_pb2_grpc

from ops.process import System
from services.common.bus import Bus
from services.common.events import STREAM
from tests.fixtures_services import START_TIMEOUT_S
from tests.support.invariants import check_invariants
from tests.support.load import TRANSIENT, OrderClient, paced, set_stock
from tests.support.users import create_users

pytestmark = pytest.mark.timeout(180)

PRODUCTS = ("french-press", "yoga-mat")
STOCK = {p: 10_000 for p in PRODUCTS}
ORDERS = 60
RUN_S = 8.0
KILL_AT_S = 3.0
DOWN_S = 1.5
DURABLE = {"notification": "notification-events", "shipping": "shipping-orders",
           "cart": "cart-orders"}


async def _backlog(url: str, durable: str) -> int:
    bus = await Bus.connect(url, name="backlog-probe")
    try:
        info = await bus.js.consumer_info(STREAM, durable)
        return int(info.num_pending or 0) + int(info.num_ack_pending or 0)
    finally:
        await bus.close()


async def _fill_cart(addr: str, user: str, product: str, quantity: int) -> None:
    """AddItem, retried while the cart service is down (a customer trying again)."""
    give_up = time.monotonic() + 30
    async with aio.insecure_channel(addr) as chan:
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


def _cart_lines(sysm: System, user_ids: list[str]) -> dict[str, int]:
    marks = ",".join("?" * len(user_ids))
    with sqlite3.connect(f"file:{sysm.data_dir / 'cart.db'}?mode=ro", uri=True) as conn:
        rows = conn.execute(f"SELECT user_id, count(*) FROM cart_items WHERE user_id IN "
                            f"({marks}) GROUP BY user_id", user_ids).fetchall()
    return {str(u): int(n) for u, n in rows}


@pytest.mark.parametrize("victim", ["notification", "shipping", "cart"])
async def test_consumer_killed_mid_run_every_effect_once(fault_system: System,
                                                         victim: str) -> None:
    sysm = fault_system
    users = await create_users(sysm.addr("user"), 8, f"kill-{victim}")
    # Every third order is a cart order by a customer of its own (one cart, one order).
    cart_users = await create_users(sysm.addr("user"), ORDERS // 3, f"cart-{victim}")
    await set_stock(sysm.addr("inventory"), STOCK)
    backlog_while_down: list[int] = []

    async def order(i: int) -> None:
        product = PRODUCTS[i % 2]
        card = "tok_chargeDeclined" if i % 7 == 6 else "tok_visa"
        if i % 3 == 0:
            user = cart_users[i // 3]
            await _fill_cart(sysm.addr("cart"), user, product, 1 + i % 2)
            await client.create(user, None, key=f"{victim}-{i}", card=card)
        else:
            await client.create(users[i % 8], {product: 1 + i % 3}, key=f"{victim}-{i}",
                                card=card)

    async def kill() -> None:
        await asyncio.sleep(KILL_AT_S)
        proc = sysm[victim]
        proc.kill()
        down_until = time.monotonic() + DOWN_S
        # Orders go on while it is down: its events wait in its durable consumer.
        while time.monotonic() < down_until:
            backlog_while_down.append(await _backlog(sysm.nats_url, DURABLE[victim]))
            await asyncio.sleep(0.2)
        await asyncio.to_thread(proc.start)
        await asyncio.to_thread(proc.wait_ready, START_TIMEOUT_S)

    async with OrderClient(sysm.addr("order"), timeout_s=5, retry_for_s=30) as client:
        killer = asyncio.create_task(kill())
        await paced(ORDERS, RUN_S, 8, order)
        await killer
    assert client.unexpected == [], client.unexpected
    assert max(backlog_while_down) > 0, f"{victim} missed no event while it was down"

    report = await check_invariants(sysm, stock_set=STOCK, created=client.created,
                                    expect_orders=ORDERS, timeout_s=60)
    report.assert_ok()
    assert report.count("SHIPPED") > 0 and report.count("CANCELLED") > 0, report.summary()
    # The cart's effect: a confirmed cart order emptied its customer's cart.
    confirmed_cart_users = [o.user_id for o in report.orders
                            if o.from_cart and o.status in ("CONFIRMED", "SHIPPED")]
    assert confirmed_cart_users
    assert _cart_lines(sysm, confirmed_cart_users) == {}
    print(f"\n{victim}: backlog while down up to {max(backlog_while_down)}; "
          f"{report.summary()}")
