"""Inventory persistence: stock levels, per-order reservations and their outbox events.

Every call is one write transaction (BEGIN IMMEDIATE, so the reads that decide are never
stale, even with several instances on one file) with few statements: one read of the
reservation, one of the stock, an executemany for the stock moves, one write of the
reservation, one outbox row.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import aiosqlite
from shop.inventory.v1 import inventory_pb2

from services.common.db import Database, Tx
from services.common.errors import NotFound
from services.common.events import INVENTORY_RELEASED, INVENTORY_RESERVED, INVENTORY_RESTOCKED
from services.common.migrate import upgrade_table
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

# `total` is every unit ever set; the CHECK makes the stock invariant the database's too.
RESERVATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS reservations (
    order_id TEXT PRIMARY KEY,
    status TEXT NOT NULL
        CHECK (status IN ('RESERVED', 'REJECTED', 'RELEASED', 'COMMITTED', 'RESTOCKED')),
    items TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
) WITHOUT ROWID"""

SCHEMA = """
CREATE TABLE IF NOT EXISTS stock (
    product_id TEXT PRIMARY KEY,
    available INTEGER NOT NULL CHECK (available >= 0),
    reserved INTEGER NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    sold INTEGER NOT NULL DEFAULT 0 CHECK (sold >= 0),
    total INTEGER NOT NULL,
    updated_at REAL NOT NULL,
    CHECK (available + reserved + sold = total)
) WITHOUT ROWID;
""" + RESERVATIONS_TABLE + ";\n"


def upgrade(path: str | Path) -> None:
    """A file from before restocking: reservations gain the RESTOCKED status. Run before
    Database.open."""
    upgrade_table(path, "reservations", RESERVATIONS_TABLE, "RESTOCKED")

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


def _reservation(row: aiosqlite.Row) -> Reservation:
    items = tuple(Line(str(pid), int(qty)) for pid, qty in json.loads(row["items"]))
    return Reservation(row["order_id"], Status(row["status"]), items, row["reason"])


def _stock(row: aiosqlite.Row) -> Stock:
    return Stock(row["product_id"], row["available"], row["reserved"], row["sold"])


class StockMoveError(RuntimeError):
    """A stock update matched fewer rows than planned: the transaction is rolled back."""


class InventoryStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def seed(self, stock: Iterable[tuple[str, int]]) -> None:
        """Initial stock for products not yet known (a restart changes nothing)."""
        now = time.time()
        async with self.db.transaction() as conn:
            await conn.executemany(
                "INSERT OR IGNORE INTO stock (product_id, available, total, updated_at)"
                " VALUES (?, ?, ?, ?)", [(pid, qty, qty, now) for pid, qty in stock])

    async def get_stock(self, product_id: str) -> Stock:
        async with self.db.reader() as conn:
            cur = await conn.execute(
                "SELECT product_id, available, reserved, sold FROM stock WHERE product_id = ?",
                (product_id,))
            row = await cur.fetchone()
        if row is None:
            raise NotFound(f"product {product_id} not found")
        return _stock(row)

    async def set_stock(self, product_id: str, available: int) -> Stock:
        """Set available (an operator's count); reserved and sold stay as they are."""
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                "INSERT INTO stock (product_id, available, total, updated_at)"
                " VALUES (?1, ?2, ?2, ?3) ON CONFLICT (product_id) DO UPDATE SET"
                " available = ?2, total = ?2 + reserved + sold, updated_at = ?3"
                " RETURNING product_id, available, reserved, sold",
                (product_id, available, time.time()))
            row = await cur.fetchone()
            await cur.close()
        assert row is not None
        return _stock(row)

    async def reserve(self, order_id: str, lines: Sequence[Line]) -> Reservation:
        """The reservation for `order_id`: the stored one if any, else a new RESERVED
        (stock taken, event queued) or REJECTED one. Unknown products: NotFound,
        nothing written."""
        lines = tuple(lines)

        def run(tx: Tx) -> Reservation:
            existing = _get_sync(tx, order_id)
            if existing is not None:
                return existing
            marks = ",".join("?" * len(lines))
            available = {r[0]: int(r[1]) for r in tx.all(
                f"SELECT product_id, available FROM stock WHERE product_id IN ({marks})",
                [li.product_id for li in lines])}
            decided = decide_reserve(order_id, lines, available)
            now = time.time()
            if decided.status is Status.RESERVED:
                _move_sync(tx, _TAKE, decided.items, now)
            tx.execute(
                "INSERT INTO reservations (order_id, status, items, reason, created_at,"
                " updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                (order_id, decided.status.value, _items_json(decided.items), decided.reason,
                 now, now))
            if decided.status is Status.RESERVED:
                tx.enqueue(INVENTORY_RESERVED,
                           inventory_pb2.StockReserved(reservation=reservation_pb(decided)),
                           source=SERVICE, aggregate_id=order_id)
            return decided

        return await self.db.write(run)

    async def release(self, order_id: str) -> Reservation:
        def run(tx: Tx) -> Reservation:
            t = decide_release(order_id, _get_sync(tx, order_id))
            now = time.time()
            if t.effect is Effect.RETURN:
                _move_sync(tx, _RETURN, t.reservation.items, now)
                _set_status_sync(tx, t.reservation, now)
                tx.enqueue(INVENTORY_RELEASED,
                           inventory_pb2.StockReleased(reservation=reservation_pb(t.reservation)),
                           source=SERVICE, aggregate_id=order_id)
            elif t.effect is Effect.TOMBSTONE:
                tx.execute(
                    "INSERT INTO reservations (order_id, status, items, reason, created_at,"
                    " updated_at) VALUES (?, ?, '[]', '', ?, ?)",
                    (order_id, t.reservation.status.value, now, now))
            return t.reservation

        return await self.db.write(run)

    async def commit(self, order_id: str) -> Reservation:
        def run(tx: Tx) -> Reservation:
            t = decide_commit(order_id, _get_sync(tx, order_id))
            if t.effect is Effect.SELL:
                now = time.time()
                _move_sync(tx, _SELL, t.reservation.items, now)
                _set_status_sync(tx, t.reservation, now)
            return t.reservation

        return await self.db.write(run)

    async def restock(self, order_id: str) -> Reservation:
        """A committed order's units from sold back to available, with inventory.restocked;
        a repeat changes nothing. FailedPrecondition when nothing was committed."""
        def run(tx: Tx) -> Reservation:
            t = decide_restock(order_id, _get_sync(tx, order_id))
            if t.effect is Effect.RESTOCK:
                now = time.time()
                _move_sync(tx, _RESTOCK, t.reservation.items, now)
                _set_status_sync(tx, t.reservation, now)
                tx.enqueue(INVENTORY_RESTOCKED,
                           inventory_pb2.StockRestocked(reservation=reservation_pb(t.reservation)),
                           source=SERVICE, aggregate_id=order_id)
            return t.reservation

        return await self.db.write(run)

    async def get_reservation(self, order_id: str) -> Reservation | None:
        return await self.db.read(lambda tx: _get_sync(tx, order_id))

    async def all_stock(self) -> list[Stock]:
        async with self.db.reader() as conn:
            cur = await conn.execute(
                "SELECT product_id, available, reserved, sold FROM stock ORDER BY product_id")
            return [_stock(r) for r in await cur.fetchall()]


# --- statements, run on the connection's thread by Database.write/read (one hop each) ----


def _get_sync(tx: Tx, order_id: str) -> Reservation | None:
    row = tx.one("SELECT order_id, status, items, reason FROM reservations WHERE order_id = ?",
                 (order_id,))
    return None if row is None else _reservation(row)


def _move_sync(tx: Tx, sql: str, items: Sequence[Line], now: float) -> None:
    cur = tx.executemany(
        sql, [(li.quantity, li.quantity, now, li.product_id, li.quantity) for li in items])
    if cur.rowcount != len(items):
        raise StockMoveError(f"stock moved for {cur.rowcount} of {len(items)} products")


def _set_status_sync(tx: Tx, r: Reservation, now: float) -> None:
    tx.execute("UPDATE reservations SET status = ?, updated_at = ? WHERE order_id = ?",
               (r.status.value, now, r.order_id))
