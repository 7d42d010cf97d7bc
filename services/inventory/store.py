"""Inventory persistence: stock levels, per-order reservations and their outbox events.

Every call is one unit of work with few statements: one read of the reservation, one of
the stock, one update per stock move, one write of the reservation, one outbox row. Every
product's stock row is hot (each order of it moves it twice), so the stock moves are
`locked` units of work: they lock the reservation and the stock rows they decide on
(`tx.for_update`) and move stock relative to what the row holds, guarded in the WHERE. On
SQLite the one writer serializes them anyway; on PostgreSQL they run READ COMMITTED and
wait for each other's row locks rather than fail a serializable check and run again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from typing import Protocol

from shop.inventory.v1 import inventory_pb2

from services.common.errors import NotFound
from services.common.events import INVENTORY_RELEASED, INVENTORY_RESERVED, INVENTORY_RESTOCKED
from services.common.storage import Row, Storage, Tx
from services.inventory.convert import reservation_pb
from services.inventory.domain import (
    Effect,
    Line,
    Reservation,
    Status,
    Stock,
    decide_commit,
    decide_release,
    decide_reserve,
    decide_restock,
)

SERVICE = "inventory"

# The guards in WHERE never fail under the write lock; they are there so a bug can
# only make the rowcount check below roll back, never drive stock negative.
_TAKE = ("UPDATE stock SET available = available - ?, reserved = reserved + ?, updated_at = ?"
         " WHERE product_id = ? AND available >= ?")
_RETURN = ("UPDATE stock SET available = available + ?, reserved = reserved - ?, updated_at = ?"
           " WHERE product_id = ? AND reserved >= ?")
_SELL = ("UPDATE stock SET sold = sold + ?, reserved = reserved - ?, updated_at = ?"
         " WHERE product_id = ? AND reserved >= ?")
_RESTOCK = ("UPDATE stock SET available = available + ?, sold = sold - ?, updated_at = ?"
            " WHERE product_id = ? AND sold >= ?")


def _items_json(items: Iterable[Line]) -> str:
    return json.dumps([[li.product_id, li.quantity] for li in items], separators=(",", ":"))


def _reservation(row: Row) -> Reservation:
    items = tuple(Line(str(pid), int(qty)) for pid, qty in json.loads(row["items"]))
    return Reservation(row["order_id"], Status(row["status"]), items, row["reason"])


def _stock(row: Row) -> Stock:
    return Stock(row["product_id"], row["available"], row["reserved"], row["sold"])


class StockMoveError(RuntimeError):
    """A stock update matched fewer rows than planned: the transaction is rolled back."""


class InventoryRepository(Protocol):
    async def seed(self, stock: Iterable[tuple[str, int]]) -> None: ...
    async def get_stock(self, product_id: str) -> Stock: ...
    async def set_stock(self, product_id: str, available: int) -> Stock: ...
    async def reserve(self, order_id: str, lines: Sequence[Line]) -> Reservation: ...
    async def release(self, order_id: str) -> Reservation: ...
    async def commit(self, order_id: str) -> Reservation: ...
    async def restock(self, order_id: str) -> Reservation: ...
    async def get_reservation(self, order_id: str) -> Reservation | None: ...
    async def all_stock(self) -> list[Stock]: ...
    async def stale_reservations(self, older_than: float, limit: int = 100) -> list[str]: ...


class InventoryStore:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    async def seed(self, stock: Iterable[tuple[str, int]]) -> None:
        """Initial stock for products not yet known (a restart changes nothing)."""
        now = time.time()
        rows = [(pid, qty, qty, now) for pid, qty in stock]

        async def run(tx: Tx) -> None:
            await tx.run_many(
                "INSERT INTO stock (product_id, available, total, updated_at)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (product_id) DO NOTHING", rows)

        await self.storage.write(run)

    async def get_stock(self, product_id: str) -> Stock:
        async def run(tx: Tx) -> Row | None:
            return await tx.fetchrow(
                "SELECT product_id, available, reserved, sold FROM stock WHERE product_id = ?",
                (product_id,))

        row = await self.storage.read(run)
        if row is None:
            raise NotFound(f"product {product_id} not found")
        return _stock(row)

    async def set_stock(self, product_id: str, available: int) -> Stock:
        """Set available (an operator's count); reserved and sold stay as they are."""
        async def run(tx: Tx) -> Row | None:
            return await tx.fetchrow(
                "INSERT INTO stock (product_id, available, total, updated_at)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (product_id) DO UPDATE SET"
                " available = excluded.available,"
                " total = excluded.available + stock.reserved + stock.sold,"
                " updated_at = excluded.updated_at"
                " RETURNING product_id, available, reserved, sold",
                (product_id, available, available, time.time()))

        row = await self.storage.write(run, locked=True)  # one statement: atomic on its own
        assert row is not None
        return _stock(row)

    async def reserve(self, order_id: str, lines: Sequence[Line]) -> Reservation:
        """The reservation for `order_id`: the stored one if any, else a new RESERVED
        (stock taken, event queued) or REJECTED one. Unknown products: NotFound,
        nothing written."""
        lines = tuple(lines)

        async def run(tx: Tx) -> Reservation:
            existing = await _get(tx, order_id, lock=True)
            if existing is not None:
                return existing
            marks = ",".join("?" * len(lines))
            # Locked in one order (product id), so two reservations never deadlock.
            available = {r[0]: int(r[1]) for r in await tx.fetch(
                f"SELECT product_id, available FROM stock WHERE product_id IN ({marks})"
                f" ORDER BY product_id{tx.for_update}",
                [li.product_id for li in lines])}
            decided = decide_reserve(order_id, lines, available)
            now = time.time()
            if decided.status is Status.RESERVED:
                await _move(tx, _TAKE, decided.items, now)
            await tx.run(
                "INSERT INTO reservations (order_id, status, items, reason, created_at,"
                " updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                (order_id, decided.status.value, _items_json(decided.items), decided.reason,
                 now, now))
            if decided.status is Status.RESERVED:
                await tx.emit(INVENTORY_RESERVED,
                           inventory_pb2.StockReserved(reservation=reservation_pb(decided)),
                           source=SERVICE, aggregate_id=order_id)
            return decided

        return await self.storage.write(run, locked=True)

    async def release(self, order_id: str) -> Reservation:
        async def run(tx: Tx) -> Reservation:
            t = decide_release(order_id, await _get(tx, order_id, lock=True))
            now = time.time()
            if t.effect is Effect.RETURN:
                await _move(tx, _RETURN, t.reservation.items, now)
                await _set_status(tx, t.reservation, now)
                await tx.emit(INVENTORY_RELEASED,
                           inventory_pb2.StockReleased(reservation=reservation_pb(t.reservation)),
                           source=SERVICE, aggregate_id=order_id)
            elif t.effect is Effect.TOMBSTONE:
                await tx.run(
                    "INSERT INTO reservations (order_id, status, items, reason, created_at,"
                    " updated_at) VALUES (?, ?, '[]', '', ?, ?)",
                    (order_id, t.reservation.status.value, now, now))
            return t.reservation

        return await self.storage.write(run, locked=True)

    async def commit(self, order_id: str) -> Reservation:
        async def run(tx: Tx) -> Reservation:
            t = decide_commit(order_id, await _get(tx, order_id, lock=True))
            if t.effect is Effect.SELL:
                now = time.time()
                await _move(tx, _SELL, t.reservation.items, now)
                await _set_status(tx, t.reservation, now)
            return t.reservation

        return await self.storage.write(run, locked=True)

    async def restock(self, order_id: str) -> Reservation:
        """A committed order's units from sold back to available, with inventory.restocked;
        a repeat changes nothing. FailedPrecondition when nothing was committed."""
        async def run(tx: Tx) -> Reservation:
            t = decide_restock(order_id, await _get(tx, order_id, lock=True))
            if t.effect is Effect.RESTOCK:
                now = time.time()
                await _move(tx, _RESTOCK, t.reservation.items, now)
                await _set_status(tx, t.reservation, now)
                await tx.emit(INVENTORY_RESTOCKED,
                           inventory_pb2.StockRestocked(reservation=reservation_pb(t.reservation)),
                           source=SERVICE, aggregate_id=order_id)
            return t.reservation

        return await self.storage.write(run, locked=True)

    async def get_reservation(self, order_id: str) -> Reservation | None:
        async def run(tx: Tx) -> Reservation | None:
            return await _get(tx, order_id)

        return await self.storage.read(run)

    async def all_stock(self) -> list[Stock]:
        async def run(tx: Tx) -> list[Stock]:
            return [_stock(r) for r in await tx.fetch(
                "SELECT product_id, available, reserved, sold FROM stock ORDER BY product_id")]

        return await self.storage.read(run)

    async def stale_reservations(self, older_than: float, limit: int = 100) -> list[str]:
        """Order ids of reservations still holding stock, made before `older_than`."""
        async def run(tx: Tx) -> list[str]:
            return [str(r[0]) for r in await tx.fetch(
                "SELECT order_id FROM reservations WHERE status = 'RESERVED' AND created_at < ?"
                " ORDER BY created_at LIMIT ?", (older_than, limit))]

        return await self.storage.read(run)


# --- statements of the units of work above ----------------------------------------------


async def _get(tx: Tx, order_id: str, *, lock: bool = False) -> Reservation | None:
    """The reservation; with `lock`, locked until the commit (a `locked` unit of work: two
    moves of one order's stock wait for each other)."""
    row = await tx.fetchrow(
        "SELECT order_id, status, items, reason FROM reservations WHERE order_id = ?"
        + (tx.for_update if lock else ""), (order_id,))
    return None if row is None else _reservation(row)


async def _move(tx: Tx, sql: str, items: Sequence[Line], now: float) -> None:
    moved = 0
    for li in sorted(items, key=lambda li: li.product_id):  # the lock order of `reserve`
        moved += await tx.run(sql, (li.quantity, li.quantity, now, li.product_id, li.quantity))
    if moved != len(items):
        raise StockMoveError(f"stock moved for {moved} of {len(items)} products")


async def _set_status(tx: Tx, r: Reservation, now: float) -> None:
    await tx.run("UPDATE reservations SET status = ?, updated_at = ? WHERE order_id = ?",
                 (r.status.value, now, r.order_id))
