"""`locked` units of work on a hot row (inventory's stock moves), on each backend: many
orders of one product at once never oversell and, on PostgreSQL, wait for each other's
row locks instead of failing a serializable check and running again; one order reserved
many times at once moves the stock once (the race on its key runs again and finds it)."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from services.common.storage import Tx
from services.inventory.domain import Line, Status
from services.inventory.store import InventoryStore
from tests.fixtures_storage import OpenStorage, both_backends

pytestmark = [pytest.mark.timeout(120), both_backends]

STOCK = 150
ORDERS = 200


async def _stock(store: InventoryStore) -> tuple[int, int, int]:
    s = await store.get_stock("hot")
    return s.available, s.reserved, s.sold


async def test_orders_of_one_product_at_once_never_oversell(storage_for: OpenStorage) -> None:
    db = await storage_for("inventory")
    store = InventoryStore(db)
    await store.seed([("hot", STOCK)])
    sem = asyncio.Semaphore(16)

    async def order() -> Status:
        order_id = uuid.uuid4().hex
        async with sem:
            r = await store.reserve(order_id, [Line("hot", 1)])
            if r.status is Status.RESERVED:
                r = await store.commit(order_id)
        return r.status

    got = await asyncio.gather(*(order() for _ in range(ORDERS)))
    assert got.count(Status.COMMITTED) == STOCK
    assert got.count(Status.REJECTED) == ORDERS - STOCK
    assert await _stock(store) == (0, 0, STOCK)
    # PostgreSQL: the stock moves queued on the row's lock; none was refused and re-run.
    assert getattr(db, "retries", 0) == 0

    async def events(tx: Tx) -> int:
        return int(await tx.fetchval(
            "SELECT count(*) FROM outbox WHERE subject = 'inventory.reserved'"))

    assert await db.read(events) == STOCK


async def test_one_order_reserved_many_times_at_once_moves_stock_once(
        storage_for: OpenStorage) -> None:
    db = await storage_for("inventory")
    store = InventoryStore(db)
    await store.seed([("hot", STOCK)])
    answers = await asyncio.gather(*(store.reserve("o-1", [Line("hot", 2)]) for _ in range(10)))
    assert {a.status for a in answers} == {Status.RESERVED}
    assert await _stock(store) == (STOCK - 2, 2, 0)
    got = await store.get_reservation("o-1")
    assert got is not None and got.status is Status.RESERVED
