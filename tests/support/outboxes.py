"""Filling and reading outbox tables directly, for the relay's tests."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from shop.order.v1 import order_pb2

from services.common.db import Database
from services.common.events import ORDER_CREATED
from services.common.storage import Storage, Tx


async def fill_outbox(db_path: Path, n: int, *, start: int = 0,
                      durable: bool = False) -> list[tuple[str, str]]:
    """Enqueue `n` order.created events over 7 aggregates, one transaction each;
    returns (event id, aggregate id) in commit order."""
    db = await Database.open(db_path, durable=durable)
    try:
        return await fill_storage(db, n, start=start)
    finally:
        await db.close()


async def fill_storage(db: Storage, n: int, *, start: int = 0) -> list[tuple[str, str]]:
    """`fill_outbox` on any open storage."""
    out = []
    for i in range(start, start + n):
        agg = f"order-{i % 7}"

        async def run(tx: Tx, agg: str = agg) -> str:
            return await tx.emit(ORDER_CREATED, order_pb2.OrderCreated(), source="order",
                                 aggregate_id=agg)

        out.append((await db.write(run), agg))
    return out


async def fill_storage_at_once(db: Storage, n: int, *,
                               start: int = 0) -> list[tuple[str, str]]:
    """`n` events over 7 aggregates committed in one unit of work: a relay finds them all
    at once and needs n / batch rounds to drain them."""
    async def run(tx: Tx) -> list[tuple[str, str]]:
        out = []
        for i in range(start, start + n):
            agg = f"order-{i % 7}"
            out.append((await tx.emit(ORDER_CREATED, order_pb2.OrderCreated(), source="order",
                                      aggregate_id=agg), agg))
        return out

    return await db.write(run)


def unsent_outbox_rows(db_path: Path) -> int:
    """Rows not yet marked sent (read-only: never disturbs the writer)."""
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10) as conn:
        return int(conn.execute("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
                   .fetchone()[0])
